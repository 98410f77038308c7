"""Latency commands, in process: predict-latency, measure, latency build-dataset / train, bench latency."""
import gzip
import io
import json
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from narformer_core.cli import main
from narformer_core.cli_latency import DEFAULT_CHECKPOINT


def conv_onnx(channels: int = 8, size: int = 16, layers: int = 2) -> bytes:
    rng = np.random.default_rng(channels * 100 + size + layers)
    nodes, inits, x, c = [], [], "x", 3
    for i in range(layers):
        w = (rng.standard_normal((channels, c, 3, 3)) * 0.1).astype(np.float32)
        inits.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, w.shape, w.ravel().tolist()))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x, c = f"r{i}", channels
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, channels, size, size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    p = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    p.write_bytes(conv_onnx())
    return p


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """24 real networks (3 'families' of conv stacks), measured, written as data set records."""
    from narformer_core.latency import dataset as ds
    from narformer_core.latency.measure import measure_onnx, platform_key
    from narformer_core.features import static_features
    from narformer_core.onnx_import import load_onnx

    path = tmp_path_factory.mktemp("set") / "tiny.jsonl.gz"
    for fam, layers in (("one", 1), ("two", 2), ("three", 3)):
        for ch in (4, 8, 16, 24):
            for size in (16, 32):
                data = conv_onnx(ch, size, layers)
                g = load_onnx(data)
                m = measure_onnx(data, warmup=1, repeats=7)
                cpu = ds.cpu_time_ms(data, warmup=1, repeats=5)
                ds._append(path, {**cpu, "spec_id": f"{fam}-{ch}-{size}", "family": fam, "graph": g.to_dict(),
                                  "graph_hash": g.stable_hash(), "static": static_features(g),
                                  "median_ms": m.median_ms, "iqr_ms": m.iqr_ms, "std_ms": m.std_ms,
                                  "repeats": m.repeats, "platform": m.platform,
                                  "platform_key": platform_key(m.platform), "measured_at": m.measured_at})
    return path


def test_measure_prints_json_and_stores(capsys, tiny_onnx, tmp_path):
    db = tmp_path / "lat.sqlite"
    code, out, err = run(capsys, "measure", tiny_onnx, "--json", "--repeats", 5, "--warmup", 1,
                         "--min-seconds", 0, "--db", db)
    assert code == 0, err
    d = json.loads(out)
    assert d["latency_ms"] > 0 and d["repeats"] >= 5 and d["platform"]["threads"] == 1
    assert d["cpu_median_ms"] > 0
    # MACs of the two convs plus one op per ReLU output element
    assert d["static"]["flops"] == 16 * 16 * 8 * 3 * 9 + 16 * 16 * 8 * 8 * 9 + 2 * 16 * 16 * 8
    from narformer_core.latency.db import LatencyDB
    with LatencyDB(db) as database:
        rec = database.get(d["graph_hash"], d["platform_key"])
    assert rec is not None and rec.median_ms == pytest.approx(d["median_ms"])


