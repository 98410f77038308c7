"""Robustness fuzzing: seeded generators of bad inputs, and a runner that pushes them through the
command line and the app's upload path.

    cases = generate(1000, seed=0)
    with FuzzContext() as ctx:
        outcomes = [run_case(c, ctx) for c in cases]

Used by ``scripts/fuzz_report.py`` (the figures in docs/ROBUSTNESS.md) and ``tests/test_fuzz.py``.

A :class:`Case` is one input of one category (random or mutated ONNX bytes, cyclic graphs, huge
declared shapes, malformed NB201 arch strings and NB101 matrices, label CSVs with NaN or garbage,
corrupted, foreign or malicious checkpoints). It runs through

- the command line, in process (``cli.main(argv)``) or as ``python -m narformer_core``: the
  commands that read it (``predict-latency``, ``measure``, ``evaluate --checkpoint``, ``search``
  and ``train`` with ``--data-dir`` for the label CSVs);
- the app's path: what the Architecture page calls on an upload's bytes
  (``app_services.import_onnx``, then tokens, static features, the latency prediction, the DAG
  and the measurement), on a composed cell (``nb201.to_graph``, ``app_services.nb101_graph``) or
  on a checkpoint it lists (``app_services.load_predictor`` / ``load_latency_predictor``).

What counts as a crash:

- command line: an exception other than SystemExit escaping ``main``; a traceback printed; exit
  status 0 for an input that must be refused; a refusal with no message or with a raw Python
  message (``'NoneType' object has no attribute ...``); accepted output that is not JSON or holds
  NaN; a case running past its time limit;
- app path: any exception other than GraphError / ValueError, or one of those with an empty or
  raw message; an exception at all from the steps the page does not guard (tokens, the DAG);
- malicious checkpoints: the code in the pickle ran (its marker file exists afterwards).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------ cases


@dataclass
class Sparse:
    """A file of ``size`` bytes (all zero) written sparse: over-the-limit uploads at no disk cost."""

    size: int


@dataclass
class Case:
    """One fuzz input.

    ``kind`` says what it is and so which commands read it: onnx, nb201 (an arch string or op
    list), nb101 ((matrix, ops)), csv-nb201 / csv-nb101 (a label file), checkpoint (accuracy
    predictor) or latency-checkpoint. ``expect``: "error" (must be refused), "any" (may be valid
    by chance) or "ok" (a valid control that must be accepted).
    """

    category: str
    kind: str
    data: Any
    expect: str = "error"
    note: str = ""
    marker: str | None = None   # malicious pickles: the file their code would create


# ------------------------------------------------------------------ ONNX building blocks
def _onnx():
    import onnx
    from onnx import TensorProto, helper

    return onnx, TensorProto, helper


def _init(name: str, shape, rng: np.random.Generator, dtype=np.float32):
    from onnx import numpy_helper

    return numpy_helper.from_array(rng.standard_normal(tuple(shape)).astype(dtype), name)


def _model(nodes, inputs, outputs, inits=(), opset: int = 17, extra_opsets=(), name: str = "fuzz"):
    onnx, _, helper = _onnx()
    g = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(inits))
    ops = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    m = helper.make_model(g, opset_imports=ops, producer_name="narformer-fuzz")
    m.ir_version = 8   # what the installed onnxruntime reads
    return m


def _vi(name, shape, elem=None):
    _, T, helper = _onnx()
    return helper.make_tensor_value_info(name, T.FLOAT if elem is None else elem, shape)


def base_models(seed: int = 0) -> list:
    """Four small valid ONNX models (conv chain, residual with BN and a dynamic batch, MLP,
    reshape/transpose/concat with Constant and Identity): the material mutations start from."""
    _, T, helper = _onnx()
    rng = np.random.default_rng(seed)
    mk = helper.make_node
    conv = _model(
        [mk("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         mk("Relu", ["c"], ["r"], name="relu"),
         mk("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
         mk("Flatten", ["p"], ["f"], axis=1, name="flat"),
         mk("Gemm", ["f", "wfc", "bfc"], ["y"], transB=1, name="fc")],
        [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 10])],
        [_init("w1", (4, 3, 3, 3), rng), _init("b1", (4,), rng), _init("wfc", (10, 64), rng),
         _init("bfc", (10,), rng)], name="conv")
    res = _model(
        [mk("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         mk("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], name="bn"),
         mk("Relu", ["bn"], ["r"], name="relu"),
         mk("Add", ["r", "x"], ["a"], name="add"),
         mk("GlobalAveragePool", ["a"], ["y"], name="gap")],
        [_vi("x", ["N", 4, 8, 8])], [_vi("y", ["N", 4, 1, 1])],
        [_init("w", (4, 4, 3, 3), rng), _init("s", (4,), rng), _init("b", (4,), rng),
         _init("m", (4,), rng), helper.make_tensor("v", T.FLOAT, [4], [1.0] * 4)], name="residual")
    mlp = _model(
        [mk("MatMul", ["x", "w1"], ["h"], name="mm1"), mk("Add", ["h", "b1"], ["h2"], name="add1"),
         mk("Sigmoid", ["h2"], ["s"], name="sig"), mk("MatMul", ["s", "w2"], ["o"], name="mm2"),
         mk("Softmax", ["o"], ["y"], axis=-1, name="softmax")],
        [_vi("x", [1, 16])], [_vi("y", [1, 8])],
        [_init("w1", (16, 32), rng), _init("b1", (32,), rng), _init("w2", (32, 8), rng)], name="mlp")
    shape = _model(
        [mk("Identity", ["x"], ["i"], name="id"),
         mk("Constant", [], ["shp"], value=helper.make_tensor("shp_v", T.INT64, [2], [1, 24]), name="const"),
         mk("Reshape", ["i", "shp"], ["r"], name="reshape"),
         mk("Transpose", ["r"], ["t"], name="transpose"),
         mk("Concat", ["t", "t"], ["cat"], axis=0, name="concat"),
         mk("Relu", ["cat"], ["y"], name="relu")],
        [_vi("x", [1, 6, 4])], [_vi("y", [48, 1])], name="shapes")
    return [conv, res, mlp, shape]


def _copy(m):
    c = type(m)()
    c.CopyFrom(m)
    return c


def _chain(n: int, wide: bool = False):
    """``n`` Relu operators in a chain (deep) or side by side summed at the end (wide)."""
    _, _, helper = _onnx()
    mk = helper.make_node
    if wide:
        nodes = [mk("Relu", ["x"], [f"t{k}"]) for k in range(n - 1)]
        nodes.append(mk("Sum", [f"t{k}" for k in range(n - 1)], ["y"]))
    else:
        nodes = [mk("Relu", ["x" if k == 0 else f"t{k - 1}"], [f"t{k}" if k < n - 1 else "y"]) for k in range(n)]
    return _model(nodes, [_vi("x", [1, 4])], [_vi("y", [1, 4])], name=f"{'wide' if wide else 'deep'}{n}")


# ------------------------------------------------------------------ ONNX generators
def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _base(rng, ctx) -> Any:
    return _copy(_pick(rng, ctx.models))


def g_onnx_random(rng, ctx) -> Case:
    n = int(rng.choice([0, 1, 2, 7, 64, 512, 4096]))
    data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    if n and rng.random() < 0.5:   # an ONNX-looking start: ir_version field, then noise
        data = b"\x08\x08\x12" + data
    return Case("onnx/random-bytes", "onnx", data, "error", f"{len(data)} random bytes")


def g_onnx_text(rng, ctx) -> Case:
    texts = [b"", b"hello world\n", b'{"graph": {"node": []}}', b"ir_version: 8\ngraph { node { op_type: 'Relu' } }",
             "\ufeffa,b,c\n1,2,3\n".encode(), b"\x89PNG\r\n\x1a\n" + bytes(32), b"PK\x03\x04" + bytes(40),
             b"\x80\x04\x95" + bytes(20), bytes(1000)]
    return Case("onnx/not-onnx", "onnx", _pick(rng, texts), "error", "text, images, zip, pickle or zeros")


def g_onnx_bitflip(rng, ctx) -> Case:
    data = bytearray(_base(rng, ctx).SerializeToString())
    k = int(rng.integers(1, 17))
    for pos in rng.integers(0, len(data) * 8, k):
        data[pos // 8] ^= 1 << (pos % 8)
    return Case("onnx/bit-flips", "onnx", bytes(data), "any", f"{k} bits flipped")


def g_onnx_truncated(rng, ctx) -> Case:
    data = _base(rng, ctx).SerializeToString()
    cut = int(rng.integers(0, len(data)))
    return Case("onnx/truncated", "onnx", data[:cut], "any", f"cut at {cut} of {len(data)} bytes")


def g_onnx_splice(rng, ctx) -> Case:
    data = bytearray(_base(rng, ctx).SerializeToString())
    for _ in range(int(rng.integers(1, 4))):
        a = int(rng.integers(0, len(data)))
        b = min(len(data), a + int(rng.integers(1, 64)))
        op = int(rng.integers(3))
        if op == 0:
            del data[a:b]                               # a chunk removed
        elif op == 1:
            data[a:a] = data[a:b]                        # a chunk repeated
        else:
            data[a:b] = rng.integers(0, 256, b - a, dtype=np.uint8).tobytes()   # overwritten
    return Case("onnx/spliced-bytes", "onnx", bytes(data), "any", "chunks removed, repeated or overwritten")


def g_onnx_dup_remove(rng, ctx) -> Case:
    m = _base(rng, ctx)
    nodes = m.graph.node
    consumed = {i for n in nodes for i in n.input} | {o.name for o in m.graph.output}
    k = int(rng.integers(len(nodes)))
    if rng.random() < 0.5:
        dup = _copy(nodes[k])
        nodes.insert(k + 1, dup)
        note = f"node {nodes[k].op_type} duplicated (its output produced twice)"
        expect = "error"
    else:
        cands = [j for j, n in enumerate(nodes) if any(o in consumed for o in n.output)]
        k = _pick(rng, cands)
        note = f"node {nodes[k].op_type} removed (its output still read)"
        del nodes[k]
        expect = "error"
    return Case("onnx/dup-or-removed-node", "onnx", m.SerializeToString(), expect, note)


def g_onnx_cycle(rng, ctx) -> Case:
    m = _base(rng, ctx)
    nodes = m.graph.node
    i = int(rng.integers(len(nodes)))
    j = int(rng.integers(i, len(nodes)))   # j >= i: a later (or the same) node feeds node i
    if not nodes[i].input:
        nodes[i].input.append(nodes[j].output[0])
    else:
        nodes[i].input[0] = nodes[j].output[0]
    return Case("onnx/cycle", "onnx", m.SerializeToString(), "error",
                f"node {i} ({nodes[i].op_type}) reads node {j}'s output")


_HUGE = (10 ** 9, 2 ** 31, 2 ** 40, 2 ** 62, 2 ** 63 - 1, 10 ** 5, 30_000)


def _set_input_dims(m, rng, values) -> str:
    inp = m.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    ks = list(range(len(dims)))
    touched = []
    for k in rng.permutation(ks)[: int(rng.integers(1, len(ks) + 1))]:
        v = int(_pick(rng, values))
        dims[int(k)].Clear()
        dims[int(k)].dim_value = v
        touched.append(f"dim {int(k)} = {v}")
    return ", ".join(touched)


def g_onnx_huge_shape(rng, ctx) -> Case:
    m = _base(rng, ctx)
    note = _set_input_dims(m, rng, _HUGE)
    return Case("onnx/huge-shape", "onnx", m.SerializeToString(), "any", f"input {note}")


def g_onnx_bad_dims(rng, ctx) -> Case:
    m = _base(rng, ctx)
    note = _set_input_dims(m, rng, (0, -1, -7, -(2 ** 63)))
    if rng.random() < 0.3:   # also a declared output shape that contradicts inference
        d = m.graph.output[0].type.tensor_type.shape.dim
        if d:
            d[-1].Clear()
            d[-1].dim_value = int(rng.integers(0, 1000))
            note += "; output dim changed"
    return Case("onnx/zero-negative-dims", "onnx", m.SerializeToString(), "any", f"input {note}")


def g_onnx_unknown_op(rng, ctx) -> Case:
    m = _base(rng, ctx)
    node = _pick(rng, list(m.graph.node))
    what = int(rng.integers(4))
    if what == 0:
        node.op_type = _pick(rng, ["FooBar", "Conv2D", "relu", "", "Relu\x00", "\u00c9toile"])
        expect, note = "error", f"op type {node.op_type!r} in the default domain"
    elif what == 1:
        node.domain = "com.example.custom"
        m.opset_import.append(_onnx()[2].make_opsetid("com.example.custom", 1))
        expect, note = "any", f"{node.op_type} moved to a custom domain (declared)"
    elif what == 2:
        node.domain = "org.undeclared"
        expect, note = "error", f"{node.op_type} in a domain the model does not import"
    else:
        m.opset_import[0].version = int(_pick(rng, [0, 1, 5, 99, 10 ** 6, -3]))
        expect, note = "any", f"default opset {m.opset_import[0].version}"
    return Case("onnx/unknown-op-or-domain", "onnx", m.SerializeToString(), expect, note)


def g_onnx_missing_init(rng, ctx) -> Case:
    cands = [mm for mm in ctx.models if len(mm.graph.initializer)]
    m = _copy(_pick(rng, cands))
    k = int(rng.integers(len(m.graph.initializer)))
    name = m.graph.initializer[k].name
    del m.graph.initializer[k]
    return Case("onnx/missing-initializer", "onnx", m.SerializeToString(), "error", f"initializer {name!r} removed")


def g_onnx_external(rng, ctx) -> Case:
    onnx, T, _ = _onnx()
    cands = [mm for mm in ctx.models if len(mm.graph.initializer)]
    m = _copy(_pick(rng, cands))
    t = _pick(rng, list(m.graph.initializer))
    loc = _pick(rng, ["missing_weights.bin", "../outside_the_folder.bin", "/nonexistent/abs.bin",
                      "sub/../../x.bin", "", "C:\\weights.bin"])
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = T.EXTERNAL
    del t.external_data[:]
    e = t.external_data.add()
    e.key, e.value = "location", loc
    if rng.random() < 0.5:
        e = t.external_data.add()
        e.key, e.value = "length", str(int(rng.integers(-5, 10 ** 12)))
    return Case("onnx/external-data", "onnx", m.SerializeToString(), "any", f"weights in external file {loc!r}")


def g_onnx_over_nodes(rng, ctx) -> Case:
    n = ctx.max_nodes + int(rng.integers(1, 100))
    wide = bool(rng.random() < 0.5)
    return Case("onnx/over-node-limit", "onnx", _chain(n, wide).SerializeToString(), "error",
                f"{n} operators ({'wide' if wide else 'deep'})")


def g_onnx_oversize(rng, ctx) -> Case:
    # Sparse files: over the limit without writing that much. The app path is given bytes of its
    # own (smaller) limit plus one.
    return Case("onnx/over-size-limit", "onnx", Sparse(ctx.max_bytes_cli + int(rng.integers(1, 4096))), "error",
                "a file just over the size limit")


def g_onnx_bad_attrs(rng, ctx) -> Case:
    onnx, T, helper = _onnx()
    m = _base(rng, ctx)
    node = _pick(rng, list(m.graph.node))
    name = _pick(rng, ["strides", "pads", "kernel_shape", "dilations", "group", "axis", "perm", "transB"])
    value = _pick(rng, [0, -1, 10 ** 9, [0, 0], [-1, -1], [1, 2, 3], [10 ** 9, 10 ** 9], [], 2 ** 62, 1.5, "x"])
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    if value == []:
        node.attribute.append(helper.make_attribute(name, [], attr_type=onnx.AttributeProto.INTS))
    else:
        node.attribute.append(helper.make_attribute(name, value))
    return Case("onnx/bad-attributes", "onnx", m.SerializeToString(), "any",
                f"{node.op_type}.{name} = {value!r}")


def g_onnx_types(rng, ctx) -> Case:
    _, T, _ = _onnx()
    m = _base(rng, ctx)
    t = int(_pick(rng, [T.UNDEFINED, T.STRING, T.BOOL, T.FLOAT16, T.INT64, T.COMPLEX64, 999]))
    inp = m.graph.input[0] if rng.random() < 0.7 else m.graph.output[0]
    inp.type.tensor_type.elem_type = t
    if rng.random() < 0.3:
        inp.type.tensor_type.ClearField("shape")
    return Case("onnx/odd-types", "onnx", m.SerializeToString(), "any", f"{inp.name} of element type {t}")


def g_onnx_subgraph(rng, ctx) -> Case:
    onnx, T, helper = _onnx()
    mk = helper.make_node
    then_g = helper.make_graph([mk("Relu", ["x"], ["t"])], "then", [], [_vi("t", [1, 4])])
    else_g = helper.make_graph([mk("Neg", ["ghost"], ["e"])], "else", [], [_vi("e", [1, 4])])
    if rng.random() < 0.5:   # the else branch reads a tensor nobody defines
        note = "If whose else-branch reads an undefined tensor"
        expect = "error"
    else:
        else_g = helper.make_graph([mk("Neg", ["x"], ["e"])], "else", [], [_vi("e", [1, 4])])
        note = "a valid If with two branches"
        expect = "any"
    m = _model([mk("ReduceSum", ["x"], ["s"], keepdims=0), mk("Greater", ["s", "zero"], ["c"]),
                mk("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
               [_vi("x", [1, 4])], [_vi("y", [1, 4])], [helper.make_tensor("zero", T.FLOAT, [], [0.0])])
    return Case("onnx/control-flow", "onnx", m.SerializeToString(), expect, note)


def g_onnx_valid(rng, ctx) -> Case:
    m = _base(rng, ctx)
    return Case("onnx/valid-control", "onnx", m.SerializeToString(), "ok", f"unmodified {m.graph.name}")


# ------------------------------------------------------------------ NB201 arch strings
_NB201_ALPHABET = "|+~0123456789_abcdefghijklmnopqrstuvwxyz \t\n-.,;:#"


def _nb201_valid(rng) -> str:
    from .spaces import nb201

    return nb201.to_arch_str(nb201.sample(rng))


def g_nb201_mutated(rng, ctx) -> Case:
    s = list(_nb201_valid(rng))
    for _ in range(int(rng.integers(1, 4))):
        pos = int(rng.integers(len(s) + 1))
        op = int(rng.integers(3))
        ch = _NB201_ALPHABET[int(rng.integers(len(_NB201_ALPHABET)))]
        if op == 0 and s:
            del s[min(pos, len(s) - 1)]
        elif op == 1:
            s.insert(pos, ch)
        elif s:
            s[min(pos, len(s) - 1)] = ch
    return Case("nb201/mutated-string", "nb201", "".join(s), "any", "characters deleted, inserted or replaced")


def g_nb201_structured(rng, ctx) -> Case:
    from .spaces import nb201

    ops = list(nb201.sample(rng))
    good = nb201.to_arch_str(ops)
    groups = good.split("+")
    bad = [
        ("+".join(groups[:2]), "a group missing"),
        (good + "+|none~0|", "a fourth group"),
        (good.replace("~1", "~0", 1), "an edge reading the wrong node"),
        (good.replace(ops[0], "conv_5x5", 1), "an unknown op"),
        (good.replace("|", "", 1), "a missing bar"),
        (good.replace("~", "-"), "'-' instead of '~'"),
        ("+".join(reversed(groups)), "groups in reverse order"),
        (good.upper(), "upper case"),
        ("", "empty"),
        ("+++", "only separators"),
        ("|" * 10_000, "10,000 bars"),
        (good * 1000, "the string repeated 1,000 times"),
        (good.replace("none", "n\u043ene"), "a Cyrillic letter in an op name"),
        (good.replace("~0", "~99999999999999999999", 1), "a 20-digit node number"),
        (good.replace("~0", "~-1", 1), "a negative node number"),
        (good + "\x00", "a trailing NUL"),
    ]
    bad = [(s, note) for s, note in bad if s != good]   # a replacement that found nothing is no mutation
    s, note = bad[int(rng.integers(len(bad)))]
    return Case("nb201/malformed-string", "nb201", s, "error", note)


def g_nb201_objects(rng, ctx) -> Case:
    from .spaces import nb201

    ops = list(nb201.sample(rng))
    bad = [
        (None, "None"), (42, "an int"), (3.5, "a float"), (b"|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "bytes"),
        (ops[:5], "5 ops"), (ops + ["none"], "7 ops"), (ops[:5] + ["conv_5x5"], "an unknown op in a list"),
        ([1, 2, 3, 4, 5, 6], "6 ints"), ({"ops": ops}, "a dict"), ([], "an empty list"),
        (np.array(ops), "a NumPy array of ops"), ([ops], "a nested list"),
    ]
    x, note = bad[int(rng.integers(len(bad)))]
    expect = "any" if note == "a NumPy array of ops" else "error"
    return Case("nb201/not-a-string", "nb201", x, expect, note)


# ------------------------------------------------------------------ NB101 matrices and ops
def _nb101_valid(rng) -> tuple[np.ndarray, list[str]]:
    from .spaces import nb101

    while True:
        m = np.triu(rng.integers(0, 2, size=(7, 7)), 1)
        ops = ["input", *(nb101.OPS[i] for i in rng.integers(0, 3, 5)), "output"]
        if nb101.is_valid(m, ops):
            return m, ops


def g_nb101_matrix(rng, ctx) -> Case:
    m, ops = _nb101_valid(rng)
    m = m.astype(object)
    n = 7
    what = int(rng.integers(12))
    expect = "error"
    if what == 0:
        x, note = m[:, :6], "6 columns (non-square)"
    elif what == 1:
        i, j = sorted(rng.choice(n, 2, replace=False))
        m[j, i] = 1
        x, note = m, f"entry ({j}, {i}) below the diagonal (a cycle)"
    elif what == 2:
        k = int(rng.integers(n))
        m[k, k] = 1
        x, note = m, f"self loop on node {k}"
    elif what == 3:
        big = np.zeros((8, 8), dtype=int)
        big[:7, :7] = m.astype(int)
        big[6, 7] = 1
        x, ops, note = big, ops[:-1] + ["conv3x3-bn-relu", "output"], "8 nodes"
    elif what == 4:
        i = int(rng.integers(0, n - 1))
        j = int(rng.integers(i + 1, n))
        m[i, j] = _pick(rng, [2, -1, 0.5, float("nan"), float("inf"), "1", None, True, 1e300])
        x, note = m, f"entry ({i}, {j}) = {m[i, j]!r}"
        expect = "any" if isinstance(m[i, j], bool) or m[i, j] is True else "error"
    elif what == 5:
        x = np.zeros((n, n), dtype=int)
        x[0, 1] = x[1, 2] = 1
        note = "output not reachable (disconnected)"
    elif what == 6:
        x, note = [[0, 1], [0, 0, 1], [0]], "ragged rows"
    elif what == 7:
        x, note = np.zeros((2, 7, 7)), "a 3-D array"
    elif what == 8:
        x, ops, note = np.zeros((0, 0)), [], "an empty matrix"
    elif what == 9:
        x = np.triu(np.ones((n, n), dtype=int), 1)
        note = "every upper entry set (too many edges)"
    elif what == 10:
        x, note = "0110000", "a string instead of a matrix"
    else:
        x, note = [[0, 1], [0, 0]], "2 nodes, input straight to output"
        ops = ["input", "output"]
        expect = "ok"
    return Case("nb101/bad-matrix", "nb101", (x, ops), expect, note)


def g_nb101_ops(rng, ctx) -> Case:
    m, ops = _nb101_valid(rng)
    ops = list(ops)
    what = int(rng.integers(8))
    if what == 0:
        ops, note = ops[:-1], "one op too few"
    elif what == 1:
        ops, note = ops + ["maxpool3x3"], "one op too many"
    elif what == 2:
        ops[int(rng.integers(1, 6))] = _pick(rng, ["conv5x5", "", "MAXPOOL3X3", "input", "output"])
        note = "an unknown or misplaced op"
    elif what == 3:
        ops[0], note = "conv3x3-bn-relu", "first op is not 'input'"
    elif what == 4:
        ops, note = "input,conv3x3-bn-relu,output", "a string instead of a list"
    elif what == 5:
        ops, note = None, "None"
    elif what == 6:
        ops[2], note = 3, "an int among the ops"
    else:
        ops, note = tuple(ops[::-1]), "ops reversed"
    return Case("nb101/bad-ops", "nb101", (m, ops), "error", note)


# ------------------------------------------------------------------ label CSVs
NB201_CSV = "nb201_full_val_acc_naslib.csv"
NB101_CSV = "nb101_500_val_acc_naslib.csv"
_NB201_HEADER = ["nb201_index", "arch_str", "val_acc_cifar10", "zen_cifar10"]
_NB101_HEADER = ["adjacency_7x7_rowmajor", "ops", "val_acc_108ep"]


def _csv_rows_nb201(rng, n=30) -> list[list[str]]:
    from .spaces import nb201

    idx = rng.choice(nb201.N_ARCHS, n, replace=False)
    cells = nb201.enumerate_all()
    return [[str(k), nb201.to_arch_str(cells[int(i)]), f"{rng.uniform(10, 94):.2f}", f"{rng.uniform(50, 200):.3f}"]
            for k, i in enumerate(idx)]


def _csv_rows_nb101(rng, n=24) -> list[list[str]]:
    rows = []
    for _ in range(n):
        m, ops = _nb101_valid(rng)
        rows.append(["".join(str(int(v)) for v in m.ravel()), "|".join(ops), f"{rng.uniform(80, 95):.4f}"])
    return rows


def _render(header, rows) -> bytes:
    def q(v: str) -> str:
        return f'"{v}"' if ("," in v or '"' in v) and not v.startswith('"') else v

    return ("\n".join(",".join(q(v) for v in r) for r in [header, *rows]) + "\n").encode("utf-8", "surrogatepass")


def _csv_case(rng, kind: str) -> Case:
    nb201 = kind == "csv-nb201"
    header = list(_NB201_HEADER if nb201 else _NB101_HEADER)
    rows = _csv_rows_nb201(rng) if nb201 else _csv_rows_nb101(rng)
    val_col = header.index("val_acc_cifar10" if nb201 else "val_acc_108ep")
    key_col = header.index("arch_str" if nb201 else "adjacency_7x7_rowmajor")
    what = int(rng.integers(16))
    expect = "any"
    data = None
    if what == 0:
        for r in rows:
            if rng.random() < 0.3:
                r[val_col] = _pick(rng, ["nan", "NaN", "", "inf", "-inf", "NA"])
        note = "NaN / inf / empty accuracies in some rows"
    elif what == 1:
        for r in rows:
            r[val_col] = _pick(rng, ["nan", "", "NaN"])
        note, expect = "every accuracy NaN or empty", "error"
    elif what == 2:
        c = _pick(rng, [val_col, key_col])
        header.pop(c)
        for r in rows:
            r.pop(c)
        note, expect = f"column {('value', 'key')[c == key_col]} missing", "error"
    elif what == 3:
        header[key_col] = header[key_col].upper()
        note, expect = "key column renamed", "error"
    elif what == 4:
        rows[int(rng.integers(len(rows)))][key_col] = _pick(
            rng, ["|none~0|", "garbage", "", "0" * 48, "2" * 49, "|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|"])
        note, expect = "a malformed architecture in one row", "error"
    elif what == 5:
        rows.insert(int(rng.integers(len(rows))), ["#!?", "<html>", "\u00e9\u00e8"])
        note = "a garbage row (too few fields)"
    elif what == 6:
        rows[int(rng.integers(len(rows)))] += ["extra", "fields", "1e308"]
        note = "a row with extra fields"
    elif what == 7:
        data = b""
        note, expect = "an empty file", "error"
    elif what == 8:
        rows = []
        note, expect = "header only", "error"
    elif what == 9:
        data = rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8).tobytes()
        note, expect = "random bytes", "error"
    elif what == 10:
        text = _render(header, rows)
        data = text[: int(rng.integers(1, len(text)))]
        note = "truncated mid-file"
    elif what == 11:
        for r in rows:
            if rng.random() < 0.3:
                r[val_col] = _pick(rng, ["1e308", "-5", "1e-320", "abc", "93,5", "0x10", "1_000"])
        note = "huge, negative, subnormal or non-numeric accuracies"
    elif what == 12:
        dup = list(rows[0])
        dup[val_col] = "12.5"
        rows.append(dup)
        note = "the same architecture twice with different accuracies"
    elif what == 13:
        import gzip
        data = gzip.compress(_render(header, rows))
        note, expect = "gzip-compressed", "error"
    elif what == 14:
        data = "\ufeff".encode() + _render(header, rows).replace(b",", b";")
        note, expect = "BOM and semicolons", "error"
    else:
        note, expect = "unmodified (control)", "ok"
    if data is None:
        data = _render(header, rows)
    group = {0: "nan-inf-values", 1: "nan-inf-values", 11: "nan-inf-values", 4: "bad-architecture",
             7: "not-csv", 9: "not-csv", 13: "not-csv", 15: "valid-control"}.get(what, "broken-structure")
    return Case(f"{kind}/{group}", kind, data, expect, note)


def g_csv_nb201(rng, ctx) -> Case:
    return _csv_case(rng, "csv-nb201")


def g_csv_nb101(rng, ctx) -> Case:
    return _csv_case(rng, "csv-nb101")


# ------------------------------------------------------------------ checkpoints
class _Evil:
    """Unpickling this runs code: it creates the marker file. weights_only must refuse it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('the pickle ran code')",))


