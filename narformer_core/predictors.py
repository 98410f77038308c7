"""One fit/predict interface for accuracy predictors, so they compare on the same split.

Every predictor takes an :class:`~narformer_core.tasks.AccuracyTask` and index arrays:
``fit(task, train_idx, val_idx)`` then ``predict(task, idx)`` returning accuracies in %. The
NAR-Former predictor also loads trained checkpoints and predicts arbitrary cell graphs.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .graph import ArchGraph, GraphError
from .model import NARFormer, NARFormerConfig
from .targets import TargetMap
from .tasks import AccuracyTask, load_task
from .tokenizer import tokenize_graphs


class CheckpointError(ValueError):
    """A file that is not a usable NAR-Former checkpoint; the message says why."""


class AccuracyPredictor:
    name = "predictor"

    def fit(self, task: AccuracyTask, train_idx: np.ndarray, val_idx: np.ndarray | None = None,
            seed: int = 0, progress: bool = False) -> "AccuracyPredictor":
        raise NotImplementedError

    def predict(self, task: AccuracyTask, idx: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[NARFormer, dict]:
    """Load weights with ``weights_only=True`` (no code from the file ever runs)."""
    from .train import CKPT_FORMAT

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a pickle with code in it, a truncated file, not a torch file at all
        raise CheckpointError(f"{path.name} is not a loadable checkpoint: {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path.name} is not a NAR-Former checkpoint (expected format {CKPT_FORMAT})")
    try:
        model = NARFormer(NARFormerConfig(**ck["model_config"]))
        model.load_state_dict(ck["state_dict"])
    except (TypeError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path.name} does not match the NAR-Former model: {str(e)[:300]}") from None
    model.eval()
    return model.to(device), ck


class NARFormerPredictor(AccuracyPredictor):
    name = "NAR-Former"

    def __init__(self, model: NARFormer | None = None, meta: dict | None = None, scheme: str = "nerf",
                 train_kwargs: dict | None = None, device: str = "cpu"):
        self.model, self.meta, self.scheme, self.device = model, meta or {}, scheme, device
        self.train_kwargs = train_kwargs or {}
        self._cache: dict = {}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> "NARFormerPredictor":
        model, ck = load_checkpoint(path, device)
        meta = {k: ck[k] for k in ("kind", "task", "train_config", "model_config", "epoch", "val_tau") if k in ck}
        meta["train_idx"] = ck["split"]["train"].numpy()
        meta["val_idx"] = ck["split"]["val"].numpy()
        meta["path"] = str(path)
        meta["target"] = TargetMap.from_state(ck.get("target"))
        return cls(model, meta, ck["task"].get("scheme", "nerf"), device=device)

    def to_percent(self, raw: np.ndarray) -> np.ndarray:
        return self.meta.get("target", TargetMap("fraction")).inverse(raw)

    @property
    def space(self) -> str | None:
        return self.meta.get("task", {}).get("space")

    def task(self, labels: str | None = None, test_labels: str | None = None, data_dir=None) -> AccuracyTask:
        t = self.meta["task"]
        return load_task(t["space"], labels or t["labels"], test_labels or t["test_labels"], data_dir)

    def fit(self, task, train_idx, val_idx=None, seed=0, progress=False):
        """Train with the protocol of train.py in a scratch folder (used by the arena and search)."""
        from .train import TrainConfig

        if val_idx is None or len(val_idx) == 0:
            raise ValueError("NAR-Former selects its checkpoint on validation data: pass val_idx")
        kw = {"epochs": 200, "lr": 1e-3, "batch_size": 128, **self.train_kwargs}
        cfg = TrainConfig(space=task.space, labels=task.labels, test_labels=task.test_labels,
                          train_size=len(train_idx), val_size=len(val_idx), seed=seed, scheme=self.scheme, **kw)
        with tempfile.TemporaryDirectory() as d:
            from .train import train

            summary = train(cfg, d, resume=False, progress=progress, task=task,
                            indices=(np.asarray(train_idx), np.asarray(val_idx)))
            ckpt = Path(d) / {"best": "best.pt", "best_ema": "best_ema.pt"}.get(summary["selected"], "latest.pt")
            fitted = NARFormerPredictor.from_checkpoint(ckpt, self.device)
        self.model, self.meta = fitted.model, fitted.meta
        self._cache.clear()
        return self

    def predict(self, task: AccuracyTask, idx: np.ndarray | None = None) -> np.ndarray:
        key = (task.space, task.labels, len(task))
        if key not in self._cache:
            from .train import predict_tokens

            tk = task.tokens(self.scheme)
            mask = None if tk.mask.all() else torch.from_numpy(tk.mask)
            self._cache[key] = predict_tokens(self.model, torch.from_numpy(tk.depth),
                                              torch.from_numpy(tk.nodes), mask)
        out = self.to_percent(self._cache[key])
        return out if idx is None else out[np.asarray(idx)]

    def predict_graphs(self, graphs: Sequence[ArchGraph]) -> np.ndarray:
        """Accuracy (%) of arbitrary cell graphs of the checkpoint's space."""
        from .train import predict_tokens

        graphs = list(graphs)
        if self.space and any(g.space != self.space for g in graphs):
            raise GraphError(f"this predictor was trained on {self.space} cells; got "
                             f"{sorted({g.space for g in graphs})}")
        tk = tokenize_graphs(graphs, self.scheme)
        mask = None if tk.mask.all() else torch.from_numpy(tk.mask)
        raw = predict_tokens(self.model, torch.from_numpy(tk.depth), torch.from_numpy(tk.nodes), mask)
        return self.to_percent(raw)

