import numpy as np
import pandas as pd
import pytest

from narformer_core.data import shared_file
from narformer_core.graph import ArchGraph, GraphError
from narformer_core.spaces import nb101

C3, C1, MP = nb101.OPS

# input -> 1 -> 2 -> output, plus input -> output
CHAIN = np.array([[0, 1, 0, 1],
                  [0, 0, 1, 0],
                  [0, 0, 0, 1],
                  [0, 0, 0, 0]])
CHAIN_OPS = ["input", C3, MP, "output"]


def _official_records():
    try:
        path = shared_file("nb101_30_full_records_naslib_testasset.csv")
    except FileNotFoundError:
        pytest.skip("shared NB101 records not available")
    return pd.read_csv(path, dtype=str)


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("matrix, ops, message", [
    ([[0, 1, 0], [0, 0, 1]], ["input", C3, "output"], "must be square"),
    (np.zeros((2, 2, 2)), ["input", "output"], "must be square"),
    ([[0, 1], [0]], ["input", "output"], "not a rectangular table"),
    (np.triu(np.ones((8, 8), int), 1), ["input"] + [C3] * 6 + ["output"], "at most 7 nodes, this matrix has 8"),
    ([[0, 2], [0, 0]], ["input", "output"], "entry (0, 1) is 2"),
    ([["0", "1"], ["0", "0"]], ["input", "output"], "must be 0 or 1"),
    ([[0, 1, 0], [0, 1, 1], [0, 0, 0]], ["input", C3, "output"], "node 1 has a self loop"),
    ([[0, 1, 0], [0, 0, 1], [0, 1, 0]], ["input", C3, "output"], "entry (2, 1) makes node 2 feed the earlier node 1"),
    (CHAIN, ["input", C3, "output"], "4 nodes but 3 ops"),
    (CHAIN, [C3, C3, MP, "output"], "first op of an NB101 cell must be 'input'"),
    (CHAIN, ["input", C3, MP, C1], "last op of an NB101 cell must be 'output'"),
    (CHAIN, ["input", "conv5x5", MP, "output"],
     "unknown NB101 op 'conv5x5' at node 1; known ops: conv3x3-bn-relu, conv1x1-bn-relu, maxpool3x3"),
    (np.triu(np.ones((7, 7), int), 1), ["input"] + [C3] * 5 + ["output"], "21 edges"),
    ([[0, 1, 0], [0, 0, 0], [0, 0, 0]], ["input", C3, "output"], "disconnected cell"),
])
def test_validation_errors(matrix, ops, message):
    with pytest.raises(GraphError) as e:
        nb101.validate(matrix, ops)
    assert message in str(e.value)
    assert not nb101.is_valid(matrix, ops)
    with pytest.raises(GraphError):
        nb101.to_graph(matrix, ops)


def test_edge_limit_is_on_the_pruned_module():
    # 10 edges in the raw matrix, but two of them touch a node that cannot reach the output.
    m = np.zeros((7, 7), int)
    for i, j in [(0, 1), (1, 2), (2, 3), (3, 4), (4, 6), (0, 6), (1, 6), (2, 6), (0, 5), (1, 5)]:
        m[i, j] = 1
    ops = ["input", C3, C1, MP, C3, C1, "output"]
    assert m.sum() == 10
    nb101.validate(m, ops)
    pm, pops = nb101.prune(m, ops)
    assert pm.sum() == 8 and len(pops) == 6
    m[3, 6] = m[2, 4] = 1
    with pytest.raises(GraphError, match="10 edges"):
        nb101.validate(m, ops)


def test_valid_cells_pass():
    nb101.validate(CHAIN, CHAIN_OPS)
    nb101.validate([[0, 1], [0, 0]], ["input", "output"])
    nb101.validate(np.array([[False, True], [False, False]]), ("input", "output"))
    assert nb101.is_valid(CHAIN.astype(float), CHAIN_OPS)


# ---------------------------------------------------------------- pruning
def test_prune_removes_dangling_nodes():
    m = np.zeros((6, 6), int)
    m[0, 1] = m[1, 5] = 1      # the real path
    m[0, 2] = 1                # node 2: reached from the input, reaches nothing
    m[3, 5] = 1                # node 3: reaches the output, never reached
    m[3, 4] = 1                # node 4: neither
    ops = ["input", C3, C1, MP, C1, "output"]
    pm, pops = nb101.prune(m, ops)
    assert pops == ["input", C3, "output"]
    np.testing.assert_array_equal(pm, [[0, 1, 0], [0, 0, 1], [0, 0, 0]])
    assert nb101.module_hash(m, ops) == nb101.module_hash(pm, pops)
    g = nb101.to_graph(m, ops)
    assert len(g) == 3 and g.meta["ops"] == pops and g.meta["matrix"] == pm.tolist()


def test_prune_keeps_a_clean_cell_and_is_idempotent():
    pm, pops = nb101.prune(CHAIN, CHAIN_OPS)
    np.testing.assert_array_equal(pm, CHAIN)
    assert pops == CHAIN_OPS
    pm2, pops2 = nb101.prune(pm, pops)
    np.testing.assert_array_equal(pm2, pm)


def test_prune_rejects_disconnected():
    m = np.zeros((4, 4), int)
    m[0, 1] = m[2, 3] = 1
    with pytest.raises(GraphError, match="disconnected cell"):
        nb101.prune(m, ["input", C3, C3, "output"])


