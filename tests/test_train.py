import json
import shutil

import numpy as np
import pytest
import torch

from narformer_core.model import NARFormer, NARFormerConfig
from narformer_core.train import CKPT_FORMAT, check_compatible, lr_factor, param_groups, train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]

FIELDS = {"step", "epoch", "loss", "mse", "rank", "cons", "val_tau", "val_tau_ema", "lr", "wall_s"}


def rows(run_dir, drop=("wall_s",)):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if k not in drop} for ln in lines if ln.strip()]


def test_metrics_log_has_the_documented_fields_and_increasing_steps(tiny_run, make_train_config):
    run_dir, summary = tiny_run
    cfg = make_train_config()
    log = rows(run_dir, drop=())
    assert len(log) == 4
    for r in log:
        assert set(r) >= FIELDS
        assert all(np.isfinite(r[k]) for k in FIELDS)
        assert -1.0 <= r["val_tau"] <= 1.0 and -1.0 <= r["val_tau_ema"] <= 1.0
        assert r["loss"] == pytest.approx(r["mse"] + 0.1 * r["rank"] + 0.5 * r["cons"], rel=1e-6)
    steps_per_epoch = 64 // 16
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert [r["step"] for r in log] == [steps_per_epoch * e for e in (1, 2, 3, 4)]
    assert all(b["wall_s"] >= a["wall_s"] for a, b in zip(log, log[1:]))
    # The logged lr is the one used by the epoch's last step: warm-up then linear decay.
    total = steps_per_epoch * cfg.epochs
    for r in log:
        assert r["lr"] == pytest.approx(cfg.lr * lr_factor(r["step"] - 1, total, cfg.warmup))


def test_a_short_run_reduces_the_training_loss(tiny_run):
    run_dir, summary = tiny_run
    log = rows(run_dir)
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]
    assert log[-1]["mse"] < log[0]["mse"]


def test_run_folder_files(tiny_run):
    run_dir, summary = tiny_run
    for name in ("config.json", "metrics.jsonl", "latest.pt", "best.pt", "best_ema.pt", "status.json", "summary.json"):
        assert (run_dir / name).exists(), name
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "finished" and status["epoch"] == 4
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert summary["state"] == "finished" and summary["steps"] == 16
    assert (summary["n_train"], summary["n_val"]) == (64, 32)
    assert summary["selected"] in {"best", "best_ema", "last", "last_ema"}
    assert summary["val_tau"] == max(summary["candidates"].values())
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["d_model"] == 32 and config["labels"] == "analog"


def test_checkpoints_load_with_weights_only(tiny_run):
    run_dir, _ = tiny_run
    log = rows(run_dir)
    for name in ("best.pt", "best_ema.pt", "latest.pt"):
        ck = torch.load(run_dir / name, map_location="cpu", weights_only=True)
        assert ck["format"] == CKPT_FORMAT
        assert ck["model_config"]["d_model"] == 32
        model = NARFormer(NARFormerConfig(**ck["model_config"]))
        model.load_state_dict(ck["state_dict"])          # strict: every tensor present
        assert ck["task"]["space"] == "nb201" and ck["task"]["labels"] == "analog"
        train_idx, val_idx = ck["split"]["train"].numpy(), ck["split"]["val"].numpy()
        assert len(train_idx) == 64 and len(val_idx) == 32 and not set(train_idx) & set(val_idx)
    best = torch.load(run_dir / "best.pt", weights_only=True)
    best_ema = torch.load(run_dir / "best_ema.pt", weights_only=True)
    assert best["val_tau"] == max(r["val_tau"] for r in log)
    assert best_ema["val_tau"] == max(r["val_tau_ema"] for r in log)
    assert log[best["epoch"] - 1]["val_tau"] == best["val_tau"]
    latest = torch.load(run_dir / "latest.pt", weights_only=True)
    assert latest["epoch"] == 3 and latest["step"] == 16     # 0-based epoch index of the last epoch
    diff = [k for k in latest["state_dict"] if not torch.equal(latest["state_dict"][k], latest["ema_state_dict"][k])]
    assert diff, "the EMA weights should differ from the raw weights"


