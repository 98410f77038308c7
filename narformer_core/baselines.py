"""Baseline accuracy predictors behind the interface of predictors.py, for a fair arena.

Each predictor reads only ``task.y[train_idx]`` (and ``task.y[val_idx]`` for model selection
when given), so the arena and the search can trust that nothing else leaks in:

- ``mlp``:  an MLP on the adjacency + one-hot op encoding (torch).
- ``gin``:  a graph isomorphism network over the cell DAG, messages along and against the
            edges, written in plain torch (dense batched adjacency; cells have <= 8 nodes).
- ``gbdt``: gradient-boosted trees (sklearn HistGradientBoostingRegressor) on the path encoding
            (BANANAS-style counts of the op sequences on input->output paths) or the adjacency
            encoding; tree size and count are chosen on the validation cells (or by
            cross-validation over the training cells), see :class:`GBDTPredictor`.
- ``zen``:  the Zen zero-cost score from the shared NB201 data; training-free, ``fit`` does
            nothing and ``predict`` returns the score (not an accuracy: only its ranking means
            something).
- ``narformer``: :class:`~narformer_core.predictors.NARFormerPredictor` (trains with train.py).

``make_predictor(name, **kw)`` builds any of them by name.
"""
from __future__ import annotations

import copy
import math
import weakref
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .metrics import kendall_tau
from .predictors import AccuracyPredictor, NARFormerPredictor
from .tasks import AccuracyTask

# ---------------------------------------------------------------------------- encodings
# Encodings are computed once per task for every architecture and kept beside the task (by weak
# reference, so a dropped task frees them); predictors slice them by index.
_ENC: dict[tuple[int, int], tuple[weakref.ref, weakref.ref, dict]] = {}


def _task_cache(task: AccuracyTask) -> dict:
    """Encodings depend on the structure only: keyed by the task's op and adjacency arrays, so
    copies of a task with other labels (a search's masked view) share them."""
    key = (id(task.ops), id(task.adj))
    hit = _ENC.get(key)
    if hit is not None and hit[0]() is task.ops and hit[1]() is task.adj:
        return hit[2]
    for k in [k for k, (a, b, _) in _ENC.items() if a() is None or b() is None]:
        del _ENC[k]
    store: dict = {}
    _ENC[key] = (weakref.ref(task.ops), weakref.ref(task.adj), store)
    return store


def _node_mask(task: AccuracyTask) -> np.ndarray:
    n = task.ops.shape[1]
    return np.arange(n)[None, :] < np.asarray(task.n_nodes)[:, None]


def one_hot_ops(task: AccuracyTask) -> np.ndarray:
    """(M, N, V) float32 one-hot op ids, zero on padding nodes."""
    store = _task_cache(task)
    if "onehot" not in store:
        v = int(task.ops.max()) + 1
        oh = np.eye(v, dtype=np.float32)[task.ops]
        oh *= _node_mask(task)[:, :, None]
        store["onehot"] = oh
    return store["onehot"]


def adjacency_encoding(task: AccuracyTask) -> np.ndarray:
    """(M, N(N-1)/2 + N*V) float32: upper-triangular adjacency bits, then one-hot ops."""
    store = _task_cache(task)
    if "adjacency" not in store:
        oh = one_hot_ops(task)
        m, n, _ = oh.shape
        iu = np.triu_indices(n, k=1)
        adj = task.adj if task.adj.ndim == 3 else np.broadcast_to(task.adj, (m, n, n))
        store["adjacency"] = np.concatenate(
            [adj[:, iu[0], iu[1]].astype(np.float32), oh.reshape(m, -1)], axis=1)
    return store["adjacency"]


def _paths(adj: np.ndarray, n: int) -> list[tuple[int, ...]]:
    """All input->output paths of a DAG, as the tuples of intermediate nodes they pass."""
    succ = [np.flatnonzero(adj[i, :n]).tolist() for i in range(n)]
    out: list[tuple[int, ...]] = []

    def walk(i: int, trail: tuple[int, ...]) -> None:
        for j in succ[i]:
            if j == n - 1:
                out.append(trail)
            else:
                walk(j, trail + (j,))

    walk(0, ())
    return out


