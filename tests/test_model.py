import numpy as np
import pytest
import torch

from narformer_core.model import NARFormer, NARFormerConfig, build_model
from narformer_core.spaces import nb101, nb201
from narformer_core.tokenizer import tokenize_graphs

C3, C1, MP = "conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3"
pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = dict(d_model=32, n_heads=2, ffn_dim=64, depths=(1, 1, 1, 1))


def tensors(tk):
    return torch.from_numpy(tk.depth), torch.from_numpy(tk.nodes), torch.from_numpy(tk.mask)


def nb201_batch(n=5):
    return tokenize_graphs([nb201.to_graph(c) for c in nb201.enumerate_all()[:: 15_625 // n][:n]])


def nb101_cells():
    def cell(edges, ops):
        m = np.zeros((len(ops), len(ops)), int)
        for j, i in edges:
            m[j, i] = 1
        return nb101.to_graph(m, ops)

    return [cell([(0, 1), (1, 2), (2, 3), (0, 3)], ["input", C3, MP, "output"]),
            cell([(0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 5), (5, 6), (0, 6)],
                 ["input", C3, C1, MP, C3, C1, "output"]),
            cell([(0, 1), (1, 2), (0, 2)], ["input", C1, "output"])]


def test_default_config_size():
    model = NARFormer(NARFormerConfig())
    n = model.n_params()
    print(f"default NAR-Former cell model: {n:,} parameters")
    assert 3.5e6 <= n <= 5.5e6
    assert len(model.encoder) == 6 and [len(s.blocks) for s in model.stages] == [1, 1, 1]
    assert [s.queries.shape[0] for s in model.stages] == [4, 2, 1]


def test_accuracy_head_shapes_and_range():
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    depth, nodes, mask = tensors(nb201_batch(5))
    with torch.no_grad():
        out = model(depth, nodes, mask)
        out_nomask = model(depth, nodes)
    assert out.shape == (5,) and out.dtype == torch.float32
    assert ((out > 0) & (out < 1)).all()
    torch.testing.assert_close(out, out_nomask)   # an all-true mask is the same as none
    assert out.std() > 0                           # different cells, different predictions


def test_token_projection_when_token_width_differs_from_model_width():
    torch.manual_seed(0)
    model = build_model({**TINY, "token_dim": 480, "depth_dim": 64}).eval()
    out = model(torch.randn(3, 64), torch.randn(3, 6, 480))
    assert out.shape == (3,)
    assert isinstance(model.token_embed, torch.nn.Linear)
    assert isinstance(build_model(dict(TINY, d_model=192, n_heads=6)).token_embed, torch.nn.Identity)


def test_latency_head_uses_static_features():
    torch.manual_seed(0)
    cfg = NARFormerConfig(token_dim=480, depth_dim=192, head="latency", static_dim=16, head_hidden=64, **TINY)
    model = NARFormer(cfg).eval()
    depth, nodes = torch.randn(4, 192), torch.randn(4, 7, 480)
    static = torch.randn(4, 16)
    with torch.no_grad():
        a = model(depth, nodes, static=static)
        b = model(depth, nodes, static=static + 1.0)
    assert a.shape == (4,)
    assert not torch.allclose(a, b)
    # The MLP widths h, h/2, h/4, h/8 then 1, on [token | static].
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(48, 64), (64, 32), (32, 16), (16, 8), (8, 1)]
    with pytest.raises(ValueError, match="expects 16 static feature values per architecture, got 0"):
        model(depth, nodes)
    with pytest.raises(ValueError, match="got 3"):
        model(depth, nodes, static=torch.randn(4, 3))
    plain = NARFormer(NARFormerConfig(head="latency", **TINY)).eval()
    assert plain(torch.randn(2, 192), torch.randn(2, 5, 192)).shape == (2,)


def test_sum_readout_widens_the_head_and_ignores_padding():
    torch.manual_seed(0)
    cfg = NARFormerConfig(token_dim=480, depth_dim=192, head="latency", static_dim=4, head_hidden=64,
                          readout="token+sum", **TINY)
    model = NARFormer(cfg).eval()
    first = next(m for m in model.head if isinstance(m, torch.nn.Linear))
    assert first.in_features == 32 + 32 + 4           # [token | node sum | static]
    depth, nodes, static = torch.randn(2, 192), torch.randn(2, 9, 480), torch.randn(2, 4)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    with torch.no_grad():
        together = model(depth, nodes, mask, static)
        short = model(depth[1:], nodes[1:, :6], None, static[1:])
        # Repeating a network's tokens changes the sum, so the readout sees the network's size.
        doubled = model(depth[:1], torch.cat([nodes[:1], nodes[:1]], dim=1), None, static[:1])
    torch.testing.assert_close(together[1], short[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(together[0], doubled[0])


@pytest.mark.parametrize("readout, reads_token", [("token+relusum", True), ("relusum", False)])
def test_relu_sum_readout_pools_per_operator_features(readout, reads_token):
    torch.manual_seed(0)
    cfg = NARFormerConfig(token_dim=480, depth_dim=192, head="latency", static_dim=4, head_hidden=64,
                          readout=readout, **TINY)
    model = NARFormer(cfg).eval()
    first = next(m for m in model.head if isinstance(m, torch.nn.Linear))
    assert first.in_features == (32 if reads_token else 0) + 64 + 4     # [token | ReLU pool (ffn_dim) | static]
    # "relusum" reads no fusion token, so it builds no fusion stages.
    assert (len(model.stages) > 0) == reads_token and (model.ln_f is not None) == reads_token
    memory = torch.randn(2, 1 + 9, 32)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    pooled = model._node_relu_sum(memory, mask)
    lin = model.node_pool[0]
    by_hand = torch.relu(memory[1, 1:7] @ lin.weight.T + lin.bias).sum(0) / 64.0   # depth token and padding out
    torch.testing.assert_close(pooled[1], by_hand)
    depth, nodes, static = torch.randn(2, 192), torch.randn(2, 9, 480), torch.randn(2, 4)
    with torch.no_grad():
        together = model(depth, nodes, mask, static)
        short = model(depth[1:], nodes[1:, :6], None, static[1:])
    torch.testing.assert_close(together[1], short[0], atol=1e-5, rtol=1e-5)


def test_padding_tokens_do_not_change_the_prediction():
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    cells = nb101_cells()
    padded = tokenize_graphs(cells)
    assert not padded.mask.all()
    with torch.no_grad():
        together = model(*tensors(padded))
        for i, g in enumerate(cells):
            alone = model(*tensors(tokenize_graphs([g])))
            torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=1e-5)
        # Without the mask the zero padding is attended to and the short cells' predictions move:
        # the equality above is the mask's doing.
        unmasked = model(torch.from_numpy(padded.depth), torch.from_numpy(padded.nodes))
    assert (unmasked - together).abs()[[0, 2]].max() > 1e-4
    torch.testing.assert_close(unmasked[1], together[1])   # the longest cell has no padding


def test_padding_invariance_holds_for_arbitrary_padding_content():
    torch.manual_seed(1)
    model = build_model(TINY).eval()
    tk = tokenize_graphs(nb101_cells())
    depth, nodes, mask = tensors(tk)
    noisy = nodes.clone()
    noisy[~mask] = torch.randn(int((~mask).sum()), nodes.shape[-1]) * 10
    with torch.no_grad():
        torch.testing.assert_close(model(depth, nodes, mask), model(depth, noisy, mask))


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    model = build_model(dict(TINY, dropout=0.5))
    depth, nodes, mask = tensors(nb201_batch(4))
    model.train()
    a, b = model(depth, nodes, mask), model(depth, nodes, mask)
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(depth, nodes, mask), model(depth, nodes, mask))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = build_model(TINY)
    depth, nodes, mask = tensors(tokenize_graphs(nb101_cells()))
    model(depth, nodes, mask).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("kw, message", [
    (dict(depths=(6, 1, 1)), "depths needs one entry for stage 1 and one per fusion stage"),
    (dict(d_model=100, n_heads=6), "d_model 100 is not divisible by n_heads 6"),
    (dict(queries=(4, 2, 2)), "last fusion stage must leave exactly one token"),
    (dict(head="energy"), "unknown head 'energy'"),
    (dict(head="latency", readout="mean"), "unknown readout 'mean'"),
    (dict(readout="token+sum"), "sum readout is for the latency head only"),
    (dict(readout="relusum"), "sum readout is for the latency head only"),
])
def test_config_validation(kw, message):
    with pytest.raises(ValueError, match=message):
        NARFormerConfig(**kw)


def test_config_to_dict_round_trip():
    cfg = NARFormerConfig(**TINY)
    d = cfg.to_dict()
    assert d["depths"] == [1, 1, 1, 1] and d["queries"] == [4, 2, 1]
    assert NARFormerConfig(**d) == cfg
    assert build_model(d).cfg == cfg


def test_cheap_dropout_keeps_the_expected_fraction_and_the_mean():
    from narformer_core.model import dropout

    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = dropout(x, 0.1, True)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.9) < 0.005                        # 1 - p, up to sampling noise
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))
    assert abs(y.mean().item() - 1.0) < 0.01              # inverted dropout keeps the expectation
    assert dropout(x, 0.1, False) is x and dropout(x, 0.0, True) is x
    assert (dropout(x, 1.0, True) == 0).all()
    # An odd element count (not a multiple of the four draws per random word) and any shape.
    z = dropout(torch.ones(3, 5, 7), 0.5, True)
    assert z.shape == (3, 5, 7) and set(z.unique().tolist()) <= {0.0, 2.0}


