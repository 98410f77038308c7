"""Latency as a sum of per-operator costs: a linear, non-negative model per operator kind.

    ms ~ c0 + sum over operators i of  w[k(i)] . [MACs_i, output elements_i, parameters_i,
                                                   input elements_i, 1] / (1e6, ..., 1)

k(i) is the operator's kind: its ONNX type, with convolutions split into grouped (depthwise or
not), 1x1, 3x3 and other kernels, whose cost per MAC differs several-fold on a CPU. Since session
20 (``channel_blocks``, the default of new fits) every operator on a 4-D tensor is split further
by whether its output and first input's channel counts fill whole blocks of 16 channels (no
suffix), of 8 only ("/c8"), or neither ("/c1"), the worse of the two deciding. The weights are
fitted by non-negative least squares on the relative error (each row divided by its latency),
the error MAPE measures; non-negative, every term is a cost: milliseconds per million MACs of a
3x3 convolution, per million elements a Relu writes, per call of an Add.

Why: it is nn-Meter's view of latency (a network runs as a sequence of kernels; their times add
up), with about a hundred numbers. On the zoo's training networks it fits validation latencies better
than the FLOPs regression (5.85% against 8.02% validation MAPE, assets/latency/README.md, session
12), so NAR-Former can learn its residual instead: what the sum misses (fusion, cache effects,
small-kernel overheads) is what the transformer should see in a network's structure.

Each kind's costs are pulled towards those of its category (conv, matmul, pool, data movement,
elementwise), and a kind not seen in training costs what its category does.

Limits (session 12): fitted on the zoo's ten families, it ranks networks of other families at
tau 0.62 with 86% MAPE. ConvNeXt's pointwise layers are MatMuls, a kind the zoo lacks, so they
get the "matmul" category's cost, learnt from the zoo's classifier Gemms (batch 1: matrix-vector
products, memory-bound, ~12x the per-MAC cost of a 1x1 convolution); one ConvNeXt is priced at
74 ms for 12 ms measured, 68 of them in MatMul. Use it to explain where a zoo-like network's time
goes, not to predict an unfamiliar one.
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


# Why channel blocks: onnxruntime runs convolutions and pools in its NCHWc layout, channels in
# blocks of 16 floats on AVX-512 (8 on AVX2), and a tensor that fills no whole block is padded or
# stays in the plain layout with reorders around it. On the Intel host (session 20) NB201 networks
# with 8 or 24 channels ran ~30% slower than the unsplit sum said, relative to those with 16 or
# 32, and splitting the kinds took the sum's validation MAPE from 5.83% to ~4% (AMD labels: 7.50%
# to ~6.2%). Three classes rather than one block size: which block matters is the host's, and the
# fit learns it from that host's measurements.
BLOCK_SUFFIXES = ("", "/c8", "/c1")


def channel_count(node) -> int | None:
    """The channels of ``node``'s output if it is a 4-D (NCHW) tensor of known size, else None."""
    return int(node.shape[1]) if len(node.shape) == 4 and int(node.shape[1]) > 0 else None


def channel_block_suffix(g: ArchGraph, node) -> str:
    """"" / "/c8" / "/c1": the worst channel blocking of ``node``'s 4-D output and first input."""
    c_out = channel_count(node)
    if c_out is None:
        return ""
    c_in = channel_count(g.nodes[node.inputs[0]]) if node.inputs else None
    worst = max(0 if c % 16 == 0 else 1 if c % 8 == 0 else 2 for c in (c_out, c_in) if c is not None)
    return BLOCK_SUFFIXES[worst]


def base_kind(kind: str) -> str:
    """The kind without its channel-block suffix."""
    for suffix in BLOCK_SUFFIXES[1:]:
        if kind.endswith(suffix):
            return kind[:-len(suffix)]
    return kind


def _elements(shape) -> float:
    return float(np.prod(shape)) if shape and all(int(d) > 0 for d in shape) else 0.0


def operator_cost_terms(g: ArchGraph, channel_blocks: bool = False) -> dict[str, np.ndarray]:
    """{operator kind: summed COST_TERMS over the network's operators of that kind} (unscaled);
    with ``channel_blocks`` the kinds carry their channel-block suffix."""
    from ..features import per_node_features

    out: dict[str, np.ndarray] = {}
    for row in per_node_features(g):
        node = g.nodes[row["index"]]
        if node.op == "input":
            continue
        terms = np.array([row["flops"], row["memory_access"] - row["params"], row["params"],
                          sum(_elements(g.nodes[j].shape) for j in node.inputs), 1.0])
        kind = operator_kind(node) + (channel_block_suffix(g, node) if channel_blocks else "")
        out[kind] = out.get(kind, 0.0) + terms
    return out


