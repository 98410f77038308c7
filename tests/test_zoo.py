"""The latency model zoo: every family builds, runs, exports to valid ONNX that onnxruntime runs;
specs are deterministic, JSON-friendly, spread evenly and distinct."""
from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from narformer_core.latency import zoo

SEED = 11


def _small(spec: dict) -> dict:
    """The spec at its family's smallest valid resolution, to keep the tests fast."""
    return dict(spec, resolution=32 if spec["family"] == "nasbench201" else 64)


@pytest.fixture(scope="module")
def drawn() -> list[dict]:
    return zoo.sample_specs(2 * len(zoo.FAMILIES), SEED)


@pytest.fixture(scope="module")
def pairs(drawn) -> dict[str, tuple[dict, dict]]:
    """Two different specs per family, both at the family's small resolution."""
    out = collections.defaultdict(list)
    for s in drawn:
        out[s["family"]].append(_small(s))
    return {f: tuple(v) for f, v in out.items()}


@pytest.fixture(scope="module")
def exported(pairs) -> dict[str, tuple[bytes, bytes]]:
    return {f: (zoo.export_onnx(a), zoo.export_onnx(b)) for f, (a, b) in pairs.items()}


def _session(blob: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])


def _signature(blob: bytes):
    g = onnx.load_from_string(blob).graph
    return ([n.op_type for n in g.node], sorted(tuple(t.dims) for t in g.initializer))


def test_families_are_the_ten_nnlqp_families():
    assert zoo.FAMILIES == ("alexnet", "efficientnet_b0", "googlenet", "mnasnet", "mobilenet_v2",
                            "mobilenet_v3", "nasbench201", "resnet18", "squeezenet", "vgg16")


def test_import_does_not_load_torch():
    import subprocess
    import sys
    code = "import sys, narformer_core.latency.zoo as z; z.FAMILIES; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("family", zoo.FAMILIES)
def test_family_builds_runs_and_exports(family, pairs, exported):
    spec = pairs[family][0]
    classes = zoo.NB201_CLASSES if family == "nasbench201" else zoo.NUM_CLASSES
    module = zoo.build_module(spec)
    assert not module.training
    x = np.random.default_rng(0).standard_normal(zoo.input_shape(spec)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert expected.shape == (1, classes)

    blob = exported[family][0]
    model = onnx.load_from_string(blob)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    assert model.graph.initializer, "weights must be inside the ONNX bytes"
    ops = {n.op_type for n in model.graph.node}
    # BN follows a conv everywhere except NB201's last BN-ReLU, so folding removes it.
    assert ("BatchNormalization" in ops) == (family == "nasbench201")
    assert "Identity" not in ops, "equal initializers were merged behind Identity nodes"

    (got,) = _session(blob).run(None, {"input": x})
    assert got.shape == (1, classes)
    assert np.isfinite(got).all()
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * scale)


@pytest.mark.parametrize("family", zoo.FAMILIES)
def test_two_specs_of_a_family_give_different_graphs(family, pairs, exported):
    a, b = pairs[family]
    assert zoo.spec_id(a) != zoo.spec_id(b)
    assert _signature(exported[family][0]) != _signature(exported[family][1])


def test_export_is_byte_identical_and_leaves_torch_rng_alone(pairs, exported):
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    spec = pairs["squeezenet"][0]
    assert zoo.export_onnx(spec) == exported["squeezenet"][0]
    assert torch.equal(torch.random.get_rng_state(), before)


def test_exports_from_several_threads_at_once_match_the_sequential_ones(pairs, exported):
    # The app runs each page script in its own thread; torch's exporter state and the global RNG
    # that seeds the weights are process-wide (the Architecture page once failed with
    # "GLOBALS.in_onnx_export must be False" when two runs exported together).
    import threading

    from narformer_core.onnx_import import from_torch

    spec = pairs["squeezenet"][0]
    results, errors = [], []

    def export_zoo():
        try:
            results.append(zoo.export_onnx(spec))
        except Exception as e:  # collected: an exception in a thread would not fail the test
            errors.append(repr(e))

    def export_upload():
        try:
            from_torch(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval(),
                       torch.zeros(1, 3, 16, 16))
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=f) for f in (export_zoo, export_upload) * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [exported["squeezenet"][0]] * 3


