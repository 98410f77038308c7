"""Structure sets (unmeasured zoo networks) and NAR-Former's pretraining on them."""
import gzip
import json

import numpy as np
import pytest
import torch

from test_latency_predictors import conv_net

from narformer_core.cli import main as cli_main
from narformer_core.latency import dataset as ds
from narformer_core.latency import zoo
from narformer_core.latency.predictors import NARFormerLatency, load_predictor
from narformer_core.latency.pretrain import build_structure_set, load_structures
from narformer_core.onnx_import import from_torch

TINY = {"model": {"d_model": 32, "n_heads": 2, "ffn_dim": 64, "depths": (1, 1, 1, 1), "head_hidden": 64,
                  "dropout": 0.0},
        "train": {"epochs": 3, "batch_size": 8, "lr": 2e-3, "pretrain_epochs": 2}}


@pytest.fixture(scope="module")
def labelled():
    """12 small conv nets with a made-up latency that grows with their MACs (no timing needed:
    these tests check the plumbing, not accuracy)."""
    from narformer_core.features import static_features

    graphs = [from_torch(conv_net(w, d, k), torch.zeros(1, 3, 24, 24))
              for w in (8, 24) for d in (1, 3) for k in (1, 3, 5)]
    y = np.array([0.05 + static_features(g)["flops"] / 2e7 for g in graphs])
    return graphs, y


@pytest.fixture(scope="module")
def structure_set(tmp_path_factory):
    path = tmp_path_factory.mktemp("pre") / "structures.jsonl.gz"
    out = build_structure_set(path, 4, seed=7, families=("squeezenet", "alexnet"), progress=False)
    assert out["written"] == 4
    return path


def test_structure_set_is_untimed_resumable_and_skips_excluded(structure_set, tmp_path):
    records = [json.loads(line) for line in gzip.open(structure_set, "rt")]
    assert len(records) == 4 and {r["family"] for r in records} == {"squeezenet", "alexnet"}
    for r in records:
        assert r["kind"] == "structure" and "median_ms" not in r and "samples_ms" not in r
        assert r["n_nodes"] == len(r["graph"]["nodes"]) and r["static"]["flops"] > 0
    # A second call writes nothing new; its list is the same prefix-stable draw.
    assert build_structure_set(structure_set, 4, seed=7, families=("squeezenet", "alexnet"),
                               progress=False)["written"] == 0
    # Networks of an excluded data set are not drawn again: exclude the first two, get others.
    excl = tmp_path / "measured.jsonl.gz"
    with gzip.open(excl, "wt") as f:
        for r in records[:2]:
            f.write(json.dumps({"spec_id": r["spec_id"], "graph": r["graph"], "median_ms": 1.0}) + "\n")
    other = tmp_path / "other.jsonl.gz"
    build_structure_set(other, 4, seed=7, families=("squeezenet", "alexnet"), exclude=[excl], progress=False)
    ids = [json.loads(line)["spec_id"] for line in gzip.open(other, "rt")]
    assert len(ids) == 4 and not {r["spec_id"] for r in records[:2]} & set(ids)
    assert [r["spec_id"] for r in records[2:]] == ids[:2]
    # Halves built apart and joined with cat read as the whole list, duplicates counted once.
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    build_structure_set(a, 4, seed=7, families=("squeezenet", "alexnet"), start=0, stop=2, progress=False)
    build_structure_set(b, 4, seed=7, families=("squeezenet", "alexnet"), start=1, stop=4, progress=False)
    joined = tmp_path / "joined.jsonl.gz"
    joined.write_bytes(a.read_bytes() + b.read_bytes())
    assert [g.stable_hash() for g in load_structures(joined)] == [g.stable_hash() for g in load_structures(structure_set)]
    # compact keeps a structure set's records
    assert ds.compact(joined)["records"] == 5 and len(load_structures(joined)) == 4


def test_structure_set_errors(tmp_path):
    with pytest.raises(ds.DatasetError, match="no structure set"):
        load_structures(tmp_path / "missing.jsonl.gz")
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt") as f:
        f.write(json.dumps({"spec_id": "x"}) + "\n")
    with pytest.raises(ds.DatasetError, match="not a structure record"):
        load_structures(bad)
    with pytest.raises(ds.DatasetError, match="no data set at"):
        build_structure_set(tmp_path / "o.jsonl.gz", 2, seed=0, exclude=[tmp_path / "nowhere.jsonl.gz"],
                            progress=False)


