"""The sweep command: one subprocess per (train size, seed), resumable, failures reported."""
import csv
import json

import pytest

from narformer_core.cli import main
from narformer_core.cli_sweep import CSV_COLUMNS, run_name

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]
TINY = '{"d_model": 32, "n_heads": 2, "ffn_dim": 64, "depths": [1, 1, 1, 1]}'
COMMON = ["--space", "nb201", "--labels", "analog", "--val-size", "16", "--preset", "fast", "--epochs", "2",
          "--batch-size", "16", "--model-json", TINY, "--device", "cpu"]


def sweep(out, *extra):
    return main(["sweep", *COMMON, "--train-sizes", "32", "--out", str(out), "--quiet", "--json", *extra])


def test_sweep_runs_resumes_reports_a_crash_then_skips_finished_runs(tmp_path, capsys):
    out = tmp_path / "sweep"
    # Seed 1 was interrupted after its first epoch (as if the machine went down mid-sweep).
    interrupted = out / run_name(32, 1)
    assert main(["train", *COMMON, "--train-size", "32", "--seed", "1", "--out", str(interrupted),
                 "--max-seconds", "0", "--quiet", "--json"]) == 0
    first_line = (interrupted / "metrics.jsonl").read_text().splitlines()[0]
    # Seed 2's folder holds a damaged checkpoint: its child crashes.
    (out / run_name(32, 2)).mkdir(parents=True)
    (out / run_name(32, 2) / "latest.pt").write_bytes(b"not a checkpoint")
    capsys.readouterr()

    assert sweep(out, "--seeds", "0-2", "--jobs", "2") == 1                 # one run failed
    doc = json.loads(capsys.readouterr().out)
    rows = {r["seed"]: r for r in doc["runs"]}
    assert [r["seed"] for r in doc["runs"]] == [0, 1, 2] and (doc["finished"], doc["failed"]) == (2, 1)
    assert rows[0]["state"] == "finished" and rows[0]["resumed"] is False
    assert rows[1]["state"] == "finished" and rows[1]["resumed"] is True
    # Resumed, not restarted: the epoch logged before the interruption is still there, untouched.
    lines = (interrupted / "metrics.jsonl").read_text().splitlines()
    assert lines[0] == first_line and [json.loads(ln)["epoch"] for ln in lines] == [1, 2]
    assert rows[2]["state"] == "failed" and rows[2]["returncode"] not in (0, None)
    assert "Traceback" in rows[2]["stderr_tail"] or "error" in rows[2]["stderr_tail"].lower()
    for r in (rows[0], rows[1]):
        assert r["epochs"] == 2 and r["selected"] in {"best", "best_ema", "last"}
        assert -1 <= r["kendall_tau_all"] <= 1 and -1 <= r["kendall_tau_unseen"] <= 1
        assert r["checkpoint"].endswith(".pt") and r["train_seconds"] >= 0
        assert (out / run_name(32, r["seed"]) / "evaluation.json").exists()
    with open(out / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == CSV_COLUMNS and [t["state"] for t in table] == ["finished", "finished", "failed"]
    assert float(table[0]["kendall_tau_unseen"]) == pytest.approx(rows[0]["kendall_tau_unseen"])
    assert doc["by_train_size"]["32"]["runs"] == 2

    # Sweep the finished runs again: nothing is trained, their evaluation is reused.
    cached = (out / run_name(32, 0) / "evaluation.json").stat().st_mtime_ns
    before = {s: rows[s]["kendall_tau_unseen"] for s in (0, 1)}
    assert sweep(out, "--seeds", "0,1") == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["seed"]: r for r in doc["runs"]}
    assert rows[0]["skipped"] is True and rows[1]["skipped"] is True
    assert all(r["state"] == "finished" for r in rows.values()) and doc["failed"] == 0
    assert (out / run_name(32, 0) / "evaluation.json").stat().st_mtime_ns == cached
    assert {s: rows[s]["kendall_tau_unseen"] for s in (0, 1)} == before
    assert not (out / run_name(32, 0) / "train.out").read_text() == ""     # the first pass's child output stays

    # Other settings over finished folders are refused, not silently mixed into the table.
    assert sweep(out, "--seeds", "0", "--lr", "0.01") == 1
    doc = json.loads(capsys.readouterr().out)
    assert "other settings" in doc["runs"][0]["error"] and "'lr'" in doc["runs"][0]["error"]


def test_bad_arguments_exit_2_before_anything_starts(tmp_path, capsys):
    assert main(["sweep", *COMMON, "--train-sizes", "32", "--out", str(tmp_path / "a"), "--model-json", "{bad"]) == 2
    assert "--model-json is not valid JSON" in capsys.readouterr().err
    assert main(["sweep", *COMMON, "--train-sizes", "32", "--out", str(tmp_path / "b"), "--jobs", "0"]) == 2
    assert "--jobs must be at least 1" in capsys.readouterr().err
    assert main(["sweep", *COMMON, "--train-sizes", "32,x", "--out", str(tmp_path / "c")]) == 2
    assert "--train-sizes must be whole numbers" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
