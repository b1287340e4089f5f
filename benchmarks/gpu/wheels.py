"""Which wheels the GPU kit carries: the closure of polyfit's runtime dependencies that the device
machine lacks, pinned to the versions this environment resolved, and the checks around them.

The device (CPython 3.12, manylinux x86_64, no network) has the packages named in
``device-packages.txt``; everything else polyfit needs at run time travels as wheels in
``/.whl/``. The closure is walked from ``pyproject.toml``'s dependencies through each
distribution's ``Requires-Dist``, with markers evaluated for the device, not for this machine.
Only the standard library and ``packaging`` are needed (pip's vendored copy will do), so this
runs on the device too.

    python benchmarks/gpu/wheels.py pins            # NAME==VERSION of each wheel to carry
    python benchmarks/gpu/wheels.py fallbacks       # device packages the carried ones constrain
    python benchmarks/gpu/wheels.py have DIR PIN    # the wheel of PIN in DIR, if there
    python benchmarks/gpu/wheels.py check DIR       # the wheels in DIR close over their needs
    python benchmarks/gpu/wheels.py preflight DIR   # on the device: are those needs met there?
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
except ImportError:  # pragma: no cover - a bare interpreter: pip always vendors it
    from pip._vendor.packaging.markers import default_environment  # type: ignore[no-redef]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEVICE_PACKAGES = HERE / "device-packages.txt"

#: The device's interpreter and platform, for evaluating environment markers.
DEVICE_ENV = {
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": "3.12.3",
    "python_version": "3.12",
    "sys_platform": "linux",
}


#: Needs no metadata declares, with the version carried and why. celery asks zoneinfo for its
#: "UTC" zone when a worker starts; zoneinfo reads the system's tz database, else the tzdata
#: package, and a bare image may have neither (then every worker exits at once). tzdata is
#: declared only for Windows, so this venv does not have it to pin from.
UNDECLARED = {"tzdata": "2026.6"}


class KitError(Exception):
    """Raised when the wheel set cannot be worked out or does not close over its needs."""


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def device_packages(path: Path = DEVICE_PACKAGES) -> set[str]:
    lines = path.read_text().splitlines()
    return {canonical(line.strip()) for line in lines if line.strip() and not line.startswith("#")}


def project_dependencies(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    import tomllib

    return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])


def applies(req: Requirement, extras: set[str], env: dict = DEVICE_ENV) -> bool:
    """Whether ``req`` is needed on the device, for a distribution asked for with ``extras``."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": extra}) for extra in (extras or {""}))


@dataclass
class Closure:
    """What the device needs: ``carry`` (name -> version, to travel as wheels) and ``device``
    (name -> the specifiers that carried distributions put on a package the device has)."""

    carry: dict[str, str] = field(default_factory=dict)
    device: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


def closure(roots: list[str], on_device: set[str]) -> Closure:
    """Walk ``roots`` (requirement strings) through the installed distributions' metadata."""
    result = Closure()
    todo: list[tuple[Requirement, str]] = [(Requirement(r), "pyproject.toml") for r in roots]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        req, wanted_by = todo.pop()
        name = canonical(req.name)
        if name in on_device:
            if wanted_by != "pyproject.toml":
                result.device.setdefault(name, []).append((str(req.specifier), wanted_by))
            continue
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise KitError(f"{name} (needed by {wanted_by}) is not installed in this "
                           f"environment, so its version cannot be pinned; install the project "
                           f"here first (pip install -e .)") from None
        version = dist.version
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            raise KitError(f"{name} {version} installed here does not satisfy "
                           f"{req} (needed by {wanted_by})")
        result.carry[name] = version
        for line in dist.requires or []:
            sub = Requirement(line)
            if applies(sub, set(req.extras)):
                todo.append((sub, f"{name}=={version}"))
    return result


def project_closure() -> Closure:
    result = closure(project_dependencies(), device_packages())
    for name, version in UNDECLARED.items():
        result.carry.setdefault(name, version)
    return result


def fallback_pins(c: Closure) -> dict[str, str]:
    """Device packages that a carried distribution constrains, pinned to this environment's
    version: carried too, but installed on the device only where its own version falls short."""
    return {name: metadata.version(name) for name in sorted(c.device)}


# -- wheels on disk ------------------------------------------------------------------------------

def wheel_name_version(path: Path) -> tuple[str, str]:
    """(canonical name, version) from a wheel's file name (PEP 427)."""
    parts = path.name[:-len(".whl")].split("-")
    if len(parts) < 5:
        raise KitError(f"not a wheel file name: {path.name}")
    return canonical(parts[0]), parts[1]


