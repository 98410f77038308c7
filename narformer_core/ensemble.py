"""Ensemble checkpoints: several NAR-Former runs on one split, saved and loaded as one file.

An ensemble file holds only tensors and plain containers, like a single checkpoint, so it loads
with ``weights_only=True`` through :func:`narformer_core.predictors.load_checkpoint` and
everything downstream (evaluate, the app, search) treats it as one predictor. Its members must
share the split, the label source, the token scheme and the target map: their outputs are
averaged in target units, which only means the same thing under one target map.

    ck = build_ensemble([run1 / "best_ema.pt", run2 / "best.pt", ...])
    save_ensemble(ck, "nb201-1563-ensemble.pt")

Large ensembles are saved across files: ``save_ensemble`` keeps each file under a size (the
repository ships no file over 20 MB) by moving members into part files ``NAME.pt.part2``, ... beside
the main file, which lists each part's name and SHA-256; the loader checks both before it reads a
part (``load_member_files``). Since the main file holds the parts' hashes, its own hash pins them all.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

ENSEMBLE_FORMAT = "narformer-ensemble-1"
PART_FORMAT = "narformer-ensemble-part-1"
MAX_FILE_BYTES = 18_000_000   # per file when saving: under the repository's 20 MB limit with room
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
        if first is None:
            first = ck
        for key in ("task", "split", "target"):
            if not _same(ck.get(key), first.get(key)):
                raise EnsembleError(f"{p} has another {key} than {paths[0]}: members of an ensemble must be "
                                    "trained on one split with one label source and target map")
        if ck.get("format") == ENSEMBLE_FORMAT:
            # An ensemble contributes its members (float32 again; re-quantizing int8 weights gives
            # back the same integers, since each row's largest value sets its scale).
            sources = [(m, f"{p}#member{i}" if "source" not in m else f"{m['source']} (via {p.name})")
                       for i, m in enumerate(check_members(ck, p.name, EnsembleError))]
        else:
            sources = [(ck, str(p))]
        for src, name in sources:
            member = {k: src[k] for k in _MEMBER_KEYS if k in src}
            if int8:
                member["state_dict"], member["int8_scales"] = quantize_int8(src["state_dict"])
            elif float16:
                member["state_dict"] = {k: _float16(v) for k, v in src["state_dict"].items()}
            members.append({**member, "source": name})
    if len(members) > MAX_MEMBERS:
        raise EnsembleError(f"at most {MAX_MEMBERS} members, got {len(members)}")
    return {"format": ENSEMBLE_FORMAT, "kind": "ensemble", "members": members,
            "model_config": first["model_config"], "train_config": first.get("train_config", {}),
            "task": first["task"], "split": first["split"], "target": first.get("target")}


def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def save_ensemble(ck: dict, out: str | Path, max_file_bytes: int = MAX_FILE_BYTES) -> list[Path]:
    """Save an ensemble, its members spread over ``out`` and part files so no file passes
    ``max_file_bytes`` (unless one member alone does). Returns the files written, main file first.

    Part files from an earlier save of the same name that this one does not use are removed, so
    the folder never holds parts that no main file lists."""
    import hashlib

    out = Path(out)
    header = {k: v for k, v in ck.items() if k not in ("members", "member_files")}
    budget = max_file_bytes - _nbytes(header) - 1_000_000          # room for the pickle's own bytes
    groups: list[list[dict]] = [[]]
    used = 0
    for m in ck["members"]:
        size = _nbytes(m)
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(m)
        used += size
    written, parts = [], []
    for k, group in enumerate(groups[1:], start=2):
        part = out.with_name(f"{out.name}.part{k}")
        torch.save({"format": PART_FORMAT, "members": group}, part)
        parts.append({"file": part.name, "sha256": hashlib.sha256(part.read_bytes()).hexdigest(),
                      "members": len(group)})
        written.append(part)
    for stale in out.parent.glob(f"{out.name}.part*"):
        if stale not in written:
            stale.unlink()
    main = {**header, "members": groups[0]}
    if parts:
        main["member_files"] = parts
    torch.save(main, out)
    return [out, *written]


def load_member_files(ck: dict, path: Path, error: type[Exception]) -> None:
    """Append to ``ck["members"]`` the members kept in the part files the main file lists.

    Each part must be a plain file name beside the main file (no folders: a doctored main file
    cannot point anywhere else), match its recorded SHA-256, and be a part file; it is read with
    weights_only=True like every checkpoint."""
    import hashlib
    import re

    from .predictors import load_weights_only

    entries = ck.get("member_files", [])
    if not isinstance(entries, list) or len(entries) > MAX_MEMBERS:
        raise error(f"{path.name}: its list of part files is malformed")
    for e in entries:
        name = e.get("file") if isinstance(e, dict) else None
        digest = e.get("sha256") if isinstance(e, dict) else None
        if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+\.part\d+", name) or ".." in name \
                or not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise error(f"{path.name}: its list of part files names {name!r}, which is not a part file name")
        part = path.with_name(name)
        if not part.is_file():
            raise error(f"{path.name} keeps some of its members in {name}, which is not beside it: copy the "
                        f"part files ({path.name}.part*) together with the main file")
        if hashlib.sha256(part.read_bytes()).hexdigest() != digest:
            raise error(f"{name} does not match the SHA-256 that {path.name} records for it (damaged, or from "
                        "another save of the ensemble)")
        got = load_weights_only(part, error)
        if not isinstance(got, dict) or got.get("format") != PART_FORMAT or not isinstance(got.get("members"), list):
            raise error(f"{name} is not a part file of an ensemble (expected format {PART_FORMAT})")
        if not isinstance(ck.get("members"), list):
            raise error(f"{path.name}: an ensemble file without a list of members")
        ck["members"] = ck["members"] + got["members"]
        if len(ck["members"]) > MAX_MEMBERS:
            raise error(f"{path.name}: more than the {MAX_MEMBERS} members an ensemble may hold")


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
    """Kendall's tau of a loaded predictor on its own validation cells, against its training labels.

    Scored on the networks' own outputs (no averaging over equivalent NB201 cells): the figure a
    training run logs as val_tau, so an ensemble's recorded val_tau compares with its members'.
    ``evaluate`` reports the averaged one as val_tau_as_predicted."""
    from .metrics import kendall_tau

    task = predictor.task()
    idx = np.asarray(predictor.meta["val_idx"], dtype=np.int64)
    before = getattr(predictor, "equivalence", None)
    if before is not None:
        predictor.equivalence = "off"
    try:
        return float(kendall_tau(predictor.predict(task, idx), task.y[idx]))
    finally:
        if before is not None:
            predictor.equivalence = before


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
