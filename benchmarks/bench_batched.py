"""Throughput of ``fit_many`` on a big batch against the lesson's programs run one by one.

For each variant: ``--jobs`` jobs (two learning rates, the variant's default and twice it, times
``--jobs / 2`` seeds) trained by one ``fit_many`` call, unfused and fused (``--fuse both``, the
default: the epoch compiled into fused passes, see ``polyfit_models/fusion.py``) in the same
run, against the lesson's own program (``bench_models.LESSON``) timed on ``--sample`` of the
same jobs and extrapolated per fit (the output says so). The fused side's first call (a 2-job
batch) is timed apart as ``compile_s``: it compiles the variant's configuration, or with
inductor's disk cache warm only traces it (the first variant also pays for importing dynamo and
inductor); ``first_run_s/fit`` charges it to the batch. With ``--repeats R`` both sides run R
times, interleaved, and every figure is a min-max range. Torch threads are set explicitly
(``--threads``) and are the same for both sides. Writes a JSON copy of the figures to
``benchmarks/out/`` and nothing anywhere else (except compiled kernels, in
``POLYFIT_COMPILE_CACHE``: default ``~/.cache/polyfit/compile``; an empty folder there measures a
cold compile).

    python benchmarks/bench_batched.py [--jobs 1024] [--variants numpy,tensor,...]
        [--fuse both|on|off|auto] [--repeats 1] [--epochs N] [--device cpu] [--threads 1]
        [--sample 8] [--keep-heap]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from polyfit_models import fuse_settings  # noqa: E402  (torch-free)

# The process edge: point inductor's disk cache where polyfit keeps it, before torch loads.
FUSE_SETTINGS = fuse_settings(os.environ, Path.home())
FUSE_SETTINGS.apply(os.environ)

# Imported first: at import, bench_models sizes the OpenMP, MKL and OpenBLAS thread pools from
# this command line's --threads, before numpy and torch load.
from bench_models import LESSON  # noqa: E402

# isort: split
import torch  # noqa: E402

from polyfit_models import VARIANTS, JobSpec, fit_many  # noqa: E402

#: --fuse -> the fit_many calls timed, by label
SIDES = {"both": {"unfused": False, "fused": True}, "on": {"fused": True},
         "off": {"unfused": False}, "auto": {"auto": None}}

#: The dynamic model's lesson run is 30000 epochs; the batch comparison uses this many on both
#: sides unless --epochs says otherwise.
DYNAMIC_EPOCHS = 2000


def keep_heap() -> None:
    """Stop glibc from returning freed heap memory to the OS (``mallopt``; the same as
    ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_THRESHOLD_`` in a worker's environment).

    A batch frees and reallocates its (B, x_points) temporaries every epoch; by default glibc
    trims the heap when they are freed and the next epoch page-faults them back in, which on
    this VM costs a quarter of a Legendre batch's time. This is a process-wide setting, so it
    belongs at a process edge like this one, never in polyfit_models."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_mmap_threshold, 32 << 20)


def span(values, digits: int = 2) -> str:
    """``min-max`` of a few measurements (one value when they agree to the digits shown)."""
    lo, hi = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return lo if lo == hi else f"{lo}-{hi}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1024, help="jobs per variant (even)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs for every variant (default: the lesson's, dynamic "
                             f"{DYNAMIC_EPOCHS})")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (fit_many side)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--sample", type=int, default=8, help="lesson fits timed per variant")
    default_fuse = {None: "both", True: "on", False: "off"}[FUSE_SETTINGS.fuse]
    parser.add_argument("--fuse", choices=list(SIDES), default=default_fuse,
                        help="fit_many unfused and fused (both), one of them, or its default "
                             "(auto); default from POLYFIT_FUSE (0: off, 1: on, else both)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each side")
    parser.add_argument("--keep-heap", action="store_true",
                        help="tell glibc to keep freed memory (mallopt), see keep_heap()")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.keep_heap:
        keep_heap()

    print(f"# fit_many on {args.jobs} jobs (2 lrs x {args.jobs // 2} seeds) vs the lesson's "
          f"program one fit at a time: {platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} torch threads, fit_many on {args.device}"
          + (", glibc heap kept (--keep-heap)" if args.keep_heap else ""))
    print(f"# lesson time per fit: mean of {args.sample} fits of the same jobs on the CPU, "
          f"extrapolated to {args.jobs} jobs; fit_many sides: {', '.join(SIDES[args.fuse])} "
          f"(a variant without a fused path runs unfused only), "
          f"{args.repeats} timed run(s) each (ranges are min-max)")
    print(f"# compiled kernels cached in {os.environ.get('TORCHINDUCTOR_CACHE_DIR')}")
    header = (f"{'variant':<9} {'side':<8} {'epochs':>6} {'fit_many_s':>11} {'s/fit':>13} "
              f"{'compile_s':>9} {'first_run_s/fit':>15} {'lesson_s/fit':>12} "
              f"{'ratio':>11}  statuses")
    print(header)
    rows = []
    for name in args.variants.split(","):
        variant = VARIANTS[name]
        epochs = args.epochs or (DYNAMIC_EPOCHS if name == "dynamic"
                                 else variant.defaults["epochs"])
        lrs = (variant.defaults["lr"], 2 * variant.defaults["lr"])
        specs = [JobSpec.create(name, lr=lr, seed=seed, epochs=epochs)
                 for lr in lrs for seed in range(args.jobs // 2)]
        LESSON[name](0, epochs=20)  # warm-up: first-call costs on neither side
        sides = {side: fuse for side, fuse in SIDES[args.fuse].items()
                 if variant.fusable or fuse is not True}
        compile_s = {}
        for side, fuse in sides.items():
            started = time.perf_counter()
            fit_many(specs[:2], device=args.device, fuse=fuse)  # fused: compiles (or loads)
            compile_s[side] = time.perf_counter() - started

        times: dict[str, list[float]] = {side: [] for side in sides}
        results = {}
        for _ in range(args.repeats):
            for side, fuse in sides.items():
                started = time.perf_counter()
                results[side] = fit_many(specs, device=args.device, fuse=fuse)
                times[side].append(time.perf_counter() - started)

        lesson_times = []
        for i in range(args.sample):
            spec = specs[(i % 2) * (args.jobs // 2) + i // 2]  # alternate the two lrs
            started = time.perf_counter()
            LESSON[name](spec.seed, epochs=epochs, lr=spec.lr)
            lesson_times.append(time.perf_counter() - started)
        lesson_per_fit = statistics.mean(lesson_times)

        for side, fuse in sides.items():
            per_fit = [t / len(specs) for t in times[side]]
            fused = fuse is not False and variant.fusable  # auto: compiled where it pays
            first_run = [(t + compile_s[side]) / len(specs) for t in times[side]]
            ratios = [lesson_per_fit / p for p in per_fit]
            statuses = {s: sum(r.status == s for r in results[side])
                        for s in ("succeeded", "diverged")}
            print(f"{name:<9} {side:<8} {epochs:>6} {span(times[side]):>11} "
                  f"{span(per_fit, 5):>13} "
                  f"{(f'{compile_s[side]:.2f}' if fused else '-'):>9} "
                  f"{(span(first_run, 5) if fused else '-'):>15} {lesson_per_fit:>12.3f} "
                  f"{span(ratios, 1):>11}  {statuses['succeeded']} succeeded, "
                  f"{statuses['diverged']} diverged", flush=True)
            rows.append(dict(variant=name, side=side, fused=fused, jobs=len(specs),
                             epochs=epochs, fit_many_s=times[side],
                             s_per_fit=per_fit, compile_s=compile_s[side] if fused else None,
                             first_run_s_per_fit=first_run if fused else None,
                             lesson_s_per_fit=lesson_per_fit, lesson_sample=args.sample,
                             ratio=ratios, **statuses))
        if "unfused" in times and "fused" in times and variant.fusable:
            speedup = [u / f for u, f in zip(times["unfused"], times["fused"])]
            print(f"{name:<9} {'fused speed-up':<24} {span(speedup, 2)}x", flush=True)

    out = HERE / "out"
    out.mkdir(exist_ok=True)
    path = out / (f"batched-{args.device.replace(':', '')}-{args.threads}t-{args.fuse}"
                  f"{'-keepheap' if args.keep_heap else ''}.json")
    path.write_text(json.dumps(dict(machine=platform.machine(), torch=torch.__version__,
                                    threads=args.threads, device=args.device,
                                    keep_heap=args.keep_heap, fuse=args.fuse,
                                    repeats=args.repeats,
                                    compile_cache=os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
                                    rows=rows),
                               indent=2))
    print(f"# figures written to {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