def path_encoding(task: AccuracyTask) -> np.ndarray:
    """(M, P) float32 counts of each op sequence on input->output paths (BANANAS path encoding).

    Paths through an NB201 ``none`` op carry no signal and are dropped; the vocabulary is every
    op sequence that occurs anywhere in the task (at most 84 for NB201).
    """
    store = _task_cache(task)
    if "path" in store:
        return store["path"]
    dead = {5} if task.space == "nb201" else set()   # OP_IDS["none"] of NB201
    shared = task.adj.ndim == 2
    fixed = _paths(task.adj, task.ops.shape[1]) if shared else None
    seqs: list[list[tuple[int, ...]]] = []
    vocab: dict[tuple[int, ...], int] = {}
    for i in range(len(task)):
        n = int(task.n_nodes[i])
        paths = fixed if shared else _paths(task.adj[i], n)
        ops = task.ops[i]
        row = []
        for p in paths:
            key = tuple(int(ops[k]) for k in p)
            if dead and any(o in dead for o in key):
                continue
            row.append(key)
            vocab.setdefault(key, len(vocab))
        seqs.append(row)
    enc = np.zeros((len(task), max(1, len(vocab))), dtype=np.float32)
    for i, row in enumerate(seqs):
        for key in row:
            enc[i, vocab[key]] += 1.0
    store["path"] = enc
    return enc


ENCODINGS = {"path": path_encoding, "adjacency": adjacency_encoding}


