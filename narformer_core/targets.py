"""How accuracy labels map to the model's 0..1 output, and back to percent.

``fraction``: accuracy / 100 (the paper). ``quantile``: the label's quantile among the training
labels. Kendall's tau only needs the order, and NB201 accuracies bunch up between 85 and 94 %
with a long tail down to 10 %; on raw fractions the MSE is dominated by that tail, while the
quantile target spreads the training signal evenly over the ranking. Predictions map back to
percent through the training labels' quantile function.
"""
from __future__ import annotations

import numpy as np
import torch

KINDS = ("fraction", "quantile")


class TargetMap:
    def __init__(self, kind: str, train_labels=None, knots=None):
        if kind not in KINDS:
            raise ValueError(f"unknown target {kind!r}; use one of {KINDS}")
        self.kind = kind
        if kind == "quantile":
            k = np.sort(np.asarray(train_labels if knots is None else knots, dtype=np.float64))
            self.knots = k
            self.levels = np.linspace(0.0, 1.0, len(k))

    def forward(self, y_percent) -> np.ndarray:
        y = np.asarray(y_percent, dtype=np.float64)
        if self.kind == "fraction":
            return y / 100.0
        # Average of left/right ranks so tied labels share one target.
        lo = np.searchsorted(self.knots, y, side="left")
        hi = np.searchsorted(self.knots, y, side="right")
        return np.clip((lo + hi - 1) / 2.0 / max(len(self.knots) - 1, 1), 0.0, 1.0)

    def inverse(self, u) -> np.ndarray:
        u = np.asarray(u, dtype=np.float64)
        if self.kind == "fraction":
            return u * 100.0
        # Training labels repeat (accuracies have two decimals), so the quantile function has flat
        # steps, and np.interp is flat beyond the end knots: different outputs would map to the
        # same percent and a top-k list would show ties the model never made. A slope of 1e-6 %
        # per unit keeps the map strictly increasing (the model's order survives) and moves no
        # displayed value.
        return np.interp(u, self.levels, self.knots) + 1e-6 * u

    def state(self) -> dict:
        st = {"kind": self.kind}
        if self.kind == "quantile":
            st["knots"] = torch.from_numpy(self.knots)
        return st

    @classmethod
    def from_state(cls, st: dict | None) -> "TargetMap":
        if not st:
            return cls("fraction")
        knots = st.get("knots")
        return cls(st["kind"], knots=None if knots is None else knots.numpy())
