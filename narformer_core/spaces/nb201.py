"""NAS-Bench-201 cell space: arch strings <-> the architecture graph.

A cell has 4 feature maps (0 = cell input) and 6 edges, each carrying one of 5 ops. The
official arch string lists the edges grouped by their target feature map:
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` = edges 0->1 | 0->2, 1->2 | 0->3, 1->3, 2->3.

As a graph (ops on nodes, the NAR-Former convention) a cell is 8 nodes on one fixed DAG:
input, the six edge ops in arch-string order, output. An edge op reads the feature map it starts
from, i.e. the sum of the edge ops that end there.
"""
from __future__ import annotations

import itertools
import re
from functools import lru_cache
from typing import Sequence

import numpy as np

from ..graph import ArchGraph, GraphError, Node, all_topological_orders

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
# Token op ids of METHOD.md section 2 (the authors' numbering, not the order of OPS above).
OP_IDS = {"input": 0, "nor_conv_1x1": 1, "nor_conv_3x3": 2, "avg_pool_3x3": 3,
          "skip_connect": 4, "none": 5, "output": 6}
N_EDGES = 6
N_ARCHS = len(OPS) ** N_EDGES  # 15,625
# (source feature map, target feature map) of each edge, in arch-string order.
EDGES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
# Graph node k+1 holds edge k; feature map m is produced by the edge nodes ending at m.
_EDGE_NODES_INTO = {m: [k + 1 for k, (_, t) in enumerate(EDGES) if t == m] for m in (1, 2, 3)}
# Predecessors of each of the 8 graph nodes.
PREDECESSORS: tuple[tuple[int, ...], ...] = (
    (),
    *(((0,) if s == 0 else tuple(_EDGE_NODES_INTO[s])) for s, _ in EDGES),
    tuple(_EDGE_NODES_INTO[3]),
)

_TOKEN = re.compile(r"^([a-z0-9_]+)~(\d+)$")


def parse(arch: str) -> tuple[str, ...]:
    """Arch string -> the 6 edge ops in order. Raises GraphError saying what is wrong."""
    if not isinstance(arch, str):
        raise GraphError(f"an NB201 arch string must be text, got {type(arch).__name__}")
    s = arch.strip()
    groups = s.split("+")
    if len(groups) != 3:
        raise GraphError(f"an NB201 arch string has 3 groups joined by '+', found {len(groups)}: {arch!r}")
    ops: list[str] = []
    for target, group in enumerate(groups, start=1):
        g = group.strip()
        if not (g.startswith("|") and g.endswith("|")):
            raise GraphError(f"group {target} must start and end with '|': {group!r}")
        parts = [p for p in g[1:-1].split("|")]
        if len(parts) != target:
            raise GraphError(f"group {target} must have {target} edge(s), found {len(parts)}: {group!r}")
        for source, p in enumerate(parts):
            m = _TOKEN.match(p.strip())
            if not m:
                raise GraphError(f"edge {p!r} is not of the form op~source")
            op, src = m.group(1), int(m.group(2))
            if op not in OPS:
                raise GraphError(f"unknown NB201 op {op!r}; known ops: {', '.join(OPS)}")
            if src != source:
                raise GraphError(f"edge {p!r} in group {target} must read from node {source}, not {src}")
            ops.append(op)
    return tuple(ops)


def to_arch_str(ops: Sequence[str]) -> str:
    ops = tuple(ops)
    if len(ops) != N_EDGES or any(o not in OPS for o in ops):
        raise GraphError(f"an NB201 cell needs 6 ops from {OPS}, got {ops}")
    groups, k = [], 0
    for target in (1, 2, 3):
        groups.append("|" + "|".join(f"{ops[k + s]}~{s}" for s in range(target)) + "|")
        k += target
    return "+".join(groups)


