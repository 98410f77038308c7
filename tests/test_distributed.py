"""Data-parallel training: the helpers, and real 2-process runs under torchrun (gloo, CPU)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from narformer_core import distributed
from narformer_core.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]
ROOT = Path(__file__).resolve().parents[1]
TINY = '{"d_model": 32, "n_heads": 2, "ffn_dim": 64, "depths": [1, 1, 1, 1]}'
# 65 = 4 x 16 + 1: the last global batch has one architecture, so on 2 ranks one rank's slice is
# empty and it must still take part in the all-reduce (with weight 0). The rank term pairs
# architectures within a rank's slice only, so it is switched off here: then 1 and 2 processes
# compute the same global-batch gradient up to float rounding.
ARGS = ["train", "--space", "nb201", "--labels", "analog", "--train-size", "65", "--val-size", "32",
        "--epochs", "3", "--batch-size", "16", "--lr", "1e-3", "--preset", "fast", "--model-json", TINY,
        "--lambda-rank", "0", "--device", "cpu", "--quiet", "--json"]


def torchrun_cmd(nproc: int) -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    launcher = [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]
    # --standalone picks a free rendezvous port, so parallel test runs do not collide on 29500.
    return launcher + ["--standalone", f"--nproc_per_node={nproc}", "-m", "narformer_core"]


def run_torchrun(*args, timeout=240):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(torchrun_cmd(2) + [str(a) for a in args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def log(run_dir):
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def test_env_parsing():
    assert distributed.from_env({}) == distributed.Dist()
    assert not distributed.from_env({}).enabled and distributed.from_env({}).is_main
    d = distributed.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (d.rank, d.world_size, d.local_rank, d.enabled, d.is_main) == (1, 2, 1, True, False)
    with pytest.raises(ValueError, match="RANK must be in 0..WORLD_SIZE-1"):
        distributed.from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="whole numbers"):
        distributed.from_env({"RANK": "a", "WORLD_SIZE": "2"})


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_slices_partition_every_batch(world):
    for n in range(0, 40):
        parts = [distributed.shard_bounds(n, r, world) for r in range(world)]
        covered = [i for lo, hi in parts for i in range(lo, hi)]
        assert covered == list(range(n))                       # disjoint, in order, nothing lost
        sizes = [hi - lo for lo, hi in parts]
        assert max(sizes) - min(sizes) <= 1


def test_local_pairs_are_permutations_of_the_slice():
    g = torch.Generator().manual_seed(0)
    p = torch.randperm(16, generator=g)
    for lo, hi in [(0, 8), (8, 16), (3, 4)]:
        assert sorted(distributed.local_pairs(p, lo, hi).tolist()) == list(range(hi - lo))


def test_threads_per_process():
    assert distributed.threads_per_process(2, cores=2) == 1
    assert distributed.threads_per_process(4, cores=2) == 1
    assert distributed.threads_per_process(2, cores=16) == 8


def test_sum_gradients_weights_and_keeps_missing_gradients_missing(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        d = distributed.Dist(0, 1, 0, "gloo")
        m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
        m(torch.ones(4, 3)).sum().backward()
        m[1].bias.grad = None                    # as for a parameter no rank used this step
        before = [None if p.grad is None else p.grad.clone() for p in m.parameters()]
        distributed.sum_gradients(m, 0.25, d)
        for b, p in zip(before, m.parameters()):
            if b is None:
                assert p.grad is None
            else:
                assert torch.allclose(p.grad, 0.25 * b)
        np.testing.assert_allclose(distributed.sum_values(np.array([1.5, 2.0]), d), [1.5, 2.0])
        assert distributed.broadcast_flags([True, False], d) == [True, False]
    finally:
        dist.destroy_process_group()


def test_two_processes_stop_together_resume_and_match_one_process(tmp_path, capsys):
    # One process, in this interpreter: the reference curve.
    assert main(ARGS + ["--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    ref = log(tmp_path / "one")

    run_dir = tmp_path / "two"
    # --max-seconds 0: rank 0 runs out of time after epoch 1; the decision must reach rank 1 too,
    # or rank 1 would wait forever in the next all-reduce (the timeout below would catch that).
    first = run_torchrun(*ARGS, "--out", run_dir, "--max-seconds", "0")
    assert first.returncode == 0, first.stderr[-3000:]
    lines = first.stdout.strip().splitlines()
    assert len(lines) == 1, first.stdout                      # only rank 0 prints the summary
    assert json.loads(lines[0])["state"] == "stopped" and json.loads(lines[0])["epoch"] == 1
    assert json.loads((run_dir / "status.json").read_text())["state"] == "stopped"
    latest = torch.load(run_dir / "latest.pt", weights_only=True)
    assert latest["epoch"] == 0 and latest["step"] == 5
    assert latest["distributed"] == {"world_size": 2, "backend": "gloo"} and len(latest["rng_ranks"]) == 2

    second = run_torchrun(*ARGS, "--out", run_dir)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["state"] == "finished" and summary["world_size"] == 2 and summary["steps"] == 15
    assert "drifted" not in second.stderr and "drifted" not in first.stderr
    config = json.loads((run_dir / "config.json").read_text())
    assert config["distributed"] == {"world_size": 2, "backend": "gloo"} and config["batch_size"] == 16

    two = log(run_dir)
    assert [r["epoch"] for r in two] == [1, 2, 3]
    assert [r["step"] for r in two] == [5, 10, 15] == [r["step"] for r in ref]   # global batch stays 16
    # Same data order, twins and weights; only float rounding differs (observed ~1e-8 relative).
    for a, b in zip(two, ref):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)
        assert a["mse"] == pytest.approx(b["mse"], rel=1e-3)
        assert a["lr"] == pytest.approx(b["lr"])
        assert abs(a["val_tau"] - b["val_tau"]) <= 0.05

    from narformer_core.predictors import NARFormerPredictor

    for name in ("best.pt", "best_ema.pt", "latest.pt"):
        pred = NARFormerPredictor.from_checkpoint(run_dir / name)
        assert len(pred.meta["train_idx"]) == 65 and len(pred.meta["val_idx"]) == 32
    p = pred.predict(pred.task(), np.arange(10))        # predicts every cell once (tiny model: ~1 s)
    assert p.shape == (10,) and np.isfinite(p).all()
