import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from narformer_core.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]
ROOT = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--epochs", "2", "--train-size", "32", "--val-size", "16", "--batch-size", "16",
             "--labels", "analog", "--device", "cpu", "--quiet", "--json"]


def run_cli(*args, timeout=240):
    # One intra-op thread: the tiny model is faster that way on a loaded machine.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "narformer_core", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_evaluate_prints_one_json_object(tiny_run):
    run_dir, _ = tiny_run
    out = run_cli("evaluate", "--checkpoint", run_dir / "best.pt", "--json")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert {"kendall_tau_all", "kendall_tau_unseen", "n_train", "labels"} <= set(res)
    assert res["n_train"] == 64 and res["n_val"] == 32 and res["labels"] == "analog"
    assert res["space"] == "nb201" and res["checkpoint_kind"] == "best"
    assert res["n_test"] == 15_625 and res["n_unseen"] == 15_625 - 96
    assert -1.0 <= res["kendall_tau_all"] <= 1.0 and -1.0 <= res["kendall_tau_unseen"] <= 1.0
    assert "analog" in res["tau_vs_sources"]
    assert res["tau_vs_sources"]["analog"]["kendall_tau"] == pytest.approx(res["kendall_tau_all"])


def test_evaluate_a_non_checkpoint_exits_2_with_one_line(tmp_path):
    path = tmp_path / "bogus.pt"
    path.write_bytes(b"this is not a checkpoint\n")
    out = run_cli("evaluate", "--checkpoint", path, "--json")
    assert out.returncode == 2
    assert out.stdout == ""
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "bogus.pt" in err[0]
    assert "Traceback" not in out.stderr


def test_evaluate_other_torch_files_and_missing_files(tmp_path, capsys):
    import torch

    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "other.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not a NAR-Former checkpoint" in err and "\n" not in err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "does not exist" in err and "\n" not in err


def test_train_runs_with_a_tiny_model(tmp_path, capsys, tiny_model_config):
    out_dir = tmp_path / "run"
    code = main(["train", *TINY_ARGS, "--model-json", json.dumps(tiny_model_config), "--out", str(out_dir)])
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert res["state"] == "finished" and res["run_dir"] == str(out_dir)
    assert (res["n_train"], res["n_val"], res["epochs"], res["steps"]) == (32, 16, 2, 4)
    config = json.loads((out_dir / "config.json").read_text())
    assert config["model"]["d_model"] == 32 and config["model"]["depths"] == [1, 1, 1, 1]
    assert config["model"]["dropout"] == 0.0          # the "fast" preset's, not overridden
    assert len((out_dir / "metrics.jsonl").read_text().splitlines()) == 2


def test_bench_accuracy_runs_with_a_tiny_model(capsys, tiny_model_config):
    code = main(["bench", "accuracy", *TINY_ARGS, "--model-json", json.dumps(tiny_model_config)])
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert res["selected_on"] == "validation tau only" and res["epochs"] == 2
    assert res["n_train"] == 32 and res["n_val"] == 16 and res["n_unseen"] == 15_625 - 48
    assert -1.0 <= res["kendall_tau_all"] <= 1.0 and res["train_seconds"] >= 0


@pytest.mark.parametrize("text, message", [
    ("{d_model: 32}", "--model-json is not valid JSON"),
    ("[32]", "must be a JSON object"),
    ('{"width": 32}', "unknown model settings ['width']"),
    ('{"d_model": 30, "n_heads": 4}', "d_model 30 is not divisible by n_heads 4"),
])
def test_bad_model_json_is_one_line_exit_2(tmp_path, capsys, text, message):
    code = main(["train", *TINY_ARGS, "--model-json", text, "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_evaluate_in_bf16_reports_its_precision_and_ranks_like_fp32(tiny_run):
    from narformer_core.cli import evaluate_checkpoint

    ck = tiny_run[0] / "best.pt"
    fp32, bf16 = evaluate_checkpoint(ck), evaluate_checkpoint(ck, precision="bf16")
    assert fp32["precision"] == "fp32" and bf16["precision"] == "bf16"
    assert abs(fp32["kendall_tau_all"] - bf16["kendall_tau_all"]) < 0.05
