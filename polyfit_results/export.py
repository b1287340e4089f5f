"""Exports that stream: a sweep's jobs written as CSV, JSON or Parquet a chunk at a time, from
the database's cursor to the file, so that memory stays flat whatever the sweep's size (the
table format needs every row to align its columns; use these for big sweeps).

CSV reads back with the csv module (JSON lists as JSON text, missing values empty), JSON is an
array of objects (one per line), Parquet (``pip install 'polyfit[arrow]'``) has typed columns:
times as UTC timestamps, coefficients as lists of doubles, for pandas and polars."""

from __future__ import annotations

import csv
import errno
import itertools
import json
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO

from polyfit_models import fields
from polyfit_models.errors import BadInput
from store.records import JobRecord
from store.rows import JOB_COLUMNS

#: Columns the database hands over as JSON text (written as it is), and times.
_JSON_TEXT = fields.LISTS
_TIMES = fields.TIMES


class ExportError(BadInput, ValueError):
    """Raised when an export cannot be written as asked (a missing library, no folder, a full
    disk), with one line that names the file."""


@contextmanager
def output_path(path: str | os.PathLike) -> Iterator[str]:
    """Where to write the file ``path``: a new file beside it, which takes its place only once
    written whole, so that a failed export (a full disk, an error half-way) leaves no
    half-written file and an older file as it was. A path that exists and is no regular file
    (``/dev/stdout``, a FIFO, ``/dev/full``) is written in place. Errors are ``ExportError``."""
    shown = os.fspath(path)
    target = os.path.realpath(path)  # a link is followed, not replaced by a file
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise ExportError(f"cannot write {shown}: {e.strerror or e}") from None
    if mode is not None and not stat.S_ISREG(mode):
        try:
            yield target
        except OSError as e:
            raise ExportError(f"cannot write {shown}: {e.strerror or e}") from None
        return
    if mode is not None and not os.access(target, os.W_OK):  # replacing would get round it
        raise ExportError(f"cannot write {shown}: {os.strerror(errno.EACCES)}")
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise ExportError(f"cannot write {shown}: no folder {os.path.dirname(shown) or folder}")
    part = os.path.join(folder, f".{os.path.basename(target)}.{os.getpid()}.part")
    try:
        os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))
        if mode is not None:
            os.chmod(part, stat.S_IMODE(mode))
    except OSError as e:
        raise ExportError(f"cannot write {shown}: cannot make a file in {folder}: "
                          f"{e.strerror or e}") from None
    try:
        yield part
        os.replace(part, target)
    except OSError as e:
        raise ExportError(f"cannot write {shown}: {e.strerror or e}") from None
    finally:
        if os.path.lexists(part):
            os.unlink(part)


@contextmanager
def output_text(path: str | os.PathLike) -> Iterator[IO[str]]:
    """``output_path`` opened for text (UTF-8, newlines as written)."""
    with output_path(path) as where, open(where, "w", encoding="utf-8", newline="") as out:
        yield out


def write_csv(rows: Iterable[tuple], out: IO[str], columns: Sequence[str] = JOB_COLUMNS) -> int:
    """Write the rows (in ``JOB_COLUMNS`` order, times as text) as CSV; returns how many."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    n = 0
    # None as empty (csv's own), floats in full (repr, which str of a float is too), the
    # times and JSON lists as the database's text.
    for chunk in _chunks(rows, 10_000):
        writer.writerows(chunk)
        n += len(chunk)
    return n


def _chunks(rows: Iterable[tuple], size: int):
    it = iter(rows)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def write_json(rows: Iterable[tuple], out: IO[str], columns: Sequence[str] = JOB_COLUMNS) -> int:
    """Write the rows as a JSON array of objects, one per line; returns how many."""
    lists = [i for i, c in enumerate(columns) if c in _JSON_TEXT]
    dumps, loads = json.JSONEncoder(allow_nan=False).encode, json.loads
    out.write("[")
    n = 0
    for chunk in _chunks(rows, 10_000):
        lines = []
        for row in chunk:
            values = list(row)
            for i in lists:  # stored JSON text: parsed, to be one JSON value of the object
                if values[i] is not None:
                    values[i] = loads(values[i])
            lines.append(dumps(dict(zip(columns, values))))
        out.write(("\n " if n == 0 else ",\n ") + ",\n ".join(lines))
        n += len(chunk)
    out.write("\n]\n" if n else "]\n")
    return n


def write_parquet(rows: Iterable[tuple], path: str, columns: Sequence[str] = JOB_COLUMNS,
                  chunk: int = 20_000) -> int:
    """Write the rows to a Parquet file, a row group per ``chunk`` rows; returns how many."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ExportError("--format parquet needs pyarrow: pip install 'polyfit[arrow]'") from e
    schema = pa.schema([(c, _arrow_type(pa, c)) for c in columns])
    n = 0
    with pq.ParquetWriter(path, schema) as writer:
        buffer: list[tuple] = []
        for row in rows:
            buffer.append(row)
            if len(buffer) >= chunk:
                writer.write_batch(_arrow_batch(pa, schema, columns, buffer))
                n += len(buffer)
                buffer = []
        if buffer or n == 0:
            writer.write_batch(_arrow_batch(pa, schema, columns, buffer))
            n += len(buffer)
    return n


def _arrow_type(pa, column: str):
    """A column's Arrow type, from the type the jobs table gives it (a column added to the
    table gets its type here without a list to keep in step)."""
    from sqlalchemy import JSON, DateTime, Float, Integer

    kind = JobRecord.__table__.c[column].type
    if isinstance(kind, DateTime):
        return pa.timestamp("us", tz="UTC")
    if isinstance(kind, JSON):
        return pa.list_(pa.float64())
    if isinstance(kind, Float):
        return pa.float64()
    if isinstance(kind, Integer):
        return pa.int64()
    return pa.string()


def _arrow_batch(pa, schema, columns: Sequence[str], rows: list[tuple]):
    values = list(zip(*rows)) if rows else [() for _ in columns]
    arrays = []
    for name, column in zip(columns, values):
        if name in _JSON_TEXT:
            column = [None if v is None else json.loads(v) for v in column]
        elif name in _TIMES:
            column = [None if v is None else datetime.fromisoformat(v) if isinstance(v, str)
                      else v.replace(tzinfo=UTC) if v.tzinfo is None else v for v in column]
        arrays.append(pa.array(column, type=schema.field(name).type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
