"""The GPU campaign driver and bench_search's --merge: the parts that can be checked without a GPU."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


campaign = _script("gpu_campaign")
bench_search = _script("bench_search")


def test_every_campaign_configuration_is_a_valid_train_command(tmp_path):
    from narformer_core.cli import _train_config, build_parser

    for name in campaign.CONFIGS:
        cmd = campaign.command(name, 7, tmp_path / name, 30, "cpu", 0)
        args = build_parser().parse_args(cmd[3:])          # after "python -m narformer_core"
        cfg = _train_config(args)
        assert cfg.epochs == 7 and cfg.train_size == campaign.CONFIGS[name][0] and cfg.labels == "nb201-val"
        assert args.max_seconds == 30 and args.fresh


def test_seconds_per_epoch_skips_the_first_epoch(tmp_path):
    rows = [{"epoch": 1, "wall_s": 5.0}, {"epoch": 2, "wall_s": 5.5}, {"epoch": 3, "wall_s": 6.0},
            {"epoch": 4, "wall_s": 6.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert campaign.seconds_per_epoch(tmp_path) == pytest.approx(0.5)
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[0]))
    assert campaign.seconds_per_epoch(tmp_path) is None            # too few epochs to tell
    assert campaign.seconds_per_epoch(tmp_path / "missing") is None


def _res(algos, seeds=(0, 1), budgets=(50, 100)):
    return {"labels": "nb201-val", "test_labels": ["nb201-test"], "seeds": list(seeds), "device": None,
            "latency_budget_ms": None, "budgets": list(budgets), "command": "x",
            "table": [{"algo": a, "budget": b} for a in algos for b in budgets],
            "runs": [{"algo": a, "seed": s} for a in algos for s in seeds]}


def test_merge_adds_and_replaces_algorithms():
    old = _res(["random", "evolution"], budgets=(50, 100, 150))
    new = _res(["evolution", "predictor:narformer"])
    out = bench_search.merge(old, new)
    assert [r["algo"] for r in out["table"]].count("random") == 3
    assert [r["algo"] for r in out["table"]].count("evolution") == 2        # replaced by the new rows
    assert [r["algo"] for r in out["runs"]].count("predictor:narformer") == 2
    assert out["budgets"] == [50, 100, 150]


def test_merge_refuses_other_seeds():
    with pytest.raises(SystemExit, match="seeds"):
        bench_search.merge(_res(["random"]), _res(["evolution"], seeds=(0, 1, 2)))