# ---------------------------------------------------------------------------- torch training
@contextmanager
def _threads(n: int | None):
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _TorchPredictor(AccuracyPredictor):
    """Shared loop: standardised MSE, AdamW, cosine decay, best-on-validation weights.

    The schedule is a number of epochs bounded below and above by a number of optimiser steps, so
    100 training cells still get enough updates and 7,813 do not take minutes. Networks this small
    run fastest on one thread (``threads=1``, restored afterwards; ``None`` keeps torch's setting).
    """

    def __init__(self, epochs: int = 300, min_steps: int = 500, max_steps: int = 3000, batch_size: int = 64,
                 lr: float = 1e-3, weight_decay: float = 1e-4, eval_every: int = 100, threads: int | None = 1):
        self.epochs, self.min_steps, self.max_steps = epochs, min_steps, max_steps
        self.batch_size, self.lr, self.weight_decay = batch_size, lr, weight_decay
        self.eval_every, self.threads = eval_every, threads
        self.net: nn.Module | None = None
        self.stats = (0.0, 1.0)
        self.meta: dict = {}

    # subclasses: build the network and turn indices into input tensors
    def _build(self, task: AccuracyTask) -> nn.Module:
        raise NotImplementedError

    def _inputs(self, task: AccuracyTask, idx: np.ndarray) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def fit(self, task, train_idx, val_idx=None, seed=0, progress=False):
        train_idx = np.asarray(train_idx, dtype=np.int64)
        if len(train_idx) < 2:
            raise ValueError(f"{self.name} needs at least 2 training architectures, got {len(train_idx)}")
        y = np.asarray(task.y[train_idx], dtype=np.float64)
        if np.isnan(y).any():
            raise ValueError(f"{int(np.isnan(y).sum())} training architectures have no label in {task.labels}")
        mu, sd = float(y.mean()), float(y.std()) or 1.0
        self.stats = (mu, sd)
        with _threads(self.threads):
            torch.manual_seed(seed)
            rng = np.random.default_rng(seed)
            net = self._build(task)
            x_tr = self._inputs(task, train_idx)
            y_tr = torch.from_numpy(((y - mu) / sd).astype(np.float32))
            bs = min(self.batch_size, len(train_idx))
            per_epoch = math.ceil(len(train_idx) / bs)
            steps = int(np.clip(self.epochs * per_epoch, self.min_steps, self.max_steps))
            opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
            use_val = val_idx is not None and len(val_idx) > 1
            if use_val:
                val_idx = np.asarray(val_idx, dtype=np.int64)
                x_va, y_va = self._inputs(task, val_idx), task.y[val_idx]
            best_tau, best_state, best_step = -2.0, None, -1
            bar = None
            if progress:
                from tqdm.auto import tqdm
                bar = tqdm(total=steps, desc=f"fit {self.name}", unit="step", dynamic_ncols=True)
            perm, pos = rng.permutation(len(train_idx)), 0
            net.train()
            for step in range(steps):
                if pos + bs > len(perm):
                    perm, pos = rng.permutation(len(train_idx)), 0
                b = torch.from_numpy(perm[pos:pos + bs])
                pos += bs
                loss = F.mse_loss(net(*(t[b] for t in x_tr)), y_tr[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if bar:
                    bar.update(1)
                if use_val and ((step + 1) % self.eval_every == 0 or step == steps - 1):
                    tau = kendall_tau(self._forward(net, x_va), y_va)
                    if tau > best_tau:
                        best_tau, best_step = tau, step + 1
                        best_state = copy.deepcopy(net.state_dict())
                    net.train()
            if bar:
                bar.close()
            if best_state is not None:
                net.load_state_dict(best_state)
        net.eval()
        self.net = net
        self.meta = {"steps": steps, "selected_step": best_step if use_val else steps,
                     "val_tau": best_tau if use_val else None}
        return self

    @torch.no_grad()
    def _forward(self, net: nn.Module, x: tuple[torch.Tensor, ...], chunk: int = 4096) -> np.ndarray:
        net.eval()
        m = x[0].shape[0]
        return torch.cat([net(*(t[i:i + chunk] for t in x)) for i in range(0, m, chunk)]).numpy() if m else np.zeros(0)

    def predict(self, task, idx=None):
        if self.net is None:
            raise ValueError(f"the {self.name} predictor is not fitted: call fit first")
        idx = np.arange(len(task)) if idx is None else np.asarray(idx, dtype=np.int64)
        with _threads(self.threads):
            z = self._forward(self.net, self._inputs(task, idx))
        return z.astype(np.float64) * self.stats[1] + self.stats[0]


class _MLP(nn.Module):
    def __init__(self, d_in: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        mods, d = [], d_in
        for _ in range(layers):
            mods += [nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout)]
            d = hidden
        mods.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x):  # (B, D) -> (B,)
        return self.net(x).squeeze(-1)


class MLPPredictor(_TorchPredictor):
    name = "MLP"

    def __init__(self, hidden: int = 128, layers: int = 3, dropout: float = 0.0, **kw):
        super().__init__(**kw)
        self.hidden, self.layers, self.dropout = hidden, layers, dropout

    def _build(self, task):
        return _MLP(adjacency_encoding(task).shape[1], self.hidden, self.layers, self.dropout)

    def _inputs(self, task, idx):
        return (torch.from_numpy(adjacency_encoding(task)[idx]),)


class _GIN(nn.Module):
    """GIN layers over a DAG: each node sums its predecessors and, separately, its successors."""

    def __init__(self, n_ops: int, hidden: int, layers: int, dropout: float, shared_adj: np.ndarray | None = None):
        super().__init__()
        self.register_buffer("shared_adj", None if shared_adj is None else torch.tensor(shared_adj, dtype=torch.float32))
        self.embed = nn.Linear(n_ops, hidden)
        self.eps = nn.Parameter(torch.zeros(layers))
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
                                  for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x, mask, last, adj=None):
        # x (B, N, V) one-hot ops; mask (B, N); adj (B, N, N) with adj[j, i] = 1 when i reads j,
        # or None for a space whose cells share one adjacency (NB201), kept as a buffer.
        adj = self.shared_adj if adj is None else adj
        h = self.embed(x)                                    # (B, N, H)
        a_in = adj.transpose(-1, -2)                         # row i: the nodes i reads from
        m = mask.unsqueeze(-1)
        for k, (mlp, norm) in enumerate(zip(self.mlps, self.norms)):
            fwd = (1 + self.eps[k]) * h + a_in @ h
            bwd = adj @ h
            h = norm(h + self.drop(mlp(torch.cat([fwd, bwd], -1)))) * m
        mean = h.sum(1) / m.sum(1).clamp_min(1)              # (B, H)
        out = h[torch.arange(h.shape[0]), last]              # the output node, (B, H)
        return self.head(torch.cat([mean, out], -1)).squeeze(-1)


