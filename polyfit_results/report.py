"""Rendering rows for people and for programs: a table (rich's, plain when the output is not a
terminal: columns apart, a line of dashes under the header, no colour or frame, what ``cut`` and
``awk`` read), CSV that the csv module reads back, or JSON. Also the one-line progress summary
of a sweep."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence

from rich import box
from rich.console import Console
from rich.table import Table

from store.records import CANCELLED, ENDED, PAUSED, PRUNED, RUNNING

FORMATS = ("table", "csv", "json")
# No frame, a line of dashes under the header, nothing between columns but spaces.
_PLAIN = box.Box("    \n    \n -  \n    \n    \n    \n    \n    \n", ascii=True)


def cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    return value


def json_ready(row: Mapping) -> dict:
    """A row with values JSON can hold (times as ISO text, no NaN)."""
    return {k: _json_safe(v) for k, v in row.items()}


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def render(rows: Sequence[Mapping], columns: Sequence[str], fmt: str,
           styled: bool = False, width: int | None = None) -> str:
    """``rows`` as text in ``fmt`` (table, csv or json), with these ``columns`` in this order;
    ``styled``: a table for a terminal (bold header, a rule under it). ``width``: a table
    keeps the columns that fit in this many characters, whole (no cell is cut), and says
    which it left out; None keeps every column (a pipe or a file gets the full table)."""
    if fmt == "json":
        return json.dumps([{c: _json_safe(r.get(c)) for c in columns} for r in rows], indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([csv_cell(r.get(c)) for c in columns])
        return buf.getvalue().rstrip("\n")
    texts = [[cell(r.get(c)) for c in columns] for r in rows]
    left_out: list[str] = []
    if width is not None:
        columns, texts, left_out = _fitting(list(columns), texts, width, 3 if styled else 2)
    table = Table(box=box.SIMPLE_HEAD if styled else _PLAIN, show_edge=False, pad_edge=False,
                  padding=(0, 1) if styled else (0, 1, 0, 0), highlight=False,
                  header_style="bold" if styled else "")
    for c in columns:
        table.add_column(c, no_wrap=True, overflow="ignore")
    for row in texts:
        table.add_row(*row)
    buf = io.StringIO()
    Console(file=buf, width=1_000_000, force_terminal=styled, highlight=False, soft_wrap=True,
            color_system="standard" if styled else None).print(table)
    lines = [line.rstrip() for line in buf.getvalue().splitlines()]
    if not rows:
        lines.append("(no rows)")
    if left_out:
        lines.append(f"({len(left_out)} more column{'s' if len(left_out) > 1 else ''} than "
                     f"the terminal's {width} fit: {', '.join(left_out)}; --format csv or json "
                     "has them all)")
    return "\n".join(lines)


def _fitting(columns: list[str], texts: list[list[str]], width: int, gap: int
             ) -> tuple[list[str], list[list[str]], list[str]]:
    """The leading columns whose widest cells fit in ``width`` (at least the first two);
    ``gap``: what the table puts between two columns (padding and divider)."""
    used, keep = 1, 0  # the last column's padding
    for i, c in enumerate(columns):
        need = max([len(c), *(len(row[i]) for row in texts)]) + (gap if i else 0)
        if used + need > width and keep >= 2:
            break
        used, keep = used + need, keep + 1
    return columns[:keep], [row[:keep] for row in texts], columns[keep:]


def terminal_width(stream) -> int | None:
    """The width of the terminal ``stream`` writes to; None when it is not one (a pipe, a
    file: those get every column)."""
    import os

    try:
        return os.get_terminal_size(stream.fileno()).columns if stream.isatty() else None
    except (OSError, ValueError, AttributeError):
        return None


def progress_line(counts: Mapping[str, int], total: int, rate: float | None,
                  eta_s: float | None, idle_s: float | None = None,
                  running_done: float | None = None) -> str:
    """The plain one-line progress of a sweep (logs, files, ``status``)."""
    done = sum(counts.get(s, 0) for s in ENDED)
    width = 24
    filled = int(width * done / total) if total else width
    bar = "#" * filled + "." * (width - filled)
    return f"[{bar}] {done}/{total} | " + progress_detail(counts, total, rate, eta_s, idle_s,
                                                          running_done)


def progress_detail(counts: Mapping[str, int], total: int, rate: float | None,
                    eta_s: float | None, idle_s: float | None = None,
                    running_done: float | None = None) -> str:
    """The counts, the rate and the ETA of a sweep, beside its bar (``running_done``: the
    share of the running jobs' epochs done, as their workers last reported)."""
    done = sum(counts.get(s, 0) for s in ENDED)
    parts = [f"{counts.get('succeeded', 0)} succeeded",
             f"{counts.get('diverged', 0)} diverged",
             f"{counts.get('failed', 0)} failed"]
    if counts.get(RUNNING):
        through = f" ({running_done:.0%} through)" if running_done else ""
        parts.append(f"{counts['running']} running{through}")
    if counts.get(CANCELLED):
        parts.append(f"{counts['cancelled']} cancelled")
    for status in (PAUSED, PRUNED):  # successive halving: waiting at a rung's end, pruned
        if counts.get(status):
            parts.append(f"{counts[status]} {status}")
    if rate:
        parts.append(f"{rate:.1f} fits/s")
    if eta_s is not None and done < total:
        parts.append(f"ETA {format_seconds(eta_s)}")
    if idle_s is not None:
        parts.append(f"no worker for {format_seconds(idle_s)}")
    return " | ".join(parts)


def idle_hint(sweep: str, idle_s: float) -> str:
    """What to do when nothing serves a sweep."""
    return (f"no worker has taken a job of this sweep for {format_seconds(idle_s)}: start one "
            f"with `polyfit worker` (the same --db and --broker), or train it here with "
            f"`polyfit sweep run {sweep}`")


def unserved_hint(variants: Mapping[str, float]) -> str:
    """What to do when no worker serves a sweep's jobs of plugin variants."""
    names = ", ".join(variants)
    return (f"no worker has taken a job of {'variant' if len(variants) == 1 else 'variants'} "
            f"{names} for {format_seconds(max(variants.values()))}: only a worker with the "
            f"plugin installed trains them; start `polyfit worker` where its package is "
            f"installed (`polyfit variants` lists it there)")


def plural(n: int, one: str, many: str | None = None) -> str:
    """'1 job', '2 jobs', '1 batch', '3 batches'."""
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def format_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def phase_detail(progress: dict) -> str:
    """' | tpe round 2/3, ...' and ' | rung 2/3 (500 epochs)' for a search and a halving, from
    ``Progress.to_dict()``; '' for a plain grid."""
    out = ""
    if progress.get("search") is not None:
        out += f" | {search_detail(progress['search'])}"
    if progress.get("halving") is not None:
        h = progress["halving"]
        out += f" | rung {h['rung'] + 1}/{h['rungs']} ({h['epochs']} epochs)"
    return out


def search_detail(search: dict) -> str:
    """'tpe round 2/3, 16/24 trials' (and 'done', or 'failed: why'), from ``Progress.to_dict``'s
    ``search``."""
    text = (f"{search['sampler']} round {search['round']}/{search['rounds']}, "
            f"{search['asked']}/{search['trials']} trials")
    if search["state"] == "failed":
        return f"{text}, search failed: {search['error']}"
    return f"{text}, search done" if search["state"] == "done" else text
