"""Network families outside the latency zoo: each builds, exports to valid ONNX that onnxruntime
runs like torch, imports to the architecture graph, shares no name with the zoo, draws
deterministically; the outside-set script measures, resumes and scores a checkpoint end to end."""
from __future__ import annotations

import collections
import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from narformer_core.graph import ArchGraph
from narformer_core.latency import outside_zoo as oz
from narformer_core.latency import zoo
from narformer_core.onnx_import import load_onnx

ROOT = Path(__file__).resolve().parents[1]
ZOO_DATA = ROOT / "assets" / "latency" / "zoo_cpu.jsonl.gz"

# The smallest sensible variant of each family, so that building and exporting stay fast.
SMALL = {
    "convnext": dict(width=0.25, depths=[1, 1, 2, 1], kernel=7, mlp_ratio=2),
    "densenet": dict(growth=12, bn_size=2, depths=[2, 3, 2, 2], stem_kernel=3),
    "inception_v3": dict(width=0.25, n_a=1, n_c=1, n_e=1, factor_kernel=7),
    "regnet": dict(depth=10, w0=16, wa=12.0, wm=2.5, group_width=8, se=True),
    "resnext": dict(width=0.25, groups=8, group_width=2, depths=[1, 1, 1, 1], stem_kernel=3),
    "shufflenet_v2": dict(width=0.5, depths=[2, 2, 2], kernels=[3, 5, 7]),
}


def _small(family: str) -> dict:
    return {"family": family, "resolution": 128 if family == "inception_v3" else 64, "batch_size": 1,
            **SMALL[family]}


@pytest.fixture(scope="module")
def exported() -> dict[str, bytes]:
    return {f: oz.export_onnx(_small(f)) for f in oz.FAMILIES}


def test_no_family_is_a_zoo_family():
    assert set(SMALL) == set(oz.FAMILIES) and len(oz.FAMILIES) == 6
    assert not set(oz.FAMILIES) & set(zoo.FAMILIES)
    # Not even as a part of a name (resnet18 / resnext, mobilenet / shufflenet are different).
    for a in oz.FAMILIES:
        for b in zoo.FAMILIES:
            assert a not in b and b not in a, (a, b)
    with pytest.raises(ValueError, match="is a zoo family"):
        oz.sample_spec("resnet18", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown outside-zoo family"):
        oz.export_onnx({"family": "lenet", "resolution": 64})


def test_import_does_not_load_torch():
    import subprocess
    import sys
    code = "import sys, narformer_core.latency.outside_zoo as o; o.FAMILIES; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


# Operators each family is there for: what the zoo's networks do not show the predictors.
SIGNATURE_OPS = {
    "convnext": {"LayerNormalization", "MatMul", "Erf", "Transpose", "ReduceMean"},
    "densenet": {"BatchNormalization", "Concat", "AveragePool"},
    "inception_v3": {"Concat", "AveragePool", "MaxPool"},
    "regnet": {"Conv", "Add", "Sigmoid", "Mul"},
    "resnext": {"Conv", "Add"},
    "shufflenet_v2": {"Slice", "Concat", "Reshape", "Transpose"},
}


@pytest.mark.parametrize("family", oz.FAMILIES)
def test_family_builds_exports_runs_and_imports(family, exported):
    spec = _small(family)
    module = oz.build_module(spec)
    assert not module.training
    x = np.random.default_rng(0).standard_normal(oz.input_shape(spec)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert expected.shape == (1, oz.NUM_CLASSES)

    blob = exported[family]
    model = onnx.load_from_string(blob)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert SIGNATURE_OPS[family] <= set(ops), sorted(ops)
    assert "Identity" not in ops, "equal initializers were merged behind Identity nodes"
    assert "Shape" not in ops, "shape arithmetic left in the graph"

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    (got,) = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"]).run(None, {"input": x})
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(expected).max())))

    graph = load_onnx(blob, max_bytes=None)
    assert isinstance(graph, ArchGraph)
    assert graph.meta.get("unknown_ops") == []
    assert graph.nodes[0].op == "input" and tuple(graph.nodes[-1].shape) == (1, oz.NUM_CLASSES)
    assert len(graph) >= 20


