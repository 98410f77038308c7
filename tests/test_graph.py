import json
import subprocess
import sys
from collections import Counter
from itertools import permutations
from pathlib import Path

import numpy as np
import pytest

from narformer_core.graph import ArchGraph, GraphError, Node, all_topological_orders, from_edges, topological_order

ROOT = Path(__file__).resolve().parents[1]


def diamond(**kw) -> ArchGraph:
    """input -> a, input -> b, (a, b) -> add."""
    return ArchGraph([Node("input", (), name="x"), Node("conv", (0,), {"k": [3, 3]}, (1, 8, 4, 4), name="a"),
                      Node("pool", (0,), {"k": 2}, (1, 8, 4, 4), name="b"), Node("add", (1, 2), name="y")],
                     space="generic", **kw)


def is_topological(g: ArchGraph) -> bool:
    return all(j < i for j, i in g.edges())


# ---------------------------------------------------------------- validation
def test_node_reading_a_later_node_is_rejected_with_a_clear_message():
    with pytest.raises(GraphError, match=r"node 1 \(relu\) reads from node 2: nodes must be in topological order"):
        ArchGraph([Node("input"), Node("relu", (2,)), Node("conv", (0,))])


def test_self_loop_and_missing_node_and_empty_graph_are_rejected():
    with pytest.raises(GraphError, match="topological order"):
        ArchGraph([Node("input"), Node("relu", (1,))])
    with pytest.raises(GraphError, match="node 1 \\(relu\\) reads from node 5, which does not exist"):
        ArchGraph([Node("input"), Node("relu", (5,))])
    with pytest.raises(GraphError, match="no nodes"):
        ArchGraph([])
    assert issubclass(GraphError, ValueError)


def test_views():
    g = diamond()
    assert g.ops == ["input", "conv", "pool", "add"]
    assert g.edges() == [(0, 1), (0, 2), (1, 3), (2, 3)]
    assert g.predecessors(3) == (1, 2) and g.successors(0) == [1, 2]
    assert g.outputs() == [3]
    a = g.adjacency()
    assert a.dtype == np.uint8 and a.tolist() == [[0, 1, 1, 0], [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]]
    assert len(g) == 4 and "n=4" in repr(g)


# ---------------------------------------------------------------- from_edges / topological_order
def test_from_edges_sorts_nodes_topologically():
    # Given in scrambled order: output first, input last.
    ops = ["add", "conv", "input", "pool"]
    edges = [(2, 1), (2, 3), (1, 0), (3, 0)]
    g = from_edges(ops, edges, names=["y", "a", "x", "b"], shapes=[(1,), (2,), (3,), (4,)])
    assert is_topological(g)
    assert g.ops == ["input", "conv", "pool", "add"]
    assert [n.name for n in g.nodes] == ["x", "a", "b", "y"]
    assert [n.shape for n in g.nodes] == [(3,), (2,), (4,), (1,)]
    # Same edges under the renaming old -> new.
    assert sorted(g.edges()) == [(0, 1), (0, 2), (1, 3), (2, 3)]


def test_from_edges_keeps_an_already_topological_numbering():
    ops = ["input", "a", "b", "c", "d"]
    edges = [(0, 1), (0, 2), (0, 3), (1, 4), (2, 4), (3, 4)]
    g = from_edges(ops, edges)
    assert g.ops == ops and sorted(g.edges()) == sorted(edges)


@pytest.mark.parametrize("edges", [[(0, 1), (1, 2), (2, 1)], [(0, 1), (1, 0)], [(1, 1)]])
def test_from_edges_detects_cycles(edges):
    with pytest.raises(GraphError, match="cycle"):
        from_edges(["input", "a", "b"], edges)


def test_from_edges_rejects_edges_to_unknown_nodes():
    with pytest.raises(GraphError, match=r"edge \(0, 7\) names a node outside 0..2"):
        from_edges(["input", "a", "b"], [(0, 7)])


def test_topological_order_smallest_index_first():
    assert topological_order([[], [2], [0]]) == [0, 2, 1]
    with pytest.raises(GraphError, match="cycle"):
        topological_order([[2], [0], [1]])


# ---------------------------------------------------------------- identity
HASH_SCRIPT = """
from narformer_core.graph import ArchGraph, Node
g = ArchGraph([Node("input", (), name="x"), Node("conv", (0,), {"k": [3, 3]}, (1, 8, 4, 4), name="a"),
               Node("pool", (0,), {"k": 2}, (1, 8, 4, 4), name="b"), Node("add", (1, 2), name="y")],
              space="generic")
print(g.stable_hash())
"""


