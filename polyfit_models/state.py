"""A job's training state, kept when its batch stops before the end, to continue from later.

A batch asked to stop (``fit_many(..., halt=...)``) stops at the end of a 100-epoch window,
right after an update, and hands back one :class:`JobState` per job instead of a result: the
epochs done, whether it trained fused, and named float64 arrays: its parameters, its optimizer's
state (momentum buffer, Adam's moments and step count, RMSprop's averages), the loop's
bookkeeping (the last window's parameters and loss to fall back to, the explosion limit, whether
it still trains, where it diverged or stopped) and its loss curve so far. A batch started from
such states continues with the same numbers an uninterrupted run would have had: float64 holds
every float32 and float64 value exactly, and the ``dynamic`` variant's draws are replayed from
the job's seed (the k of every epoch is a function of the seed and the epoch alone).

``to_bytes``/``from_bytes`` is the stored form: a short JSON header (names and shapes) and the
raw little-endian float64 values. Nothing is unpickled; ``from_bytes`` checks every size and
raises ``StateError`` on anything else."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .errors import StateError

MAGIC = b"polyfit-state-1\n"
#: A header bigger than this is not one of ours (a few hundred bytes in practice).
MAX_HEADER = 64 * 1024


@dataclass(frozen=True, eq=False)
class JobState:
    """Where one job's training stopped (see the module docstring)."""

    epoch: int  # epochs done: the next update is epoch ``epoch``
    fused: bool  # trained with its epoch compiled: a continuation takes the same path
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        names = sorted(self.arrays)
        arrays = [np.asarray(self.arrays[n], dtype="<f8") for n in names]
        header = json.dumps({"epoch": self.epoch, "fused": self.fused,
                             "arrays": [[n, list(a.shape)] for n, a in zip(names, arrays)]},
                            separators=(",", ":")).encode()
        return b"".join([MAGIC, len(header).to_bytes(4, "little"), header,
                         *(a.tobytes() for a in arrays)])

    @classmethod
    def from_bytes(cls, blob: bytes) -> JobState:
        """The state ``to_bytes`` wrote; ``StateError`` for anything else."""
        blob = bytes(blob)
        if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 4:
            raise StateError("not a polyfit training state")
        at = len(MAGIC) + 4
        size = int.from_bytes(blob[len(MAGIC):at], "little")
        if size > MAX_HEADER or at + size > len(blob):
            raise StateError("training state: bad header size")
        try:
            header = json.loads(blob[at:at + size])
            epoch, fused, specs = header["epoch"], header["fused"], header["arrays"]
        except (ValueError, KeyError, TypeError):
            raise StateError("training state: unreadable header") from None
        if not _count(epoch) or not isinstance(fused, bool) or not isinstance(specs, list):
            raise StateError("training state: bad header")
        arrays, offset = {}, at + size
        for item in specs:
            if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                    or not isinstance(item[1], list) or len(item[1]) > 2
                    or not all(_count(d) for d in item[1])):
                raise StateError("training state: bad array entry")
            n = int(np.prod(item[1], dtype=np.int64))
            if offset + 8 * n > len(blob):
                raise StateError("training state: truncated")
            arrays[item[0]] = np.frombuffer(blob, "<f8", n, offset).reshape(item[1]).copy()
            offset += 8 * n
        if offset != len(blob):
            raise StateError("training state: trailing bytes")
        return cls(epoch, fused, arrays)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 40


@dataclass
class Suspended:
    """A stopped batch's states as the loop produces and takes them: rows are jobs."""

    epoch: int
    rows: dict[str, np.ndarray]

    def take(self, rows: slice) -> Suspended:
        return Suspended(self.epoch, {k: v[rows] for k, v in self.rows.items()})


def stack(states: list[JobState]) -> Suspended:
    """Per-job states of one epoch as one batch's rows (``StateError`` if they do not fit)."""
    names = set(states[0].arrays)
    if any(s.epoch != states[0].epoch or set(s.arrays) != names for s in states):
        raise StateError("training states of one batch differ in epoch or content")
    try:
        return Suspended(states[0].epoch,
                         {n: np.stack([s.arrays[n] for s in states]) for n in names})
    except ValueError as e:
        raise StateError(f"training states of one batch do not fit together: {e}") from None


def unstack(suspended: Suspended, fused: bool) -> list[JobState]:
    rows = len(next(iter(suspended.rows.values())))
    return [JobState(suspended.epoch, fused,
                     {n: np.asarray(v[r], dtype=np.float64) for n, v in suspended.rows.items()})
            for r in range(rows)]