def test_resume_gives_the_same_log_as_one_uninterrupted_run(tiny_run, make_train_config, tmp_path):
    reference = rows(tiny_run[0])

    def stop_after_two(row):
        if row["epoch"] == 2:
            (tmp_path / "STOP").touch()

    first = train(make_train_config(), tmp_path, resume=False, progress=False, on_epoch=stop_after_two)
    assert first == {"state": "stopped", "epoch": 2}
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "stopped"
    assert [r["step"] for r in rows(tmp_path)] == [4, 8]
    # As if the process died after logging epoch 3 but before saving: the resume drops that line.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({**reference[2], "loss": 123.0, "wall_s": 0.0}) + "\n")
    summary = train(make_train_config(), tmp_path, resume=True, progress=False)
    assert summary["state"] == "finished" and summary["steps"] == 16
    resumed = rows(tmp_path)
    assert [r["step"] for r in resumed] == [4, 8, 12, 16]      # no duplicate, none missing
    assert resumed == reference                               # bit-identical numbers


def test_same_seed_same_curve_other_seed_other_curve(tiny_run, make_train_config, tmp_path):
    reference = rows(tiny_run[0])
    train(make_train_config(), tmp_path / "again", resume=False, progress=False)
    assert rows(tmp_path / "again") == reference
    train(make_train_config(seed=1), tmp_path / "other", resume=False, progress=False)
    assert [r["loss"] for r in rows(tmp_path / "other")] != [r["loss"] for r in reference]


def test_resume_with_another_model_config_is_refused(tiny_run, make_train_config, tmp_path):
    shutil.copy(tiny_run[0] / "latest.pt", tmp_path / "latest.pt")
    cfg = make_train_config(model={"d_model": 48, "n_heads": 2, "ffn_dim": 64, "depths": [1, 1, 1, 1]})
    with pytest.raises(ValueError, match=r"different model config: \{'d_model': \(32, 48\)\}"):
        train(cfg, tmp_path, resume=True, progress=False)
    ck = torch.load(tiny_run[0] / "latest.pt", weights_only=True)
    check_compatible(ck, NARFormerConfig(**ck["model_config"]))       # the same config passes
    with pytest.raises(ValueError, match="not a NAR-Former checkpoint"):
        check_compatible({"state_dict": {}}, NARFormerConfig())


def test_stop_file_stops_after_the_current_epoch(make_train_config, tmp_path):
    (tmp_path / "STOP").touch()
    out = train(make_train_config(), tmp_path, resume=False, progress=False)
    assert out == {"state": "stopped", "epoch": 1}
    assert not (tmp_path / "STOP").exists()
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "stopped" and status["epoch"] == 1
    assert not (tmp_path / "summary.json").exists()
    latest = torch.load(tmp_path / "latest.pt", weights_only=True)
    assert latest["epoch"] == 0 and latest["step"] == 4
    assert [r["epoch"] for r in rows(tmp_path)] == [1]


