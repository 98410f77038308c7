"""Ranking and regression metrics used everywhere (one definition each)."""
from __future__ import annotations

import numpy as np
from scipy.stats import kendalltau


def kendall_tau(pred, truth) -> float:
    """Kendall's tau-b; 0.0 when undefined (constant input or fewer than 2 points)."""
    pred, truth = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if len(pred) < 2 or np.all(pred == pred[0]) or np.all(truth == truth[0]):
        return 0.0
    return float(kendalltau(pred, truth)[0])


def mape(pred, truth) -> float:
    """Mean absolute percentage error, in %."""
    pred, truth = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    return float(np.mean(np.abs(pred - truth) / np.abs(truth)) * 100.0)


def acc_within(pred, truth, tol: float = 0.10) -> float:
    """Share (%) of predictions within ``tol`` relative error of the truth: Acc(10%) by default."""
    pred, truth = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    return float(np.mean(np.abs(pred - truth) / np.abs(truth) <= tol) * 100.0)
