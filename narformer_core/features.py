"""Static features of a whole network: batch size, FLOPs, parameters, memory access.

Computed from the graph alone (node attrs, ``weight_shapes``, output shapes); the input shape of
a node is the output shape of its producer. Pure Python + NumPy, no onnx or torch.

Conventions (the ones behind the usual "ResNet-18: 1.82 GMACs, 11.69 M params" figures):

* ``flops`` counts multiply-accumulates (MACs) for Conv, ConvTranspose, Gemm, MatMul and the
  RNNs (bias adds are not counted); every other op counts a rough number of operations per
  element: 1 per output element for elementwise ops and activations, BatchNorm (a folded
  scale-and-shift), Resize; 4 per element for Instance/Layer/Group norm (mean, variance,
  normalise, affine); 3 for (Log)Softmax; one per window element for MaxPool / AveragePool;
  one per input element for global pools and reductions. Pure data movement (Reshape, Concat,
  Transpose, Slice, Gather, Pad, ...) and unknown ops count 0.
* ``params``: elements of the weight tensors of every node, with BatchNormalization counting
  only its scale and bias (its running mean and variance are statistics, not parameters, as in
  ``sum(p.numel() for p in module.parameters())``). A weight shared by several nodes counts once
  per node. ``graph.meta["n_params"]`` (set by the ONNX import) instead counts every distinct
  stored weight tensor once, statistics included.
* ``memory_access``: over compute nodes, output elements + parameter elements (in elements, not
  bytes). Compute nodes are all operators except graph inputs and ops that only relabel a
  tensor without writing one (Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout, Shape,
  Size, Constant).
* A dim that is unknown (-1) makes that node's element counts unknown: it counts 0 and the
  node is reported with ``"shape_known": False`` by :func:`per_node_features`.
"""
from __future__ import annotations

import math
from typing import Any

from .graph import ArchGraph, GraphError, Node

_MAC_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "QLinearConv",
            "MatMulInteger", "QLinearMatMul", "LSTM", "GRU", "RNN"}
_PER_ELEMENT = {
    # activations and elementwise math
    **{op: 1 for op in (
        "Relu", "PRelu", "LeakyRelu", "Elu", "Selu", "Celu", "Gelu", "Clip", "Sigmoid",
        "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Softsign", "Mish", "Erf", "Mul", "Add",
        "Sub", "Div", "Pow", "Sqrt", "Exp", "Log", "Reciprocal", "Neg", "Abs", "Max", "Min",
        "Mean", "Sum", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Equal", "Greater", "Less",
        "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "Where", "BatchNormalization",
        "Resize", "Upsample", "QuantizeLinear", "DequantizeLinear", "Cast", "CumSum")},
    "InstanceNormalization": 4, "LayerNormalization": 4, "GroupNormalization": 4, "LRN": 4,
    "Softmax": 3, "LogSoftmax": 3,
}
_WINDOW_POOLS = {"MaxPool", "AveragePool", "LpPool"}
_INPUT_REDUCTIONS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "ReduceMean",
                     "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceL1",
                     "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin", "TopK"}
VIEW_OPS = {"input", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout",
            "Shape", "Size", "Constant"}


def _elems(shape) -> int | None:
    """Number of elements of a shape; None when a dim is unknown or the shape is unknown."""
    if shape is None:
        return None
    if any(int(d) < 0 for d in shape):
        return None
    return int(math.prod(int(d) for d in shape))


def _operand_shape(graph: ArchGraph, node: Node, pos: int) -> tuple[int, ...] | None:
    """Shape of a node's ONNX argument ``pos``: a weight, or the output of a producer node.

    Producer nodes fill the argument positions not taken by weights, in order (folded integer
    or scalar constants are never operands of the ops whose costs need operand shapes).
    """
    w_pos = tuple(node.attrs.get("weight_positions", ()))
    w_shapes = tuple(node.attrs.get("weight_shapes", ()))
    if pos in w_pos:
        return tuple(w_shapes[w_pos.index(pos)])
    k = pos - sum(1 for p in w_pos if p < pos)
    if 0 <= k < len(node.inputs):
        return tuple(graph.nodes[node.inputs[k]].shape)
    return None


def _params(node: Node) -> int:
    shapes = node.attrs.get("weight_shapes", ())
    if node.op == "BatchNormalization":
        # scale and B only; mean and var (positions 3, 4) are running statistics
        pos = node.attrs.get("weight_positions", ())
        shapes = [s for s, p in zip(shapes, pos) if p in (1, 2)]
    return int(sum(math.prod(s) for s in shapes))


