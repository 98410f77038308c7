"""The real-number tokenizer of NAR-Former (METHOD.md sections 1-2).

``encode_real`` maps a number x to 2L values [sin(pi f_0 x), cos(pi f_0 x), ...]. A cell node's
token concatenates the codes of its op id, its own position and the sum of its predecessors'
position codes. Everything is vectorised over a batch of graphs and computed in float64 (the
highest frequency is 2^(L-1); float32 phases would be noise), then cast to float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from .graph import ArchGraph, GraphError

NODE_L = 32          # per-part frequencies for cell tokens: 3 parts x 64 = 192 values
DEPTH_L = 96         # the depth token and the end token: 192 values, same width as a node token
END_VALUE = 1e5      # the number the end token encodes (far outside any position or op id)
SCHEMES = ("nerf", "trans")


@lru_cache(maxsize=None)
def frequencies(L: int, scheme: str = "nerf") -> np.ndarray:
    """The L frequencies of a scheme, float64.

    ``nerf``: linspace(1, 2^(L-1), L), linear spacing so integer inputs do not all land on
    sin = 0. ``trans``: 10000^(-j/L), the classic transformer positional frequencies.
    """
    if scheme == "nerf":
        f = np.linspace(1.0, 2.0 ** (L - 1), L, dtype=np.float64)
    elif scheme == "trans":
        f = 10000.0 ** (-np.arange(L, dtype=np.float64) / L)
    else:
        raise ValueError(f"unknown encoding scheme {scheme!r}; use one of {SCHEMES}")
    f.setflags(write=False)
    return f


def encode_real(x, L: int, scheme: str = "nerf") -> np.ndarray:
    """Encode numbers: shape (..., m) -> (..., 2 L m), float64.

    For every frequency there is a block of m sines then a block of m cosines, so a scalar
    (m = 1) gives the interleaved [sin f0 x, cos f0 x, sin f1 x, cos f1 x, ...]. Pass a trailing
    axis of length 1 to encode an array of scalars element-wise.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0:
        x = x[None]
    phase = np.pi * frequencies(L, scheme)[:, None] * x[..., None, :]      # (..., L, m)
    out = np.stack([np.sin(phase), np.cos(phase)], axis=-2)                 # (..., L, 2, m)
    return out.reshape(*x.shape[:-1], 2 * L * x.shape[-1])


def encode_scalar(x, L: int, scheme: str = "nerf") -> np.ndarray:
    """Element-wise code of an array of scalars: shape S -> S + (2L,)."""
    return encode_real(np.asarray(x, dtype=np.float64)[..., None], L, scheme)


@dataclass
class CellTokens:
    """Tokens of a batch of cells.

    depth: (B, 2*DEPTH_L) code of the node count; the model embeds it (Linear + ReLU) and puts
    it first in the sequence. nodes: (B, T, 192) node tokens followed by the end token, zeros
    after it. mask: (B, T) True for real tokens. T = max nodes + 1.
    """

    depth: np.ndarray
    nodes: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return self.nodes.shape[0]

    def subset(self, idx) -> "CellTokens":
        return CellTokens(self.depth[idx], self.nodes[idx], self.mask[idx])


CELL_PARTS = (("op type", 2 * NODE_L), ("position", 2 * NODE_L), ("sources", 2 * NODE_L))


def cell_token_labels() -> list[str]:
    """Name of the part each of the 192 token values belongs to (for heatmaps)."""
    return [name for name, width in CELL_PARTS for _ in range(width)]


def tokenize_cells(op_ids: np.ndarray, adj: np.ndarray, n_nodes: np.ndarray | None = None,
                   L: int = NODE_L, scheme: str = "nerf") -> CellTokens:
    """Vectorised cell tokens.

    op_ids: (B, N) ints; adj: (B, N, N) or (N, N) with adj[j, i] = 1 when node i reads node j;
    n_nodes: (B,) real node counts when graphs of fewer than N nodes are padded (their nodes
    come first). Node 0 is the input; its source code is E(-1).
    """
    op_ids = np.asarray(op_ids)
    B, N = op_ids.shape
    adj = np.asarray(adj)
    n = np.full(B, N) if n_nodes is None else np.asarray(n_nodes)
    pos = encode_scalar(np.arange(N), L, scheme)                    # (N, 2L) float64
    if adj.ndim == 2:   # one wiring shared by the batch (NB201): sources computed once
        src = (adj.T.astype(np.float64) @ pos)[None]                 # (1, N, 2L)
    else:
        src = np.einsum("bji,jd->bid", adj.astype(np.float64), pos)  # sum over predecessors
    src = np.array(np.broadcast_to(src, (src.shape[0], N, 2 * L)))
    src[:, 0] = encode_scalar(-1.0, L, scheme)
    width = 6 * L
    tokens = np.empty((B, N + 1, width), dtype=np.float32)
    tokens[:, :N, : 2 * L] = _op_table(L, scheme, int(op_ids.max()) + 1)[op_ids]
    tokens[:, :N, 2 * L: 4 * L] = pos.astype(np.float32)
    tokens[:, :N, 4 * L:] = src.astype(np.float32)
    j = np.arange(N + 1)
    if (n < N).any():
        tokens[j[None, :] >= n[:, None]] = 0.0                      # padding after real nodes
    tokens[np.arange(B), n] = _end_token(width, scheme)
    mask = j[None, :] <= n[:, None]
    depth = _depth_table(N, scheme)[n]
    return CellTokens(depth, tokens, mask)


@lru_cache(maxsize=None)
def _op_table(L: int, scheme: str, n_ops: int) -> np.ndarray:
    return encode_scalar(np.arange(max(n_ops, 1)), L, scheme).astype(np.float32)


@lru_cache(maxsize=None)
def _end_token(width: int, scheme: str) -> np.ndarray:
    return encode_scalar(END_VALUE, width // 2, scheme).astype(np.float32)


@lru_cache(maxsize=None)
def _depth_table(max_nodes: int, scheme: str) -> np.ndarray:
    """Depth codes of node counts 0..max_nodes (float64 maths, stored as float32)."""
    return encode_scalar(np.arange(max_nodes + 1, dtype=np.float64), DEPTH_L, scheme).astype(np.float32)


def cell_arrays(graphs: Sequence[ArchGraph], op_ids: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Graphs -> (op_ids (B, N), adj (B, N, N), n_nodes (B,)) padded to the largest graph."""
    N = max(len(g) for g in graphs)
    ops = np.zeros((len(graphs), N), dtype=np.int64)
    adj = np.zeros((len(graphs), N, N), dtype=np.uint8)
    n = np.zeros(len(graphs), dtype=np.int64)
    for b, g in enumerate(graphs):
        k = len(g)
        try:
            ops[b, :k] = [op_ids[o] for o in g.ops]
        except KeyError as e:
            raise GraphError(f"op {e.args[0]!r} has no token id in this space; known: {sorted(op_ids)}") from None
        adj[b, :k, :k] = g.adjacency()
        n[b] = k
    return ops, adj, n


def tokenize_graphs(graphs: Sequence[ArchGraph], scheme: str = "nerf") -> CellTokens:
    """Cell graphs of one space (nb201 or nb101) -> tokens."""
    from .spaces import cell_op_ids

    if not graphs:
        raise GraphError("no graphs to tokenize")
    spaces = {g.space for g in graphs}
    if len(spaces) != 1:
        raise GraphError(f"graphs of several spaces in one batch: {sorted(spaces)}")
    ops, adj, n = cell_arrays(graphs, cell_op_ids(spaces.pop()))
    return tokenize_cells(ops, adj, n, scheme=scheme)
