"""480-value network tokens: slot layout, hand-checked values, reductions, padding, collate."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from narformer_core.graph import ArchGraph, GraphError, Node
from narformer_core.network_tokenizer import (NETWORK_DEPTH_DIM, NETWORK_TOKEN_DIM, OP_TYPES, SLOTS,
                                              STATIC_DIM, STATIC_KEYS, UNKNOWN_ID, collate,
                                              encode_static, get_op_id, pack_dims, pack_pads,
                                              perm_number, slot_labels, slot_values, tokenize_network)
from narformer_core.onnx_import import from_torch, load_onnx
from narformer_core.spaces import nb201
from narformer_core.tokenizer import encode_scalar

W = 32


def E(x, scheme="nerf"):
    return encode_scalar(float(x), 16, scheme).astype(np.float32)


def slot(tokens, node, name):
    k = SLOTS.index(name)
    return tokens.nodes[node, k * W:(k + 1) * W]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, (1, 7), stride=2, padding=(0, 3), groups=3, bias=False)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(6 * 8 * 4, 4)

    def forward(self, x):
        y = self.relu(self.conv(x))
        return self.fc(torch.flatten(y + y.mean(dim=1, keepdim=True), 1)).t()


@pytest.fixture(scope="module")
def net():
    g = from_torch(Net().eval(), torch.randn(2, 3, 16, 8))
    return g, tokenize_network(g)


def test_constants_and_labels():
    assert NETWORK_TOKEN_DIM == 480 == len(SLOTS) * W
    assert len(SLOTS) == 15 and SLOTS[0] == "op type" and SLOTS[-1] == "width"
    labels = slot_labels()
    assert len(labels) == 480 and labels[0] == "op type" and labels[32] == "self position"
    assert labels[479] == "width" and labels.count("padding") == 32
    assert STATIC_DIM == 4 * W and NETWORK_DEPTH_DIM == 480
    assert OP_TYPES[0] == "input" and get_op_id("input") == 0
    assert get_op_id("Conv") != get_op_id("Relu") != UNKNOWN_ID
    assert get_op_id("NoSuchOp") == UNKNOWN_ID == get_op_id("Relu", domain="custom")
    for op in ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "HardSwish", "Clip",
               "GlobalAveragePool", "Resize", "Softmax", "Gather", "Shape", "Dropout"):
        assert op in OP_TYPES


def test_shapes_and_dtypes(net):
    g, t = net
    assert t.nodes.shape == (len(g) + 1, 480) and t.nodes.dtype == np.float32
    assert t.depth.shape == (NETWORK_DEPTH_DIM,) and t.static.shape == (STATIC_DIM,)
    assert t.n_nodes == len(g)
    np.testing.assert_allclose(t.nodes[-1], encode_scalar(1e5, 240).astype(np.float32))
    np.testing.assert_allclose(t.depth, encode_scalar(float(len(g)), 240).astype(np.float32))
    assert np.isfinite(t.nodes).all()


def test_conv_token_hand_checked(net):
    g, t = net
    i = g.ops.index("Conv")
    conv = g.nodes[i]
    assert conv.attrs["kernel_shape"] == (1, 7) and conv.shape == (2, 6, 8, 4)
    np.testing.assert_allclose(slot(t, i, "op type"), E(OP_TYPES.index("Conv")))
    np.testing.assert_allclose(slot(t, i, "self position"), E(i))
    np.testing.assert_allclose(slot(t, i, "source positions"), E(0))       # reads the input node
    # kernel 1x7: mean 4 minus (7 - 1) / 64, documented in pack_dims
    np.testing.assert_allclose(slot(t, i, "kernel shape"), E(4 - 6 / 64))
    np.testing.assert_allclose(slot(t, i, "stride"), E(2))
    np.testing.assert_allclose(slot(t, i, "padding"), E(pack_pads((0, 3, 0, 3))))
    assert pack_pads((0, 3, 0, 3)) == pack_dims((0, 3)) == 1.5 - 3 / 64
    np.testing.assert_allclose(slot(t, i, "dilation"), E(1))
    np.testing.assert_allclose(slot(t, i, "groups"), E(3))
    np.testing.assert_allclose(slot(t, i, "bias"), E(0))        # has no bias: E(0), not empty
    assert not slot(t, i, "perm").any() and not slot(t, i, "output padding").any()
    for name, v in zip(("batch", "channel", "height", "width"), (2, 6, 8, 4)):
        np.testing.assert_allclose(slot(t, i, name), E(v))


def test_missing_attributes_are_zero_vectors(net):
    g, t = net
    i = g.ops.index("Relu")
    for name in SLOTS[3:11]:
        assert not slot(t, i, name).any(), name
    f = g.ops.index("Flatten")                      # rank-2 output: height and width empty
    assert g.nodes[f].shape == (2, 192)
    np.testing.assert_allclose(slot(t, f, "channel"), E(192))
    assert not slot(t, f, "height").any() and not slot(t, f, "width").any()
    gemm = g.ops.index("Gemm")
    np.testing.assert_allclose(slot(t, gemm, "bias"), E(1))
    tr = g.ops.index("Transpose")
    np.testing.assert_allclose(slot(t, tr, "perm"), E(2 + 1 / 2))        # perm (1, 0) of 2 dims


def test_source_positions(net):
    g, t = net
    np.testing.assert_allclose(slot(t, 0, "source positions"), E(-1))
    add = g.ops.index("Add")
    preds = sorted(set(g.nodes[add].inputs))
    assert len(preds) == 2
    np.testing.assert_allclose(slot(t, add, "source positions"), E(preds[0]) + E(preds[1]), atol=1e-6)


def test_unknown_custom_op_tokenizes():
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Wobble", ["r"], ["y"], domain="custom", k=3)]
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 5, 5])  # noqa: E731
    m = helper.make_model(helper.make_graph(nodes, "g", [vi("x")], [vi("y")]),
                          opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)])
    g = load_onnx(m.SerializeToString())
    assert g.meta["unknown_ops"] == ["Wobble"]
    t = tokenize_network(g)
    assert t.nodes.shape == (4, 480)
    np.testing.assert_allclose(slot(t, 2, "op type"), E(UNKNOWN_ID))
    np.testing.assert_allclose(slot(t, 2, "channel"), E(4))


def test_global_pool_kernel_is_its_input_size():
    g = from_torch(nn.Sequential(nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1)), torch.randn(1, 3, 5, 7))
    assert g.ops[-1] == "GlobalAveragePool"
    assert slot_values(g)[-1, SLOTS.index("kernel shape")] == pack_dims((5, 7))


# ------------------------------------------------------------------ reductions
def test_pack_dims():
    assert pack_dims((3, 3)) == 3 and pack_dims((5,)) == 5 and pack_dims((2, 2, 2)) == 2
    assert pack_dims((1, 7)) != pack_dims((7, 1))
    assert 3.5 < pack_dims((1, 7)) < 4.5 and 3.5 < pack_dims((7, 1)) < 4.5   # near the mean size
    assert math.isnan(pack_dims(()))
    two = {pack_dims((a, b)) for a in range(1, 32) for b in range(1, 32)}
    assert len(two) == 31 * 31
    three = {pack_dims((a, b, c)) for a, b, c in itertools.product(range(1, 12), repeat=3)}
    assert len(three) == 11 ** 3


def test_pack_pads():
    assert pack_pads((1, 1, 1, 1)) == 1 and pack_pads((0, 0, 0, 0)) == 0
    same, mirror = pack_pads((0, 0, 1, 1)), pack_pads((1, 1, 0, 0))
    assert same != mirror and abs(same - 0.5) < 0.01 and abs(mirror - 0.5) < 0.01
    allpads = {pack_pads(p) for p in itertools.product(range(6), repeat=4)}
    assert len(allpads) == 6 ** 4


def test_perm_number():
    assert perm_number((0, 1, 2, 3)) == 4 and perm_number((0,)) == 1
    values = [perm_number(p) for n in range(1, 6) for p in itertools.permutations(range(n))]
    assert len(set(values)) == len(values)
    assert all(len(p) <= perm_number(p) < len(p) + 1 for p in itertools.permutations(range(4)))
    assert math.isnan(perm_number((0, 0, 1)))


def test_pad_op_uses_spatial_pads():
    g = ArchGraph([Node("input", (), {}, (1, 2, 4, 4)),
                   Node("Pad", (0,), {"pads": (0, 0, 1, 2, 0, 0, 1, 2)}, (1, 2, 6, 8))], space="onnx")
    assert slot_values(g)[1, SLOTS.index("padding")] == pack_pads((1, 2, 1, 2)) == pack_dims((1, 2))


def test_higher_rank_shapes_fold_into_height():
    g = ArchGraph([Node("input", (), {}, (1, 2, 3, 4, 5)), Node("Relu", (0,), {}, (1, 2, 3, 4, 5)),
                   Node("Relu", (1,), {}, (-1, 7))], space="onnx")
    v = slot_values(g)
    np.testing.assert_array_equal(v[1, 11:], [1, 2, 12, 5])
    assert np.isnan(v[2, 11]) and v[2, 12] == 7 and np.isnan(v[2, 13:]).all()
    t = tokenize_network(g, static={k: 1 for k in STATIC_KEYS})
    assert not slot(t, 2, "batch").any()            # unknown dim -> empty slot


# ------------------------------------------------------------------ static features and batches
def test_encode_static_is_log_scaled():
    f = {"batch_size": 8, "flops": 1.8e9, "params": 11.7e6, "memory_access": 2.5e7}
    code = encode_static(f)
    assert code.shape == (STATIC_DIM,) and code.dtype == np.float32
    np.testing.assert_allclose(code[W:2 * W], E(math.log10(1 + 1.8e9)), atol=1e-6)
    np.testing.assert_allclose(code[:W], E(math.log10(9)), atol=1e-6)
    with pytest.raises(ValueError, match="missing"):
        encode_static({"flops": 1})
    with pytest.raises(ValueError, match="non-negative"):
        encode_static({**f, "params": -1})


def test_static_override_and_default(net):
    g, t = net
    assert t.static[:W].tolist() == pytest.approx(E(math.log10(3)).tolist(), abs=1e-6)  # batch 2
    f = {"batch_size": 1, "flops": 0, "params": 0, "memory_access": 0}
    t2 = tokenize_network(g, static=f)
    np.testing.assert_array_equal(t2.nodes, t.nodes)
    np.testing.assert_allclose(t2.static, encode_static(f))


def test_trans_scheme_and_bad_scheme(net):
    g, _ = net
    t = tokenize_network(g, scheme="trans")
    np.testing.assert_allclose(slot(t, 0, "source positions"), E(-1, "trans"))
    with pytest.raises(ValueError, match="unknown encoding scheme"):
        tokenize_network(g, scheme="fourier")


def test_collate_pads_and_masks(net):
    g, t = net
    small = ArchGraph([Node("input", (), {}, (1, 3)), Node("Relu", (0,), {}, (1, 3))], space="onnx")
    ts = tokenize_network(small)
    depth, nodes, mask, static = collate([t, ts])
    T = len(g) + 1
    assert depth.shape == (2, NETWORK_DEPTH_DIM) and static.shape == (2, STATIC_DIM)
    assert nodes.shape == (2, T, 480) and mask.shape == (2, T) and mask.dtype == bool
    assert mask[0].all() and mask[1].tolist() == [True] * 3 + [False] * (T - 3)
    np.testing.assert_array_equal(nodes[1, :3], ts.nodes)
    assert not nodes[1, 3:].any()
    np.testing.assert_array_equal(nodes[0], t.nodes)
    with pytest.raises(ValueError):
        collate([])


def test_bad_graphs():
    with pytest.raises(GraphError, match="takes an ArchGraph"):
        tokenize_network("resnet")
    cell = nb201.to_graph(nb201.parse("|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_1x1~2|"))
    with pytest.raises(GraphError, match="need output shapes"):
        tokenize_network(cell)
    t = tokenize_network(cell, static={k: 0 for k in STATIC_KEYS})   # structure only still works
    assert t.nodes.shape == (9, 480)
