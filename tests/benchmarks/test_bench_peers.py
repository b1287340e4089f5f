"""benchmarks/bench_peers.py without running its sweeps: the flop counts it divides by, and a peer
that is not installed (Optuna and Ray are the optional extra ``bench``, not test dependencies)
skipped with the line that says how to get it while the rest of the report goes on."""

from __future__ import annotations

import pytest

from benchmarks import bench_peers


@pytest.mark.parametrize("variant,degree,flops", [
    ("autograd", 3, 18), ("numpy", 3, 18), ("module", 1, 10), ("dynamic", 5, 26),
    ("legendre", 3, 25), ("legendre", 2, 21)])
def test_flops_per_point_and_epoch(variant, degree, flops):
    assert bench_peers.flops_per_point_epoch(variant, degree) == flops


def test_the_lesson_fit_is_72_mflop():
    per_fit = bench_peers.flops_per_point_epoch("autograd", 3) * bench_peers.POINTS \
        * bench_peers.EPOCHS
    assert per_fit == 72_000_000


def test_a_peer_that_is_not_installed_is_skipped_and_the_run_goes_on(monkeypatch, capsys,
                                                                     tmp_path):
    assert not bench_peers.installed("no_such_module_for_polyfit")
    ran = []

    def fake_peer(fits, tmp):
        ran.append(fits)
        return 0.5 * fits

    monkeypatch.setattr(bench_peers, "PEERS", {
        "plain loop": (fake_peer, None),
        "optuna": (fake_peer, "no_such_module_for_polyfit"),
    })
    monkeypatch.setattr(bench_peers, "polyfit_sweep_run", lambda fits: (2.0 + 0.01 * fits, 1.0))
    monkeypatch.setattr(bench_peers, "peak_flops", lambda threads: 1e11 * threads)
    monkeypatch.setattr(bench_peers, "ROOT", tmp_path)
    bench_peers.main(["--sizes", "64,1024", "--peer-fits", "16", "--skip-variants"])
    out = capsys.readouterr().out
    assert "optuna: skipped: pip install 'polyfit[bench]'" in out
    assert ran == [4]  # the plain loop ran (on a quarter of the peer fits); optuna did not
    table = out.split("polyfit s/fit", 1)[1]
    assert "skipped" in table and "*" in table  # the 1,024 plain-loop figure is extrapolated
    assert "polyfit sweep run marginal cost (64 -> 1024 fits)" in out
    assert (tmp_path / "benchmarks" / "out" / "peers.json").exists()
