"""One training step of the paper-size NAR-Former: what dropout masks, bfloat16 and compilation buy.

    python scripts/bench_train_step.py [--variants reference,masks,bf16] [--compile] [--steps 6] [--json]

The step is the paper's: batch 256 NB201 cells, dropout 0.1, the augmented twin through the
model with gradients (one forward pass over batch + twins, as train.py runs it), MSE + 0.5 x L1
consistency, AdamW. Variants, all timed in one process on the same machine so their ratios hold
even where the absolute figures drift with load:

    reference  float32 and torch's own dropout masks (the step as it was up to session 6)
    masks      float32 and the model's cheap CPU dropout masks (model.dropout)
    bf16       the cheap masks and bfloat16 autocast (train --precision bf16)

Figures are medians over ``--steps`` steps after one warm-up step (its time is reported apart: with
--compile it holds the compilation), with the spread beside them; "pairs/s" counts the batch's
architectures per second (each with its twin), the issue's unit. ``--dropout-micro`` times one
dropout mask each way against the matrix product of the same activation.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from narformer_core import model as model_module  # noqa: E402
from narformer_core.model import NARFormer, NARFormerConfig  # noqa: E402
from narformer_core.spaces import nb201  # noqa: E402
from narformer_core.tokenizer import tokenize_cells  # noqa: E402
from narformer_core.train import autocast, bf16_is_native  # noqa: E402

VARIANTS = {"reference": ("fp32", False), "masks": ("fp32", True), "bf16": ("bf16", True)}


def step_times(variant: str, compiled: bool, steps: int, batch: int) -> dict:
    precision, cheap_masks = VARIANTS[variant]
    cheap = model_module.dropout
    # The reference swaps the model's mask drawing for torch's (same dropout, costlier masks).
    model_module.dropout = cheap if cheap_masks else (lambda x, p, training: F.dropout(x, p, training))
    try:
        torch.manual_seed(0)
        tk = tokenize_cells(nb201.op_id_matrix(nb201.enumerate_all()[:batch]), nb201.adjacency())
        depth, nodes = torch.from_numpy(tk.depth), torch.from_numpy(tk.nodes)
        both_depth, both_nodes = torch.cat([depth, depth]), torch.cat([nodes, nodes])
        y = torch.rand(batch)
        model = NARFormer(NARFormerConfig()).train()
        forward = torch.compile(model) if compiled else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        cpu = torch.device("cpu")

        def step():
            with autocast(precision, cpu):
                p, twin = forward(both_depth, both_nodes).float().chunk(2)
            loss = F.mse_loss(p, y) + 0.5 * (p - twin).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t = time.perf_counter()
        step()
        first = time.perf_counter() - t
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    finally:
        model_module.dropout = cheap
    med = statistics.median(times)
    return {"variant": variant, "compiled": compiled, "first_step_s": round(first, 2),
            "median_step_s": round(med, 3), "min_step_s": round(min(times), 3),
            "max_step_s": round(max(times), 3), "pairs_per_s": round(batch / med, 1)}


def dropout_micro(repeats: int = 20) -> dict:
    x = torch.randn(2 * 256 * 9, 768)
    w = torch.randn(768, 192)

    def timed(fn):
        fn()
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        return round((time.perf_counter() - t) / repeats * 1e3, 2)

    return {"activation": list(x.shape), "torch_dropout_ms": timed(lambda: F.dropout(x, 0.1, True)),
            "cheap_dropout_ms": timed(lambda: model_module.dropout(x, 0.1, True)),
            "matmul_fp32_ms": timed(lambda: x @ w)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="reference,masks,bf16",
                    help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--compile", action="store_true", help="also time each variant torch.compile'd")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dropout-micro", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    res = {"torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "bf16_native": bf16_is_native(torch.device("cpu")), "steps": []}
    for v in names:
        res["steps"].append(step_times(v, False, a.steps, a.batch))
        if a.compile:
            res["steps"].append(step_times(v, True, a.steps, a.batch))
    base = next((r["pairs_per_s"] for r in res["steps"] if r["variant"] == "reference" and not r["compiled"]), None)
    if base:
        for r in res["steps"]:
            r["x_reference"] = round(r["pairs_per_s"] / base, 2)
    if a.dropout_micro:
        res["dropout_micro"] = dropout_micro()
    if a.json:
        print(json.dumps(res))
        return
    for k, v in res.items():
        if k != "steps":
            print(f"{k:16s} {v}")
    for r in res["steps"]:
        print(f"{r['variant']:10s} compiled={r['compiled']!s:5s} {r['pairs_per_s']:7.1f} pairs/s  "
              f"step {r['median_step_s']} s ({r['min_step_s']}-{r['max_step_s']})  x{r.get('x_reference', '-')}")


if __name__ == "__main__":
    main()
