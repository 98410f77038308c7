"""Ensembles of runs on one split: the init seed, building, loading, predicting, refusing."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from narformer_core.ensemble import ENSEMBLE_FORMAT, EnsembleError, build_ensemble, validation_tau
from narformer_core.model import NARFormerEnsemble
from narformer_core.predictors import CheckpointError, NARFormerPredictor
from narformer_core.train import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def member_runs(tmp_path_factory, make_train_config):
    """Three finished tiny runs: split seed 0 with init seeds 1 and 2, and split seed 5."""
    out = {}
    for name, kw in {"a": {"init_seed": 1}, "b": {"init_seed": 2}, "other_split": {"seed": 5}}.items():
        d = tmp_path_factory.mktemp(f"member_{name}")
        before = torch.get_num_threads()
        try:
            train(make_train_config(epochs=2, **kw), d, resume=False, progress=False)
        finally:
            torch.set_num_threads(before)
        out[name] = d
    return out


def test_init_seed_changes_the_weights_but_not_the_split(member_runs):
    a = torch.load(member_runs["a"] / "latest.pt", weights_only=True)
    b = torch.load(member_runs["b"] / "latest.pt", weights_only=True)
    assert torch.equal(a["split"]["train"], b["split"]["train"])
    assert torch.equal(a["split"]["val"], b["split"]["val"])
    w = "head.weight"
    assert not torch.equal(a["state_dict"][w], b["state_dict"][w])
    assert a["train_config"]["init_seed"] == 1 and b["train_config"]["init_seed"] == 2


def test_without_init_seed_a_run_is_seeded_by_its_split_seed(tmp_path, make_train_config):
    # The option must not change runs that do not use it (the shipped checkpoints' recipe).
    rows = []
    for name, kw in {"plain": {}, "explicit": {"init_seed": 0}}.items():
        train(make_train_config(epochs=1, **kw), tmp_path / name, resume=False, progress=False)
        rows.append([{k: v for k, v in json.loads(ln).items() if k != "wall_s"}
                     for ln in (tmp_path / name / "metrics.jsonl").read_text().splitlines()])
    assert rows[0] == rows[1]


def test_the_ensemble_predicts_the_mean_of_its_members(member_runs, tmp_path, nb201_task):
    paths = [member_runs["a"] / "best.pt", member_runs["b"] / "best.pt"]
    ck = build_ensemble(paths)
    assert ck["format"] == ENSEMBLE_FORMAT and len(ck["members"]) == 2
    torch.save(ck, tmp_path / "ens.pt")
    ens = NARFormerPredictor.from_checkpoint(tmp_path / "ens.pt")
    assert isinstance(ens.model, NARFormerEnsemble)
    singles = [NARFormerPredictor.from_checkpoint(p) for p in paths]
    assert ens.model.n_params() == sum(s.model.n_params() for s in singles)
    assert [m["source"] for m in ens.meta["members"]] == [str(p) for p in paths]

    idx = np.arange(0, 15625, 97)
    tk = nb201_task.tokens("nerf")
    with torch.inference_mode():
        raw = [s.model(torch.from_numpy(tk.depth[idx]), torch.from_numpy(tk.nodes[idx])).numpy() for s in singles]
    expected = ens.to_percent(np.mean(raw, axis=0))
    ens.equivalence = "off"             # the members' own outputs (averaging over cells: test_nb201_equivalence)
    np.testing.assert_allclose(ens.predict(nb201_task, idx), expected, rtol=1e-5)
    ens.equivalence = "mean"
    # The validation figure is tau on the split's own validation cells.
    assert -1.0 <= validation_tau(ens) <= 1.0


def test_float16_members_halve_the_file_and_predict_almost_the_same(member_runs, tmp_path, nb201_task):
    paths = [member_runs["a"] / "best.pt", member_runs["b"] / "best.pt"]
    torch.save(build_ensemble(paths), tmp_path / "full.pt")
    torch.save(build_ensemble(paths, float16=True), tmp_path / "half.pt")
    full_size, half_size = (tmp_path / "full.pt").stat().st_size, (tmp_path / "half.pt").stat().st_size
    assert half_size < 0.6 * full_size
    full = NARFormerPredictor.from_checkpoint(tmp_path / "full.pt").predict(nb201_task)
    half = NARFormerPredictor.from_checkpoint(tmp_path / "half.pt").predict(nb201_task)
    assert np.abs(full - half).max() < 0.5       # percent points, on a quantile-mapped scale
    assert next(NARFormerPredictor.from_checkpoint(tmp_path / "half.pt").model.parameters()).dtype == torch.float32


def test_members_of_another_split_are_refused(member_runs):
    with pytest.raises(EnsembleError, match="another split"):
        build_ensemble([member_runs["a"] / "best.pt", member_runs["other_split"] / "best.pt"])
    with pytest.raises(EnsembleError, match="at least two"):
        build_ensemble([member_runs["a"] / "best.pt"])


def test_damaged_ensemble_files_get_one_sentence(member_runs, tmp_path):
    ck = build_ensemble([member_runs["a"] / "best.pt", member_runs["b"] / "best.pt"])
    cases = {
        "no_members": {**ck, "members": "not a list"},
        "too_many": {**ck, "members": ck["members"] * 40},
        "bad_member": {**ck, "members": [ck["members"][0], {"model_config": 3}]},
        "wrong_shape": {**ck, "members": [ck["members"][0],
                                          {**ck["members"][1], "model_config": {**ck["model_config"], "d_model": 48,
                                                                                "n_heads": 2}}]},
    }
    expected = {"no_members": "without a list of members", "too_many": "more than the 64",
                "bad_member": "member 1 has no model config", "wrong_shape": "member 1 does not match"}
    for name, doctored in cases.items():
        torch.save(doctored, tmp_path / f"{name}.pt")
        with pytest.raises(CheckpointError, match=expected[name]):
            NARFormerPredictor.from_checkpoint(tmp_path / f"{name}.pt")


def test_package_script_writes_the_ensemble_and_its_validation_figure(member_runs, tmp_path):
    r = subprocess.run([sys.executable, "scripts/package_ensemble.py", "ens", str(member_runs["a"]),
                        str(member_runs["b"]), "--dest", str(tmp_path), "--float16", "--no-test"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "ens.json").read_text())
    assert meta["float16"] and len(meta["members"]) == 2
    assert meta["val_tau"] == pytest.approx(json.loads(r.stdout.splitlines()[0])["val_tau"])
    ens = NARFormerPredictor.from_checkpoint(tmp_path / "ens.pt")
    assert ens.meta["val_tau"] == pytest.approx(meta["val_tau"])
    assert ens.meta["kind"] == "ensemble"


def test_a_distilled_student_keeps_the_teachers_split_and_is_selected_on_true_labels(
        member_runs, tmp_path, make_train_config):
    from narformer_core.cli import evaluate_checkpoint
    from narformer_core.ensemble import distill

    torch.save(build_ensemble([member_runs["a"] / "best.pt", member_runs["b"] / "best.pt"]), tmp_path / "t.pt")
    teacher = NARFormerPredictor.from_checkpoint(tmp_path / "t.pt")
    before = torch.get_num_threads()
    try:
        out = distill(tmp_path / "t.pt", tmp_path / "student", make_train_config(epochs=1, batch_size=512))
    finally:
        torch.set_num_threads(before)
    student = NARFormerPredictor.from_checkpoint(out)
    assert not isinstance(student.model, NARFormerEnsemble)
    np.testing.assert_array_equal(np.sort(student.meta["train_idx"]), np.sort(teacher.meta["train_idx"]))
    np.testing.assert_array_equal(student.meta["val_idx"], np.sort(teacher.meta["val_idx"]))
    assert student.meta["distilled_from"]["teacher_members"] == 2
    assert student.meta["distilled_from"]["cells_with_teacher_labels"] == 15625 - 32
    # It trained on the teacher's predictions for all cells but the 32 validation ones ...
    assert json.loads((tmp_path / "student" / "config.json").read_text())["train_size"] == 15625 - 32
    # ... and its validation tau is measured on their own labels, as the run logged it.
    summary = json.loads((tmp_path / "student" / "summary.json").read_text())
    assert validation_tau(student) == pytest.approx(summary["val_tau"], abs=1e-6)
    res = evaluate_checkpoint(out)
    assert res["n_train"] == 64 and res["n_unseen"] == 15625 - 64 - 32


def test_int8_members_take_a_quarter_and_keep_the_ranking(member_runs, tmp_path, nb201_task):
    from narformer_core.metrics import kendall_tau

    paths = [member_runs["a"] / "best.pt", member_runs["b"] / "best.pt"]
    torch.save(build_ensemble(paths), tmp_path / "full.pt")
    torch.save(build_ensemble(paths, int8=True), tmp_path / "q.pt")
    assert (tmp_path / "q.pt").stat().st_size < 0.4 * (tmp_path / "full.pt").stat().st_size
    full = NARFormerPredictor.from_checkpoint(tmp_path / "full.pt").predict(nb201_task)
    q = NARFormerPredictor.from_checkpoint(tmp_path / "q.pt")
    assert next(q.model.parameters()).dtype == torch.float32
    assert kendall_tau(q.predict(nb201_task), full) > 0.98
    # Damaged scales are refused with one sentence.
    ck = build_ensemble(paths, int8=True)
    name = next(iter(ck["members"][1]["int8_scales"]))
    ck["members"][1]["int8_scales"][name] = torch.ones(3)
    torch.save(ck, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=f"member 1: int8 tensor {name} does not match its scales"):
        NARFormerPredictor.from_checkpoint(tmp_path / "bad.pt")


def test_large_ensembles_are_saved_across_part_files_and_load_whole(member_runs, tmp_path, nb201_task):
    from narformer_core.ensemble import save_ensemble

    paths = [member_runs["a"] / "best.pt", member_runs["b"] / "best.pt", member_runs["a"] / "best_ema.pt"]
    ck = build_ensemble(paths)
    torch.save(ck, tmp_path / "one.pt")
    one_file = (tmp_path / "one.pt").stat().st_size
    files = save_ensemble(ck, tmp_path / "split.pt", max_file_bytes=one_file // 2)
    assert [f.name for f in files] == ["split.pt", "split.pt.part2", "split.pt.part3"]
    assert all(f.stat().st_size < one_file * 0.6 for f in files)
    whole = NARFormerPredictor.from_checkpoint(tmp_path / "one.pt")
    parts = NARFormerPredictor.from_checkpoint(tmp_path / "split.pt")
    assert len(parts.model.members) == 3
    np.testing.assert_array_equal(parts.predict(nb201_task), whole.predict(nb201_task))
    # Saving again in one file removes the parts that no main file lists any more.
    assert save_ensemble(ck, tmp_path / "split.pt") == [tmp_path / "split.pt"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["one.pt", "split.pt"]


def test_missing_damaged_or_escaping_part_files_get_one_sentence(member_runs, tmp_path):
    from narformer_core.ensemble import save_ensemble

    ck = build_ensemble([member_runs["a"] / "best.pt", member_runs["b"] / "best.pt"])
    save_ensemble(ck, tmp_path / "e.pt", max_file_bytes=1)       # one member per file
    part = tmp_path / "e.pt.part2"
    data = part.read_bytes()
    part.write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(CheckpointError, match="does not match the SHA-256 that e.pt records"):
        NARFormerPredictor.from_checkpoint(tmp_path / "e.pt")
    part.unlink()
    with pytest.raises(CheckpointError, match=r"keeps some of its members in e.pt.part2, which is not beside it"):
        NARFormerPredictor.from_checkpoint(tmp_path / "e.pt")
    main = torch.load(tmp_path / "e.pt", weights_only=True)
    main["member_files"][0]["file"] = "../elsewhere.pt.part2"
    torch.save(main, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="not a part file name"):
        NARFormerPredictor.from_checkpoint(tmp_path / "bad.pt")


def test_an_ensemble_source_adds_all_its_members(member_runs, tmp_path, nb201_task):
    a, b = member_runs["a"] / "best.pt", member_runs["b"] / "best.pt"
    torch.save(build_ensemble([a, b], int8=True), tmp_path / "ab.pt")
    merged = build_ensemble([tmp_path / "ab.pt", member_runs["a"] / "best_ema.pt"], int8=True)
    assert len(merged["members"]) == 3
    assert merged["members"][0]["source"] == f"{a} (via ab.pt)"
    # Re-quantizing int8 weights gives back the same integers: merging loses nothing more.
    src = torch.load(tmp_path / "ab.pt", weights_only=True)["members"][1]["state_dict"]
    for k, v in src.items():
        if v.dtype == torch.int8:
            assert torch.equal(merged["members"][1]["state_dict"][k], v)
    with pytest.raises(EnsembleError, match="another split"):
        build_ensemble([tmp_path / "ab.pt", member_runs["other_split"] / "best.pt"])
