"""The one architecture graph.

Every input format (NB201 arch string, NB101 matrix + ops, ONNX file, torch module, a cell
composed in the app) converts into an :class:`ArchGraph`; the tokenizer, the predictors, the
latency tools and the app only ever see this type.

A graph is a list of nodes in topological order: node ``i`` only reads from nodes ``j < i``.
Node 0 is the input. Pure Python + NumPy on purpose: the graph must load without torch.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np


class GraphError(ValueError):
    """An architecture that is not a valid graph; the message says what is wrong."""


def _freeze(value: Any) -> Any:
    """Attributes become hashable, JSON-friendly values (lists -> tuples of numbers/strings)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


@dataclass(frozen=True)
class Node:
    """One operator. ``inputs`` are indices of earlier nodes, in the operator's argument order."""

    op: str
    inputs: tuple[int, ...] = ()
    attrs: Mapping[str, Any] = field(default_factory=dict)
    shape: tuple[int, ...] = ()  # output shape, () when unknown (cells have none)
    name: str = ""

    def to_dict(self) -> dict:
        return {
            "op": self.op,
            "inputs": list(self.inputs),
            "attrs": {k: _to_jsonable(v) for k, v in sorted(self.attrs.items())},
            "shape": list(self.shape),
            "name": self.name,
        }


def _to_jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_to_jsonable(x) for x in v]
    return v