def test_cheap_dropout_is_seeded_and_masks_the_gradient():
    from narformer_core.model import dropout

    x = torch.randn(4, 33, requires_grad=True)
    torch.manual_seed(5)
    a = dropout(x, 0.3, True)
    torch.manual_seed(5)
    b = dropout(x, 0.3, True)
    torch.testing.assert_close(a, b)                      # the global torch seed fixes the mask
    a.sum().backward()
    dropped = a.detach() == 0
    assert dropped.any() and (~dropped).any()
    assert (x.grad[dropped] == 0).all()
    torch.testing.assert_close(x.grad[~dropped], torch.full_like(x.grad[~dropped], 1 / 0.7))


def test_written_out_training_attention_matches_the_fused_kernel_without_dropout():
    # With dropout 0 the training path uses the fused kernel; with dropout > 0 on the CPU it uses
    # the written-out one. Draw no masks (p tiny would still draw): compare the two directly.
    from narformer_core.model import Attention

    torch.manual_seed(0)
    att = Attention(16, 4, dropout=0.0)
    x, ctx = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 5:] = False
    fused = att(x, ctx, mask)
    att.dropout = 1e-9                                    # selects the written-out path
    written = att.train()(x, ctx, mask)
    torch.testing.assert_close(written, fused, atol=1e-5, rtol=1e-5)


