"""The kit's in-process steps, through polyfit's public functions only: ``throughput``
(``fit_many`` on the device at growing batch sizes, next to the CPUs), ``agreement`` (the same
jobs on both), ``fusion`` (the fused path against the unfused one on the device) and ``memory``
(a forced out-of-memory error through ``worker.execute.train_resilient``, and allocated memory
after each batch).

``throughput``, ``agreement`` and ``memory`` measure the unfused path (``fuse=False``): what
they prove does not depend on fusing, and a compile inside one of their timed or
memory-limited batches would blur it; ``fusion`` measures the fused path on its own.

The device is ``cuda`` in the real run. In the dry run (``--mode cpu``) it is ``cpu``: every
figure is still produced, a CUDA out-of-memory error is emulated by a trainer that raises one
above a batch size, and the checks that only CUDA can answer are recorded as not applicable.
"""

from __future__ import annotations

import functools
import logging
import time

from benchmarks.gpu.kit import Step, size

#: Relative tolerance of the agreement check per dtype (the project's batching guarantee).
TOLERANCE = {"float64": 1e-6, "float32": 1e-4}
OK = ("succeeded", "diverged")
MIB = 2 ** 20


def _device(step: Step) -> str:
    return "cuda" if step.mode == "cuda" else "cpu"


