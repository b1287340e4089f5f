"""The kit's report: the steps' JSON files merged into ``gpu-report.json`` (the machine, every
figure, pass/fail per check and per step) and a short ``gpu-report.md`` for people. A step with
no file (killed, or never started) counts as failed, with run.sh's exit code for it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from benchmarks.gpu.kit import STEPS


def _load(work: Path, name: str) -> dict:
    path = work / "steps" / f"{name}.json"
    rc_file = work / "rc" / name
    rc = int(rc_file.read_text().strip()) if rc_file.exists() else None
    if path.exists():
        step = json.loads(path.read_text())
        step["exit_code"] = rc
        if rc not in (0, None) and step["passed"]:
            step["passed"] = False
            step["error"] = f"exit code {rc}"
        return step
    why = {None: "not run", 124: "timed out", 137: "killed after its time limit"}.get(
        rc, f"exited {rc}")
    return {"step": name, "what": STEPS[name], "passed": False, "exit_code": rc,
            "error": f"no result: {why}", "checks": {}, "figures": {}, "notes": []}


def _machine(setup: dict) -> dict:
    fig = setup.get("figures", {})
    cards = fig.get("cards") or []
    return {"card": ", ".join(c["name"] for c in cards) or None,
            "card_memory_gib": cards[0]["memory_gib"] if cards else None,
            "driver": fig.get("driver"), "torch": fig.get("torch"),
            "cuda": fig.get("torch_cuda"), "python": fig.get("python"),
            "cpus": fig.get("cpus"), "glibc": fig.get("glibc"), "platform": fig.get("platform")}


def write_report(work: Path, out: Path, mode: str) -> int:
    steps = {name: _load(work, name) for name in STEPS}
    started = float(os.environ.get("KIT_STARTED_EPOCH", time.time()))
    report = {
        "kit": "polyfit GPU proof kit (benchmarks/gpu, issue 13)",
        "mode": mode,
        "dry_run": mode == "cpu",
        "passed": all(s["passed"] for s in steps.values()),
        "failed_steps": [n for n, s in steps.items() if not s["passed"]],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "total_seconds": round(time.time() - started, 1),
        "machine": _machine(steps["setup"]),
        "steps": steps,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu-report.md").write_text(markdown(report))
    print(f"report: {'PASSED' if report['passed'] else 'FAILED'} "
          f"({', '.join(report['failed_steps']) or 'every step passed'}); "
          f"{out / 'gpu-report.json'}, {out / 'gpu-report.md'}")
    return 0 if report["passed"] else 1


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.1f}" if abs(x) >= 100 else f"{x:.{digits}g}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def markdown(r: dict) -> str:
    m, steps = r["machine"], r["steps"]
    lines = [f"# polyfit GPU proof kit: {'PASSED' if r['passed'] else 'FAILED'}", ""]
    if r["dry_run"]:
        lines += ["**Dry run** (`run.sh --cpu`): devices emulated on the CPU, tiny sizes. These "
                  "figures prove the kit works, not the GPU.", ""]
    lines += [f"{m['card'] or 'no GPU'} (driver {m['driver'] or '-'}), torch {m['torch']} "
              f"(CUDA {m['cuda'] or '-'}), Python {m['python']}, {m['cpus']} CPUs; "
              f"{r['started_at']}, {r['total_seconds']} s in all.", "",
              "| step | result | seconds | what it shows |", "|---|---|---:|---|"]
    for name, s in steps.items():
        lines.append(f"| {name} | {'passed' if s['passed'] else '**FAILED**'} | "
                     f"{_fmt(s.get('seconds'))} | {s.get('what', '')} |")
    lines.append("")

    tp = steps["throughput"].get("figures", {})
    if tp.get("variants"):
        lines += ["## Throughput (`fit_many`, fits per minute)", "",
                  f"Degree 3 (dynamic: 5), {tp.get('epochs')} epochs (dynamic: "
                  f"{tp.get('dynamic_epochs')}, not its 30000), 2000 points; the CPU side "
                  f"{tp.get('cpu_jobs')} jobs per variant on {tp.get('cpu_threads')} torch "
                  f"threads, extrapolated per fit.", "",
                  f"| variant | CPU fits/min | {tp.get('device')} fits/min by batch size | "
                  f"best x CPU | stopped by |", "|---|---:|---|---:|---|"]
        for v in tp["variants"]:
            sizes = ", ".join(f"{d['jobs']:,}: {d['fits_per_min']:,.0f}" for d in v["device"])
            best = v.get("best", {})
            lines.append(f"| {v['variant']} | {v['cpu']['fits_per_min']:,.0f} | {sizes or '-'}"
                         f" | {_fmt(best.get('vs_cpu'))} | {v.get('stopped_by') or '-'} |")
        lines.append("")
    ag = steps["agreement"].get("figures", {})
    if ag.get("rows"):
        lines += ["## Agreement (device against CPU, same jobs)", "",
                  "| variant | dtype | max rel. diff. coefficients | max rel. diff. mse | "
                  "tolerance | |", "|---|---|---:|---:|---:|---|"]
        for a in ag["rows"]:
            lines.append(f"| {a['variant']} | {a['dtype']} | "
                         f"{a['max_rel_diff_coefficients']:.2e} | {a['max_rel_diff_mse']:.2e} "
                         f"| {a['tolerance']:g} | {'ok' if a['passed'] else '**no**'} |")
        lines.append("")
    fu = steps["fusion"].get("figures", {})
    if fu.get("rows"):
        lines += ["## The fused path (`fit_many(fuse=True)`) against the unfused one", "",
                  f"{fu.get('jobs'):,} jobs per variant, {fu.get('epochs')} epochs, float32, on "
                  f"{fu.get('device')}; compile: the first fused call (a 2-job batch).", "",
                  "| variant | compiled | compile s | fused s | unfused s | speed-up | "
                  "max rel. diff. coefficients |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in fu["rows"]:
            lines.append(f"| {r['variant']} | {'yes' if r['compiled'] else '**no**'} | "
                         f"{_fmt(r.get('compile_s'))} | {_fmt(r.get('fused_s'))} | "
                         f"{_fmt(r.get('unfused_s'))} | {_fmt(r.get('speedup'))} | "
                         f"{_fmt(r.get('max_rel_diff_coefficients'))} |")
        lines.append("")
    fl = steps["fleet"].get("figures", {})
    if fl.get("big"):
        b = fl["big"]
        lines += ["## End to end (`polyfit worker` x2, Redis, SQLite)", "",
                  f"- {b['asked']:,} autograd jobs (degree 3, {b['epochs']} epochs) on cuda: "
                  f"{_fmt(b.get('ended_ok'))} ended ok; submit {b['submit_s']} s, then "
                  f"{_fmt(b.get('wait_s'))} s until done; "
                  f"**{_fmt(b.get('fits_per_min_stored'))} fits/min** from the stored rows "
                  f"({_fmt(b.get('training_span_s'))} s from the first "
                  f"start to the last finish), {_fmt(b.get('fits_per_min_wall'))} fits/min from "
                  f"submit to done.", ""]
    if fl.get("mixed"):
        mx = fl["mixed"]
        lines += [f"- Mixed sweep, every variant x cpu,cuda, {mx['seeds']} seeds: "
                  f"{mx['ended_ok']} of {mx['expected']} ended ok.", "",
                  "| variant | device | ran_on | status | jobs |", "|---|---|---|---|---:|"]
        for p in sorted(fl["mixed"]["placed"], key=lambda p: (p["variant"], p["device"])):
            lines.append(f"| {p['variant']} | {p['device']} | {p['ran_on']} | {p['status']} | "
                         f"{p['n']} |")
        lines.append("")
    mem = steps["memory"].get("figures", {})
    if mem.get("calls"):
        sizes = " -> ".join(f"{c['jobs']}{' (OOM)' if c.get('oom') else ''}"
                            for c in mem["calls"][:12])
        lines += ["## Memory", "",
                  f"- Out of memory forced by {mem.get('forced_by')}"
                  + (f" (fraction {mem['memory_fraction']:.5f}, {mem['limit_mib']:,} MiB for a "
                     f"batch that peaks at {mem['oom_batch_peak_mib']:,} MiB)"
                     if "memory_fraction" in mem else "")
                  + f": batch sizes tried {sizes}; {mem.get('returned')} of {mem.get('jobs')} "
                  f"jobs returned ({mem.get('statuses')}).",
                  (f"- Allocated memory after each batch minus the baseline (MiB): "
                   f"{[b['allocated_after_minus_baseline_mib'] for b in mem['batches']]}; "
                   f"after the out-of-memory batch: "
                   f"{mem.get('allocated_after_oom_minus_baseline_mib', '-')}."
                   if mem.get("baseline_allocated_mib") is not None else
                   "- Allocated memory: not measured (no CUDA in a dry run)."), ""]
    gt = steps["gpu-tests"].get("figures", {})
    if "tests" in gt:
        lines += ["## GPU-marked tests", "",
                  f"`pytest -m gpu` on {', '.join(gt.get('files', []))}: "
                  f"{gt.get('summary', '')}", ""]
    problems = []
    for name, s in steps.items():
        if s.get("error"):
            problems.append(f"- {name}: {s['error']}")
        for check, c in s.get("checks", {}).items():
            if c["passed"] is False:
                problems.append(f"- {name} / {check}: {c['detail']}")
    if problems:
        lines += ["## What failed", "", *problems, ""]
    return "\n".join(lines)