# A kind's costs are pulled towards those of its category (see OperatorCostModel.fit), and a
# kind never seen in training costs what its category does.
_MATMUL = {"Gemm", "MatMul"}
_POOL = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "LpPool"}
_DATA_MOVEMENT = {"Concat", "Split", "Slice", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Pad",
                  "Resize", "Upsample", "Gather", "Identity", "Expand", "Tile", "Shape", "Cast", "DepthToSpace",
                  "SpaceToDepth"}


def operator_category(kind: str) -> str:
    """conv, matmul, pool, data movement or elementwise (the default: activations, arithmetic, norms)."""
    kind = base_kind(kind)
    if kind.startswith("Conv"):
        return "conv"
    if kind in _MATMUL:
        return "matmul"
    if kind in _POOL:
        return "pool"
    if kind in _DATA_MOVEMENT:
        return "data movement"
    return "elementwise"


# Strength of the pull of a kind's costs towards its category's (chosen on validation networks
# only, session 12: the largest of 0.01, 0.1, 1, 10 that keeps the in-domain validation MAPE
# within 0.2 points of the unpulled fit; assets/latency/README.md).
DEFAULT_SHRINK = 1.0


class OperatorCostModel:
    """Fitted per-kind cost weights; ``predict_ms`` / ``predict_log`` for any network."""

    name = "operator-cost sum"

    def __init__(self, shrink: float = DEFAULT_SHRINK, channel_blocks: bool = True):
        if not (np.isfinite(shrink) and shrink >= 0):
            raise ValueError(f"shrink must be a non-negative number, got {shrink}")
        self.shrink = float(shrink)
        # Kinds split by channel blocks (module docstring); off in models saved before session 20.
        self.channel_blocks = bool(channel_blocks)
        self.kinds: list[str] = []
        self.weights: np.ndarray | None = None          # (len(kinds) * 5 + 1,), the last one the constant
        self.categories: list[str] = []
        self.category_weights: np.ndarray | None = None  # (len(categories) * 5,)

    def _kind_weights(self, kind: str) -> np.ndarray | None:
        """The 5 cost weights of ``kind``: its own, else its category's, else None (unknown)."""
        n = len(COST_TERMS)
        if kind in self.kinds:
            i = self.kinds.index(kind)
            return self.weights[i * n:(i + 1) * n]
        cat = operator_category(kind)
        if self.category_weights is not None and cat in self.categories:
            j = self.categories.index(cat)
            return self.category_weights[j * n:(j + 1) * n]
        return None

    def _kind_ms(self, kind: str, terms: np.ndarray) -> float | None:
        """ms of one kind's summed cost terms in a network (None: neither kind nor category known)."""
        w = self._kind_weights(kind)
        return None if w is None else float((terms / _SCALE) @ w)

    def _design(self, terms: list[dict]) -> np.ndarray:
        """(N, kinds * 5 + 1): the networks' scaled cost terms of the fitted kinds, and a constant column."""
        index = {k: i for i, k in enumerate(self.kinds)}
        n_terms = len(COST_TERMS)
        x = np.zeros((len(terms), len(self.kinds) * n_terms + 1))
        x[:, -1] = 1.0
        for r, per_kind in enumerate(terms):
            for kind, t in per_kind.items():
                i = index[kind]
                x[r, i * n_terms:(i + 1) * n_terms] = t / _SCALE
        return x

    def fit(self, graphs, latencies_ms) -> "OperatorCostModel":
        """Non-negative least squares on the relative error, each kind's costs pulled to its category's.

        Why the pull: a kind seen only in small roles teaches nothing about its large ones. Sigmoid
        appears in MnasNet's squeeze-excitation blocks (tensors of a few hundred elements) and in
        EfficientNet's SiLU over whole feature maps; fitted without EfficientNet, its per-element
        cost is unconstrained and came out ~15x too high (session 12's leave-one-family-out
        bench). The pull is a penalty shrink * s_t * (w_kind,t - w_category,t) per kind and cost
        term, s_t the term's typical share of a network's latency per unit of weight, so the
        penalty is in relative-latency units; categories are fitted together with the kinds.
        """
        from scipy.optimize import nnls
        from .predictors import _check_graphs, _check_ms

        graphs = _check_graphs(graphs)
        y = _check_ms(latencies_ms, len(graphs))
        terms = [self._terms(g) for g in graphs]
        self.kinds = sorted({k for t in terms for k in t})
        self.categories = sorted({operator_category(k) for k in self.kinds})
        n, K, G = len(COST_TERMS), len(self.kinds), len(self.categories)
        x = self._design(terms) / y[:, None]       # row r / y_r: the residual is (pred - y) / y
        data = np.concatenate([x[:, :-1], np.zeros((len(y), G * n)), x[:, -1:]], axis=1)
        blocks = [data]
        if self.shrink > 0:
            per_term = x[:, :-1].reshape(len(y), K, n).sum(axis=1).mean(axis=0)      # s_t
            scale = np.sqrt(self.shrink) * np.where(per_term > 0, per_term, 1.0)
            pull = np.zeros((K * n, K * n + G * n + 1))
            for i, kind in enumerate(self.kinds):
                j = self.categories.index(operator_category(kind))
                for t in range(n):
                    pull[i * n + t, i * n + t] = scale[t]
                    pull[i * n + t, K * n + j * n + t] = -scale[t]
            blocks.append(pull)
        a = np.concatenate(blocks)
        b = np.concatenate([np.ones(len(y)), np.zeros(len(a) - len(y))])
        v, _ = nnls(a, b, maxiter=50 * a.shape[1])
        self.weights = np.concatenate([v[:K * n], v[-1:]])
        self.category_weights = v[K * n:K * n + G * n] if self.shrink > 0 else None
        return self

    def _terms(self, g: ArchGraph) -> dict[str, np.ndarray]:
        from .predictors import _cached

        if self.channel_blocks:
            return _cached("opcost-blocks", g, lambda g: operator_cost_terms(g, channel_blocks=True))
        return _cached("opcost", g, operator_cost_terms)

    def predict_ms(self, graphs) -> np.ndarray:
        if self.weights is None:
            raise ValueError("the operator-cost model is not fitted")

        # Each kind at its own costs, or its category's when training never saw it (_kind_weights).
        ms = np.full(len(graphs), float(self.weights[-1]))
        for r, g in enumerate(graphs):
            ms[r] += sum(self._kind_ms(kind, t) or 0.0 for kind, t in self._terms(g).items())
        # A network made only of unknown kinds could sum to 0 ms: keep the log finite.
        return np.maximum(ms, 1e-3)

    def predict_log(self, graphs) -> np.ndarray:
        return np.log(self.predict_ms(graphs))

    def breakdown(self, graph: ArchGraph) -> list[dict]:
        """Where one network's time goes by this model: [{kind, ms, operators, by_category}],
        slowest first, plus the fixed per-run cost; ``by_category``: a kind not seen in training,
        costed as its category; ms None where even that is unknown."""
        rows = []
        for kind, t in operator_cost_terms(graph, self.channel_blocks).items():
            rows.append({"kind": kind, "ms": self._kind_ms(kind, t),
                         "operators": int(t[COST_TERMS.index("calls")]), "by_category": kind not in self.kinds})
        rows.sort(key=lambda r: -1.0 if r["ms"] is None else r["ms"], reverse=True)
        return rows + [{"kind": "fixed per run", "ms": float(self.weights[-1]), "operators": 0, "by_category": False}]

    def table(self) -> list[dict]:
        """The fitted costs, one row per operator kind (for reading, plots and the notes)."""
        n = len(COST_TERMS)
        return [{"kind": k, **{t: float(self.weights[i * n + j]) for j, t in enumerate(COST_TERMS)}}
                for i, k in enumerate(self.kinds)]

    def _state(self) -> dict:
        st = {"kind": "opcost", "kinds": list(self.kinds), "weights": torch.from_numpy(np.asarray(self.weights)),
              "shrink": self.shrink, "categories": list(self.categories), "channel_blocks": self.channel_blocks}
        if self.category_weights is not None:
            st["category_weights"] = torch.from_numpy(np.asarray(self.category_weights))
        return st

    def _load_state(self, st: dict) -> None:
        kinds, w = list(st["kinds"]), st["weights"].numpy()
        cats = list(st.get("categories") or [])
        cw = st["category_weights"].numpy() if st.get("category_weights") is not None else None
        n = len(COST_TERMS)
        if not all(isinstance(k, str) for k in kinds + cats) or w.shape != (len(kinds) * n + 1,):
            raise ValueError(f"{w.shape} weights for {len(kinds)} operator kinds is not an operator-cost model")
        if cw is not None and cw.shape != (len(cats) * n,):
            raise ValueError(f"{cw.shape} category weights for {len(cats)} categories is not an operator-cost model")
        for arr in (w, cw):
            if arr is not None and (not np.all(np.isfinite(arr)) or np.any(arr < 0)):
                raise ValueError("an operator-cost model has finite, non-negative weights only")
        self.kinds, self.weights, self.categories, self.category_weights = kinds, w, cats, cw
        self.shrink = float(st.get("shrink", 0.0))
        self.channel_blocks = bool(st.get("channel_blocks", False))     # saved before session 20: off
