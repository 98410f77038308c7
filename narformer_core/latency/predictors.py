"""Latency predictors for whole networks behind one interface: NAR-Former, the two baselines of
issue 3, and the operator-cost sum NAR-Former's residual can start from.

    p = make_predictor("narformer" | "flops" | "nnlp" | "opcost", **options)
    p.fit(graphs, latencies_ms, val=(val_graphs, val_ms) or None, seed=0)
    p.predict(graphs) -> np.ndarray of ms
    p.save(path); load_predictor(path)

* ``NARFormerLatency``: NAR-Former with the latency head. 480-value node tokens
  (``network_tokenizer.tokenize_network``), the encoded static features (batch, FLOPs, params,
  memory access) concatenated before the MLP head. Trained by ``train_latency.train_token_model``
  (AdamW, warm-up + decay, EMA, selection on validation MAPE). Options measured on the data set
  and documented in assets/latency/README.md: the target (``log`` ms, the paper's ``ms``, or a
  ``residual``: log latency minus the FLOPs regression's prediction, fitted on the same training
  networks) and ``static_raw``, which also hands the head the four standardised log features.
  Why that matters: E_16 codes each feature with frequencies 1 .. 2^15 on log10 scale, every one
  of them periodic within the range of the data, so the sin/cos code tells networks apart but
  gives the head no monotone "more FLOPs" direction to extrapolate on. The default is the
  residual: on the 150-network development set a transformer regressing log latency directly
  memorised its 120 training networks (training loss ~0, validation MAPE 23-26% against the
  regression's 11-16%), while the residual starts from the regression and keeps only what the
  tokens add on validation.
  Session 9 options (assets/latency/README.md): ``node_raw`` appends each operator's own numbers
  (attributes and output shape on a log scale, its MACs, parameters and memory access,
  standardised, with "present" flags) to its 480-value token, the magnitudes the sin/cos codes do
  not carry; ``members`` averages several networks trained from other seeds; the model's
  ``readout`` may add the sum of the node tokens ("token+sum") or a sum of per-operator costs
  ("token+lse"); ``LatencyTrainConfig.precision`` "bf16" trains under bfloat16 autocast.
  Session 10 options (none beat session 9's choice): the model's ``graph_bias`` (attention biased
  by each token pair's relation in the graph, edges from ``graph_edges``), ``slot_dropout``, and
  ``LatencyTrainConfig.length_chunk`` (random batches). Session 11 (none either): ``graph_ffn``
  (each encoder FFN also reads the means of a token's sources and consumers). Session 12: the
  ``offset`` of the residual target may be the operator-cost sum of op_cost.py ("opcost": better
  in domain, much worse outside the zoo, so not shipped) instead of the FLOPs regression; ``static_codes=False`` leaves
  the static features' sin/cos codes out of the head; readouts "token+relusum" / "relusum".
  Session 14: the train option ``op_dropout`` (unknown-operator training, train_latency.py)
  shows each operator type of a training network as "unknown" with that probability; a fitted
  predictor records its training operator types (``known_ops``), names a network's unseen ones
  (``unseen_ops``), and, when trained that way, shows them to the model as "unknown".
  Session 20: ``node_align`` appends to each token whether the operator's input and output channel
  counts fill whole SIMD blocks of 8 and of 16 floats (``node_align_features``).
* ``FlopsRegression``: ridge regression of log latency on a degree-2 polynomial of the log
  static features (the classic "latency from FLOPs" proxy, with params and memory access).
* ``NNLPGraphNet``: an NNLP-style graph network in plain torch: node features = op one-hot +
  operator attributes + output shape, two SAGE layers of width 512 (own features and the mean of
  the neighbours', both edge directions), sum pooling, the four static features concatenated,
  MLP head, log-latency target.
* ``OperatorCostSum``: the operator-cost sum of op_cost.py alone (non-negative per-kind costs per
  MAC, element, parameter and call, fitted on relative error): the reference that shows what
  NAR-Former's residual on it adds.

Checkpoints hold only tensors and plain containers (``torch.save``; ``torch.load`` with
``weights_only=True``), so loading one never runs code from the file.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..graph import ArchGraph, GraphError
from ..metrics import mape
from ..network_tokenizer import get_op_id, unknown_op_code
from ..tokenizer import SCHEMES
from .op_cost import DEFAULT_SHRINK, OperatorCostModel

CKPT_FORMAT = "narformer-latency-1"
KINDS = ("narformer", "flops", "nnlp", "opcost")


class LatencyCheckpointError(ValueError):
    """A file that is not a usable latency predictor checkpoint; the message says why."""


# ------------------------------------------------------------------ per-graph features (cached)
_CACHE: dict[tuple, object] = {}
_CACHE_MAX = 20000


def _cached(kind: str, graph: ArchGraph, make):
    key = (kind, graph.stable_hash())
    v = _CACHE.get(key)
    if v is None:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        v = _CACHE[key] = make(graph)
    return v


def clear_cache() -> None:
    _CACHE.clear()


def _check_graphs(graphs) -> list[ArchGraph]:
    graphs = list(graphs)
    if not graphs:
        raise ValueError("no networks given")
    for g in graphs:
        if not isinstance(g, ArchGraph):
            raise GraphError(f"latency predictors take ArchGraphs, got {type(g).__name__}")
    return graphs


def static_log_features(graphs: Sequence[ArchGraph]) -> np.ndarray:
    """(N, 4) log1p of batch size, FLOPs (MACs), parameters, memory access."""
    from ..features import static_features
    from ..network_tokenizer import STATIC_KEYS

    def make(g):
        s = static_features(g)
        return np.log1p(np.array([float(s[k]) for k in STATIC_KEYS]))

    return np.stack([_cached("static", g, make) for g in graphs])


def _network_tokens(g: ArchGraph, scheme: str = "nerf"):
    from ..network_tokenizer import tokenize_network

    tk = tokenize_network(g, scheme)
    return tk.depth, tk.nodes.astype(np.float16), tk.static


def _op_ids(g: ArchGraph) -> np.ndarray:
    """Op-type id of each token of the network: its operators, then -1 for the end token."""
    return np.array([get_op_id(n.op, n.attrs.get("domain", "")) for n in g.nodes] + [-1], dtype=np.int64)


def graph_edges(g: ArchGraph) -> np.ndarray:
    """(2, E) int64: (source, consumer) operator indices, one per distinct edge."""
    pairs = [(j, i) for i, node in enumerate(g.nodes) for j in sorted(set(node.inputs))]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2).T


def _finite_ms(ms: np.ndarray, name: str) -> np.ndarray:
    # Finite weights can still overflow to NaN (a damaged checkpoint): one sentence, not "nan ms".
    ms = np.asarray(ms, dtype=np.float64)
    if not np.isfinite(ms).all():
        raise ValueError(f"the {name} predictor gives no finite latency for {int((~np.isfinite(ms)).sum())} of "
                         f"{ms.size} networks (a damaged checkpoint?)")
    return ms


def _check_ms(y, n: int) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64).ravel()
    if len(y) != n:
        raise ValueError(f"{len(y)} latencies for {n} networks")
    if np.any(~np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("latencies must be positive, finite numbers of milliseconds")
    return y


def _split_val(n: int, seed: int, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed + 7919).permutation(n)
    k = max(1, int(round(fraction * n)))
    if n - k < 2:
        raise ValueError(f"{n} networks are too few to hold out a validation set")
    return np.sort(perm[k:]), np.sort(perm[:k])


# ------------------------------------------------------------------ the interface
class LatencyPredictor:
    name = "predictor"
    kind = ""
    # Whether fit() selects on a validation set. The closed-form fits ignore one, so a benchmark
    # that hands a fixed validation set to the others gives them those networks to fit on instead.
    uses_validation = True

    def __init__(self):
        self.meta: dict = {}

    def fit(self, graphs: Sequence[ArchGraph], latencies_ms, val=None, seed: int = 0,
            progress: bool = False) -> "LatencyPredictor":
        raise NotImplementedError

    def predict(self, graphs: Sequence[ArchGraph]) -> np.ndarray:
        raise NotImplementedError

    # checkpoint state: plain containers and tensors only
    def _state(self) -> dict:
        raise NotImplementedError

    def _load_state(self, state: dict) -> None:
        raise NotImplementedError

    def save(self, path, half_weights: bool = False) -> Path:
        """Write the checkpoint. ``half_weights``: the networks' floating-point tensors stored as
        float16 (half the size; loading copies them back into float32 modules). Measured on the
        shipped six-network NAR-Former: predictions within 3.4e-5 (relative) of float32 on the
        2,000 zoo networks, validation and test MAPE equal to 3 decimals."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        state = self._state()
        meta = dict(self.meta)
        if half_weights and "state_dict" in state:
            def half(sd):
                return {k: v.half() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in sd.items()}
            state["state_dict"] = half(state["state_dict"])
            state["member_state_dicts"] = [half(sd) for sd in state.get("member_state_dicts", [])]
            meta["weights_stored_as"] = "float16"
        torch.save({"format": CKPT_FORMAT, "kind": self.kind, "meta": _plain(meta), **state}, tmp)
        tmp.replace(path)
        return path

    def _prepare_val(self, graphs, y, val, seed):
        """(train graphs, train ms, val graphs, val ms): ``val`` or 10% held out of the training set."""
        if val is not None:
            vg, vy = val
            vg = _check_graphs(vg)
            return graphs, y, vg, _check_ms(vy, len(vg))
        tr, va = _split_val(len(graphs), seed)
        return [graphs[i] for i in tr], y[tr], [graphs[i] for i in va], y[va]