def to_graph(arch: str | Sequence[str]) -> ArchGraph:
    """Arch string (or the 6 ops) -> the 8-node architecture graph."""
    if isinstance(arch, str):
        ops = parse(arch)
    else:
        try:
            ops = tuple(arch)
        except TypeError:   # None, a number, ...: say so rather than "object is not iterable"
            raise GraphError(f"an NB201 cell is an arch string or its 6 ops, got {type(arch).__name__}") from None
    arch_str = to_arch_str(ops)
    names = ["input", *ops, "output"]
    nodes = [Node(op, PREDECESSORS[i]) for i, op in enumerate(names)]
    return ArchGraph(nodes, space="nb201", meta={"arch_str": arch_str})


def from_graph(g: ArchGraph) -> str:
    """The inverse of :func:`to_graph`; accepts only graphs of the NB201 layout.

    A graph whose intermediate nodes were renumbered along another topological order (the
    consistency twin) is the same cell: it is mapped back to the layout, not misread.
    """
    if g.space != "nb201" or len(g) != 8:
        raise GraphError(f"not an NB201 cell graph: space={g.space!r}, {len(g)} nodes")
    if g.ops[0] != "input" or g.ops[-1] != "output":
        raise GraphError(f"not an NB201 cell graph: it must start with 'input' and end with 'output', "
                         f"got {g.ops[0]!r} ... {g.ops[-1]!r}")
    for order in all_topological_orders(g.adjacency()):
        h = g.relabel(order)
        if all(set(n.inputs) == set(p) for n, p in zip(h.nodes, PREDECESSORS)):
            return to_arch_str(h.ops[1:7])
    raise GraphError("not an NB201 cell graph: its wiring is not the NB201 cell DAG "
                     "(input, six edge ops, output)")


def index_of(ops: Sequence[str]) -> int:
    """Position in :func:`enumerate_all` (base-5 number over OPS), not the official NB201 index."""
    i = 0
    for o in ops:
        i = i * len(OPS) + OPS.index(o)
    return i


@lru_cache(maxsize=1)
def enumerate_all() -> tuple[tuple[str, ...], ...]:
    """All 15,625 cells, as 6-op tuples, in base-5 order over OPS."""
    return tuple(itertools.product(OPS, repeat=N_EDGES))


def op_id_matrix(cells: Sequence[Sequence[str]]) -> np.ndarray:
    """(B, 8) int array of token op ids (input, six edges, output) for many cells at once."""
    table = {o: OP_IDS[o] for o in OPS}
    arr = np.empty((len(cells), 8), dtype=np.int64)
    arr[:, 0] = OP_IDS["input"]
    arr[:, 7] = OP_IDS["output"]
    arr[:, 1:7] = [[table[o] for o in c] for c in cells]
    return arr


def adjacency() -> np.ndarray:
    """The fixed 8x8 adjacency of every NB201 cell graph (A[j, i] = 1: i reads j)."""
    a = np.zeros((8, 8), dtype=np.uint8)
    for i, ps in enumerate(PREDECESSORS):
        for j in ps:
            a[j, i] = 1
    return a


def sample(rng: np.random.Generator) -> tuple[str, ...]:
    return tuple(OPS[i] for i in rng.integers(0, len(OPS), N_EDGES))


def mutate(ops: Sequence[str], rng: np.random.Generator) -> tuple[str, ...]:
    """Change one edge to a different op (always a different cell)."""
    ops = list(ops)
    k = int(rng.integers(N_EDGES))
    ops[k] = OPS[(OPS.index(ops[k]) + int(rng.integers(1, len(OPS)))) % len(OPS)]
    return tuple(ops)


def neighbours(ops: Sequence[str]) -> list[tuple[str, ...]]:
    """All 24 cells one edge-op change away."""
    out = []
    for k in range(N_EDGES):
        for o in OPS:
            if o != ops[k]:
                out.append(tuple(ops[:k]) + (o,) + tuple(ops[k + 1:]))
    return out
