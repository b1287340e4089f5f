"""A process whose wall clock is off, as on a host without NTP: a small ``LD_PRELOAD`` library,
built here with the C compiler, that adds ``CLOCKSHIFT_S`` seconds to every read of the real-time
clock (``clock_gettime(CLOCK_REALTIME...)``, ``gettimeofday``, ``time``) of the process it is
preloaded into and of its children (Celery's pool processes). The monotonic clock, and so every
timeout and sleep, is left alone: a host's clock error moves its wall clock, nothing else.

Why not Debian's libfaketime (0.9.10): with ``FAKETIME=-120s`` it moves the monotonic clock as
well, and then Python 3.11's ``threading.Event.wait(timeout)`` and ``Lock.acquire(timeout)``
(``sem_clockwait`` on ``CLOCK_MONOTONIC``) never return: a worker's heartbeat thread hangs, so
the worker never beats and is rightly taken for dead. With ``FAKETIME_DONT_FAKE_MONOTONIC=1``,
``time.sleep`` (``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)``) fails with EINVAL."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

ENV = "CLOCKSHIFT_S"

SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static long long shift_ns = 0;
static int ready = 0;

static void init(void) {
    if (ready) return;
    real_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    const char *s = getenv("CLOCKSHIFT_S");
    shift_ns = s ? (long long)(atof(s) * 1e9) : 0;
    ready = 1;
}

int clock_gettime(clockid_t clk, struct timespec *ts) {
    init();
    int r = real_clock_gettime(clk, ts);
    if (r == 0 && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE)) {
        long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + shift_ns;
        ts->tv_sec = ns / 1000000000LL;
        ts->tv_nsec = ns % 1000000000LL;
    }
    return r;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    (void)tz;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return 0;
}

time_t time(time_t *t) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (t) *t = ts.tv_sec;
    return ts.tv_sec;
}
"""


class ClockShiftError(Exception):
    """Raised when the library cannot be built here (no C compiler)."""


def build(folder: Path) -> Path:
    """The library, compiled into ``folder``."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise ClockShiftError("no C compiler (cc) to build the clock-shifting library")
    src, lib = folder / "clockshift.c", folder / "libclockshift.so"
    src.write_text(SOURCE)
    out = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(src), "-ldl"],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise ClockShiftError(f"cc failed: {out.stderr.strip()[:500]}")
    return lib


def shifted(lib: Path, seconds: float) -> dict[str, str]:
    """The environment of a process whose wall clock is ``seconds`` off (negative: behind)."""
    return {"LD_PRELOAD": str(lib), ENV: f"{seconds:g}"}


def offset_of(env: dict) -> float:
    """How far the wall clock of a Python process started with ``env`` is from this one's."""
    out = subprocess.run([sys.executable, "-c", "import time; print(time.time())"], env=env,
                         capture_output=True, text=True, check=True, timeout=60)
    return float(out.stdout) - time.time()
