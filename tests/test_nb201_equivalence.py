"""Functionally equivalent NB201 cells (spaces/nb201.py) and the predictions averaged over them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from test_app_support import tiny_checkpoints  # noqa: F401

from narformer_core.graph import GraphError
from narformer_core.spaces import nb201

C1, C3, SK, AP, NO = "nor_conv_1x1", "nor_conv_3x3", "skip_connect", "avg_pool_3x3", "none"


def cell(text: str) -> tuple[str, ...]:
    return nb201.parse(text)


def test_edges_reading_a_zero_map_are_dead():
    # Nothing reaches maps 1 and 2 (0->1, 0->2 are 'none'): every edge leaving them carries zeros.
    c = cell(f"|{NO}~0|+|{NO}~0|{C3}~1|+|{SK}~0|{AP}~1|{C1}~2|")
    assert nb201.canonical(c) == (NO, NO, NO, SK, NO, NO)


def test_edges_into_a_map_that_never_reaches_the_output_are_dead():
    # Map 1 feeds nothing (1->2 and 1->3 are 'none'): the conv 0->1 is computed and thrown away.
    c = cell(f"|{C3}~0|+|{SK}~0|{NO}~1|+|{C1}~0|{NO}~1|{AP}~2|")
    assert nb201.canonical(c) == (NO, SK, NO, C1, NO, AP)


def test_parallel_branches_are_ordered():
    # With 1->2 absent, maps 1 and 2 are interchangeable: the two wirings are one cell.
    a = cell(f"|{C3}~0|+|{SK}~0|{NO}~1|+|{NO}~0|{AP}~1|{C1}~2|")
    b = cell(f"|{SK}~0|+|{C3}~0|{NO}~1|+|{NO}~0|{C1}~1|{AP}~2|")
    assert a != b and nb201.canonical(a) == nb201.canonical(b)
    # ... but not when 1->2 is present: then map 2 reads map 1 and the order matters.
    a2, b2 = a[:2] + (SK,) + a[3:], b[:2] + (SK,) + b[3:]
    assert nb201.canonical(a2) == a2 and nb201.canonical(b2) == b2


def test_live_cells_are_their_own_representative():
    for c in [(C3,) * 6, (SK, C1, AP, C3, SK, C1)]:
        assert nb201.canonical(c) == c
    assert nb201.canonical((NO,) * 6) == (NO,) * 6


def test_canonical_rejects_what_is_not_a_cell():
    with pytest.raises(GraphError, match="6 ops"):
        nb201.canonical((C3,) * 5)
    with pytest.raises(GraphError, match="6 ops"):
        nb201.canonical((C3,) * 5 + ("conv_5x5",))


def test_the_table_matches_the_rules_on_every_cell():
    cls = nb201.equivalence_classes()
    cells = nb201.enumerate_all()
    assert cls.shape == (nb201.N_ARCHS,) and not cls.flags.writeable
    assert all(cls[i] == nb201.index_of(nb201.canonical(c)) for i, c in enumerate(cells))
    assert len(np.unique(cls)) == 8765
    reps = np.unique(cls)
    assert (cls[reps] == reps).all()            # a representative is in its own class
    # Every cell whose output receives nothing is the all-'none' cell.
    dead = [i for i, c in enumerate(cells) if all(o == NO for o in nb201.canonical(c))]
    assert len(dead) == 341 and set(cls[dead]) == {0}


def test_equivalent_cells_have_nearly_equal_labels():
    """The claim behind averaging, checked on the embedded labels (AnalogNAS retraining)."""
    from narformer_core.data.nb201 import load_labels

    y = load_labels("analog")
    cls = nb201.equivalence_classes()
    spread = y - nb201.mean_over_equivalents(y)
    shared = np.bincount(cls, minlength=nb201.N_ARCHS)[cls] > 1
    assert shared.sum() > 6000
    assert spread[shared].std() < 0.1 * y.std()


def test_mean_over_equivalents():
    cls = nb201.equivalence_classes()
    v = np.arange(nb201.N_ARCHS, dtype=float)
    m = nb201.mean_over_equivalents(v)
    for k in (0, int(cls[7777]), int(cls[1234])):
        assert np.allclose(m[cls == k], v[cls == k].mean())
    members = nb201.equivalent_indices([7777, 3])
    assert set(members) == set(np.flatnonzero((cls == cls[7777]) | (cls == cls[3])))
    np.testing.assert_allclose(nb201.mean_over_equivalents(v[members], members), m[members])
    with pytest.raises(ValueError, match="values"):
        nb201.mean_over_equivalents(v[:10])


def test_the_predictor_gives_equivalent_cells_one_value(tiny_checkpoints):
    from narformer_core.predictors import NARFormerPredictor

    p = NARFormerPredictor.from_checkpoint(tiny_checkpoints / "nb201-tiny.pt")
    task = p.task()
    cls = nb201.equivalence_classes()
    full = p.predict(task)
    i = nb201.index_of((C3, SK, NO, C1, NO, AP))          # 0->1 is dead: 5 equivalent cells
    members = np.flatnonzero(cls == cls[i])
    assert len(members) > 1 and np.ptp(full[members]) < 1e-9

    p.equivalence = "off"
    own = p.predict(task)
    assert np.ptp(own[members]) > 0                       # the network alone does not know it
    np.testing.assert_allclose(full[members], own[members].mean(), rtol=1e-6)
    p.equivalence = "mean"

    idx = np.array([i, 5, 15624])                      # few cells: predicted with their classes only
    np.testing.assert_allclose(p.predict(task, idx), full[idx], rtol=1e-5)
    graphs = [nb201.to_graph(nb201.enumerate_all()[i]) for i in idx]
    np.testing.assert_allclose(p.predict_graphs(graphs), full[idx], rtol=1e-4)

    p.equivalence = "sometimes"
    with pytest.raises(ValueError, match="mean' or 'off"):
        p.predict(task)


def test_evaluate_reports_both(tiny_checkpoints, capsys):
    from narformer_core.cli import main

    ck = str(tiny_checkpoints / "nb201-tiny.pt")
    out = {}
    for mode in ("mean", "off"):
        assert main(["evaluate", "--checkpoint", ck, "--equivalence", mode, "--json"]) == 0
        out[mode] = json.loads(capsys.readouterr().out)
        assert out[mode]["equivalence"] == mode and -1 <= out[mode]["val_tau_as_predicted"] <= 1
    assert out["mean"]["kendall_tau_all"] != out["off"]["kendall_tau_all"]
    assert out["off"]["val_tau_as_predicted"] == pytest.approx(out["off"]["val_tau"], abs=0.02)


def test_the_app_says_why_a_cell_shares_its_prediction():
    from narformer_core import app_services as svc

    assert svc.equivalence_text((C3,) * 6) is None
    text = svc.equivalence_text((C3, SK, NO, C1, NO, AP))
    assert "edge 0→1 carries nothing to the output" in text and "other cells" in text
    assert nb201.dead_edges((C3, SK, NO, C1, NO, AP)) == [(0, 1)]
    swap = svc.equivalence_text((C3, SK, NO, NO, AP, C1))
    assert swap.startswith("This cell computes the same function as 1 other cell (") and "swap" in swap
    assert "outputs zeros, like 340 other cells" in svc.equivalence_text((NO,) * 6)


def test_the_sampler_draws_only_equivalent_cells():
    from narformer_core.augment import EquivalentSampler
    from narformer_core.tasks import load_task

    task = load_task("nb201")
    i = nb201.index_of((C3, SK, NO, C1, NO, AP))
    train_idx = np.array([3, i, 15624])
    s = EquivalentSampler(task, train_idx)
    rng = np.random.default_rng(0)
    drawn = {tuple(row) for row in s.ops_for(np.full(3000, 1), rng)}     # 58 members: all drawn
    members = nb201.equivalent_indices([i])
    assert drawn == {tuple(task.ops[j]) for j in members}          # every member, nothing else
    lone = nb201.equivalent_indices([15624])
    assert len(lone) == 1 and (s.ops_for(np.array([2, 2]), rng) == task.ops[15624]).all()
    sub = type(task)("nb201", "x", "x", task.ops[:10], task.adj, task.n_nodes[:10], task.y[:10], task.y_test[:10],
                     task.ids[:10])
    with pytest.raises(ValueError, match="whole NB201 space"):
        EquivalentSampler(sub, np.array([0]))


def test_training_on_equivalent_copies_runs_and_repeats(tmp_path):
    from narformer_core.train import TrainConfig, read_log, train
    from test_app_support import TINY_MODEL

    def run(name, equivalents):
        cfg = TrainConfig(model=dict(TINY_MODEL), epochs=2, train_size=64, val_size=32, labels="analog",
                          device="cpu", save_every_s=1e9, batch_size=32, threads=1, equivalents=equivalents)
        train(cfg, tmp_path / name, resume=False, progress=False)
        return [r["loss"] for r in read_log(tmp_path / name / "metrics.jsonl")]

    a, b, plain = run("a", True), run("b", True), run("plain", False)
    assert a == b                      # same seed, same copies drawn, same curve
    assert a != plain


def test_evaluate_can_show_validation_figures_only(tiny_checkpoints, capsys):
    from narformer_core.cli import main

    ck = str(tiny_checkpoints / "nb201-tiny.pt")
    assert main(["evaluate", "--checkpoint", ck, "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--checkpoint", ck, "--validation-only", "--json"]) == 0
    val = json.loads(capsys.readouterr().out)
    assert not any(k.startswith("kendall_tau") or k == "tau_vs_sources" for k in val)
    assert val["val_tau_as_predicted"] == pytest.approx(full["val_tau_as_predicted"], abs=1e-6)
    assert val["n_val"] == full["n_val"]


def test_copies_are_refused_for_nb101_before_anything_is_written(tmp_path):
    from narformer_core.train import TrainConfig, train

    cfg = TrainConfig(space="nb101", train_size=50, val_size=50, epochs=1, equivalents=True)
    with pytest.raises(ValueError, match="NB201 cells only, not nb101"):
        train(cfg, tmp_path / "run", resume=False, progress=False)
    assert not (tmp_path / "run").exists()
