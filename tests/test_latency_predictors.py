"""The latency predictors on a small real set: tiny torch conv nets, timed with onnxruntime."""
import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from narformer_core.latency.measure import measure_onnx
from narformer_core.latency.predictors import (NODE_ALIGN_DIM, NODE_RAW_DIM, NODE_RAW_NUMBERS,
                                               LatencyCheckpointError, NARFormerLatency, gnn_node_features,
                                               load_predictor, make_predictor, node_align_features,
                                               node_raw_features, static_log_features)
from narformer_core.metrics import mape
from narformer_core.onnx_import import from_torch

TINY_NAR = {"model": {"d_model": 32, "n_heads": 2, "ffn_dim": 64, "depths": (1, 1, 1, 1), "head_hidden": 64,
                      "dropout": 0.0},
            "train": {"epochs": 40, "batch_size": 8, "lr": 2e-3, "eval_every": 4}}
TINY_NNLP = {"width": 64, "head_hidden": 64, "epochs": 60, "batch_size": 8, "lr": 3e-3, "eval_every": 4}


def conv_net(width: int, depth: int, kernel: int) -> nn.Module:
    layers, c = [], 3
    for _ in range(depth):
        layers += [nn.Conv2d(c, width, kernel, padding=kernel // 2), nn.ReLU()]
        c = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)).eval()


@pytest.fixture(scope="module")
def measured():
    """18 networks whose MACs span ~100x, each exported, imported and timed (median of 15 runs)."""
    torch.manual_seed(0)
    graphs, ms = [], []
    for width in (8, 24, 48):
        for depth in (1, 3):
            for kernel in (1, 3, 5):
                net = conv_net(width, depth, kernel)
                x = torch.zeros(1, 3, 24, 24)
                g = from_torch(net, x)
                buf = io.BytesIO()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    torch.onnx.export(net, (x,), buf, dynamo=False)
                ms.append(measure_onnx(buf.getvalue(), warmup=2, repeats=15).median_ms)
                graphs.append(g)
    return graphs, np.array(ms)


def constant_mape(y):
    return mape(np.full_like(y, np.exp(np.log(y).mean())), y)


@pytest.mark.parametrize("kind,opts", [("flops", {}), ("nnlp", TINY_NNLP),
                                       ("narformer", TINY_NAR), ("opcost", {})])
def test_fit_beats_constant_and_round_trips(kind, opts, measured, tmp_path):
    graphs, y = measured
    p = make_predictor(kind, **opts).fit(graphs, y, seed=0)
    pred = p.predict(graphs)
    assert pred.shape == y.shape and np.all(np.isfinite(pred)) and np.all(pred > 0)
    assert mape(pred, y) < constant_mape(y), f"{kind} does not beat a constant on its training data"
    path = p.save(tmp_path / f"{kind}.pt")
    q = load_predictor(path)
    assert q.kind == kind and type(q) is type(p)
    np.testing.assert_allclose(q.predict(graphs), pred, rtol=1e-5)


def test_graph_network_ensemble_averages_members_and_round_trips(measured, tmp_path):
    graphs, y = measured
    opts = {**TINY_NNLP, "epochs": 8}
    single = make_predictor("nnlp", **opts).fit(graphs, y, seed=0)
    pair = make_predictor("nnlp", **opts, members=2).fit(graphs, y, seed=0)
    assert pair.meta["members"] == 2 and len(pair.meta["member_val_mape"]) == 2
    assert pair.meta["member_val_mape"][0] == pytest.approx(single.meta["val_mape"])
    # Member 0 is the single fit; the ensemble is the geometric mean of both members.
    z = [np.log(np.exp(m._predict_z(n, graphs) * m.y_sd + m.y_mu)) for m, n in ((pair, pair.nets[0]), (pair, pair.nets[1]))]
    np.testing.assert_allclose(np.exp(z[0]), single.predict(graphs), rtol=1e-5)
    np.testing.assert_allclose(pair.predict(graphs), np.exp((z[0] + z[1]) / 2), rtol=1e-5)
    q = load_predictor(pair.save(tmp_path / "pair.pt"))
    assert len(q.nets) == 2
    np.testing.assert_allclose(q.predict(graphs), pair.predict(graphs), rtol=1e-5)
    with pytest.raises(ValueError, match="members"):
        make_predictor("nnlp", **opts, members=0).fit(graphs, y, seed=0)


