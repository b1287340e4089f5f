"""Issue 25's goals, each against its baseline, measured side by side in one run.

The sweep, unless said: the lesson's autograd fit (degree 3, 2000 points, 2000 epochs) at 2
learning rates x N/2 seeds. Each goal is measured by the benchmark that owns it (this file only
calls their measuring functions and sets the figures against the targets):

  tiny       a tiny ``sweep run`` (2 autograd jobs of 1 epoch, fresh folder) at most 1.3x
             ``python -c "import torch"`` (bench_start: interleaved runs, medians);
  sweep64    64 fits through ``sweep run`` at least 10x the lesson's loop (bench_peers);
  warm64     64 fits through a warm fleet, submit to stored, at least 10x the loop
             (bench_warm: the sweep cut for the fleet that is up);
  sweep1024  1,024 fits through ``sweep run`` at least 80x the loop and 160x Optuna
             (bench_peers; Optuna timed on 16 and 64 trials and extrapolated: a lower bound);
  peak8192   the sweep's marginal cost from 1,024 to 8,192 fits at least 60 % of the
             all-thread float32 peak timed in this run (bench_peers.sweep_marginal);
  host       P ``polyfit worker --concurrency 1`` on one host, and ``celery -A worker.app
             worker`` with Celery's defaults, each within 1.25x of one worker of P processes
             (bench_host);
  fused      no sweep slower for fusing, cold cache included: ``fuse=None`` with an empty
             compile cache against unfused, 1,024 fits, at most 1.05x (1.0 within 5 % noise)
             (bench_cold).

The lesson's loop (one fit after another, one torch thread) is timed once, on a few fits, and
extrapolated: the baseline of sweep64, warm64 and sweep1024. ``--quick`` runs every goal at
tiny sizes (8 fits for 64, 64 for 1,024, 128 for 8,192, one repeat): it shows that each
measurement runs; its figures are not comparable with the targets. A goal whose prerequisite is
missing (redis-server, Optuna) says so in its row and the rest runs. Prints as it goes, then one
table and the machine; writes the figures to ``benchmarks/out/goals.json`` (``--out``).

    python benchmarks/bench_goals.py [--quick] [--only tiny,sweep64,...] [--repeats N]
        [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import bench_cold, bench_host, bench_peers, bench_start, bench_warm  # noqa: E402
from worker.cores import usable_cores  # noqa: E402

GOALS = ("tiny", "sweep64", "sweep1024", "peak8192", "warm64", "host", "fused")
#: Fits (jobs) of each goal, and of the baselines timed on a sample: full and --quick.
FULL = dict(sweep64=64, warm64=64, sweep1024=1024, peak8192=8192, host=1024, fused=1024,
            peer_fits=64, loop_sample=16)
QUICK = dict(sweep64=8, warm64=8, sweep1024=64, peak8192=128, host=64, fused=64,
             peer_fits=8, loop_sample=2)
#: Runs of each goal unless --repeats (each benchmark's own default; fused: 3, as one run of
#: a side is noisier than its 5 % tolerance); --quick: one.
REPEATS = dict(tiny=5, warm64=3, fused=3)
QUICK_NOTE = "quick: not comparable"
FUSED_NOTE = ("fuse=None cold / unfused <= 1.05: no slower than unfused, within 5 % noise; "
              "where fuse=None did not fuse, both sides ran one path: met by construction")
NEEDS_LOOP = {"sweep64", "warm64", "sweep1024"}


@dataclass
class Row:
    goal: str
    check: str  # what is set against what
    op: str  # ">=" or "<="
    target: float | None  # None: a goal that failed before its check was known
    unit: str = "x"  # "x" (a ratio) or "%" (a fraction, shown as a percentage)
    value: float | None = None  # None: not measured (``note`` says why)
    note: str = ""
    #: The sides measured the same code path (``fused``: fuse=None did not fuse), so the
    #: figure is the run-to-run noise of one path and the goal holds by construction.
    same_path: bool = False


def verdict(value: float, op: str, target: float) -> str:
    """``met`` where ``value op target`` holds, else ``missed``."""
    ok = value >= target if op == ">=" else value <= target
    return "met" if ok else "missed"


def _fmt(value: float, unit: str) -> str:
    return f"{value:.1%}" if unit == "%" else f"{value:.2f}x"


def row_verdict(row: Row, quick: bool) -> str:
    """``met``/``missed``; ``not comparable`` in a --quick run; ``not measured`` (the note says
    why) or ``failed`` where there is no figure."""
    if row.value is None or row.target is None:
        return "failed" if row.note.startswith("failed") else "not measured"
    if quick:
        return "not comparable"
    return "met (not fused)" if row.same_path else verdict(row.value, row.op, row.target)


def format_row(r: Row, quick: bool) -> str:
    figure = _fmt(r.value, r.unit) if r.value is not None else "-"
    target = "-" if r.target is None else \
        f"{r.op} " + (f"{r.target:.0%}" if r.unit == "%" else f"{r.target:g}x")
    return f"{r.goal:<10} {r.check:<52} {figure:>9} {target:>9}  {row_verdict(r, quick)}"


def table(rows: list[Row], quick: bool, machine_line: str) -> list[str]:
    """The report: a line per row (goal, check, figure, target, verdict), its notes, the
    machine."""
    head = f"{'goal':<10} {'check':<52} {'measured':>9} {'target':>9}  verdict"
    lines = [head, "-" * (len(head) + 6), *(format_row(r, quick) for r in rows), ""]
    lines += [f"  {r.goal}: {r.note}" for r in rows if r.note]
    if any(r.goal == "fused" for r in rows):
        lines.append(f"  fused, the check: {FUSED_NOTE}")
    if quick:
        lines.append(f"  {QUICK_NOTE} (--quick: tiny sizes; the figures only show that each "
                     "measurement runs)")
    lines.append(machine_line)
    return lines


def machine() -> dict:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return dict(arch=platform.machine(), cores=usable_cores(), cpu=model,
                torch=torch.__version__, python=platform.python_version())


def machine_line(m: dict) -> str:
    return (f"machine: {m['arch']}, {m['cores']} cores ({m['cpu']}), torch {m['torch']}, "
            f"python {m['python']}")


def say(text: str) -> None:
    print(text, flush=True)


class Run:
    """One run of the goals: the sizes, the repeats, and the figures shared between goals
    (the loop's cost per fit, the sweeps already run)."""

    def __init__(self, sizes: dict, repeats: int | None, tmp: Path) -> None:
        self.sizes, self.repeats, self.tmp = sizes, repeats, tmp
        self.loop_per_fit: float | None = None
        self.sweeps: dict[int, list[float]] = {}
        self.details: dict = {}

    def n(self, goal: str) -> int:
        return self.repeats if self.repeats is not None else REPEATS.get(goal, 1)

    def loop(self) -> float:
        """Seconds a fit of the lesson's loop (one torch thread), timed once per run."""
        if self.loop_per_fit is None:
            sample = self.sizes["loop_sample"]
            say(f"[loop] the lesson's loop on {sample} fits ...")
            _, _, self.loop_per_fit = bench_peers.peer_cost(
                "plain loop", bench_peers.plain_loop, sample, sample, self.tmp)
            self.details["loop"] = dict(sample=sample, s_per_fit=self.loop_per_fit)
            say(f"[loop] {self.loop_per_fit:.3f} s/fit")
        return self.loop_per_fit

    def sweep(self, fits: int) -> float:
        """Median seconds of ``polyfit sweep run`` of ``fits`` fits in a fresh folder."""
        if fits not in self.sweeps:
            runs = []
            for _ in range(self.n("sweep")):
                runs.append(bench_peers.polyfit_sweep_run(fits)[0])
                say(f"[sweep] polyfit sweep run, {fits:,} fits: {runs[-1]:.1f} s")
            self.sweeps[fits] = runs
            self.details.setdefault("sweep_run_seconds", {})[fits] = runs
        return statistics.median(self.sweeps[fits])

    # --- the goals: each returns its rows --------------------------------------------------

    def tiny(self) -> list[Row]:
        times = bench_start.measure(self.n("tiny"))
        self.details["tiny"] = times
        fresh = statistics.median(times["tiny sweep, fresh"])
        floor = statistics.median(times["import torch"])
        return [Row("tiny", 'tiny sweep run, fresh / python -c "import torch"', "<=", 1.3,
                    value=fresh / floor,
                    note=f"{fresh:.2f} s against {floor:.2f} s, medians of "
                         f"{len(times['import torch'])} interleaved runs")]

    def _against_loop(self, goal: str, fits: int, seconds: float, what: str,
                      target: float) -> Row:
        loop = self.loop() * fits
        return Row(goal, f"lesson loop* / {what}, {fits:,} fits", ">=", target,
                   value=loop / seconds,
                   note=f"{what} {seconds:.1f} s, loop {loop:.1f} s (* timed on "
                        f"{self.sizes['loop_sample']} fits, extrapolated)")

    def sweep64(self) -> list[Row]:
        fits = self.sizes["sweep64"]
        return [self._against_loop("sweep64", fits, self.sweep(fits), "sweep run", 10)]

    def warm64(self) -> list[Row]:
        fits = self.sizes["warm64"]
        if not shutil.which("redis-server"):
            return [Row("warm64", f"lesson loop* / warm fleet, {fits:,} fits", ">=", 10,
                        note="not measured: redis-server not on PATH")]
        m = bench_warm.measure(fits, self.n("warm64"), 0)
        self.details["warm64"] = m
        took = statistics.median(m["sides"]["cut for the fleet that is up"])
        row = self._against_loop("warm64", fits, took, "warm fleet", 10)
        row.note += f"; a worker of {m['cores']} processes, median of {self.n('warm64')}"
        return [row]

    def sweep1024(self) -> list[Row]:
        fits = self.sizes["sweep1024"]
        took = self.sweep(fits)
        rows = [self._against_loop("sweep1024", fits, took, "sweep run", 80)]
        optuna = Row("sweep1024", f"Optuna* / sweep run, {fits:,} fits", ">=", 160)
        if not bench_peers.installed("optuna"):
            optuna.note = "not measured: optuna not installed (pip install -e '.[bench]')"
            return [*rows, optuna]
        large = self.sizes["peer_fits"]
        small = max(2, large // 4)
        say(f"[sweep1024] Optuna on {small} and {large} trials ...")
        measured, fixed, marginal = bench_peers.peer_cost(
            "optuna", bench_peers.optuna_study, small, large, self.tmp)
        seconds = measured.get(fits, fixed + marginal * fits)
        self.details["optuna"] = dict(measured=measured, fixed_s=fixed, s_per_fit=marginal,
                                      seconds=seconds)
        optuna.value = seconds / took
        optuna.note = (f"Optuna {seconds:.1f} s (* fixed {fixed:.1f} s + {marginal:.3f} s/fit, "
                       f"timed on {small} and {large} trials: a lower bound)")
        return [*rows, optuna]

    def peak8192(self) -> list[Row]:
        lo, hi = self.sizes["sweep1024"], self.sizes["peak8192"]
        seconds = {lo: self.sweep(lo), hi: self.sweep(hi)}
        threads = os.cpu_count() or 1  # bench_peers' all-thread peak
        peak = bench_peers.peak_flops(threads)
        m = bench_peers.sweep_marginal(seconds, lo, hi, peak)
        self.details["peak8192"] = dict(m, peak_flops=peak, threads=threads)
        return [Row("peak8192", f"sweep run marginal ({lo:,} -> {hi:,} fits) / peak", ">=",
                    0.6, unit="%", value=m["fraction_of_peak"],
                    note=f"{m['s_per_fit'] * 1e3:.2f} ms/fit = "
                         f"{m['flops_per_fit'] / m['s_per_fit'] / 1e9:.1f} GFLOP/s; float32 "
                         f"peak {peak / 1e9:.1f} GFLOP/s on {threads} threads")]

    def host(self) -> list[Row]:
        fits = self.sizes["host"]
        if not shutil.which("redis-server"):
            return [Row("host", f"workers on one host / one worker, {fits:,} fits", "<=", 1.25,
                        note="not measured: redis-server not on PATH")]
        runs = [bench_host.measure(fits) for _ in range(self.n("host"))]
        took = {label: statistics.median(r[label] for r in runs) for label in runs[0]}
        self.details["host"] = runs
        (base_label, base), *others = took.items()
        rows = [Row("host", f"{label.split(' (')[0]} / one worker", "<=", 1.25,
                    value=seconds / base, note=f"{label}: {seconds:.1f} s")
                for label, seconds in others]
        rows[0].note = (f"{fits:,} fits, warm workers, submit to stored; {base_label}: "
                        f"{base:.1f} s; " + rows[0].note)
        return rows

    def fused(self) -> list[Row]:
        jobs, threads = self.sizes["fused"], os.cpu_count() or 1
        runs = [bench_cold.measure(jobs, bench_peers.EPOCHS, bench_peers.POINTS, threads,
                                   sides=("unfused", "auto, cold"))
                for _ in range(self.n("fused"))]
        self.details["fused"] = runs
        ratio = statistics.median(r["auto, cold"]["s"] / r["unfused"]["s"] for r in runs)
        last = runs[-1]
        return [Row("fused", f"fuse=None, cold cache / unfused, {jobs:,} fits", "<=", 1.05,
                    value=ratio, same_path=not any(r["auto, cold"]["fused"] for r in runs),
                    note=f"unfused {last['unfused']['s']:.1f} s, fuse=None cold "
                         f"{last['auto, cold']['s']:.1f} s (fused: "
                         f"{last['auto, cold']['fused']}), {threads} threads")]


FAILURES = (SystemExit, OSError, RuntimeError, subprocess.CalledProcessError, ValueError)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: figures not "
                                                          "comparable with the targets")
    ap.add_argument("--only", default=",".join(GOALS),
                    help=f"goals to run, comma-separated, of {','.join(GOALS)}")
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs of every goal (default: each benchmark's own; --quick: 1)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "goals.json",
                    help="where the figures go (JSON)")
    a = ap.parse_args(argv)
    only = [g.strip() for g in a.only.split(",") if g.strip()]
    unknown = sorted(set(only) - set(GOALS))
    if unknown:
        ap.error(f"unknown goal(s) {','.join(unknown)}; goals: {','.join(GOALS)}")
    goals = [g for g in GOALS if g in only]
    repeats = a.repeats if a.repeats is not None else (1 if a.quick else None)
    sizes = QUICK if a.quick else FULL
    torch.set_num_threads(1)  # the lesson's loop and Optuna's trials: one thread a fit
    m = machine()
    say(f"# {machine_line(m)}")
    say(f"# goals: {', '.join(goals)}" + (f"; {QUICK_NOTE}" if a.quick else ""))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="polyfit-goals-") as tmp:
        run = Run(sizes, repeats, Path(tmp))
        if NEEDS_LOOP & set(goals):
            run.loop()
        for goal in goals:
            t0 = time.perf_counter()
            say(f"[{goal}] measuring ...")
            try:
                got = getattr(run, goal)()
            except FAILURES as e:
                got = [Row(goal, "-", "", None, note=f"failed: {str(e).strip()[-300:]}")]
            for r in got:
                say(f"[{goal}] " + format_row(r, a.quick))
            say(f"[{goal}] took {time.perf_counter() - t0:.0f} s")
            rows += got
            a.out.write_text(json.dumps(dict(
                machine=m, quick=a.quick, sizes=sizes, repeats=repeats,
                seconds=time.perf_counter() - started,
                rows=[dict(asdict(r), verdict=row_verdict(r, a.quick)) for r in rows],
                details=run.details), indent=2, default=str))
    say("")
    for line in table(rows, a.quick, machine_line(m)):
        say(line)
    say(f"# {time.perf_counter() - started:.0f} s; figures written to {a.out}")
    return 1 if any(row_verdict(r, a.quick) == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
