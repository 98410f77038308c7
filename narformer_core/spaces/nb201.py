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


# ---------------------------------------------------------------------------------------------
# Functional equivalence. Many of the 15,625 cells compute the same function as another cell:
# an edge whose source feature map is always zero (nothing but 'none' reaches it from the input)
# or whose target never reaches the cell output carries nothing, so its op does not matter; and
# when the edge 1->2 is absent, feature maps 1 and 2 are two interchangeable parallel branches.
# The benchmark trained every cell separately, so equivalent cells have (noisy) labels of their
# own, but a predictor should give them one value: averaging its predictions over each class
# removes the part of its error that differs between the copies (README, "Equivalent cells").
# The dead-edge rule is exact for skip and pooling edges; a conv edge reading an all-zero map
# still adds its BatchNorm shift (a learned per-channel constant), which the benchmark's labels
# show to be negligible: inside a class, validation accuracy varies by 0.67 points (standard
# deviation) against 12.7 points over the whole space.
# ---------------------------------------------------------------------------------------------

def _live(ops: tuple[str, ...]) -> tuple[str, ...]:
    """The cell with its dead edges set to 'none' (edges from a map nothing reaches, or into a map
    that reaches nothing)."""
    if len(ops) != N_EDGES or any(o not in OPS for o in ops):
        raise GraphError(f"an NB201 cell has {N_EDGES} ops out of {', '.join(OPS)}; got {ops!r}")
    reached = [True, False, False, False]       # feature map m is non-zero for some input
    for m in (1, 2, 3):
        reached[m] = any(o != "none" and reached[s] for o, (s, t) in zip(ops, EDGES) if t == m)
    used = [False, False, False, True]          # feature map m reaches the cell output
    for m in (2, 1, 0):
        used[m] = any(o != "none" and used[t] for o, (s, t) in zip(ops, EDGES) if s == m)
    return tuple(o if reached[s] and used[t] else "none" for o, (s, t) in zip(ops, EDGES))


def canonical(ops: Sequence[str]) -> tuple[str, ...]:
    """The representative of a cell's equivalence class: dead edges set to 'none', and the two
    branches ordered when feature maps 1 and 2 are parallel (the smaller op tuple wins)."""
    live = _live(tuple(ops))
    if live[2] != "none":
        return live
    # Edges in arch-string order: 0->1, 0->2, 1->2, 0->3, 1->3, 2->3. Swapping maps 1 and 2
    # exchanges 0->1 with 0->2 and 1->3 with 2->3.
    swapped = (live[1], live[0], live[2], live[3], live[5], live[4])
    return min(live, swapped, key=lambda c: [OPS.index(o) for o in c])


def dead_edges(ops: Sequence[str]) -> list[tuple[int, int]]:
    """(source, target) feature maps of the edges whose op cannot change what the cell computes."""
    ops = tuple(ops)
    return [EDGES[k] for k, (o, l) in enumerate(zip(ops, _live(ops))) if o != l]


@lru_cache(maxsize=1)
def equivalence_classes() -> np.ndarray:
    """Class id of every cell of :func:`enumerate_all`: the enumeration index of its
    :func:`canonical` representative. Vectorised (the same rules as canonical, tested equal)."""
    weights = len(OPS) ** np.arange(N_EDGES - 1, -1, -1)     # index_of: first edge most significant
    a = (np.arange(N_ARCHS)[:, None] // weights) % len(OPS)   # OPS index of every edge of every cell
    on = a != OPS.index("none")
    r1 = on[:, 0]                                          # maps 1..3 reached from the input
    r2 = on[:, 1] | (on[:, 2] & r1)
    u2 = on[:, 5]                                          # maps 1, 2 reaching the output
    u1 = on[:, 4] | (on[:, 2] & u2)
    yes = np.ones_like(r1)                                 # map 0 is reached, map 3 is the output
    r_src = np.stack([yes, yes, r1, yes, r1, r2], 1)       # per edge: its source map is reached
    u_dst = np.stack([u1, u2, u2, yes, yes, yes], 1)       # per edge: its target map is used
    live = np.where(on & r_src & u_dst, a, OPS.index("none"))
    code = live @ weights
    swapped = live[:, [1, 0, 2, 3, 5, 4]] @ weights
    code = np.where(live[:, 2] == OPS.index("none"), np.minimum(code, swapped), code)
    code.setflags(write=False)
    return code


def equivalent_indices(indices: Sequence[int]) -> np.ndarray:
    """Sorted enumeration indices of every cell equivalent to one of ``indices`` (themselves included)."""
    cls = equivalence_classes()
    return np.flatnonzero(np.isin(cls, cls[np.asarray(indices, dtype=np.int64)]))


def mean_over_equivalents(values: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
    """Replace each value by the mean over its equivalence class.

    ``values`` belong to the cells ``indices`` (enumeration order; default: all 15,625 cells).
    Each class is averaged over its members present in ``indices``, so pass whole classes
    (:func:`equivalent_indices`) to get class means."""
    values = np.asarray(values, dtype=np.float64)
    cls = equivalence_classes() if indices is None else equivalence_classes()[np.asarray(indices, dtype=np.int64)]
    if values.shape != cls.shape:
        raise ValueError(f"{len(cls)} cells but {values.shape} values")
    _, inv = np.unique(cls, return_inverse=True)
    sums = np.bincount(inv, weights=values)
    return (sums / np.bincount(inv))[inv]


def own_and_class_means(indices: Sequence[int], values_of) -> tuple[np.ndarray, np.ndarray]:
    """For cells ``indices``: their own values and their classes' means, from one call of
    ``values_of(members)`` (values for the enumeration indices of every cell of those classes)."""
    idx = np.asarray(indices, dtype=np.int64)
    members = equivalent_indices(idx)
    values = np.asarray(values_of(members), dtype=np.float64)
    at = np.searchsorted(members, idx)
    return values[at], mean_over_equivalents(values, members)[at]
