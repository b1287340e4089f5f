"""Tables for people: on a terminal a table fits its width, keeping whole columns (no number is
cut) and naming those it left out; piped or written to a file it keeps every column."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

from polyfit_results import report
from tests.support.processes import polyfit_env

ROWS = [{"id": "a" * 12, "variant": "autograd", "lr": 1e-6, "mse": 0.00123456789,
         "coefficients": [0.123456789, -0.987654321, 0.5, 0.25]}] * 3
COLUMNS = ["id", "variant", "lr", "mse", "coefficients"]


def test_a_table_keeps_the_columns_that_fit_whole_and_names_the_others():
    full = report.render(ROWS, COLUMNS, "table").splitlines()
    assert max(map(len, full)) > 60 and full[0].split() == COLUMNS
    fitted = report.render(ROWS, COLUMNS, "table", width=42).splitlines()
    assert all(len(line) <= 42 for line in fitted[:-1])
    assert fitted[0].split() == ["id", "variant", "lr", "mse"]
    assert fitted[2].split() == ["a" * 12, "autograd", "1e-06", "0.00123457"]  # whole values
    assert fitted[-1].startswith("(1 more column than the terminal's 42 fit: coefficients;")
    # However narrow, the first two columns stay.
    assert report.render(ROWS, COLUMNS, "table", width=5).splitlines()[0].split() == [
        "id", "variant"]
    assert report.render(ROWS, COLUMNS, "table", width=10_000) == "\n".join(full)


def _on_a_terminal(args: list[str], columns: int, cwd) -> str:
    """``polyfit ARGS`` with its stdout on a pseudo-terminal ``columns`` wide."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "scheduler", *args], stdout=follower,
                            stderr=subprocess.PIPE, cwd=cwd, env=polyfit_env(NO_COLOR="1"))
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    return re.sub(r"\x1b\[[0-9;]*m", "", out.decode().replace("\r\n", "\n"))  # bold header


def test_results_fit_the_terminal_and_keep_every_column_when_piped(tmp_path):
    env = polyfit_env()
    submit = subprocess.run([sys.executable, "-m", "scheduler", "sweep", "submit", "--variant",
                             "numpy", "--seed", "0-2", "--epochs", "5"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert submit.returncode == 0, submit.stderr
    piped = subprocess.run([sys.executable, "-m", "scheduler", "results"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120).stdout
    assert max(map(len, piped.splitlines())) > 150  # every column
    shown = _on_a_terminal(["results"], 80, tmp_path)
    lines = [line for line in shown.splitlines() if line.strip()]
    assert all(len(line) <= 80 for line in lines[:-1]), shown
    assert lines[-1].startswith("(") and "more columns than the terminal's 80 fit" in lines[-1]
    assert lines[1].split()[:3] == ["id", "variant", "lr"], shown