def test_pretrained_fit_starts_elsewhere_records_it_and_round_trips(labelled, structure_set, tmp_path):
    graphs, y = labelled
    plain = NARFormerLatency(**TINY).fit(graphs, y, seed=0)
    pre = NARFormerLatency(**TINY, pretrain=structure_set).fit(graphs, y, seed=0)
    info = pre.meta["pretrain"]
    assert info["networks"] == 4 and info["epochs"] == 2 and info["set"] == structure_set.name
    assert np.isfinite(info["val_mape"]) and 1 <= len(info["val_history"]) <= 2
    # Same seed, same measured data: only the starting weights differ.
    assert not np.allclose(pre.predict(graphs), plain.predict(graphs), rtol=1e-4)
    q = load_predictor(pre.save(tmp_path / "pre.pt"))
    np.testing.assert_allclose(q.predict(graphs), pre.predict(graphs), rtol=1e-5)
    # The pretraining seconds count in the fit's time.
    assert pre.summary["train_seconds"] >= pre.summary["pretrain"]["train_seconds"]
    # An ensemble pretrains once and fine-tunes every member from it: member 0 is the single fit.
    pair = NARFormerLatency(**TINY, pretrain=structure_set, members=2).fit(graphs, y, seed=0)
    assert pair.meta["pretrain"]["val_mape"] == pytest.approx(info["val_mape"])
    np.testing.assert_allclose(pair.member_predictions(graphs)[0], pre.predict(graphs), rtol=1e-5)


def test_pretraining_drops_measured_networks_and_needs_the_residual(labelled, tmp_path):
    graphs, y = labelled
    # A "structure set" made of the training networks themselves: every one is dropped.
    same = tmp_path / "same.jsonl.gz"
    with gzip.open(same, "wt") as f:
        for i, g in enumerate(graphs):
            f.write(json.dumps({"kind": "structure", "spec_id": f"s{i}", "graph": g.to_dict()}) + "\n")
    p = NARFormerLatency(**TINY, pretrain=same)
    with pytest.raises(ValueError, match="no network of the structure set"):
        p.fit(graphs, y, val=(graphs[:3], y[:3]), seed=0)
    q = NARFormerLatency(model=TINY["model"], train={**TINY["train"], "target": "log"}, pretrain=same)
    with pytest.raises(ValueError, match="residual target"):
        q.fit(graphs, y, seed=0)


