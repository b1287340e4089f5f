"""The task message gate."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polyfit_models import JobSpec
from worker.payload import BadMessage, Batch


def _batch() -> Batch:
    return Batch("sweep1", "cpu", (("j1", JobSpec.create("numpy", seed=1)),
                                   ("j2", JobSpec.create("numpy", seed=2))))


def test_round_trip_through_json():
    import json

    b = _batch()
    assert Batch.from_dict(json.loads(json.dumps(b.to_dict()))) == b


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(schema=99),
    lambda d: d.update(extra=1),
    lambda d: d.update(device="tpu"),
    lambda d: d.update(jobs=[]),
    lambda d: d.update(jobs="x"),
    lambda d: d.update(sweep_id=""),
    lambda d: d["jobs"][0].update(spec={"variant": "nope"}),
    lambda d: d["jobs"][0]["spec"].update(variant="nope"),
    lambda d: d["jobs"][0]["spec"].update(epochs=10**12),
    lambda d: d["jobs"][0]["spec"].update(x_points=10**12),
    lambda d: d["jobs"][0].update(more=1),
])
def test_malformed_messages_are_refused(mutate):
    d = _batch().to_dict()
    mutate(d)
    with pytest.raises(BadMessage):
        Batch.from_dict(d)


@settings(max_examples=200, deadline=None)
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