def test_narformer_targets_and_validation_set(measured):
    graphs, y = measured
    for target in ("residual", "ms"):
        p = NARFormerLatency(model=TINY_NAR["model"], train={**TINY_NAR["train"], "epochs": 4, "target": target})
        p.fit(graphs[:14], y[:14], val=(graphs[14:], y[14:]), seed=1)
        assert p.meta["n_val"] == 4 and p.meta["n_train"] == 14
        out = p.predict(graphs)
        assert np.all(np.isfinite(out)) and np.all(out > 0)
    assert p.model_config().static_dim == 128 + 4
    assert NARFormerLatency(static_raw=False).model_config().static_dim == 128


def test_static_codes_can_be_left_out_of_the_head(measured, tmp_path):
    graphs, y = measured
    p = NARFormerLatency(static_codes=False, **TINY_NAR).fit(graphs, y, seed=0)
    assert p.model_config().static_dim == 4                        # the four standardised log features only
    assert p._tokens(graphs[:3]).static.shape == (3, 4)
    q = load_predictor(p.save(tmp_path / "nocodes.pt"))
    assert not q.static_codes
    np.testing.assert_allclose(q.predict(graphs), p.predict(graphs), rtol=1e-5)
    with pytest.raises(ValueError, match="static_codes=False needs static_raw=True"):
        NARFormerLatency(static_codes=False, static_raw=False)


def test_narformer_token_scheme_and_sum_readout_round_trip(measured, tmp_path):
    graphs, y = measured
    p = NARFormerLatency(model={**TINY_NAR["model"], "readout": "token+sum"},
                         train={**TINY_NAR["train"], "epochs": 4}, scheme="trans").fit(graphs, y, seed=0)
    q = load_predictor(p.save(tmp_path / "trans.pt"))
    assert q.scheme == "trans" and q.model_config().readout == "token+sum"
    np.testing.assert_allclose(q.predict(graphs), p.predict(graphs), rtol=1e-5)
    # The scheme belongs to the model: the same weights read "nerf" tokens differently.
    q.scheme = "nerf"
    assert not np.allclose(q.predict(graphs), p.predict(graphs), rtol=1e-3)
    with pytest.raises(ValueError, match="unknown token scheme 'fourier'"):
        NARFormerLatency(scheme="fourier")


def test_narformer_relu_sum_readout_round_trip(measured, tmp_path):
    graphs, y = measured
    p = NARFormerLatency(model={**TINY_NAR["model"], "readout": "relusum"},
                         train={**TINY_NAR["train"], "epochs": 4}).fit(graphs, y, seed=0)
    q = load_predictor(p.save(tmp_path / "relusum.pt"))
    assert q.model_config().readout == "relusum" and len(q.net.stages) == 0
    np.testing.assert_allclose(q.predict(graphs), p.predict(graphs), rtol=1e-5)


def test_features_shapes(measured):
    graphs, _ = measured
    s = static_log_features(graphs[:3])
    assert s.shape == (3, 4) and np.all(s[:, 1] > 0)
    x, e = gnn_node_features(graphs[4])
    assert x.shape[0] == len(graphs[4]) and e.shape[0] == 2 and e.max() < len(graphs[4])
    assert np.all(x[:, :-24].sum(1) >= 1)        # every node has its op one-hot set