# ---------------------------------------------------------------- hashing
def _relabel(m, ops, perm):
    """perm[new] = old, over all nodes."""
    pm = np.asarray(m)[np.ix_(perm, perm)]
    return pm, [ops[k] for k in perm]


def test_isomorphic_cells_share_a_hash():
    m = np.zeros((5, 5), int)
    m[0, 1] = m[0, 2] = m[1, 3] = m[2, 4] = m[3, 4] = 1
    ops = ["input", C3, C1, MP, "output"]
    # Swap nodes 1 and 2 ... needs 3 to follow its reader: new order 0, 2, 1, 3, 4 is still topological.
    pm, pops = _relabel(m, ops, [0, 2, 1, 3, 4])
    assert not np.array_equal(pm, m)
    nb101.validate(pm, pops)
    assert nb101.module_hash(m, ops) == nb101.module_hash(pm, pops)
    assert nb101.to_graph(m, ops).meta["hash"] == nb101.to_graph(pm, pops).meta["hash"]


def test_different_cells_have_different_hashes():
    base = nb101.module_hash(CHAIN, CHAIN_OPS)
    other_op = nb101.module_hash(CHAIN, ["input", C1, MP, "output"])
    swapped = nb101.module_hash(CHAIN, ["input", MP, C3, "output"])  # order along the chain matters
    m = CHAIN.copy()
    m[0, 2] = 1
    other_edge = nb101.module_hash(m, CHAIN_OPS)
    hashes = {base, other_op, swapped, other_edge}
    assert len(hashes) == 4
    assert all(len(h) == 32 and int(h, 16) >= 0 for h in hashes)


def test_hash_matches_all_official_records():
    df = _official_records()
    assert len(df) == 30
    for row in df.itertuples():
        m = nb101.parse_rowmajor(row.adjacency_rowmajor, int(row.n_nodes))
        ops = row.ops.split("|")
        assert nb101.module_hash(m, ops) == row.hash
        assert nb101.to_graph(m, ops).meta["hash"] == row.hash


def test_hash_is_invariant_to_every_topological_renumbering_of_a_real_cell():
    from narformer_core.graph import all_topological_orders

    df = _official_records()
    row = df.iloc[0]
    m = nb101.parse_rowmajor(row.adjacency_rowmajor, int(row.n_nodes))
    ops = row.ops.split("|")
    orders = all_topological_orders(m)
    assert len(orders) > 1
    for order in orders[:20]:
        pm, pops = _relabel(m, ops, list(order))
        assert nb101.module_hash(pm, pops) == row.hash


# ---------------------------------------------------------------- conversion
def test_graph_round_trip():
    g = nb101.to_graph(CHAIN, CHAIN_OPS)
    assert isinstance(g, ArchGraph) and g.space == "nb101"
    assert g.ops == CHAIN_OPS
    assert g.predecessors(3) == (0, 2)
    m, ops = nb101.from_graph(g)
    np.testing.assert_array_equal(m, CHAIN)
    assert ops == CHAIN_OPS
    assert ArchGraph.from_dict(g.to_dict()).meta["hash"] == g.meta["hash"]


def test_from_graph_rejects_other_spaces():
    from narformer_core.spaces import nb201

    with pytest.raises(GraphError, match="not an NB101 cell graph"):
        nb101.from_graph(nb201.to_graph(nb201.sample(np.random.default_rng(0))))


def test_parse_rowmajor():
    np.testing.assert_array_equal(nb101.parse_rowmajor("0100", 2), [[0, 1], [0, 0]])
    with pytest.raises(GraphError, match="needs 9 bits, got 4"):
        nb101.parse_rowmajor("0100", 3)
    with pytest.raises(GraphError, match="only contain 0 and 1"):
        nb101.parse_rowmajor("0120", 2)


# ---------------------------------------------------------------- search
def test_sample_gives_valid_pruned_cells():
    rng = np.random.default_rng(0)
    hashes = set()
    for _ in range(100):
        m, ops = nb101.sample(rng)
        nb101.validate(m, ops)
        pm, _ = nb101.prune(m, ops)
        assert pm.shape == m.shape  # already pruned
        assert 2 <= len(ops) <= nb101.MAX_NODES and m.sum() <= nb101.MAX_EDGES
        hashes.add(nb101.module_hash(m, ops))
    assert len(hashes) > 50
    again = nb101.sample(np.random.default_rng(0))
    first = nb101.sample(np.random.default_rng(0))
    np.testing.assert_array_equal(again[0], first[0])


def test_mutate_gives_a_different_valid_cell():
    rng = np.random.default_rng(1)
    m, ops = nb101.sample(rng)
    for _ in range(60):
        m2, ops2 = nb101.mutate(m, ops, rng)
        nb101.validate(m2, ops2)
        assert nb101.module_hash(m2, ops2) != nb101.module_hash(m, ops)
        m, ops = m2, ops2


def test_mutate_can_grow_a_tiny_cell():
    rng = np.random.default_rng(2)
    sizes = {len(nb101.mutate([[0, 1], [0, 0]], ["input", "output"], rng)[1]) for _ in range(30)}
    assert max(sizes) > 2


def test_mutate_rejects_an_invalid_cell():
    with pytest.raises(GraphError, match="disconnected"):
        nb101.mutate(np.zeros((3, 3), int), ["input", C3, "output"], np.random.default_rng(0))
