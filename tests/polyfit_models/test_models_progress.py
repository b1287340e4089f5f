"""``fit_many(progress=...)``: every 100 epochs the caller hears how far a batch is and, if it
asks, gets each row's loss curve so far and whether the row still trains; what it sees is a
prefix of the final curves, and watching changes no result."""

from __future__ import annotations

import numpy as np
import pytest

from polyfit_models import fit_many
from tests.support.numerics import spec

CASES = [("numpy", False), ("autograd", False), ("autograd", True), ("legendre", False),
         ("module", True)]


@pytest.mark.parametrize("name,fuse", CASES)
def test_the_curves_seen_while_training_are_prefixes_of_the_final_ones(name, fuse):
    specs = [spec(name, seed=1, epochs=700), spec(name, seed=2, epochs=700)]
    seen = []

    def progress(rows, epochs_done, snapshot):
        curve, training = snapshot()
        seen.append((list(rows), epochs_done, curve.copy(), training.copy()))

    watched = fit_many(specs, fuse=fuse, progress=progress)
    plain = fit_many(specs, fuse=fuse)
    assert [r.to_dict() | {"duration_s": 0} for r in watched] == \
        [r.to_dict() | {"duration_s": 0} for r in plain]
    assert [done for _, done, _, _ in seen] == [100, 200, 300, 400, 500, 600, 700]
    for rows, done, curve, training in seen:
        assert [id(r) for r in rows] == [id(s) for s in specs]  # the caller's own objects
        assert curve.shape == (2, done // 100) and training.all()
        for row, result in enumerate(watched):
            assert np.allclose(curve[row], [loss for _, loss in result.loss_curve[:done // 100]],
                               rtol=1e-12)


def test_a_row_that_stopped_or_diverged_is_no_longer_training():
    stops = spec("numpy", seed=1, dtype="float64", stop_gap=0.05)  # at epoch 34
    diverges = spec("numpy", seed=4, lr=1e-4, dtype="float64")  # at once
    trains = spec("numpy", seed=3, dtype="float64")
    seen = []

    def progress(rows, done, snapshot):
        training = snapshot()[1]
        seen.append({id(r): bool(t) for r, t in zip(rows, training)})

    fit_many([stops, diverges, trains], progress=progress)
    assert len(seen) == 20
    assert all(s == {id(stops): False, id(diverges): False, id(trains): True} for s in seen)


def test_not_asking_for_the_snapshot_costs_nothing_but_the_call():
    calls = []
    fit_many([spec("tensor", epochs=500)], progress=lambda *a: calls.append(a[1]))
    assert calls == [100, 200, 300, 400, 500]