def wheel_requires(path: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA (read from the zip, nothing installed)."""
    with zipfile.ZipFile(path) as z:
        meta = next((n for n in z.namelist()
                     if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
        if meta is None:
            raise KitError(f"{path.name} has no .dist-info/METADATA")
        text = z.read(meta).decode("utf-8", "replace")
    head = text.split("\n\n", 1)[0]
    return [line.split(":", 1)[1].strip() for line in head.splitlines()
            if line.startswith("Requires-Dist:")]


def check_wheels(paths: list[Path], on_device: set[str]) -> list[str]:
    """Problems with a wheel set: a needed distribution neither carried nor on the device, a
    carried version that does not satisfy a requirement, two versions of one project."""
    problems = []
    have: dict[str, str] = {}
    for p in paths:
        name, version = wheel_name_version(p)
        if name in have and have[name] != version:
            problems.append(f"two versions of {name}: {have[name]} and {version} "
                            f"(pip install would stop on them)")
        have[name] = version
    for p in paths:
        name, version = wheel_name_version(p)
        for line in wheel_requires(p):
            req = Requirement(line)
            if not applies(req, set()):
                continue
            dep = canonical(req.name)
            if dep in have:
                if req.specifier and not req.specifier.contains(have[dep], prereleases=True):
                    problems.append(f"{name}=={version} needs {req}, the kit carries "
                                    f"{dep}=={have[dep]}")
            elif dep not in on_device:
                problems.append(f"{name}=={version} needs {req}: neither carried nor on the "
                                f"device")
    return problems


def have(directory: Path, pin: str, prune: bool) -> Path | None:
    """The wheel of ``pin`` (NAME==VERSION) in ``directory``, if there; with ``prune``, other
    versions of the same project are deleted (two would stop ``pip install .whl/*.whl``)."""
    name, version = canonical(pin.split("==")[0]), pin.split("==")[1]
    found = None
    for path in sorted(directory.glob("*.whl")):
        n, v = wheel_name_version(path)
        if n != name:
            continue
        if v == version:
            found = path
        elif prune:
            print(f"prepare: removing {path.name} (the kit pins {pin})", file=sys.stderr)
            path.unlink()
    return found


# -- on the device -------------------------------------------------------------------------------

def unmet_on_device(paths: list[Path]) -> list[dict]:
    """Requirements of the carried wheels that this interpreter's own packages do not meet
    (the carried ones themselves excepted): what ``preflight`` reports and repairs."""
    carried = {wheel_name_version(p)[0] for p in paths}
    unmet = []
    for p in paths:
        name, version = wheel_name_version(p)
        for line in wheel_requires(p):
            req = Requirement(line)
            dep = canonical(req.name)
            if dep in carried or not applies(req, set(), default_environment()):
                continue
            try:
                installed = metadata.version(dep)
            except metadata.PackageNotFoundError:
                installed = None
            if installed is None or (req.specifier and not req.specifier.contains(
                    installed, prereleases=True)):
                unmet.append({"package": dep, "installed": installed, "needs": str(req),
                              "wanted_by": f"{name}=={version}"})
    return unmet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("pins", help="NAME==VERSION of every wheel to carry, one a line")
    sub.add_parser("fallbacks", help="NAME==VERSION of device packages the carried ones "
                                     "constrain, one a line")
    sub.add_parser("explain", help="the closure as JSON, with who wants what")
    hv = sub.add_parser("have", help="print the wheel of NAME==VERSION in DIR if there")
    hv.add_argument("dir", type=Path)
    hv.add_argument("pin")
    hv.add_argument("--prune", action="store_true", help="delete other versions of it")
    check = sub.add_parser("check", help="check that the wheels listed close over their needs")
    check.add_argument("wheels", nargs="+", type=Path)
    pre = sub.add_parser("preflight", help="JSON list of carried wheels' needs unmet here")
    pre.add_argument("wheels", nargs="*", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command in ("pins", "fallbacks", "explain"):
            c = project_closure()
            if args.command == "pins":
                print("\n".join(f"{n}=={v}" for n, v in sorted(c.carry.items())))
            elif args.command == "fallbacks":
                print("\n".join(f"{n}=={v}" for n, v in fallback_pins(c).items()))
            else:
                print(json.dumps({"carry": c.carry, "device_constraints": c.device}, indent=1))
        elif args.command == "have":
            found = have(args.dir, args.pin, args.prune)
            if found is not None:
                print(found)
        elif args.command == "check":
            problems = check_wheels(args.wheels, device_packages())
            for p in problems:
                print(f"wheels: {p}", file=sys.stderr)
            return 1 if problems else 0
        else:
            print(json.dumps(unmet_on_device(args.wheels)))
    except KitError as e:
        print(f"wheels: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
