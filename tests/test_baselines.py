"""Baseline predictors: one interface, sane shapes, and real ranking skill on NB201."""
import numpy as np
import pytest

from narformer_core import baselines as B
from narformer_core.data import DataUnavailable
from narformer_core.metrics import kendall_tau
from narformer_core.predictors import AccuracyPredictor, NARFormerPredictor
from narformer_core.spaces import nb201
from narformer_core.tasks import load_task, split

try:
    TASK = load_task("nb201", "nb201-val", "nb201-val")
except DataUnavailable as e:  # pragma: no cover - only without the shared data folder
    pytest.skip(str(e), allow_module_level=True)

TRAIN, VAL = split(TASK, 300, 200, seed=0)
# 2,000 unseen cells keep the test fast; tau on them is within ~0.02 of tau on all 15,125.
UNSEEN = np.setdiff1d(np.arange(len(TASK)), np.concatenate([TRAIN, VAL]))
TEST = np.random.default_rng(0).choice(UNSEEN, 2000, replace=False)
# Short schedules: the test checks skill, not the arena's figures.
FAST = {"mlp": {"max_steps": 400, "min_steps": 400}, "gin": {"max_steps": 250, "min_steps": 250},
        "gbdt": {"max_iter": 150}}


@pytest.mark.parametrize("name", ["mlp", "gin", "gbdt"])
def test_trained_baselines_rank_better_than_chance(name):
    p = B.make_predictor(name, **FAST[name])
    assert isinstance(p, AccuracyPredictor)
    assert p.fit(TASK, TRAIN, VAL, seed=0) is p
    pred = p.predict(TASK, TEST)
    assert pred.shape == (len(TEST),) and np.isfinite(pred).all()
    tau = kendall_tau(pred, TASK.y_test[TEST])
    print(f"{name}: tau {tau:.3f}")
    assert tau > 0.3, f"{name}: tau {tau:.3f}"
    # predictions are accuracies in %, in the range of the labels
    assert 0 < np.median(pred) < 100
    whole = p.predict(TASK)
    assert whole.shape == (len(TASK),) and np.allclose(whole[TEST[:50]], pred[:50], atol=1e-4)


def test_torch_baselines_are_deterministic_per_seed_and_use_validation():
    a = B.make_predictor("mlp", max_steps=200, min_steps=200, eval_every=50).fit(TASK, TRAIN, VAL, seed=1)
    b = B.make_predictor("mlp", max_steps=200, min_steps=200, eval_every=50).fit(TASK, TRAIN, VAL, seed=1)
    assert np.array_equal(a.predict(TASK, TEST[:100]), b.predict(TASK, TEST[:100]))
    assert a.meta["val_tau"] is not None and a.meta["selected_step"] in (50, 100, 150, 200)
    c = B.make_predictor("mlp", max_steps=200, min_steps=200).fit(TASK, TRAIN, None, seed=1)
    assert c.meta["val_tau"] is None and c.meta["selected_step"] == 200


def test_zen_is_training_free_and_returns_the_score():
    from narformer_core.data.nb201 import load_labels

    z = B.make_predictor("zen")
    assert z.fit(TASK, TRAIN) is z
    assert np.array_equal(z.predict(TASK, TEST), load_labels("zen")[TEST])
    assert kendall_tau(z.predict(TASK, TEST), TASK.y_test[TEST]) > 0.1


def test_path_encoding_of_nb201():
    enc = B.path_encoding(TASK)
    assert enc.shape == (len(TASK), 84)                        # 4 + 16 + 64 op sequences without 'none'
    ops = nb201.enumerate_all()
    all_none = nb201.index_of(("none",) * 6)
    assert enc[all_none].sum() == 0
    all_conv = nb201.index_of(("nor_conv_3x3",) * 6)
    assert enc[all_conv].sum() == 4 and enc[all_conv].max() == 2    # 4 routes; two of length 2
    routes = ((3,), (0, 4), (1, 5), (0, 2, 5))                 # edges on each input->output route
    alive = [any(all(c[k] != "none" for k in r) for r in routes) for c in ops]
    assert np.array_equal(enc.sum(1) > 0, alive)
    adj = B.adjacency_encoding(TASK)
    assert adj.shape == (len(TASK), 28 + 8 * 7)


def test_baselines_on_nb101_cells_with_their_own_adjacency():
    try:
        task = load_task("nb101")
    except DataUnavailable as e:  # pragma: no cover
        pytest.skip(str(e))
    tr, va = split(task, 150, 50, seed=0)
    for name, kw in [("mlp", {"max_steps": 100, "min_steps": 100}), ("gin", {"max_steps": 50, "min_steps": 50}),
                     ("gbdt", {"max_iter": 30})]:
        p = B.make_predictor(name, **kw).fit(task, tr, va)
        assert p.predict(task).shape == (len(task),)
    assert B.path_encoding(task).shape[0] == len(task)
    with pytest.raises(ValueError, match="NB201 space only"):
        B.make_predictor("zen").fit(task, tr)


def test_registry_and_errors():
    assert set(B.PREDICTORS) == {"narformer", "mlp", "gin", "gbdt", "zen"}
    nf = B.make_predictor("narformer", epochs=3)
    assert isinstance(nf, NARFormerPredictor) and nf.train_kwargs == {"epochs": 3}
    with pytest.raises(ValueError, match="unknown predictor"):
        B.make_predictor("xgboost")
    with pytest.raises(ValueError, match="bad option"):
        B.make_predictor("mlp", depth=9)
    with pytest.raises(ValueError, match="unknown encoding"):
        B.make_predictor("gbdt", encoding="zip")
    with pytest.raises(ValueError, match="not fitted"):
        B.make_predictor("gin").predict(TASK, TEST)
    with pytest.raises(ValueError, match="at least 2"):
        B.make_predictor("gbdt").fit(TASK, TRAIN[:1])


def test_narformer_predicts_a_few_cells_like_the_whole_space():
    """The few-cells path (a search guide asks for ~200 candidates) gives the same numbers as
    predicting all 15,625 cells and indexing."""
    task = load_task("nb201", "nb201-val")
    tr, va = split(task, 40, 20, seed=0)
    small = {"d_model": 32, "n_heads": 2, "ffn_dim": 64, "depths": [1, 1, 1, 1]}
    p = NARFormerPredictor(train_kwargs={"epochs": 2, "batch_size": 20, "model": small}).fit(task, tr, va, seed=0)
    idx = np.array([5, 17, 400, 15_000, 9_999])
    few = p.predict(task, idx)
    assert np.allclose(few, p.predict(task)[idx], atol=1e-4)