def test_attention_under_bf16_autocast_is_written_out_and_close_to_float32():
    from narformer_core.model import Attention

    torch.manual_seed(0)
    att = Attention(16, 4, dropout=0.0).eval()
    x, ctx = torch.randn(3, 5, 16), torch.randn(3, 7, 16)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    with torch.no_grad():
        fp32 = att(x, ctx, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = att(x, ctx, mask)
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), fp32, atol=0.03, rtol=0.03)


def _tiny_latency_model(**options) -> NARFormer:
    """A small network-latency NAR-Former in eval mode, its head scaled to outputs of order one."""
    from narformer_core.latency.train_latency import init_latency_head

    torch.manual_seed(0)
    cfg = NARFormerConfig(token_dim=480, depth_dim=192, head="latency", static_dim=4, head_hidden=64,
                          **options, **TINY)
    model = NARFormer(cfg).eval()
    init_latency_head(model)                           # outputs of order one, not 1e-7
    return model


def test_graph_bias_starts_as_the_plain_model_and_reads_the_relations():
    import dataclasses

    biased = _tiny_latency_model(graph_bias=True)
    plain = NARFormer(dataclasses.replace(biased.cfg, graph_bias=False)).eval()
    plain.load_state_dict({k: v for k, v in biased.state_dict().items() if not k.startswith("relation_bias")})
    depth, nodes, static = torch.randn(2, 192), torch.randn(2, 6, 480), torch.randn(2, 4)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    rel = torch.zeros(2, 6, 6, dtype=torch.uint8)
    rel[:, 1, 0], rel[:, 0, 1] = 1, 2                  # token 0 feeds token 1
    rel[:, torch.arange(6), torch.arange(6)] = 3
    with torch.no_grad():
        # zero biases: the plain model's attention, padding still masked out
        torch.testing.assert_close(biased(depth, nodes, mask, static, rel), plain(depth, nodes, mask, static))
        biased.relation_bias[0].weight[1] = 3.0        # attend hard to one's sources
        moved = biased(depth, nodes, mask, static, rel)
        other = rel.clone()
        other[:, 1, 0], other[:, 0, 1] = 0, 0          # the same tokens without the edge
        # (small-weight init: attention moves the output a little, but the same inputs give
        # bit-identical outputs, so any difference is the edge's doing)
        assert torch.equal(moved, biased(depth, nodes, mask, static, rel))
        assert (moved - biased(depth, nodes, mask, static, other)).abs().max() > 1e-6
        short = biased(depth[1:], nodes[1:, :4], None, static[1:], rel[1:, :4, :4])
    torch.testing.assert_close(moved[1], short[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="needs the relation matrix"):
        biased(depth, nodes, mask, static)
    with pytest.raises(ValueError, match="neither graph_bias nor graph_ffn"):
        plain(depth, nodes, mask, static, rel)
    with pytest.raises(ValueError, match="relation matrix of shape"):
        biased(depth, nodes, mask, static, rel[:, :5, :5])


def test_graph_ffn_mixes_the_means_of_sources_and_consumers():
    model = _tiny_latency_model(graph_ffn=True)
    assert model.encoder[0].ffn[0].in_features == 3 * model.cfg.d_model
    T = 5
    rel = torch.zeros(1, T, T, dtype=torch.uint8)
    rel[0, torch.arange(T), torch.arange(T)] = 3
    for j, i in ((0, 2), (1, 2), (2, 3)):              # tokens 0 and 1 feed 2, which feeds 3
        rel[0, i, j], rel[0, j, i] = 1, 2
    full = model._relations(rel, T + 1)                # the depth token prepended
    from_src, from_cons = NARFormer._neighbours(full, torch.float32)
    x = torch.randn(1, T + 1, 7)
    # token 2 (row 3 with the depth token first) reads the mean of tokens 0 and 1
    torch.testing.assert_close((from_src @ x)[0, 3], (x[0, 1] + x[0, 2]) / 2)
    torch.testing.assert_close((from_cons @ x)[0, 3], x[0, 4])
    assert (from_src[0, 0] == 0).all() and (from_src[0, 1] == 0).all()   # depth token, a first operator
    depth, nodes, static = torch.randn(1, 192), torch.randn(1, T, 480), torch.randn(1, 4)
    with torch.no_grad():
        out = model(depth, nodes, None, static, rel)
        cut = rel.clone()
        cut[0, 3, 2] = cut[0, 2, 3] = 0                # the same tokens without the edge 2 -> 3
        # the same inputs give bit-identical outputs, so any difference is the edge's doing
        assert torch.equal(out, model(depth, nodes, None, static, rel))
        assert (out - model(depth, nodes, None, static, cut)).abs().max() > 1e-6
    with pytest.raises(ValueError, match="needs the relation matrix"):
        model(depth, nodes, None, static)


def test_slot_dropout_zeroes_whole_slots_in_training_only():
    torch.manual_seed(0)
    cfg = NARFormerConfig(token_dim=480 + 7, depth_dim=192, head="latency", head_hidden=64,
                          slot_dropout=0.5, **TINY)
    model = NARFormer(cfg)
    nodes = torch.randn(3, 20, 480 + 7)
    dropped = model._drop_slots(nodes)
    slots = dropped[..., :480].reshape(3, 20, 15, 32)
    zero = (slots == 0).all(-1)
    kept = (slots == nodes[..., :480].reshape(3, 20, 15, 32)).all(-1)
    assert (zero | kept).all()                         # a slot is dropped whole or kept whole
    assert 0.35 < zero.float().mean() < 0.65
    torch.testing.assert_close(dropped[..., 480:], nodes[..., 480:])   # plain numbers never dropped
    model.eval()
    assert torch.equal(model._drop_slots(nodes), nodes)
    depth = torch.randn(3, 192)
    with torch.no_grad():
        torch.testing.assert_close(model(depth, nodes), model(depth, nodes))
    with pytest.raises(ValueError, match="slot_dropout"):
        NARFormerConfig(slot_dropout=1.0)
    with pytest.raises(ValueError, match="do not fit"):
        NARFormerConfig(token_dim=192, slot_dropout=0.1)


def test_graph_bias_can_start_local():
    from narformer_core.model import RELATIONS

    cfg = NARFormerConfig(token_dim=480, depth_dim=192, head="latency", head_hidden=64, graph_bias=True,
                          graph_bias_none_init=-4.0, **TINY)
    w = NARFormer(cfg).relation_bias[0].weight
    assert (w[RELATIONS.index("none")] == -4.0).all()
    assert (w[RELATIONS.index("source")] == 0).all() and (w[RELATIONS.index("self")] == 0).all()
