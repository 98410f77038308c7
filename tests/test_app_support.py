"""Helpers shared by the app tests (tests/test_app_*.py): a tiny trained checkpoint, app env vars.

The app finds checkpoints through NARFORMER_CHECKPOINT_DIR and runs through NARFORMER_RUNS_DIR;
the tests point both (and the latency database) at temporary folders, so they never touch the
project's runs/ or assets/.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = {"d_model": 32, "n_heads": 2, "ffn_dim": 64, "depths": [1, 1, 1, 1]}
TIMEOUT = 180  # seconds per AppTest run: the CI machine is a busy 2-core box


def tiny_checkpoint_dir(base: Path) -> Path:
    """A folder holding ``nb201-tiny.pt``, trained once per test session (a few seconds)."""
    out = base / "narformer-tiny-checkpoints"
    ckpt = out / "nb201-tiny.pt"
    if ckpt.exists():
        return out
    from narformer_core.train import TrainConfig, train

    cfg = TrainConfig(model=dict(TINY_MODEL), epochs=2, train_size=64, val_size=32, labels="analog",
                      device="cpu", save_every_s=1e9, batch_size=32, threads=1)
    run = base / "narformer-tiny-run"
    train(cfg, run, resume=False, progress=False)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "nb201-tiny.pt.tmp"
    shutil.copy(run / "best.pt", tmp)
    os.replace(tmp, ckpt)
    return out


def app_env(monkeypatch, tmp_path: Path, checkpoints: Path | None) -> dict:
    """Point the app at temporary folders; returns the paths."""
    runs = tmp_path / "runs"
    runs.mkdir(exist_ok=True)
    empty = tmp_path / "no-checkpoints"
    empty.mkdir(exist_ok=True)
    env = {"NARFORMER_CHECKPOINT_DIR": str(checkpoints or empty), "NARFORMER_RUNS_DIR": str(runs),
           "NARFORMER_LATENCY_DB": str(tmp_path / "latency.db"), "NARFORMER_LATENCY_DIR": str(empty)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def page(path: str):
    """An AppTest for one page file of the app (relative to the project root)."""
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(ROOT / path), default_timeout=TIMEOUT)


def texts(at) -> str:
    """Everything the page wrote, as one string (markdown, captions, alerts, metrics, code)."""
    parts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error",
                 "success", "code"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [f"{m.label}: {m.value}" for m in at.metric]
    return "\n".join(parts)


def no_exception(at) -> None:
    assert not at.exception, "\n".join(e.message + "\n" + "\n".join(e.stack_trace) for e in at.exception)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> Path:
    return tiny_checkpoint_dir(tmp_path_factory.getbasetemp())


def test_tiny_checkpoint_loads(tiny_checkpoints):
    from narformer_core.predictors import NARFormerPredictor

    p = NARFormerPredictor.from_checkpoint(tiny_checkpoints / "nb201-tiny.pt")
    assert p.space == "nb201" and len(p.meta["train_idx"]) == 64


def charts(at) -> list[dict]:
    """The plotly figures on the page, as dicts (data + layout)."""
    import json

    return [json.loads(e.proto.spec) for e in at.get("plotly_chart")]


def trace_types(at) -> list[str]:
    return [t.get("type", "scatter") for fig in charts(at) for t in fig.get("data", [])]


def small_onnx_bytes() -> bytes:
    """A small conv net exported to ONNX in memory (conv, BN folded, ReLU, pool, linear)."""
    import io
    import warnings

    import torch
    import torch.nn as nn

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), buf, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"])
    return buf.getvalue()


def table(at, column: str):
    """The first table (st.dataframe) on the page that has ``column``, as a DataFrame.

    Read-only tables carry no key in AppTest, so they are found by what they hold.
    """
    for d in at.dataframe:
        v = d.value
        if column in v.columns:
            return v
    raise AssertionError(f"no table with a {column!r} column; tables have {[list(d.value.columns) for d in at.dataframe]}")


def array(value):
    """A plotly JSON array as numpy: plain lists, or plotly's typed arrays {dtype, bdata, shape}."""
    import base64

    import numpy as np

    if isinstance(value, dict) and "bdata" in value:
        a = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if shape:
            a = a.reshape([int(s) for s in str(shape).split(",")])
        return a
    return np.asarray(value)


def latency_graphs() -> list:
    """Eight small conv networks of growing width and resolution (ArchGraphs)."""
    import torch
    import torch.nn as nn

    from narformer_core.onnx_import import from_torch

    graphs = []
    for width, res in ((4, 16), (8, 16), (8, 32), (16, 32), (16, 48), (32, 48), (32, 64), (64, 64)):
        net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()
        graphs.append(from_torch(net, torch.zeros(1, 3, res, res)))
    return graphs


def latency_predictor_dir(base: Path) -> Path:
    """A folder with a fitted FLOPs-regression latency predictor (``flops.pt``), an operator-cost sum
    (``opcost.pt``) and, when the project
    has it, a copy of the measured zoo data set. The labels are made up: the tests check the
    page's wiring, not the predictor's skill."""
    import numpy as np
    import torch
    import torch.nn as nn

    from narformer_core.latency.predictors import make_predictor
    from narformer_core.onnx_import import from_torch

    out = base / "narformer-latency"
    if (out / "flops.pt").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    graphs = latency_graphs()
    from narformer_core.features import static_features

    ms = np.array([0.05 + static_features(g)["flops"] * 2e-8 for g in graphs])
    make_predictor("opcost").fit(graphs, ms).save(out / "opcost.pt")     # before flops.pt: its presence says done
    p = make_predictor("flops").fit(graphs, ms)
    p.save(out / "flops.pt")
    zoo = ROOT / "assets" / "latency" / "zoo_cpu.jsonl.gz"
    if zoo.exists():
        shutil.copy(zoo, out / zoo.name)
    return out
