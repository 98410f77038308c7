"""Ensemble checkpoints: several NAR-Former runs on one split, saved and loaded as one file.

An ensemble file holds only tensors and plain containers, like a single checkpoint, so it loads
with ``weights_only=True`` through :func:`narformer_core.predictors.load_checkpoint` and
everything downstream (evaluate, the app, search) treats it as one predictor. Its members must
share the split, the label source, the token scheme and the target map: their outputs are
averaged in target units, which only means the same thing under one target map.

    ck = build_ensemble([run1 / "best_ema.pt", run2 / "best.pt", ...])
    torch.save(ck, "nb201-1563-ensemble.pt")
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

ENSEMBLE_FORMAT = "narformer-ensemble-1"
MAX_MEMBERS = 64          # a doctored file cannot ask for thousands of models
_MEMBER_KEYS = ("model_config", "state_dict", "kind", "epoch", "val_tau", "train_config")


class EnsembleError(ValueError):
    """Checkpoints that cannot form one ensemble; the message says which and why."""


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape \
            and bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _float16(v: torch.Tensor) -> torch.Tensor:
    return v.half() if v.is_floating_point() else v


def quantize_int8(state_dict: dict) -> tuple[dict, dict]:
    """(weights, scales): every matrix as int8 with one float32 scale per output row (symmetric,
    max |w| -> 127), every other float tensor as float16. A quarter of the float32 file: eight
    members of the fast preset fit in 12 MB instead of 46."""
    q, scales = {}, {}
    for k, v in state_dict.items():
        if v.is_floating_point() and v.dim() >= 2:
            rows = v.float().reshape(v.shape[0], -1)
            scale = rows.abs().amax(dim=1).clamp_min(1e-12) / 127.0
            q[k] = torch.round(rows / scale[:, None]).to(torch.int8).reshape(v.shape)
            scales[k] = scale
        else:
            q[k] = _float16(v)
    return q, scales


def dequantize_int8(weights: dict, scales: dict, name: str, error: type[Exception]) -> dict:
    """The float32 state_dict of :func:`quantize_int8`'s output; malformed scales -> ``error``."""
    if not isinstance(scales, dict) or not all(isinstance(v, torch.Tensor) for v in scales.values()):
        raise error(f"{name}: its int8 scales are not a table of tensors")
    out = dict(weights)
    for k, scale in scales.items():
        w = weights.get(k)
        if not isinstance(w, torch.Tensor) or w.dtype != torch.int8 or scale.shape != (w.shape[0],) \
                or not bool(torch.isfinite(scale).all()):
            raise error(f"{name}: int8 tensor {k} does not match its scales (a damaged file?)")
        out[k] = w.float() * scale.float().reshape(-1, *([1] * (w.dim() - 1)))
    return out


def build_ensemble(paths: Sequence[str | Path], float16: bool = False, int8: bool = False) -> dict:
    """One ensemble checkpoint (a dict for ``torch.save``) from single-run checkpoints.

    Each path is loaded and checked like any checkpoint; they must agree on task, split and
    target, else :class:`EnsembleError` names the first one that differs and in what.
    ``float16`` stores the weights at half width (half the file; they load back into float32
    models): for shipping several members in the repository. ``int8`` stores matrices at a quarter
    (:func:`quantize_int8`).
    """
    from .predictors import load_checkpoint

    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise EnsembleError("an ensemble needs at least two checkpoints")
    if len(paths) > MAX_MEMBERS:
        raise EnsembleError(f"at most {MAX_MEMBERS} members, got {len(paths)}")
    members, first = [], None
    for p in paths:
        _, ck = load_checkpoint(p)
        if ck.get("format") == ENSEMBLE_FORMAT:
            raise EnsembleError(f"{p} is itself an ensemble; list its runs' checkpoints instead")
        if first is None:
            first = ck
        for key in ("task", "split", "target"):
            if not _same(ck.get(key), first.get(key)):
                raise EnsembleError(f"{p} has another {key} than {paths[0]}: members of an ensemble must be "
                                    "trained on one split with one label source and target map")
        member = {k: ck[k] for k in _MEMBER_KEYS if k in ck}
        if int8:
            member["state_dict"], member["int8_scales"] = quantize_int8(ck["state_dict"])
        elif float16:
            member["state_dict"] = {k: _float16(v) for k, v in ck["state_dict"].items()}
        members.append({**member, "source": str(p)})
    return {"format": ENSEMBLE_FORMAT, "kind": "ensemble", "members": members,
            "model_config": first["model_config"], "train_config": first.get("train_config", {}),
            "task": first["task"], "split": first["split"], "target": first.get("target")}


