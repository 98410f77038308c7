import math

import numpy as np
import pytest

from narformer_core.graph import ArchGraph, GraphError, Node
from narformer_core.spaces import nb101, nb201
from narformer_core.tokenizer import (CellTokens, cell_token_labels, encode_real, encode_scalar, frequencies,
                                      tokenize_cells, tokenize_graphs)

C3, C1, MP = "conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3"


# Comparisons against the hand-written code allow 2e-5: at f ~ 2^31 one float64 ulp of a
# frequency moves the phase by ~1e-6; float32 arithmetic would be off by O(1) (tested below).
EXACT = 2e-5


def ref_code(x: float, L: int) -> np.ndarray:
    """E_L(x) written out in plain float64 Python, the nerf frequencies linspace(1, 2^(L-1), L)."""
    top = 2.0 ** (L - 1)
    fs = [1.0 + k * (top - 1.0) / (L - 1) for k in range(L)] if L > 1 else [1.0]
    out = []
    for f in fs:
        out += [math.sin(math.pi * f * x), math.cos(math.pi * f * x)]
    return np.array(out)


# ---------------------------------------------------------------- the real-number code
def test_encode_real_by_hand():
    # L = 2: f = [1, 2] -> [sin(pi/2), cos(pi/2), sin(pi), cos(pi)]
    got = encode_real(0.5, 2)
    assert got.shape == (4,)
    np.testing.assert_allclose(got, [1.0, 0.0, 0.0, -1.0], atol=1e-15)
    np.testing.assert_allclose(encode_real(-1.0, 1), [0.0, -1.0], atol=1e-15)
    np.testing.assert_allclose(encode_real(0.0, 3), [0, 1, 0, 1, 0, 1], atol=0)


def test_frequencies():
    f = frequencies(32)
    assert f.dtype == np.float64 and f.shape == (32,)
    assert f[0] == 1.0 and f[-1] == 2.0 ** 31
    np.testing.assert_allclose(np.diff(f), (2.0 ** 31 - 1) / 31)      # linear spacing, not powers of two
    np.testing.assert_allclose(frequencies(4, "trans"), [1.0, 0.1, 0.01, 0.001])
    np.testing.assert_allclose(frequencies(2, "trans"), [1.0, 0.01])
    with pytest.raises(ValueError, match="unknown encoding scheme 'fourier'"):
        frequencies(4, "fourier")
    with pytest.raises(ValueError):
        f[0] = 2.0     # cached and shared: must be read-only


def test_trans_scheme_values():
    x = 3.0
    got = encode_real(x, 4, "trans")
    want = []
    for f in (1.0, 0.1, 0.01, 0.001):
        want += [math.sin(math.pi * f * x), math.cos(math.pi * f * x)]
    np.testing.assert_allclose(got, want, atol=1e-15)


def test_vector_layout_for_two_numbers():
    a, b = 0.25, 0.5
    got = encode_real([a, b], 2)
    s, c, p = math.sin, math.cos, math.pi
    # per frequency: a block of m sines then a block of m cosines
    want = [s(p * a), s(p * b), c(p * a), c(p * b), s(2 * p * a), s(2 * p * b), c(2 * p * a), c(2 * p * b)]
    np.testing.assert_allclose(got, want, atol=1e-15)
    batch = encode_real([[a, b], [b, a]], 2)
    assert batch.shape == (2, 8)
    np.testing.assert_allclose(batch[0], want, atol=1e-15)


def test_encode_scalar_is_element_wise():
    x = np.array([[0.0, 1.0, 2.0], [3.0, -1.0, 7.5]])
    got = encode_scalar(x, 3)
    assert got.shape == (2, 3, 6)
    for idx in np.ndindex(x.shape):
        np.testing.assert_allclose(got[idx], encode_real(x[idx], 3), atol=1e-15)


