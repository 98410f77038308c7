"""ONNX models and torch modules -> the architecture graph (space "onnx").

``load_onnx`` checks an ONNX model (size limit before parsing, protobuf, ``onnx.checker``,
strict shape inference) and turns it into an :class:`ArchGraph`:

* one node ``"input"`` per graph input that is not an initializer, then one node per operator,
  in topological order. Node inputs are the producer nodes of the operator's data arguments, in
  argument order; weights (initializers, Constant outputs) are not nodes.
* Identity and Constant operators are removed: consumers of an Identity read its source, and a
  Constant's tensor is treated like an initializer.
* ``attrs``: the ONNX attributes as plain ints / floats / strings / tuples, plus

  - ``weight_shapes``: shapes of the weight arguments (float or 8-bit tensors with more than
    one element), e.g. ``((64, 3, 7, 7), (64,))``, and ``weight_positions``, their argument
    positions (so that costs can tell a Conv's W from its data input);
  - small constant arguments (integer tensors, scalars, Resize scales, ... up to 64 values)
    folded in under their ONNX input name: a Pad's ``pads``, a Reshape's ``shape``, a Clip's
    ``min``/``max``, so that opset >= 11 models look like older ones where these were
    attributes. Larger integer constants (e.g. Gather indices) are dropped;
  - ``has_bias`` (0/1) for Conv, ConvTranspose, Gemm, QLinearConv and the RNNs;
  - ``domain`` for ops outside the default ONNX domain.

  For Conv / ConvTranspose / pools the spatial attributes are made explicit (ONNX defaults filled
  in, ``kernel_shape`` from the weight, ``auto_pad`` turned into explicit ``pads`` from the
  inferred shapes), and Transpose gets its default reversed ``perm``: two files that differ only
  in spelling out defaults give the same graph and the same hash.
* ``shape``: the inferred shape of the operator's first output. A dim that is still unknown after
  inference is -1 (a symbolic dim named like the inputs' batch dim takes the batch size); an
  output whose rank is unknown (or a scalar) has shape ().
* ``meta``: name, source, opset, ir_version, producer, batch_size, inputs, outputs, n_ops,
  n_params (elements of the weight tensors the operators read, each initializer or Constant
  output counted once however many nodes read it, BatchNorm statistics included), removed
  (Identity / Constant counts), unknown_ops (op types outside the token vocabulary, or of a
  custom domain).

Subgraphs of control-flow ops (If, Loop, Scan) are not expanded: the op is one node and its
graph attribute is summarised as a string.
"""
from __future__ import annotations

import io
import math
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from .graph import ArchGraph, GraphError, from_edges, kahn
from .network_tokenizer import UNKNOWN_ID, get_op_id

MAX_BYTES = 200_000_000      # 200 MB: larger uploads are refused before parsing
MAX_NODES = 5000
_FOLD_MAX = 64               # constants up to this many values are folded into attrs
_STRIP_MIN = 4096            # weights above this many values lose their data before inference

Source = Union[str, os.PathLike, bytes, bytearray, memoryview]


class OnnxImportError(GraphError):
    """An ONNX model (or torch module) that cannot become an architecture graph."""


@dataclass
class _Tensor:
    """What the import keeps of a constant tensor: its shape, type, and values when small."""

    dims: tuple[int, ...]
    dtype: int
    values: np.ndarray | None

    @property
    def size(self) -> int:
        return int(math.prod(self.dims))


# ------------------------------------------------------------------ public entry points
def load_onnx(source: Source, *, max_bytes: int | None = MAX_BYTES, max_nodes: int = MAX_NODES,
              batch_size: int | None = None) -> ArchGraph:
    """An ONNX file (path), its bytes or an ``onnx.ModelProto`` -> ArchGraph(space="onnx").

    ``max_bytes`` (None = no limit) is checked before anything is parsed; ``max_nodes`` bounds
    the operator count. A dynamic (symbolic or unset) leading dim of each graph input is set to
    ``batch_size`` (default 1) before shape inference; asking for a batch size that contradicts
    a fixed one is an error. The checks are those of ``onnx.checker.check_model(full_check=True)``
    (the checker, then strict, type-checking shape inference), the inference run only once.
    Any problem raises :class:`OnnxImportError` saying what is wrong.
    """
    data, label = _read(source, max_bytes)
    return _load_bytes(data, label, max_bytes=max_bytes, max_nodes=max_nodes, batch_size=batch_size)