def _torch_bytes(obj, legacy: bool = False) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _evil_case(rng, ctx, kind: str) -> Case:
    marker = str(ctx.root / "markers" / f"ran-{ctx.next_id()}")
    evil = _Evil(marker)
    fmt = "narformer-ckpt-1" if kind == "checkpoint" else "narformer-latency-1"
    how = int(rng.integers(5))
    if how == 0:
        data, note = pickle.dumps({"format": fmt, "x": evil}, protocol=int(rng.integers(2, 6))), "a raw pickle"
    elif how == 1:
        data, note = _torch_bytes({"format": fmt, "state_dict": {"w": evil}}), "torch.save zip with code inside"
    elif how == 2:
        data, note = _torch_bytes(evil, legacy=True), "legacy torch format with code"
    elif how == 3:
        data, note = _torch_bytes({"format": fmt, "model_config": evil, "meta": evil}), "code as the model config"
    else:
        data, note = pickle.dumps(evil, protocol=0), "a protocol-0 text pickle"
    return Case(f"{kind}/malicious-pickle", kind, data, "error", note, marker=marker)


# Keys without which a checkpoint cannot be used (the others are informative: epoch, val_tau, ...).
_REQUIRED_KEYS = {"checkpoint": {"model_config", "state_dict", "task", "split"},
                  "latency-checkpoint": {"kind", "config", "state_dict", "target", "arrays"}}