class ArchGraph:
    """An immutable DAG of :class:`Node` in topological order.

    ``space`` names where it came from ("nb201", "nb101", "onnx", ...) so that space-specific
    code (op vocabularies, ground-truth lookups) can check it is given the right kind of graph.
    """

    __slots__ = ("nodes", "space", "meta", "_hash")

    def __init__(self, nodes: Sequence[Node], space: str = "generic", meta: Mapping | None = None):
        fixed = []
        for n in nodes:
            attrs = {str(k): _freeze(v) for k, v in dict(n.attrs).items()}
            fixed.append(Node(str(n.op), tuple(int(i) for i in n.inputs), attrs,
                              tuple(int(s) for s in n.shape), str(n.name)))
        self.nodes: tuple[Node, ...] = tuple(fixed)
        self.space = space
        self.meta = dict(meta or {})
        self._hash: str | None = None
        self._check()

    # ---------------------------------------------------------------- validation
    def _check(self) -> None:
        if not self.nodes:
            raise GraphError("the graph has no nodes")
        for i, n in enumerate(self.nodes):
            for j in n.inputs:
                if j < 0 or j >= len(self.nodes):
                    raise GraphError(f"node {i} ({n.op}) reads from node {j}, which does not exist")
                if j >= i:
                    raise GraphError(
                        f"node {i} ({n.op}) reads from node {j}: nodes must be in topological "
                        "order (a node may only read from earlier nodes), or the graph has a cycle")

    # ---------------------------------------------------------------- views
    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        return f"ArchGraph(space={self.space!r}, n={len(self)}, hash={self.stable_hash()[:12]})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArchGraph) and self.stable_hash() == other.stable_hash()

    def __hash__(self) -> int:
        return hash(self.stable_hash())

    @property
    def ops(self) -> list[str]:
        return [n.op for n in self.nodes]

    def predecessors(self, i: int) -> tuple[int, ...]:
        return self.nodes[i].inputs

    def successors(self, i: int) -> list[int]:
        return [k for k, n in enumerate(self.nodes) if i in n.inputs]

    def edges(self) -> list[tuple[int, int]]:
        return [(j, i) for i, n in enumerate(self.nodes) for j in n.inputs]

    def adjacency(self) -> np.ndarray:
        """(n, n) uint8 matrix with A[j, i] = 1 when node i reads from node j (upper triangular)."""
        n = len(self.nodes)
        a = np.zeros((n, n), dtype=np.uint8)
        for j, i in self.edges():
            a[j, i] = 1
        return a

    def outputs(self) -> list[int]:
        """Nodes nothing reads from (the graph's results)."""
        used = {j for n in self.nodes for j in n.inputs}
        return [i for i in range(len(self.nodes)) if i not in used]

    # ---------------------------------------------------------------- identity
    def to_dict(self) -> dict:
        return {"space": self.space, "nodes": [n.to_dict() for n in self.nodes], "meta": self.meta}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ArchGraph":
        try:
            nodes = [Node(n["op"], tuple(n.get("inputs", ())), n.get("attrs", {}),
                          tuple(n.get("shape", ())), n.get("name", "")) for n in d["nodes"]]
        except (KeyError, TypeError) as e:
            raise GraphError(f"not a graph description: missing or malformed field {e}") from None
        return cls(nodes, d.get("space", "generic"), d.get("meta"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def stable_hash(self) -> str:
        """SHA-256 of the structure (ops, wiring, attributes, shapes); names and meta excluded.

        Stable across processes and versions of Python (unlike ``hash()``), so it keys the
        latency database and caches.
        """
        if self._hash is None:
            canon = [[n.op, list(n.inputs), {k: _to_jsonable(v) for k, v in sorted(n.attrs.items())},
                      list(n.shape)] for n in self.nodes]
            blob = json.dumps([self.space, canon], sort_keys=True, separators=(",", ":"))
            self._hash = hashlib.sha256(blob.encode()).hexdigest()
        return self._hash

    # ---------------------------------------------------------------- reordering
    def relabel(self, order: Sequence[int]) -> "ArchGraph":
        """The same architecture with nodes renumbered: new node k is old node ``order[k]``.

        ``order`` must itself be a topological order, otherwise a GraphError is raised.
        """
        order = list(order)
        if sorted(order) != list(range(len(self.nodes))):
            raise GraphError(f"{order} is not a permutation of the {len(self.nodes)} nodes")
        new_index = {old: new for new, old in enumerate(order)}
        nodes = [Node(self.nodes[old].op, tuple(new_index[j] for j in self.nodes[old].inputs),
                      self.nodes[old].attrs, self.nodes[old].shape, self.nodes[old].name)
                 for old in order]
        return ArchGraph(nodes, self.space, self.meta)


def from_edges(ops: Sequence[str], edges: Iterable[tuple[int, int]], space: str = "generic",
               shapes: Sequence[Sequence[int]] | None = None,
               attrs: Sequence[Mapping] | None = None, names: Sequence[str] | None = None,
               meta: Mapping | None = None) -> ArchGraph:
    """Build a graph from nodes in any order and (src, dst) edges; sorts topologically.

    Ties are broken by the original index, so an already topological numbering is kept.
    Raises GraphError on a cycle.
    """
    n = len(ops)
    preds: list[list[int]] = [[] for _ in range(n)]
    for s, d in edges:
        if not (0 <= s < n and 0 <= d < n):
            raise GraphError(f"edge ({s}, {d}) names a node outside 0..{n - 1}")
        preds[d].append(s)
    order = topological_order(preds)
    new = {old: k for k, old in enumerate(order)}
    nodes = [Node(ops[old], tuple(new[j] for j in preds[old]),
                  (attrs[old] if attrs else {}), tuple(shapes[old]) if shapes else (),
                  names[old] if names else "") for old in order]
    return ArchGraph(nodes, space, meta)


def kahn(preds: Sequence[Sequence[int]], rng=None) -> tuple[list[int], list[int]]:
    """Kahn's algorithm: (the nodes it could place, in order; the in-degrees left).

    Takes the smallest ready index, or with ``rng`` (a numpy Generator) any ready node at random.
    Nodes on or behind a cycle are never placed: their in-degree stays above zero.
    """
    import heapq

    n = len(preds)
    indeg = [len(set(p)) for p in preds]
    succ: list[list[int]] = [[] for _ in range(n)]
    for d, ps in enumerate(preds):
        for s in set(ps):
            succ[s].append(d)
    ready = [i for i in range(n) if indeg[i] == 0]
    if rng is None:
        heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready) if rng is None else ready.pop(int(rng.integers(len(ready))))
        order.append(i)
        for d in succ[i]:
            indeg[d] -= 1
            if indeg[d] == 0:
                if rng is None:
                    heapq.heappush(ready, d)
                else:
                    ready.append(d)
    return order, indeg


def topological_order(preds: Sequence[Sequence[int]]) -> list[int]:
    """Kahn's algorithm, smallest index first. Raises GraphError naming a node on a cycle."""
    order, indeg = kahn(preds)
    if len(order) != len(preds):
        stuck = min(i for i in range(len(preds)) if indeg[i] > 0)
        raise GraphError(f"the graph has a cycle (node {stuck} is on or behind one)")
    return order


def random_topological_order(preds: Sequence[Sequence[int]], rng) -> list[int]:
    """A topological order drawn at random (``rng``: a numpy Generator). A chain has only one
    order; branches (inception blocks, residual shortcuts) give many, each a renumbering that
    leaves the computation unchanged."""
    order, _ = kahn(preds, rng)
    if len(order) != len(preds):
        raise GraphError("the graph has a cycle")
    return order


def all_topological_orders(adj: np.ndarray, fixed_ends: bool = True, limit: int = 5040) -> list[tuple[int, ...]]:
    """Every topological order of a DAG given as an upper-triangular adjacency matrix.

    Used by the consistency augmentation: renumbering the nodes along another valid order
    describes the same architecture. With ``fixed_ends`` the input stays first and the output
    last. ``limit`` caps the enumeration (7 intermediate nodes have at most 5040 orders).
    """
    n = adj.shape[0]
    preds = [set(np.nonzero(adj[:, i])[0].tolist()) for i in range(n)]
    lo, hi = (1, n - 1) if fixed_ends and n >= 2 else (0, n)
    prefix = list(range(lo))
    out: list[tuple[int, ...]] = []

    def rec(done: list[int], left: set[int]) -> None:
        if len(out) >= limit:
            return
        if not left:
            out.append(tuple(done + list(range(hi, n))))
            return
        placed = set(done)
        for v in sorted(left):
            if preds[v] <= placed:
                rec(done + [v], left - {v})

    rec(prefix, set(range(lo, hi)))
    return out
