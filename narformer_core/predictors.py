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

from .ensemble import ENSEMBLE_FORMAT, check_members, load_member_files
from .graph import ArchGraph, GraphError
from .model import NARFormer, NARFormerConfig, NARFormerEnsemble
from .spaces import nb201
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


def _whole(v) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def narformer_bounds(config) -> tuple[list[int], list[int]]:
    """(sizes, block counts) a NARFormerConfig dict asks for, for :func:`checked_module`.

    Sizes are only those that become tensor dims (head_hidden and static_dim only for the latency
    head); anything that is not a whole number is left to NARFormerConfig to refuse.
    """
    if not isinstance(config, dict):
        return [], []
    keys = ["token_dim", "depth_dim", "d_model", "ffn_dim", "n_heads"]
    if config.get("head") == "latency":
        keys += ["head_hidden", "static_dim"]
    sizes = [_whole(config.get(k)) for k in keys]
    counts = [_whole(v) for k in ("depths", "queries") if isinstance(config.get(k), (list, tuple))
              for v in config[k]]
    return sizes, counts


def checked_module(make, state_dict, what: str, error: type[Exception] = CheckpointError,
                   sizes=(), counts=()) -> torch.nn.Module:
    """``make()`` with ``state_dict`` loaded, refusing weights that do not fit it with ``error``.

    A doctored config could ask for a model of terabytes, allocated before any shape is compared.
    So first: no size it asks for (``sizes``, e.g. d_model) may exceed the widest saved tensor (a
    real config's widths are all dims of some weight), and its block ``counts`` together may not
    exceed the number of saved tensors (every block has several). Then names and shapes are
    compared (a checkpoint of another model size is named as such), and NaN or infinite weights
    are refused: they would only give NaN predictions. (Building on the meta device instead would
    cost seconds of imports on the first call.)
    """
    if not isinstance(state_dict, dict) or not state_dict or \
            not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise error(f"{what}: its state_dict is not a table of tensors")
    widest = max((max(v.shape) for v in state_dict.values() if v.dim()), default=1)
    if max(sizes, default=0) > widest:
        raise error(f"{what} does not match its model config: the config asks for a size of "
                    f"{max(sizes):,}, but no saved tensor is wider than {widest:,} (another model?)")
    if sum(counts) > len(state_dict):
        raise error(f"{what} does not match its model config: the config asks for {sum(counts):,} blocks, "
                    f"more than the {len(state_dict)} saved tensors could hold (another model?)")
    try:
        module = make()
    except (TypeError, ValueError, RuntimeError, KeyError, AttributeError) as e:
        raise error(f"{what}: its model config cannot build the model ({type(e).__name__}: {str(e)[:200]})") from None
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    if missing or extra:
        raise error(f"{what} does not match its model config: tensors missing {missing[:3]}"
                    f"{' ...' if len(missing) > 3 else ''}, unexpected {extra[:3]}{' ...' if len(extra) > 3 else ''} "
                    "(a checkpoint of a different model?)")
    for k, t in expected.items():
        got = tuple(state_dict[k].shape)
        if got != tuple(t.shape):
            raise error(f"{what} does not match its model config: tensor {k} has shape {list(got)}, the "
                        f"config needs {list(t.shape)} (a checkpoint of a different model size?)")
        v = state_dict[k]
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise error(f"{what}: tensor {k} holds NaN or infinite values (a damaged checkpoint?)")
    module.load_state_dict(state_dict)
    return module.eval()


