"""NAS-Bench-101 cell space: (adjacency matrix, ops) <-> the architecture graph.

A cell is a strictly upper-triangular 0/1 matrix over at most 7 nodes (``matrix[i, j] = 1``:
node j reads node i) and one op per node: "input" first, "output" last, the rest from OPS.

The benchmark identifies a cell by its *module*: the cell with every node that lies on no
input -> output path removed (:func:`prune`), fingerprinted by :func:`module_hash`, which is
invariant to renumbering the nodes. Limits follow the official benchmark: the raw matrix has at
most 7 nodes, the pruned module at most 9 edges, and the input must reach the output.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from ..graph import ArchGraph, GraphError, Node

# Order matters: the module hash labels a node by its op's index in this tuple.
OPS = ("conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3")
# Token op ids of METHOD.md section 2.
OP_IDS = {"input": 0, "conv1x1-bn-relu": 1, "conv3x3-bn-relu": 2, "maxpool3x3": 3, "output": 4}
MAX_NODES = 7
MAX_EDGES = 9
# Mutation rates of the official example search code: one edge flip and one op change expected.
EDGE_FLIP_PROB = 1.0 / MAX_NODES
OP_CHANGE_PROB = 1.0 / (MAX_NODES - 2)

# ---------------------------------------------------------------- validation
# Diagonal and below, per matrix size: entries that would make a cell cyclic.
_LOWER = {n: ~np.triu(np.ones((n, n), dtype=bool), 1) for n in range(MAX_NODES + 1)}


def _as_matrix(matrix) -> np.ndarray:
    """Any matrix-like -> (n, n) int64 array of 0/1 with 2 <= n <= MAX_NODES, or GraphError."""
    try:
        m = np.asarray(matrix)
    except (ValueError, TypeError):
        raise GraphError("the NB101 adjacency matrix is not a rectangular table of numbers "
                         "(rows of different lengths?)") from None
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise GraphError(f"an NB101 adjacency matrix must be square (n x n), got shape {m.shape}")
    n = m.shape[0]
    if n < 2:
        raise GraphError(f"an NB101 cell needs at least an input and an output node, got {n} node(s)")
    if n > MAX_NODES:
        raise GraphError(f"an NB101 cell has at most {MAX_NODES} nodes, this matrix has {n}")
    if m.dtype.kind not in "biuf":
        raise GraphError(f"NB101 adjacency entries must be 0 or 1, got values of type {m.dtype}")
    bad = (m != 0) & (m != 1)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise GraphError(f"NB101 adjacency entries must be 0 or 1, but entry ({i}, {j}) is {m[i, j].item()!r}")
    m = m.astype(np.int64)
    if m[_LOWER[n]].any():
        i, j = (int(v) for v in np.argwhere(np.tril(m))[0])
        if i == j:
            raise GraphError(f"node {i} has a self loop (entry ({i}, {i}) is 1); the matrix must be "
                             "strictly upper triangular")
        raise GraphError(f"entry ({i}, {j}) makes node {i} feed the earlier node {j}: the matrix must be "
                         "strictly upper triangular (nodes only feed later nodes), otherwise the cell "
                         "can have a cycle")
    return m


def _check_ops(ops: Sequence[str], n: int) -> list[str]:
    if isinstance(ops, str) or not isinstance(ops, Sequence):
        raise GraphError(f"NB101 ops must be a list of op names, got {type(ops).__name__}")
    ops = list(ops)
    if len(ops) != n:
        raise GraphError(f"the cell has {n} nodes but {len(ops)} ops; give exactly one op per node")
    if ops[0] != "input":
        raise GraphError(f"the first op of an NB101 cell must be 'input', got {ops[0]!r}")
    if ops[-1] != "output":
        raise GraphError(f"the last op of an NB101 cell must be 'output', got {ops[-1]!r}")
    for k, op in enumerate(ops[1:-1], start=1):
        if op not in OPS:
            raise GraphError(f"unknown NB101 op {op!r} at node {k}; known ops: {', '.join(OPS)}")
    return ops


def _prune_checked(m: np.ndarray, ops: list[str]) -> tuple[np.ndarray, list[str]]:
    n = len(ops)
    rows = m.tolist()  # plain lists: NumPy call overhead dominates on 7x7 matrices
    # Upper triangular: one pass in index order settles reachability.
    from_input = [True] + [False] * (n - 1)
    for v in range(1, n):
        from_input[v] = any(from_input[u] and rows[u][v] for u in range(v))
    to_output = [False] * (n - 1) + [True]
    for v in range(n - 2, -1, -1):
        to_output[v] = any(to_output[w] and rows[v][w] for w in range(v + 1, n))
    if not from_input[n - 1]:
        raise GraphError("disconnected cell: no path leads from the input to the output")
    keep = [k for k in range(n) if from_input[k] and to_output[k]]
    if len(keep) == n:
        return m.copy(), list(ops)
    return m[np.ix_(keep, keep)], [ops[k] for k in keep]


def prune(matrix, ops: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Remove every node that lies on no input -> output path (the benchmark's module).

    Returns (pruned matrix as an int array, pruned ops). Raises GraphError for a malformed cell
    or one whose input does not reach its output.
    """
    m = _as_matrix(matrix)
    return _prune_checked(m, _check_ops(ops, m.shape[0]))


