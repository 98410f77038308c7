"""Tokens of whole networks: 480 values per operator (METHOD.md section 3, seed Table 1).

A node's token is 15 slots of E_16(x) (``encode_real`` with L = 16, 32 values each):

====  ================  ==========================================================
slot  name              number encoded
====  ================  ==========================================================
0     op type           id in :data:`OP_TYPES` ("unknown" for anything else)
1     self position     i
2     source positions  sum of E(j) over the distinct predecessors j; E(-1) for an input
3     kernel shape      ``pack_dims(kernel_shape)``; Global*Pool: the input's spatial size
4     stride            ``pack_dims(strides)``
5     padding           ``pack_pads(pads)`` (Pad: its spatial pads)
6     dilation          ``pack_dims(dilations)``
7     groups            ``group``
8     bias              ``has_bias``: 1 with a bias input, 0 without (Conv, Gemm, RNNs...)
9     perm              ``perm_number(perm)`` (Transpose)
10    output padding    ``pack_dims(output_padding)`` (ConvTranspose)
11-14 batch, channel,   the output shape, positionally; rank > 4 folds dims 2..r-2 into
      height, width     height; rank < 4 leaves the trailing slots empty
====  ================  ==========================================================

A slot with nothing to say (an attribute the op does not have, an output with fewer than 4 dims,
an unknown dim) is the zero vector, not E(0): E(0) = [0, 1, 0, 1, ...] is a real value (a Conv
without bias has bias = 0, a shape can have a 0 dim) and must stay distinguishable from "absent".

Multi-valued attributes, one number per slot. The authors keep the first element, which makes
a 1x7 kernel a 1x1 kernel and drops the width of every stride or pad. Here:

* ``pack_dims(v) = mean(v) + sum_i (v_i - v_last) / 64**(i+1)``. Equal values give the plain
  value (3x3 -> 3, stride 2x2 -> 2), so the common case reads naturally; the mean keeps the size
  (1x7 and 7x1 land near 4, between 3x3 and 5x5, not at 1x1); the small signed offset separates
  orientations (1x7 -> 3.906, 7x1 -> 4.094). For two dims it equals (33 a + 31 b) / 64, which is
  injective for all dims below 32; kernels, strides and dilations are far below that.
* ``pack_pads(pads)`` for ONNX pads [b_1..b_d, e_1..e_d]: ``pack_dims`` of the per-dim mean pad
  (b_i + e_i) / 2, plus sum_i (e_i - b_i) / (1024 * 8**(i-1)), so that asymmetric "SAME" padding
  (0,0,1,1 -> 0.5011) and its mirror (1,1,0,0 -> 0.4989) differ from each other and from the
  symmetric pad they average to. Symmetric pads read naturally (1,1,1,1 -> 1). Injective on all
  2-d pads of 0..5 (checked exhaustively in the tests).
* ``perm_number(p) = n + rank(p) / n!`` with rank the lexicographic (Lehmer) index of the
  permutation: injective over all permutations of all lengths, identity perms read as their
  length, and the integer part tells the rank of the tensor.

Distinct configurations therefore get distinct numbers, and the high frequencies of E (up to
2^15) turn even a 1e-4 difference into a clearly different code.

Static features (batch size, FLOPs, parameters, memory access) do not go into the tokens; they
are concatenated to the pooled representation before the latency head: :func:`encode_static`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np

from .graph import ArchGraph, GraphError
from .tokenizer import END_VALUE, encode_scalar

SLOT_L = 16                          # frequencies per slot: E_16(x) = 32 values
SLOT_DIM = 2 * SLOT_L
SLOTS = ("op type", "self position", "source positions", "kernel shape", "stride", "padding",
         "dilation", "groups", "bias", "perm", "output padding", "batch", "channel", "height",
         "width")
NETWORK_TOKEN_DIM = len(SLOTS) * SLOT_DIM          # 480
# As for cells, the depth code and the end token are as wide as a node token: L = 240.
NETWORK_DEPTH_L = NETWORK_TOKEN_DIM // 2
NETWORK_DEPTH_DIM = NETWORK_TOKEN_DIM
STATIC_KEYS = ("batch_size", "flops", "params", "memory_access")
STATIC_DIM = len(STATIC_KEYS) * SLOT_DIM            # 128

# Fixed vocabulary: ids are positions, so new ops may only be appended at the end.
OP_TYPES: tuple[str, ...] = (
    "input", "unknown",
    # convolution and dense
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum",
    # normalisation
    "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
    "LRN",
    # activations
    "Relu", "PRelu", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Clip", "Sigmoid",
    "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Softsign", "Mish", "Erf",
    # elementwise math
    "Mul", "Add", "Sub", "Div", "Pow", "Sqrt", "Exp", "Log", "Reciprocal", "Neg", "Abs", "Max",
    "Min", "Mean", "Sum", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos",
    # logic
    "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "Where",
    # pooling and reductions
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "ReduceMean",
    "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ArgMax", "ArgMin",
    "Softmax", "LogSoftmax", "TopK", "CumSum",
    # data movement
    "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND", "ScatterND", "Expand",
    "Tile", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Pad", "Resize",
    "Upsample", "DepthToSpace", "SpaceToDepth",
    # shape and misc
    "Dropout", "Shape", "Size", "Cast", "ConstantOfShape", "Range", "NonZero", "Identity",
    "Constant",
    # recurrent
    "LSTM", "GRU", "RNN",
    # quantisation
    "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
    "MatMulInteger",
)
OP_IDS: dict[str, int] = {op: i for i, op in enumerate(OP_TYPES)}
INPUT_ID = OP_IDS["input"]
UNKNOWN_ID = OP_IDS["unknown"]
assert len(OP_IDS) == len(OP_TYPES), "duplicate op in OP_TYPES"

_GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}


def get_op_id(op: str, domain: str = "") -> int:
    """Token id of an op type; ops outside :data:`OP_TYPES` (or of a custom domain) are "unknown"."""
    if domain not in ("", "ai.onnx"):
        return UNKNOWN_ID
    return OP_IDS.get(op, UNKNOWN_ID)


def unknown_op_code(scheme: str = "nerf") -> np.ndarray:
    """(SLOT_DIM,) float32: the op-type slot's code of "unknown" (the first SLOT_DIM token values)."""
    return encode_scalar(float(UNKNOWN_ID), SLOT_L, scheme).reshape(-1).astype(np.float32)