def load_weights_only(path: Path, error: type[Exception] = CheckpointError, map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with one clear sentence for any failure.

    weights_only=True unpickles tensors and plain containers only: a file that names any other
    Python object (e.g. ``builtins.exec``, how a malicious pickle runs code) is refused before that
    object is created, so nothing in the file ever runs. Torch's own message for that case advises
    re-loading with weights_only=False; the user is told what the file holds instead.
    """
    import pickle
    import re

    import warnings

    try:
        with warnings.catch_warnings():
            # A file pickled with protocol 4/5 makes torch warn before it refuses or loads it.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if m:
            raise error(f"{path.name} is not a loadable checkpoint: it holds a Python object ({m.group(1)}) "
                        "besides tensors and plain data, and was refused unread (checkpoints are loaded with "
                        "weights_only=True: nothing in them runs). Use a checkpoint saved by this project.") from None
        raise error(f"{path.name} is not a loadable checkpoint: not tensors and plain data (damaged, or a pickle "
                    "of something else); refused unread (loaded with weights_only=True: nothing in it runs)") from None
    except Exception as e:  # a truncated zip, not a torch file at all, an I/O error
        msg = str(e).strip().splitlines()[0] if str(e).strip() else "the file ends too early?"
        msg = msg.split(" This is an internal miniz error")[0][:200]
        raise error(f"{path.name} is not a loadable checkpoint ({type(e).__name__}: {msg})") from None


# What from_checkpoint reads besides the weights: a checkpoint without these is not usable.
_CKPT_TABLES = {"model_config": dict, "state_dict": dict, "task": dict, "split": dict}


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[NARFormer, dict]:
    """Load weights with ``weights_only=True`` (no code from the file ever runs)."""
    from .train import CKPT_FORMAT

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    ck = load_weights_only(path, CheckpointError, device)
    is_ensemble = isinstance(ck, dict) and ck.get("format") == ENSEMBLE_FORMAT
    if not isinstance(ck, dict) or (ck.get("format") != CKPT_FORMAT and not is_ensemble):
        raise CheckpointError(f"{path.name} is not a NAR-Former checkpoint (expected format {CKPT_FORMAT} "
                              f"or {ENSEMBLE_FORMAT})")
    if is_ensemble:
        # The first member's config and weights stand in for the top-level tables checked below.
        load_member_files(ck, path, CheckpointError)
        members = check_members(ck, path.name, CheckpointError)
        ck.setdefault("state_dict", members[0]["state_dict"])
    # The keys the loader and from_checkpoint read, checked here: a doctored or foreign file gets
    # one sentence, not a KeyError from deep inside.
    for k, typ in _CKPT_TABLES.items():
        if not isinstance(ck.get(k), typ):
            raise CheckpointError(f"{path.name} is not a complete NAR-Former checkpoint: "
                                  f"{k!r} is {'missing' if k not in ck else type(ck[k]).__name__}")
    for k in ("train", "val"):
        if not isinstance(ck["split"].get(k), torch.Tensor) or ck["split"][k].dtype not in (torch.int64, torch.int32):
            raise CheckpointError(f"{path.name}: its split has no index tensor {k!r}")
    if not isinstance(ck["task"].get("space"), str):
        raise CheckpointError(f"{path.name}: its task does not name the search space")

    if is_ensemble:
        model = NARFormerEnsemble([_checked_narformer(m["model_config"], m["state_dict"], f"{path.name} member {i}")
                                   for i, m in enumerate(members)])
    else:
        model = _checked_narformer(ck["model_config"], ck["state_dict"], path.name)
    return model.to(device), ck


def _checked_narformer(config: dict, state_dict: dict, what: str) -> NARFormer:
    def make():
        return NARFormer(NARFormerConfig(**config))

    return checked_module(make, state_dict, what, CheckpointError, *narformer_bounds(config))


def _finite(pred: np.ndarray, path: str | None) -> np.ndarray:
    # Finite weights can still overflow to NaN (a damaged checkpoint with a few huge values): say
    # so instead of handing NaN to rankings, Kendall's tau or the page.
    bad = int(np.size(pred) - np.isfinite(pred).sum())
    if bad:
        raise CheckpointError(f"{Path(path).name if path else 'the checkpoint'} gives no finite prediction for "
                              f"{bad} of {np.size(pred)} architectures (damaged weights?)")
    return pred


class NARFormerPredictor(AccuracyPredictor):
    name = "NAR-Former"

    def __init__(self, model: NARFormer | None = None, meta: dict | None = None, scheme: str = "nerf",
                 train_kwargs: dict | None = None, device: str = "cpu"):
        self.model, self.meta, self.scheme, self.device = model, meta or {}, scheme, device
        self.train_kwargs = train_kwargs or {}
        self._cache: dict = {}
        # Arithmetic of predict/predict_graphs: "fp32" (default; what every shipped figure used),
        # "bf16" or "auto" (train.resolve_precision).
        self.precision = "fp32"
        # NB201: "mean" gives every cell the mean prediction over its functionally equivalent
        # cells (spaces/nb201.py, "Functional equivalence"); "off": the network's own outputs.
        self.equivalence = "mean"

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> "NARFormerPredictor":
        model, ck = load_checkpoint(path, device)
        meta = {k: ck[k] for k in ("kind", "task", "train_config", "model_config", "epoch", "val_tau",
                                   "distilled_from") if k in ck}
        if "members" in ck:     # an ensemble: what each member was, without its weights
            meta["members"] = [{k: m.get(k) for k in ("kind", "epoch", "val_tau", "source")} for m in ck["members"]]
        meta["train_idx"] = ck["split"]["train"].numpy()
        meta["val_idx"] = ck["split"]["val"].numpy()
        meta["path"] = str(path)
        try:
            meta["target"] = TargetMap.from_state(ck.get("target"))
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise CheckpointError(f"{Path(path).name}: its target map is damaged ({type(e).__name__}: {e})") from None
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

    def averages_equivalents(self, space: str | None) -> bool:
        return self.equivalence == "mean" and space == "nb201"

    def predict(self, task: AccuracyTask, idx: np.ndarray | None = None) -> np.ndarray:
        """Accuracy (%) of the task's architectures (all, or those at ``idx``)."""
        if self.equivalence not in ("mean", "off"):
            raise ValueError(f"equivalence must be 'mean' or 'off', got {self.equivalence!r}")
        # Every NB201 task is the whole space in enumeration order (tasks.load_task, search).
        if not self.averages_equivalents(task.space) or len(task) != nb201.N_ARCHS:
            return self._predict_raw(task, idx)
        if idx is None:
            return nb201.mean_over_equivalents(self._predict_raw(task))
        return nb201.own_and_class_means(idx, lambda members: self._predict_raw(task, members))[1]

    def _predict_raw(self, task: AccuracyTask, idx: np.ndarray | None = None) -> np.ndarray:
        from .train import predict_tokens

        key = (task.space, task.labels, len(task), self.precision)
        if key not in self._cache and idx is not None and len(idx) <= len(task) // 8:
            # A few cells of a model that may never be asked again (a search guide, retrained
            # every round): predict just those instead of the whole space.
            i = np.asarray(idx, dtype=np.int64)
            tk = task.tokens(self.scheme)
            mask = None if tk.mask[i].all() else torch.from_numpy(tk.mask[i])
            raw = predict_tokens(self.model, torch.from_numpy(tk.depth[i]), torch.from_numpy(tk.nodes[i]), mask,
                                 precision=self.precision)
            return _finite(self.to_percent(raw), self.meta.get("path"))
        if key not in self._cache:
            tk = task.tokens(self.scheme)
            mask = None if tk.mask.all() else torch.from_numpy(tk.mask)
            self._cache[key] = predict_tokens(self.model, torch.from_numpy(tk.depth),
                                              torch.from_numpy(tk.nodes), mask, precision=self.precision)
        out = _finite(self.to_percent(self._cache[key]), self.meta.get("path"))
        return out if idx is None else out[np.asarray(idx)]

    def predict_graphs(self, graphs: Sequence[ArchGraph]) -> np.ndarray:
        """Accuracy (%) of arbitrary cell graphs of the checkpoint's space."""
        graphs = list(graphs)
        if self.space and any(g.space != self.space for g in graphs):
            raise GraphError(f"this predictor was trained on {self.space} cells; got "
                             f"{sorted({g.space for g in graphs})}")
        out = self._predict_graphs_raw(graphs)
        if self.averages_equivalents(self.space):
            for k, g in enumerate(graphs):
                out[k] = self._nb201_equivalents_mean(g, out[k])
        return out

    def _nb201_equivalents_mean(self, graph: ArchGraph, own: float) -> float:
        """Mean prediction over the cells equivalent to ``graph`` (``own`` where it has none)."""
        try:
            i = nb201.index_of(nb201.parse(nb201.from_graph(graph)))
        except GraphError:          # not the NB201 layout: nothing is known to be equivalent
            return own
        members = nb201.equivalent_indices([i])
        if len(members) == 1:
            return own
        cells = nb201.enumerate_all()
        return float(self._predict_graphs_raw([nb201.to_graph(cells[j]) for j in members]).mean())

    def _predict_graphs_raw(self, graphs: list[ArchGraph]) -> np.ndarray:
        from .train import predict_tokens

        tk = tokenize_graphs(graphs, self.scheme)
        mask = None if tk.mask.all() else torch.from_numpy(tk.mask)
        raw = predict_tokens(self.model, torch.from_numpy(tk.depth), torch.from_numpy(tk.nodes), mask,
                             precision=self.precision)
        return _finite(self.to_percent(raw), self.meta.get("path"))