class GINPredictor(_TorchPredictor):
    name = "GIN"

    def __init__(self, hidden: int = 64, layers: int = 3, dropout: float = 0.0, **kw):
        # A GIN step costs ~10x an MLP step on CPU: larger batches, fewer steps.
        kw = {"batch_size": 128, "lr": 2e-3, "min_steps": 400, "max_steps": 1500, **kw}
        super().__init__(**kw)
        self.hidden, self.layers, self.dropout = hidden, layers, dropout

    def _build(self, task):
        shared = task.adj if task.adj.ndim == 2 else None
        return _GIN(one_hot_ops(task).shape[2], self.hidden, self.layers, self.dropout, shared)

    def _inputs(self, task, idx):
        oh = torch.from_numpy(one_hot_ops(task)[idx])
        mask = torch.from_numpy(_node_mask(task)[idx].astype(np.float32))
        last = torch.from_numpy(np.asarray(task.n_nodes)[idx].astype(np.int64) - 1)
        if task.adj.ndim == 2:
            return oh, mask, last
        return oh, mask, last, torch.from_numpy(task.adj[idx].astype(np.float32))


# ---------------------------------------------------------------------------- trees and zero-cost
@contextmanager
def _omp_threads(n: int | None):
    # sklearn's OpenMP threads spin-wait; on a shared, oversubscribed CPU that costs 50x.
    if not n:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n, user_api="openmp"):
        yield


