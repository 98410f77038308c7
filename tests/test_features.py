"""Static features: per-op formulas by hand, and the published ResNet-18 / VGG-16 figures."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from narformer_core.features import per_node_features, static_features
from narformer_core.graph import ArchGraph, GraphError, Node
from narformer_core.onnx_import import from_torch
from narformer_core.spaces import nb201


def _g(*nodes, meta=None):
    return ArchGraph([Node("input", (), {}, nodes[0])] + list(nodes[1:]), space="onnx", meta=meta)


def _row(g, i):
    return per_node_features(g)[i]


# ------------------------------------------------------------------ formulas, by hand
def test_conv_plain_grouped_depthwise():
    for group in (1, 2, 8):
        conv = Node("Conv", (0,), {"kernel_shape": (3, 3), "group": group, "has_bias": 1,
                                   "weight_shapes": ((16, 8 // group, 3, 3), (16,)),
                                   "weight_positions": (1, 2)}, (1, 16, 10, 10))
        r = _row(_g((1, 8, 10, 10), conv), 1)
        assert r["flops"] == 1600 * (8 // group) * 9
        assert r["params"] == 16 * (8 // group) * 9 + 16
        assert r["memory_access"] == 1600 + r["params"]
    # without weight shapes (hand-built graphs): input channels / group x kernel
    conv = Node("Conv", (0,), {"kernel_shape": (1, 7), "group": 4}, (2, 8, 5, 5))
    assert _row(_g((2, 8, 5, 5), conv), 1)["flops"] == 2 * 8 * 25 * (8 // 4) * 7


def test_conv_transpose():
    ct = Node("ConvTranspose", (0,), {"kernel_shape": (2, 2), "strides": (2, 2), "group": 1,
                                      "weight_shapes": ((4, 6, 2, 2),), "weight_positions": (1,)},
              (1, 6, 8, 8))
    r = _row(_g((1, 4, 4, 4), ct), 1)
    assert r["flops"] == 64 * 6 * 4            # every input element scatters C_out x k values
    assert r["params"] == 96


def test_gemm_matmul_and_batchnorm():
    gemm = Node("Gemm", (0,), {"transB": 1, "weight_shapes": ((10, 32), (10,)), "weight_positions": (1, 2)}, (4, 10))
    r = _row(_g((4, 32), gemm), 1)
    assert r["flops"] == 4 * 10 * 32 and r["params"] == 330
    # attention-style MatMul of two activations: (2, 5, 8) x (2, 8, 5)
    g = _g((2, 5, 8), Node("Transpose", (0,), {"perm": (0, 2, 1)}, (2, 8, 5)),
           Node("MatMul", (0, 1), {}, (2, 5, 5)))
    assert _row(g, 2)["flops"] == 50 * 8 and _row(g, 2)["params"] == 0
    assert _row(g, 1)["flops"] == 0                       # data movement
    bn = Node("BatchNormalization", (0,), {"weight_shapes": ((6,),) * 4, "weight_positions": (1, 2, 3, 4)},
              (1, 6, 4, 4))
    r = _row(_g((1, 6, 4, 4), bn), 1)
    assert r["params"] == 12                      # scale and bias, not the running statistics
    assert r["flops"] == 96


def test_pools_elementwise_views_and_reductions():
    g = _g((1, 4, 8, 8),
           Node("MaxPool", (0,), {"kernel_shape": (3, 3), "strides": (2, 2)}, (1, 4, 4, 4)),
           Node("Relu", (1,), {}, (1, 4, 4, 4)),
           Node("Add", (1, 2), {}, (1, 4, 4, 4)),
           Node("Concat", (2, 3), {"axis": 1}, (1, 8, 4, 4)),
           Node("GlobalAveragePool", (4,), {}, (1, 8, 1, 1)),
           Node("Flatten", (5,), {"axis": 1}, (1, 8)),
           Node("Softmax", (6,), {"axis": 1}, (1, 8)),
           Node("ReduceMean", (4,), {"axes": (2, 3)}, (1, 8, 1, 1)))
    rows = per_node_features(g)
    assert [r["flops"] for r in rows] == [0, 64 * 9, 64, 64, 0, 128, 0, 24, 128]
    assert [r["memory_access"] for r in rows] == [0, 64, 64, 64, 128, 8, 0, 8, 8]   # Flatten is a view
    f = static_features(g)
    assert f["flops"] == sum(r["flops"] for r in rows) and f["params"] == 0
    assert f["memory_access"] == sum(r["memory_access"] for r in rows)
    assert f["batch_size"] == 1


def test_unknown_dims_and_batch_from_meta():
    g = _g((-1, 4), Node("Relu", (0,), {}, (-1, 4)), Node("Mystery", (1,), {}, (-1, 4)), meta={"batch_size": 8})
    rows = per_node_features(g)
    assert rows[1]["flops"] == 0 and rows[1]["shape_known"] is False
    assert static_features(g)["batch_size"] == 8


def test_cell_graph_is_refused():
    cell = nb201.to_graph(nb201.parse("|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_1x1~2|"))
    with pytest.raises(GraphError, match="need output shapes"):
        static_features(cell)


def test_small_torch_module_params_match_exactly():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(8),
                      nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    g = from_torch(m, torch.randn(1, 3, 8, 8))
    f = static_features(g)
    assert f["params"] == sum(p.numel() for p in m.parameters())
    # conv1 + relu + bn + depthwise conv + gemm, counted by hand
    assert f["flops"] == 512 * 27 + 512 + 512 + 288 * 9 + 10 * 288


# ------------------------------------------------------------------ published figures
class _Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.body(x) + self.short(x))


def _resnet18():
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        layers += [_Basic(cin, cout, 2 if stage else 1), _Basic(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000))


def test_resnet18_figures():
    m = _resnet18().eval()
    g = from_torch(m, torch.randn(1, 3, 224, 224))
    f = static_features(g)
    assert f["flops"] == pytest.approx(1.82e9, rel=0.01)
    assert f["params"] == pytest.approx(11.69e6, rel=0.01)
    # torch folds each BatchNorm into its conv (scale into the weights, shift as a bias), so
    # the graph has one value per BN channel fewer than the module: 4,800 of 11.7 M.
    assert f["params"] == pytest.approx(sum(p.numel() for p in m.parameters()), rel=1e-3)
    assert f["batch_size"] == 1
    assert 1e7 < f["memory_access"] < 5e7


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _vgg16_graph() -> ArchGraph:
    """VGG-16 at 224x224 written out as a graph (exporting it would move 550 MB of weights)."""
    nodes = [Node("input", (), {}, (1, 3, 224, 224))]
    c, s = 3, 224

    def add(op, attrs, shape):
        nodes.append(Node(op, (len(nodes) - 1,), attrs, shape))

    for v in _VGG16:
        if v == "M":
            s //= 2
            add("MaxPool", {"kernel_shape": (2, 2), "strides": (2, 2)}, (1, c, s, s))
        else:
            add("Conv", {"kernel_shape": (3, 3), "pads": (1, 1, 1, 1), "group": 1, "has_bias": 1,
                         "weight_shapes": ((v, c, 3, 3), (v,)), "weight_positions": (1, 2)}, (1, v, s, s))
            c = v
            add("Relu", {}, (1, c, s, s))
    add("Flatten", {"axis": 1}, (1, c * s * s))
    k = c * s * s
    for i, n in enumerate((4096, 4096, 1000)):
        add("Gemm", {"transB": 1, "has_bias": 1, "weight_shapes": ((n, k), (n,)), "weight_positions": (1, 2)}, (1, n))
        if i < 2:
            add("Relu", {}, (1, n))
        k = n
    return ArchGraph(nodes, space="onnx")


def test_vgg16_figures():
    f = static_features(_vgg16_graph())
    assert f["flops"] == pytest.approx(15.5e9, rel=0.01)
    assert f["params"] == pytest.approx(138.4e6, rel=0.01)
    layers, c = [], 3
    with torch.device("meta"):                    # counts parameters without allocating them
        for v in _VGG16:
            if v == "M":
                continue
            layers.append(nn.Conv2d(c, v, 3, padding=1))
            c = v
        layers += [nn.Linear(512 * 49, 4096), nn.Linear(4096, 4096), nn.Linear(4096, 1000)]
        torch_params = sum(p.numel() for p in nn.Sequential(*layers).parameters())
    assert f["params"] == torch_params == 138_357_544
