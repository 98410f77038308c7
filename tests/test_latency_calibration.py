"""Carrying a latency checkpoint over to another machine: fit, apply, store, refuse what is damaged."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from narformer_core.latency import calibration as calib
from narformer_core.latency.calibration import CalibrationError, HostCalibration, fit_host_calibration

ROOT = calib.Path(__file__).resolve().parents[1]
RECORD_SET = ROOT / "assets" / "latency" / "zoo2000_s14.jsonl.gz"


@pytest.fixture(scope="module")
def zoo_graphs():
    """40 zoo networks (4 per family) of the shipped set and their measured ms (the first 40 rows)."""
    import gzip

    from narformer_core.latency.dataset import record_graph

    with gzip.open(RECORD_SET, "rt") as f:
        recs = [json.loads(next(f)) for _ in range(40)]
    return [record_graph(r) for r in recs], np.array([r["refnorm_ms"] for r in recs]), [r["family"] for r in recs]


def _fit(graphs, measured, predicted, **kw):
    return fit_host_calibration(graphs, measured, predicted, platform_key="cpu-here", checkpoint_sha256="a" * 64,
                                checkpoint_platform="cpu-there", **kw)


def test_a_machine_that_is_uniformly_slower_gets_exactly_that_ratio(zoo_graphs):
    graphs, ms, _ = zoo_graphs
    cal = _fit(graphs[:20], 1.3 * ms[:20], ms[:20])
    assert cal.speed_ratio == pytest.approx(1.3)
    assert np.allclose(cal.residuals, 0.0, atol=1e-12)
    # Networks it never saw get the same ratio.
    assert np.allclose(cal.apply(ms[20:], graphs[20:]), 1.3 * ms[20:])
    assert cal.loo["calibrated_mape"] == pytest.approx(0.0, abs=1e-9)
    assert cal.loo["uncorrected_mape"] == pytest.approx(100 * 0.3 / 1.3, abs=1e-3)   # MAPE of the measured ms


def test_the_local_correction_learns_a_ratio_that_depends_on_the_network(zoo_graphs):
    graphs, ms, _ = zoo_graphs
    from narformer_core.latency.predictors import static_log_features

    flops = static_log_features(graphs)[:, 1]
    big = flops > np.median(flops)
    truth = ms * np.where(big, 1.6, 1.1)          # big networks slow down more on the new machine
    train = np.arange(0, 40, 2)
    test = np.arange(1, 40, 2)
    cal = _fit([graphs[i] for i in train], truth[train], ms[train])
    assert cal.loo["calibrated_mape"] < cal.loo["ratio_only_mape"]
    calibrated = cal.apply(ms[test], [graphs[i] for i in test])
    scaled = ms[test] * cal.speed_ratio
    err = lambda p: float(np.mean(np.abs(p - truth[test]) / truth[test]))  # noqa: E731
    assert err(calibrated) < err(scaled)


def test_a_network_unlike_every_calibration_network_gets_the_global_ratio():
    train_x = np.zeros((5, 4))
    r = np.array([0.2, -0.1, 0.05, 0.1, -0.25])
    far = calib._local(train_x, r, np.full((1, 4), 50.0), bandwidth=1.0, prior_weight=1.0)
    near = calib._local(train_x, r, np.zeros((1, 4)), bandwidth=1.0, prior_weight=1.0)
    assert far[0] == pytest.approx(0.0, abs=1e-12)
    assert near[0] == pytest.approx(r.sum() / 6.0)      # five neighbours at weight 1 and the prior's one


def test_round_trip_through_json_and_where_it_applies(zoo_graphs, tmp_path):
    graphs, ms, fams = zoo_graphs
    rng = np.random.default_rng(0)
    cal = _fit(graphs[:15], ms[:15] * np.exp(rng.normal(0.2, 0.05, 15)), ms[:15], names=fams[:15])
    path = cal.save(tmp_path / "c.json")
    back = HostCalibration.load(path)
    assert back == cal
    assert np.allclose(back.apply(ms[15:], graphs[15:]), cal.apply(ms[15:], graphs[15:]))
    back.check_applies("a" * 64, "cpu-here")
    with pytest.raises(CalibrationError, match="another checkpoint"):
        back.check_applies("b" * 64, "cpu-here")
    with pytest.raises(CalibrationError, match="timed on cpu-here"):
        back.check_applies("a" * 64, "cpu-elsewhere")


def test_find_calibration_keys_on_the_checkpoint_file_and_the_platform(zoo_graphs, tmp_path):
    graphs, ms, _ = zoo_graphs
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"some checkpoint bytes")
    sha = calib.file_sha256(ckpt)
    assert calib.find_calibration(ckpt, "cpu-here", tmp_path) is None
    cal = fit_host_calibration(graphs[:6], ms[:6] * 2, ms[:6], platform_key="cpu-here", checkpoint_sha256=sha,
                               checkpoint_platform="cpu-there")
    cal.save(calib.calibration_path(sha, "cpu-here", tmp_path))
    assert calib.find_calibration(ckpt, "cpu-here", tmp_path) == cal
    assert calib.find_calibration(ckpt, "cpu-other", tmp_path) is None
    ckpt.write_bytes(b"a retrained checkpoint")       # another file: the old calibration is not its
    assert calib.find_calibration(ckpt, "cpu-here", tmp_path) is None


@pytest.mark.parametrize("damage", ["truncated", "schema", "nan", "shape", "text"])
def test_a_damaged_calibration_file_is_refused_with_a_clear_message(zoo_graphs, tmp_path, damage):
    graphs, ms, _ = zoo_graphs
    d = _fit(graphs[:5], ms[:5] * 1.5, ms[:5]).to_dict()
    path = tmp_path / "c.json"
    if damage == "truncated":
        path.write_text(json.dumps(d)[:200])
    elif damage == "text":
        path.write_bytes(b"\x80\x81 not json at all")
    else:
        if damage == "schema":
            d["schema"] = 99
        elif damage == "nan":
            d["log_scale"] = math.nan
        else:
            d["features"] = d["features"][:2]
        path.write_text(json.dumps(d))
    with pytest.raises(CalibrationError):
        HostCalibration.load(path)


def test_fitting_refuses_too_few_or_impossible_timings(zoo_graphs):
    graphs, ms, _ = zoo_graphs
    with pytest.raises(CalibrationError, match="at least 3"):
        _fit(graphs[:2], ms[:2], ms[:2])
    bad = ms[:5].copy()
    bad[2] = 0.0
    with pytest.raises(CalibrationError, match="positive"):
        _fit(graphs[:5], bad, ms[:5])
    with pytest.raises(CalibrationError, match="measurements"):
        _fit(graphs[:5], ms[:4], ms[:5])


def test_calibration_networks_cover_the_families_and_skip_the_test_split():
    from narformer_core.latency.dataset import load_records

    recs = load_records(RECORD_SET, require_graph=False)
    test = list(range(0, 2000, 3))                       # every third row is "test"
    specs = calib.calibration_specs(RECORD_SET, 10, exclude_indices=test, seed=3)
    assert sorted(s["family"] for s in specs) == sorted({r["family"] for r in recs})
    kept = {json.dumps(recs[i]["spec"], sort_keys=True) for i in range(2000) if i % 3}
    assert all(json.dumps(s, sort_keys=True) in kept for s in specs)
    assert calib.calibration_specs(RECORD_SET, 10, exclude_indices=test, seed=3) == specs   # the seed decides
    with pytest.raises(CalibrationError):
        calib.calibration_specs(RECORD_SET, 2)


def test_spread_over_families_gives_each_family_a_turn():
    fams = ["a"] * 5 + ["b"] * 1 + ["c"] * 3
    idx = calib.spread_over_families(fams, 6, np.random.default_rng(0))
    got = [fams[i] for i in idx]
    assert sorted(got[:3]) == ["a", "b", "c"] and got.count("b") == 1 and len(set(idx)) == 6
