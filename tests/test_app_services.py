"""narformer_core.app_services and narformer_core.plots: the plain functions behind the pages."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from test_app_support import tiny_checkpoints  # noqa: F401

from narformer_core import app_services as svc
from narformer_core import plots
from narformer_core.graph import GraphError
from narformer_core.spaces import nb101, nb201


def test_ranks_and_percentile():
    v = np.array([3.0, 1.0, 2.0, 3.0, np.nan])
    assert svc.ranks_descending(v)[:4].tolist() == [1, 4, 3, 1]
    assert np.isnan(svc.ranks_descending(v)[4])
    assert svc.rank_and_percentile(2.0, np.array([3, 1, 2, 3])) == (3, 25.0)
    assert svc.rank_and_percentile(9.0, np.array([3, 1, np.nan])) == (1, 100.0)


def test_ranking_frame_rank_errors():
    df = svc.ranking_frame(np.array([1.0, 2.0, 3.0, 4.0]), np.array([4.0, 3.0, 2.0, np.nan]), ["a", "b", "c", "d"],
                           seen=np.array([True, False, False, False]))
    assert list(df["arch"]) == ["a", "b", "c"]                  # the unlabelled one is dropped
    assert list(df["rank error"]) == [2, 0, -2]
    assert list(df["used in training"]) == [True, False, False]


def test_checkpoints_shipped_first_then_runs(monkeypatch, tmp_path, tiny_checkpoints):
    ck = tmp_path / "ck"
    ck.mkdir()
    for name in ("zzz-other.pt", "nb201-1563.pt", "nb201-781.pt", "nb101-100.pt"):
        shutil.copy(tiny_checkpoints / "nb201-tiny.pt", ck / name)
    runs_dir = tmp_path / "runs"
    (runs_dir / "r1").mkdir(parents=True)
    shutil.copy(tiny_checkpoints / "nb201-tiny.pt", runs_dir / "r1" / "best_ema.pt")
    (runs_dir / "r1" / "config.json").write_text(json.dumps({"space": "nb201"}))
    (runs_dir / "r2").mkdir()
    shutil.copy(tiny_checkpoints / "nb201-tiny.pt", runs_dir / "r2" / "best.pt")
    (runs_dir / "r2" / "config.json").write_text(json.dumps({"space": "nb101"}))
    monkeypatch.setenv("NARFORMER_CHECKPOINT_DIR", str(ck))
    monkeypatch.setenv("NARFORMER_RUNS_DIR", str(runs_dir))
    labels = [r.label for r in svc.find_checkpoints("nb201")]
    assert labels == ["nb201-781 (shipped)", "nb201-1563 (shipped)", "zzz-other (shipped)", "runs/r1/best_ema.pt"]
    assert [r.label for r in svc.find_checkpoints("nb101")] == ["nb101-100 (shipped)", "zzz-other (shipped)",
                                                                  "runs/r2/best.pt"]
    assert len(svc.find_checkpoints(None)) == 6


def test_predict_chunk_agrees_with_the_predictor(tiny_checkpoints):
    from narformer_core.tasks import load_task

    p = svc.load_predictor(str(tiny_checkpoints / "nb201-tiny.pt"))
    full = p.predict(load_task("nb201"))
    # Chunks are the network's own outputs; the assembled whole is averaged over equivalent cells.
    p.equivalence = "off"
    own = p.predict(load_task("nb201"))
    p.equivalence = "mean"
    np.testing.assert_allclose(svc.predict_chunk(p, "nb201", 1000, 1500), own[1000:1500], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(svc.predict_all(p), full, rtol=1e-5, atol=1e-4)
    for i in (1234, 0):      # 0: the all-'none' cell, whose class has 341 members
        g = nb201.to_graph(nb201.enumerate_all()[i])
        assert svc.predict_graph(p, g) == pytest.approx(full[i], abs=1e-3)
    with pytest.raises(GraphError, match="nb201 cells, not nb101"):
        svc.predict_chunk(p, "nb101", 0, 10)
    info = svc.checkpoint_summary(p)
    assert info["space"] == "nb201" and info["train_size"] == 64 and info["labels"] == "analog"
    assert info["members"] == 0 and info["selection"] == f"at epoch {p.meta['epoch']}"


def test_an_ensemble_is_described_by_its_member_count():
    assert svc.selection_text({"members": [{}, {}, {}], "epoch": None}) == "of the mean of 3 runs on one split"
    info = {"val_tau": 0.89907, "selection": "of the mean of 8 runs on one split"}
    assert svc.validation_text(info) == "validation tau 0.899 of the mean of 8 runs on one split"
    assert svc.validation_text({**info, "val_tau": None}) == "validation tau not recorded"


def test_predict_chunk_uses_the_target_map(tiny_checkpoints):
    """A quantile-target checkpoint maps back to percent through its training labels."""
    from narformer_core.targets import TargetMap

    p = svc.load_predictor(str(tiny_checkpoints / "nb201-tiny.pt"))
    raw_pct = svc.predict_chunk(p, "nb201", 0, 200)
    p.meta["target"] = TargetMap("quantile", train_labels=[10.0, 50.0, 90.0])
    mapped = svc.predict_chunk(p, "nb201", 0, 200)
    np.testing.assert_allclose(mapped, np.interp(raw_pct / 100.0, [0, 0.5, 1], [10, 50, 90]), atol=1e-3)


def test_nb201_ground_truth_rows():
    i = nb201.index_of(svc.nb201_default_cell())
    df = svc.nb201_ground_truth(i)
    row = df[df["source"] == "analog"].iloc[0]
    y = svc.nb201_labels("analog")
    assert row["accuracy %"] == pytest.approx(round(float(y[i]), 2))
    assert row["true rank"] == f"{int((y > y[i]).sum()) + 1:,} / 15,625"


def test_nb101_graph_errors_are_graph_errors():
    with pytest.raises(GraphError, match="upper triangular"):
        svc.nb101_graph(np.tril(np.ones((7, 7), int)), svc.NB101_DEFAULT_OPS)
    g = svc.nb101_graph(svc.NB101_DEFAULT_MATRIX, svc.NB101_DEFAULT_OPS)
    assert g.space == "nb101" and g.meta["hash"] == nb101.module_hash(svc.NB101_DEFAULT_MATRIX, svc.NB101_DEFAULT_OPS)


def test_token_matrices_and_labels():
    g = nb201.to_graph(svc.nb201_default_cell())
    values, rows, parts = svc.cell_token_matrix(g)
    assert values.shape == (9, 192) and rows[-1] == "8 end token" and len(parts) == 192
    from narformer_core.onnx_import import load_onnx
    from test_app_support import small_onnx_bytes

    net = load_onnx(small_onnx_bytes())
    values, rows, parts = svc.network_token_matrix(net)
    assert values.shape == (len(net) + 1, 480) and len(set(parts)) == 15


def test_import_onnx_refuses_bad_bytes():
    for data in (b"", b"\x00\x01garbage" * 10):
        with pytest.raises(GraphError):
            svc.import_onnx(data)


def test_human_numbers():
    assert svc.human(1_820_000_000) == "1.82 G" and svc.human(11_690_000, "B") == "11.69 MB" and svc.human(12) == "12"


def test_optional_modules():
    assert svc.optional("definitely_not_a_module") is None
    assert svc.optional("graph") is not None


# ---------------------------------------------------------------- plots
def test_cell_dag_layout_and_edges():
    g = nb201.to_graph(svc.nb201_default_cell())
    x, y = plots.dag_layout(g)
    assert x[0] == 0 and x[7] == max(x)
    for j, i in g.edges():
        assert x[j] < x[i]                                  # every edge points right
    fig = plots.cell_dag(g)
    assert len(fig.layout.annotations) == len(g.edges())    # one arrow per edge


def test_dag_layout_folds_deep_networks_into_a_snake():
    from narformer_core.graph import ArchGraph, Node

    # 140 operators in a chain with a residual Add every 4th node: a ConvNeXt's shape.
    nodes = [Node("input")]
    for i in range(1, 141):
        nodes.append(Node("Add", (i - 1, i - 4)) if i % 4 == 0 and i >= 4 else Node("Conv", (i - 1,)))
    g = ArchGraph(nodes, space="test")
    x, y = plots.dag_layout(g)
    assert x.max() == plots.WRAP_DEPTHS - 1                  # folded to the row width
    assert len(set(zip(x.tolist(), y.tolist()))) == len(g)   # no two nodes on one spot
    rows = sorted(set(np.round(y[[i for i in range(len(g)) if g.nodes[i].op != "Add"]], 6)), reverse=True)
    assert len(rows) >= 4                                   # 140 depths / 32 per row
    # The chain stays a path of neighbours: each node one column from its main input, or, at a
    # row's end, in the same column one row down.
    for i in range(1, len(g)):
        j = g.nodes[i].inputs[0]
        dx, dy = abs(x[i] - x[j]), y[j] - y[i]
        assert (dx == 1 and abs(dy) < 1.5) or (dx == 0 and dy > 0), (i, j, dx, dy)
    # A shallow graph, and one below the threshold, stay on one line.
    short = ArchGraph([Node("input")] + [Node("Relu", (i,)) for i in range(plots.WRAP_AFTER - 1)], space="test")
    xs, ys = plots.dag_layout(short)
    assert xs.max() == plots.WRAP_AFTER - 1 and set(ys) == {0.0}
    assert plots.dag_layout(short, wrap=10)[0].max() == 9   # folding can be asked for
    fig = plots.cell_dag(g)
    assert fig.layout.height <= 700
    legend = [t for t in fig.data if t.showlegend]          # no labels on 140 dots: a legend instead
    assert sorted(t.name for t in legend) == sorted(set(g.ops))
    assert len({t.marker.color for t in legend}) == len(legend)   # one colour per operator type


def test_token_heatmap_hover_names_slots():
    values = np.arange(12, dtype=np.float32).reshape(2, 6)
    fig = plots.token_heatmap(values, ["0 a", "1 b"], ["p", "p", "q", "q", "q", "r"])
    assert fig.data[0].customdata[1][3] == "q [1]"
    assert list(fig.layout.xaxis.ticktext) == ["p", "q", "r"]
    assert len(fig.layout.shapes) == 2                      # separators between the three parts
    with pytest.raises(ValueError, match="does not match"):
        plots.token_heatmap(values, ["0", "1"], ["p"] * 5)


def test_curves_and_rank_plots():
    import pandas as pd

    df = pd.DataFrame({"epoch": [1, 2, 3], "wall_s": [1.0, 2.0, 3.5], "val_tau": [0.1, 0.2, 0.3],
                       "val_tau_ema": [0.1, 0.15, 0.25], "loss": [1, 0.5, 0.4], "mse": [1, 1, 1],
                       "rank": [0, 0, 0], "cons": [0, 0, 0]})
    fig = plots.tau_curves({"a": df, "b": df.head(0)}, x="wall_s")
    assert [t.name for t in fig.data] == ["a · raw", "a · EMA"] and list(fig.data[0].x) == [1.0, 2.0, 3.5]
    assert plots.loss_curves({"a": df}).data[0].visible is True
    sc = plots.pred_vs_truth(np.array([1.0, 2.0, np.nan]), np.array([1.5, 2.5, 3.0]))
    assert len(sc.data[0].x) == 2
    h = plots.rank_error_hist({"x": np.array([1, -1, 0]), "y": np.array([0, 0])})
    assert [t.name for t in h.data] == ["x", "y"]
    assert plots.value_histogram(np.array([1.0, 2.0, 3.0]), 2.0, log_x=True).layout.xaxis.title.text.startswith("log10")


def test_latency_reference_is_the_predictors_own_data_set_when_present(monkeypatch, tmp_path):
    monkeypatch.setenv("NARFORMER_LATENCY_DIR", str(tmp_path))
    meta = {"dataset": "assets/latency/own.jsonl.gz", "n_networks": 5, "test_indices": [4, 1, 1]}
    # Not in the folder: the development set.
    assert svc.latency_reference_file(meta) == tmp_path / svc.DEV_LATENCY_SET
    assert svc.latency_reference_file(None) == tmp_path / svc.DEV_LATENCY_SET
    (tmp_path / "own.jsonl.gz").write_bytes(b"")
    own = svc.latency_reference_file(meta)
    assert own == tmp_path / "own.jsonl.gz"
    np.testing.assert_array_equal(svc.held_out_rows(meta, own, 5), [1, 4])
    # Another file, another network count, or indices that do not fit: unknown.
    assert svc.held_out_rows(meta, tmp_path / svc.DEV_LATENCY_SET, 5) is None
    assert svc.held_out_rows(meta, own, 6) is None
    assert svc.held_out_rows({**meta, "test_indices": [5]}, own, 5) is None
    assert svc.held_out_rows({k: v for k, v in meta.items() if k != "test_indices"}, own, 5) is None


def test_precomputed_predictions_belong_to_one_checkpoint_file(tiny_checkpoints, tmp_path):
    src = tiny_checkpoints / "nb201-tiny.pt"
    ck = tmp_path / "c.pt"
    shutil.copy(src, ck)
    assert svc.precomputed_predictions(ck) is None                      # none stored yet
    pred = svc.predict_all(svc.load_predictor(str(ck)))
    side = svc.write_precomputed_predictions(ck, pred)
    assert side == tmp_path / "c.predictions.npz"
    np.testing.assert_array_equal(svc.precomputed_predictions(ck), pred)
    # Other bytes under the same name (a retrained checkpoint): the stored ones are not used.
    ck.write_bytes(ck.read_bytes() + b"\0")
    assert svc.precomputed_predictions(ck) is None
    shutil.copy(src, ck)
    np.savez_compressed(side, predictions=pred, sha256=np.array(svc._sha256(ck)),
                        version=np.array(svc.PREDICTIONS_VERSION - 1))
    assert svc.precomputed_predictions(ck) is None                      # made by older code
    side.write_bytes(b"not a zip")
    assert svc.precomputed_predictions(ck) is None                      # damaged: predict as usual
    with pytest.raises(ValueError, match="15,625 finite predictions"):
        svc.write_precomputed_predictions(ck, pred[:10])


@pytest.mark.parametrize("name", svc.SHIPPED_CHECKPOINTS)
def test_shipped_precomputed_predictions_are_the_checkpoints_own(name):
    path = svc.checkpoint_dir() / name
    if not path.exists():
        pytest.skip(f"{name} is not in this checkout")
    stored = svc.precomputed_predictions(path)
    assert stored is not None, f"{svc.predictions_file(path).name} is missing or stale: run scripts/precompute_predictions.py"
    from narformer_core.tasks import load_task

    # 256 cells, predicted with their equivalent cells (the file holds the class means).
    idx = np.arange(7000, 7256)
    sample = svc.load_predictor(str(path)).predict(load_task("nb201"), idx)
    np.testing.assert_allclose(stored[idx], sample, rtol=1e-5, atol=1e-4)
