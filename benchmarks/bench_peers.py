"""The lesson's sweep through polyfit and through its peers, side by side, in one run.

The sweep: the lesson's autograd fit (degree 3, 2000 points on [-pi, pi], 2000 epochs, plain
gradient descent) at 2 learning rates (1e-6, 2e-6) x N/2 seeds, for N = 64, 1,024 and 8,192
fits (``--sizes``), through

(a) a plain loop: the lesson's program (``bench_models.lesson_autograd``), one fit after
    another in one process;
(b) Optuna: ``GridSampler`` over the same lr x seed grid, SQLite storage in a temporary folder,
    ``study.optimize(n_jobs=2)`` (two threads), each trial the lesson's program;
(c) Ray Tune: ``Tuner`` over ``grid_search`` of the lrs x the seeds, ``ray.init(num_cpus=2)``,
    each trial the lesson's program on one CPU, workers reused between trials
    (``reuse_actors``: otherwise every trial pays a process start and a torch import);
    ``ray.init`` and ``shutdown`` included;
(d) ``polyfit sweep run``: the real CLI in a fresh temporary folder (embedded broker, SQLite,
    one local worker per core), process start-up, submission, training, storing and stopping
    included. Its workers fuse where it pays (``fit_many``'s default; they share this run's
    compile cache, ``POLYFIT_COMPILE_CACHE``).

Every peer's fit is the lesson's program with one torch thread (parallelism is the framework's:
2 threads for Optuna, 2 worker processes for Ray and polyfit; the plain loop is one core). The
peers take about half a second a fit, so they are timed on ``--peer-fits`` (64) and on a
quarter of that, and extrapolated to the larger sizes as fixed + marginal cost (what a fixed
cost like Ray's start-up needs); the output marks every extrapolated figure with ``*``. Optuna's
per-trial storage work grows with the number of trials in the study, which this extrapolation
does not see: its figures at 1,024 and 8,192 are a lower bound. polyfit runs every size for real.

Then, how close each of polyfit's variants comes to this machine's limit: the peak float32 rate
is a large matrix product timed in the same run (one thread: a core's peak; all threads: the
machine's), each variant's marginal cost is ``fit_many`` on ``--jobs`` jobs in this process with
one torch and one BLAS thread, fused and unfused where the variant has a fused path (after a
warm-up that compiles), and
achieved/peak = flops per fit / (seconds per fit x the one-thread peak). The sweep's marginal
cost ((T(8192) - T(1024)) / 7168 through ``polyfit sweep run``, two workers) is set against the
all-thread peak.

Flops per fit: epochs x points x the useful arithmetic of one point and epoch, with the powers of
x precomputed, a multiply-add counted as 2, and the final scoring pass, the updates and the
bookkeeping left out (they are per job, not per point):

* monomial models of degree d, K = d + 1 coefficients (numpy, tensor, autograd, module, dynamic
  at its full degree): forward d multiply-adds (the constant term needs no product), the error
  (1) and its square summed (2); backward the factor 2 of the error (1) and K products summed
  (2K): 4d + 6 flops. The lesson's cubic: 18 flops, 72 Mflop per fit of 2000 x 2000.
* legendre, ``a + b P_n(c + d x)``: the affine map (2), Bonnet's recurrence (3 for P_2, 4 per
  further step), P_n' (2 per step of its chain, n // 2 steps), ``b P + a`` (2), error and square
  summed (3); backward 2 e (1), the sums for a (1), b (2), c (1) and d (2) and the chain factor
  b P_n' (2): 25 flops for n = 3, 100 Mflop per fit.

    python benchmarks/bench_peers.py [--sizes 64,1024,8192] [--peer-fits 64] [--jobs 1024]
        [--skip-peers] [--skip-variants]

Optuna and Ray are the optional extra ``bench`` (``pip install -e '.[bench]'``); without them
their column says how to get them and the rest runs. Writes a JSON copy of the figures to
``benchmarks/out/peers.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from polyfit_models import fuse_settings  # noqa: E402  (torch-free)

# The process edge: inductor's disk cache where polyfit keeps it, for this process and the
# sweep's workers alike, before torch loads.
fuse_settings(os.environ, Path.home()).apply(os.environ)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from benchmarks.bench_models import lesson_autograd  # noqa: E402
from polyfit_models import VARIANTS, JobSpec, fit_many  # noqa: E402

LRS = (1e-6, 2e-6)
EPOCHS, DEGREE, POINTS = 2000, 3, 2000
#: The dynamic model's lesson run is 30000 epochs; its marginal cost is measured at this many.
DYNAMIC_EPOCHS = 2000
SKIPPED = "skipped: pip install 'polyfit[bench]'"


def flops_per_point_epoch(variant: str, degree: int) -> int:
    """The useful arithmetic of one point and epoch (see the module docstring)."""
    if VARIANTS[variant].fixed_coefficients == 4:  # a + b P_n(c + d x)
        n = degree
        recurrence = 0 if n < 2 else 3 + 4 * (n - 2)
        return 2 + recurrence + 2 * (n // 2) + 2 + 3 + 9
    return 4 * degree + 6


def grid(fits: int) -> tuple[tuple[float, ...], list[int]]:
    return LRS, list(range(math.ceil(fits / len(LRS))))


def lesson_objective(lr: float, seed: int) -> float:
    """One lesson fit; its mean squared error (what a tuner would minimise)."""
    a, b, c, d = lesson_autograd(seed, epochs=EPOCHS, lr=lr)
    x = np.linspace(-math.pi, math.pi, POINTS)
    return float(np.mean((a + b * x + c * x ** 2 + d * x ** 3 - np.sin(x)) ** 2))


# --- the peers ------------------------------------------------------------------------------

def plain_loop(fits: int, tmp: Path) -> float:
    """Seconds for ``fits`` fits of the lesson's program, one after another, on one torch
    thread whoever calls it (more threads only slow the lesson's small tensors down)."""
    lrs, seeds = grid(fits)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        for i in range(fits):
            lesson_objective(lrs[i % 2], seeds[i // 2])
        return time.perf_counter() - started
    finally:
        torch.set_num_threads(previous)


def optuna_study(fits: int, tmp: Path) -> float:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lrs, seeds = grid(fits)

    def objective(trial) -> float:
        return lesson_objective(trial.suggest_categorical("lr", lrs),
                                trial.suggest_categorical("seed", seeds))

    started = time.perf_counter()
    study = optuna.create_study(storage=f"sqlite:///{tmp}/optuna-{fits}.sqlite",
                                sampler=optuna.samplers.GridSampler({"lr": lrs, "seed": seeds},
                                                                    seed=0))
    study.optimize(objective, n_trials=fits, n_jobs=2)
    return time.perf_counter() - started


def _ray_trainable(config: dict) -> dict:
    torch.set_num_threads(1)  # in the Ray worker process that runs the trial
    return {"mse": lesson_objective(config["lr"], config["seed"])}


def ray_tune(fits: int, tmp: Path) -> float:
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no progress tables
    import ray
    from ray import tune

    lrs, seeds = grid(fits)
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}})
    try:
        tuner = tune.Tuner(
            tune.with_resources(_ray_trainable, {"cpu": 1}),
            param_space={"lr": tune.grid_search(list(lrs)), "seed": tune.grid_search(seeds)},
            # reuse_actors: each of the two workers imports torch once, not once a trial
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(storage_path=str(tmp / "ray"), name=f"peers-{fits}",
                                      verbose=0))
        results = tuner.fit()
        if results.errors:
            raise RuntimeError(f"{len(results.errors)} Ray trials failed: {results.errors[0]}")
    finally:
        ray.shutdown()
    return time.perf_counter() - started