def _plain(obj):
    """Meta data as JSON-like containers (weights_only loading accepts nothing else)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


# ------------------------------------------------------------------ (b) FLOPs regression
def _poly2(x: np.ndarray) -> np.ndarray:
    """[x, x_i * x_j for i <= j]: curvature and interactions of the log features."""
    n, d = x.shape
    cols = [x] + [(x[:, i] * x[:, j])[:, None] for i in range(d) for j in range(i, d)]
    return np.concatenate(cols, axis=1)


class FlopsRegression(LatencyPredictor):
    """Ridge regression of log(ms) on poly2(standardised log batch, FLOPs, params, memory access)."""

    name = "FLOPs regression"
    kind = "flops"
    uses_validation = False

    def __init__(self, alpha: float = 1.0, degree: int = 2):
        super().__init__()
        if degree not in (1, 2):
            raise ValueError("degree must be 1 or 2")
        self.alpha, self.degree = float(alpha), int(degree)
        self.mu = self.sd = self.coef = None
        self.intercept = 0.0

    def _design(self, graphs) -> np.ndarray:
        x = (static_log_features(graphs) - self.mu) / self.sd
        return _poly2(x) if self.degree == 2 else x

    def fit(self, graphs, latencies_ms, val=None, seed=0, progress=False):
        graphs = _check_graphs(graphs)
        y = np.log(_check_ms(latencies_ms, len(graphs)))
        x = static_log_features(graphs)
        self.mu, self.sd = x.mean(0), np.where(x.std(0) > 1e-9, x.std(0), 1.0)
        a = self._design(graphs)
        am, ym = a.mean(0), y.mean()
        ac = a - am
        # Closed-form ridge on centred data (intercept unpenalised).
        self.coef = np.linalg.solve(ac.T @ ac + self.alpha * np.eye(a.shape[1]), ac.T @ (y - ym))
        self.intercept = float(ym - am @ self.coef)
        return self

    def predict_log(self, graphs) -> np.ndarray:
        if self.coef is None:
            raise ValueError("the FLOPs regression is not fitted")
        return self._design(_check_graphs(graphs)) @ self.coef + self.intercept

    def predict(self, graphs) -> np.ndarray:
        return _finite_ms(np.exp(self.predict_log(graphs)), self.name)

    def _state(self):
        return {"config": {"alpha": self.alpha, "degree": self.degree},
                "arrays": {k: torch.from_numpy(np.asarray(getattr(self, k), dtype=np.float64))
                           for k in ("mu", "sd", "coef")}, "intercept": self.intercept}

    def _load_state(self, st):
        self.alpha, self.degree = st["config"]["alpha"], st["config"]["degree"]
        for k in ("mu", "sd", "coef"):
            setattr(self, k, st["arrays"][k].numpy())
        self.intercept = float(st["intercept"])
        # A doctored degree or coefficient count would only fail later, inside a matrix product.
        n_coef = 14 if self.degree == 2 else 4
        if self.degree not in (1, 2) or self.coef.shape != (n_coef,) or self.mu.shape != (4,) or self.sd.shape != (4,):
            raise ValueError(f"degree {self.degree!r} with {self.coef.shape} coefficients is not a FLOPs regression")


class OperatorCostSum(LatencyPredictor):
    """The operator-cost sum of op_cost.py on its own: a reference for NAR-Former's residual on
    it (what the transformer adds), and a cost table a person can read."""

    name = "operator-cost sum"
    kind = "opcost"
    uses_validation = False

    def __init__(self, shrink: float = DEFAULT_SHRINK):
        super().__init__()
        self.model = OperatorCostModel(shrink)

    def fit(self, graphs, latencies_ms, val=None, seed=0, progress=False):
        self.model.fit(graphs, latencies_ms)            # closed form: no validation set needed
        return self

    def predict_log(self, graphs) -> np.ndarray:
        return self.model.predict_log(_check_graphs(graphs))

    def predict(self, graphs) -> np.ndarray:
        return _finite_ms(self.model.predict_ms(_check_graphs(graphs)), self.name)

    def _state(self):
        st = self.model._state()
        arrays = {k: st[k] for k in ("weights", "category_weights") if k in st}
        return {"config": {k: st[k] for k in ("kinds", "categories", "shrink", "channel_blocks")}, "arrays": arrays}

    def _load_state(self, st):
        self.model = OperatorCostModel()
        try:
            self.model._load_state({**st["config"], **st["arrays"]})
        except ValueError as e:
            raise LatencyCheckpointError(f"the latency checkpoint holds no usable cost table: {e}") from None


def training_fingerprint(graphs: Sequence[ArchGraph]) -> str:
    """A short hash of a fit's training networks (order-free): what a teacher must share."""
    import hashlib
    return hashlib.sha256("\n".join(sorted(g.stable_hash() for g in graphs)).encode()).hexdigest()[:16]


def check_teacher_split(teacher: "LatencyPredictor", train_graphs, val_graphs, val_ms, where) -> None:
    """Refuse a pretraining teacher that was not fitted on this fit's training networks.

    A teacher fitted on other networks could have learnt this fit's validation or test labels and
    pass them on through its pseudo-labels. Checkpoints that record their training fingerprint are
    compared by it; older ones must have as many training networks as this fit and give their
    recorded validation MAPE on this fit's validation networks (the same split, to 1e-3 points).
    """
    meta = getattr(teacher, "meta", {}) or {}
    if "train_fingerprint" in meta:
        if meta["train_fingerprint"] != training_fingerprint(train_graphs):
            raise ValueError(f"the pretraining teacher {where} was fitted on other training networks than this fit")
        return
    recorded = meta.get("val_mape")
    if recorded is None or meta.get("n_train") != len(train_graphs) or not len(val_graphs):
        raise ValueError(f"the pretraining teacher {where} does not record which networks it was fitted on")
    got = mape(teacher.predict(val_graphs), np.asarray(val_ms, float))
    if abs(got - float(recorded)) > 1e-3:
        raise ValueError(f"the pretraining teacher {where} was fitted on another split: its validation MAPE "
                         f"here is {got:.3f}%, it recorded {float(recorded):.3f}%")