def _macs(graph: ArchGraph, node: Node, out: int) -> int:
    op, a = node.op, node.attrs
    x = _operand_shape(graph, node, 0)
    w = _operand_shape(graph, node, 1)
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        if op == "QLinearConv":
            w = _operand_shape(graph, node, 3)
        if w and len(w) > 2 and min(w) > 0:
            return out * math.prod(w[1:])
        kernel = a.get("kernel_shape", ())
        if x and len(x) > 1 and x[1] > 0 and kernel:
            return out * (x[1] // int(a.get("group", 1))) * math.prod(kernel)
        return 0
    if op == "ConvTranspose":
        n_in = _elems(x)
        if n_in is None:
            return 0
        if w and len(w) > 2 and min(w) > 0:
            return n_in * math.prod(w[1:])    # W: (C_in, C_out / group, k...)
        kernel = a.get("kernel_shape", ())
        if node.shape and len(node.shape) > 1 and node.shape[1] > 0 and kernel:
            return n_in * (node.shape[1] // int(a.get("group", 1))) * math.prod(kernel)
        return 0
    if op == "Gemm":
        if x and len(x) == 2:
            return out * (x[0] if a.get("transA", 0) else x[1])
        if w and len(w) == 2:
            return out * (w[1] if a.get("transB", 0) else w[0])
        return 0
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        if op == "QLinearMatMul":
            x = _operand_shape(graph, node, 0)
        if x and x[-1] > 0:
            return out * x[-1]
        return 0
    if op in ("LSTM", "GRU", "RNN"):
        # per step and batch row: W (dirs, G*H, I) and R (dirs, G*H, H) multiply x and h
        r = _operand_shape(graph, node, 2)
        if x and len(x) == 3 and w and r and min(x) > 0:
            steps_rows = x[0] * x[1]
            return steps_rows * (math.prod(w) + math.prod(r))
        return 0
    return 0


def _node_flops(graph: ArchGraph, node: Node, out: int | None) -> int:
    op = node.op
    if out is None:
        return 0
    if op in _MAC_OPS:
        return _macs(graph, node, out)
    if op in _PER_ELEMENT:
        return _PER_ELEMENT[op] * out
    if op in _WINDOW_POOLS:
        return out * int(math.prod(node.attrs.get("kernel_shape", (1,))))
    if op in _INPUT_REDUCTIONS:
        n_in = _elems(_operand_shape(graph, node, 0))
        return n_in or 0
    return 0


def per_node_features(graph: ArchGraph) -> list[dict[str, Any]]:
    """One dict per node: index, name, op, shape, flops, params, memory_access, shape_known."""
    _check(graph)
    rows = []
    for i, node in enumerate(graph.nodes):
        out = _elems(node.shape) if node.shape else None
        if node.op == "input":
            rows.append({"index": i, "name": node.name, "op": node.op, "shape": node.shape,
                         "flops": 0, "params": 0, "memory_access": 0, "shape_known": out is not None})
            continue
        params = _params(node)
        flops = _node_flops(graph, node, out)
        mem = 0 if node.op in VIEW_OPS else (out or 0) + params
        rows.append({"index": i, "name": node.name, "op": node.op, "shape": node.shape,
                     "flops": int(flops), "params": params, "memory_access": int(mem),
                     "shape_known": out is not None})
    return rows


def static_features(graph: ArchGraph) -> dict[str, int]:
    """batch_size, flops (MACs), params and memory_access (elements) of a whole network."""
    rows = per_node_features(graph)
    batch = graph.meta.get("batch_size")
    if not batch:
        first = graph.nodes[0].shape
        batch = first[0] if first and first[0] > 0 else 1
    return {
        "batch_size": int(batch),
        "flops": sum(r["flops"] for r in rows),
        "params": sum(r["params"] for r in rows),
        "memory_access": sum(r["memory_access"] for r in rows),
    }


def _check(graph: ArchGraph) -> None:
    if not isinstance(graph, ArchGraph):
        raise GraphError(f"static features need an ArchGraph, got {type(graph).__name__}")
    if not any(n.shape for n in graph.nodes):
        raise GraphError(f"static features need output shapes, and this {graph.space!r} graph has "
                         "none (cell graphs are not whole networks; load an ONNX model or torch module)")