def test_bad_inputs(measured, tmp_path):
    graphs, y = measured
    with pytest.raises(ValueError, match="latencies"):
        make_predictor("flops").fit(graphs, -y)
    with pytest.raises(ValueError, match="latencies for"):
        make_predictor("flops").fit(graphs, y[:3])
    with pytest.raises(ValueError, match="unknown latency predictor"):
        make_predictor("xgboost")
    with pytest.raises(ValueError, match="not fitted"):
        make_predictor("flops").predict(graphs)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(LatencyCheckpointError, match="not a loadable"):
        load_predictor(junk)
    other = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, other)
    with pytest.raises(LatencyCheckpointError, match="not a latency predictor"):
        load_predictor(other)
    with pytest.raises(LatencyCheckpointError, match="no latency checkpoint"):
        load_predictor(tmp_path / "missing.pt")


def test_splits_batches_and_targets():
    from narformer_core.latency.train_latency import (LatencyTarget, family_split, length_batches,
                                                      nb201_device_split)

    fams = ["a"] * 20 + ["b"] * 9 + ["c"] * 1
    tr, te = family_split(fams, seed=0)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 30
    assert [int(np.sum(np.asarray(fams)[te] == f)) for f in "abc"] == [2, 1, 0]
    lengths = np.random.default_rng(0).integers(5, 300, 100)
    batches = length_batches(lengths, 8, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(100))
    # chunk 1: every batch a random draw, so its lengths spread much wider than in sorted runs
    spread = lambda bs: np.mean([np.ptp(lengths[b]) for b in bs])  # noqa: E731
    random_batches = length_batches(lengths, 8, np.random.default_rng(1), chunk=1)
    assert sorted(np.concatenate(random_batches).tolist()) == list(range(100))
    assert spread(random_batches) > 3 * spread(batches)
    with pytest.raises(ValueError, match="length_chunk"):
        from narformer_core.latency.train_latency import LatencyTrainConfig
        LatencyTrainConfig(length_chunk=0)
    known = np.ones(2000, bool)
    a, b, c = nb201_device_split(known, 0.05, seed=0)
    assert (len(a), len(b), len(c)) == (100, 200, 1700) and not set(a) & set(b) | set(a) & set(c)
    ms = np.array([0.5, 2.0, 30.0, 400.0])
    for kind in ("log", "ms", "residual"):
        off = np.log(ms) * 0.9 if kind == "residual" else None
        t = LatencyTarget.fit(kind, ms, off)
        t2 = LatencyTarget.from_state(t.state())
        np.testing.assert_allclose(t2.inverse(t.forward(ms, off), off), ms, rtol=1e-9)


def test_nb201_device_run_tiny():
    from narformer_core.data import DataUnavailable
    from narformer_core.latency.train_latency import nb201_device_run

    tiny = {"d_model": 16, "n_heads": 2, "ffn_dim": 32, "depths": (1, 1, 1, 1), "head_hidden": 32}
    try:
        r = nb201_device_run("gold_6226", 0.05, model=tiny, train={"epochs": 2, "eval_every": 1})
    except DataUnavailable:
        pytest.skip("shared NB201 latency tables not available")
    assert r["n_train"] == 781 and r["n_val"] == 200 and r["n_test"] == 15625 - 981
    assert 0 <= r["mape"] < 100 and 0 <= r["acc10"] <= 100 and -1 <= r["kendall_tau"] <= 1