def slot_labels() -> list[str]:
    """The slot each of the 480 token values belongs to (for heatmaps)."""
    return [name for name in SLOTS for _ in range(SLOT_DIM)]


# ------------------------------------------------------------------ multi-valued attributes
def pack_dims(values: Sequence[float]) -> float:
    """One number for a per-spatial-dim attribute (kernel, stride, dilation, output padding).

    Equal values give that value; otherwise the mean plus a small signed offset per dim, see
    the module docstring. Empty -> NaN (the slot stays empty).
    """
    return _pack_dims(tuple(float(x) for x in np.ravel(values)))


@lru_cache(maxsize=4096)
def _pack_dims(v: tuple[float, ...]) -> float:
    # Pure Python on purpose: these are 1-3 numbers, where NumPy's overhead dominates.
    if not v:
        return math.nan
    if all(x == v[0] for x in v):
        return v[0]
    last = v[-1]
    return sum(v) / len(v) + sum((x - last) * 64.0 ** -(i + 1) for i, x in enumerate(v[:-1]))


def pack_pads(pads: Sequence[float]) -> float:
    """One number for ONNX pads [begin_1..begin_d, end_1..end_d]; see the module docstring."""
    return _pack_pads(tuple(float(x) for x in np.ravel(pads)))


@lru_cache(maxsize=4096)
def _pack_pads(p: tuple[float, ...]) -> float:
    if not p:
        return math.nan
    if len(p) % 2:
        return _pack_dims(p)       # not begin/end pairs: summarise as plain dims
    d = len(p) // 2
    begin, end = p[:d], p[d:]
    asym = sum((e - b) / (1024.0 * 8.0 ** i) for i, (b, e) in enumerate(zip(begin, end)))
    return _pack_dims(tuple((b + e) / 2.0 for b, e in zip(begin, end))) + asym