def test_high_frequencies_are_computed_in_float64():
    x = 0.37
    got = encode_real(x, 32)
    assert got.dtype == np.float64
    ref = ref_code(x, 32)
    np.testing.assert_allclose(got, ref, atol=EXACT)
    # The same thing in float32 is noise at the top frequencies: this test can tell the two apart.
    f32 = frequencies(32).astype(np.float32)
    phase32 = np.float32(np.pi) * f32 * np.float32(x)
    noisy = np.stack([np.sin(phase32), np.cos(phase32)], axis=1).reshape(-1)
    assert np.abs(noisy - ref).max() > 0.1


def np_code(x: float, L: int) -> np.ndarray:
    """E_L(x) with the project's own frequencies, phases in float64 numpy."""
    phase = np.pi * frequencies(L) * np.float64(x)
    return np.stack([np.sin(phase), np.cos(phase)], axis=1).reshape(-1)


def test_depth_and_end_codes_in_float64_then_cast():
    # L = 96 with linear spacing puts every frequency but the first above 2^53, where float64
    # cannot hold the phase: those values depend on how numpy rounded each frequency, so the
    # reference reuses the project's frequencies and only the first pair is checked exactly.
    tk = tokenize_graphs([nb201.to_graph(nb201.enumerate_all()[7])])
    np.testing.assert_allclose(tk.depth[0], np_code(8.0, 96), atol=2e-6)
    np.testing.assert_allclose(tk.nodes[0, 8], np_code(1e5, 96), atol=2e-6)
    np.testing.assert_allclose(tk.depth[0][:2], [0.0, 1.0], atol=1e-6)          # sin(8 pi), cos(8 pi)
    assert frequencies(96)[1] > 2.0 ** 53


# ---------------------------------------------------------------- cell tokens
ARCH = "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|"


def test_nb201_cell_tokens_by_hand():
    tk = tokenize_graphs([nb201.to_graph(ARCH)])
    assert isinstance(tk, CellTokens) and len(tk) == 1
    assert tk.nodes.shape == (1, 9, 192) and tk.nodes.dtype == np.float32
    assert tk.depth.shape == (1, 192) and tk.mask.shape == (1, 9) and tk.mask.all()

    def E(x):
        return ref_code(x, 32)

    op_ids = [0, 2, 4, 5, 3, 1, 2, 6]        # input, the six ops (METHOD.md numbering), output
    preds = [(), (0,), (0,), (1,), (0,), (1,), (2, 3), (4, 5, 6)]
    for i in range(8):
        tok = tk.nodes[0, i]
        np.testing.assert_allclose(tok[:64], E(op_ids[i]), atol=EXACT, err_msg=f"op part of node {i}")
        np.testing.assert_allclose(tok[64:128], E(i), atol=EXACT, err_msg=f"position part of node {i}")
        src = E(-1) if i == 0 else sum(E(j) for j in preds[i])
        np.testing.assert_allclose(tok[128:], src, atol=3 * EXACT, err_msg=f"source part of node {i}")
    np.testing.assert_allclose(tk.nodes[0, 8], np_code(1e5, 96), atol=2e-6)    # end token
    np.testing.assert_allclose(tk.depth[0], np_code(8, 96), atol=2e-6)         # depth = node count
    labels = cell_token_labels()
    assert len(labels) == 192 and labels[0] == "op type" and labels[64] == "position" and labels[191] == "sources"


def test_trans_scheme_reaches_the_tokens():
    g = nb201.to_graph(ARCH)
    a, b = tokenize_graphs([g]), tokenize_graphs([g], scheme="trans")
    assert not np.allclose(a.nodes, b.nodes)
    np.testing.assert_allclose(b.nodes[0, 3, 64:128], encode_real(3.0, 32, "trans"), atol=2e-6)


