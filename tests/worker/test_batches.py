"""How a sweep is cut into messages (``worker.batches``): a group of a variant with a fused
path is cut for the workers, up to ``MAX_BATCH`` a message, since one compile serves a message
and the worker trains it in slices of its memory budget; other groups at the budget's room."""

from __future__ import annotations

from polyfit_models import JobSpec
from worker.batches import MAX_BATCH, BatchStream, auto_batch_size, plan_batches
from worker.settings import Settings


def _jobs(variant: str, n: int) -> list[tuple[str, JobSpec, str]]:
    return [(f"j{i}", JobSpec(variant=variant, lr=1e-6, seed=i, epochs=2000, degree=3,
                              optimizer="sgd", dtype="float64" if variant == "numpy" else
                              "float32"), "cpu") for i in range(n)]


def test_a_big_fusable_group_is_cut_for_the_workers_not_for_the_memory_budget():
    settings = Settings()
    jobs = _jobs("autograd", 8192)
    assert auto_batch_size(jobs[0][1], "cpu", settings) < 4096  # 3,300 at 256 MiB
    sizes = [len(b.job_ids) for b in plan_batches("s", jobs, settings, spread=2)]
    assert sizes == [4096, 4096]
    assert max(len(b.job_ids) for b in plan_batches("s", _jobs("autograd", 20000), settings,
                                                    spread=2)) == MAX_BATCH["cpu"]


def test_a_group_without_a_fused_path_stays_within_the_memory_budget():
    settings = Settings()
    jobs = _jobs("numpy", 8192)
    room = auto_batch_size(jobs[0][1], "cpu", settings)
    sizes = [len(b.job_ids) for b in plan_batches("s", jobs, settings, spread=2)]
    assert max(sizes) == room < 4096 and sum(sizes) == 8192


def test_a_streamed_submit_cuts_as_the_planner_does():
    settings = Settings()
    jobs = _jobs("autograd", 8192)
    key = ("cpu", __import__("polyfit_models").batch_key(jobs[0][1]))
    stream = BatchStream("s", settings, spread=2, group_sizes={key: len(jobs)})
    out = [b for job_id, spec, device in jobs if (b := stream.add(job_id, spec, device))]
    out += stream.rest()
    assert [len(b.job_ids) for b in out] == [4096, 4096]