def _ckpt_mutation(rng, ctx, kind: str) -> Case:
    import torch

    base = ctx.accuracy_ckpt if kind == "checkpoint" else ctx.latency_ckpt
    ck = torch.load(io.BytesIO(base), weights_only=True)
    what = int(rng.integers(10))
    expect = "error"
    if kind == "checkpoint":
        cfgs = [{"d_model": 64, "n_heads": 4, "ffn_dim": 256}, {"depths": [2, 1, 1, 1]}, {"token_dim": 480},
                {"head": "latency", "static_dim": 4}, {"d_model": 10 ** 6, "ffn_dim": 10 ** 7},
                {"d_model": "wide"}, {"depths": [4, 1], "queries": [1]}, {"n_layers": 3}]
    else:
        cfgs = [{"d_model": 128, "n_heads": 4, "ffn_dim": 512}, {"depths": [1, 1, 1, 1]},
                {"token_dim": 192}, {"head_hidden": 10 ** 8}, {"d_model": -4}, {"queries": "abc"}]
    if what in (0, 1, 2):
        change = _pick(rng, cfgs)
        cfg_key = ("model_config",) if kind == "checkpoint" else ("config", "model")
        target = ck
        for k in cfg_key[:-1]:
            target = target.get(k, {}) if isinstance(target, dict) else {}
        if kind == "latency-checkpoint" and ck.get("kind") == "flops":   # the fallback predictor
            change = {"degree": _pick(rng, [3, 0, "two"])}
            target = ck["config"] = {**ck["config"], **change}
        else:
            target[cfg_key[-1]] = {**target.get(cfg_key[-1], {}), **change}
        note = f"a different model config {change}"
        cat = f"{kind}/foreign-config"
    elif what == 3:
        keys = [k for k in ck if k != "format"]
        k = _pick(rng, keys)
        del ck[k]
        note, cat = f"key {k!r} missing", f"{kind}/missing-keys"
        expect = "error" if k in _REQUIRED_KEYS[kind] else "any"
    elif what == 4:
        k = _pick(rng, [k for k in ck if k != "format"])
        ck[k] = _pick(rng, [None, 7, "text", [1, 2], {"nested": {}}, torch.zeros(3)])
        note, cat = f"key {k!r} of the wrong type", f"{kind}/wrong-types"
        expect = "error" if k in _REQUIRED_KEYS[kind] else "any"
    elif what == 5:
        sd = ck.get("state_dict")
        if isinstance(sd, dict) and sd:
            k = _pick(rng, list(sd))
            if rng.random() < 0.5:
                del sd[k]
                note = f"tensor {k} missing"
            else:
                sd[k] = torch.zeros(3, 3)
                note = f"tensor {k} of the wrong shape"
        else:
            ck["state_dict"] = {}
            note = "an empty state dict"
        cat = f"{kind}/state-dict"
    elif what == 6:
        ck["format"] = _pick(rng, ["narformer-latency-1", "narformer-ckpt-1", "narformer-ckpt-0", None, 1])
        note, cat = f"format {ck['format']!r}", f"{kind}/format"
        expect = "any" if ck["format"] == ("narformer-ckpt-1" if kind == "checkpoint" else "narformer-latency-1") else "error"
    elif what == 7:
        sd = ck.get("state_dict")
        if isinstance(sd, dict) and sd:
            k = _pick(rng, list(sd))
            sd[k] = torch.full_like(sd[k], float(_pick(rng, [float("nan"), float("inf")]))) \
                if sd[k].is_floating_point() else sd[k]
            note = f"tensor {k} filled with NaN/inf"
        else:
            note = "unchanged"
        expect, cat = "any", f"{kind}/nan-weights"
    elif what == 8:
        obj = _pick(rng, [torch.zeros(4), [1, 2, 3], None, "a string", {"state_dict": {}}, {"format": 3}])
        data = _torch_bytes(obj)
        return Case(f"{kind}/foreign-object", kind, data, "error", f"a torch file holding {type(obj).__name__}")
    else:
        other = ctx.latency_ckpt if kind == "checkpoint" else ctx.accuracy_ckpt
        return Case(f"{kind}/other-predictor", kind, other, "error",
                    "a latency checkpoint given as accuracy one" if kind == "checkpoint"
                    else "an accuracy checkpoint given as latency one")
    return Case(cat, kind, _torch_bytes(ck), expect, note)