def test_family_specific_structure(exported):
    def convs(fam):
        g = onnx.load_from_string(exported[fam]).graph
        return [{a.name: (tuple(a.ints) if a.ints else a.i) for a in n.attribute}
                for n in g.node if n.op_type == "Conv"]

    # Grouped 3x3 convs (neither 1 group nor depthwise) in ResNeXt and RegNet.
    assert any(c["group"] == 8 and c["kernel_shape"] == (3, 3) for c in convs("resnext"))
    assert any(1 < c.get("group", 1) and c["kernel_shape"] == (3, 3) for c in convs("regnet"))
    # Inception-v3's factorised 1x7 / 7x1 and split 1x3 / 3x1 kernels.
    kernels = {c["kernel_shape"] for c in convs("inception_v3")}
    assert {(1, 7), (7, 1), (1, 3), (3, 1)} <= kernels
    # ConvNeXt's 4x4 stride-4 patchify stem and depthwise 7x7.
    cx = convs("convnext")
    assert cx[0]["kernel_shape"] == (4, 4) and cx[0]["strides"] == (4, 4)
    assert any(c["kernel_shape"] == (7, 7) and c["group"] > 1 for c in cx)
    # DenseNet: a dense layer reads the Concat of all earlier maps of its block (3 layers -> 3 inputs).
    g = onnx.load_from_string(exported["densenet"]).graph
    assert max(len(n.input) for n in g.node if n.op_type == "Concat") == 1 + 3


def test_sampling_is_deterministic_in_budget_and_json_friendly():
    for family in oz.FAMILIES:
        a = oz.sample_spec(family, np.random.default_rng(3))
        assert a == oz.sample_spec(family, np.random.default_rng(3))
        assert a["family"] == family and a["batch_size"] == 1 and a["resolution"] in oz.RESOLUTIONS
        assert json.loads(json.dumps(a, sort_keys=True)) == a
        assert zoo.MIN_MACS <= oz.estimate_macs(a) <= zoo.MAX_MACS
        assert oz.estimate_params(a) <= zoo.MAX_PARAMS
        assert oz.describe(a).startswith(f"{family} @{a['resolution']}px")
        if family == "regnet":
            assert len(oz.regnet_stages(a)) == 4
    fams = ("shufflenet_v2", "regnet")
    specs = oz.sample_specs(4, seed=5, families=fams)
    assert [s["family"] for s in specs] == list(fams) * 2
    assert len({oz.spec_id(s) for s in specs}) == 4
    assert oz.sample_specs(4, seed=5, families=fams) == specs
    assert oz.sample_specs(2, seed=5, families=fams) == specs[:2]
    assert oz.sample_specs(2, seed=6, families=fams) != specs[:2]


def test_regnet_width_rule():
    # RegNetX-200MF's published parameters give its published widths 24-56-152-368, depths 1-1-4-7.
    stages = oz.regnet_stages(dict(depth=13, w0=24, wa=36.44, wm=2.49, group_width=8))
    assert [s[0] for s in stages] == [24, 56, 152, 368]
    assert [s[1] for s in stages] == [1, 1, 4, 7]