# ------------------------------------------------------------------ (a) NAR-Former
_OFFSET_MODELS = {"flops": FlopsRegression, "opcost": OperatorCostModel}
# The weights of the cost-sum prior a fit chooses from on validation (NARFormerLatency prior_blend).
PRIOR_WEIGHTS = tuple(round(0.05 * i, 2) for i in range(11))
OFFSETS = tuple(_OFFSET_MODELS)

# Sized for CPU training (a fit on 135 networks takes ~3 min on a busy 2-core machine): d = 64,
# 2 encoder blocks; the paper's cell model is d = 192 with 6 blocks. See assets/latency/README.md
# for the targets and settings compared.
NETWORK_MODEL = {"d_model": 64, "n_heads": 4, "ffn_dim": 256, "depths": (2, 1, 1, 1),
                 "queries": (4, 2, 1), "dropout": 0.1, "head_hidden": 256}
NETWORK_TRAIN = {"epochs": 60, "batch_size": 16, "lr": 1e-3, "target": "residual", "eval_every": 2}


class NARFormerLatency(LatencyPredictor):
    name = "NAR-Former"
    kind = "narformer"

    def __init__(self, model: dict | None = None, train: dict | None = None, static_raw: bool = True,
                 device: str = "cpu", scheme: str = "nerf", node_raw: bool = False, members: int = 1,
                 static_codes: bool = True, offset: str = "flops", pretrain: str | os.PathLike | None = None,
                 pretrain_teacher: str | os.PathLike | None = None, node_align: bool = False,
                 prior_blend: bool = False):
        super().__init__()
        # A structure set (latency/pretrain.py): unmeasured networks the transformer first learns
        # the operator-cost sum's latency of (fitted on the fit's training networks), before the
        # measured labels. Why: ~1,600 measured networks are few for it (it overfits in 10-16
        # epochs), and the zoo can draw as many more as wanted for the price of a graph export.
        self.pretrain = None if pretrain is None else str(pretrain)
        # Self-training: a latency checkpoint fitted on this fit's own training networks gives the
        # pretraining networks their latency instead of the operator-cost sum. Why: the cost sum is
        # 8% from the truth in domain and stops teaching after ~2 pretraining epochs; the project's
        # own model is ~4.5% from it (session 17, assets/latency/README.md).
        self.pretrain_teacher = None if pretrain_teacher is None else str(pretrain_teacher)
        if self.pretrain_teacher and not self.pretrain:
            raise ValueError("pretrain_teacher needs a structure set to pretrain on (pretrain=...)")
        # Families whose networks the pretraining leaves out (set by the benchmark's
        # leave-one-family-out folds to the held-out family; not saved: it is about one fit).
        self.pretrain_exclude_families: set[str] = set()
        if offset not in OFFSETS:
            raise ValueError(f"unknown residual offset {offset!r}; use one of {', '.join(OFFSETS)}")
        # What the residual target is measured from: "flops" (the FLOPs regression) or "opcost"
        # (a sum of per-operator costs, op_cost.py), both fitted on the same training networks.
        self.offset = offset
        if scheme not in SCHEMES:
            raise ValueError(f"unknown token scheme {scheme!r}; use one of {SCHEMES}")
        self.model_overrides = {**NETWORK_MODEL, **(model or {})}
        self.train_overrides = {**NETWORK_TRAIN, **(train or {})}
        self.static_raw, self.device = bool(static_raw), device
        # The sin/cos codes of the static features (the paper's head input). Off: the head reads
        # only the four standardised log features (static_raw), as the graph network's head does.
        # Why ask: a code with frequencies up to 2^15 gives every network's FLOPs a pattern of its
        # own, which an MLP head can map to that network's training label.
        self.static_codes = bool(static_codes)
        if not (self.static_codes or self.static_raw):
            raise ValueError("static_codes=False needs static_raw=True: the head must see the static features")
        # The frequencies of the tokens' sin/cos codes (tokenizer.frequencies). "nerf" (1 .. 2^15)
        # gives integers such as channel counts codes that look unrelated to their neighbours';
        # "trans" (1 .. 1e-4) also has slow frequencies, whose phases grow smoothly with size.
        self.scheme = scheme
        # Per-operator numbers beside each 480-value token (node_raw_features): the token's
        # sin/cos codes tell values apart but carry no "bigger" direction (see static_raw above).
        self.node_raw = bool(node_raw)
        # Channel alignment flags beside each token (node_align_features). Why: onnxruntime's CPU
        # convolutions and pools work on blocks of 8 (AVX2) or 16 (AVX-512) channels; on the Intel
        # host the NB201 networks with 8 or 24 channels ran ~30% slower than the operator-cost sum
        # says and those with 16 or 32 ~10% faster (session 20). A sin/cos code of a channel count
        # has no simple direction that means "24 is not a multiple of 16". Measured (session 20):
        # no gain, the transformer finds the blocks without them (validation 3.51% against 3.44%).
        self.node_align = bool(node_align)
        # Several networks trained alike from other initial seeds, their outputs averaged (in the
        # target's log units, so a geometric mean of ms): what the shipped accuracy files do too.
        if int(members) < 1:
            raise ValueError(f"members must be at least 1, got {members}")
        self.members = int(members)
        # The cost-sum prior: the ensemble's log prediction blended with that of the split
        # operator-cost sum (op_cost.py) fitted on the same training networks, its weight picked
        # by the fit's own validation MAPE from PRIOR_WEIGHTS (0 included, so it can decline).
        # Why: the two err differently (the sum is additive and sees every operator; the
        # transformer sees interactions but only ~1,600 measured networks), and on session 20's
        # fits the blend was 0.06-0.19 points better on validation (session21/RULE.md).
        self.prior_blend = bool(prior_blend)
        self.prior_weight = 0.0
        self.prior_model: OperatorCostModel | None = None
        self.net = None
        self.target = None
        self.static_mu = self.static_sd = None
        self.node_mu = self.node_sd = None
        self.offset_model: FlopsRegression | OperatorCostModel | None = None
        # Operator types of the training networks (names), set by fit; None in checkpoints from
        # before session 14. With unknown-operator training (train option op_dropout > 0), types
        # outside it reach the model under the "unknown" code, as in training.
        self.known_ops: list[str] | None = None
        self.summary: dict = {}

    def model_config(self):
        from ..model import NARFormerConfig
        from ..network_tokenizer import NETWORK_DEPTH_DIM, NETWORK_TOKEN_DIM, STATIC_DIM

        extra = 4 if self.static_raw else 0
        codes = STATIC_DIM if self.static_codes else 0
        token_dim = (NETWORK_TOKEN_DIM + (NODE_RAW_DIM if self.node_raw else 0)
                     + (NODE_ALIGN_DIM if self.node_align else 0))
        return NARFormerConfig(**{**self.model_overrides, "token_dim": token_dim,
                                  "depth_dim": NETWORK_DEPTH_DIM, "head": "latency",
                                  "static_dim": codes + extra})

    def _tokens(self, graphs):
        from .train_latency import TokenSet

        parts = [_cached(f"tokens-{self.scheme}", g, lambda g: _network_tokens(g, self.scheme)) for g in graphs]
        static = np.stack([p[2] for p in parts])
        if not self.static_codes:
            static = static[:, :0]
        if self.static_raw:
            raw = (static_log_features(graphs) - self.static_mu) / self.static_sd
            static = np.concatenate([static, raw.astype(np.float32)], axis=1)
        nodes = [p[1] for p in parts]
        op_ids = [_cached("opids", g, _op_ids) for g in graphs]
        code = unknown_op_code(self.scheme) if self.trains_unknown_ops else None
        if self.maps_unseen_ops:
            known = np.array([get_op_id(op) for op in self.known_ops], dtype=np.int64)
            recoded = []
            for t, ids in zip(nodes, op_ids):
                unseen = (ids >= 0) & ~np.isin(ids, known)
                if unseen.any():
                    t = t.copy()
                    t[unseen, : len(code)] = code
                recoded.append(t)
            nodes = recoded
        if self.node_raw:
            nodes = [np.concatenate([t, self._node_numbers(g)], axis=1) for t, g in zip(nodes, graphs)]
        if self.node_align:
            nodes = [np.concatenate([t, self._node_flags(g).astype(t.dtype)], axis=1) for t, g in zip(nodes, graphs)]
        # Token i is operator i (the end token comes last and has no edges).
        edges = [_cached("edges", g, graph_edges) for g in graphs] if self.model_config().uses_edges else None
        return TokenSet(np.stack([p[0] for p in parts]), nodes, static, edges=edges, op_ids=op_ids,
                        unknown_code=code)

    @property
    def trains_unknown_ops(self) -> bool:
        """Whether this predictor trains (or was trained) with unknown-operator training."""
        return float(self.train_overrides.get("op_dropout", 0) or 0) > 0

    @property
    def maps_unseen_ops(self) -> bool:
        """Whether operator types outside training are shown to the model as "unknown": only a
        model trained with unknown-operator training (op_dropout) has learned that code."""
        return self.known_ops is not None and self.trains_unknown_ops

    def unseen_ops(self, graph: ArchGraph) -> list[str]:
        """Operator types of ``graph`` that no training network had (empty if unknown)."""
        if self.known_ops is None:
            return []
        known = set(self.known_ops)
        return sorted({n.op for n in graph.nodes if n.op != "input" and n.op not in known})

    def _node_numbers(self, g) -> np.ndarray:
        f = _cached("noderaw", g, node_raw_features)
        k = NODE_RAW_NUMBERS
        z = (f[:, :k] - self.node_mu) / self.node_sd * node_raw_presence(f)   # an absent number stays 0
        end = np.zeros((1, NODE_RAW_DIM), np.float32)                         # the end token has no numbers
        return np.concatenate([np.concatenate([z, f[:, k:]], axis=1), end]).astype(np.float16)

    def _node_flags(self, g) -> np.ndarray:
        f = _cached("nodealign", g, node_align_features)
        return np.concatenate([f, np.zeros((1, NODE_ALIGN_DIM), np.float32)])   # the end token has no channels

    def _offsets(self, graphs):
        return None if self.offset_model is None else self.offset_model.predict_log(graphs)

    def fit(self, graphs, latencies_ms, val=None, seed=0, progress=False):
        from .train_latency import LatencyTarget, LatencyTrainConfig, train_token_model

        graphs = _check_graphs(graphs)
        y = _check_ms(latencies_ms, len(graphs))
        tg, ty, vg, vy = self._prepare_val(graphs, y, val, seed)
        train_fingerprint = training_fingerprint(tg)
        self.known_ops = sorted({n.op for g in tg for n in g.nodes if n.op != "input"})
        x = static_log_features(tg)
        self.static_mu, self.static_sd = x.mean(0), np.where(x.std(0) > 1e-9, x.std(0), 1.0)
        if self.node_raw:
            # Statistics over the operators that have each number (absent ones are 0 with flag 0).
            f = np.concatenate([_cached("noderaw", g, node_raw_features) for g in tg])
            num, present = f[:, :NODE_RAW_NUMBERS], node_raw_presence(f)
            cnt = np.maximum(present.sum(0), 1.0)
            mu = (num * present).sum(0) / cnt
            sd = np.sqrt((((num - mu) * present) ** 2).sum(0) / cnt)
            self.node_mu, self.node_sd = mu, np.where(sd > 1e-6, sd, 1.0)
        cfg = LatencyTrainConfig(**{**self.train_overrides, "seed": seed, "device": self.device})
        self.offset_model = _OFFSET_MODELS[self.offset]().fit(tg, ty) if cfg.target == "residual" else None
        n_train = len(tg)
        if cfg.twins:
            tg, ty = renumbered_twins(tg, ty, cfg.twins, seed)
        train_tokens, val_tokens = self._tokens(tg), self._tokens(vg)
        off_train, off_val = self._offsets(tg), self._offsets(vg)
        init, pre_run = None, None
        if self.pretrain:
            # One pretraining (member 0's seed); every member fine-tunes from its weights, so an
            # ensemble costs one pretraining plus K fine-tunings, and member 0 is the single fit.
            pre_tokens, pre_ms, pre_off, proxy = self._pretrain_data(tg, ty, cfg, vg, vy)
            pre_net, _, pre_run = train_token_model(
                self.model_config(), pre_tokens, pre_ms, val_tokens, vy, replace(cfg, epochs=int(cfg.pretrain_epochs)),
                offset_train=pre_off, offset_val=off_val, progress=progress, desc="NAR-Former latency (pretraining)",
                target=LatencyTarget.fit(cfg.target, ty, off_train))
            init = pre_net.state_dict()
            pre_run = {**{k: pre_run[k] for k in ("val_mape", "selected", "selected_epoch", "train_seconds",
                                                  "history")}, "networks": len(pre_ms), "proxy": proxy}
            del pre_tokens, pre_net
        nets, runs = [], []
        for j in range(self.members):
            # Member 0 is exactly the single fit; the others differ only in their initial seed.
            net, self.target, run = train_token_model(
                self.model_config(), train_tokens, ty, val_tokens, vy, replace(cfg, seed=cfg.seed + 1000 * j),
                offset_train=off_train, offset_val=off_val, progress=progress, init_state=init,
                desc=f"NAR-Former latency {j + 1}/{self.members}" if self.members > 1 else "NAR-Former latency")
            nets.append(net)
            runs.append(run)
        if pre_run is not None:
            runs[0] = {**runs[0], "pretrain": pre_run,
                       "train_seconds": round(runs[0]["train_seconds"] + pre_run["train_seconds"], 1)}
        self.summary = runs[0]
        if self.members > 1:
            from ..model import NARFormerEnsemble
            from .train_latency import predict_raw
            self.net = NARFormerEnsemble(nets).eval()
            ens = self.target.inverse(predict_raw(self.net, val_tokens, self.device), off_val)
            self.summary = {**runs[0], "val_mape": mape(ens, vy), "member_val_mape": [r["val_mape"] for r in runs],
                            "train_seconds": round(sum(r["train_seconds"] for r in runs), 1)}
        else:
            self.net = nets[0]
        if self.prior_blend:
            curve = self.fit_prior(tg, ty, vg, vy)
            self.summary = {**self.summary, "val_mape_ensemble": curve[0.0], "val_mape": curve[self.prior_weight],
                            "prior_val_curve": {f"{w:g}": round(v, 4) for w, v in curve.items()}}
        if pre_run is not None:
            self.meta["pretrain"] = {"set": Path(self.pretrain).name, "networks": pre_run["networks"],
                                     "proxy": pre_run["proxy"],
                                     "excluded_families": sorted(self.pretrain_exclude_families),
                                     "epochs": int(cfg.pretrain_epochs), "val_mape": pre_run["val_mape"],
                                     "selected_epoch": pre_run["selected_epoch"],
                                     "val_history": [round(h["val_mape_raw"], 3) for h in pre_run["history"]]}
        self.meta.update({"n_train": n_train, "train_fingerprint": train_fingerprint,
                          "n_val": len(vg), "twins": cfg.twins, "node_raw": self.node_raw,
                          "node_align": self.node_align, "members": self.members, "member_val_mape": self.summary.get("member_val_mape"),
                          "val_mape": self.summary["val_mape"], "selected": self.summary["selected"],
                          "selected_epoch": self.summary["selected_epoch"],
                          "train_seconds": self.summary["train_seconds"]})
        if self.prior_blend:
            self.meta.update({"prior_weight": self.prior_weight, "val_mape_without_prior": self.summary["val_mape_ensemble"],
                              "prior_val_curve": self.summary["prior_val_curve"]})
        return self

    def fit_prior(self, train_graphs, train_ms, val_graphs, val_ms) -> dict:
        """Fit the cost-sum prior on the training networks and pick its weight by the validation
        MAPE (also callable on a fitted ensemble that was trained without it). Returns the
        validation MAPE per weight."""
        self.prior_model, self.prior_weight = OperatorCostModel().fit(train_graphs, train_ms), 0.0
        own = np.log(self.predict(val_graphs))          # weight 0: the ensemble alone
        prior = self.prior_model.predict_log(val_graphs)
        vy = _check_ms(val_ms, len(val_graphs))
        curve = {w: mape(np.exp((1 - w) * own + w * prior), vy) for w in PRIOR_WEIGHTS}
        self.prior_weight = float(min(PRIOR_WEIGHTS, key=lambda w: (round(curve[w], 9), w)))
        self.prior_blend = True
        return curve

    def _blend(self, ms: np.ndarray, graphs) -> np.ndarray:
        if self.prior_model is None or self.prior_weight == 0:
            return ms
        w = self.prior_weight
        return np.exp((1 - w) * np.log(ms) + w * self.prior_model.predict_log(graphs))

    def _pretrain_data(self, tg, ty, cfg, vg, vy):
        """(tokens, proxy ms, offsets, proxy name) of the structure set's networks. The proxy is the
        operator-cost sum fitted on the training networks ``tg`` alone or, with a teacher, that
        checkpoint's prediction (the teacher checked to come from this very split)."""
        from .op_cost import OperatorCostModel
        from .pretrain import load_structures

        if cfg.target != "residual" or self.offset_model is None:
            raise ValueError("pretraining needs the residual target (its proxy is measured from the same offset)")
        graphs = load_structures(self.pretrain, tuple(self.pretrain_exclude_families))
        seen = {g.stable_hash() for g in tg}
        graphs = [g for g in graphs if g.stable_hash() not in seen]    # a measured network is learnt from its label
        if not graphs:
            raise ValueError(f"no network of the structure set {self.pretrain} is new to this fit "
                             "(every one is a training network)")
        if self.pretrain_teacher:
            teacher = load_predictor(self.pretrain_teacher)
            check_teacher_split(teacher, tg, vg, vy, self.pretrain_teacher)
            proxy, name = teacher.predict(graphs), f"teacher {Path(self.pretrain_teacher).name}"
        else:
            proxy, name = (np.exp(OperatorCostModel().fit(tg, ty).predict_log(graphs)),
                           "operator-cost sum (channel blocks)")
        return self._tokens(graphs), _finite_ms(proxy, name), self._offsets(graphs), name

    def predict(self, graphs):
        from .train_latency import predict_raw

        if self.net is None:
            raise ValueError("the NAR-Former latency predictor is not fitted")
        graphs = _check_graphs(graphs)
        raw = predict_raw(self.net, self._tokens(graphs), self.device)
        return _finite_ms(self._blend(self.target.inverse(raw, self._offsets(graphs)), graphs), self.name)

    def member_predictions(self, graphs) -> np.ndarray:
        """(members, len(graphs)) ms: each member network's own prediction (one row if single).

        ``predict`` is the geometric mean of these rows. How far they disagree is a cheap
        uncertainty signal one would hope for (members differ only in initial seed and batch
        order), but measured on the shipped ensemble it does not say which network is off:
        ``scripts/bench_member_spread.py``, ``assets/latency/README.md`` "Session 15".
        """
        from .train_latency import predict_raw

        if self.net is None:
            raise ValueError("the NAR-Former latency predictor is not fitted")
        graphs = _check_graphs(graphs)
        tokens, offsets = self._tokens(graphs), self._offsets(graphs)
        return np.stack([_finite_ms(self._blend(self.target.inverse(predict_raw(m, tokens, self.device), offsets),
                                                graphs), self.name)
                         for m in self._member_nets()])

    def _state(self):
        return {"config": {"model": _plain(self.model_config().to_dict()),
                           "model_overrides": _plain(self.model_overrides),
                           "train": _plain(self.train_overrides), "static_raw": self.static_raw,
                           "static_codes": self.static_codes, "offset": self.offset,
                           "scheme": self.scheme, "node_raw": self.node_raw, "node_align": self.node_align,
                           "members": self.members, "prior_weight": self.prior_weight,
                           "known_ops": self.known_ops},
                # One network: "state_dict". An ensemble: its first member there, the rest in
                # "member_state_dicts" (so a file reads the same way either way).
                "state_dict": self._member_nets()[0].state_dict(),
                "member_state_dicts": [m.state_dict() for m in self._member_nets()[1:]],
                "target": self.target.state(),
                "arrays": {"static_mu": torch.from_numpy(self.static_mu), "static_sd": torch.from_numpy(self.static_sd),
                           **({"node_mu": torch.from_numpy(self.node_mu), "node_sd": torch.from_numpy(self.node_sd)}
                              if self.node_raw else {})},
                "offset": None if self.offset_model is None else self.offset_model._state(),
                "prior": None if self.prior_model is None else self.prior_model._state()}

    def _member_nets(self) -> list:
        return list(self.net.members) if hasattr(self.net, "members") else [self.net]

    def _load_state(self, st):
        from ..model import NARFormer, NARFormerConfig, NARFormerEnsemble

        c = st["config"]
        self.model_overrides, self.train_overrides = c["model_overrides"], c["train"]
        self.static_raw = c["static_raw"]
        self.static_codes = bool(c.get("static_codes", True))     # checkpoints before the option: codes
        self.scheme = c.get("scheme", "nerf")      # checkpoints before the option: nerf
        self.node_raw = bool(c.get("node_raw", False))
        self.node_align = bool(c.get("node_align", False))   # checkpoints before session 20: off
        known = c.get("known_ops")                 # checkpoints before session 14: None
        if known is not None and not (isinstance(known, list) and all(isinstance(k, str) for k in known)):
            raise LatencyCheckpointError("the latency checkpoint's known_ops is not a list of operator names")
        self.known_ops = known
        if self.scheme not in SCHEMES:
            raise LatencyCheckpointError(f"the latency checkpoint names an unknown token scheme {self.scheme!r}")
        # The config is bounded by the saved tensors before anything is built: a doctored config
        # cannot make the loader allocate a huge model, and another model size is named as such.
        from ..predictors import checked_module, narformer_bounds
        rest = st.get("member_state_dicts") or []
        if not isinstance(rest, list):
            raise LatencyCheckpointError("the latency checkpoint's member_state_dicts is not a list")
        self.members = 1 + len(rest)
        if self.members != int(c.get("members", 1)):
            raise LatencyCheckpointError(f"the latency checkpoint names {c.get('members', 1)} members "
                                         f"but holds {self.members} networks")
        nets = [checked_module(lambda: NARFormer(NARFormerConfig(**c["model"])), sd, "the latency checkpoint",
                               LatencyCheckpointError, *narformer_bounds(c["model"]))
                for sd in [st["state_dict"], *rest]]
        self.net = nets[0] if len(nets) == 1 else NARFormerEnsemble(nets).eval()
        from .train_latency import LatencyTarget
        self.target = LatencyTarget.from_state(st["target"])
        self.static_mu, self.static_sd = st["arrays"]["static_mu"].numpy(), st["arrays"]["static_sd"].numpy()
        self.node_mu = self.node_sd = None
        if self.node_raw:
            self.node_mu, self.node_sd = st["arrays"]["node_mu"].numpy(), st["arrays"]["node_sd"].numpy()
            if self.node_mu.shape != (NODE_RAW_NUMBERS,) or self.node_sd.shape != (NODE_RAW_NUMBERS,):
                raise LatencyCheckpointError(f"the latency checkpoint's per-operator statistics have shape "
                                             f"{tuple(self.node_mu.shape)}, not ({NODE_RAW_NUMBERS},)")
        self.offset = c.get("offset", "flops")                    # checkpoints before the option: flops
        if self.offset not in OFFSETS:
            raise LatencyCheckpointError(f"the latency checkpoint names an unknown residual offset {self.offset!r}")
        if st.get("offset"):
            self.offset_model = _OFFSET_MODELS[self.offset]()
            try:
                self.offset_model._load_state(st["offset"])
            except LatencyCheckpointError:
                raise
            except ValueError as e:       # a doctored table: one sentence naming the file (load_predictor)
                raise LatencyCheckpointError(f"the latency checkpoint's residual offset is damaged: {e}") from None
        # The cost-sum prior (session 21); checkpoints before it have none.
        self.prior_model, self.prior_weight = None, 0.0
        w = c.get("prior_weight", 0.0)
        if not isinstance(w, (int, float)) or not 0.0 <= float(w) <= 1.0:
            raise LatencyCheckpointError(f"the latency checkpoint's prior weight {w!r} is not a number in [0, 1]")
        if st.get("prior"):
            self.prior_model = OperatorCostModel()
            try:
                self.prior_model._load_state(st["prior"])
            except LatencyCheckpointError:
                raise
            except ValueError as e:
                raise LatencyCheckpointError(f"the latency checkpoint's cost-sum prior is damaged: {e}") from None
            self.prior_weight = float(w)
        elif w:
            raise LatencyCheckpointError("the latency checkpoint gives a prior weight but holds no cost-sum prior")
        self.prior_blend = self.prior_model is not None