def test_train_then_predict_latency(capsys, tiny_dataset, tiny_onnx, tmp_path):
    ckpt = tmp_path / "nar.pt"
    code, out, err = run(capsys, "latency", "train", "--dataset", tiny_dataset, "--out", ckpt, "--epochs", 4,
                         "--model-json", '{"d_model": 32, "n_heads": 2, "ffn_dim": 64, "depths": [1, 1, 1, 1]}',
                         "--op-dropout", 0.1, "--quiet", "--json")
    assert code == 0, err
    assert json.loads(out)["n_train"] + json.loads(out)["n_val"] == 24
    from narformer_core.latency.predictors import load_predictor
    trained = load_predictor(ckpt)
    assert trained.train_overrides["op_dropout"] == 0.1 and trained.maps_unseen_ops
    code, _, err = run(capsys, "latency", "train", "--dataset", tiny_dataset, "--out", tmp_path / "x.pt",
                       "--op-dropout", 1.5, "--quiet")
    assert code == 2 and "--op-dropout is a probability" in err
    code, out, err = run(capsys, "predict-latency", tiny_onnx, "--checkpoint", ckpt, "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["latency_ms"] > 0 and d["predictor"] == "NAR-Former" and d["same_platform_as_here"]
    assert d["calibration"] is None and "calibration_hint" not in d     # its own platform: nothing to carry over
    assert set(d["static"]) == {"batch_size", "flops", "params", "memory_access"}
    # operator types of the model that no network of the training set had
    from narformer_core.latency.dataset import load_records
    from narformer_core.onnx_import import load_onnx
    trained = {n["op"] for r in load_records(tiny_dataset) for n in r["graph"]["nodes"]}
    assert d["unseen_ops"] == sorted({n.op for n in load_onnx(tiny_onnx).nodes} - trained - {"input"})


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no shipped latency checkpoint")
def test_shipped_checkpoint_predicts(capsys, tiny_onnx):
    code, out, err = run(capsys, "predict-latency", tiny_onnx, "--json")
    assert code == 0, err
    assert json.loads(out)["latency_ms"] > 0


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="no shipped latency checkpoint")
def test_calibrate_then_predict_in_this_machines_milliseconds(capsys, tiny_onnx, tmp_path):
    from narformer_core.latency.calibration import HostCalibration
    from narformer_core.onnx_import import load_onnx

    cal_dir = tmp_path / "cal"
    code, out, err = run(capsys, "latency", "calibrate", "--networks", 4, "--min-seconds", 0.05,
                         "--calibration-dir", cal_dir, "--db", tmp_path / "lat.db", "--quiet", "--json")
    assert code == 0, err
    made = json.loads(out)
    assert made["networks"] == 4 and made["speed_ratio"] > 0 and set(made["leave_one_out"]) >= {
        "uncorrected_mape", "ratio_only_mape", "calibrated_mape"}
    cal = HostCalibration.load(made["calibration"])
    code, out, err = run(capsys, "predict-latency", tiny_onnx, "--calibration-dir", cal_dir, "--json")
    assert code == 0, err
    d = json.loads(out)
    expected = cal.apply([d["latency_ms_uncalibrated"]], [load_onnx(tiny_onnx)])[0]
    assert d["latency_ms"] == pytest.approx(expected, rel=1e-3, abs=1e-4)     # printed to 4 decimals
    assert d["calibration"]["networks"] == 4 and d["calibration"]["platform_key"] == made["platform_key"]
    code, out, _ = run(capsys, "predict-latency", tiny_onnx, "--calibration-dir", cal_dir, "--no-calibration", "--json")
    assert json.loads(out)["latency_ms"] == d["latency_ms_uncalibrated"]
    # The timings went into the latency database as measurements of this machine.
    from narformer_core.latency.db import LatencyDB

    with LatencyDB(tmp_path / "lat.db") as db:
        assert db.stats()["by_platform"] == {made["platform_key"]: 4}
    # A damaged calibration: the prediction falls back to the checkpoint's milliseconds and says why.
    with open(made["calibration"], "w") as f:
        f.write("{ not json")
    code, out, err = run(capsys, "predict-latency", tiny_onnx, "--calibration-dir", cal_dir, "--json")
    assert code == 0, err
    d2 = json.loads(out)
    assert d2["latency_ms"] == d["latency_ms_uncalibrated"] and "cannot read the calibration" in d2["calibration_error"]
    code, _, err = run(capsys, "latency", "calibrate", "--networks", 2, "--calibration-dir", cal_dir, "--quiet")
    assert code == 2 and "at least 3" in err


def test_bad_files_exit_2(capsys, tmp_path, tiny_onnx):
    text = tmp_path / "notes.onnx"
    text.write_text("hello, this is not a model\n")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(tiny_onnx.read_bytes()[:200])
    for cmd in ("predict-latency", "measure"):
        for bad in (text, cut, tmp_path / "missing.onnx"):
            code, out, err = run(capsys, cmd, bad, "--json")
            assert code == 2, (cmd, bad, out)
            assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and out == ""
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    code, _, err = run(capsys, "predict-latency", tiny_onnx, "--checkpoint", junk)
    assert code == 2 and "not a loadable" in err


def test_bench_latency_table(capsys, tiny_dataset, tmp_path):
    out_json = tmp_path / "bench.json"
    code, out, err = run(capsys, "bench", "latency", "--dataset", tiny_dataset, "--predictors", "flops",
                         "--quiet", "--out", out_json)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("24 networks") and "cpu_median_ms" in lines[0]
    assert "LOFO FLOPs regression" in lines[2] and lines[-1].startswith("average")
    assert {ln.split()[0] for ln in lines[4:-1]} == {"one", "two", "three"}
    res = json.loads(out_json.read_text())
    assert set(res["in_domain"]["FLOPs regression"]) == {"one", "two", "three"}
    assert res["average"]["lofo"]["FLOPs regression"]["mape"] >= 0
    # Every fit was cached beside --out; a second call takes them from there (same figures).
    cache = tmp_path / "bench.json.fits.jsonl"
    assert len(cache.read_text().splitlines()) == 4
    code, out2, err = run(capsys, "bench", "latency", "--dataset", tiny_dataset, "--predictors", "flops",
                          "--quiet", "--out", out_json)
    assert code == 0 and out2 == out and len(cache.read_text().splitlines()) == 4
    code, out, err = run(capsys, "bench", "latency", "--dataset", tiny_dataset, "--predictors", "gbdt2")
    assert code == 2 and "unknown predictors" in err


def test_bench_latency_saves_the_in_domain_fit(capsys, tiny_dataset, tmp_path):
    from narformer_core.latency.dataset import load_dataset
    from narformer_core.latency.predictors import load_predictor

    code, out, err = run(capsys, "bench", "latency", "--dataset", tiny_dataset, "--predictors", "flops",
                         "--no-lofo", "--quiet", "--json", "--save-in-domain", tmp_path / "fits")
    assert code == 0, err
    res = json.loads(out)
    saved = load_predictor(tmp_path / "fits" / "flops_in_domain.pt")
    meta = saved.meta
    assert meta["column"] == "cpu_median_ms" and meta["n_networks"] == 24
    # The saved model scores its own held-out networks exactly as the benchmark reported.
    _, graphs, y = load_dataset(tiny_dataset, column="cpu_median_ms")
    test = meta["test_indices"]
    assert len(test) == res["fits"][0]["n_test"] and meta["test_mape"] == res["fits"][0]["test_mape"]
    from narformer_core.metrics import mape
    assert round(mape(saved.predict([graphs[i] for i in test]), y[test]), 3) == meta["test_mape"]