def _validated(matrix, ops) -> tuple[np.ndarray, list[str]]:
    pm, pops = prune(matrix, ops)
    edges = int(pm.sum())
    if edges > MAX_EDGES:
        raise GraphError(f"the cell has {edges} edges (after removing nodes off every input-output "
                         f"path); NAS-Bench-101 allows at most {MAX_EDGES}")
    return pm, pops


def validate(matrix, ops: Sequence[str]) -> None:
    """Raise GraphError, with a sentence saying what is wrong, unless the cell is in NB101."""
    _validated(matrix, ops)


def is_valid(matrix, ops: Sequence[str]) -> bool:
    try:
        _validated(matrix, ops)
    except GraphError:
        return False
    return True


# ---------------------------------------------------------------- identity
def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def _fingerprint(m: np.ndarray, ops: Sequence[str]) -> str:
    """Weisfeiler-Lehman style hash of an already pruned module."""
    n = len(ops)
    rows = m.tolist()
    labels = [-1] + [OPS.index(o) for o in ops[1:-1]] + [-2]
    preds = [[u for u in range(n) if rows[u][v]] for v in range(n)]
    succs = [[w for w in range(n) if rows[v][w]] for v in range(n)]
    # (out-degree, in-degree, label) as a tuple of Python ints: the official hash formats it with str().
    h = [_md5(str((len(succs[v]), len(preds[v]), labels[v]))) for v in range(n)]
    # n rounds: enough for information to cross the whole (at most n-node) cell.
    for _ in range(n):
        h = [_md5("".join(sorted(h[u] for u in preds[v])) + "|"
                  + "".join(sorted(h[w] for w in succs[v])) + "|" + h[v]) for v in range(n)]
    return _md5(str(sorted(h)))


def module_hash(matrix, ops: Sequence[str]) -> str:
    """The official NAS-Bench-101 fingerprint of a cell (of its pruned module).

    Equal for cells that differ only in node numbering or in nodes off every input-output path,
    so it keys the benchmark's records.
    """
    pm, pops = _validated(matrix, ops)
    return _fingerprint(pm, pops)


def parse_rowmajor(bits: str, n: int) -> np.ndarray:
    """'0110...' (n*n characters, row-major) -> (n, n) int array."""
    s = str(bits).strip()
    if len(s) != n * n:
        raise GraphError(f"a row-major {n}x{n} adjacency needs {n * n} bits, got {len(s)}: {s!r}")
    if set(s) - {"0", "1"}:
        raise GraphError(f"a row-major adjacency may only contain 0 and 1: {s!r}")
    return (np.frombuffer(s.encode("ascii"), dtype=np.uint8) - ord("0")).astype(np.int64).reshape(n, n)