# ------------------------------------------------------------------ (c) NNLP-style GNN
_ATTR_SLOTS = (3, 4, 5, 6, 7, 8, 9, 10)   # kernel, stride, padding, dilation, groups, bias, perm, out pad
_SHAPE_SLOTS = (11, 12, 13, 14)


def renumbered_twins(graphs: Sequence[ArchGraph], y: np.ndarray, k: int, seed: int):
    """``graphs`` followed by ``k`` renumbered copies of each (random topological orders), and
    their latencies repeated: the training set of the twins augmentation."""
    from ..graph import random_topological_order

    rng = np.random.default_rng(seed + 7919)        # its own stream: the split's draws stay as they were
    extra = [g.relabel(random_topological_order([n.inputs for n in g.nodes], rng))
             for _ in range(k) for g in graphs]
    return list(graphs) + extra, np.concatenate([np.asarray(y)] * (k + 1))


def gnn_node_features(g: ArchGraph) -> tuple[np.ndarray, np.ndarray]:
    """(node features (n, F) float32, undirected edges (2, E) int64) of one network.

    Features: op one-hot over the token vocabulary; the 8 attribute numbers of the token slots
    (groups and perm on a log scale) each with a "present" flag; log1p of the 4 output-shape
    numbers, each with a flag. Unstandardised: the model standardises the numeric part.
    """
    from ..network_tokenizer import OP_TYPES, slot_values

    v = slot_values(g)                                 # (n, 15), NaN = empty slot
    n = len(g)
    onehot = np.zeros((n, len(OP_TYPES)), dtype=np.float32)
    onehot[np.arange(n), v[:, 0].astype(np.int64)] = 1.0
    attrs = v[:, _ATTR_SLOTS].copy()
    attrs[:, 4] = np.log1p(np.abs(attrs[:, 4]))        # groups run to 1000s (depthwise)
    attrs[:, 6] = np.log1p(np.abs(attrs[:, 6]))
    shape = np.log1p(np.abs(v[:, _SHAPE_SLOTS]))
    num = np.concatenate([attrs, shape], axis=1)
    flags = (~np.isnan(num)).astype(np.float32)
    num = np.nan_to_num(num, nan=0.0).astype(np.float32)
    e = graph_edges(g)
    edges = np.concatenate([e, e[::-1]], axis=1)       # both directions
    return np.concatenate([onehot, num, flags], axis=1), edges


