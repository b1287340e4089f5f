"""``polyfit sql``: a read-only SQL query on the results database (``store.user_sql`` runs it
as an account that cannot write), printed as a table or streamed as csv or json."""

from __future__ import annotations

import csv
import json
import sys
from decimal import Decimal
from itertools import islice

import click

from polyfit_results import report
from scheduler.cli.group import cli
from scheduler.cli.helpers import FiniteFloat, pass_settings, styled, table_width
from store.user_sql import sql_rows
from worker.settings import Settings

#: The most text a ``polyfit sql`` table holds and lays out (a cell counts its text and 32
#: bytes); csv and json print each row as it comes and hold none.
SQL_TABLE_BYTES = 8 * 2**20


@cli.command()
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(report.FORMATS), default="table",
              show_default=True,
              help="csv and json print the rows as they come (memory stays flat); a table "
                   f"holds at most {SQL_TABLE_BYTES // 2**20} MiB of text.")
@click.option("--timeout", "timeout_s", type=FiniteFloat(0.01, 86400), default=None,
              help="Stop the statement after this many seconds. [default: 30, or "
                   "POLYFIT_SQL_TIMEOUT_S]")
@click.option("--max-rows", type=click.IntRange(1, 10**9), default=None,
              help="Return at most this many rows. [default: 100,000, or POLYFIT_SQL_MAX_ROWS]")
@pass_settings()
def sql(settings: Settings, query, fmt, timeout_s, max_rows) -> None:
    """A read-only SQL query on the results database.

    On PostgreSQL it runs as an account that cannot write or escalate: POLYFIT_SQL_URL, else
    the results URL's own account if it is such an account, else the role polyfit_reader
    (create it once with `polyfit db create-reader`)."""
    max_rows = max_rows or settings.sql_max_rows
    with sql_rows(settings.db_url, query, sql_url=settings.sql_url,
                  timeout_s=timeout_s or settings.sql_timeout_s) as out:
        if fmt == "table":
            table, full = _table_rows(islice(out.rows, max_rows), out.columns)
            click.echo(report.render(table, out.columns, fmt, styled(), table_width()))
            shown = len(table)
        else:
            write = _write_csv if fmt == "csv" else _write_json
            shown, full = write(islice(out.rows, max_rows), out.columns, sys.stdout), False
            sys.stdout.flush()
        more = shown == max_rows and next(out.rows, None) is not None
    if full:
        click.echo(f"warning: only the first {shown:,} rows are shown: a table holds at most "
                   f"{SQL_TABLE_BYTES // 2**20} MiB of text (--format csv or json prints "
                   "every row)", err=True)
    elif more:
        click.echo(f"warning: only the first {shown:,} rows are shown (--max-rows, "
                   "POLYFIT_SQL_MAX_ROWS)", err=True)


def _table_rows(rows, columns: list[str]) -> tuple[list[dict], bool]:
    """The rows a table shows (as dicts), up to ``SQL_TABLE_BYTES`` of text; and whether
    that limit left rows out."""
    out, size = [], 0
    for row in rows:
        size += sum(len(report.cell(v)) + 32 for v in row)
        if size > SQL_TABLE_BYTES and out:
            return out, True
        out.append(dict(zip(columns, row)))
    return out, False


def _write_csv(rows, columns: list[str], stream) -> int:
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(columns)
    n = 0
    for row in rows:
        writer.writerow([report.csv_cell(v) for v in row])
        n += 1
    return n


def _write_json(rows, columns: list[str], stream) -> int:
    """The rows as one JSON list, as ``report.render`` writes it, written row by row."""
    n = 0
    for row in rows:
        item = report.json_ready(dict(zip(columns, row)))
        text = json.dumps(item, indent=1, default=_json_default).replace("\n", "\n ")
        stream.write(("[\n " if n == 0 else ",\n ") + text)
        n += 1
    stream.write("[]\n" if n == 0 else "\n]\n")
    return n


def _json_default(value: object) -> object:
    """What PostgreSQL hands back that JSON has no type for: numeric as a number, bytes as
    hex, anything else (intervals, ranges, addresses) as its text."""
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)
