"""Shared fixtures. Heavy imports stay inside fixtures so test files that do not use them stay fast."""
from __future__ import annotations

import pytest

# A model small enough to train in about a second per run on a busy 2-core machine.
TINY_MODEL = {"d_model": 32, "n_heads": 2, "ffn_dim": 64, "depths": [1, 1, 1, 1]}


def _tiny_train_config(**overrides):
    from narformer_core.train import TrainConfig

    # threads=1: on a loaded 2-core machine two intra-op threads make tiny runs 5-10x slower.
    base = dict(space="nb201", labels="analog", train_size=64, val_size=32, seed=0, epochs=4,
                batch_size=16, lr=1e-3, save_every_s=1e9, device="cpu", threads=1, model=dict(TINY_MODEL))
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny models run faster on one intra-op thread; the previous setting is restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_config() -> dict:
    return dict(TINY_MODEL)


@pytest.fixture(scope="session")
def make_train_config():
    """Factory: a TrainConfig for a tiny NB201 run (analog labels, 64 train, 32 val, 4 epochs)."""
    return _tiny_train_config


@pytest.fixture(scope="session")
def nb201_task():
    from narformer_core.tasks import load_task

    return load_task("nb201", "analog")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, nb201_task):
    """One finished tiny training run, shared by the train and CLI tests: (run_dir, summary)."""
    import torch

    from narformer_core.train import train

    run_dir = tmp_path_factory.mktemp("tiny_run")
    before = torch.get_num_threads()
    try:
        summary = train(_tiny_train_config(), run_dir, resume=False, progress=False)
    finally:
        torch.set_num_threads(before)     # TrainConfig(threads=1) sets it process-wide
    return run_dir, summary


@pytest.fixture(autouse=True)
def _own_calibration_dir(monkeypatch, tmp_path):
    """Every test gets an empty calibration folder: a calibration fitted on the developer's machine
    (assets/calibration) must not change what predict-latency or the pages show under test."""
    monkeypatch.setenv("NARFORMER_CALIBRATION_DIR", str(tmp_path / "calibration"))
