"""scripts/bench_member_spread.py: does an ensemble's disagreement track its error?"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_member_spread", ROOT / "scripts" / "bench_member_spread.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_spread_report_splits_by_disagreement_and_scores_the_geometric_mean():
    truth = np.full(4, 10.0)
    # Networks 0-1: members agree and are right; 2-3: they disagree and their mean is 20% off.
    members = np.array([[10.0, 10.0, 10.0, 10.0],
                        [10.0, 10.0, 14.4, 14.4]])
    np.testing.assert_allclose(bench.member_spread_pct(members), [0.0, 0.0, 44.0, 44.0])
    rep = bench.spread_report(members, truth, ["a", "a", "b", "b"])
    assert rep["n"] == 4 and rep["members"] == 2
    assert rep["low_spread_half"]["mape"] == 0.0
    assert rep["high_spread_half"]["mape"] == pytest.approx(20.0, abs=1e-3)   # sqrt(10 * 14.4) = 12
    assert rep["spearman_spread_vs_ape"] == pytest.approx(1.0)
    assert rep["per_family_median_spread_pct"] == {"a": 0.0, "b": 44.0}