def small_nb101():
    m = np.array([[0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    return nb101.to_graph(m, ["input", C3, MP, "output"])


def big_nb101():
    m = np.zeros((7, 7), int)
    for j, i in [(0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 5), (5, 6), (0, 6)]:
        m[j, i] = 1
    return nb101.to_graph(m, ["input", C3, C1, MP, C3, C1, "output"])


def test_nb101_cells_of_different_sizes_are_padded_and_masked():
    small, big = small_nb101(), big_nb101()
    assert (len(small), len(big)) == (4, 7)
    tk = tokenize_graphs([small, big])
    assert tk.nodes.shape == (2, 8, 192)
    assert tk.mask.tolist() == [[True] * 5 + [False] * 3, [True] * 8]
    np.testing.assert_allclose(tk.nodes[0, 4], np_code(1e5, 96), atol=2e-6)     # end right after node 3
    np.testing.assert_allclose(tk.nodes[1, 7], np_code(1e5, 96), atol=2e-6)
    assert (tk.nodes[0, 5:] == 0).all()
    np.testing.assert_allclose(tk.depth[0], np_code(4, 96), atol=2e-6)
    np.testing.assert_allclose(tk.depth[1], np_code(7, 96), atol=2e-6)
    # A padded cell's real tokens are those it has alone.
    alone = tokenize_graphs([small])
    assert alone.nodes.shape == (1, 5, 192) and alone.mask.all()
    np.testing.assert_array_equal(tk.nodes[0, :5], alone.nodes[0])
    np.testing.assert_array_equal(tk.depth[0], alone.depth[0])
    # NB101 op ids: input 0, conv1x1 1, conv3x3 2, maxpool 3, output 4.
    for i, op_id in enumerate([0, 2, 3, 4]):
        np.testing.assert_allclose(tk.nodes[0, i, :64], ref_code(op_id, 32), atol=EXACT)
    np.testing.assert_allclose(tk.nodes[0, 3, 128:], ref_code(0, 32) + ref_code(2, 32), atol=2 * EXACT)
    sub = tk.subset([1])
    assert len(sub) == 1 and (sub.nodes[0] == tk.nodes[1]).all()


def test_tokenize_cells_batch_adjacency_matches_shared_adjacency():
    ops = nb201.op_id_matrix(nb201.enumerate_all()[:5])
    shared = tokenize_cells(ops, nb201.adjacency())
    per = tokenize_cells(ops, np.broadcast_to(nb201.adjacency(), (5, 8, 8)).copy())
    np.testing.assert_allclose(shared.nodes, per.nodes, atol=1e-6)
    np.testing.assert_array_equal(shared.depth, per.depth)


def test_tokenize_graphs_errors():
    with pytest.raises(GraphError, match="no graphs"):
        tokenize_graphs([])
    with pytest.raises(GraphError, match="several spaces"):
        tokenize_graphs([small_nb101(), nb201.to_graph(ARCH)])
    odd = ArchGraph([Node("input"), Node("conv5x5", (0,)), Node("output", (1,))], space="nb201")
    with pytest.raises(GraphError, match="'conv5x5' has no token id"):
        tokenize_graphs([odd])
    with pytest.raises(ValueError, match="no cell op ids"):
        tokenize_graphs([ArchGraph([Node("input")], space="onnx")])


def test_the_whole_nb201_space(nb201_task):
    tk = nb201_task.tokens()
    assert tk.nodes.shape == (15_625, 9, 192) and tk.depth.shape == (15_625, 192)
    assert tk.nodes.dtype == np.float32 and tk.mask.all()
    assert np.isfinite(tk.nodes).all()
    # Vectorised tokens agree with tokenizing single graphs, for a spread of cells.
    rng = np.random.default_rng(0)
    for i in rng.choice(15_625, 6, replace=False):
        one = tokenize_graphs([nb201.to_graph(nb201_task.ids[i])])
        np.testing.assert_allclose(tk.nodes[i], one.nodes[0], atol=1e-6)
        np.testing.assert_array_equal(tk.depth[i], one.depth[0])
    # Different cells, different tokens.
    flat = tk.nodes[:, 1:7, :64].reshape(15_625, -1)
    assert len(np.unique(flat, axis=0)) == 15_625