def test_stable_hash_is_the_same_in_another_process():
    # A fresh interpreter has another str-hash seed: the hash must not depend on it.
    out = subprocess.run([sys.executable, "-c", HASH_SCRIPT], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    h = out.stdout.strip()
    assert len(h) == 64 and h == diamond().stable_hash()


def test_stable_hash_ignores_names_and_meta_but_not_structure():
    g = diamond()
    renamed = ArchGraph([Node(n.op, n.inputs, n.attrs, n.shape, name=f"other{i}") for i, n in enumerate(g.nodes)],
                        g.space, meta={"source": "somewhere else"})
    assert renamed.stable_hash() == g.stable_hash() and renamed == g and hash(renamed) == hash(g)
    assert diamond(meta={"k": 1}).stable_hash() == g.stable_hash()

    def variant(i, **change):
        nodes = list(g.nodes)
        n = nodes[i]
        nodes[i] = Node(change.get("op", n.op), change.get("inputs", n.inputs), change.get("attrs", n.attrs),
                        change.get("shape", n.shape), n.name)
        return ArchGraph(nodes, g.space)

    others = [variant(1, op="conv2"), variant(1, attrs={"k": [5, 5]}), variant(2, shape=(1, 16, 4, 4)),
              variant(3, inputs=(2, 1)), variant(3, inputs=(1,)),
              ArchGraph(g.nodes, space="onnx")]
    hashes = {o.stable_hash() for o in others}
    assert len(hashes) == len(others) and g.stable_hash() not in hashes


def test_attrs_are_frozen_so_numpy_and_lists_hash_alike():
    a = ArchGraph([Node("input"), Node("conv", (0,), {"k": np.array([3, 3]), "g": np.int64(1)})])
    b = ArchGraph([Node("input"), Node("conv", (0,), {"k": (3, 3), "g": 1})])
    assert a.stable_hash() == b.stable_hash()
    assert a.nodes[1].attrs["k"] == (3, 3)


def test_to_dict_from_dict_round_trip():
    g = diamond(meta={"note": "x", "list": [1, 2]})
    d = g.to_dict()
    back = ArchGraph.from_dict(d)
    assert back.to_dict() == d
    assert back.stable_hash() == g.stable_hash()
    assert [n.name for n in back.nodes] == ["x", "a", "b", "y"]
    assert back.nodes[1].attrs == {"k": (3, 3)} and back.nodes[1].shape == (1, 8, 4, 4)
    via_json = ArchGraph.from_dict(json.loads(g.to_json()))
    assert via_json.to_dict() == d


@pytest.mark.parametrize("bad", [{}, {"nodes": [{"inputs": []}]}, {"nodes": 3}])
def test_from_dict_rejects_malformed_descriptions(bad):
    with pytest.raises(GraphError, match="not a graph description"):
        ArchGraph.from_dict(bad)


# ---------------------------------------------------------------- relabel / orders
def test_relabel_keeps_the_architecture():
    g = diamond()
    t = g.relabel([0, 2, 1, 3])
    assert t.ops == ["input", "pool", "conv", "add"]
    assert Counter(t.ops) == Counter(g.ops)
    new = {old: k for k, old in enumerate([0, 2, 1, 3])}
    assert sorted(t.edges()) == sorted((new[j], new[i]) for j, i in g.edges())
    assert t.nodes[1].attrs == {"k": 2} and t.nodes[2].name == "a"
    assert t.relabel([0, 2, 1, 3]).stable_hash() == g.stable_hash()


def test_relabel_rejects_non_topological_orders_and_non_permutations():
    g = diamond()
    with pytest.raises(GraphError, match="topological order"):
        g.relabel([1, 0, 2, 3])
    with pytest.raises(GraphError, match="not a permutation"):
        g.relabel([0, 1, 1, 3])
    with pytest.raises(GraphError, match="not a permutation"):
        g.relabel([0, 1, 2])


def test_all_topological_orders_of_a_diamond():
    adj = diamond().adjacency()
    assert sorted(all_topological_orders(adj)) == [(0, 1, 2, 3), (0, 2, 1, 3)]
    assert sorted(all_topological_orders(adj, fixed_ends=False)) == [(0, 1, 2, 3), (0, 2, 1, 3)]


def test_all_topological_orders_matches_brute_force():
    # input -> {1, 2, 3}, 1 -> 4, 4 -> 5, everything ends in 5; brute force over all permutations.
    edges = [(0, 1), (0, 2), (0, 3), (1, 4), (2, 5), (3, 5), (4, 5)]
    adj = np.zeros((6, 6), np.uint8)
    for j, i in edges:
        adj[j, i] = 1
    brute = {p for p in permutations(range(6)) if all(p.index(j) < p.index(i) for j, i in edges)}
    got = all_topological_orders(adj, fixed_ends=False)
    assert len(got) == len(set(got)) and set(got) == brute
    fixed = all_topological_orders(adj)
    assert set(fixed) == {p for p in brute if p[0] == 0 and p[-1] == 5}
    g = from_edges(["input", "a", "b", "c", "d", "out"], edges)
    for order in fixed:
        assert is_topological(g.relabel(order))
    # No edges at all: every order, fixed ends or not, and the cap is respected.
    assert len(all_topological_orders(np.zeros((4, 4), np.uint8), fixed_ends=False)) == 24
    assert len(all_topological_orders(np.zeros((4, 4), np.uint8))) == 2
    assert len(all_topological_orders(np.zeros((6, 6), np.uint8), fixed_ends=False, limit=10)) == 10


def test_random_topological_orders_are_valid_and_vary_only_where_branches_allow():
    from narformer_core.graph import random_topological_order

    rng = np.random.default_rng(0)
    # 0 -> (1, 2, 3) -> 4: the three branches may come in any order.
    preds = [(), (0,), (0,), (0,), (1, 2, 3)]
    seen = set()
    for _ in range(60):
        order = random_topological_order(preds, rng)
        pos = {v: k for k, v in enumerate(order)}
        assert sorted(order) == list(range(5))
        assert all(pos[s] < pos[d] for d, ps in enumerate(preds) for s in ps)
        seen.add(tuple(order))
    assert len(seen) == 6                                   # 3! orders of the branches, all drawn
    chain = [(), (0,), (1,), (2,)]
    assert {tuple(random_topological_order(chain, rng)) for _ in range(10)} == {(0, 1, 2, 3)}
    with pytest.raises(GraphError, match="cycle"):
        random_topological_order([(1,), (0,)], rng)
