"""The two fusing settings of a process edge (a worker, a benchmark), parsed from the environment
mapping that edge hands in: this package never reads the environment itself.

* ``POLYFIT_FUSE``: ``auto`` (default: fuse where it pays, ``fit_many(fuse=None)``), ``1``/``on``
  (fuse every chunk that can be), ``0``/``off`` (never: the escape hatch, and the baseline of a
  comparison).
* ``POLYFIT_COMPILE_CACHE``: the folder where compiled kernels are kept between processes
  (default ``$XDG_CACHE_HOME/polyfit/compile``, else ``~/.cache/polyfit/compile``). Inductor
  reads its cache folder from ``TORCHINDUCTOR_CACHE_DIR``, so :meth:`FuseSettings.apply` sets that
  variable (unless it is set already: torch's own setting wins) before anything is compiled.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from .errors import SettingError

ENV_FUSE = "POLYFIT_FUSE"
ENV_COMPILE_CACHE = "POLYFIT_COMPILE_CACHE"
INDUCTOR_CACHE = "TORCHINDUCTOR_CACHE_DIR"

_FUSE_VALUES = {"auto": None, "": None, "1": True, "on": True, "true": True, "yes": True,
                "0": False, "off": False, "false": False, "no": False}


@dataclass(frozen=True)
class FuseSettings:
    """Whether to fuse (``fit_many``'s ``fuse``) and where compiled kernels are cached."""

    fuse: bool | None
    cache_dir: Path

    def apply(self, env: MutableMapping[str, str]) -> None:
        """Point inductor's disk cache at ``cache_dir`` in ``env`` (the process's environment,
        before the first compile), unless ``TORCHINDUCTOR_CACHE_DIR`` is set already."""
        env.setdefault(INDUCTOR_CACHE, str(self.cache_dir))


def fuse_settings(env: Mapping[str, str], home: Path) -> FuseSettings:
    """The settings in ``env`` (an environment mapping), ``home`` the user's home folder."""
    raw = env.get(ENV_FUSE, "auto")
    if raw.strip().lower() not in _FUSE_VALUES:
        raise SettingError(f"{ENV_FUSE} must be auto, 1 or 0, got {raw!r}")
    cache = env.get(ENV_COMPILE_CACHE) or str(
        Path(env.get("XDG_CACHE_HOME") or home / ".cache") / "polyfit" / "compile")
    return FuseSettings(_FUSE_VALUES[raw.strip().lower()], Path(cache).expanduser())
