"""scripts/score_in_domain_checkpoint.py: a saved in-domain fit scored again from its data set."""
import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from narformer_core.latency.dataset import load_dataset
from narformer_core.latency.predictors import _split_val, make_predictor
from narformer_core.latency.train_latency import family_split
from narformer_core.metrics import mape

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("score_in_domain", ROOT / "scripts" / "score_in_domain_checkpoint.py")
score_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(score_mod)
DEV_SET = ROOT / "assets" / "latency" / "zoo_cpu.jsonl.gz"


def mini_set(tmp_path):
    """The first 40 networks of the development set, as a data set file of their own."""
    with gzip.open(DEV_SET, "rt") as f:
        lines = [next(f) for _ in range(40)]
    data = tmp_path / "mini.jsonl.gz"
    with gzip.open(data, "wt") as f:
        f.writelines(lines)
    records, graphs, y = load_dataset(data, column="median_ms")
    return data, graphs, y, np.array([r["family"] for r in records])


@pytest.mark.skipif(not DEV_SET.exists(), reason="the measured development set is not in assets/latency")
def test_rebuilds_the_fits_validation_and_test_networks(tmp_path, capsys):
    data, graphs, y, fam = mini_set(tmp_path)
    assert len(set(fam)) >= 2
    train, test = family_split(fam, 3)
    p = make_predictor("flops").fit([graphs[i] for i in train], y[train], seed=3)
    _, val = _split_val(len(train), 3)
    p.meta.update({"dataset": str(data), "column": "median_ms", "bench_seed": 3,
                   "test_indices": test.tolist(), "val_mape": mape(p.predict([graphs[i] for i in train[val]]), y[train[val]])})
    ckpt = p.save(tmp_path / "fit.pt")
    row = score_mod.score(str(ckpt))
    assert row["val_mape"] == pytest.approx(p.meta["val_mape"], abs=1e-3)
    per_family = [mape(p.predict([graphs[i] for i in test if fam[i] == f]), y[[i for i in test if fam[i] == f]])
                  for f in sorted(set(fam[test]))]
    assert row["test_mape"] == pytest.approx(np.mean(per_family), abs=1e-3)
    assert score_mod.main([str(ckpt), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["bench_seed"] == 3
    # Another seed's split, or no bench metadata: refused with a sentence.
    p.meta["bench_seed"] = 4
    with pytest.raises(SystemExit, match="not bench seed 4's split"):
        score_mod.score(str(p.save(tmp_path / "other.pt")))
    del p.meta["test_indices"]
    with pytest.raises(SystemExit, match="not an in-domain bench checkpoint"):
        score_mod.score(str(p.save(tmp_path / "bare.pt")))


@pytest.mark.skipif(not DEV_SET.exists(), reason="the measured development set is not in assets/latency")
def test_add_prior_scores_the_fit_with_and_without_its_cost_sum(tmp_path, capsys):
    data, graphs, y, fam = mini_set(tmp_path)
    train, test = family_split(fam, 0)
    tiny = {"model": {"d_model": 32, "n_heads": 2, "ffn_dim": 64, "depths": (1, 1, 1, 1), "head_hidden": 64},
            "train": {"epochs": 2, "batch_size": 8}}
    p = make_predictor("narformer", **tiny).fit([graphs[i] for i in train], y[train], seed=0)
    p.meta.update({"dataset": str(data), "column": "median_ms", "bench_seed": 0, "test_indices": test.tolist()})
    ckpt = p.save(tmp_path / "nar.pt")
    plain = score_mod.score(str(ckpt))
    assert "with_prior" not in plain
    row = score_mod.score(str(ckpt), add_prior=True)
    curve = row["prior_added"]["val_curve"]
    w = row["with_prior"]["prior_weight"]
    assert row["with_prior"]["val_mape"] == pytest.approx(min(curve.values()), abs=2e-3)
    assert row["with_prior"]["val_mape"] == pytest.approx(curve[f"{w:g}"], abs=2e-3)
    # Weight 0 is the fit as it was.
    assert row["without_prior"]["val_mape"] == pytest.approx(plain["val_mape"], abs=1e-3)
    assert row["without_prior"]["test_mape"] == pytest.approx(plain["test_mape"], abs=1e-3)
    assert score_mod.main([str(ckpt), "--add-prior"]) == 0
    assert "with the cost-sum prior" in capsys.readouterr().out