# torch keeps process-wide state that threads (the app's script runs) must not share at once:
# the TorchScript exporter's globals (two exports together fail with "GLOBALS.in_onnx_export must
# be False") and the global RNG that seeds the zoo's weights (interleaved seeding gives other
# weights, so other bytes). Every export (here, zoo.module_onnx) and every seeded build
# (zoo.seeded_module) holds this lock.
TORCH_GLOBALS_LOCK = threading.Lock()


def from_torch(module, example_input, *, opset_version: int | None = None,
               max_nodes: int = MAX_NODES, name: str | None = None) -> ArchGraph:
    """A torch module -> ArchGraph, through an in-memory ONNX export (no files written).

    ``example_input`` is a tensor or a tuple of tensors; its shapes (batch included) fix the
    graph's shapes. The module is exported in inference mode (so torch folds BatchNorm into a
    preceding Conv, as a deployed model would).
    """
    import torch

    args = example_input if isinstance(example_input, tuple) else (example_input,)
    label = name or type(module).__name__
    buf = io.BytesIO()
    try:
        with TORCH_GLOBALS_LOCK, warnings.catch_warnings():
            # The TorchScript exporter warns that it is deprecated on every call.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(module, args, buf, dynamo=False, opset_version=opset_version,
                              external_data=False)
    except Exception as e:  # torch raises many types; the user needs the message, not the stack
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxImportError(f"could not export the torch module {label} to ONNX: {msg}") from None
    g = _load_bytes(buf.getvalue(), f"the ONNX export of {label}", max_bytes=None,
                    max_nodes=max_nodes, batch_size=None)
    meta = dict(g.meta, name=label, source="torch")
    return ArchGraph(g.nodes, g.space, meta)


# ------------------------------------------------------------------ reading and checking
def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _read(source: Source, max_bytes: int | None) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = "the given data"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = path.name or str(path)
        if not path.exists():
            raise OnnxImportError(f"no such file: {path}")
        if not path.is_file():
            raise OnnxImportError(f"{path} is not a file")
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise OnnxImportError(f"{label} is {_mb(size)}, over the limit of {_mb(max_bytes)} "
                                  f"({max_bytes} bytes); pass a larger max_bytes to load it")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise OnnxImportError(f"cannot read {path}: {e.strerror or e}") from None
    else:
        try:
            import onnx
            if isinstance(source, onnx.ModelProto):
                return source.SerializeToString(), "the given ModelProto"
        except ImportError:
            pass
        raise OnnxImportError(f"load_onnx takes a file path or the model's bytes, not {type(source).__name__}")
    if max_bytes is not None and len(data) > max_bytes:
        raise OnnxImportError(f"{label} is {_mb(len(data))}, over the limit of {_mb(max_bytes)} "
                              f"({max_bytes} bytes); pass a larger max_bytes to load it")
    return data, label


def _looks_like_text(data: bytes) -> bool:
    head = data[:4096]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def _first_lines(msg: str, k: int = 3) -> str:
    lines = [ln.strip() for ln in str(msg).strip().splitlines() if ln.strip() and not ln.startswith("==>")]
    return " ".join(lines[:k]) or "unknown reason"


def _load_bytes(data: bytes, label: str, *, max_bytes: int | None, max_nodes: int,
                batch_size: int | None) -> ArchGraph:
    import onnx

    bad = f"{label} is not a valid ONNX model"
    if len(data) == 0:
        raise OnnxImportError(f"{bad}: it is empty (0 bytes)")
    if max_bytes is not None and len(data) > max_bytes:
        raise OnnxImportError(f"{label} is {_mb(len(data))}, over the limit of {_mb(max_bytes)}")
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise OnnxImportError(f"batch_size must be a positive integer, got {batch_size!r}")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:
        hint = " (it looks like a text file)" if _looks_like_text(data) else \
            " (the file may be truncated or corrupt, or in another format)"
        raise OnnxImportError(f"{bad}: the bytes are not an ONNX protobuf{hint}") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        what = "no graph" if not model.HasField("graph") else "a graph without operators"
        raise OnnxImportError(f"{bad}: it holds {what} (ir_version {model.ir_version}); "
                              "is it truncated or another protobuf?")
    if len(model.graph.node) > max_nodes:
        raise OnnxImportError(f"{label} has {len(model.graph.node)} operators, over the limit of "
                              f"{max_nodes}; pass a larger max_nodes to load it")
    graph = model.graph
    _sort_nodes(graph, bad)
    used_batch, batch_symbols = _set_batch(graph, batch_size, label)
    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as e:
        raise OnnxImportError(f"{bad}: {_first_lines(e)}") from None
    except Exception as e:  # e.g. a protobuf the checker cannot even serialise
        raise OnnxImportError(f"{bad}: {_first_lines(e) or type(e).__name__}") from None

    consts = {t.name: _tensor_info(t) for t in graph.initializer}
    for st in graph.sparse_initializer:
        consts[st.values.name] = _Tensor(tuple(int(d) for d in st.dims), st.values.data_type, None)
    _strip_big_weights(graph)
    # full_check of onnx.checker is exactly this strict inference; done once, on the stripped
    # model, so that big models are not serialised twice more.
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                                     data_prop=True)
    except Exception as e:
        raise OnnxImportError(f"{bad}: shape inference failed: {_first_lines(e)}") from None
    shapes = _shape_table(inferred.graph, batch_symbols)
    try:
        return _build(model, consts, shapes, label, used_batch)
    except OnnxImportError:
        raise
    except Exception as e:  # a model the checker accepted but this converter did not foresee
        raise OnnxImportError(f"{label} could not be converted into a graph "
                              f"({type(e).__name__}: {e}); please report this model") from e


