"""Accuracy-prediction tasks: a cell space plus label sources, as arrays ready to tokenize.

A task holds every architecture of a benchmark as (op ids, adjacency, node count) plus two label
columns: ``y`` (used for training and validation, e.g. validation accuracy) and ``y_test`` (used
for testing, NaN where the benchmark has none). Splits are seeded permutations of the labelled
architectures, so a split is reproduced from (task, train size, val size, seed) alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .graph import ArchGraph
from .tokenizer import CellTokens, tokenize_cells

# naslib-500 repeats cells (500 rows, 292 distinct modules); the unique view keeps splits leak-free.
DEFAULT_LABELS = {"nb201": "analog", "nb101": "naslib-500-unique"}


@dataclass
class AccuracyTask:
    space: str
    labels: str
    test_labels: str
    ops: np.ndarray            # (M, N) token op ids, padded
    adj: np.ndarray            # (M, N, N) adjacency, or (N, N) shared by all
    n_nodes: np.ndarray        # (M,)
    y: np.ndarray              # (M,) train/validation labels (accuracy in %)
    y_test: np.ndarray         # (M,) test labels (%), NaN where unknown
    ids: list[str]             # arch string (nb201) or module hash (nb101)
    _tokens: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def tokens(self, scheme: str = "nerf") -> CellTokens:
        if scheme not in self._tokens:
            self._tokens[scheme] = tokenize_cells(self.ops, self.adj, self.n_nodes, scheme=scheme)
        return self._tokens[scheme]

    def adjacency(self, i: int) -> np.ndarray:
        a = self.adj if self.adj.ndim == 2 else self.adj[i]
        k = int(self.n_nodes[i])
        return a[:k, :k]

    def graph(self, i: int) -> ArchGraph:
        from .spaces import nb101, nb201

        if self.space == "nb201":
            return nb201.to_graph(self.ids[i])
        return self.graphs_nb101[i] if hasattr(self, "graphs_nb101") else nb101.to_graph(
            self.adjacency(i), _nb101_ops(self.ops[i, : self.n_nodes[i]]))

    def index(self, arch_id: str) -> int:
        if not hasattr(self, "_index"):
            self._index = {a: i for i, a in enumerate(self.ids)}
        return self._index[arch_id]


def _nb101_ops(ids) -> list[str]:
    from .spaces import nb101

    inv = {v: k for k, v in nb101.OP_IDS.items()}
    return [inv[int(i)] for i in ids]


def split(task: AccuracyTask, train_size: int, val_size: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, val) indices drawn from the architectures that have a training label."""
    labelled = np.flatnonzero(~np.isnan(task.y))
    if train_size + val_size > len(labelled):
        raise ValueError(f"train size {train_size} + validation size {val_size} exceeds the "
                         f"{len(labelled)} labelled architectures of {task.space}/{task.labels}")
    perm = np.random.default_rng(seed).permutation(labelled)
    return np.sort(perm[:train_size]), np.sort(perm[train_size: train_size + val_size])


def load_task(space: str = "nb201", labels: str | None = None, test_labels: str | None = None,
              data_dir=None) -> AccuracyTask:
    """Build (and cache) a task. ``test_labels`` defaults to ``labels``."""
    labels = labels or DEFAULT_LABELS.get(space)
    return _load_task(space, labels, test_labels or labels, str(data_dir) if data_dir else None)


@lru_cache(maxsize=8)
def _load_task(space: str, labels: str, test_labels: str, data_dir) -> AccuracyTask:
    if space == "nb201":
        from .data import nb201 as d
        from .spaces import nb201

        cells = nb201.enumerate_all()
        return AccuracyTask(space, labels, test_labels, nb201.op_id_matrix(cells), nb201.adjacency(),
                            np.full(len(cells), 8), d.load_labels(labels, data_dir),
                            d.load_labels(test_labels, data_dir), [nb201.to_arch_str(c) for c in cells])
    if space == "nb101":
        from .data import nb101 as d
        from .spaces import nb101
        from .tokenizer import cell_arrays

        table = d.load_nb101(labels, data_dir)
        test = table if test_labels == labels else d.load_nb101(test_labels, data_dir)
        ops, adj, n = cell_arrays(table.graphs, nb101.OP_IDS)
        y_test = np.asarray(table.test_acc if test_labels == labels else _align(table, test), float)
        if test_labels == labels and np.isnan(y_test).all():
            y_test = np.asarray(table.val_acc, float)   # a source without test accuracies tests on its own labels
        task = AccuracyTask(space, labels, test_labels, ops, adj, n, np.asarray(table.val_acc, float),
                            np.asarray(y_test, float), list(table.hashes))
        task.graphs_nb101 = list(table.graphs)
        return task
    raise ValueError(f"unknown space {space!r}; accuracy tasks exist for nb201 and nb101")


def _align(table, other) -> np.ndarray:
    pos = {h: i for i, h in enumerate(other.hashes)}
    return np.array([other.test_acc[pos[h]] if h in pos else np.nan for h in table.hashes])