def check_members(ck: dict, name: str, error: type[Exception]) -> list[dict]:
    """The member list of a loaded ensemble file, refused with ``error`` where it is malformed."""
    members = ck.get("members")
    if not isinstance(members, list) or not members:
        raise error(f"{name}: an ensemble file without a list of members")
    if len(members) > MAX_MEMBERS:
        raise error(f"{name}: {len(members)} members, more than the {MAX_MEMBERS} an ensemble file may hold")
    out = []
    for i, m in enumerate(members):
        if not isinstance(m, dict) or not isinstance(m.get("model_config"), dict) \
                or not isinstance(m.get("state_dict"), dict):
            raise error(f"{name}: member {i} has no model config and state_dict")
        if "int8_scales" in m:
            m = {**m, "state_dict": dequantize_int8(m["state_dict"], m["int8_scales"], f"{name} member {i}", error)}
        out.append(m)
    return out


def validation_tau(predictor) -> float:
    """Kendall's tau of a loaded predictor on its own validation cells, against its training labels."""
    from .metrics import kendall_tau

    task = predictor.task()
    idx = np.asarray(predictor.meta["val_idx"], dtype=np.int64)
    return float(kendall_tau(predictor.predict(task, idx), task.y[idx]))


def distill(teacher_path: str | Path, run_dir: str | Path, cfg, progress: bool = False) -> Path:
    """Train one model to reproduce an ensemble's predictions; returns the student's checkpoint.

    Predicting with every member costs members x the time of one model. The student learns the
    teacher's predicted accuracies of every cell of the space except the validation cells (their
    structures only: no label beyond the teacher's own training labels is used), is selected on
    the validation cells' true labels like any run, and is saved as ``student.pt`` with the
    teacher's split: its labelled training cells are the teacher's, so ``kendall_tau_unseen``
    still leaves out exactly the cells whose labels anyone trained on.
    ``cfg`` is a TrainConfig; its sizes and seed are replaced by those of the teacher.
    """
    import dataclasses
    import json

    from .cli import selected_checkpoint
    from .predictors import NARFormerPredictor
    from .train import train

    teacher = NARFormerPredictor.from_checkpoint(teacher_path)
    task = teacher.task()
    val_idx = np.sort(np.asarray(teacher.meta["val_idx"], dtype=np.int64))
    pseudo = np.asarray(teacher.predict(task), dtype=np.float64).copy()
    pseudo[val_idx] = task.y[val_idx]           # validation keeps the measured labels
    unlabelled = np.setdiff1d(np.arange(len(task)), val_idx)
    student_task = dataclasses.replace(task, y=pseudo, _tokens=task._tokens)
    cfg = dataclasses.replace(cfg, space=task.space, labels=task.labels, test_labels=task.test_labels,
                              train_size=len(unlabelled), val_size=len(val_idx),
                              seed=int(teacher.meta.get("train_config", {}).get("seed", 0)), test_every=0)
    run_dir = Path(run_dir)
    summary = train(cfg, run_dir, resume=False, progress=progress, task=student_task,
                    indices=(unlabelled, val_idx))
    ck = torch.load(selected_checkpoint(run_dir, summary), map_location="cpu", weights_only=True)
    ck = {k: v for k, v in ck.items() if k not in ("optimizer", "ema_state_dict", "rng", "rng_ranks")}
    ck["split"] = {"train": torch.from_numpy(np.sort(np.asarray(teacher.meta["train_idx"], dtype=np.int64))),
                   "val": torch.from_numpy(val_idx)}
    ck["task"] = {**ck["task"], "labels": task.labels, "test_labels": task.test_labels}
    ck["distilled_from"] = {"teacher": str(teacher_path), "teacher_val_tau": teacher.meta.get("val_tau"),
                            "teacher_members": len(teacher.meta.get("members", ())) or 1,
                            "cells_with_teacher_labels": int(len(unlabelled))}
    out = run_dir / "student.pt"
    torch.save(ck, out)
    (run_dir / "distilled.json").write_text(json.dumps({**ck["distilled_from"], "summary": summary}, indent=1))
    return out
