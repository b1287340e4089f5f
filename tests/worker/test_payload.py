"""The task message gate: a message names stored jobs (ids) and nothing else."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.payload import BadMessage, Batch


def _batch() -> Batch:
    return Batch("sweep1", "cpu", ("j1", "j2"))


def test_round_trip_through_json():
    b = _batch()
    assert Batch.from_dict(json.loads(json.dumps(b.to_dict()))) == b


def test_a_message_carries_ids_only_never_settings():
    assert _batch().to_dict() == {"schema": 2, "sweep_id": "sweep1", "device": "cpu",
                                  "jobs": ["j1", "j2"]}


def test_repeated_ids_are_named_once():
    d = _batch().to_dict()
    d["jobs"] = ["j1", "j2", "j1"]
    assert Batch.from_dict(d).job_ids == ("j1", "j2")


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(schema=99),
    lambda d: d.update(schema=1),  # the old format, with settings in it: refused whole
    lambda d: d.update(extra=1),
    lambda d: d.update(device="tpu"),
    lambda d: d.update(jobs=[]),
    lambda d: d.update(jobs="x"),
    lambda d: d.update(jobs=[{"id": "j1", "spec": {"variant": "numpy"}}]),
    lambda d: d.update(jobs=["j" * 33]),
    lambda d: d.update(jobs=["a b"]),
    lambda d: d.update(jobs=[1]),
    lambda d: d.update(jobs=["j"] * 70_000),
    lambda d: d.update(sweep_id=""),
    lambda d: d.update(sweep_id="../x"),
    lambda d: d.update(sweep_id=None),
])
def test_malformed_messages_are_refused(mutate):
    d = _batch().to_dict()
    mutate(d)
    with pytest.raises(BadMessage):
        Batch.from_dict(d)


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["schema", "sweep_id", "device", "jobs", "id", "spec",
                                       "variant", "lr"]), children, max_size=5),
    max_leaves=20))
def test_junk_raises_only_bad_message(junk):
    try:
        Batch.from_dict(junk)
    except BadMessage:
        pass