def test_latency_combine_command(capsys, tiny_dataset, tmp_path):
    from narformer_core.latency import dataset as ds

    records = ds.load_records(tiny_dataset)
    passes = []
    for k, scale in enumerate((1.0, 1.25)):   # the second session 25 % slower on every run
        p = tmp_path / f"pass{k}.jsonl.gz"
        ds._rewrite(p, [{"spec_id": r["spec_id"], "graph_hash": r["graph_hash"], "family": r["family"],
                         "platform": r["platform"], "platform_key": r["platform_key"],
                         "samples_ms": [r["median_ms"] * scale, r["median_ms"] * scale * 2],
                         "min_ms": r["median_ms"] * scale, "median_ms": r["median_ms"] * scale * 1.5}
                        for r in records])
        passes.append(p)
    out = tmp_path / "combined.jsonl.gz"
    code, stdout, err = run(capsys, "latency", "combine", "--source", tiny_dataset, "--passes", *passes,
                            "--out", out, "--json")
    assert code == 0, err
    assert json.loads(stdout)["records"] == len(records)
    _, _, y = ds.load_dataset(out, column="min_ms")
    assert np.allclose(y, [r["median_ms"] for r in records])   # the faster session wins
    code, _, err = run(capsys, "latency", "combine", "--source", tiny_dataset, "--passes", tmp_path / "gone.jsonl.gz",
                       "--out", out)
    assert code == 2 and "no data set" in err
    code, _, err = run(capsys, "latency", "combine", "--source", tiny_dataset, "--passes", *passes,
                       "--out", out, "--reference-window", "-1")
    assert code == 2 and "cannot be negative" in err
    # these passes timed no reference network, so their set has no level to lend a re-test
    code, _, err = run(capsys, "latency", "combine", "--source", tiny_dataset, "--passes", *passes,
                       "--out", tmp_path / "re.jsonl.gz", "--reference-level-from", out)
    assert code == 2 and "no single reference level" in err


def test_build_dataset_command(capsys, tmp_path):
    out = tmp_path / "one.jsonl.gz"
    args = ("latency", "build-dataset", "--n", 1, "--families", "squeezenet", "--out", out, "--repeats", 3,
            "--warmup", 1, "--min-seconds", 0, "--quiet", "--json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, stdout, err = run(capsys, *args)
    assert code == 0, err
    assert json.loads(stdout)["added"] == 1
    rec = json.loads(gzip.open(out, "rt").readline())
    assert rec["family"] == "squeezenet" and rec["median_ms"] > 0
    code, _, err = run(capsys, "latency", "build-dataset", "--out", out, "--families", "lenet", "--n", 2)
    assert code == 2 and "unknown families" in err
    code, _, err = run(capsys, "latency", "build-dataset", "--out", out)
    assert code == 2 and "how many" in err


def test_token_scheme_reaches_the_predictor_and_its_cache_key():
    import argparse

    from narformer_core.cli_latency import _factories

    def factories(**kw):
        prints = {}
        made = _factories(argparse.Namespace(predictors="narformer", **kw), prints)
        return made["NAR-Former"](), prints["NAR-Former"]

    default, key = factories()
    assert default.scheme == "nerf"
    # Fits cached before the option existed keep their key.
    assert json.loads(key) == [{}, {}, True]
    trans, trans_key = factories(token_scheme="trans")
    assert trans.scheme == "trans" and json.loads(trans_key) == [{}, {}, True, "trans"]


def test_residual_offset_reaches_the_predictor_and_its_cache_key():
    import argparse

    from narformer_core.cli_latency import _factories

    prints = {}
    made = _factories(argparse.Namespace(predictors="narformer", node_raw=True, offset="opcost"), prints)
    assert made["NAR-Former"]().offset == "opcost"
    assert json.loads(prints["NAR-Former"]) == [{}, {}, True, "node_raw", "offset=opcost-shrink1.0-blocks"]
    # The default offset keeps the keys of fits cached before the option existed.
    made = _factories(argparse.Namespace(predictors="narformer", node_raw=True, offset="flops"), prints)
    assert made["NAR-Former"]().offset == "flops" and json.loads(prints["NAR-Former"]) == [{}, {}, True, "node_raw"]
    made = _factories(argparse.Namespace(predictors="narformer", offset="opcost", no_static_codes=True), prints)
    assert not made["NAR-Former"]().static_codes
    assert json.loads(prints["NAR-Former"]) == [{}, {}, True, "offset=opcost-shrink1.0-blocks", "no_static_codes"]