class GBDTPredictor(AccuracyPredictor):
    """Gradient-boosted trees whose size and number are chosen on validation cells, never on unseen ones.

    Hyper-parameters come from a small grid, ``max_leaf_nodes`` x ``min_samples_leaf`` (each fixed
    instead when given to the constructor), with the number of trees (up to ``max_iter``, at a
    fixed ``learning_rate``) read off the staged predictions of each fit. A setting is scored by
    Kendall's tau, the arena's own measure, on:

    - the validation cells ``val_idx`` when at least ``MIN_VAL`` are given: the arena passes the
      200 cells of ``tasks.split`` on which NAR-Former and the torch baselines pick their
      checkpoint, so every predictor gets the same labels. The model of the chosen setting is
      trained on ``train_idx`` alone, as theirs are;
    - otherwise, ``CV_FOLDS``-fold cross-validation over ``train_idx`` (tau of the pooled
      out-of-fold predictions), then one refit of the chosen setting on all training cells. A
      search round passes no validation cells; a handful of cells makes a single held-out slice
      too noisy to rank settings, hence folds;
    - with fewer than ``CV_FOLDS * 3`` training cells and no validation cells there is nothing to
      select on: the fewest leaves with the smallest leaf size (larger leaves could not split so
      few cells at all) and all ``max_iter`` trees.

    Ties go to the simpler setting (fewer leaves, larger leaves, fewer trees). Nothing but
    ``task.y[train_idx]`` and ``task.y[val_idx]`` is read; ``meta`` records what was chosen and how.
    """

    name = "GBDT"
    LEAVES = (4, 8, 16, 31)
    MIN_LEAF = (3, 10)
    MIN_VAL = 10
    CV_FOLDS = 3

    def __init__(self, encoding: str = "path", max_iter: int = 300, learning_rate: float = 0.05,
                 max_leaf_nodes: int | None = None, min_samples_leaf: int | None = None, l2_regularization: float = 0.0,
                 threads: int | None = 1, tree_checkpoints: int = 15):
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r} for GBDT; choose from {', '.join(ENCODINGS)}")
        if max_iter < 1:
            raise ValueError(f"GBDT max_iter must be at least 1 tree, got {max_iter}")
        self.encoding, self.max_iter, self.learning_rate = encoding, max_iter, learning_rate
        self.max_leaf_nodes, self.min_samples_leaf, self.l2 = max_leaf_nodes, min_samples_leaf, l2_regularization
        self.threads, self.tree_checkpoints = threads, tree_checkpoints
        self.model = None
        self.columns: np.ndarray | None = None
        self.meta: dict = {}

    def grid(self) -> list[tuple[int, int]]:
        """(max_leaf_nodes, min_samples_leaf) settings tried, simplest first."""
        leaves = (self.max_leaf_nodes,) if self.max_leaf_nodes else self.LEAVES
        min_leaf = (self.min_samples_leaf,) if self.min_samples_leaf else tuple(sorted(self.MIN_LEAF, reverse=True))
        return [(a, b) for a in leaves for b in min_leaf]

    def _trees_to_score(self) -> np.ndarray:
        """Numbers of trees at which a setting is scored: evenly spaced, the last one max_iter."""
        k = max(1, min(self.tree_checkpoints, self.max_iter))
        return np.unique(np.linspace(self.max_iter / k, self.max_iter, k).round().astype(int))

    def _model(self, leaves: int, min_leaf: int, trees: int, seed: int):
        from sklearn.ensemble import HistGradientBoostingRegressor

        return HistGradientBoostingRegressor(
            max_iter=int(trees), learning_rate=self.learning_rate, max_leaf_nodes=int(leaves),
            min_samples_leaf=int(min_leaf), l2_regularization=self.l2, early_stopping=False, random_state=seed)

    def _staged(self, x_fit, y_fit, x_eval, leaves, min_leaf, seed, at: np.ndarray) -> np.ndarray:
        """(len(at), len(x_eval)) predictions after each number of trees in ``at``."""
        m = self._model(leaves, min_leaf, self.max_iter, seed).fit(x_fit, y_fit)
        want, out = set(at.tolist()), []
        for k, p in enumerate(m.staged_predict(x_eval), start=1):
            if k in want:
                out.append(p)
        return np.asarray(out)

    @staticmethod
    def _labels(task, idx: np.ndarray, what: str) -> np.ndarray:
        y = np.asarray(task.y[idx], dtype=np.float64)
        if np.isnan(y).any():
            raise ValueError(f"{int(np.isnan(y).sum())} {what} architectures have no label in {task.labels}")
        return y

    def fit(self, task, train_idx, val_idx=None, seed=0, progress=False):
        train_idx = np.asarray(train_idx, dtype=np.int64)
        if len(train_idx) < 2:
            raise ValueError(f"GBDT needs at least 2 training architectures, got {len(train_idx)}")
        y = self._labels(task, train_idx, "training")
        val_idx = None if val_idx is None else np.asarray(val_idx, dtype=np.int64)
        if val_idx is not None and len(val_idx) < self.MIN_VAL:
            val_idx = None                     # too few to rank settings: select on the training cells
        # Columns constant over the training cells can never split; dropping them makes binning,
        # the fixed cost of each of the grid's fits, several times cheaper on small sets.
        enc = ENCODINGS[self.encoding](task)
        x = enc[train_idx]
        self.columns = np.flatnonzero(x.min(0) != x.max(0))
        if not len(self.columns):       # every training cell encodes alike: one column, no split
            self.columns = np.arange(1)
        enc = enc[:, self.columns]
        x = enc[train_idx]
        grid, at = self.grid(), self._trees_to_score()
        with _omp_threads(self.threads):
            if val_idx is not None:
                y_eval, how = self._labels(task, val_idx, "validation"), f"{len(val_idx)} validation cells"
                staged = {g: self._staged(x, y, enc[val_idx], *g, seed, at) for g in grid}
            elif len(train_idx) >= 3 * self.CV_FOLDS:
                folds = np.array_split(np.random.default_rng(seed).permutation(len(train_idx)), self.CV_FOLDS)
                order = np.concatenate(folds)
                y_eval, how = y[order], f"{self.CV_FOLDS}-fold cross-validation on the {len(train_idx)} training cells"
                staged = {}
                for g in grid:
                    parts = []
                    for f in folds:
                        rest = np.setdiff1d(np.arange(len(train_idx)), f)
                        parts.append(self._staged(x[rest], y[rest], x[f], *g, seed, at))
                    staged[g] = np.concatenate(parts, axis=1)
            else:
                staged, y_eval, how = {}, None, f"nothing: {len(train_idx)} training cells and no validation cells"
            best, best_tau = (min(a for a, _ in grid), min(b for _, b in grid), self.max_iter), None
            for g in grid:
                for k, p in zip(at, staged.get(g, ())):
                    tau = kendall_tau(p, y_eval)
                    if best_tau is None or tau > best_tau:
                        best, best_tau = (*g, int(k)), tau
            leaves, min_leaf, trees = best
            self.model = self._model(leaves, min_leaf, trees, seed).fit(x, y)
        self.meta = {"max_leaf_nodes": leaves, "min_samples_leaf": min_leaf, "n_trees": trees,
                     "learning_rate": self.learning_rate, "selected_on": how, "selection_tau": best_tau,
                     "settings_tried": len(grid) * len(at) if staged else 0}
        return self

    def predict(self, task, idx=None):
        if self.model is None:
            raise ValueError("the GBDT predictor is not fitted: call fit first")
        x = ENCODINGS[self.encoding](task)
        x = x if idx is None else x[np.asarray(idx, dtype=np.int64)]
        with _omp_threads(self.threads):
            return self.model.predict(x[:, self.columns])


