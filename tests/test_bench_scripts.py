"""The speed benchmarks run and report what they claim to (their figures are for benchmarks, not tests)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_app_support import tiny_checkpoints  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_train_step_benchmark_reports_every_variant_against_the_reference():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "scripts/bench_train_step.py", "--steps", "1", "--batch", "4",
                          "--variants", "reference,masks,bf16", "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert [r["variant"] for r in res["steps"]] == ["reference", "masks", "bf16"]
    for r in res["steps"]:
        assert r["pairs_per_s"] > 0 and r["min_step_s"] <= r["median_step_s"] <= r["max_step_s"]
    assert res["steps"][0]["x_reference"] == 1.0
    assert isinstance(res["bf16_native"], bool)


def test_train_step_benchmark_refuses_an_unknown_variant():
    out = subprocess.run([sys.executable, "scripts/bench_train_step.py", "--variants", "fp8"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "unknown variants ['fp8']" in out.stderr


def test_equivalence_benchmark_scores_raw_and_canonical_inputs():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "scripts/bench_equivalence.py", "--train-size", "60", "--seeds", "0",
                          "--epochs", "1", "--labels", "analog", "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    raw, canon = (json.loads(line) for line in out.stdout.splitlines())
    assert (raw["inputs"], canon["inputs"]) == ("raw", "canonical")
    for r in (raw, canon):
        assert all(-1 <= r[k] <= 1 for k in ("val", "val_mean", "all", "all_mean"))
    # A network fed class representatives already gives equivalent cells one value.
    assert canon["all"] == pytest.approx(canon["all_mean"], abs=1e-3)
    assert raw["all"] != raw["all_mean"]


def test_equivalence_benchmark_refuses_an_unknown_input_kind():
    out = subprocess.run([sys.executable, "scripts/bench_equivalence.py", "--inputs", "sorted"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "unknown input kind(s) sorted" in out.stderr


def test_speed_benchmark_times_a_checkpoint_with_and_without_averaging(tiny_checkpoints):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "scripts/bench_speed.py", "--repeats", "1", "--skip-train",
                          "--precisions", "fp32", "--checkpoint", str(tiny_checkpoints / "nb201-tiny.pt"), "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)[f"checkpoint {tiny_checkpoints / 'nb201-tiny.pt'}"]
    assert res["tokenize_plus_predict_fp32"]["median_s"] > 0
    assert res["chunked_max_abs_diff_fp32"] < 1e-4            # chunks give the same own outputs
    assert res["kendall_tau_all_fp32"] != res["kendall_tau_all_fp32_own_outputs"]
