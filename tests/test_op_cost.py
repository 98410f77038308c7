"""The operator-cost sum (latency/op_cost.py): operator kinds, exact recovery of known costs,
fit on real timings, the NAR-Former residual from it, and checkpoint round trips."""
import numpy as np
import pytest
import torch

from narformer_core.graph import ArchGraph, Node
from narformer_core.latency.op_cost import (_SCALE, COST_TERMS, OperatorCostModel, channel_block_suffix,
                                            operator_category, operator_cost_terms, operator_kind)
from narformer_core.latency.predictors import LatencyCheckpointError, NARFormerLatency, load_predictor
from narformer_core.metrics import mape
from tests.test_latency_predictors import TINY_NAR, constant_mape, measured  # noqa: F401 (fixture)


def conv(kernel, group=1):
    return Node("Conv", (0,), {"kernel_shape": kernel, "group": group})


def test_convolutions_are_split_by_kernel_and_grouping():
    assert operator_kind(conv((1, 1))) == "Conv/1x1"
    assert operator_kind(conv((3, 3))) == "Conv/3x3"
    assert operator_kind(conv((7, 7))) == "Conv/other"
    assert operator_kind(conv((3, 3), group=32)) == "Conv/grouped"
    assert operator_kind(Node("Relu", (0,))) == "Relu"


def test_channel_blocks_split_kinds_by_the_worse_of_input_and_output(measured):
    def net(c_in, c_out):
        return ArchGraph([Node("input", (), {}, (1, c_in, 8, 8)),
                          Node("Conv", (0,), {"kernel_shape": (3, 3)}, (1, c_out, 8, 8)),
                          Node("Relu", (1,), {}, (1, c_out, 8, 8)),
                          Node("Flatten", (2,), {}, (1, c_out * 64))])
    assert channel_block_suffix(net(32, 48), net(32, 48).nodes[1]) == ""
    assert channel_block_suffix(net(32, 24), net(32, 24).nodes[1]) == "/c8"
    assert channel_block_suffix(net(3, 32), net(3, 32).nodes[1]) == "/c1"     # the image's 3 channels
    g = net(16, 24)
    assert channel_block_suffix(g, g.nodes[3]) == ""                          # a 2-D output: no blocks
    assert set(operator_cost_terms(g, channel_blocks=True)) == {"Conv/3x3/c8", "Relu/c8", "Flatten"}
    assert set(operator_cost_terms(g)) == {"Conv/3x3", "Relu", "Flatten"}
    # A suffixed kind keeps its category (its costs are pulled towards the plain kind's fellows).
    assert operator_category("Conv/3x3/c1") == "conv" and operator_category("AveragePool/c8") == "pool"
    # New fits split; a model saved before the option (no key) loads unsplit.
    graphs, y = measured
    m = OperatorCostModel().fit(graphs, y)
    assert m.channel_blocks and any(k.endswith("/c1") for k in m.kinds)
    st = m._state()
    assert st["channel_blocks"] is True
    old = OperatorCostModel(channel_blocks=False).fit(graphs, y)
    st_old = old._state()
    del st_old["channel_blocks"]
    loaded = OperatorCostModel()
    loaded._load_state(st_old)
    assert not loaded.channel_blocks
    np.testing.assert_allclose(loaded.predict_ms(graphs), old.predict_ms(graphs))


def test_terms_sum_over_operators_of_a_kind(measured):
    graphs, _ = measured
    g = graphs[-1]                                               # 3 convs of one kernel, Relus, pool, Gemm
    terms = operator_cost_terms(g)
    convs = [n for n in g.nodes if n.op == "Conv"]
    kind = operator_kind(convs[0])
    assert terms[kind][COST_TERMS.index("calls")] == len(convs)
    relu_out = sum(float(np.prod(n.shape)) for n in g.nodes if n.op == "Relu")
    assert terms["Relu"][COST_TERMS.index("output_elements")] == relu_out
    assert terms["Relu"][COST_TERMS.index("parameters")] == 0
    assert "input" not in terms


def test_known_costs_are_recovered_exactly(measured):
    graphs, _ = measured
    # Synthetic labels made by a cost model: 0.01 ms fixed, 0.05 ms per million MACs of any
    # convolution, 0.5 ms per million elements a Relu writes. The fit must give them back (the
    # Relu term shares its column's values with other terms, so only the prediction is checked).
    def truth(g):
        t = operator_cost_terms(g)
        macs = sum(v[0] for k, v in t.items() if k.startswith("Conv"))
        return 0.01 + 0.05 * macs / 1e6 + 0.5 * t.get("Relu", np.zeros(5))[1] / 1e6
    y = np.array([truth(g) for g in graphs])
    m = OperatorCostModel().fit(graphs, y)
    assert mape(m.predict_ms(graphs), y) < 1e-3
    for row in m.table():
        if row["kind"].startswith("Conv"):
            assert row["macs"] == pytest.approx(0.05, rel=1e-2)