PEERS = {"plain loop": (plain_loop, None), "optuna": (optuna_study, "optuna"),
         "ray tune": (ray_tune, "ray.tune")}


def installed(module: str | None) -> bool:
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def peer_cost(label: str, run, small: int, large: int,
              tmp: Path) -> tuple[dict[int, float], float, float]:
    """``run`` timed on ``small`` and ``large`` fits: the seconds measured by fits, and the
    fixed (s) + marginal (s/fit) cost that extrapolates them. The plain loop has no fixed cost
    to speak of: the mean of its small run."""
    if label == "plain loop":
        t_small = run(small, tmp)
        return {small: t_small}, 0.0, t_small / small
    measured = {n: run(n, tmp) for n in (small, large)}
    marginal = (measured[large] - measured[small]) / (large - small)
    return measured, max(0.0, measured[small] - small * marginal), marginal


def polyfit_sweep_run(fits: int) -> tuple[float, float]:
    """Seconds for ``polyfit sweep run`` of the sweep in a fresh folder, and the peak resident
    memory (MB) of any process it started."""
    lrs, seeds = grid(fits)
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYFIT_")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    with tempfile.TemporaryDirectory(prefix="polyfit-peers-") as tmp:
        cmd = [sys.executable, "-m", "scheduler", "sweep", "run", "--variant", "autograd",
               "--lr", ",".join(str(lr) for lr in lrs), "--seed", f"0-{len(seeds) - 1}",
               "--degree", str(DEGREE), "--epochs", str(EPOCHS), "--top", "0"]
        started = time.perf_counter()
        r = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True)
        took = time.perf_counter() - started
    if r.returncode != 0:
        raise SystemExit(f"polyfit sweep run failed: {r.stderr.strip()[-800:]}")
    return took, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