def _sort_nodes(graph, bad: str) -> None:
    """Put the node list in topological order (the checker requires it; files need not be)."""
    from .graph import topological_order

    producer: dict[str, int] = {}
    for k, node in enumerate(graph.node):
        for out in node.output:
            if not out:
                continue
            if out in producer:
                raise OnnxImportError(f"{bad}: tensor {out!r} is produced by two nodes "
                                      f"({_node_label(graph.node[producer[out]])} and {_node_label(node)})")
            producer[out] = k
    known = {t.name for t in graph.initializer} | {t.name for t in graph.input} | \
        {t.values.name for t in graph.sparse_initializer}
    preds: list[list[int]] = []
    for node in graph.node:
        ps = []
        for name in node.input:
            if not name:
                continue
            if name in producer:
                ps.append(producer[name])
            elif name not in known:
                raise OnnxImportError(f"{bad}: node {_node_label(node)} reads {name!r}, which no "
                                      "node, graph input or initializer defines")
        preds.append(ps)
    try:
        order = topological_order(preds)
    except GraphError:
        on_cycle = _cycle_member(preds)
        raise OnnxImportError(f"{bad}: its graph has a cycle (through node "
                              f"{_node_label(graph.node[on_cycle])})") from None
    if order != list(range(len(order))):
        nodes = [graph.node[k] for k in order]
        copies = []
        for n in nodes:
            c = type(n)()
            c.CopyFrom(n)
            copies.append(c)
        del graph.node[:]
        graph.node.extend(copies)


def _cycle_member(preds: list[list[int]]) -> int:
    # Peel off nodes that lead to no cycle; what is left lies on or behind one.
    _, indeg = kahn(preds)
    left = {i for i in range(len(preds)) if indeg[i] > 0}
    # Walk predecessors inside the remainder until a node repeats: that node is on a cycle.
    i, seen = min(left), set()
    while i not in seen:
        seen.add(i)
        i = next(p for p in preds[i] if p in left)
    return i


def _node_label(node) -> str:
    return f"{node.name!r} ({node.op_type})" if node.name else f"{node.op_type} -> {list(node.output)[:1]}"


def _set_batch(graph, batch_size: int | None, label: str) -> tuple[int | None, dict[str, int]]:
    """Fix the leading dim of every data input.

    Returns the batch size the graph now has (None if inputs disagree) and the symbolic names
    that stood for it, so that other dims with the same name (declared outputs of ops that
    shape inference cannot see through) get the same value.
    """
    inits = {t.name for t in graph.initializer}
    seen: set[int] = set()
    symbols: dict[str, int] = {}
    for inp in graph.input:
        if inp.name in inits or not inp.type.HasField("tensor_type"):
            continue
        tt = inp.type.tensor_type
        if not tt.HasField("shape") or len(tt.shape.dim) == 0:
            continue
        d0 = tt.shape.dim[0]
        if d0.HasField("dim_value") and d0.dim_value > 0:
            if batch_size is not None and d0.dim_value != batch_size:
                raise OnnxImportError(
                    f"{label} fixes the batch size of input {inp.name!r} to {d0.dim_value}; "
                    f"batch_size={batch_size} cannot be applied (export it with a dynamic batch dim)")
            seen.add(int(d0.dim_value))
        else:
            if d0.HasField("dim_param") and d0.dim_param:
                symbols[d0.dim_param] = batch_size or 1
            d0.Clear()
            d0.dim_value = batch_size or 1
            seen.add(batch_size or 1)
    return (seen.pop() if len(seen) == 1 else None), symbols