def test_fit_on_real_timings_beats_a_constant_and_costs_unseen_kinds_by_category(measured):
    graphs, y = measured
    m = OperatorCostModel().fit(graphs, y)
    assert mape(m.predict_ms(graphs), y) < 0.5 * constant_mape(y)
    assert all(min(r[t] for t in COST_TERMS) >= 0 for r in m.table())      # every term is a cost
    assert operator_category("Softmax") == "elementwise" and "Softmax" not in m.kinds
    # A kind never seen in training costs what its category (here: elementwise, fitted from Relu) does.
    g = graphs[0]
    extra = ArchGraph(list(g.nodes) + [Node("Softmax", (len(g) - 1,), {}, g.nodes[-1].shape)])
    softmax = operator_cost_terms(extra)["Softmax"] / _SCALE
    j = m.categories.index("elementwise")
    by_category = float(softmax @ m.category_weights[j * 5:(j + 1) * 5])
    np.testing.assert_allclose(m.predict_ms([extra]), m.predict_ms([g]) + by_category)
    # Without the pull there are no category costs: an unseen kind then adds nothing.
    m0 = OperatorCostModel(shrink=0.0).fit(graphs, y)
    np.testing.assert_allclose(m0.predict_ms([extra]), m0.predict_ms([g]))


def test_a_strong_pull_gives_every_kind_its_category_costs(measured):
    graphs, y = measured

    def conv_spread(shrink):
        conv = [r for r in OperatorCostModel(shrink=shrink).fit(graphs, y).table() if r["kind"].startswith("Conv")]
        assert len(conv) >= 2                                      # 1x1, 3x3 and 5x5 ("other") kernels
        top = max(r[t] for r in conv for t in COST_TERMS)
        return max(max(r[t] for r in conv) - min(r[t] for r in conv) for t in COST_TERMS) / top

    # Pulled hard, the convolution kinds share their category's costs; left free, they do not.
    assert conv_spread(1e6) < 0.01 < conv_spread(0.0)
    with pytest.raises(ValueError, match="shrink must be a non-negative number"):
        OperatorCostModel(shrink=-1.0)


def test_narformer_residual_from_operator_costs_round_trips(measured, tmp_path):
    graphs, y = measured
    p = NARFormerLatency(offset="opcost", **TINY_NAR).fit(graphs, y, seed=0)
    assert isinstance(p.offset_model, OperatorCostModel)
    q = load_predictor(p.save(tmp_path / "opcost.pt"))
    assert q.offset == "opcost" and isinstance(q.offset_model, OperatorCostModel)
    np.testing.assert_allclose(q.predict(graphs), p.predict(graphs), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown residual offset 'gnn'"):
        NARFormerLatency(offset="gnn")


def test_a_doctored_cost_table_is_refused(measured, tmp_path):
    graphs, y = measured
    path = NARFormerLatency(offset="opcost", **TINY_NAR).fit(graphs, y, seed=0).save(tmp_path / "opcost.pt")
    st = torch.load(path, weights_only=True)
    st["offset"]["weights"] = -st["offset"]["weights"] - 1.0
    torch.save(st, path)
    with pytest.raises(LatencyCheckpointError, match="non-negative"):
        load_predictor(path)


def test_breakdown_adds_up_to_the_prediction_and_marks_unseen_kinds(measured):
    graphs, y = measured
    m = OperatorCostModel().fit(graphs, y)
    g = graphs[5]
    rows = m.breakdown(g)
    assert rows[-1]["kind"] == "fixed per run"
    assert sum(r["ms"] for r in rows) == pytest.approx(float(m.predict_ms([g])[0]))
    known = [r["ms"] for r in rows[:-1]]
    assert known == sorted(known, reverse=True)                   # slowest kind first
    assert not any(r["by_category"] for r in rows)
    extra = ArchGraph(list(g.nodes) + [Node("Softmax", (len(g) - 1,), {}, g.nodes[-1].shape)])
    rows = m.breakdown(extra)
    unseen = [r for r in rows if r["by_category"]]
    assert [r["kind"] for r in unseen] == ["Softmax"] and unseen[0]["operators"] == 1 and unseen[0]["ms"] >= 0
    assert sum(r["ms"] for r in rows) == pytest.approx(float(m.predict_ms([extra])[0]))


def test_the_saved_sum_keeps_its_category_costs(measured, tmp_path):
    from narformer_core.latency.predictors import make_predictor

    graphs, y = measured
    g = graphs[0]
    extra = ArchGraph(list(g.nodes) + [Node("Softmax", (len(g) - 1,), {}, g.nodes[-1].shape)])
    p = make_predictor("opcost").fit(graphs, y)
    q = load_predictor(p.save(tmp_path / "opcost.pt"))
    assert q.model.shrink == p.model.shrink and q.model.categories == p.model.categories
    # The unseen Softmax is costed by its category after loading too.
    np.testing.assert_allclose(q.predict([extra, g]), p.predict([extra, g]))
    assert q.predict([extra])[0] > q.predict([g])[0]