def _specs(name: str, n: int, epochs: int, **extra):
    """``n`` jobs of variant ``name``: its default lr and twice it, seeds counting up (as
    ``benchmarks/bench_batched.py`` builds them)."""
    from polyfit_models import VARIANTS, JobSpec

    lr = VARIANTS[name].defaults["lr"]
    return [JobSpec.create(name, lr=(lr, 2 * lr)[i % 2], seed=i // 2, epochs=epochs, **extra)
            for i in range(n)]


def _timed_fit(specs, device: str, fuse: bool = False) -> tuple[float, dict]:
    from polyfit_models import fit_many

    started = time.perf_counter()
    results = fit_many(specs, device, fuse=fuse)
    seconds = time.perf_counter() - started
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return seconds, statuses


def _per_min(jobs: int, seconds: float) -> float:
    return round(jobs / seconds * 60, 1) if seconds > 0 else float("inf")


def throughput(step: Step) -> None:
    import torch

    from polyfit_models import VARIANTS, bytes_per_job, fit_many

    mode, device = step.mode, _device(step)
    epochs, dyn_epochs = size("TP_EPOCHS", mode), size("TP_DYNAMIC_EPOCHS", mode)
    start, factor = size("TP_START", mode), size("TP_FACTOR", mode)
    largest, mem_share = size("TP_MAX_JOBS", mode), size("TP_MEM_SHARE", mode)
    cpu_jobs = size("TP_CPU_JOBS", mode)
    step.figures.update(epochs=epochs, dynamic_epochs=dyn_epochs, cpu_jobs=cpu_jobs,
                        cpu_threads=torch.get_num_threads(), device=device)
    step.note(f"lesson settings (degree 3, {epochs} epochs, 2000 points); dynamic at its own "
              f"degree 5 but {dyn_epochs} epochs instead of its 30000, to fit the time")
    if mode == "cpu":
        step.note("dry run: the 'device' side is the CPU too")
    rows: dict[str, dict] = {}
    # Bound to the figures at once (and filled in place): a step stopped half-way keeps them.
    step.figures["variants"] = listed = []

    def epochs_of(name: str) -> int:
        return dyn_epochs if name == "dynamic" else epochs

    # The CPUs first: a smaller batch per variant, in fits per minute (extrapolated per fit).
    for name in VARIANTS:
        specs = _specs(name, cpu_jobs, epochs_of(name))
        fit_many(_specs(name, 2, 20), "cpu", fuse=False)  # warm-up: first-call costs
        seconds, statuses = _timed_fit(specs, "cpu")
        rows[name] = {"variant": name, "epochs": epochs_of(name),
                      "cpu": {"jobs": cpu_jobs, "seconds": round(seconds, 3),
                              "fits_per_min": _per_min(cpu_jobs, seconds), **statuses},
                      "device": [], "stopped_by": None}
        listed.append(rows[name])
        step.note(f"cpu {name}: {cpu_jobs} jobs in {seconds:.2f} s = "
                  f"{rows[name]['cpu']['fits_per_min']:,} fits/min")

    on_device = [n for n, v in VARIANTS.items() if "cuda" in v.devices]
    for name in VARIANTS:
        if name not in on_device:
            rows[name]["stopped_by"] = "runs on the CPU only"
    for i, name in enumerate(on_device):
        row = rows[name]
        until = time.monotonic() + max(0.0, step.left_s() - 5) / (len(on_device) - i)
        fit_many(_specs(name, 2, 20), device, fuse=False)  # warm-up: kernels, CUDA context
        per_job = bytes_per_job(_specs(name, 1, epochs_of(name))[0])
        n, last = start, None
        while True:
            if n > largest:
                row["stopped_by"] = f"largest batch tried (KIT_TP_MAX_JOBS={largest})"
                break
            if device == "cuda":
                free = torch.cuda.mem_get_info()[0]
                if n * per_job > mem_share * free:
                    row["stopped_by"] = (f"memory: {n} jobs need ~{n * per_job / MIB:,.0f} MiB, "
                                         f"over {mem_share:g} of {free / MIB:,.0f} MiB free")
                    break
            if last is not None and last * factor > until - time.monotonic():
                row["stopped_by"] = (f"time: the next size would take ~{last * factor:.0f} s, "
                                     f"{max(0.0, until - time.monotonic()):.0f} s left")
                break
            seconds, statuses = _timed_fit(_specs(name, n, epochs_of(name)), device)
            row["device"].append({"jobs": n, "seconds": round(seconds, 3),
                                  "fits_per_min": _per_min(n, seconds), **statuses})
            step.note(f"{device} {name}: {n} jobs in {seconds:.2f} s = "
                      f"{_per_min(n, seconds):,} fits/min")
            last, n = seconds, n * factor
        if row["device"]:
            best = max(row["device"], key=lambda r: r["fits_per_min"])
            row["best"] = {"jobs": best["jobs"], "fits_per_min": best["fits_per_min"],
                           "vs_cpu": round(best["fits_per_min"] / row["cpu"]["fits_per_min"], 1)}
        if device == "cuda":
            torch.cuda.empty_cache()
    for name in on_device:
        step.check(f"{name}_ran", bool(rows[name]["device"]),
                   f"best {rows[name].get('best')}" if rows[name]["device"]
                   else "no batch size fitted the time or memory")


def _rel_diff(a: list, b: list) -> float:
    """max |a - b| / max |b| over a job's coefficients (normwise: a coefficient near zero, such
    as the even ones of a sine fit, makes element-wise relative differences meaningless)."""
    if any(x is None for x in a) or any(x is None for x in b):
        return 0.0 if [x is None for x in a] == [x is None for x in b] else float("inf")
    scale = max(abs(x) for x in b) or 1.0
    return max(abs(x - y) for x, y in zip(a, b)) / scale


def agreement(step: Step) -> None:
    from polyfit_models import VARIANTS, JobSpec, fit_many

    mode, device = step.mode, _device(step)
    jobs, epochs = size("AG_JOBS", mode), size("AG_EPOCHS", mode)
    dyn_epochs = size("AG_DYNAMIC_EPOCHS", mode)
    if mode == "cpu":
        step.note("dry run: both sides on the CPU (the figures are 0 by construction)")
    step.figures["rows"] = rows = []
    for name, variant in VARIANTS.items():
        if "cuda" not in variant.devices:
            step.note(f"{name}: runs on the CPU only, nothing to compare")
            continue
        for dtype, tol in TOLERANCE.items():
            e = dyn_epochs if name == "dynamic" else epochs
            specs = [JobSpec.create(name, seed=s, epochs=e, dtype=dtype) for s in range(jobs)]
            on_device = fit_many(specs, device, fuse=False)
            on_cpu = fit_many(specs, "cpu", fuse=False)
            coef = max(_rel_diff(a.coefficients, b.coefficients)
                       for a, b in zip(on_device, on_cpu))
            mse = max(abs(a.mse - b.mse) / abs(b.mse) if a.mse is not None and b.mse
                      else (0.0 if a.mse == b.mse else float("inf"))
                      for a, b in zip(on_device, on_cpu))
            status = sum(a.status != b.status for a, b in zip(on_device, on_cpu))
            ok = status == 0 and max(coef, mse) <= tol
            rows.append({"variant": name, "dtype": dtype, "jobs": jobs, "epochs": e,
                         "tolerance": tol, "max_rel_diff_coefficients": coef,
                         "max_rel_diff_mse": mse, "status_mismatches": status, "passed": ok})
            step.check(f"{name}_{dtype}", ok,
                       f"coefficients {coef:.3g}, mse {mse:.3g} (tolerance {tol:g}), "
                       f"{status} status mismatches")


class _Warnings(logging.Handler):
    """Collects the warnings ``fit_many`` logs (a fused configuration that failed to compile
    and was trained unfused says so there)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def fusion(step: Step) -> None:
    from polyfit_models import JobSpec, fit_many

    mode, device = step.mode, _device(step)
    names = [n for n in str(size("FU_VARIANTS", mode)).split(",") if n]
    jobs, epochs = size("FU_JOBS", mode), size("FU_EPOCHS", mode)
    step.figures.update(jobs=jobs, epochs=epochs, device=device)
    step.note(f"{jobs} jobs per variant (default lr, seeds 0..{jobs - 1}), {epochs} epochs, "
              f"degree 3 (dynamic: 5), float32; compile_s is the first fused call (a 2-job "
              f"batch): a compile, or a trace where the disk cache is warm")
    if mode == "cpu":
        step.note("dry run: the 'device' is the CPU (inductor's C++ kernels, not Triton)")
    step.figures["rows"] = rows = []
    warnings = _Warnings()
    logging.getLogger("polyfit_models.runner").addHandler(warnings)
    for i, name in enumerate(names):
        until = time.monotonic() + max(0.0, step.left_s() - 5) / (len(names) - i)
        specs = [JobSpec.create(name, seed=s, epochs=epochs) for s in range(jobs)]
        row: dict = {"variant": name, "jobs": jobs}
        rows.append(row)
        before = len(warnings.messages)
        started = time.perf_counter()
        fit_many(specs[:2], device, fuse=True)
        row["compile_s"] = round(time.perf_counter() - started, 2)
        row["compiled"] = len(warnings.messages) == before
        if not row["compiled"]:
            row["fallback"] = warnings.messages[-1][:300]
        started = time.perf_counter()
        fused = fit_many(specs, device, fuse=True)
        row["fused_s"] = round(time.perf_counter() - started, 3)
        if row["fused_s"] * 4 > until - time.monotonic():
            row["stopped_by"] = "time: no room left for the unfused side"
            step.check(f"{name}_fused", row["compiled"], str(row))
            continue
        started = time.perf_counter()
        plain = fit_many(specs, device, fuse=False)
        row["unfused_s"] = round(time.perf_counter() - started, 3)
        row["speedup"] = round(row["unfused_s"] / row["fused_s"], 2)
        row["max_rel_diff_coefficients"] = max(_rel_diff(a.coefficients, b.coefficients)
                                               for a, b in zip(fused, plain))
        row["status_mismatches"] = sum(a.status != b.status for a, b in zip(fused, plain))
        step.note(f"{device} {name}: compile {row['compile_s']} s, fused {row['fused_s']} s, "
                  f"unfused {row['unfused_s']} s ({row['speedup']}x)")
        diff = row["max_rel_diff_coefficients"]
        step.check(f"{name}_fused", row["compiled"] and row["status_mismatches"] == 0
                   and diff <= TOLERANCE["float32"],
                   f"compiled {row['compiled']}, coefficients {diff:.3g} (tolerance "
                   f"{TOLERANCE['float32']:g}), {row['status_mismatches']} status mismatches"
                   + (f"; fell back: {row['fallback']}" if not row["compiled"] else ""))


def _emulated_oom(jobs: int, limit: int) -> Exception:
    import torch

    cls = getattr(torch, "OutOfMemoryError", RuntimeError)
    return cls(f"CUDA out of memory (emulated by the kit: {jobs} jobs > {limit})")


class GaveUp(BaseException):
    """Raised by the recording trainer when the step's time is nearly up. A BaseException, so
    that ``train_resilient`` (which turns any Exception into halving or a failed job) lets it
    through and the step can report how far the halving got."""


#: How many calls the memory step lists one by one (a halving cascade can make thousands).
LISTED_CALLS = 40


class RecordingTrainer:
    """``fit_many`` that records each call: its batch size, its error, and on CUDA the memory
    still allocated above the baseline when it starts (what earlier, failed attempts hold).
    With ``oom_above`` it raises a CUDA-style out-of-memory error for any larger batch (the dry
    run's emulation); past ``deadline`` (time.monotonic()) it gives up."""

    def __init__(self, deadline: float, oom_above: int | None = None, held=None) -> None:
        self.deadline, self.oom_above, self.held = deadline, oom_above, held
        self.calls: list[dict] = []
        self.count = {"calls": 0, "oom": 0, "other_errors": 0}

    def __call__(self, specs, device):
        from polyfit_models import fit_many

        if time.monotonic() > self.deadline:
            raise GaveUp(f"gave up after {self.count['calls']} trainer calls "
                         f"({self.count['oom']} out of memory): the halving had not finished")
        self.count["calls"] += 1
        entry: dict = {"jobs": len(specs)}
        if self.held is not None:
            entry["held_mib"] = self.held()
        if len(self.calls) < LISTED_CALLS:
            self.calls.append(entry)
        try:
            if self.oom_above is not None and len(specs) > self.oom_above:
                raise _emulated_oom(len(specs), self.oom_above)
            return fit_many(specs, device, fuse=False)
        except Exception as e:
            entry["oom"] = "out of memory" in str(e).lower()
            entry["error"] = f"{e.__class__.__name__}: {str(e)[:160]}"
            self.count["oom" if entry["oom"] else "other_errors"] += 1
            raise


def memory(step: Step) -> None:
    import torch

    from polyfit_models import VARIANTS, fit_many
    from worker.execute import train_resilient

    mode, device = step.mode, _device(step)
    cuda = device == "cuda"
    name, jobs = size("MEM_VARIANT", mode), size("MEM_JOBS", mode)
    per_batch, epochs = size("MEM_BATCH", mode), size("MEM_EPOCHS", mode)
    share, tolerance = size("MEM_LIMIT_SHARE", mode), size("MEM_TOLERANCE_MIB", mode) * MIB
    fig = step.figures

    def allocated() -> int:
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()

    def grown_mib() -> float | None:
        """Allocated device memory now minus the baseline (None on the CPU: not measured)."""
        return round((allocated() - baseline) / MIB, 3) if cuda else None

    unfused = functools.partial(fit_many, fuse=False)
    unfused(_specs(name, 2, epochs), device)  # warm-up (CUDA context, cuBLAS workspace)
    if cuda:
        torch.cuda.empty_cache()
    baseline = allocated() if cuda else 0
    fig["baseline_allocated_mib"] = round(baseline / MIB, 3) if cuda else None

    # 1. Each variant's batch through train_resilient, as a worker trains a slice.
    after = []
    for variant in (v for v in VARIANTS if device in VARIANTS[v].devices):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        out = train_resilient(_specs(variant, per_batch, epochs), device, unfused)
        row = {"variant": variant, "jobs": per_batch,
               "ok": sum(o["status"] in OK for o in out),
               "allocated_after_minus_baseline_mib": grown_mib()}
        if cuda:
            row["peak_mib"] = round((torch.cuda.max_memory_allocated() - baseline) / MIB, 1)
        after.append(row)
    fig["batches"] = after

    # 2. An out-of-memory error forced on one batch: train_resilient must halve it.
    specs = _specs(name, jobs, epochs)
    deadline = time.monotonic() + step.left_s() - 4
    fig["jobs"] = jobs
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        unfused(specs, device)
        peak = torch.cuda.max_memory_allocated() - baseline
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(0).total_memory
        limit = torch.cuda.memory_reserved() + share * peak
        fraction = limit / total
        fig.update(oom_batch_peak_mib=round(peak / MIB, 1), limit_mib=round(limit / MIB, 1),
                   memory_fraction=fraction, forced_by="torch.cuda.set_per_process_memory_fraction")
        step.note(f"{jobs} {name} jobs peak at {peak / MIB:,.0f} MiB; memory fraction "
                  f"{fraction:.5f} allows {limit / MIB:,.0f} MiB")
        trainer = RecordingTrainer(deadline, held=grown_mib)
        torch.cuda.set_per_process_memory_fraction(fraction)
    else:
        oom_above = max(1, int(jobs * share))
        fig.update(forced_by=f"emulated: a trainer that raises above {oom_above} jobs")
        trainer = RecordingTrainer(deadline, oom_above=oom_above)
    # Bound to the figures now, so that a step stopped half-way still reports them.
    fig["calls"], fig["call_counts"] = trainer.calls, trainer.count
    outcomes: list[dict] = []
    try:
        started = time.perf_counter()
        outcomes = train_resilient(specs, device, trainer)
        fig["oom_run_seconds"] = round(time.perf_counter() - started, 2)
    except GaveUp as e:
        step.note(str(e))
    finally:
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0)
    fig["returned"] = len(outcomes)
    statuses: dict[str, int] = {}
    for o in outcomes:
        statuses[o["status"]] = statuses.get(o["status"], 0) + 1
    fig["statuses"] = statuses
    fig["allocated_after_oom_minus_baseline_mib"] = grown_mib()

    calls = trainer.calls
    first = calls[0] if calls else {}
    step.check("oom_forced", bool(first.get("oom")) and first.get("jobs") == jobs,
               f"first call: {first}")
    halves = [c["jobs"] for c in calls[1:]]
    step.check("batch_halved", bool(halves) and halves[0] == jobs // 2,
               f"batch sizes tried after the error: {halves[:8]}")
    failed = [o.get("error") for o in outcomes if o["status"] not in OK]
    step.check("every_job_returned", len(outcomes) == jobs and not failed,
               f"{len(outcomes)} of {jobs} returned, statuses {statuses}, "
               f"{trainer.count['calls']} trainer calls"
               + (f", first error {failed[0]}" if failed else ""))
    if cuda:
        grown = [r for r in after if r["allocated_after_minus_baseline_mib"] * MIB > tolerance]
        after_oom = fig["allocated_after_oom_minus_baseline_mib"] * MIB
        step.check("memory_back_to_baseline", not grown and after_oom <= tolerance,
                   f"allocated after each batch minus baseline (MiB): "
                   f"{[r['allocated_after_minus_baseline_mib'] for r in after]}, after the "
                   f"out-of-memory batch {fig['allocated_after_oom_minus_baseline_mib']}")
        held = [c for c in calls[1:] if (c.get("held_mib") or 0) * MIB > tolerance]
        if held:  # a finding to read next to the checks, not a check of its own
            step.note(f"retries started with memory of failed attempts still allocated: "
                      f"{[(c['jobs'], c['held_mib']) for c in held[:6]]} (jobs, MiB)")
    else:
        step.check("memory_back_to_baseline", None, "dry run: no CUDA memory to measure")
