"""Rendering rows for people and for programs: an aligned table, CSV that the csv module reads
back, or JSON. Also the one-line progress summary of a sweep."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence

from store.records import CANCELLED, ENDED, RUNNING

FORMATS = ("table", "csv", "json")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    return value


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def render(rows: Sequence[Mapping], columns: Sequence[str], fmt: str) -> str:
    """``rows`` as text in ``fmt`` (table, csv or json), with these ``columns`` in this order."""
    if fmt == "json":
        return json.dumps([{c: _json_safe(r.get(c)) for c in columns} for r in rows], indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([_csv_cell(r.get(c)) for c in columns])
        return buf.getvalue().rstrip("\n")
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    if not rows:
        lines.append("(no rows)")
    return "\n".join(lines)


def progress_line(counts: Mapping[str, int], total: int, rate: float | None,
                  eta_s: float | None) -> str:
    done = sum(counts.get(s, 0) for s in ENDED)
    width = 24
    filled = int(width * done / total) if total else width
    bar = "#" * filled + "." * (width - filled)
    parts = [f"[{bar}] {done}/{total}",
             f"{counts.get('succeeded', 0)} succeeded",
             f"{counts.get('diverged', 0)} diverged",
             f"{counts.get('failed', 0)} failed"]
    if counts.get(RUNNING):
        parts.append(f"{counts['running']} running")
    if counts.get(CANCELLED):
        parts.append(f"{counts['cancelled']} cancelled")
    if rate:
        parts.append(f"{rate:.1f} fits/s")
    if eta_s is not None and done < total:
        parts.append(f"ETA {format_seconds(eta_s)}")
    return " | ".join(parts)


def format_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
