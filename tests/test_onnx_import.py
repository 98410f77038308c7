"""ONNX / torch -> ArchGraph: round trips, rewiring, canonical attributes, and bad input."""
from __future__ import annotations

import io
import os

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from narformer_core.graph import GraphError
from narformer_core.onnx_import import OnnxImportError, from_torch, load_onnx


# ------------------------------------------------------------------ helpers
def _w(name, shape, dtype=np.float32):
    return helper.make_tensor(name, TensorProto.FLOAT, list(shape),
                              np.zeros(int(np.prod(shape)), dtype=dtype).tolist())


def _model(nodes, inputs, outputs, inits=(), opset=17, extra_opsets=()):
    g = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(inits))
    ops = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    return helper.make_model(g, opset_imports=ops)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


class Small(nn.Module):
    """conv(+bias) -> relu -> bn (not foldable) -> pool -> residual add -> concat -> gap -> linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        y = self.pool(self.bn(self.relu(self.conv1(x))))
        r = self.relu(self.conv2(y)) + y
        z = torch.cat([r, y], dim=1)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(z, 1), 1))


@pytest.fixture(scope="module")
def small_graph():
    return from_torch(Small().eval(), torch.randn(2, 3, 16, 16))


def _small_onnx_bytes(dynamic=False):
    buf = io.BytesIO()
    kw = {"dynamic_axes": {"x": {0: "N"}}, "input_names": ["x"]} if dynamic else {}
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Small().eval(), (torch.randn(2, 3, 16, 16),), buf, dynamo=False, **kw)
    return buf.getvalue()


# ------------------------------------------------------------------ round trips
def test_torch_round_trip_ops_wiring_and_shapes(small_graph):
    g = small_graph
    assert g.space == "onnx"
    assert g.ops == ["input", "Conv", "Relu", "BatchNormalization", "MaxPool", "Conv", "Relu", "Add",
                     "Concat", "GlobalAveragePool", "Flatten", "Gemm"]
    assert g.nodes[0].shape == (2, 3, 16, 16)
    add = g.nodes[7]
    assert set(add.inputs) == {6, 4}            # residual: conv branch and the pooled tensor
    assert g.nodes[8].inputs == (7, 4)          # concat in argument order
    assert g.nodes[8].shape == (2, 16, 8, 8)
    assert g.nodes[11].shape == (2, 5)
    assert g.outputs() == [11]
    conv = g.nodes[1]
    assert conv.attrs["kernel_shape"] == (3, 3) and conv.attrs["pads"] == (1, 1, 1, 1)
    assert conv.attrs["weight_shapes"] == ((8, 3, 3, 3), (8,))
    assert conv.attrs["weight_positions"] == (1, 2)
    assert conv.attrs["has_bias"] == 1
    assert g.nodes[11].attrs["weight_shapes"] == ((5, 16), (5,))
    assert g.nodes[3].attrs["weight_shapes"] == ((8,),) * 4      # scale, B, mean, var
    assert isinstance(g.nodes[3].attrs["epsilon"], float)
    m = g.meta
    assert m["batch_size"] == 2 and m["unknown_ops"] == [] and m["opset"] >= 13
    torch_params = sum(p.numel() for p in Small().parameters())
    assert m["n_params"] == torch_params + 16                     # + BN running mean and var


def test_bn_after_conv_is_folded_into_a_biased_conv():
    m = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU()).eval()
    g = from_torch(m, torch.randn(1, 3, 8, 8))
    assert g.ops == ["input", "Conv", "Relu"]
    assert g.nodes[1].attrs["has_bias"] == 1
    assert g.nodes[1].shape == (1, 4, 6, 6)


def test_conv_without_bias_and_grouped_asymmetric_kernel():
    m = nn.Sequential(nn.Conv2d(4, 4, (1, 7), stride=(1, 2), padding=(0, 3), groups=4, bias=False)).eval()
    g = from_torch(m, torch.randn(1, 4, 9, 9))
    c = g.nodes[1].attrs
    assert c["has_bias"] == 0 and c["group"] == 4 and c["kernel_shape"] == (1, 7)
    assert c["strides"] == (1, 2) and c["pads"] == (0, 3, 0, 3) and c["weight_shapes"] == ((4, 1, 1, 7),)
    assert g.nodes[1].shape == (1, 4, 9, 5)


def test_from_torch_writes_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir(tmp_path))
    from_torch(nn.Sequential(nn.Linear(4, 2)), torch.randn(3, 4))
    assert set(os.listdir(tmp_path)) == before


def test_from_torch_failure_is_an_import_error():
    class Bad(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom in forward")

    with pytest.raises(OnnxImportError, match="could not export the torch module Bad to ONNX: boom"):
        from_torch(Bad(), torch.randn(1, 2))


def test_path_and_bytes_give_the_same_graph(tmp_path, small_graph):
    data = _small_onnx_bytes()
    p = tmp_path / "small.onnx"
    p.write_bytes(data)
    a, b = load_onnx(p), load_onnx(data)
    assert a == b == small_graph                 # same structure, attrs, shapes
    assert load_onnx(onnx.load_from_string(data)) == a
    assert a.meta["source"] == "small.onnx"


def test_dynamic_batch_is_set_before_inference():
    data = _small_onnx_bytes(dynamic=True)
    g1 = load_onnx(data)
    assert g1.nodes[0].shape == (1, 3, 16, 16) and g1.nodes[-1].shape == (1, 5)
    g4 = load_onnx(data, batch_size=4)
    assert g4.meta["batch_size"] == 4
    assert all(n.shape[0] == 4 for n in g4.nodes if n.shape)


def test_batch_size_conflicting_with_a_fixed_one_is_refused():
    with pytest.raises(OnnxImportError, match="fixes the batch size of input .* to 2; batch_size=3"):
        load_onnx(_small_onnx_bytes(), batch_size=3)
    with pytest.raises(OnnxImportError, match="positive integer"):
        load_onnx(_small_onnx_bytes(), batch_size=0)


# ------------------------------------------------------------------ rewiring and canonical attrs
def test_identity_and_constant_are_removed_and_rewired():
    nodes = [
        helper.make_node("Identity", ["x"], ["x2"]),
        helper.make_node("Relu", ["x2"], ["r"]),
        helper.make_node("Constant", [], ["c"], value=helper.make_tensor("cv", TensorProto.FLOAT, [1, 4, 1, 1], [1, 2, 3, 4])),
        helper.make_node("Identity", ["c"], ["c2"]),
        helper.make_node("Add", ["r", "c2"], ["a"]),
        helper.make_node("Identity", ["a"], ["a2"]),
        helper.make_node("Sigmoid", ["a2"], ["y"]),
    ]
    m = _model(nodes, [_vi("x", [1, 4, 5, 5])], [_vi("y", [1, 4, 5, 5])])
    g = load_onnx(m.SerializeToString())
    assert g.ops == ["input", "Relu", "Add", "Sigmoid"]
    assert [n.inputs for n in g.nodes] == [(), (0,), (1,), (2,)]
    assert g.nodes[2].attrs["weight_shapes"] == ((1, 4, 1, 1),)    # the Constant acts as a weight
    assert g.meta["removed"] == {"Identity": 3, "Constant": 1}
    assert g.meta["n_params"] == 4


def test_unsorted_node_list_is_sorted():
    nodes = [helper.make_node("Sigmoid", ["r"], ["y"]), helper.make_node("Relu", ["x"], ["r"])]
    g = load_onnx(_model(nodes, [_vi("x", [1, 3])], [_vi("y", [1, 3])]).SerializeToString())
    assert g.ops == ["input", "Relu", "Sigmoid"] and g.nodes[2].inputs == (1,)
    assert g.nodes[2].shape == (1, 3)


def test_cycle_is_an_import_error():
    nodes = [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Sigmoid", ["b"], ["y"])]
    m = _model(nodes, [_vi("x", [1, 3])], [_vi("y", [1, 3])])
    with pytest.raises(OnnxImportError, match="cycle"):
        load_onnx(m.SerializeToString())


def test_undefined_tensor_is_an_import_error():
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"])]
    m = _model(nodes, [_vi("x", [1, 3])], [_vi("y", [1, 3])])
    with pytest.raises(OnnxImportError, match="reads 'ghost', which no node, graph input or initializer defines"):
        load_onnx(m.SerializeToString())


def test_defaults_filled_and_auto_pad_made_explicit():
    explicit = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], strides=[1, 1],
                                pads=[0, 0, 0, 0], dilations=[1, 1], group=1)
    implicit = helper.make_node("Conv", ["x", "w"], ["y"])
    gs = [load_onnx(_model([n], [_vi("x", [1, 2, 6, 6])], [_vi("y", [1, 4, 4, 4])],
                           [_w("w", (4, 2, 3, 3))]).SerializeToString()) for n in (explicit, implicit)]
    assert gs[0] == gs[1]                         # spelling out defaults does not change the graph
    assert gs[1].nodes[1].attrs["kernel_shape"] == (3, 3) and gs[1].nodes[1].attrs["has_bias"] == 0

    same = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")
    g = load_onnx(_model([same], [_vi("x", [1, 2, 8, 8])], [_vi("y", [1, 4, 4, 4])],
                         [_w("w", (4, 2, 3, 3))]).SerializeToString())
    assert g.nodes[1].attrs["pads"] == (0, 0, 1, 1)   # total pad 1 per dim, the extra at the end
    assert g.nodes[1].shape == (1, 4, 4, 4)


def test_constant_arguments_are_folded_into_attrs():
    nodes = [helper.make_node("Pad", ["x", "p"], ["a"], mode="constant"),
             helper.make_node("Clip", ["a", "lo", "hi"], ["b"]),
             helper.make_node("Reshape", ["b", "s"], ["c"]),
             helper.make_node("Transpose", ["c"], ["y"])]
    inits = [helper.make_tensor("p", TensorProto.INT64, [8], [0, 0, 1, 1, 0, 0, 1, 1]),
             helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("hi", TensorProto.FLOAT, [], [6.0]),
             helper.make_tensor("s", TensorProto.INT64, [3], [1, 2, 36])]
    g = load_onnx(_model(nodes, [_vi("x", [1, 2, 4, 4])], [_vi("y", [36, 2, 1])], inits).SerializeToString())
    pad, clip, reshape, tr = g.nodes[1:]
    assert pad.attrs["pads"] == (0, 0, 1, 1, 0, 0, 1, 1) and pad.attrs["mode"] == "constant"
    assert clip.attrs["min"] == 0.0 and clip.attrs["max"] == 6.0 and "weight_shapes" not in clip.attrs
    assert reshape.attrs["shape"] == (1, 2, 36) and reshape.shape == (1, 2, 36)
    assert tr.attrs["perm"] == (2, 1, 0) and tr.shape == (36, 2, 1)    # default perm made explicit
    assert g.meta["n_params"] == 0


def test_custom_op_is_kept_and_listed_as_unknown():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("FancyAct", ["c"], ["y"], domain="custom", alpha=0.5)]
    m = _model(nodes, [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 4, 8, 8])], [_w("w", (4, 3, 3, 3))],
               extra_opsets=[("custom", 1)])
    g = load_onnx(m.SerializeToString())
    assert g.ops == ["input", "Conv", "FancyAct"]
    assert g.meta["unknown_ops"] == ["FancyAct"]
    assert g.nodes[2].attrs == {"alpha": 0.5, "domain": "custom"}
    assert g.nodes[2].shape == (1, 4, 8, 8)       # from the declared graph output, batch set to 1


def test_subgraph_attribute_is_summarised():
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [], [_vi("t", [1, 3])])
    else_g = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["e"])], "else", [], [_vi("e", [1, 3])])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)]
    m = _model(nodes, [_vi("x", [1, 3]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
               [_vi("y", [1, 3])])
    g = load_onnx(m.SerializeToString())
    assert g.ops == ["input", "input", "If"]
    assert g.nodes[2].attrs["then_branch"] == "graph 'then' with 1 nodes"


def test_max_nodes():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    data = _model(nodes, [_vi("x", [1, 3])], [_vi("y", [1, 3])]).SerializeToString()
    with pytest.raises(OnnxImportError, match="has 2 operators, over the limit of 1"):
        load_onnx(data, max_nodes=1)


# ------------------------------------------------------------------ bad input
def test_random_bytes():
    data = np.random.default_rng(0).bytes(2000)
    with pytest.raises(OnnxImportError, match="the given data is not a valid ONNX model: the bytes are not an ONNX protobuf"):
        load_onnx(data)


def test_truncated_real_model():
    data = _small_onnx_bytes()
    with pytest.raises(OnnxImportError, match="not a valid ONNX model") as e:
        load_onnx(data[: len(data) // 2])
    assert "truncated" in str(e.value)


def test_empty_bytes_and_empty_file(tmp_path):
    with pytest.raises(OnnxImportError, match="it is empty"):
        load_onnx(b"")
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    with pytest.raises(OnnxImportError, match="empty.onnx is not a valid ONNX model: it is empty"):
        load_onnx(p)


def test_oversized_is_refused_before_parsing(tmp_path):
    data = _small_onnx_bytes()
    with pytest.raises(OnnxImportError, match=r"over the limit of 0\.0 MB \(100 bytes\)"):
        load_onnx(data, max_bytes=100)
    p = tmp_path / "big.onnx"
    p.write_bytes(data)
    with pytest.raises(OnnxImportError, match="big.onnx is .* MB, over the limit"):
        load_onnx(p, max_bytes=100)
    assert load_onnx(data, max_bytes=None).meta["n_ops"] == 11


def test_text_file(tmp_path):
    p = tmp_path / "notes.onnx"
    p.write_text("this is not a model\njust some text\n")
    with pytest.raises(OnnxImportError, match="notes.onnx is not a valid ONNX model: .*looks like a text file"):
        load_onnx(p)


def test_protobuf_that_is_not_a_model():
    # A valid protobuf of another message: parses, but holds no graph.
    data = helper.make_tensor("t", TensorProto.FLOAT, [2], [1.0, 2.0]).SerializeToString()
    with pytest.raises(OnnxImportError, match="not a valid ONNX model"):
        load_onnx(data)


def test_checker_rejects_invalid_model():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])]
    m = _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 4, 6, 6])], [_w("w", (4, 3, 3, 3))])
    m.ir_version = 0
    with pytest.raises(OnnxImportError, match="not a valid ONNX model: .*ir_version"):
        load_onnx(m.SerializeToString())


def test_shape_inference_failure_is_an_import_error():
    # the checker accepts it, but (1, 3) and (1, 4) do not broadcast
    nodes = [helper.make_node("Add", ["x", "z"], ["y"])]
    m = _model(nodes, [_vi("x", [1, 3]), _vi("z", [1, 4])], [_vi("y", [1, 3])])
    with pytest.raises(OnnxImportError, match="shape inference failed: .*Incompatible dimensions"):
        load_onnx(m.SerializeToString())


def test_missing_file_directory_and_wrong_type(tmp_path):
    with pytest.raises(OnnxImportError, match="no such file"):
        load_onnx(tmp_path / "nope.onnx")
    with pytest.raises(OnnxImportError, match="is not a file"):
        load_onnx(tmp_path)
    with pytest.raises(OnnxImportError, match="takes a file path or the model's bytes, not int"):
        load_onnx(42)


def test_import_error_is_a_graph_error():
    assert issubclass(OnnxImportError, GraphError)
