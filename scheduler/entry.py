"""The ``polyfit`` command's entry point: a ``sweep run`` starts its local worker's interpreter
first of all (``scheduler.early``), then the command line is imported and run."""

from __future__ import annotations

import sys


def main() -> None:
    from scheduler.early import prestart

    prestart(sys.argv[1:])
    from scheduler.cli import main as cli_main

    cli_main()
