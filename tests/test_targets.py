"""The label <-> model-output maps of targets.py."""
import numpy as np

from narformer_core.targets import TargetMap


def test_quantile_map_round_trips_and_spreads_labels_evenly():
    labels = np.array([10.0, 50.0, 85.0, 90.0, 93.0])
    m = TargetMap("quantile", labels)
    assert np.allclose(m.forward(labels), [0, 0.25, 0.5, 0.75, 1.0])
    assert np.allclose(m.inverse(m.forward(labels)), labels, atol=1e-5)


def test_quantile_inverse_keeps_the_model_order_where_labels_repeat_and_beyond_the_ends():
    """Repeated training labels make flat steps; outputs outside 0..1 fall beyond the end knots.
    Neither may turn different outputs into equal percentages (a top-k list would show ties the
    model never made), and no value may move visibly."""
    m = TargetMap("quantile", [80.0, 90.49, 90.49, 90.49, 91.0])
    u = np.array([-0.2, 0.0, 0.3, 0.4, 0.6, 1.0, 1.05, 1.3])
    p = m.inverse(u)
    assert np.all(np.diff(p) > 0)
    assert np.allclose(p, np.interp(u, m.levels, m.knots), atol=1e-5)


def test_fraction_map_is_the_papers_accuracy_over_100():
    m = TargetMap("fraction")
    assert np.allclose(m.forward([93.1]), [0.931]) and np.allclose(m.inverse([0.931]), [93.1])