@pytest.mark.parametrize("change, words", [
    ({"resolution": 100}, "multiple of 32"),
    ({"resolution": 96, "family": "inception_v3"}, "at least 128"),
    ({"depths": [1, 2]}, "one value per stage"),
    ({"depths": [1, 0, 1, 1]}, "positive integers"),
])
def test_bad_specs_get_clear_errors(change, words):
    spec = {**_small("resnext"), **change}
    if spec["family"] == "inception_v3":
        spec = {**_small("inception_v3"), **change}
    with pytest.raises(ValueError, match=words):
        oz.build_module(spec)
    missing = _small("convnext")
    del missing["mlp_ratio"]
    with pytest.raises(ValueError, match="lacks the knob"):
        oz.estimate_macs(missing)


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_outside_zoo", ROOT / "scripts" / "bench_outside_zoo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_script_measures_resumes_and_scores_a_checkpoint(tmp_path, capsys):
    from narformer_core.latency.dataset import _rewrite, load_dataset, load_records
    from narformer_core.latency.predictors import FlopsRegression, load_predictor

    # A tiny training set and checkpoint: 30 zoo networks, the FLOPs regression saved as a checkpoint.
    train = tmp_path / "train.jsonl.gz"
    _rewrite(train, load_records(ZOO_DATA)[:30])
    _, tg, ty = load_dataset(train, column="cpu_median_ms")
    ckpt = FlopsRegression().fit(tg, ty)
    ckpt.meta.update({"column": "cpu_median_ms", "families": list(zoo.FAMILIES)})
    ckpt.save(tmp_path / "tiny.pt")
    assert load_predictor(tmp_path / "tiny.pt").kind == "flops"

    out = tmp_path / "outside.jsonl.gz"
    argv = ["--per-family", "1", "--families", "shufflenet_v2,convnext", "--out", str(out),
            "--checkpoint", str(tmp_path / "tiny.pt"), "--train-data", str(train),
            "--warmup", "0", "--repeats", "2", "--min-seconds", "0", "--quiet", "--json"]
    script = _load_script()
    assert script.main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_networks"] == 2 and res["build"]["added"] == 2 and res["column"] == "cpu_median_ms"
    assert res["families"] == ["convnext", "shufflenet_v2"]
    names = [r["predictor"] for r in res["results"]]
    assert names[0].startswith("FLOPs regression (tiny.pt)") and names[2] == "MACs alone (rank only)"
    for r in res["results"]:
        assert r["all"]["n"] == 2 and set(r["per_family"]) == {"convnext", "shufflenet_v2"}
        assert -1.0 <= r["all"]["kendall_tau"] <= 1.0
    # The checkpoint is the same regression fitted on the same data: the two rows agree.
    assert res["results"][0]["all"] == res["results"][1]["all"]
    for net in res["networks"]:
        assert net["measured_ms"] > 0 and net["checkpoint_ms"] > 0
        assert net["checkpoint_ms"] == pytest.approx(net["flops_regression_ms"])

    # The file is a latency data set in the zoo file's line format.
    records = load_records(out)
    assert [r["family"] for r in records] == ["shufflenet_v2", "convnext"]
    with gzip.open(ZOO_DATA, "rt") as f:
        zoo_keys = set(json.loads(f.readline()))
    assert all(set(r) == zoo_keys for r in records)
    assert all(r["measure_options"] == {"threads": 1, "warmup": 0, "repeats": 2, "min_seconds": 0.0,
                                        "cpu_time": True} for r in records)
    # A later pass rebuilds the outside families with their own module (same graphs).
    from narformer_core.latency.dataset import remeasure
    again_path = tmp_path / "outside_pass.jsonl.gz"
    rm = remeasure(out, again_path, 2, measure={"warmup": 0, "repeats": 2, "min_seconds": 0.0, "cpu_time": False},
                   progress=False)
    assert rm["added"] == 2 and rm["graph_mismatches"] == 0
    assert all(r["platform"]["threads"] == 1 and r["platform"]["batch_size"] == 1 for r in records)

    # A second run resumes: nothing new is measured, the figures come from the file.
    assert script.main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["build"]["added"] == 0 and again["networks"] == res["networks"]
    assert script.main(argv + ["--no-measure"]) == 0
    assert "build" not in json.loads(capsys.readouterr().out)
    # The table form names the target; --checkpoint none leaves only the baselines.
    assert script.main([a for a in argv if a != "--json"] + ["--no-measure"]) == 0
    assert "issue 3 target (tau >= 0.8 over all outside networks)" in capsys.readouterr().out
    assert script.main(argv + ["--no-measure", "--checkpoint", "none"]) == 0
    rows = [r["predictor"] for r in json.loads(capsys.readouterr().out)["results"]]
    assert len(rows) == 2 and rows[0].startswith("FLOPs regression (train.jsonl.gz")