def _ckpt_bytes_case(rng, ctx, kind: str) -> Case:
    base = ctx.accuracy_ckpt if kind == "checkpoint" else ctx.latency_ckpt
    what = int(rng.integers(4))
    if what == 0:
        cut = int(rng.integers(0, len(base)))
        return Case(f"{kind}/truncated", kind, base[:cut], "error", f"cut at {cut} of {len(base)} bytes")
    if what == 1:
        data = bytearray(base)
        for pos in rng.integers(0, len(data) * 8, int(rng.integers(1, 9))):
            data[pos // 8] ^= 1 << (pos % 8)
        return Case(f"{kind}/bit-flips", kind, bytes(data), "any", "bits flipped")
    if what == 2:
        n = int(rng.choice([0, 1, 16, 4096]))
        return Case(f"{kind}/random-bytes", kind, rng.integers(0, 256, n, dtype=np.uint8).tobytes(), "error",
                    f"{n} random bytes")
    return Case(f"{kind}/not-a-checkpoint", kind, _pick(rng, ctx.models).SerializeToString(), "error",
                "an ONNX model given as a checkpoint")


def _ckpt_generator(kind: str):
    """Cases for one checkpoint loader: 20 % malicious pickles, 40 % mutated real checkpoints,
    40 % other bytes."""
    def generate_case(rng, ctx) -> Case:
        r = rng.random()
        if r < 0.2:
            return _evil_case(rng, ctx, kind)
        if r < 0.6:
            return _ckpt_mutation(rng, ctx, kind)
        return _ckpt_bytes_case(rng, ctx, kind)
    return generate_case


g_ckpt = _ckpt_generator("checkpoint")
g_latency_ckpt = _ckpt_generator("latency-checkpoint")


# Weights: how many of every 100 cases each generator makes (ONNX first: the upload path is the
# main attack surface).
GENERATORS: dict[str, tuple[Callable, int]] = {
    "onnx-random": (g_onnx_random, 5), "onnx-text": (g_onnx_text, 2), "onnx-bitflip": (g_onnx_bitflip, 6),
    "onnx-truncated": (g_onnx_truncated, 5), "onnx-splice": (g_onnx_splice, 4),
    "onnx-dup-remove": (g_onnx_dup_remove, 3), "onnx-cycle": (g_onnx_cycle, 4),
    "onnx-huge-shape": (g_onnx_huge_shape, 5), "onnx-bad-dims": (g_onnx_bad_dims, 3),
    "onnx-unknown-op": (g_onnx_unknown_op, 4), "onnx-missing-init": (g_onnx_missing_init, 2),
    "onnx-external": (g_onnx_external, 3), "onnx-over-nodes": (g_onnx_over_nodes, 2),
    "onnx-oversize": (g_onnx_oversize, 1), "onnx-bad-attrs": (g_onnx_bad_attrs, 5),
    "onnx-types": (g_onnx_types, 3), "onnx-subgraph": (g_onnx_subgraph, 2), "onnx-valid": (g_onnx_valid, 2),
    "nb201-mutated": (g_nb201_mutated, 5), "nb201-structured": (g_nb201_structured, 4),
    "nb201-objects": (g_nb201_objects, 2), "nb101-matrix": (g_nb101_matrix, 5), "nb101-ops": (g_nb101_ops, 3),
    "csv-nb201": (g_csv_nb201, 6), "csv-nb101": (g_csv_nb101, 3),
    "checkpoint": (g_ckpt, 6), "latency-checkpoint": (g_latency_ckpt, 5),
}


def generate(n: int, seed: int = 0, ctx: "FuzzContext | None" = None, only: set[str] | None = None) -> list[Case]:
    """``n`` cases, the same for the same seed: generators drawn by weight, each case from its own
    child generator (so case k does not change when another generator changes)."""
    if ctx is None:
        raise ValueError("generate needs a FuzzContext (base models and checkpoints)")
    names = [k for k in GENERATORS if only is None or k in only]
    if not names:
        raise ValueError(f"no generators selected; known: {', '.join(GENERATORS)}")
    w = np.array([GENERATORS[k][1] for k in names], dtype=float)
    top = np.random.default_rng(seed)
    picks = top.choice(len(names), size=n, p=w / w.sum())
    children = np.random.SeedSequence(seed).spawn(n)
    return [GENERATORS[names[int(p)]][0](np.random.default_rng(s), ctx) for p, s in zip(picks, children)]


# ------------------------------------------------------------------ context
class FuzzContext:
    """Temporary folder, base models, the checkpoints mutations start from, and the predictors the
    app path uses (loaded once)."""

    def __init__(self, root: str | os.PathLike | None = None, seed: int = 0, timeout_s: float = 120.0):
        from .app_services import MAX_ONNX_BYTES, MAX_ONNX_NODES
        from .onnx_import import MAX_BYTES

        self._tmp = None if root else tempfile.TemporaryDirectory(prefix="narformer-fuzz-")
        self.root = Path(root or self._tmp.name)
        (self.root / "markers").mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        self.max_bytes_cli, self.max_bytes_app, self.max_nodes = MAX_BYTES, MAX_ONNX_BYTES, MAX_ONNX_NODES
        self.models = base_models(seed)
        self._id = 0
        self.good_onnx = self.root / "good.onnx"
        self.good_onnx.write_bytes(self.models[0].SerializeToString())
        # A small checkpoint of our own: mutations that leave it valid are evaluated on all 15,625
        # cells, which takes ~20 s with the shipped (d = 128) model on a busy 2-core machine.
        self.accuracy_ckpt_path = self._small_accuracy_checkpoint()
        self.accuracy_ckpt = self.accuracy_ckpt_path.read_bytes()
        self.latency_ckpt_path = self._latency_checkpoint()
        self.latency_ckpt = self.latency_ckpt_path.read_bytes()
        self._accuracy_predictor = self._latency_predictor = None

    # Checkpoints of our own where the shipped ones are absent (a fresh checkout): small, and
    # built the way training saves them.
    def _small_accuracy_checkpoint(self) -> Path:
        import torch

        from .model import NARFormer, NARFormerConfig
        from .train import CKPT_FORMAT

        cfg = NARFormerConfig(d_model=32, n_heads=2, ffn_dim=64, depths=(1, 1, 1, 1))
        torch.manual_seed(0)
        ck = {"format": CKPT_FORMAT, "kind": "best", "model_config": cfg.to_dict(), "train_config": {},
              "task": {"space": "nb201", "labels": "analog", "test_labels": "analog", "scheme": "nerf"},
              "split": {"train": torch.arange(10), "val": torch.arange(10, 15)},
              "state_dict": NARFormer(cfg).state_dict(), "epoch": 0, "val_tau": 0.0}
        p = self.root / "small_accuracy.pt"
        torch.save(ck, p)
        return p

    def _latency_checkpoint(self) -> Path:
        from .cli_latency import DEFAULT_CHECKPOINT

        if DEFAULT_CHECKPOINT.exists():
            return DEFAULT_CHECKPOINT
        from .latency.predictors import make_predictor
        from .onnx_import import load_onnx

        graphs, ms = [], []
        for k in range(12):
            g = load_onnx(_chain(2 + 3 * k).SerializeToString())
            graphs.append(g)
            ms.append(0.01 * (1 + k))
        p = make_predictor("flops").fit(graphs, ms)
        return p.save(self.root / "small_latency.pt")

    def next_id(self) -> int:
        self._id += 1
        return self._id

    @property
    def accuracy_predictor(self):
        if self._accuracy_predictor is None:
            from .app_services import load_predictor
            self._accuracy_predictor = load_predictor(str(self.accuracy_ckpt_path))
        return self._accuracy_predictor

    @property
    def latency_predictor(self):
        if self._latency_predictor is None:
            from .app_services import load_latency_predictor
            self._latency_predictor = load_latency_predictor(str(self.latency_ckpt_path))
        return self._latency_predictor

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> "FuzzContext":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------ files and command lines
TINY_MODEL = json.dumps({"d_model": 16, "n_heads": 2, "ffn_dim": 32, "depths": [1, 1, 1, 1]})
_FILE_NAMES = {"onnx": "model.onnx", "checkpoint": "checkpoint.pt", "latency-checkpoint": "latency.pt",
               "csv-nb201": NB201_CSV, "csv-nb101": NB101_CSV}


def write_case(case: Case, folder: Path) -> Path | None:
    """The case as a file in ``folder`` (None for kinds that are not files)."""
    name = _FILE_NAMES.get(case.kind)
    if name is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    if isinstance(case.data, Sparse):
        with open(p, "wb") as f:
            f.truncate(case.data.size)
    else:
        p.write_bytes(case.data)
    return p


def cli_commands(case: Case, path: Path | None, ctx: FuzzContext) -> list[list[str]]:
    """The command lines that read this case (empty for kinds no command reads)."""
    if case.kind == "onnx":
        return [["predict-latency", str(path), "--checkpoint", str(ctx.latency_ckpt_path), "--json"],
                ["measure", str(path), "--warmup", "0", "--repeats", "2", "--min-seconds", "0", "--json"]]
    if case.kind == "checkpoint":
        # analog labels are embedded (no shared data needed); a valid checkpoint predicts all cells.
        # --data-dir of an empty folder: the cross-source figures (shared CSVs) are skipped.
        return [["evaluate", "--checkpoint", str(path), "--labels", "analog", "--data-dir", str(path.parent),
                 "--json"]]
    if case.kind == "latency-checkpoint":
        return [["predict-latency", str(ctx.good_onnx), "--checkpoint", str(path), "--json"]]
    if case.kind == "csv-nb201":
        return [["search", "--algo", "random", "--budget", "3", "--labels", "nb201-val",
                 "--test-labels", "nb201-val", "--data-dir", str(path.parent), "--json"]]
    if case.kind == "csv-nb101":
        return [["train", "--space", "nb101", "--labels", "naslib-500", "--data-dir", str(path.parent),
                 "--train-size", "8", "--val-size", "4", "--epochs", "1", "--batch-size", "4",
                 "--model-json", TINY_MODEL, "--device", "cpu", "--out", str(path.parent / "run"),
                 "--fresh", "--quiet", "--json"]]
    return []


# ------------------------------------------------------------------ judging
# Phrases of Python's own exception messages: a user message never reads like this.
_RAW = re.compile(r"Traceback \(most recent call last\)|object has no attribute|unhashable type|"
                  r"is not subscriptable|object is not iterable|index out of range|unsupported operand|"
                  r"positional argument|'NoneType' object|referenced before assignment|"
                  r"not supported between instances|arg is an empty sequence|of an empty sequence")


class CaseTimeout(Exception):
    """A case ran past its time limit (raised from a timer signal)."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    if seconds <= 0 or not hasattr(signal, "SIGALRM") or \
            __import__("threading").current_thread() is not __import__("threading").main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise CaseTimeout(f"still running after {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def _capture_fd2():
    """What C libraries (onnxruntime, protobuf) write straight to file descriptor 2."""
    buf = {"text": ""}
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, io.UnsupportedOperation):
        yield buf
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield buf
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            buf["text"] = tmp.read().decode("utf-8", "replace")


@dataclass
class Run:
    """One input through one channel (a command line or the app path)."""

    channel: str
    argv: list[str] | None
    status: str              # "error" (refused with a clear message), "accepted", "crash"
    detail: str              # the message, or why it counts as a crash
    seconds: float
    exit_code: int | None = None


def _one_line(text: str, limit: int = 300) -> str:
    """The message: the last "error: ..." line, else the last line."""
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("error:")]
    s = (errs or lines or [""])[-1].strip()
    return s[:limit]


def _strict_json(text: str) -> str | None:
    """None if ``text`` is JSON without NaN/Infinity, else what is wrong."""
    def no_constants(c):
        raise ValueError(f"{c} in the output")
    try:
        json.loads(text, parse_constant=no_constants)
    except ValueError as e:
        return f"output is not strict JSON ({str(e)[:120]})"
    return None


def run_cli(argv: list[str], case: Case, timeout_s: float) -> Run:
    """``cli.main(argv)`` in this process, judged."""
    from .cli import main

    out, err = io.StringIO(), io.StringIO()
    code, crash = None, None
    t0 = time.perf_counter()
    with _capture_fd2() as fd2:
        try:
            with _time_limit(timeout_s), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except CaseTimeout as e:
            crash = f"timeout: {e}"
        except BaseException as e:   # noqa: B036 - every escape is a finding, KeyboardInterrupt aside
            if isinstance(e, KeyboardInterrupt):
                raise
            crash = f"uncaught {type(e).__name__}: {str(e)[:200]} at {_where(e)}"
    secs = time.perf_counter() - t0
    stdout, stderr = out.getvalue(), err.getvalue() + fd2["text"]
    return _judge_cli(argv, case, code, stdout, stderr, crash, secs)


def _where(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    own = [f for f in tb if "narformer_core" in f.filename and not f.filename.endswith("fuzz.py")]
    f = (own or tb or [None])[-1]
    return f"{Path(f.filename).name}:{f.lineno}" if f else "?"


def _judge_cli(argv, case, code, stdout, stderr, crash, secs) -> Run:
    channel = "cli:" + argv[0]
    if crash:
        return Run(channel, argv, "crash", crash, secs, code)
    if "Traceback (most recent call last)" in stdout + stderr:
        return Run(channel, argv, "crash", "a traceback was printed: " + _one_line(stderr), secs, code)
    if code == 0:
        if case.expect == "error":
            return Run(channel, argv, "crash", "exit status 0 for an input that must be refused", secs, code)
        bad = _strict_json(stdout)
        if bad:
            return Run(channel, argv, "crash", bad, secs, code)
        return Run(channel, argv, "accepted", "", secs, code)
    msg = _one_line(stderr)
    if not msg:
        return Run(channel, argv, "crash", f"exit status {code} with no message", secs, code)
    if _RAW.search(stderr):
        return Run(channel, argv, "crash", f"a raw Python message: {msg}", secs, code)
    if case.expect == "ok":
        return Run(channel, argv, "crash", f"a valid input was refused: {msg}", secs, code)
    return Run(channel, argv, "error", msg, secs, code)


def run_subprocess(argv: list[str], case: Case, timeout_s: float = 300.0) -> Run:
    """``python -m narformer_core argv`` as a real process, judged like the in-process run."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "narformer_core", *argv], cwd=PROJECT_ROOT, env=env,
                           capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return Run("subprocess:" + argv[0], argv, "crash", f"timeout after {timeout_s:g} s",
                   time.perf_counter() - t0)
    r = _judge_cli(argv, case, p.returncode, p.stdout, p.stderr, None, time.perf_counter() - t0)
    r.channel = "subprocess:" + argv[0]
    return r


# ------------------------------------------------------------------ the app path
class _Refused(Exception):
    pass


def _guarded(step: str, fn, *args, allowed=True):
    """Run one step of the page; a GraphError/ValueError with a message is a refusal."""
    from .graph import GraphError

    try:
        return fn(*args)
    except (GraphError, ValueError) as e:
        if not allowed:
            raise AssertionError(f"{step} raised {type(e).__name__}: {str(e)[:200]} (the page does not catch it)")
        msg = str(e).strip()
        if not msg or _RAW.search(msg):
            raise AssertionError(f"{step}: {type(e).__name__} with an unclear message {msg[:200]!r}")
        raise _Refused(f"{step}: {msg.splitlines()[0][:300]}") from None


def _app_onnx(case: Case, ctx: FuzzContext, workdir: Path) -> str:
    from . import app_services as svc
    from . import plots

    if isinstance(case.data, Sparse):   # the app is handed bytes: its own limit plus a little
        data = bytes(ctx.max_bytes_app + (case.data.size - ctx.max_bytes_cli))
    else:
        data = case.data
    g = _guarded("import", svc.import_onnx, data)
    _guarded("tokens", svc.network_token_matrix, g, allowed=False)
    _guarded("DAG", plots.cell_dag, g, allowed=False)
    _guarded("static features", svc.static_features, g)
    ms = _guarded("latency prediction", svc.predict_latency, ctx.latency_predictor, [g])
    if not np.all(np.isfinite(ms)):
        raise AssertionError(f"the latency prediction is {ms.tolist()} (not a finite number)")
    old = os.environ.get("NARFORMER_LATENCY_DB")
    os.environ["NARFORMER_LATENCY_DB"] = str(workdir / "latency.db")
    try:
        _guarded("measure", svc.measure_and_store, data, g, "fuzz", "fuzz case", 3)
    finally:
        if old is None:
            os.environ.pop("NARFORMER_LATENCY_DB", None)
        else:
            os.environ["NARFORMER_LATENCY_DB"] = old
    return f"accepted: {len(g)} nodes"


def _app_nb201(case: Case, ctx: FuzzContext) -> str:
    from . import app_services as svc
    from .spaces import nb201

    g = _guarded("nb201.to_graph", nb201.to_graph, case.data)
    _guarded("tokens", svc.cell_token_matrix, g, allowed=False)
    v = _guarded("prediction", svc.predict_graph, ctx.accuracy_predictor, g)
    if not math.isfinite(v):
        raise AssertionError(f"the predicted accuracy is {v}")
    _guarded("index", nb201.index_of, g.ops[1:7], allowed=False)
    return "accepted"


def _app_nb101(case: Case, ctx: FuzzContext) -> str:
    from . import app_services as svc

    matrix, ops = case.data
    g = _guarded("nb101_graph", svc.nb101_graph, matrix, ops)
    _guarded("tokens", svc.cell_token_matrix, g, allowed=False)
    return "accepted"


def _app_checkpoint(case: Case, ctx: FuzzContext, path: Path) -> str:
    from . import app_services as svc

    if case.kind == "checkpoint":
        p = _guarded("load_predictor", svc.load_predictor, str(path))
        from .spaces import nb201

        v = _guarded("prediction", svc.predict_graph, p, nb201.to_graph(svc.nb201_default_cell()))
        if not math.isfinite(v):
            raise AssertionError(f"the predicted accuracy is {v}")
    else:
        p = _guarded("load_latency_predictor", svc.load_latency_predictor, str(path))
        from .onnx_import import load_onnx
        ms = _guarded("latency prediction", svc.predict_latency, p, [load_onnx(ctx.good_onnx)])
        if not np.all(np.isfinite(ms)):
            raise AssertionError(f"the latency prediction is {ms.tolist()} (not a finite number)")
    return "accepted"


def run_app(case: Case, ctx: FuzzContext, path: Path | None, workdir: Path) -> Run | None:
    """The case through what the app does with it (None for kinds the app never reads)."""
    if case.kind in ("csv-nb201", "csv-nb101"):
        return None
    t0 = time.perf_counter()
    status, detail = "accepted", ""
    with _capture_fd2():
        try:
            with _time_limit(ctx.timeout_s):
                if case.kind == "onnx":
                    detail = _app_onnx(case, ctx, workdir)
                elif case.kind == "nb201":
                    detail = _app_nb201(case, ctx)
                elif case.kind == "nb101":
                    detail = _app_nb101(case, ctx)
                else:
                    detail = _app_checkpoint(case, ctx, path)
        except _Refused as e:
            status, detail = "error", str(e)
        except AssertionError as e:
            status, detail = "crash", str(e)
        except CaseTimeout as e:
            status, detail = "crash", f"timeout: {e}"
        except KeyboardInterrupt:
            raise
        except BaseException as e:   # noqa: B036
            status, detail = "crash", f"uncaught {type(e).__name__}: {str(e)[:200]} at {_where(e)}"
    if status == "accepted" and case.expect == "error":
        status, detail = "crash", "the app accepted an input that must be refused"
    if status == "error" and case.expect == "ok":
        status, detail = "crash", f"a valid input was refused: {detail}"
    return Run("app:" + case.kind, None, status, detail, time.perf_counter() - t0)


# ------------------------------------------------------------------ one case
@dataclass
class Outcome:
    case: Case
    runs: list[Run] = field(default_factory=list)

    @property
    def status(self) -> str:
        """crash if any channel crashed, else accepted if any accepted, else error."""
        sts = {r.status for r in self.runs}
        if "crash" in sts or self.code_ran:
            return "crash"
        return "accepted" if "accepted" in sts else "error"

    @property
    def code_ran(self) -> bool:
        return bool(self.case.marker) and Path(self.case.marker).exists()

    def to_dict(self) -> dict:
        c = self.case
        return {"category": c.category, "kind": c.kind, "expect": c.expect, "note": c.note,
                "status": self.status, "code_ran": self.code_ran,
                "runs": [{"channel": r.channel, "status": r.status, "detail": r.detail,
                          "exit_code": r.exit_code, "seconds": round(r.seconds, 3)} for r in self.runs]}


def run_case(case: Case, ctx: FuzzContext, cli: bool = True, app: bool = True,
             subprocess_run: bool = False) -> Outcome:
    """Push one case through the command line (in process, and as a real process when
    ``subprocess_run``) and the app path; its files live in a folder of their own, removed after."""
    work = ctx.root / f"case-{ctx.next_id()}"
    work.mkdir(parents=True)
    out = Outcome(case)
    try:
        path = write_case(case, work)
        if cli:
            for argv in cli_commands(case, path, ctx):
                out.runs.append(run_cli(argv, case, ctx.timeout_s))
        if subprocess_run:
            for argv in cli_commands(case, path, ctx)[:1]:
                out.runs.append(run_subprocess(argv, case))
        if app:
            r = run_app(case, ctx, path, work)
            if r is not None:
                out.runs.append(r)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def summarize(outcomes: list[Outcome]) -> dict:
    """Per category: cases tried, refused with a clear error, accepted, crashes; plus totals."""
    table: dict[str, dict] = {}
    for o in outcomes:
        row = table.setdefault(o.case.category, {"tried": 0, "clear_errors": 0, "accepted": 0, "crashes": 0, "runs": 0})
        row["tried"] += 1
        row["runs"] += len(o.runs)
        row[{"error": "clear_errors", "accepted": "accepted", "crash": "crashes"}[o.status]] += 1
    total = {k: sum(r[k] for r in table.values()) for k in ("tried", "clear_errors", "accepted", "crashes", "runs")}
    channels: dict[str, dict] = {}
    for o in outcomes:
        for r in o.runs:
            c = channels.setdefault(r.channel, {"runs": 0, "error": 0, "accepted": 0, "crash": 0})
            c["runs"] += 1
            c[r.status] += 1
    return {"categories": dict(sorted(table.items())), "total": total, "channels": dict(sorted(channels.items()))}
