"""The GBDT baseline picks its trees on validation or training cells only, never on unseen ones."""
from dataclasses import replace

import numpy as np
import pytest

from narformer_core import baselines as B
from narformer_core.data import DataUnavailable
from narformer_core.metrics import kendall_tau
from narformer_core.tasks import load_task, split

try:
    TASK = load_task("nb201", "nb201-val", "nb201-val")
except DataUnavailable as e:  # pragma: no cover - only without the shared data folder
    pytest.skip(str(e), allow_module_level=True)

TRAIN, VAL = split(TASK, 60, 40, seed=3)
FAST = {"max_iter": 40, "tree_checkpoints": 8}


def blind(task, keep):
    """A copy of ``task`` whose labels exist only at ``keep``: any other label read is NaN."""
    y = np.full(len(task), np.nan)
    y[keep] = task.y[keep]
    return replace(task, y=y, y_test=np.full(len(task), np.nan), _tokens={})


@pytest.mark.parametrize("val", [VAL, None], ids=["validation cells", "cross-validation"])
def test_choice_and_model_depend_on_the_given_cells_only(val):
    seen = TRAIN if val is None else np.concatenate([TRAIN, VAL])
    full = B.GBDTPredictor(**FAST).fit(TASK, TRAIN, val, seed=0)
    masked = B.GBDTPredictor(**FAST).fit(blind(TASK, seen), TRAIN, val, seed=0)
    assert full.meta == masked.meta
    assert np.array_equal(full.predict(TASK), masked.predict(TASK))
    if val is None:
        # the validation cells' labels were not given, so changing them changes nothing
        other = replace(TASK, y=TASK.y.copy(), _tokens={})
        other.y[VAL] = -other.y[VAL]
        again = B.GBDTPredictor(**FAST).fit(other, TRAIN, None, seed=0)
        assert again.meta == full.meta and np.array_equal(again.predict(TASK), full.predict(TASK))


def test_validation_tau_of_the_chosen_model_is_the_best_of_the_grid():
    p = B.GBDTPredictor(**FAST).fit(TASK, TRAIN, VAL, seed=0)
    m = p.meta
    assert m["selected_on"] == f"{len(VAL)} validation cells"
    assert (m["max_leaf_nodes"], m["min_samples_leaf"]) in p.grid()
    assert m["n_trees"] in p._trees_to_score()
    # the returned model is the scored one: its tau on the validation cells is the selection tau
    assert kendall_tau(p.predict(TASK, VAL), TASK.y[VAL]) == pytest.approx(m["selection_tau"], abs=1e-9)
    # and no other setting of the grid does better on them
    for leaves, min_leaf in p.grid():
        q = B.GBDTPredictor(max_leaf_nodes=leaves, min_samples_leaf=min_leaf, **FAST).fit(TASK, TRAIN, VAL, seed=0)
        assert q.meta["selection_tau"] <= m["selection_tau"] + 1e-12


def test_without_enough_validation_cells_it_cross_validates_or_uses_the_simplest_setting():
    p = B.GBDTPredictor(**FAST).fit(TASK, TRAIN, VAL[:3], seed=0)      # too few to rank settings
    assert p.meta["selected_on"].startswith("3-fold cross-validation on the 60 training cells")
    few = B.GBDTPredictor(**FAST).fit(TASK, TRAIN[:6], None, seed=0)
    assert few.meta["selected_on"].startswith("nothing") and few.meta["selection_tau"] is None
    assert (few.meta["max_leaf_nodes"], few.meta["min_samples_leaf"], few.meta["n_trees"]) == (4, 3, 40)


def test_fixed_hyper_parameters_leave_only_the_number_of_trees_to_choose():
    p = B.GBDTPredictor(max_leaf_nodes=8, min_samples_leaf=5, **FAST)
    assert p.grid() == [(8, 5)]
    p.fit(TASK, TRAIN, VAL, seed=0)
    assert (p.meta["max_leaf_nodes"], p.meta["min_samples_leaf"]) == (8, 5)
    with pytest.raises(ValueError, match="at least 1 tree"):
        B.GBDTPredictor(max_iter=0)
    with pytest.raises(ValueError, match="validation architectures have no label"):
        B.GBDTPredictor(**FAST).fit(blind(TASK, TRAIN), TRAIN, VAL)