# --- the machine's limit --------------------------------------------------------------------

def peak_flops(threads: int, n: int = 4096, repeats: int = 3) -> float:
    """float32 flop/s of an n x n matrix product with ``threads`` torch threads (best of)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        best = math.inf
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)
    return 2 * n ** 3 / best


def sweep_marginal(polyfit: dict[int, float], lo: int, hi: int, peak_all: float) -> dict:
    """The sweep's marginal cost from ``lo`` to ``hi`` fits (``polyfit``: seconds by fits),
    against ``peak_all`` (the all-thread peak, flop/s)."""
    marginal = (polyfit[hi] - polyfit[lo]) / (hi - lo)
    flops = flops_per_point_epoch("autograd", DEGREE) * POINTS * EPOCHS
    return dict(from_fits=lo, to_fits=hi, s_per_fit=marginal, flops_per_fit=flops,
                fraction_of_peak=flops / marginal / peak_all)


def variant_marginal(name: str, jobs: int, fuse: bool) -> dict:
    variant = VARIANTS[name]
    epochs = DYNAMIC_EPOCHS if name == "dynamic" else variant.defaults["epochs"]
    lrs = (variant.defaults["lr"], 2 * variant.defaults["lr"])
    specs = [JobSpec.create(name, lr=lr, seed=s, epochs=epochs)
             for lr in lrs for s in range(jobs // 2)]
    fused = fuse and variant.fusable
    # One BLAS thread, as a worker process has (left alone, NumPy's OpenBLAS starts one per core
    # and the numpy variant's small products fight over them: 20x slower here).
    with threadpool_limits(limits=1, user_api="blas"):
        started = time.perf_counter()
        fit_many(specs[:2], fuse=fused)  # warm-up: compiles (or loads) the fused configuration
        warm_s = time.perf_counter() - started
        started = time.perf_counter()
        fit_many(specs, fuse=fused)
        per_fit = (time.perf_counter() - started) / len(specs)
    flops = flops_per_point_epoch(name, specs[0].degree) * specs[0].x_points * epochs
    return dict(variant=name, fused=fused, jobs=jobs, epochs=epochs, degree=specs[0].degree,
                s_per_fit=per_fit, warm_up_s=warm_s, flops_per_fit=flops,
                flops_per_s=flops / per_fit)


# --- the report -----------------------------------------------------------------------------

def _cell(value, star: bool = False, fmt: str = "{:.4f}") -> str:
    if isinstance(value, str):
        return value
    return fmt.format(value) + ("*" if star else "")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,1024,8192", help="sweep sizes (fits), comma-separated")
    ap.add_argument("--peer-fits", type=int, default=64,
                    help="fits the peers are timed on (and a quarter of it); larger sizes are "
                         "extrapolated")
    ap.add_argument("--jobs", type=int, default=1024, help="jobs per variant for the marginal "
                                                           "cost against the peak")
    ap.add_argument("--skip-peers", action="store_true", help="only polyfit and the peak")
    ap.add_argument("--skip-variants", action="store_true", help="no per-variant section")
    args = ap.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    torch.set_num_threads(1)
    cache = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    cached = sum(1 for _ in cache.rglob("*")) if cache.exists() else 0
    print(f"# {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, python "
          f"{platform.python_version()}; compile cache {cache} ({cached} files before this run)")
    print(f"# the sweep: lesson autograd fit, degree {DEGREE}, {POINTS} points, {EPOCHS} epochs, "
          f"lr {' and '.join(f'{lr:g}' for lr in LRS)} x seeds; * = extrapolated from "
          f"{args.peer_fits // 4} and {args.peer_fits} fits (fixed + marginal)")
    figures: dict = {"machine": platform.machine(), "cores": os.cpu_count(),
                     "torch": torch.__version__, "compile_cache_files_before": cached}

    peak1, peak_all = peak_flops(1), peak_flops(os.cpu_count() or 1)
    print(f"# peak float32 (4096^2 matrix product): {peak1 / 1e9:.1f} GFLOP/s on one thread, "
          f"{peak_all / 1e9:.1f} GFLOP/s on {os.cpu_count()}")
    figures.update(peak_flops_1_thread=peak1, peak_flops_all_threads=peak_all)

    # polyfit first: every size for real.
    polyfit: dict[int, float] = {}
    for fits in sizes:
        took, rss = polyfit_sweep_run(fits)
        polyfit[fits] = took
        print(f"polyfit sweep run: {fits:>6} fits in {took:7.1f} s = {took / fits:.4f} s/fit "
              f"(peak RSS of any process so far {rss:.0f} MB)", flush=True)
    figures["polyfit_seconds"] = polyfit

    # The peers: timed on a small and a larger subset, then fixed + marginal.
    peers: dict[str, dict[int, tuple[float, bool]] | str] = {}
    small, large = max(2, args.peer_fits // 4), args.peer_fits
    with tempfile.TemporaryDirectory(prefix="polyfit-peers-") as tmp:
        for label, (run, module) in PEERS.items():
            if args.skip_peers:
                break
            if not installed(module):
                peers[label] = SKIPPED
                print(f"{label}: {SKIPPED}", flush=True)
                continue
            measured, fixed, marginal = peer_cost(label, run, small, large, Path(tmp))
            peers[label] = {fits: (measured[fits], False) if fits in measured
                            else (fixed + marginal * fits, True) for fits in sizes}
            runs = ", ".join(f"{n} fits {t:.1f} s" for n, t in measured.items())
            print(f"{label}: measured {runs} -> fixed {fixed:.1f} s + {marginal:.4f} s/fit",
                  flush=True)
    figures["peers"] = {k: v if isinstance(v, str) else {n: {"seconds": s, "extrapolated": e}
                                                          for n, (s, e) in v.items()}
                        for k, v in peers.items()}

    labels = list(peers)
    print()
    print(f"{'fits':>6} " + " ".join(f"{lab + ' s/fit':>17}" for lab in labels)
          + f" {'polyfit s/fit':>14} " + " ".join(f"{lab[:10] + '/polyfit':>19}"
                                                  for lab in labels))
    for fits in sizes:
        ours = polyfit[fits] / fits
        cells, ratios = [], []
        for lab in labels:
            entry = peers[lab]
            if isinstance(entry, str):
                cells.append("skipped")
                ratios.append("skipped")
                continue
            seconds, extrapolated = entry[fits]
            cells.append(_cell(seconds / fits, extrapolated))
            ratios.append(_cell(seconds / fits / ours, extrapolated, "{:.1f}x"))
        print(f"{fits:>6} " + " ".join(f"{c:>17}" for c in cells) + f" {ours:>14.4f} "
              + " ".join(f"{r:>19}" for r in ratios))

    # How close to the machine's limit.
    if len(sizes) >= 2:
        m = sweep_marginal(polyfit, sizes[-2], sizes[-1], peak_all)
        print(f"\npolyfit sweep run marginal cost ({m['from_fits']} -> {m['to_fits']} fits): "
              f"{m['s_per_fit']:.5f} s/fit = {m['flops_per_fit'] / m['s_per_fit'] / 1e9:.1f} "
              f"GFLOP/s, {m['fraction_of_peak']:.1%} of the {os.cpu_count()}-thread peak "
              f"({m['flops_per_fit'] / 1e6:.0f} Mflop/fit)")
        figures["sweep_marginal"] = {k: m[k] for k in ("from_fits", "to_fits", "s_per_fit",
                                                       "fraction_of_peak")}
    if not args.skip_variants:
        print(f"\n{'variant':<9} {'path':<8} {'s/fit':>9} {'Mflop/fit':>10} {'GFLOP/s':>8} "
              f"{'of 1-thread peak':>16}   ({args.jobs} jobs, fit_many, 1 thread)")
        rows = []
        for name in VARIANTS:
            for fuse in ([True, False] if VARIANTS[name].fusable else [False]):
                row = variant_marginal(name, args.jobs, fuse)
                row["fraction_of_peak"] = row["flops_per_s"] / peak1
                rows.append(row)
                print(f"{name:<9} {'fused' if row['fused'] else 'unfused':<8} "
                      f"{row['s_per_fit']:>9.5f} {row['flops_per_fit'] / 1e6:>10.0f} "
                      f"{row['flops_per_s'] / 1e9:>8.1f} {row['fraction_of_peak']:>16.1%}",
                      flush=True)
        figures["variants"] = rows

    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps(figures, indent=2))
    print(f"# figures written to {(out / 'peers.json').relative_to(ROOT)}")


if __name__ == "__main__":
    main()