def test_sample_spec_is_deterministic_and_json_serialisable():
    for family in zoo.FAMILIES:
        a = zoo.sample_spec(family, np.random.default_rng(3))
        b = zoo.sample_spec(family, np.random.default_rng(3))
        assert a == b
        assert a["family"] == family and a["batch_size"] == 1
        text = json.dumps(a, sort_keys=True)
        assert json.loads(text) == a
        assert zoo.input_shape(a) == (1, 3, a["resolution"], a["resolution"])
        d = zoo.describe(a)
        assert d.startswith(f"{family} @{a['resolution']}px")


def test_sample_specs_round_robin_unique_deterministic_and_in_budget(drawn):
    specs = drawn
    n = len(specs)
    assert [s["family"] for s in specs] == [zoo.FAMILIES[i % 10] for i in range(n)]
    assert collections.Counter(s["family"] for s in specs) == {f: n // 10 for f in zoo.FAMILIES}
    assert len({zoo.spec_id(s) for s in specs}) == n
    assert zoo.sample_specs(n, SEED) == specs
    assert zoo.sample_specs(12, SEED) == specs[:12]
    assert zoo.sample_specs(10, SEED + 1) != specs[:10]
    for s in specs:
        assert zoo.MIN_MACS <= zoo.estimate_macs(s) <= zoo.MAX_MACS, zoo.describe(s)
    # Families vary in more than resolution: within a family no two knob sets are the same.
    for f in zoo.FAMILIES:
        knobs = [json.dumps({k: v for k, v in s.items() if k != "resolution"}, sort_keys=True)
                 for s in specs if s["family"] == f]
        assert len(set(knobs)) == len(knobs)


def test_sample_specs_on_a_subset_of_families():
    specs = zoo.sample_specs(4, seed=0, families=("vgg16", "nasbench201"))
    assert [s["family"] for s in specs] == ["vgg16", "nasbench201", "vgg16", "nasbench201"]
    assert all(s["resolution"] in zoo.NB201_RESOLUTIONS for s in specs if s["family"] == "nasbench201")


def test_spec_id_is_stable_and_order_free():
    spec = {"family": "vgg16", "resolution": 96, "batch_size": 1, "width": 0.25,
            "depths": [1, 2, 2, 2, 2], "hidden": 256}
    assert zoo.spec_id(spec) == zoo.spec_id(dict(reversed(list(spec.items()))))
    assert zoo.spec_id(spec) == "dc9ea2d51052"
    assert zoo.spec_id(dict(spec, hidden=512)) != zoo.spec_id(spec)


def test_nasbench201_cell_ops_appear_in_the_graph():
    cell = "|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|"
    spec = {"family": "nasbench201", "resolution": 32, "batch_size": 1, "arch": cell,
            "channels": 8, "cells_per_stage": 1}
    g = onnx.load_from_string(zoo.export_onnx(spec)).graph
    kernels = collections.Counter()
    for n in g.node:
        if n.op_type == "Conv":
            k = next(a.ints for a in n.attribute if a.name == "kernel_shape")
            kernels[tuple(k)] += 1
    # stem 3x3, 3 cells x (one 3x3 + one 1x1), 2 reduction blocks x (two 3x3 + a 1x1 shortcut)
    assert kernels == {(3, 3): 1 + 3 + 4, (1, 1): 3 + 2}
    ops = collections.Counter(n.op_type for n in g.node)
    assert ops["AveragePool"] == 3 + 2  # the cell's avg_pool_3x3, the shortcuts' 2x2 pools
    assert ops["Mul"] == 2 * 3  # each "none" edge multiplies by zero


@pytest.mark.parametrize("bad, words", [
    ({"family": "lenet", "resolution": 96}, "unknown model family"),
    ({"family": "vgg16", "resolution": 96}, "lacks the knob"),
    ({"family": "vgg16", "resolution": 100, "batch_size": 1}, "multiple of 32"),
])
def test_bad_specs_get_clear_errors(bad, words):
    with pytest.raises(ValueError, match=words):
        zoo.build_module(bad)


def test_bad_family_and_stage_lists_are_rejected():
    with pytest.raises(ValueError, match="unknown model family"):
        zoo.sample_spec("lenet", np.random.default_rng(0))
    spec = zoo.sample_spec("resnet18", np.random.default_rng(0))
    with pytest.raises(ValueError, match="one value per stage"):
        zoo.export_onnx(dict(spec, depths=[1, 2]))
