from collections import Counter

import numpy as np
import pytest

from narformer_core.augment import TwinSampler, apply_permutation
from narformer_core.graph import all_topological_orders
from narformer_core.spaces import nb101, nb201
from narformer_core.tokenizer import cell_arrays, tokenize_cells, tokenize_graphs

C3, C1, MP = "conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3"
ARCH = "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|"


def nb101_cells():
    def cell(edges, ops):
        m = np.zeros((len(ops), len(ops)), int)
        for j, i in edges:
            m[j, i] = 1
        return nb101.to_graph(m, ops)

    chain = cell([(0, 1), (1, 2), (2, 3)], ["input", C3, MP, "output"])       # one order only
    fork = cell([(0, 1), (0, 2), (1, 3), (2, 3)], ["input", C3, C1, "output"])  # two
    wide = cell([(0, 1), (0, 2), (0, 3), (1, 4), (2, 4), (3, 4)], ["input", C3, C1, MP, "output"])
    big = cell([(0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 5), (5, 6), (0, 6)],
               ["input", C3, C1, MP, C3, C1, "output"])
    return [chain, fork, wide, big]


def check_twin(g, perm):
    """The renumbered graph is the same architecture: same ops, same edges under the renaming."""
    k = len(g)
    order = [int(p) for p in perm[:k]]
    twin = g.relabel(order)       # raises GraphError unless the order is topological
    assert all(j < i for j, i in twin.edges())
    assert Counter(twin.ops) == Counter(g.ops)
    new = {old: n for n, old in enumerate(order)}
    assert sorted(twin.edges()) == sorted((new[j], new[i]) for j, i in g.edges())
    assert twin.ops[0] == "input" and twin.ops[-1] == "output"
    return twin


def test_nb201_draws_every_other_order_and_never_the_identity():
    adj = nb201.adjacency()
    every = set(all_topological_orders(adj))
    identity = tuple(range(8))
    assert identity in every and len(every) == 66      # the NB201 cell DAG has 66 orders
    sampler = TwinSampler(adj, np.full(10, 8))
    perms = sampler.permutations(np.zeros(3000, dtype=np.int64), np.random.default_rng(0))
    assert perms.shape == (3000, 8) and perms.dtype == np.int64
    drawn = {tuple(int(v) for v in p) for p in perms}
    assert identity not in drawn
    assert drawn == every - {identity}                  # 65 distinct orders, all reached
    g = nb201.to_graph(ARCH)
    for p in drawn:
        twin = check_twin(g, p)
        assert nb201.from_graph(twin) == ARCH


def test_draws_are_roughly_uniform_and_seeded():
    sampler = TwinSampler(nb201.adjacency(), np.full(1, 8))
    idx = np.zeros(6500, dtype=np.int64)
    perms = sampler.permutations(idx, np.random.default_rng(1))
    counts = Counter(map(tuple, perms.tolist()))
    assert min(counts.values()) > 50 and max(counts.values()) < 160   # expected 100 each
    again = sampler.permutations(idx[:50], np.random.default_rng(1))
    np.testing.assert_array_equal(again, perms[:50])


def test_nb101_cells_of_mixed_sizes():
    cells = nb101_cells()
    ops, adj, n = cell_arrays(cells, nb101.OP_IDS)
    sampler = TwinSampler(adj, n)
    rng = np.random.default_rng(0)
    idx = np.repeat(np.arange(len(cells)), 200)
    perms = sampler.permutations(idx, rng)
    N = adj.shape[-1]
    for i, p in zip(idx, perms):
        k = int(n[i])
        assert sorted(p.tolist()) == list(range(N))
        assert p[k:].tolist() == list(range(k, N))          # padding stays where it is
        check_twin(cells[i], p)
    for i, g in enumerate(cells):
        mine = {tuple(p[: len(g)].tolist()) for p in perms[idx == i]}
        others = set(all_topological_orders(g.adjacency())) - {tuple(range(len(g)))}
        if others:
            assert mine == others        # never the identity when another order exists
        else:
            assert mine == {tuple(range(len(g)))}    # the chain has no other order
    assert len(set(all_topological_orders(cells[2].adjacency()))) == 6


def test_apply_permutation_matches_relabel_and_retokenizes_the_twin():
    cells = nb101_cells()
    ops, adj, n = cell_arrays(cells, nb101.OP_IDS)
    perms = TwinSampler(adj, n).permutations(np.arange(len(cells)), np.random.default_rng(3))
    ops_t, adj_t = apply_permutation(ops, adj, perms)
    twin_graphs = [g.relabel(p[: len(g)].tolist()) for g, p in zip(cells, perms)]
    ops_r, adj_r, _ = cell_arrays(twin_graphs, nb101.OP_IDS)
    np.testing.assert_array_equal(ops_t, ops_r)
    np.testing.assert_array_equal(adj_t, adj_r)
    a = tokenize_cells(ops_t, adj_t, n)
    b = tokenize_graphs(twin_graphs)
    np.testing.assert_array_equal(a.nodes, b.nodes)
    np.testing.assert_array_equal(a.mask, b.mask)
    # The input is not modified in place.
    ops2, adj2, _ = cell_arrays(cells, nb101.OP_IDS)
    np.testing.assert_array_equal(ops, ops2)
    np.testing.assert_array_equal(adj, adj2)


def test_apply_permutation_with_the_shared_nb201_adjacency():
    cells = nb201.enumerate_all()[100:104]
    ops = nb201.op_id_matrix(cells)
    perms = TwinSampler(nb201.adjacency(), np.full(4, 8)).permutations(np.arange(4), np.random.default_rng(5))
    ops_t, adj_t = apply_permutation(ops, nb201.adjacency(), perms)
    assert adj_t.shape == (4, 8, 8)
    for c, p, o, a in zip(cells, perms, ops_t, adj_t):
        twin = nb201.to_graph(c).relabel(p.tolist())
        assert (twin.adjacency() == a).all()
        assert [nb201.OP_IDS[x] for x in twin.ops] == o.tolist()
        assert not (a == nb201.adjacency()).all()    # the cell DAG has no automorphism: a twin looks different


@pytest.mark.parametrize("n_nodes", [2, 3])
def test_tiny_cells_with_no_other_order_get_the_identity(n_nodes):
    adj = np.triu(np.ones((n_nodes, n_nodes), np.uint8), 1)
    perms = TwinSampler(adj, np.full(3, n_nodes)).permutations(np.arange(3), np.random.default_rng(0))
    assert (perms == np.arange(n_nodes)).all()