# Per-operator numbers for NAR-Former's node_raw option: the GNN's 12 numbers (attributes and
# output shape, log scale) and log1p of the operator's own MACs, parameters and memory access,
# then the 12 "present" flags (the three cost numbers are always present).
NODE_RAW_NUMBERS = len(_ATTR_SLOTS) + len(_SHAPE_SLOTS) + 3
NODE_RAW_DIM = NODE_RAW_NUMBERS + len(_ATTR_SLOTS) + len(_SHAPE_SLOTS)


def node_raw_features(g: ArchGraph) -> np.ndarray:
    """(n, NODE_RAW_DIM) float32: [numbers (absent = 0), present flags] per operator, unstandardised."""
    from ..features import per_node_features

    feats, _ = gnn_node_features(g)
    k = len(_ATTR_SLOTS) + len(_SHAPE_SLOTS)
    base = feats.shape[1] - 2 * k
    rows = per_node_features(g)
    cost = np.log1p(np.array([[r["flops"], r["params"], r["memory_access"]] for r in rows], dtype=np.float64))
    return np.concatenate([feats[:, base:base + k], cost.astype(np.float32), feats[:, base + k:]], axis=1)


NODE_ALIGN_DIM = 5


def node_align_features(g: ArchGraph) -> np.ndarray:
    """(n, NODE_ALIGN_DIM) float32 per operator: [has a 4-D output, output channels not a multiple
    of 8, not of 16, first input's channels not a multiple of 8, not of 16] (0 where there is no
    4-D tensor). Host-neutral on purpose: which block size matters is what a fit on one host's
    measurements learns."""
    from .op_cost import channel_count

    out = np.zeros((len(g.nodes), NODE_ALIGN_DIM), np.float32)
    for i, node in enumerate(g.nodes):
        c_out = channel_count(node)
        c_in = channel_count(g.nodes[node.inputs[0]]) if node.inputs else None
        out[i, 0] = c_out is not None
        if c_out is not None:
            out[i, 1:3] = (c_out % 8 != 0, c_out % 16 != 0)
        if c_in is not None:
            out[i, 3:5] = (c_in % 8 != 0, c_in % 16 != 0)
    return out