_WEIGHT_TYPES = None


def _weight_types() -> set[int]:
    global _WEIGHT_TYPES
    if _WEIGHT_TYPES is None:
        from onnx import TensorProto as T
        names = ["FLOAT", "FLOAT16", "DOUBLE", "BFLOAT16", "INT8", "UINT8", "INT4", "UINT4",
                 "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ"]
        _WEIGHT_TYPES = {getattr(T, n) for n in names if hasattr(T, n)}
    return _WEIGHT_TYPES


# Float-typed arguments that configure an op rather than hold learned values.
_FLOAT_ARGS = {"roi", "scales", "min", "max", "constant_value", "alpha", "beta", "value",
               "start", "limit", "delta", "ratio", "epsilon"}


def _tensor_info(t) -> _Tensor:
    from onnx import numpy_helper

    dims = tuple(int(d) for d in t.dims)
    values = None
    external = t.data_location == 1  # TensorProto.EXTERNAL
    if math.prod(dims) <= _FOLD_MAX and not external:
        try:
            values = numpy_helper.to_array(t)
        except Exception:
            values = None
    return _Tensor(dims, int(t.data_type), values)


def _strip_big_weights(graph) -> None:
    # Shape inference only needs dims of big float tensors; their data would be copied twice.
    wt = _weight_types()
    for t in graph.initializer:
        if t.data_type in wt and math.prod(t.dims) > _STRIP_MIN and t.data_location != 1:
            for f in ("raw_data", "float_data", "double_data", "int32_data"):
                t.ClearField(f)


def _shape_table(graph, symbols: dict[str, int]) -> dict[str, tuple[int, ...]]:
    def dim(d) -> int:
        if d.HasField("dim_value") and d.dim_value >= 0:
            return int(d.dim_value)
        if d.HasField("dim_param") and d.dim_param in symbols:
            return symbols[d.dim_param]
        return -1

    out: dict[str, tuple[int, ...]] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = vi.type
        if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
            continue
        out[vi.name] = tuple(dim(d) for d in t.tensor_type.shape.dim)
    return out


# ------------------------------------------------------------------ building the graph
def _attr_value(a) -> Any:
    from onnx import AttributeProto as A, helper

    if a.type == A.FLOAT:
        return _f32(a.f)
    if a.type == A.INT:
        return int(a.i)
    if a.type == A.STRING:
        return a.s.decode("utf-8", "replace")
    if a.type == A.FLOATS:
        return tuple(_f32(x) for x in a.floats)
    if a.type == A.INTS:
        return tuple(int(x) for x in a.ints)
    if a.type == A.STRINGS:
        return tuple(s.decode("utf-8", "replace") for s in a.strings)
    if a.type == A.TENSOR:
        info = _tensor_info(a.t)
        return _plain(info.values) if info.values is not None else f"tensor{list(info.dims)}"
    if a.type == A.GRAPH:
        return f"graph {a.g.name!r} with {len(a.g.node)} nodes"
    if a.type == A.GRAPHS:
        return tuple(f"graph {g.name!r} with {len(g.node)} nodes" for g in a.graphs)
    try:
        return str(helper.get_attribute_value(a))[:200]
    except Exception:
        return f"<attribute type {a.type}>"


def _f32(x: float) -> float:
    # ONNX floats are float32; their shortest repr keeps 0.1 as 0.1, not 0.10000000149.
    return float(str(np.float32(x)))


def _plain(values: np.ndarray) -> Any:
    v = np.asarray(values)
    if v.dtype.kind == "f":
        items = [_f32(x) for x in v.ravel()]
    elif v.dtype.kind in "iub":
        items = [int(x) for x in v.ravel()]
    else:
        items = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in v.ravel()]
    return items[0] if v.ndim == 0 else tuple(items)


