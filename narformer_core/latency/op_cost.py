"""Latency as a sum of per-operator costs: a linear, non-negative model per operator kind.

    ms ~ c0 + sum over operators i of  w[k(i)] . [MACs_i, output elements_i, parameters_i,
                                                   input elements_i, 1] / (1e6, ..., 1)

k(i) is the operator's kind: its ONNX type, with convolutions split into grouped (depthwise),
1x1, 3x3 and other kernels, whose cost per MAC differs several-fold on a CPU. The weights are
fitted by non-negative least squares on the relative error (each row divided by its latency),
the error MAPE measures; non-negative, every term is a cost: milliseconds per million MACs of a
3x3 convolution, per million elements a Relu writes, per call of an Add.

Why: it is nn-Meter's view of latency (a network runs as a sequence of kernels; their times add
up), with a few dozen numbers. On the zoo's training networks it fits validation latencies better
than the FLOPs regression (5.85% against 8.02% validation MAPE, assets/latency/README.md, session
12), so NAR-Former can learn its residual instead: what the sum misses (fusion, cache effects,
small-kernel overheads) is what the transformer should see in a network's structure.

An operator kind the model did not see in training adds nothing (its cost goes to the residual).
"""
from __future__ import annotations

import numpy as np
import torch

from ..graph import ArchGraph

# One row of numbers per operator, in this order; all but the count in millions.
COST_TERMS = ("macs", "output_elements", "parameters", "input_elements", "calls")
_SCALE = np.array([1e6, 1e6, 1e6, 1e6, 1.0])


def operator_kind(node) -> str:
    """The cost class of one operator (convolutions by kernel and grouping, the rest by type)."""
    if node.op != "Conv":
        return node.op
    if int(node.attrs.get("group", 1) or 1) > 1:
        return "Conv/grouped"
    kernel = tuple(int(k) for k in (node.attrs.get("kernel_shape") or ()))
    if kernel and all(k == 1 for k in kernel):
        return "Conv/1x1"
    if kernel and all(k == 3 for k in kernel):
        return "Conv/3x3"
    return "Conv/other"


def _elements(shape) -> float:
    return float(np.prod(shape)) if shape and all(int(d) > 0 for d in shape) else 0.0


def operator_cost_terms(g: ArchGraph) -> dict[str, np.ndarray]:
    """{operator kind: summed COST_TERMS over the network's operators of that kind} (unscaled)."""
    from ..features import per_node_features

    out: dict[str, np.ndarray] = {}
    for row in per_node_features(g):
        node = g.nodes[row["index"]]
        if node.op == "input":
            continue
        terms = np.array([row["flops"], row["memory_access"] - row["params"], row["params"],
                          sum(_elements(g.nodes[j].shape) for j in node.inputs), 1.0])
        kind = operator_kind(node)
        out[kind] = out.get(kind, 0.0) + terms
    return out


class OperatorCostModel:
    """Fitted per-kind cost weights; ``predict_ms`` / ``predict_log`` for any network."""

    name = "operator-cost sum"

    def __init__(self):
        self.kinds: list[str] = []
        self.weights: np.ndarray | None = None          # (len(kinds) * 5 + 1,), the last one the constant

    def design(self, graphs, terms=None) -> np.ndarray:
        from .predictors import _cached

        index = {k: i for i, k in enumerate(self.kinds)}
        n_terms = len(COST_TERMS)
        x = np.zeros((len(graphs), len(self.kinds) * n_terms + 1))
        x[:, -1] = 1.0
        for r, g in enumerate(graphs):
            for kind, t in (terms[r] if terms is not None else _cached("opcost", g, operator_cost_terms)).items():
                i = index.get(kind)
                if i is not None:                       # a kind not seen in training: no term
                    x[r, i * n_terms:(i + 1) * n_terms] = t / _SCALE
        return x

    def fit(self, graphs, latencies_ms) -> "OperatorCostModel":
        from scipy.optimize import nnls
        from .predictors import _cached, _check_graphs, _check_ms

        graphs = _check_graphs(graphs)
        y = _check_ms(latencies_ms, len(graphs))
        terms = [_cached("opcost", g, operator_cost_terms) for g in graphs]
        self.kinds = sorted({k for t in terms for k in t})
        x = self.design(graphs, terms)
        # Relative least squares: row r divided by y_r, so the residual is (pred - y) / y.
        self.weights, _ = nnls(x / y[:, None], np.ones(len(y)), maxiter=50 * x.shape[1])
        return self

    def predict_ms(self, graphs) -> np.ndarray:
        if self.weights is None:
            raise ValueError("the operator-cost model is not fitted")
        # A network made only of unseen kinds could sum to 0 ms: keep the log finite.
        return np.maximum(self.design(graphs) @ self.weights, 1e-3)

    def predict_log(self, graphs) -> np.ndarray:
        return np.log(self.predict_ms(graphs))

    def breakdown(self, graph: ArchGraph) -> list[dict]:
        """Where one network's time goes by this model: [{kind, ms, operators}], slowest first,
        plus the fixed per-run cost; kinds the model never saw are listed with ms None."""
        n = len(COST_TERMS)
        index = {k: i for i, k in enumerate(self.kinds)}
        rows = []
        for kind, t in operator_cost_terms(graph).items():
            i = index.get(kind)
            ms = None if i is None else float((t / _SCALE) @ self.weights[i * n:(i + 1) * n])
            rows.append({"kind": kind, "ms": ms, "operators": int(t[COST_TERMS.index("calls")])})
        rows.sort(key=lambda r: -1.0 if r["ms"] is None else r["ms"], reverse=True)
        return rows + [{"kind": "fixed per run", "ms": float(self.weights[-1]), "operators": 0}]

    def table(self) -> list[dict]:
        """The fitted costs, one row per operator kind (for reading, plots and the notes)."""
        n = len(COST_TERMS)
        return [{"kind": k, **{t: float(self.weights[i * n + j]) for j, t in enumerate(COST_TERMS)}}
                for i, k in enumerate(self.kinds)]

    def _state(self) -> dict:
        return {"kind": "opcost", "kinds": list(self.kinds), "weights": torch.from_numpy(np.asarray(self.weights))}

    def _load_state(self, st: dict) -> None:
        kinds, w = list(st["kinds"]), st["weights"].numpy()
        if not all(isinstance(k, str) for k in kinds) or w.shape != (len(kinds) * len(COST_TERMS) + 1,):
            raise ValueError(f"{w.shape} weights for {len(kinds)} operator kinds is not an operator-cost model")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("an operator-cost model has finite, non-negative weights only")
        self.kinds, self.weights = kinds, w
