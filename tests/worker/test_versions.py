"""Every result row says what trained it (issue 23: "the exact versions stored with every job so
a result can be reproduced"): polyfit's, torch's, NumPy's and Python's versions, the host and the
device's model, as JSON text that SQL reads; a result reused by another sweep keeps them."""

from __future__ import annotations

import json
import platform
import socket

import numpy
import torch

from tests.support.database import query
from tests.support.sweeps import finished_sweep, record_sweep

GRID = [{"variant": ["numpy", "autograd"], "lr": [1e-6], "degree": [3], "seed": [0],
         "epochs": [50]}]


def test_each_result_keeps_the_versions_that_made_it_and_reuse_keeps_them(tmp_path):
    db = f"sqlite:///{tmp_path / 'r.sqlite'}"
    sweep_id = finished_sweep(db, GRID, name="made")
    got = query(db, "SELECT variant, versions, json_extract(versions, '$.torch') AS torch "
                    "FROM jobs WHERE sweep_id = :s ORDER BY variant", s=sweep_id)
    assert [r["variant"] for r in got] == ["autograd", "numpy"]
    for r in got:
        v = json.loads(r["versions"])
        assert v["torch"] == r["torch"] == torch.__version__
        assert v["numpy"] == numpy.__version__
        assert v["python"] == platform.python_version()
        assert v["host"] == socket.gethostname()
        assert v["device"].startswith("cpu: ") and v["polyfit"]
    # Another sweep with the same settings reuses the results, with what made them.
    again, _ = record_sweep(db, GRID, name="again")
    reused = query(db, "SELECT reused_from, versions FROM jobs WHERE sweep_id = :s", s=again)
    assert {r["reused_from"] for r in reused} == {sweep_id}
    assert sorted(r["versions"] for r in reused) == sorted(r["versions"] for r in got)
