"""Speed of the accuracy pipeline on this machine: tokenize + predict all 15,625 NB201 cells, and
training throughput (training architectures per second, the "pairs/s" of the issue) per preset,
each in float32 and in bfloat16 autocast (--precisions).

    python scripts/bench_speed.py [--repeats 3] [--train-epochs 2] [--precisions fp32,bf16]
                                  [--checkpoint assets/checkpoints/nb201-781.pt ...] [--json]

With --checkpoint, each shipped checkpoint also predicts all cells in every precision: its
Kendall tau against its labels in each, and between its float32 and bfloat16 predictions, say how
much the faster arithmetic reorders the ranking (1.0: not at all).

Figures are medians over repeats; the spread (min..max) is printed beside them because timings on
a shared machine drift with load.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from narformer_core.cli import PRESETS  # noqa: E402
from narformer_core.model import NARFormer, NARFormerConfig  # noqa: E402
from narformer_core.spaces import nb201  # noqa: E402
from narformer_core.tokenizer import tokenize_cells  # noqa: E402
from narformer_core.metrics import kendall_tau  # noqa: E402
from narformer_core.predictors import NARFormerPredictor  # noqa: E402
from narformer_core.train import TrainConfig, bf16_is_native, predict_cells, predict_tokens, train  # noqa: E402


def timed(fn, repeats):
    out, times = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def checkpoint_speed(path: str, cells, precisions: list[str], repeats: int) -> dict:
    """Tokenize + predict all cells with a checkpoint, per precision (members summed for ensembles).

    The timed whole-space prediction ends, as NARFormerPredictor's does, with the mean over
    equivalent cells; the chunked one and ``*_own_outputs`` are the network's outputs alone."""
    predictor = NARFormerPredictor.from_checkpoint(path)
    out, preds, own = {"params": predictor.model.n_params()}, {}, {}
    for prec in precisions:
        def whole():          # tokenize the space, predict it, average over equivalent cells (the default)
            tk = tokenize_cells(nb201.op_id_matrix(cells), nb201.adjacency(), scheme=predictor.scheme)
            raw = predict_tokens(predictor.model, torch.from_numpy(tk.depth), torch.from_numpy(tk.nodes), None,
                                 precision=prec)
            return raw, nb201.mean_over_equivalents(raw)

        def chunked():        # tokenize and predict 1,024 cells at a time (train.predict_cells)
            return predict_cells(predictor.model, nb201.op_id_matrix(cells), nb201.adjacency(),
                                 scheme=predictor.scheme, precision=prec)
        (own[prec], preds[prec]), out[f"tokenize_plus_predict_{prec}"] = timed(whole, repeats)
        chunk_pred, out[f"chunked_tokenize_plus_predict_{prec}"] = timed(chunked, repeats)
        out[f"chunked_max_abs_diff_{prec}"] = float(np.abs(chunk_pred - own[prec]).max())
    labels = predictor.task().y               # the checkpoint's own label source, all cells
    for prec, pred in preds.items():
        out[f"kendall_tau_all_{prec}"] = round(kendall_tau(pred, labels), 4)
        out[f"kendall_tau_all_{prec}_own_outputs"] = round(kendall_tau(own[prec], labels), 4)
        if prec != "fp32" and "fp32" in preds:
            out[f"tau_fp32_vs_{prec}"] = round(kendall_tau(preds["fp32"], pred), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-epochs", type=int, default=2)
    ap.add_argument("--train-size", type=int, default=781)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--checkpoint", action="append", default=[], help="also time this checkpoint (repeatable)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    precisions = [x.strip() for x in a.precisions.split(",") if x.strip()]
    res = {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "bf16_native": bf16_is_native(torch.device("cpu"))}

    cells = nb201.enumerate_all()
    tk, res["tokenize_all"] = timed(lambda: tokenize_cells(nb201.op_id_matrix(cells), nb201.adjacency()), a.repeats)
    torch.manual_seed(0)
    model = NARFormer(NARFormerConfig()).eval()
    res["model_params"] = model.n_params()
    depth, nodes = torch.from_numpy(tk.depth), torch.from_numpy(tk.nodes)
    for prec in precisions:
        _, res[f"predict_all_{prec}"] = timed(lambda: predict_tokens(model, depth, nodes, None, precision=prec),
                                              a.repeats)
        res[f"tokenize_plus_predict_{prec}_median_s"] = (res["tokenize_all"]["median_s"]
                                                        + res[f"predict_all_{prec}"]["median_s"])
    for path in a.checkpoint:
        res[f"checkpoint {path}"] = checkpoint_speed(path, cells, precisions, a.repeats)

    if not a.skip_train:
        # The paper's model size (4.04 M parameters, dropout 0.1) trained with the fast protocol
        # (batch 64, no gradient through the twin): the throughput the issue asks for at that size.
        paper_model_fast = {**PRESETS["fast"], "model": {"dropout": PRESETS["paper"]["model"]["dropout"]}}
        for (name, preset), prec in itertools.product(
                [*PRESETS.items(), ("paper_model_fast_protocol", paper_model_fast)], precisions):
            p = dict(preset)
            model_kw = p.pop("model")
            p["epochs"] = a.train_epochs
            cfg = TrainConfig(labels="analog", train_size=a.train_size, model=model_kw, save_every_s=1e9,
                              precision=prec, **p)
            with tempfile.TemporaryDirectory() as d:
                s = train(cfg, d, resume=False, progress=False)
            res[f"train_{name}_{prec}"] = {
                                    "pairs_per_s": round(a.train_size * a.train_epochs / s["train_seconds"], 1),
                                    "seconds_per_epoch": round(s["train_seconds"] / a.train_epochs, 2),
                                    "batch_size": p["batch_size"], "twin_grad": p["twin_grad"],
                                    "dropout": model_kw.get("dropout"),
                                    "model_params": NARFormer(NARFormerConfig(**{"token_dim": 192, "depth_dim": 192, **model_kw})).n_params()}
    if a.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:32s} {v}")


if __name__ == "__main__":
    main()