def node_raw_presence(f: np.ndarray) -> np.ndarray:
    """(n, NODE_RAW_NUMBERS) 1 where a number of ``node_raw_features`` is present (the three cost
    numbers always are)."""
    flags = f[:, NODE_RAW_NUMBERS:]
    return np.concatenate([flags, np.ones((len(f), NODE_RAW_NUMBERS - flags.shape[1]), np.float32)], axis=1)


class _SAGE(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.self_lin = nn.Linear(d_in, d_out)
        self.nb_lin = nn.Linear(d_in, d_out, bias=False)

    def forward(self, h, edges, deg):
        agg = torch.zeros_like(h).index_add_(0, edges[1], h[edges[0]]) / deg[:, None]
        return F.relu(self.self_lin(h) + self.nb_lin(agg))


class GraphNet(nn.Module):
    def __init__(self, n_feat: int, n_num: int, width: int = 512, layers: int = 2, static_dim: int = 4,
                 head_hidden: int = 256, dropout: float = 0.05):
        super().__init__()
        self.n_num = n_num
        self.register_buffer("num_mu", torch.zeros(n_num))
        self.register_buffer("num_sd", torch.ones(n_num))
        dims = [n_feat] + [width] * layers
        self.convs = nn.ModuleList(_SAGE(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Sequential(nn.Linear(width + static_dim, head_hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(head_hidden, head_hidden // 2), nn.ReLU(),
                                  nn.Linear(head_hidden // 2, 1))

    def forward(self, x, edges, graph_of, n_graphs, static):
        k0 = x.shape[1] - 2 * self.n_num
        x = torch.cat([x[:, :k0], (x[:, k0:k0 + self.n_num] - self.num_mu) / self.num_sd,
                       x[:, k0 + self.n_num:]], dim=1)
        deg = torch.zeros(x.shape[0], device=x.device).index_add_(
            0, edges[1], torch.ones(edges.shape[1], device=x.device)).clamp_min(1.0)
        h = x
        for conv in self.convs:
            h = conv(h, edges, deg)
        # Sum pooling, scaled by a constant so that 300-node sums start at a sane size.
        pooled = torch.zeros(n_graphs, h.shape[1], device=h.device).index_add_(0, graph_of, h) / 64.0
        return self.head(torch.cat([pooled, static], dim=1)).squeeze(-1)


NNLP_DEFAULTS = {"width": 512, "layers": 2, "head_hidden": 256, "dropout": 0.05, "epochs": 100,
                 "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4, "ema_decay": 0.99, "warmup": 0.05,
                 "eval_every": 2, "threads": 1, "members": 1}


class NNLPGraphNet(LatencyPredictor):
    name = "NNLP GNN"
    kind = "nnlp"

    def __init__(self, **options):
        super().__init__()
        unknown = set(options) - set(NNLP_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown NNLP options {sorted(unknown)}; known: {sorted(NNLP_DEFAULTS)}")
        self.opt = {**NNLP_DEFAULTS, **options}
        self.net: GraphNet | None = None
        self.nets: list[GraphNet] = []     # every member; net is the first
        self.static_mu = self.static_sd = None
        self.y_mu, self.y_sd = 0.0, 1.0
        self.summary: dict = {}

    def _batch(self, graphs):
        parts = [_cached("gnn", g, gnn_node_features) for g in graphs]
        offs = np.cumsum([0] + [len(p[0]) for p in parts])
        x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        edges = torch.from_numpy(np.concatenate([p[1] + o for p, o in zip(parts, offs[:-1])], axis=1))
        graph_of = torch.from_numpy(np.repeat(np.arange(len(parts)), np.diff(offs)))
        static = torch.from_numpy(((static_log_features(graphs) - self.static_mu) / self.static_sd).astype(np.float32))
        return x, edges, graph_of, len(parts), static

    def _predict_z(self, net, graphs, batch=64) -> np.ndarray:
        net.eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(graphs), batch):
                out.append(net(*self._batch(graphs[i:i + batch])).double().numpy())
        return np.concatenate(out)

    def fit(self, graphs, latencies_ms, val=None, seed=0, progress=False):
        graphs = _check_graphs(graphs)
        y = _check_ms(latencies_ms, len(graphs))
        tg, ty, vg, vy = self._prepare_val(graphs, y, val, seed)
        o = self.opt
        if o["threads"]:
            torch.set_num_threads(int(o["threads"]))
        s = static_log_features(tg)
        self.static_mu, self.static_sd = s.mean(0), np.where(s.std(0) > 1e-9, s.std(0), 1.0)
        z = np.log(ty)
        self.y_mu, self.y_sd = float(z.mean()), float(max(z.std(), 1e-6))
        feats = np.concatenate([_cached("gnn", g, gnn_node_features)[0] for g in tg])
        from ..network_tokenizer import OP_TYPES
        n_num = (feats.shape[1] - len(OP_TYPES)) // 2
        self.n_feat, self.n_num = feats.shape[1], n_num
        if int(o["members"]) < 1:
            raise ValueError(f"members must be at least 1, got {o['members']}")
        # Several networks from other initial seeds, averaged in log space (a geometric mean of
        # ms), as NAR-Former's ensembles: so the two can be compared at the same training cost.
        nets, runs = [], []
        for j in range(int(o["members"])):
            net, run = self._train_one(tg, z, vg, vy, feats, n_num, seed + 1000 * j, progress)
            nets.append(net)
            runs.append(run)
        self.nets = nets
        self.net = nets[0]
        self.summary = dict(runs[0])
        if len(nets) > 1:
            self.summary.update({"val_mape": mape(self.predict(vg), vy),
                                 "member_val_mape": [r["val_mape"] for r in runs],
                                 "train_seconds": round(sum(r["train_seconds"] for r in runs), 1)})
        self.meta.update({"n_train": len(tg), "n_val": len(vg), "members": len(nets), **self.summary})
        return self

    def _train_one(self, tg, z, vg, vy, feats, n_num, seed, progress):
        """One graph network trained from ``seed``; its best epoch (raw or EMA) on validation."""
        from ..network_tokenizer import OP_TYPES
        from ..train import ema_update, lr_factor, param_groups

        o = self.opt
        num = feats[:, len(OP_TYPES):len(OP_TYPES) + n_num]
        torch.manual_seed(seed)
        net = GraphNet(feats.shape[1], n_num, o["width"], o["layers"], 4, o["head_hidden"], o["dropout"])
        net.num_mu.copy_(torch.from_numpy(num.mean(0)))
        net.num_sd.copy_(torch.from_numpy(np.where(num.std(0) > 1e-6, num.std(0), 1.0)))
        ema = copy.deepcopy(net).requires_grad_(False)
        opt = torch.optim.AdamW(param_groups(net, o["weight_decay"]), lr=o["lr"])
        yt = torch.from_numpy(((z - self.y_mu) / self.y_sd).astype(np.float32))
        rng = np.random.default_rng(seed)
        steps_per_epoch = math.ceil(len(tg) / o["batch_size"])
        total, step = steps_per_epoch * o["epochs"], 0
        best = {"mape": math.inf}
        t0 = time.perf_counter()
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=o["epochs"], desc="NNLP GNN", unit="ep", dynamic_ncols=True, leave=False)
        for epoch in range(o["epochs"]):
            net.train()
            perm = rng.permutation(len(tg))
            for b in range(steps_per_epoch):
                bi = perm[b * o["batch_size"]:(b + 1) * o["batch_size"]]
                pred = net(*self._batch([tg[i] for i in bi]))
                loss = F.mse_loss(pred, yt[torch.from_numpy(bi)])
                for g in opt.param_groups:
                    g["lr"] = o["lr"] * lr_factor(step, total, o["warmup"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                ema_update(ema, net, o["ema_decay"])
                step += 1
            if (epoch + 1) % o["eval_every"] == 0 or epoch == o["epochs"] - 1:
                for which, m in (("raw", net), ("ema", ema)):
                    err = mape(np.exp(self._predict_z(m, vg) * self.y_sd + self.y_mu), vy)
                    if err < best["mape"]:
                        best = {"mape": err, "epoch": epoch + 1, "which": which,
                                "state": {k: v.detach().clone() for k, v in m.state_dict().items()}}
                if bar:
                    bar.set_postfix(val=f"{best['mape']:.2f}%")
            if bar:
                bar.update(1)
        if bar:
            bar.close()
        net.load_state_dict(best["state"])
        return net.eval(), {"val_mape": best["mape"], "selected": best["which"], "selected_epoch": best["epoch"],
                            "train_seconds": round(time.perf_counter() - t0, 1)}

    def predict(self, graphs):
        if self.net is None:
            raise ValueError("the NNLP graph network is not fitted")
        graphs = _check_graphs(graphs)
        z = np.mean([self._predict_z(m, graphs) for m in self.nets], axis=0)
        return _finite_ms(np.exp(np.clip(z * self.y_sd + self.y_mu, -30, 30)), self.name)

    def _state(self):
        return {"config": {"options": dict(self.opt), "n_feat": self.n_feat, "n_num": self.n_num},
                "state_dict": self.net.state_dict(), "target": {"mu": self.y_mu, "sd": self.y_sd},
                "member_state_dicts": [m.state_dict() for m in self.nets[1:]],
                "arrays": {"static_mu": torch.from_numpy(self.static_mu),
                           "static_sd": torch.from_numpy(self.static_sd)}}

    def _load_state(self, st):
        c = st["config"]
        self.opt = {**NNLP_DEFAULTS, **c["options"]}
        self.n_feat, self.n_num = c["n_feat"], c["n_num"]
        from ..predictors import checked_module
        self.nets = [checked_module(lambda: GraphNet(self.n_feat, self.n_num, self.opt["width"], self.opt["layers"], 4,
                                                     self.opt["head_hidden"], self.opt["dropout"]),
                                    sd, "the latency checkpoint", LatencyCheckpointError,
                                    [self.opt["width"], self.opt["head_hidden"], self.n_feat, self.n_num],
                                    [self.opt["layers"]])
                     for sd in [st["state_dict"], *st.get("member_state_dicts", [])]]
        self.net = self.nets[0]
        self.y_mu, self.y_sd = st["target"]["mu"], st["target"]["sd"]
        self.static_mu, self.static_sd = st["arrays"]["static_mu"].numpy(), st["arrays"]["static_sd"].numpy()


# ------------------------------------------------------------------ factory and loading
_CLASSES = {"narformer": NARFormerLatency, "flops": FlopsRegression, "nnlp": NNLPGraphNet, "opcost": OperatorCostSum}
# The tables each kind's _load_state reads: checked first so that a damaged file gets a sentence.
_TABLES = {"narformer": ("config", "state_dict", "target", "arrays"), "flops": ("config", "arrays"),
           "nnlp": ("config", "state_dict", "target", "arrays"), "opcost": ("config", "arrays")}


def make_predictor(kind: str, **options) -> LatencyPredictor:
    if kind not in _CLASSES:
        raise ValueError(f"unknown latency predictor {kind!r}; use one of {', '.join(KINDS)}")
    return _CLASSES[kind](**options)


def load_predictor(path) -> LatencyPredictor:
    """A saved predictor of any kind (``weights_only=True``: no code from the file runs)."""
    path = Path(path)
    if not path.is_file():
        raise LatencyCheckpointError(f"no latency checkpoint at {path}")
    from ..predictors import load_weights_only

    st = load_weights_only(path, LatencyCheckpointError)
    if not isinstance(st, dict) or st.get("format") != CKPT_FORMAT or st.get("kind") not in _CLASSES:
        raise LatencyCheckpointError(f"{path.name} is not a latency predictor checkpoint "
                                     f"(expected format {CKPT_FORMAT})")
    for k in _TABLES[st["kind"]]:
        if not isinstance(st.get(k), dict):
            raise LatencyCheckpointError(f"{path.name} is not a complete {st['kind']} latency checkpoint: "
                                         f"{k!r} is {'missing' if k not in st else 'a ' + type(st[k]).__name__}")
    p = _CLASSES[st["kind"]].__new__(_CLASSES[st["kind"]])
    LatencyPredictor.__init__(p)
    p.summary = {}
    if st["kind"] == "narformer":
        p.device, p.offset_model = "cpu", None
    try:
        p._load_state(st)
    except LatencyCheckpointError as e:   # from checked_module, which does not know the file's name
        raise LatencyCheckpointError(str(e).replace("the latency checkpoint", path.name, 1)) from None
    except KeyError as e:
        raise LatencyCheckpointError(f"{path.name} is not a complete {st['kind']} latency checkpoint: "
                                     f"it lacks the entry {e}") from None
    # TypeError / AttributeError / IndexError: a table that is a number, a tensor that is a list,
    # ... deeper inside a damaged or doctored file; Python's wording would not help the user.
    except (TypeError, AttributeError, IndexError) as e:
        raise LatencyCheckpointError(f"{path.name} is not a valid {st['kind']} latency checkpoint: an "
                                     f"entry has the wrong type ({type(e).__name__})") from None
    except (RuntimeError, ValueError) as e:
        raise LatencyCheckpointError(f"{path.name} does not match the {st['kind']} predictor "
                                     f"({type(e).__name__}: {str(e)[:300]})") from None
    meta = st.get("meta") or {}
    if not isinstance(meta, dict):
        raise LatencyCheckpointError(f"{path.name}: its meta data is a {type(meta).__name__}, not a table")
    p.meta = dict(meta)
    return p


def _equal_state(a, b) -> bool:
    """Exact equality of nested checkpoint tables (dicts, lists, tensors, arrays, numbers)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal_state(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return type(a) is type(b) and a == b


def merge_narformer_ensembles(paths: Sequence[str | os.PathLike]) -> NARFormerLatency:
    """One NAR-Former ensemble made of the members of several checkpoints of the same split.

    Why: a self-trained student (``pretrain_teacher``) and its teacher were fitted on the same
    training networks and differ in what they learnt first; averaging all their networks is an
    ensemble like any other. They must share everything around the networks (tokens, features'
    statistics, offset model, target scaling, model shape), so that one prediction path serves
    every member; anything else is refused.
    """
    if len(paths) < 2:
        raise ValueError("merging needs at least two checkpoints")
    parts = [load_predictor(pth) for pth in paths]
    first = parts[0]
    for pth, q in zip(paths, parts):
        if not isinstance(q, NARFormerLatency):
            raise ValueError(f"{Path(pth).name} is not a NAR-Former latency checkpoint")
    sa = first._state()
    keys = ("model", "static_raw", "static_codes", "offset", "scheme", "node_raw", "node_align", "known_ops",
            "prior_weight")

    def fitted_like_first(q) -> bool:
        sb = q._state()
        return (all(_equal_state(sa["config"][k], sb["config"][k]) for k in keys)
                and all(_equal_state(sa[k], sb[k]) for k in ("target", "arrays", "offset", "prior")))

    for pth, q in zip(paths[1:], parts[1:]):
        if not fitted_like_first(q):
            raise ValueError(f"{Path(pth).name} was not fitted like {Path(paths[0]).name} (other training "
                             "networks, token scheme, features or model shape): their members cannot be averaged")
        fa, fb = first.meta.get("train_fingerprint"), q.meta.get("train_fingerprint")
        if fa and fb and fa != fb:
            raise ValueError(f"{Path(pth).name} was fitted on other training networks than {Path(paths[0]).name}")
        ta, tb = first.meta.get("test_indices"), q.meta.get("test_indices")
        if ta is not None and tb is not None and list(ta) != list(tb):
            raise ValueError(f"{Path(pth).name} was scored on other test networks than {Path(paths[0]).name}")
    from ..model import NARFormerEnsemble
    origin = [{"file": Path(pth).name, "members": q.members, "val_mape": q.meta.get("val_mape"),
               **({"pretrain": q.meta["pretrain"]} if "pretrain" in q.meta else {})} for pth, q in zip(paths, parts)]
    member_val = [v for q in parts for v in (q.meta.get("member_val_mape") or [q.meta.get("val_mape")])]
    nets = [m for q in parts for m in q._member_nets()]
    merged = first
    merged.net = NARFormerEnsemble(nets).eval()
    merged.members = len(nets)
    # The merged ensemble's own validation figure is not known here (set it when measured).
    # Figures of one part (its test score, its selected epoch) do not describe the whole.
    kept = {k: v for k, v in first.meta.items()
            if k not in ("test_mape", "test_acc10", "selected", "selected_epoch", "pretrain")}
    merged.meta = {**kept, "members": len(nets), "val_mape": None, "member_val_mape": member_val,
                   "train_seconds": round(sum(float(q.meta.get("train_seconds") or 0) for q in parts), 1),
                   "merged_from": origin}
    return merged
