"""Information-flow consistency augmentation (METHOD.md section 5).

Renumbering a cell's intermediate nodes along another valid topological order describes the same
architecture, so the model's prediction must not change. We draw, per sample, a uniformly random
non-identity topological order (the authors swap only the last two nodes when legal; every legal
order is a superset of that). Orders are enumerated once per distinct adjacency and cached.
"""
from __future__ import annotations

import numpy as np

from .graph import all_topological_orders


class TwinSampler:
    def __init__(self, adj: np.ndarray, n_nodes: np.ndarray):
        """adj: (M, N, N) or shared (N, N); n_nodes: (M,)."""
        self.adj = adj
        self.n_nodes = np.asarray(n_nodes)
        self.N = adj.shape[-1]
        self._orders: dict[bytes, np.ndarray] = {}

    def _orders_for(self, i: int) -> np.ndarray:
        k = int(self.n_nodes[i])
        a = (self.adj if self.adj.ndim == 2 else self.adj[i])[:k, :k]
        key = a.tobytes() + bytes([k])
        if key not in self._orders:
            orders = [o for o in all_topological_orders(a) if o != tuple(range(k))]
            full = np.tile(np.arange(self.N), (max(len(orders), 1), 1))
            if orders:
                full[:, :k] = np.asarray(orders)
            self._orders[key] = full        # identity only when the cell has no other order
        return self._orders[key]

    def permutations(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(B, N) node orders for the samples ``idx``: new node k is old node perm[b, k]."""
        out = np.empty((len(idx), self.N), dtype=np.int64)
        for b, i in enumerate(idx):
            orders = self._orders_for(int(i))
            out[b] = orders[rng.integers(len(orders))]
        return out


def apply_permutation(ops: np.ndarray, adj: np.ndarray, perm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber a batch: ops (B, N), adj (B, N, N) or (N, N), perm (B, N) -> permuted copies."""
    B = perm.shape[0]
    if adj.ndim == 2:
        adj = np.broadcast_to(adj, (B, *adj.shape))
    rows = np.arange(B)[:, None, None]
    return np.take_along_axis(ops, perm, axis=1), adj[rows, perm[:, :, None], perm[:, None, :]]


class EquivalentSampler:
    """Random functionally equivalent copies of NB201 training cells (spaces/nb201.py).

    A training cell whose class holds other cells (dead edges with other ops, swapped parallel
    branches) is fed as a uniformly drawn member of its class: the same function in different
    tokens, so the network learns that those tokens do not matter."""

    def __init__(self, task, train_idx: np.ndarray):
        from .spaces import nb201

        if task.space != "nb201" or len(task) != nb201.N_ARCHS:
            raise ValueError("equivalent-cell augmentation needs the whole NB201 space in enumeration order "
                             f"(got {task.space}, {len(task)} architectures)")
        self.ops = task.ops
        cls = nb201.equivalence_classes()
        members = [np.flatnonzero(cls == cls[i]) for i in np.asarray(train_idx)]
        self.counts = np.array([len(m) for m in members], dtype=np.int64)
        self.members = np.zeros((len(members), int(self.counts.max())), dtype=np.int64)
        for k, m in enumerate(members):
            self.members[k, :len(m)] = m

    def ops_for(self, positions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(B, N) op ids of one random equivalent of each training cell at ``positions`` (0..n_train-1)."""
        pick = (rng.random(len(positions)) * self.counts[positions]).astype(np.int64)
        return self.ops[self.members[positions, pick]]
