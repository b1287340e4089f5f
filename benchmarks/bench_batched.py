"""Throughput of ``fit_many`` on a big batch against the lesson's programs run one by one.

For each variant: ``--jobs`` jobs (two learning rates, the variant's default and twice it, times
``--jobs / 2`` seeds) trained by one ``fit_many`` call, against the lesson's own program
(``bench_models.LESSON``) timed on ``--sample`` of the same jobs in the same run and
extrapolated per fit (the output says so). Torch threads are set explicitly (``--threads``) and
are the same for both sides. Prints fits/s and the ratio; writes a JSON copy of the figures to
``benchmarks/out/`` and nothing anywhere else.

    python benchmarks/bench_batched.py [--jobs 1024] [--variants numpy,tensor,...]
        [--epochs N] [--device cpu] [--threads 1] [--sample 8] [--keep-heap]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

# Imported first: at import, bench_models sizes the OpenMP, MKL and OpenBLAS thread pools from
# this command line's --threads, before numpy and torch load.
from bench_models import LESSON  # noqa: E402

# isort: split
import torch  # noqa: E402

from polyfit_models import VARIANTS, JobSpec, fit_many  # noqa: E402

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
          f"extrapolated to {args.jobs} jobs")
    header = (f"{'variant':<9} {'epochs':>6} {'fit_many_s':>10} {'fits/s':>8} "
              f"{'lesson_s/fit':>12} {'lesson_fits/s':>13} {'ratio':>6}  statuses")
    print(header)
    rows = []
    for name in args.variants.split(","):
        variant = VARIANTS[name]
        epochs = args.epochs or (DYNAMIC_EPOCHS if name == "dynamic"
                                 else variant.defaults["epochs"])
        lrs = (variant.defaults["lr"], 2 * variant.defaults["lr"])
        specs = [JobSpec.create(name, lr=lr, seed=seed, epochs=epochs)
                 for lr in lrs for seed in range(args.jobs // 2)]
        fit_many(specs[:2], device=args.device)  # warm-up: first-call costs on neither side
        LESSON[name](0, epochs=20)

        started = time.perf_counter()
        results = fit_many(specs, device=args.device)
        batch_s = time.perf_counter() - started

        lesson_times = []
        for i in range(args.sample):
            spec = specs[(i % 2) * (args.jobs // 2) + i // 2]  # alternate the two lrs
            started = time.perf_counter()
            LESSON[name](spec.seed, epochs=epochs, lr=spec.lr)
            lesson_times.append(time.perf_counter() - started)
        lesson_per_fit = statistics.mean(lesson_times)

        fits_per_s = len(specs) / batch_s
        ratio = lesson_per_fit * len(specs) / batch_s
        statuses = {s: sum(r.status == s for r in results) for s in ("succeeded", "diverged")}
        print(f"{name:<9} {epochs:>6} {batch_s:>10.2f} {fits_per_s:>8.1f} "
              f"{lesson_per_fit:>12.3f} {1 / lesson_per_fit:>13.2f} {ratio:>6.1f}  "
              f"{statuses['succeeded']} succeeded, {statuses['diverged']} diverged", flush=True)
        rows.append(dict(variant=name, jobs=len(specs), epochs=epochs, fit_many_s=batch_s,
                         fits_per_s=fits_per_s, lesson_s_per_fit=lesson_per_fit,
                         lesson_sample=args.sample, ratio=ratio, **statuses))

    out = HERE / "out"
    out.mkdir(exist_ok=True)
    path = out / (f"batched-{args.device.replace(':', '')}-{args.threads}t"
                  f"{'-keepheap' if args.keep_heap else ''}.json")
    path.write_text(json.dumps(dict(machine=platform.machine(), torch=torch.__version__,
                                    threads=args.threads, device=args.device,
                                    keep_heap=args.keep_heap, rows=rows),
                               indent=2))
    print(f"# figures written to {path.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
