"""scripts/assemble_latency_bench.py: one table from the fit caches of several bench processes."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("assemble_latency_bench", ROOT / "scripts" / "assemble_latency_bench.py")
assemble = importlib.util.module_from_spec(spec)
spec.loader.exec_module(assemble)


def fit(predictor, setting, held_out, scores, data="d1", seed=0):
    return {"data": data, "seed": seed, "setting": setting, "held_out": held_out, "predictor": predictor,
            "fingerprint": "x", "scores": scores,
            "fit": {"setting": setting, "held_out": held_out, "predictor": predictor, "test_mape": 0.0}}


def write(path, fits):
    path.write_text("".join(json.dumps(f) + "\n" for f in fits))
    return path


def test_caches_merge_labels_rename_and_families_weigh_alike(tmp_path, capsys):
    a = write(tmp_path / "a.fits.jsonl", [
        fit("FLOPs regression", "in_domain", None, {"f1": {"n": 20, "mape": 4.0, "acc10": 80.0},
                                                    "f2": {"n": 20, "mape": 8.0, "acc10": 60.0}}),
        fit("FLOPs regression", "lofo", "f1", {"f1": {"n": 200, "mape": 10.0, "acc10": 50.0}})])
    b = write(tmp_path / "b.fits.jsonl", [
        fit("NAR-Former", "in_domain", None, {"f1": {"n": 20, "mape": 3.0, "acc10": 90.0},
                                              "f2": {"n": 20, "mape": 5.0, "acc10": 80.0}}),
        fit("NAR-Former", "in_domain", None, {"f1": {"n": 20, "mape": 99.0, "acc10": 0.0}})])   # a resumed duplicate
    out = tmp_path / "all.json"
    assert assemble.main([str(a), f"{b}=NAR-Former op_dropout 0.1", "--out", str(out), "--markdown"]) == 0
    res = json.loads(out.read_text())
    assert set(res["in_domain"]) == {"FLOPs regression", "NAR-Former op_dropout 0.1"}
    assert res["average"]["in_domain"]["NAR-Former op_dropout 0.1"] == {"mape": 4.0, "acc10": 85.0, "families": 2}
    assert res["average"]["lofo"]["FLOPs regression"]["families"] == 1
    assert len(res["fits"]) == 3
    assert "| f2 | 8.00% / 60% | 5.00% / 80% |" in capsys.readouterr().out


def test_caches_of_two_data_sets_are_refused(tmp_path):
    a = write(tmp_path / "a.fits.jsonl", [fit("FLOPs regression", "in_domain", None, {}, data="d1")])
    b = write(tmp_path / "b.fits.jsonl", [fit("NAR-Former", "in_domain", None, {}, data="d2")])
    with pytest.raises(SystemExit, match="caches of one data set only"):
        assemble.main([str(a), str(b), "--out", str(tmp_path / "x.json")])


def test_caches_of_two_bench_seeds_are_refused(tmp_path):
    # Seeds 0 and 1 are two in-domain splits: one table of both would mix test sets.
    a = write(tmp_path / "a.fits.jsonl", [fit("NNLP GNN", "in_domain", None, {}, seed=0)])
    b = write(tmp_path / "b.fits.jsonl", [fit("NAR-Former", "in_domain", None, {}, seed=1)])
    with pytest.raises(SystemExit, match="caches of one seed only"):
        assemble.main([str(a), str(b), "--out", str(tmp_path / "x.json")])
    c = write(tmp_path / "c.fits.jsonl", [fit("NNLP GNN", "in_domain", None, {"f": {"n": 1, "mape": 1.0, "acc10": 100.0}}, seed=1)])
    write(b, [fit("NAR-Former", "in_domain", None, {"f": {"n": 1, "mape": 2.0, "acc10": 100.0}}, seed=1)])
    assemble.main([str(b), str(c), "--out", str(tmp_path / "y.json")])
    assert json.loads((tmp_path / "y.json").read_text())["seed"] == 1
