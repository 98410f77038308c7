from collections import Counter

import numpy as np
import pytest

from narformer_core.graph import ArchGraph, GraphError, Node, all_topological_orders
from narformer_core.spaces import nb201

ARCH = "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|"
ARCH_OPS = ("nor_conv_3x3", "skip_connect", "none", "avg_pool_3x3", "nor_conv_1x1", "nor_conv_3x3")
# The cell DAG written out by hand: edge k of the arch string is node k + 1.
# 0->1 reads the input; 0->2 the input; 1->2 reads feature map 1 = node 1; 0->3 the input;
# 1->3 reads node 1; 2->3 reads feature map 2 = nodes 2 + 3; the output sums map 3 = nodes 4, 5, 6.
PREDS = ((), (0,), (0,), (1,), (0,), (1,), (2, 3), (4, 5, 6))


def test_round_trip_over_the_whole_space():
    cells = nb201.enumerate_all()
    assert len(cells) == nb201.N_ARCHS == 15_625 and len(set(cells)) == 15_625
    strings = [nb201.to_arch_str(c) for c in cells]
    assert len(set(strings)) == 15_625
    for i, (c, s) in enumerate(zip(cells, strings)):
        assert nb201.parse(s) == c
        assert nb201.index_of(c) == i


def test_parse_known_cell_and_tolerates_outer_whitespace():
    assert nb201.parse(ARCH) == ARCH_OPS
    assert nb201.parse(f"  {ARCH}\n") == ARCH_OPS
    assert nb201.to_arch_str(ARCH_OPS) == ARCH


@pytest.mark.parametrize("arch, message", [
    ("|nor_conv_3x3~0|+|skip_connect~0|none~1|", "3 groups joined by '+', found 2"),
    (ARCH + "+|none~0|", "3 groups joined by '+', found 4"),
    ("", "found 1"),
    ("|nor_conv_3x3~1|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|",
     "must read from node 0, not 1"),
    ("|nor_conv_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~2|nor_conv_3x3~1|",
     "must read from node 1, not 2"),
    ("|conv_5x5~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|",
     "unknown NB201 op 'conv_5x5'"),
    ("nor_conv_3x3~0+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|",
     "group 1 must start and end with '|'"),
    ("|nor_conv_3x3~0|+|skip_connect~0|none~1+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|",
     "group 2 must start and end with '|'"),
    ("|nor_conv_3x3~0|+|skip_connect~0|+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|",
     "group 2 must have 2 edge"),
    ("|nor_conv_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|none~3|",
     "group 3 must have 3 edge"),
    ("|nor_conv_3x3|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|",
     "not of the form op~source"),
])
def test_malformed_arch_strings_name_the_problem(arch, message):
    with pytest.raises(GraphError, match=message.replace("|", r"\|").replace("+", r"\+")):
        nb201.parse(arch)


@pytest.mark.parametrize("value", [None, 42, ARCH_OPS, b"|none~0|"])
def test_non_string_arch_is_rejected(value):
    with pytest.raises(GraphError, match="must be text"):
        nb201.parse(value)


def test_to_arch_str_rejects_bad_op_lists():
    with pytest.raises(GraphError, match="6 ops"):
        nb201.to_arch_str(ARCH_OPS[:5])
    with pytest.raises(GraphError, match="6 ops"):
        nb201.to_arch_str(ARCH_OPS[:5] + ("conv",))


def test_to_graph_has_the_fixed_layout():
    g = nb201.to_graph(ARCH)
    assert isinstance(g, ArchGraph) and g.space == "nb201" and len(g) == 8
    assert g.ops == ["input", *ARCH_OPS, "output"]
    assert tuple(g.predecessors(i) for i in range(8)) == PREDS == nb201.PREDECESSORS
    assert g.meta["arch_str"] == ARCH
    assert g.outputs() == [7]
    assert (g.adjacency() == nb201.adjacency()).all()
    # Ops or string give the same graph; the structure, not the text, is what is hashed.
    assert nb201.to_graph(ARCH_OPS).stable_hash() == g.stable_hash()
    assert nb201.to_graph(nb201.enumerate_all()[0]).stable_hash() != g.stable_hash()


def test_from_graph_inverts_to_graph_even_for_renumbered_twins():
    g = nb201.to_graph(ARCH)
    assert nb201.from_graph(g) == ARCH
    orders = all_topological_orders(g.adjacency())
    assert len(orders) > 1
    for order in orders:   # the consistency twin is the same cell, not another one
        assert nb201.from_graph(g.relabel(order)) == ARCH


def test_from_graph_rejects_other_graphs():
    g = nb201.to_graph(ARCH)
    with pytest.raises(GraphError, match="not an NB201 cell graph"):
        nb201.from_graph(ArchGraph(g.nodes, space="nb101"))
    with pytest.raises(GraphError, match="not an NB201 cell graph"):
        nb201.from_graph(ArchGraph(g.nodes[:7], space="nb201"))
    chain = [Node("input")] + [Node(op, (i,)) for i, op in enumerate(ARCH_OPS)] + [Node("output", (6,))]
    with pytest.raises(GraphError, match="wiring"):
        nb201.from_graph(ArchGraph(chain, space="nb201"))


def test_op_id_matrix_uses_the_method_numbering():
    ids = nb201.op_id_matrix([ARCH_OPS, ("none",) * 6])
    # input 0, nor_conv_1x1 1, nor_conv_3x3 2, avg_pool_3x3 3, skip_connect 4, none 5, output 6
    assert ids.tolist() == [[0, 2, 4, 5, 3, 1, 2, 6], [0, 5, 5, 5, 5, 5, 5, 6]]


def test_mutate_changes_exactly_one_edge():
    rng = np.random.default_rng(0)
    cell = ARCH_OPS
    changed_edges = Counter()
    for _ in range(500):
        new = nb201.mutate(cell, rng)
        diff = [k for k in range(6) if new[k] != cell[k]]
        assert len(diff) == 1 and all(o in nb201.OPS for o in new)
        changed_edges[diff[0]] += 1
        cell = new
    assert set(changed_edges) == set(range(6))   # every edge gets mutated sometimes


def test_neighbours_are_24_distinct_one_edge_changes():
    nbrs = nb201.neighbours(ARCH_OPS)
    assert len(nbrs) == 24 and len(set(nbrs)) == 24 and ARCH_OPS not in nbrs
    for n in nbrs:
        assert sum(a != b for a, b in zip(n, ARCH_OPS)) == 1
        nb201.to_arch_str(n)   # a valid cell


def test_sample_draws_valid_cells():
    rng = np.random.default_rng(1)
    cells = {nb201.sample(rng) for _ in range(200)}
    assert len(cells) > 190
    for c in cells:
        assert nb201.parse(nb201.to_arch_str(c)) == c