def _constant_info(node) -> _Tensor:
    from onnx import TensorProto as T

    for a in node.attribute:
        if a.name == "value":
            return _tensor_info(a.t)
        if a.name == "sparse_value":
            return _Tensor(tuple(int(d) for d in a.sparse_tensor.dims), a.sparse_tensor.values.data_type, None)
        if a.name == "value_float":
            return _Tensor((), T.FLOAT, np.array(a.f, dtype=np.float32))
        if a.name == "value_floats":
            return _Tensor((len(a.floats),), T.FLOAT, np.array(a.floats, dtype=np.float32))
        if a.name == "value_int":
            return _Tensor((), T.INT64, np.array(a.i, dtype=np.int64))
        if a.name == "value_ints":
            return _Tensor((len(a.ints),), T.INT64, np.array(a.ints, dtype=np.int64))
        if a.name == "value_string":
            return _Tensor((), T.STRING, np.array(a.s))
        if a.name == "value_strings":
            return _Tensor((len(a.strings),), T.STRING, np.array(list(a.strings)))
    return _Tensor((), 0, None)


_schema_cache: dict[tuple[str, str, int], tuple[tuple[str, ...], bool]] = {}


def _input_names(op: str, domain: str, opset: int) -> tuple[tuple[str, ...], bool]:
    key = (op, domain, opset)
    if key not in _schema_cache:
        import onnx

        try:
            s = onnx.defs.get_schema(op, opset, domain)
            names = tuple(i.name for i in s.inputs)
            variadic = bool(s.inputs) and s.inputs[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic
        except Exception:
            names, variadic = (), False
        _schema_cache[key] = (names, variadic)
    return _schema_cache[key]


def _arg_name(names: tuple[str, ...], variadic: bool, pos: int) -> str:
    if pos < len(names):
        return names[pos]
    if variadic and names:
        return names[-1]
    return f"input{pos}"


_CONV_OPS = {"Conv", "ConvTranspose", "QLinearConv", "ConvInteger"}
_POOL_OPS = {"MaxPool", "AveragePool", "LpPool"}
_BIAS_ARG = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2, "QLinearConv": 8, "LSTM": 3, "GRU": 3, "RNN": 3}
_CONV_W_ARG = {"Conv": 1, "ConvTranspose": 1, "ConvInteger": 1, "QLinearConv": 3}


def _canonical_spatial(op: str, attrs: dict, w_shape: tuple | None, in_shape: tuple, out_shape: tuple) -> None:
    """Fill ONNX defaults of the spatial attributes; turn auto_pad into explicit pads."""
    kernel = attrs.get("kernel_shape")
    if kernel is None and w_shape is not None and len(w_shape) > 2:
        kernel = tuple(w_shape[2:])
        attrs["kernel_shape"] = kernel
    if kernel is not None:
        d = len(kernel)
    elif len(in_shape) > 2:
        d = len(in_shape) - 2
    else:
        return
    attrs.setdefault("strides", (1,) * d)
    attrs.setdefault("dilations", (1,) * d)
    if op in _CONV_OPS:
        attrs.setdefault("group", 1)
    if op == "ConvTranspose":
        attrs.setdefault("output_padding", (0,) * d)
    auto = attrs.get("auto_pad", "NOTSET")
    if auto == "VALID":
        attrs["pads"] = (0,) * (2 * d)
    elif auto in ("SAME_UPPER", "SAME_LOWER") and kernel is not None and \
            len(in_shape) == d + 2 and len(out_shape) == d + 2 and \
            min(in_shape[2:]) > 0 and min(out_shape[2:]) > 0:
        begin, end = [], []
        for i in range(d):
            k, s, dil = kernel[i], attrs["strides"][i], attrs["dilations"][i]
            if op == "ConvTranspose":
                total = s * (in_shape[2 + i] - 1) + attrs["output_padding"][i] + (k - 1) * dil + 1 - out_shape[2 + i]
            else:
                total = (out_shape[2 + i] - 1) * s + (k - 1) * dil + 1 - in_shape[2 + i]
            total = max(int(total), 0)
            small, big = total // 2, total - total // 2
            b, e = (small, big) if auto == "SAME_UPPER" else (big, small)
            begin.append(b)
            end.append(e)
        attrs["pads"] = tuple(begin + end)
    else:
        attrs.setdefault("pads", (0,) * (2 * d))