def perm_number(perm: Sequence[int]) -> float:
    """n + lexicographic rank / n! of a permutation of 0..n-1; NaN if it is not one."""
    p = [int(x) for x in perm]
    n = len(p)
    if n == 0 or sorted(p) != list(range(n)):
        return math.nan
    rank, left = 0, list(range(n))
    for k, x in enumerate(p):
        idx = left.index(x)
        rank += idx * math.factorial(n - 1 - k)
        left.pop(idx)
    return n + rank / math.factorial(n)


def _as_tuple(v) -> tuple:
    if v is None:
        return ()
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def _pack_attr(v) -> float:
    t = _as_tuple(v)
    if not t or not all(isinstance(x, (int, float)) for x in t):
        return math.nan
    return _pack_dims(tuple(float(x) for x in t))


def _spatial_pads(op: str, pads: tuple) -> tuple:
    # Pad lists begin/end pads of every dim, batch and channel included; keep the spatial ones
    # so that it is summarised like a Conv's pads.
    if op == "Pad" and len(pads) >= 6 and len(pads) % 2 == 0:
        r = len(pads) // 2
        return tuple(pads[2:r]) + tuple(pads[r + 2:])
    return pads


def _shape_numbers(shape: tuple[int, ...]) -> list[float]:
    """Output shape -> [batch, channel, height, width] with NaN for absent or unknown dims."""
    s = [float(x) if x >= 0 else math.nan for x in shape]
    if len(s) > 4:
        mid = s[2:-1]
        s = [s[0], s[1], math.prod(mid) if not any(math.isnan(x) for x in mid) else math.nan, s[-1]]
    return s + [math.nan] * (4 - len(s))


def slot_values(graph: ArchGraph) -> np.ndarray:
    """(n, 15) float64: the number each slot of each node encodes, NaN where the slot is empty.

    The source-positions slot is NaN here: it is a sum of codes, not the code of one number.
    """
    nan = math.nan
    rows = []
    nodes = graph.nodes
    for i, node in enumerate(nodes):
        a = node.attrs
        op = node.op
        kernel = a.get("kernel_shape")
        if kernel is None and op in _GLOBAL_POOLS and node.inputs:
            in_shape = nodes[node.inputs[0]].shape
            if len(in_shape) > 2 and min(in_shape[2:]) > 0:
                kernel = tuple(in_shape[2:])
        pads = _as_tuple(a.get("pads"))
        if pads and all(isinstance(x, (int, float)) for x in pads):
            pad = _pack_pads(tuple(float(x) for x in _spatial_pads(op, pads)))
        else:
            pad = nan
        group = a.get("group")
        bias = a.get("has_bias")
        perm = perm_number(_as_tuple(a["perm"])) if op == "Transpose" and "perm" in a else nan
        rows.append([
            get_op_id(op, a.get("domain", "")), i, nan,
            _pack_attr(kernel), _pack_attr(a.get("strides")), pad, _pack_attr(a.get("dilations")),
            float(group) if isinstance(group, (int, float)) else nan,
            float(bool(bias)) if bias is not None else nan,
            perm, _pack_attr(a.get("output_padding")),
            *_shape_numbers(node.shape)])
    return np.array(rows, dtype=np.float64).reshape(len(nodes), len(SLOTS))


# ------------------------------------------------------------------ tokens
@dataclass
class NetworkTokens:
    """Tokens of one network.

    depth: (NETWORK_DEPTH_DIM,) code of the node count. nodes: (n + 1, 480) node tokens then the
    end token E(1e5). static: (STATIC_DIM,) encoded static features for the latency head.
    """

    depth: np.ndarray
    nodes: np.ndarray
    static: np.ndarray

    @property
    def n_nodes(self) -> int:
        return self.nodes.shape[0] - 1