class Branches(nn.Module):
    """Three parallel convolutions concatenated: a network with many topological orders."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (nn.Conv2d(3, 8, k, padding=k // 2) for k in (1, 3, 5))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x).relu(), self.c(x)], dim=1))


def test_renumbered_twins_change_the_numbering_not_the_network():
    from narformer_core.latency.predictors import renumbered_twins
    from narformer_core.network_tokenizer import tokenize_network

    g = from_torch(Branches().eval(), torch.zeros(1, 3, 16, 16))
    graphs, y = renumbered_twins([g], np.array([2.5]), 4, seed=0)
    assert len(graphs) == 5 and y.tolist() == [2.5] * 5 and graphs[0] is g
    assert len({t.stable_hash() for t in graphs}) > 1                  # some twin is numbered differently
    for t in graphs[1:]:
        assert sorted(t.ops) == sorted(g.ops)
        np.testing.assert_allclose(static_log_features([t]), static_log_features([g]))
    changed = next(t for t in graphs[1:] if t.stable_hash() != g.stable_hash())
    assert not np.array_equal(tokenize_network(changed).nodes, tokenize_network(g).nodes)


def test_narformer_fit_with_twins_keeps_its_counts(measured):
    graphs, y = measured
    p = NARFormerLatency(model=TINY_NAR["model"], train={**TINY_NAR["train"], "epochs": 2, "twins": 1})
    p.fit(graphs[:14], y[:14], val=(graphs[14:], y[14:]), seed=0)
    assert p.meta["n_train"] == 14 and p.meta["twins"] == 1
    assert np.all(np.isfinite(p.predict(graphs)))


def test_node_raw_features_carry_each_operators_numbers(measured):
    g = measured[0][5]                              # width 8, depth 1, kernel 5
    f = node_raw_features(g)
    assert f.shape == (len(g), NODE_RAW_DIM)
    conv = [i for i, n in enumerate(g.nodes) if n.op == "Conv"][0]
    flags = f[:, NODE_RAW_NUMBERS:]
    assert f[conv, 0] == 5 and flags[conv, 0] == 1  # kernel, present
    relu = [i for i, n in enumerate(g.nodes) if n.op == "Relu"][0]
    assert flags[relu, 0] == 0 and f[relu, 0] == 0  # a Relu has no kernel
    # its own MACs: 8 output channels x 24 x 24 x (3 x 5 x 5)
    assert np.isclose(f[conv, 12], np.log1p(8 * 24 * 24 * 3 * 25))


def test_node_align_features_flag_channels_off_the_simd_blocks(measured):
    graphs, _ = measured
    by_width = {}
    for g in graphs:
        conv = [i for i, n in enumerate(g.nodes) if n.op == "Conv"]
        by_width[g.nodes[conv[0]].shape[1]] = (g, conv)
    g8, conv = by_width[8]
    f = node_align_features(g8)
    assert f.shape == (len(g8), NODE_ALIGN_DIM)
    # 8 output channels: a whole block of 8, half a block of 16; its input (the 3-channel image)
    # fills neither.
    assert f[conv[0]].tolist() == [1, 0, 1, 1, 1]
    g24, conv = by_width[24]
    assert node_align_features(g24)[conv[0], :3].tolist() == [1, 0, 1]
    g48, conv = by_width[48]
    assert node_align_features(g48)[conv[0], :3].tolist() == [1, 0, 0]
    # Operators without a 4-D output (the classifier's Gemm) have no flags.
    gemm = [i for i, n in enumerate(g48.nodes) if n.op == "Gemm"][0]
    assert node_align_features(g48)[gemm, :3].tolist() == [0, 0, 0]


def test_narformer_node_align_round_trip(measured, tmp_path):
    graphs, y = measured
    p = NARFormerLatency(model=TINY_NAR["model"], train={**TINY_NAR["train"], "epochs": 3},
                         node_raw=True, node_align=True).fit(graphs, y, seed=0)
    assert p.model_config().token_dim == 480 + NODE_RAW_DIM + NODE_ALIGN_DIM and p.meta["node_align"]
    toks = p._tokens(graphs[:2])
    assert toks.width == 480 + NODE_RAW_DIM + NODE_ALIGN_DIM
    q = load_predictor(p.save(tmp_path / "align.pt"))
    assert q.node_align and q.node_raw
    np.testing.assert_allclose(q.predict(graphs), p.predict(graphs), rtol=1e-5)
    # Checkpoints from before the option load with it off.
    st = torch.load(tmp_path / "align.pt", weights_only=True)
    assert st["config"]["node_align"] is True


def test_narformer_node_raw_and_bf16_round_trip(measured, tmp_path):
    graphs, y = measured
    p = NARFormerLatency(model=TINY_NAR["model"], train={**TINY_NAR["train"], "epochs": 4, "precision": "bf16"},
                         node_raw=True).fit(graphs, y, seed=0)
    assert p.model_config().token_dim == 480 + NODE_RAW_DIM and p.meta["node_raw"]
    assert p.summary["precision"] == "bf16"
    q = load_predictor(p.save(tmp_path / "raw.pt"))
    assert q.node_raw and q.node_mu.shape == (NODE_RAW_NUMBERS,)
    np.testing.assert_allclose(q.predict(graphs), p.predict(graphs), rtol=1e-5)
    # The appended numbers reach the model, standardised: the Conv's kernel column is (5 - mu) / sd.
    toks = q._tokens(graphs[5:6])
    conv = [i for i, n in enumerate(graphs[5].nodes) if n.op == "Conv"][0]
    assert toks.width == 480 + NODE_RAW_DIM
    assert np.isclose(toks.flat[conv, 480], (5 - q.node_mu[0]) / q.node_sd[0], atol=2e-3)
    q.node_mu = q.node_mu + 1.0
    assert not np.array_equal(q.predict(graphs), p.predict(graphs))
    # A checkpoint without the statistics is refused with a sentence.
    st = torch.load(tmp_path / "raw.pt", weights_only=True)
    del st["arrays"]["node_mu"]
    torch.save(st, tmp_path / "broken.pt")
    with pytest.raises(LatencyCheckpointError, match="node_mu"):
        load_predictor(tmp_path / "broken.pt")


def test_cost_sum_readout_ignores_padding_and_round_trips(measured, tmp_path):
    from narformer_core.model import NARFormer, NARFormerConfig

    cfg = NARFormerConfig(token_dim=16, depth_dim=16, d_model=16, n_heads=2, ffn_dim=32, depths=(1, 1, 1, 1),
                          head="latency", readout="token+lse", head_hidden=32)
    torch.manual_seed(0)
    m = NARFormer(cfg).eval()
    d, n = torch.randn(1, 16), torch.randn(1, 5, 16)
    padded = torch.cat([n, torch.randn(1, 3, 16)], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    assert torch.allclose(m(d, n), m(d, padded, mask), atol=1e-5)
    graphs, y = measured
    p = NARFormerLatency(model={**TINY_NAR["model"], "readout": "token+lse"},
                         train={**TINY_NAR["train"], "epochs": 4, "target": "log"}).fit(graphs, y, seed=0)
    assert p.net.cost_sd.item() == pytest.approx(p.target.sd)     # the trainer set the target's scale
    q = load_predictor(p.save(tmp_path / "lse.pt"))
    np.testing.assert_allclose(q.predict(graphs), p.predict(graphs), rtol=1e-5)
    with pytest.raises(ValueError, match="log space"):
        NARFormerLatency(model={**TINY_NAR["model"], "readout": "token+lse"},
                         train={**TINY_NAR["train"], "epochs": 1, "target": "ms"}).fit(graphs, y, seed=0)


def test_narformer_members_average_and_round_trip(measured, tmp_path):
    graphs, y = measured
    opts = dict(model=TINY_NAR["model"], train={**TINY_NAR["train"], "epochs": 3})
    single = NARFormerLatency(**opts).fit(graphs, y, seed=0)
    pair = NARFormerLatency(**opts, members=2).fit(graphs, y, seed=0)
    assert pair.meta["members"] == 2 and len(pair.meta["member_val_mape"]) == 2
    # member 0 is the single fit; the pair's prediction is the mean of its members' log outputs
    assert pair.meta["member_val_mape"][0] == pytest.approx(single.meta["val_mape"])
    q = load_predictor(pair.save(tmp_path / "pair.pt"))
    assert q.members == 2
    np.testing.assert_allclose(q.predict(graphs), pair.predict(graphs), rtol=1e-5)
    assert not np.allclose(pair.predict(graphs), single.predict(graphs), rtol=1e-4)
    # Each member's own prediction: member 0 is the single network; the ensemble is their geometric mean.
    each = q.member_predictions(graphs)
    assert each.shape == (2, len(graphs))
    np.testing.assert_allclose(each[0], single.predict(graphs), rtol=1e-5)
    np.testing.assert_allclose(np.exp(np.log(each).mean(0)), q.predict(graphs), rtol=1e-5)
    assert single.member_predictions(graphs[:3]).shape == (1, 3)
    st = torch.load(tmp_path / "pair.pt", weights_only=True)
    st["config"]["members"] = 3
    torch.save(st, tmp_path / "lying.pt")
    with pytest.raises(LatencyCheckpointError, match="names 3 members but holds 2"):
        load_predictor(tmp_path / "lying.pt")
    with pytest.raises(ValueError, match="at least 1"):
        NARFormerLatency(members=0)


def test_graph_bias_relations_follow_the_edges_and_round_trip(measured, tmp_path):
    from narformer_core.latency.predictors import graph_edges

    graphs, y = measured
    g = graphs[5]
    e = graph_edges(g)
    assert e.shape[0] == 2 and all(j in g.nodes[i].inputs for j, i in e.T)
    p = NARFormerLatency(model={**TINY_NAR["model"], "graph_bias": True},
                         train={**TINY_NAR["train"], "epochs": 3}).fit(graphs, y, seed=0)
    toks = p._tokens([g])
    *_, rel = toks.batch(np.array([0]), "cpu")
    rel = rel[0].numpy()
    n = len(g)
    assert rel.shape == (n + 1, n + 1)                 # the operators and the end token
    for j, i in e.T:
        assert rel[i, j] == 1 and rel[j, i] == 2       # i reads j; j is read by i
    assert (np.diag(rel) == 3).all()
    assert (rel[n, :n] == 0).all()                     # the end token is no operator's neighbour
    assert (rel == 1).sum() == e.shape[1]
    # training moved the biases off zero, and a saved predictor predicts the same
    assert any(b.weight.abs().max() > 0 for b in p.net.relation_bias)
    q = load_predictor(p.save(tmp_path / "gb.pt"))
    assert q.model_config().graph_bias
    np.testing.assert_allclose(q.predict(graphs), p.predict(graphs), rtol=1e-5)


def test_graph_ffn_predictor_gets_the_edges_and_round_trips(measured, tmp_path):
    graphs, y = measured
    p = NARFormerLatency(model={**TINY_NAR["model"], "graph_ffn": True},
                         train={**TINY_NAR["train"], "epochs": 2}).fit(graphs, y, seed=0)
    *_, rel = p._tokens(graphs[:2]).batch(np.array([0, 1]), "cpu")
    assert rel is not None and (rel == 1).any()
    q = load_predictor(p.save(tmp_path / "gffn.pt"))
    assert q.model_config().graph_ffn and not q.model_config().graph_bias
    np.testing.assert_allclose(q.predict(graphs), p.predict(graphs), rtol=1e-5)


def test_op_dropout_recodes_whole_types_but_never_the_input_or_end_token():
    from narformer_core.latency.train_latency import OpDropout
    from narformer_core.network_tokenizer import INPUT_ID, OP_IDS, unknown_op_code

    code = unknown_op_code()
    conv, relu = OP_IDS["Conv"], OP_IDS["Relu"]
    ids = np.array([INPUT_ID, conv, relu, conv, relu, -1])
    tokens = np.random.default_rng(0).normal(size=(len(ids), 480)).astype(np.float32)
    always = OpDropout(0.999999, code, np.random.default_rng(0), keep=(INPUT_ID,))
    t = tokens.copy()
    always.apply(t, ids)
    hit = np.isin(ids, [conv, relu])
    assert np.all(t[hit, :32] == code) and np.array_equal(t[hit, 32:], tokens[hit, 32:])
    assert np.array_equal(t[~hit], tokens[~hit])          # the input and the end token keep theirs
    # at p = 0.5 a type is recoded in all of its nodes or in none
    half = OpDropout(0.5, code, np.random.default_rng(1), keep=(INPUT_ID,))
    seen = set()
    for _ in range(40):
        t = tokens.copy()
        half.apply(t, ids)
        recoded = np.all(t[:, :32] == code, axis=1)
        assert recoded[1] == recoded[3] and recoded[2] == recoded[4] and not recoded[0] and not recoded[5]
        seen.add((bool(recoded[1]), bool(recoded[2])))
    assert len(seen) == 4
    with pytest.raises(ValueError, match="probability"):
        from narformer_core.latency.train_latency import LatencyTrainConfig
        LatencyTrainConfig(op_dropout=1.0)


def test_unknown_operator_training_maps_unseen_types_and_round_trips(measured, tmp_path):
    """A model trained with op_dropout shows operator types its training networks never had under
    the "unknown" code; one trained without it leaves their own codes (it never learned the other)."""
    graphs, y = measured
    opts = dict(model=TINY_NAR["model"], train={**TINY_NAR["train"], "epochs": 4, "op_dropout": 0.2})
    p = NARFormerLatency(**opts).fit(graphs, y, seed=0)
    assert "Conv" in p.known_ops and "Relu" in p.known_ops and "input" not in p.known_ops
    assert p.maps_unseen_ops and p.unseen_ops(graphs[0]) == []
    # Pretend the training set lacked Relu: its nodes now reach the model as "unknown".
    p.known_ops = [op for op in p.known_ops if op != "Relu"]
    assert p.unseen_ops(graphs[3]) == ["Relu"]
    tk = p._tokens(graphs[3:4])
    ids = tk.op_ids[0]
    from narformer_core.network_tokenizer import OP_IDS, unknown_op_code
    row = tk.flat[: tk.lengths[0]]
    relu = ids == OP_IDS["Relu"]
    assert relu.any()
    np.testing.assert_allclose(row[relu, :32], np.tile(unknown_op_code(), (relu.sum(), 1)), atol=1e-3)
    assert not np.allclose(row[~relu & (ids >= 0), :32], unknown_op_code(), atol=1e-3)
    q = load_predictor(p.save(tmp_path / "unk.pt"))
    assert q.known_ops == p.known_ops and q.maps_unseen_ops
    np.testing.assert_allclose(q.predict(graphs), p.predict(graphs), rtol=1e-5)
    # Without op_dropout the known types are recorded (for the warning) but nothing is recoded.
    plain = NARFormerLatency(model=TINY_NAR["model"], train={**TINY_NAR["train"], "epochs": 2}).fit(graphs, y, seed=0)
    plain.known_ops = ["Conv"]
    assert not plain.maps_unseen_ops
    assert plain.unseen_ops(graphs[3]) == sorted({n.op for n in graphs[3].nodes} - {"input", "Conv"})
    assert "Relu" in plain.unseen_ops(graphs[3])
    tk = plain._tokens(graphs[3:4])
    assert not np.allclose(tk.flat[: tk.lengths[0]][relu, :32], unknown_op_code(), atol=1e-3)
    st = torch.load(tmp_path / "unk.pt", weights_only=True)
    st["config"]["known_ops"] = "Conv"
    torch.save(st, tmp_path / "bad.pt")
    with pytest.raises(LatencyCheckpointError, match="known_ops"):
        load_predictor(tmp_path / "bad.pt")
