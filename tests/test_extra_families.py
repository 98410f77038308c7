"""Training-only families (ViT, MLP-Mixer): each builds, exports to valid ONNX that onnxruntime
runs like torch, imports to the architecture graph with matrix products over many rows, draws
deterministically within the zoo's budget, counts its MACs as the project's graph features do,
and reaches the structure-set and re-timing paths through the one family dispatcher."""
from __future__ import annotations

import collections
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from narformer_core.features import static_features
from narformer_core.latency import extra_families as xf
from narformer_core.latency import outside_zoo, zoo
from narformer_core.latency.families import all_families, network_module, sampling_module
from narformer_core.latency.pretrain import build_structure_set
from narformer_core.onnx_import import load_onnx

ROOT = Path(__file__).resolve().parents[1]

SMALL = {
    "vit": dict(patch=16, width=64, depth=2, head_width=32, mlp_ratio=2, class_token=True, qkv_bias=False),
    "mlp_mixer": dict(patch=16, width=64, depth=2, token_ratio=0.5, mlp_ratio=2),
}


def _small(family: str, **change) -> dict:
    return {"family": family, "resolution": 96, "batch_size": 1, **SMALL[family], **change}


@pytest.fixture(scope="module")
def exported() -> dict[str, bytes]:
    return {f: xf.export_onnx(_small(f)) for f in xf.FAMILIES}


def test_families_are_their_own_kind_and_dispatch():
    assert set(SMALL) == set(xf.FAMILIES)
    assert not set(xf.FAMILIES) & (set(zoo.FAMILIES) | set(outside_zoo.FAMILIES))
    assert len(set(all_families())) == len(all_families()) == 10 + 6 + 2
    assert network_module("vit") is xf and network_module(_small("mlp_mixer")) is xf
    assert network_module("resnet18") is zoo and network_module("convnext") is outside_zoo
    with pytest.raises(ValueError, match="unknown network family 'lenet'"):
        network_module("lenet")
    assert sampling_module(["vit", "mlp_mixer"]) is xf
    with pytest.raises(ValueError, match="cannot share one draw"):
        sampling_module(["vit", "resnet18"])
    with pytest.raises(ValueError, match="unknown training-only family"):
        xf.sample_spec("convnext", np.random.default_rng(0))


def test_import_does_not_load_torch():
    code = "import sys, narformer_core.latency.families as f; f.all_families(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("family", xf.FAMILIES)
def test_family_builds_exports_runs_and_imports(family, exported):
    spec = _small(family)
    module = xf.build_module(spec)
    assert not module.training
    x = np.random.default_rng(0).standard_normal(xf.input_shape(spec)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert expected.shape == (1, xf.NUM_CLASSES) and np.isfinite(expected).all()
    # Activations near unit scale, not shrunk towards denormals (whose arithmetic is slow).
    assert 0.05 < float(np.abs(expected).std()) < 50

    blob = exported[family]
    model = onnx.load_from_string(blob)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert {"LayerNormalization", "MatMul", "Erf", "Transpose"} <= set(ops), sorted(ops)
    if family == "vit":
        assert "Softmax" in ops and ops["MatMul"] >= 2 * 6   # per block: qkv, scores, sum, proj, 2 MLP
    assert "Identity" not in ops, "equal initializers were merged behind Identity nodes"
    assert "Shape" not in ops, "shape arithmetic left in the graph"

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    (got,) = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"]).run(None, {"input": x})
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(expected).max())))

    graph = load_onnx(blob, max_bytes=None)
    assert graph.meta.get("unknown_ops") == []
    assert tuple(graph.nodes[-1].shape) == (1, xf.NUM_CLASSES)
    # What the family is for: matrix products over many rows (36 patches at 96 px, patch 16).
    rows = [int(np.prod(n.shape[:-1])) for n in graph.nodes if n.op == "MatMul"]
    assert rows and max(rows) >= 36


@pytest.mark.parametrize("family", xf.FAMILIES)
def test_mac_estimate_agrees_with_the_graph_features(family, exported):
    """The sampler's budget check (torch hooks + the attention products) and the project's own
    per-operator count on the exported graph are two independent counts of the same network."""
    spec = _small(family)
    flops = static_features(load_onnx(exported[family], max_bytes=None))["flops"]
    assert flops == pytest.approx(xf.estimate_macs(spec), rel=0.05)


def test_sampling_is_deterministic_in_budget_and_described():
    for family in xf.FAMILIES:
        a = xf.sample_spec(family, np.random.default_rng(3))
        assert a == xf.sample_spec(family, np.random.default_rng(3))
        assert a["family"] == family and a["batch_size"] == 1 and a["resolution"] in xf.RESOLUTIONS
        assert json.loads(json.dumps(a, sort_keys=True)) == a
        assert zoo.MIN_MACS <= xf.estimate_macs(a) <= zoo.MAX_MACS and xf.estimate_params(a) <= zoo.MAX_PARAMS
        assert xf.describe(a).startswith(f"{family} @{a['resolution']}px, patch {a['patch']}")
    specs = xf.sample_specs(4, seed=5)
    assert [s["family"] for s in specs] == list(xf.FAMILIES) * 2
    assert len({xf.spec_id(s) for s in specs}) == 4
    assert xf.sample_specs(2, seed=5) == specs[:2]
    assert "3 heads of 64" in xf.describe(_small("vit", width=192, head_width=64))
    assert "token MLP 18 for 36 tokens" in xf.describe(_small("mlp_mixer"))


@pytest.mark.parametrize("change, words", [
    ({"resolution": 100}, "multiple of 32"),
    ({"patch": 64}, "does not divide"),
    ({"head_width": 48}, "must divide the width"),
    ({"depth": 0}, "positive integer"),
])
def test_bad_specs_get_clear_errors(change, words):
    with pytest.raises(ValueError, match=words):
        xf.build_module(_small("vit", **change))
    missing = _small("mlp_mixer")
    del missing["token_ratio"]
    with pytest.raises(ValueError, match="lacks the knob"):
        xf.estimate_macs(missing)


def test_structure_set_of_training_only_families(tmp_path):
    out = tmp_path / "vit.jsonl.gz"
    res = build_structure_set(out, 2, seed=1, families=("vit", "mlp_mixer"), exclude=[], progress=False)
    assert res["written"] == 2
    records = [json.loads(line) for line in gzip.open(out, "rt")]
    assert [r["family"] for r in records] == ["vit", "mlp_mixer"]
    assert all(r["kind"] == "structure" and r["description"] == xf.describe(r["spec"]) for r in records)
    with pytest.raises(ValueError, match="cannot share one draw"):
        build_structure_set(tmp_path / "mixed.jsonl.gz", 2, seed=1, families=("vit", "alexnet"), exclude=[],
                            progress=False)
    with pytest.raises(ValueError, match="outside-zoo families are the test"):
        build_structure_set(tmp_path / "test.jsonl.gz", 2, seed=1, families=("convnext",), exclude=[],
                            progress=False)


def test_cli_structure_set_names_a_bad_family(tmp_path):
    cmd = [sys.executable, "-m", "narformer_core", "latency", "structure-set", "--out", str(tmp_path / "x.jsonl.gz"),
           "--n", "2", "--seed", "0", "--exclude", "--families", "vit,lenet"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0 and "unknown network family 'lenet'" in out.stderr
    assert "Traceback" not in out.stderr