# ---------------------------------------------------------------- graph conversion
def _graph(pm: np.ndarray, pops: list[str], h: str) -> ArchGraph:
    nodes = [Node(pops[i], tuple(int(j) for j in np.flatnonzero(pm[:, i]))) for i in range(len(pops))]
    return ArchGraph(nodes, space="nb101", meta={"hash": h, "matrix": pm.tolist(), "ops": list(pops)})


def to_graph(matrix, ops: Sequence[str]) -> ArchGraph:
    """Validate, prune and convert a cell; meta holds the module hash, pruned matrix and ops."""
    pm, pops = _validated(matrix, ops)
    return _graph(pm, pops, _fingerprint(pm, pops))


def from_graph(g: ArchGraph) -> tuple[np.ndarray, list[str]]:
    """The inverse of :func:`to_graph`: (matrix, ops) of an NB101 cell graph."""
    if g.space != "nb101":
        raise GraphError(f"not an NB101 cell graph: space={g.space!r}")
    m = g.adjacency().astype(np.int64)
    ops = g.ops
    validate(m, ops)
    return m, ops


# ---------------------------------------------------------------- search
def sample(rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """A random valid cell, pruned, drawn like the official sampler.

    The sampler draws a 7-node matrix with each upper-triangular edge present with probability
    1/2 and uniform ops, and redraws until the cell is valid.
    """
    while True:
        m = np.triu(rng.integers(0, 2, size=(MAX_NODES, MAX_NODES)), 1)
        ops = ["input", *(OPS[i] for i in rng.integers(0, len(OPS), MAX_NODES - 2)), "output"]
        if is_valid(m, ops):
            return prune(m, ops)


def _embed(m: np.ndarray, ops: list[str], rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """A pruned cell of n < 7 nodes as a 7-node matrix: unconnected nodes inserted before the
    output, so that mutation can wire them in (a pruned cell alone could never grow)."""
    n = len(ops)
    big = np.zeros((MAX_NODES, MAX_NODES), dtype=np.int64)
    big[: n - 1, : n - 1] = m[: n - 1, : n - 1]
    big[: n - 1, MAX_NODES - 1] = m[: n - 1, n - 1]
    extra = [OPS[i] for i in rng.integers(0, len(OPS), MAX_NODES - n)]
    return big, ops[:-1] + extra + ["output"]


def mutate(matrix, ops: Sequence[str], rng: np.random.Generator, max_tries: int = 10_000
           ) -> tuple[np.ndarray, list[str]]:
    """A different valid cell (another module hash), pruned, by the official mutation.

    Each upper-triangular entry flips with probability 1/7 and each intermediate op changes to
    another op with probability 1/5; draws repeat until the result is valid and new.
    """
    pm, pops = _validated(matrix, ops)
    old = _fingerprint(pm, pops)
    base_m, base_ops = _embed(pm, pops, rng)
    iu = np.triu_indices(MAX_NODES, 1)
    for _ in range(max_tries):
        m = base_m.copy()
        flips = rng.random(len(iu[0])) < EDGE_FLIP_PROB
        m[iu[0][flips], iu[1][flips]] ^= 1
        new_ops = list(base_ops)
        for k in range(1, MAX_NODES - 1):
            if rng.random() < OP_CHANGE_PROB:
                others = [o for o in OPS if o != new_ops[k]]
                new_ops[k] = others[int(rng.integers(len(others)))]
        try:
            cm, cops = _validated(m, new_ops)
        except GraphError:
            continue
        if _fingerprint(cm, cops) != old:
            return cm, cops
    raise RuntimeError(f"no valid different cell found in {max_tries} mutation draws")
