"""A sweep's progress while it runs: on a terminal, rich's progress bar redrawn in place with the
counts, the rate and the ETA beside it; anywhere else (a log, a file, a pipe) the plain progress
line, at most every few seconds, so that logs stay readable and parseable."""

from __future__ import annotations

import time
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Column

from polyfit_results import report
from polyfit_results.queries import Progress as SweepProgress


class LiveProgress:
    """Use as a context manager; ``show`` each new reading, ``show(p, last=True)`` the end."""

    def __init__(self, stream: TextIO, *, terminal: bool, every_s: float = 5.0,
                 label: str = "") -> None:
        self.stream, self.terminal, self.every_s, self.label = stream, terminal, every_s, label
        self._last = -float("inf")
        self._bar: Progress | None = None
        self._task = None

    def __enter__(self) -> LiveProgress:
        if self.terminal:
            # The bar and the counts keep their width; the details give way (cut with an
            # ellipsis, here: rich's table kept a short detail whole and squeezed the bar, past
            # the terminal's width) on a narrow terminal, so that the line never wraps.
            self._width = report.terminal_width(self.stream) or 80
            self._bar_width = 20 if self._width >= 100 else max(5, self._width // 10)
            self._bar = Progress(
                TextColumn("[bold]{task.description}",
                           table_column=Column(no_wrap=True, overflow="ellipsis", max_width=32)),
                BarColumn(bar_width=self._bar_width),
                MofNCompleteColumn(table_column=Column(no_wrap=True, min_width=9)),
                TextColumn("{task.fields[detail]}",
                           table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
                console=Console(file=self.stream, force_terminal=True, width=self._width),
                transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=None, detail="starting")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def show(self, p: SweepProgress, last: bool = False) -> None:
        rounds = report.phase_detail(p.to_dict())
        if self._bar is not None:
            detail = report.progress_detail(p.counts, p.total, p.fits_per_s, p.eta_s, p.idle_s,
                                            p.running_done) + rounds
            counted = max(9, 2 * len(str(p.total)) + 1)  # "ended/total", as rich pads it
            room = max(8, self._width - (min(len(self.label), 32) + 1) - (self._bar_width + 1)
                       - (counted + 1) - 1)
            if len(detail) > room:
                detail = detail[: room - 1] + "…"
            self._bar.update(self._task, completed=p.ended, total=p.total, detail=detail)
            return
        now = time.monotonic()
        if last or now - self._last >= self.every_s:
            prefix = f"{self.label}: " if self.label else ""
            print(prefix + report.progress_line(p.counts, p.total, p.fits_per_s, p.eta_s,
                                                p.idle_s, p.running_done) + rounds,
                  file=self.stream, flush=True)
            self._last = now