class ZenPredictor(AccuracyPredictor):
    """The Zen zero-cost proxy (NB201 CIFAR-10): a score, not an accuracy; fit does nothing."""

    name = "Zen (zero-cost)"
    training_free = True

    def __init__(self, data_dir=None):
        self.data_dir = data_dir

    def fit(self, task, train_idx, val_idx=None, seed=0, progress=False):
        self._check(task)
        return self

    def _check(self, task):
        from .spaces import nb201

        if task.space != "nb201" or len(task) != nb201.N_ARCHS:
            raise ValueError(f"the Zen score exists for the NB201 space only, not {task.space}")

    def predict(self, task, idx=None):
        from .data.nb201 import load_labels

        self._check(task)
        z = load_labels("zen", self.data_dir)
        return np.array(z if idx is None else z[np.asarray(idx, dtype=np.int64)], dtype=np.float64)


def _narformer(epochs: int | None = None, train_kwargs: dict | None = None, **kw) -> NARFormerPredictor:
    tk = dict(train_kwargs or {})
    if epochs is not None:
        tk["epochs"] = epochs
    return NARFormerPredictor(train_kwargs=tk, **kw)


PREDICTORS = {"narformer": _narformer, "mlp": MLPPredictor, "gin": GINPredictor, "gbdt": GBDTPredictor,
              "zen": ZenPredictor}


def make_predictor(name: str, **kw) -> AccuracyPredictor:
    """A fresh predictor by registry name; keyword arguments go to its constructor."""
    if name not in PREDICTORS:
        raise ValueError(f"unknown predictor {name!r}; known: {', '.join(PREDICTORS)}")
    try:
        return PREDICTORS[name](**kw)
    except TypeError as e:
        raise ValueError(f"bad option for predictor {name!r}: {e}") from None