def _build(model, consts: dict[str, _Tensor], shapes: dict[str, tuple[int, ...]],
           label: str, used_batch: int | None) -> ArchGraph:
    graph = model.graph
    opsets = {o.domain or "": int(o.version) for o in model.opset_import}
    opset = opsets.get("", opsets.get("ai.onnx", 0))
    bad = f"{label} is not a valid ONNX model"

    ops: list[str] = []
    attrs_l: list[dict] = []
    shapes_l: list[tuple[int, ...]] = []
    names_l: list[str] = []
    edges: list[tuple[int, int]] = []
    producer: dict[str, int] = {}
    inputs_meta = []
    for inp in graph.input:
        if inp.name in consts:
            continue
        producer[inp.name] = len(ops)
        ops.append("input")
        attrs_l.append({})
        shapes_l.append(shapes.get(inp.name, ()))
        names_l.append(inp.name)
        inputs_meta.append({"name": inp.name, "shape": list(shapes.get(inp.name, ()))})
    if not ops:
        raise OnnxImportError(f"{bad}: it has no data input (every graph input is an initializer)")

    removed = {"Identity": 0, "Constant": 0}
    weight_ids: dict[str, int] = {}
    for node in graph.node:
        domain = node.domain if node.domain not in ("ai.onnx",) else ""
        if node.op_type == "Constant" and domain == "":
            if node.output and node.output[0]:
                consts[node.output[0]] = _constant_info(node)
            removed["Constant"] += 1
            continue
        if node.op_type == "Identity" and domain == "" and len(node.input) == 1:
            src = node.input[0]
            if src in producer:
                producer[node.output[0]] = producer[src]
            elif src in consts:
                consts[node.output[0]] = consts[src]
            removed["Identity"] += 1
            continue

        me = len(ops)
        attrs: dict[str, Any] = {a.name: _attr_value(a) for a in node.attribute}
        if domain:
            attrs["domain"] = domain
        arg_names, variadic = _input_names(node.op_type, domain, opsets.get(domain, opset))
        w_shapes, w_pos = [], []
        preds = []
        for pos, name in enumerate(node.input):
            if not name:
                continue
            if name in producer:
                preds.append(producer[name])
                continue
            t = consts.get(name)
            if t is None:  # the checker and _sort_nodes make this unreachable for valid models
                raise OnnxImportError(f"{bad}: node {_node_label(node)} reads undefined tensor {name!r}")
            arg = _arg_name(arg_names, variadic, pos)
            if t.dtype in _weight_types() and t.size > 1 and arg not in _FLOAT_ARGS:
                w_shapes.append(t.dims)
                w_pos.append(pos)
                weight_ids.setdefault(name, t.size)
            elif t.values is not None:
                key = arg if arg not in attrs else f"{arg}_{pos}"
                attrs[key] = _plain(t.values)
        for p in preds:
            edges.append((p, me))
        if w_shapes:
            attrs["weight_shapes"] = tuple(w_shapes)
            attrs["weight_positions"] = tuple(w_pos)
        if node.op_type in _BIAS_ARG and not domain:
            k = _BIAS_ARG[node.op_type]
            attrs["has_bias"] = int(len(node.input) > k and bool(node.input[k]))
        out_shape = shapes.get(node.output[0], ()) if node.output else ()
        in_shape = shapes.get(node.input[0], ()) if node.input and node.input[0] else ()
        if not domain and (node.op_type in _CONV_OPS or node.op_type in _POOL_OPS):
            w_arg = _CONV_W_ARG.get(node.op_type)
            w_shape = None
            if w_arg is not None and len(node.input) > w_arg:
                wn = node.input[w_arg]
                w_shape = consts[wn].dims if wn in consts else shapes.get(wn)
            _canonical_spatial(node.op_type, attrs, w_shape, in_shape, out_shape)
        if node.op_type == "Transpose" and not domain and "perm" not in attrs and in_shape:
            attrs["perm"] = tuple(range(len(in_shape) - 1, -1, -1))
        for out in node.output:
            if out:
                producer[out] = me
        ops.append(node.op_type)
        attrs_l.append(attrs)
        shapes_l.append(out_shape)
        names_l.append(node.name or (node.output[0] if node.output else node.op_type))

    unknown = sorted({op for op, a in zip(ops, attrs_l)
                      if op != "input" and get_op_id(op, a.get("domain", "")) == UNKNOWN_ID})
    meta = {
        "name": graph.name or label,
        "source": label,
        "opset": opset,
        "ir_version": int(model.ir_version),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "batch_size": used_batch,
        "inputs": inputs_meta,
        "outputs": [o.name for o in graph.output],
        "n_ops": len(ops) - len(inputs_meta),
        "n_params": int(sum(weight_ids.values())),
        "removed": removed,
        "unknown_ops": unknown,
    }
    try:
        return from_edges(ops, edges, space="onnx", shapes=shapes_l, attrs=attrs_l, names=names_l, meta=meta)
    except OnnxImportError:
        raise
    except GraphError as e:
        raise OnnxImportError(f"{bad}: {e}") from None