def test_lr_schedule_and_weight_decay_groups():
    total, warm = 100, 0.1
    f = [lr_factor(s, total, warm) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:10], f[1:10]))                  # linear warm-up
    assert all(a > b for a, b in zip(f[10:], f[11:])) and f[-1] > 0      # linear decay towards 0
    assert lr_factor(total, total, warm) == 0.0
    model = NARFormer(NARFormerConfig(d_model=32, n_heads=2, ffn_dim=64, depths=(1, 1, 1, 1)))
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"])
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert {"ln_f.weight", "ln_f.bias", "head.bias", "encoder.0.ln1.weight"} <= no_decay_names
    assert "stages.0.queries" in {names[id(p)] for p in decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_checkpoints_are_saved_with_cpu_tensors_in_their_own_containers(tmp_path):
    from collections import OrderedDict

    from narformer_core.train import _atomic_save, _on_cpu

    w = torch.ones(2, requires_grad=True) * 2
    obj = {"state_dict": OrderedDict(a=w), "rng": [torch.zeros(1)], "pair": (1, torch.ones(1)), "x": "s"}
    out = _on_cpu(obj)
    assert isinstance(out["state_dict"], OrderedDict) and isinstance(out["pair"], tuple)
    assert not out["state_dict"]["a"].requires_grad and out["x"] == "s"
    _atomic_save(obj, tmp_path / "c.pt")
    back = torch.load(tmp_path / "c.pt", weights_only=True)
    assert torch.equal(back["state_dict"]["a"], torch.full((2,), 2.0))


def test_shipped_checkpoints_load_on_a_cpu_only_machine_without_map_location():
    """A checkpoint trained on a GPU must have been re-saved with CPU tensors (package_checkpoint.py)."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "assets" / "checkpoints"
    shipped = sorted([*folder.glob("*.pt"), *folder.glob("*.pt.part*")])     # ensembles' part files too
    assert shipped
    def tensors(obj):
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from tensors(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from tensors(v)

    for p in shipped:
        ck = torch.load(p, weights_only=True)       # no map_location: fails on CUDA storages
        weights = ck["members"] if "members" in ck else ck["state_dict"]     # an ensemble: every member
        assert {t.device.type for t in tensors(weights)} == {"cpu"}, p.name
        assert {t.device.type for t in tensors(ck)} == {"cpu"}, p.name


def test_precision_choices_resolve_and_bad_ones_are_refused(monkeypatch):
    from narformer_core import train as train_module

    cpu = torch.device("cpu")
    assert train_module.resolve_precision("fp32", cpu) == "fp32"
    assert train_module.resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(train_module, "bf16_is_native", lambda device: True)
    assert train_module.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(train_module, "bf16_is_native", lambda device: False)
    assert train_module.resolve_precision("auto", cpu) == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        train_module.resolve_precision("fp16", cpu)


def test_bf16_training_learns_is_reproducible_and_records_its_precision(make_train_config, tmp_path):
    cfg = make_train_config(precision="bf16", model=dict(make_train_config().model, dropout=0.1))
    train(cfg, tmp_path / "a", resume=False, progress=False)
    train(cfg, tmp_path / "b", resume=False, progress=False)
    log = rows(tmp_path / "a")
    assert log == rows(tmp_path / "b")                          # same seed, same curve in bf16 too
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]
    assert json.loads((tmp_path / "a" / "config.json").read_text())["precision_used"] == "bf16"


def test_bf16_prediction_ranks_like_fp32(tiny_run, nb201_task):
    from narformer_core.metrics import kendall_tau
    from narformer_core.tokenizer import tokenize_cells
    from narformer_core.train import predict_tokens

    ck = torch.load(tiny_run[0] / "best.pt", weights_only=True)
    model = NARFormer(NARFormerConfig(**ck["model_config"]))
    model.load_state_dict(ck["state_dict"])
    tk = tokenize_cells(nb201_task.ops[:2000], nb201_task.adj)
    args = torch.from_numpy(tk.depth), torch.from_numpy(tk.nodes), None
    fp32, bf16 = predict_tokens(model, *args), predict_tokens(model, *args, precision="bf16")
    assert bf16.dtype == np.float32 and not np.array_equal(fp32, bf16)   # it did run in bf16
    assert kendall_tau(fp32, bf16) > 0.9


def test_chunked_tokenize_and_predict_equals_the_whole_space_at_once(tiny_run, nb201_task):
    from narformer_core.tokenizer import tokenize_cells
    from narformer_core.train import predict_cells, predict_tokens

    ck = torch.load(tiny_run[0] / "best.pt", weights_only=True)
    model = NARFormer(NARFormerConfig(**ck["model_config"]))
    model.load_state_dict(ck["state_dict"])
    ops = nb201_task.ops[:2500]
    tk = tokenize_cells(ops, nb201_task.adj)
    whole = predict_tokens(model, torch.from_numpy(tk.depth), torch.from_numpy(tk.nodes), None)
    np.testing.assert_allclose(predict_cells(model, ops, nb201_task.adj, batch=1000), whole, rtol=1e-5, atol=1e-6)
    assert predict_cells(model, ops[:0], nb201_task.adj).shape == (0,)