def encode_static(features: Mapping[str, float], scheme: str = "nerf") -> np.ndarray:
    """Static features -> (STATIC_DIM,) float32: E_16(log10(1 + x)) for each of STATIC_KEYS.

    Why the log: FLOPs and parameters run to 1e10. Times the top frequency (2^15 pi) that is a
    phase of ~1e15 rad, where float64 cannot resolve a turn and the code is rounding noise.
    log10(1 + x) keeps every feature in 0..12, where phases are exact, a ratio between two
    networks becomes a difference (what matters for latency), and x = 0 still maps to 0.
    """
    missing = [k for k in STATIC_KEYS if k not in features]
    if missing:
        raise ValueError(f"static features are missing {missing}; expected keys {list(STATIC_KEYS)}")
    x = np.array([float(features[k]) for k in STATIC_KEYS], dtype=np.float64)
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ValueError(f"static features must be finite and non-negative, got {dict(zip(STATIC_KEYS, x))}")
    return encode_scalar(np.log10(1.0 + x), SLOT_L, scheme).reshape(-1).astype(np.float32)


def tokenize_network(graph: ArchGraph, scheme: str = "nerf",
                     static: Mapping[str, float] | None = None) -> NetworkTokens:
    """A whole network -> its tokens (480 per node, plus the end token), depth and static codes.

    ``static`` overrides the features computed by :func:`narformer_core.features.static_features`
    (e.g. with a measured batch size).
    """
    if not isinstance(graph, ArchGraph):
        raise GraphError(f"tokenize_network takes an ArchGraph, got {type(graph).__name__}")
    if static is None:
        from .features import static_features
        static = static_features(graph)
    n = len(graph)
    vals = slot_values(graph)                                            # (n, 15)
    empty = np.isnan(vals)
    codes = encode_scalar(np.where(empty, 0.0, vals), SLOT_L, scheme)    # (n, 15, 32)
    codes[empty] = 0.0
    # Source positions: sum of the predecessors' position codes, over distinct predecessors.
    pos = codes[:, 1]                                                    # (n, 32)
    src_rows, dst_rows = [], []
    for i, node in enumerate(graph.nodes):
        for j in set(node.inputs):
            src_rows.append(j)
            dst_rows.append(i)
    sources = np.zeros((n, SLOT_DIM))
    if src_rows:
        np.add.at(sources, np.asarray(dst_rows), pos[np.asarray(src_rows)])
    is_input = np.array([node.op == "input" for node in graph.nodes])
    sources[is_input] = encode_scalar(-1.0, SLOT_L, scheme)
    codes[:, 2] = sources
    tokens = np.empty((n + 1, NETWORK_TOKEN_DIM), dtype=np.float32)
    tokens[:n] = codes.reshape(n, NETWORK_TOKEN_DIM)
    tokens[n] = encode_scalar(END_VALUE, NETWORK_DEPTH_L, scheme)
    depth = encode_scalar(float(n), NETWORK_DEPTH_L, scheme).astype(np.float32)
    return NetworkTokens(depth, tokens, encode_static(static, scheme))


def collate(batch: Sequence[NetworkTokens]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Networks of different sizes -> (depth (B, D), nodes (B, T, 480), mask (B, T), static (B, S)).

    T = the longest sequence (nodes + end token); shorter ones are zero-padded and masked out.
    """
    if len(batch) == 0:
        raise ValueError("collate needs at least one NetworkTokens")
    lengths = np.array([t.nodes.shape[0] for t in batch])
    B, T = len(batch), int(lengths.max())
    nodes = np.zeros((B, T, NETWORK_TOKEN_DIM), dtype=np.float32)
    for b, t in enumerate(batch):
        nodes[b, : lengths[b]] = t.nodes
    mask = np.arange(T)[None, :] < lengths[:, None]
    depth = np.stack([t.depth for t in batch]).astype(np.float32)
    static = np.stack([t.static for t in batch]).astype(np.float32)
    return depth, nodes, mask, static
