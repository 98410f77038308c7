"""A training process killed with SIGKILL resumes from its last checkpoint with a clean log."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from narformer_core.train import _Writer, read_log, train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]
ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 24
# save_every_s=0: latest.pt after every epoch, so a kill always finds a recent checkpoint.
SETTINGS = dict(epochs=EPOCHS, save_every_s=0.0)
DRIVER = ("import json, sys\n"
          "from narformer_core.train import TrainConfig, train\n"
          "train(TrainConfig(**json.loads(sys.argv[1])), sys.argv[2], resume=True, progress=False)\n")


def start(cfg, run_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    return subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(cfg.to_dict()), str(run_dir)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def n_lines(path: Path) -> int:
    try:
        return sum(1 for ln in path.read_text().splitlines() if ln.strip())
    except OSError:
        return 0


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_log(make_train_config, tmp_path):
    cfg = make_train_config(**SETTINGS)
    reference = tmp_path / "reference"
    train(make_train_config(**SETTINGS), reference, resume=False, progress=False)

    run_dir = tmp_path / "killed"
    proc = start(cfg, run_dir)
    deadline = time.monotonic() + 180
    while n_lines(run_dir / "metrics.jsonl") < 2 or not (run_dir / "latest.pt").exists():
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "the run logged no epochs in 180 s"
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before the kill; raise EPOCHS"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    logged = n_lines(run_dir / "metrics.jsonl")
    assert 2 <= logged < EPOCHS
    assert json.loads((run_dir / "status.json").read_text())["state"] == "running"   # nobody wrote "failed"
    # A kill inside write() can leave half a line; add one so the resume must cope with it too.
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 99999, "epoch": 9999, "loss": 0.1')

    resumed = start(cfg, run_dir)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "finished"
    log = read_log(run_dir / "metrics.jsonl")
    epochs, steps = [r["epoch"] for r in log], [r["step"] for r in log]
    assert epochs == list(range(1, EPOCHS + 1))                  # no gap, no duplicate
    assert all(b > a for a, b in zip(steps, steps[1:])) and steps[-1] == EPOCHS * 4
    text = (run_dir / "metrics.jsonl").read_text()
    assert text.endswith("\n") and "\"step\": 99999" not in text   # the torn line is gone
    # The resumed run continued the saved RNG streams: the same numbers as an uninterrupted run.
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]   # noqa: E731
    assert strip(log) == strip(read_log(reference / "metrics.jsonl"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["state"] == "finished" and summary["steps"] == EPOCHS * 4


def test_log_reader_drops_only_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 4, "epoch": 1}\n{"step": 8, "epoch": 2}\n{"step": 12, "ep')
    assert [r["step"] for r in read_log(path)] == [4, 8]
    _Writer(path, keep_through_step=4)                      # what a resume from step 4 does
    assert path.read_text() == '{"step": 4, "epoch": 1}\n'
    assert not (tmp_path / "metrics.jsonl.tmp").exists()
    path.write_text('{"step": 4, "epoch": 1}\nnot json\n{"step": 12, "epoch": 3}\n')
    with pytest.raises(ValueError, match=r"line 2 is not JSON .* damaged"):
        read_log(path)
