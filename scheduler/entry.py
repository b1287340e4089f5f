"""The ``polyfit`` command's entry point: a ``sweep run`` starts its local worker's interpreter
first of all (``scheduler.early``), then the command line is imported and run."""

from __future__ import annotations

import gc
import sys


def main() -> None:
    from scheduler.early import prestart

    prestart(sys.argv[1:])
    from scheduler.cli import main as cli_main

    try:
        cli_main()
    finally:
        # The command is done and its connections are closed (``store.db.dispose_all``): what
        # is left is the interpreter's teardown, whose garbage collections walk every object of
        # some 900 modules (0.2-0.3 s of a command's 1 s here). Frozen objects are skipped;
        # the exit frees them all at once.
        gc.freeze()
