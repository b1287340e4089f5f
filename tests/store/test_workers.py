"""The fleet's list of workers that are up (``store.workers``): what a submit cuts a sweep by."""

from __future__ import annotations

from sqlalchemy import text, update

from store.clock import ago_sql
from store.records import WorkerRecord
from store.workers import forget_worker, live_processes, note_worker


def test_live_workers_count_their_processes_and_a_stop_takes_one_off(engine):
    assert live_processes(engine, within_s=30) == 0
    note_worker(engine, "polyfit-cpu-1-a@h1", "cpu", 2)
    note_worker(engine, "polyfit-cpu-2-b@h2", "cpu", 4)
    note_worker(engine, "polyfit-cpu-1-a@h1", "cpu", 2)  # again: one row, not two
    assert live_processes(engine, within_s=30) == 6
    forget_worker(engine, "polyfit-cpu-2-b@h2")
    assert live_processes(engine, within_s=30) == 2


def test_a_worker_that_stopped_noting_itself_is_not_counted(engine):
    note_worker(engine, "polyfit-cpu-1-a@h1", "cpu", 2)
    note_worker(engine, "polyfit-cuda0-3-c@h2", "cuda:0", 1)
    with engine.begin() as c:  # the first one's last note, 10 minutes ago
        c.execute(update(WorkerRecord).where(WorkerRecord.name == "polyfit-cpu-1-a@h1")
                  .values(seen_at=ago_sql(engine, 600)))
    assert live_processes(engine, within_s=30) == 1


def test_a_database_made_before_the_list_counts_no_worker(tmp_path):
    from sqlalchemy import create_engine

    from store import create_schema, make_engine

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    eng = make_engine(url)
    create_schema(eng)
    with eng.begin() as c:
        c.execute(text("DROP TABLE workers"))
    eng.dispose()
    old = create_engine(url)
    try:
        assert live_processes(old, within_s=30) == 0
    finally:
        old.dispose()