def test_cli_structure_set_and_bench_option(tmp_path, capsys):
    out = tmp_path / "s.jsonl.gz"
    measured = tmp_path / "m.jsonl.gz"
    spec = zoo.sample_specs(1, 3, ("squeezenet",))[0]
    with gzip.open(measured, "wt") as f:
        f.write(json.dumps({"spec_id": zoo.spec_id(spec), "graph": {}, "median_ms": 1.0}) + "\n")
    rc = cli_main(["latency", "structure-set", "--out", str(out), "--n", "2", "--seed", "3",
                   "--exclude", str(measured), "--quiet", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["written"] == 2 and res["excluded_measured"] == 1
    assert zoo.spec_id(spec) not in {json.loads(line)["spec_id"] for line in gzip.open(out, "rt")}
    rc = cli_main(["bench", "latency", "--dataset", str(measured), "--pretrain", str(tmp_path / "none.gz"), "--json"])
    assert rc != 0
    assert "no structure set" in capsys.readouterr().err


def test_leave_one_family_out_folds_leave_the_family_out_of_pretraining(labelled, structure_set):
    from narformer_core.latency.train_latency import latency_bench

    only = load_structures(structure_set, ("alexnet",))
    assert len(only) == 2 and len(load_structures(structure_set)) == 4
    graphs, y = labelled
    seen = []

    class Spy:
        """Records which families each fit was told to leave out of its pretraining."""
        def __init__(self):
            self.pretrain_exclude_families = set()
            self.meta = {}

        def fit(self, g, ms, seed=0):
            seen.append(set(self.pretrain_exclude_families))
            self.level = float(np.exp(np.log(ms).mean()))
            return self

        def predict(self, g):
            return np.full(len(g), self.level)

    latency_bench(graphs, y, ["a"] * 6 + ["b"] * 6, {"spy": Spy}, seed=0, lofo=True, progress=False)
    assert sorted(map(sorted, seen)) == [[], ["a"], ["b"]]


def test_teacher_labels_the_pretraining_networks_only_from_its_own_split(labelled, structure_set, tmp_path):
    graphs, y = labelled
    val = (graphs[:3], y[:3])
    train = (graphs[3:], y[3:])
    teacher = NARFormerLatency(**TINY).fit(*train, val=val, seed=0)
    tpath = teacher.save(tmp_path / "teacher.pt")
    student = NARFormerLatency(**TINY, pretrain=structure_set, pretrain_teacher=tpath).fit(*train, val=val, seed=0)
    info = student.meta["pretrain"]
    assert info["proxy"] == "teacher teacher.pt" and info["networks"] == 4
    # The teacher's numbers, not the cost sum's, are what it pretrained on: it differs from a
    # student whose proxy is the operator-cost sum (same seed, same measured data).
    costsum = NARFormerLatency(**TINY, pretrain=structure_set).fit(*train, val=val, seed=0)
    assert costsum.meta["pretrain"]["proxy"] == "operator-cost sum (channel blocks)"
    assert not np.allclose(student.predict(graphs), costsum.predict(graphs), rtol=1e-4)
    # A teacher fitted on other training networks is refused: by fingerprint ...
    other = NARFormerLatency(**TINY).fit(graphs[2:], y[2:], val=(graphs[:2], y[:2]), seed=0)
    opath = other.save(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other training networks"):
        NARFormerLatency(**TINY, pretrain=structure_set, pretrain_teacher=opath).fit(*train, val=val, seed=0)
    # ... and, for checkpoints from before the fingerprint, by its recorded validation figure.
    legacy = load_predictor(opath)
    del legacy.meta["train_fingerprint"]
    legacy.meta["n_train"] = len(train[0])
    lpath = legacy.save(tmp_path / "legacy.pt")
    with pytest.raises(ValueError, match="another split"):
        NARFormerLatency(**TINY, pretrain=structure_set, pretrain_teacher=lpath).fit(*train, val=val, seed=0)
    same = load_predictor(tpath)
    del same.meta["train_fingerprint"]
    spath = same.save(tmp_path / "same_legacy.pt")
    ok = NARFormerLatency(**TINY, pretrain=structure_set, pretrain_teacher=spath).fit(*train, val=val, seed=0)
    np.testing.assert_allclose(ok.predict(graphs), student.predict(graphs), rtol=1e-5)
    with pytest.raises(ValueError, match="needs a structure set"):
        NARFormerLatency(**TINY, pretrain_teacher=tpath)


def test_cli_teacher_needs_a_structure_set(tmp_path, capsys):
    measured = tmp_path / "m.jsonl.gz"
    measured.write_bytes(b"")
    rc = cli_main(["bench", "latency", "--dataset", str(measured), "--pretrain-teacher", str(tmp_path / "t.pt"),
                   "--json"])
    assert rc != 0 and "give both" in capsys.readouterr().err


def test_merging_a_student_and_its_teacher_averages_all_members(labelled, structure_set, tmp_path, capsys):
    from narformer_core import app_services as svc
    from narformer_core.latency.predictors import merge_narformer_ensembles

    graphs, y = labelled
    val, train = (graphs[:3], y[:3]), (graphs[3:], y[3:])
    teacher = NARFormerLatency(**TINY, members=2).fit(*train, val=val, seed=0)
    teacher.meta.update({"test_indices": [0, 1], "test_mape": 9.9})
    tpath = teacher.save(tmp_path / "teacher.pt")
    student = NARFormerLatency(**TINY, pretrain=structure_set, pretrain_teacher=tpath).fit(*train, val=val, seed=0)
    student.meta["test_indices"] = [0, 1]
    spath = student.save(tmp_path / "student.pt")
    merged = merge_narformer_ensembles([tpath, spath])
    assert merged.members == 3 and len(merged.member_predictions(graphs)) == 3
    # All three networks averaged in log space: the weighted geometric mean of the two parts.
    want = np.exp((2 * np.log(teacher.predict(graphs)) + np.log(student.predict(graphs))) / 3)
    np.testing.assert_allclose(merged.predict(graphs), want, rtol=1e-5)
    assert [m["members"] for m in merged.meta["merged_from"]] == [2, 1]
    assert merged.meta["val_mape"] is None and "test_mape" not in merged.meta
    assert merged.meta["test_indices"] == [0, 1]
    assert svc.latency_pretraining(merged.meta) == [student.meta["pretrain"]]
    sentence = svc.pretraining_sentence(merged.meta)
    assert "3 networks from 2 fits" in sentence and "2 not pretrained" in sentence and "self-training" in sentence
    assert "operator-cost sum" in svc.pretraining_sentence({"pretrain": {"set": "s", "networks": 4}})
    split = svc.pretraining_sentence({"pretrain": {"set": "s", "networks": 4, "proxy": "operator-cost sum (channel blocks)"}})
    assert "channel blocks" in split and "self-training" not in split
    assert svc.pretraining_sentence({}) is None
    # The command line writes the merged file and records a measured validation figure.
    out = tmp_path / "merged.pt"
    assert cli_main(["latency", "merge", str(tpath), str(spath), "--out", str(out), "--val-mape", "4.2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["members"] == 3
    q = load_predictor(out)
    assert q.meta["val_mape"] == 4.2
    np.testing.assert_allclose(q.predict(graphs), merged.predict(graphs), rtol=1e-5)
    # --half stores the weights as float16: a smaller file, the same predictions to ~1e-3.
    small = tmp_path / "merged_half.pt"
    assert cli_main(["latency", "merge", str(tpath), str(spath), "--out", str(small), "--half", "--json"]) == 0
    capsys.readouterr()
    assert small.stat().st_size < 0.75 * out.stat().st_size
    h = load_predictor(small)
    assert h.meta["weights_stored_as"] == "float16"
    np.testing.assert_allclose(h.predict(graphs), merged.predict(graphs), rtol=1e-2)
    # Fits on other training networks, or scored on other test networks, do not merge.
    other = NARFormerLatency(**TINY).fit(graphs[2:], y[2:], val=(graphs[:2], y[:2]), seed=0)
    opath = other.save(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not fitted like|other training networks"):
        merge_narformer_ensembles([tpath, opath])
    student.meta["test_indices"] = [0, 2]
    with pytest.raises(ValueError, match="other test networks"):
        merge_narformer_ensembles([tpath, student.save(tmp_path / "s2.pt")])
    assert cli_main(["latency", "merge", str(tpath), str(tmp_path / "none.pt"), "--out", str(out)]) != 0
    assert "no latency checkpoint" in capsys.readouterr().err
