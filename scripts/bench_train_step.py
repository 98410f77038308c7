"""One training step of the paper-size NAR-Former, eager against torch.compile, and what dropout costs.

    python scripts/bench_train_step.py [--compile] [--steps 6] [--json]

The step is the paper's: batch 256 NB201 cells, dropout 0.1, the augmented twin through the
model with gradients (two forward passes), MSE + 0.5 x L1 consistency, AdamW. Figures are medians
over ``--steps`` steps after one warm-up step (its time is reported apart: with --compile it holds
the compilation), with the spread beside them. ``--dropout-micro`` times one dropout against the
matrix product of the same activation, the two costs that dominate a CPU step.
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

from narformer_core.model import NARFormer, NARFormerConfig  # noqa: E402
from narformer_core.spaces import nb201  # noqa: E402
from narformer_core.tokenizer import tokenize_cells  # noqa: E402


def step_times(compiled: bool, steps: int, batch: int) -> dict:
    torch.manual_seed(0)
    tk = tokenize_cells(nb201.op_id_matrix(nb201.enumerate_all()[:batch]), nb201.adjacency())
    depth, nodes = torch.from_numpy(tk.depth), torch.from_numpy(tk.nodes)
    y = torch.rand(batch)
    model = NARFormer(NARFormerConfig()).train()
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        p, twin = forward(depth, nodes), forward(depth, nodes)
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
    med = statistics.median(times)
    return {"compiled": compiled, "first_step_s": round(first, 2), "median_step_s": round(med, 3),
            "min_step_s": round(min(times), 3), "max_step_s": round(max(times), 3),
            "pairs_per_s": round(batch / med, 1)}


def dropout_micro(repeats: int = 20) -> dict:
    x = torch.randn(256 * 9, 768)
    w = torch.randn(768, 192)

    def timed(fn):
        fn()
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        return round((time.perf_counter() - t) / repeats * 1e3, 2)

    return {"activation": list(x.shape), "dropout_ms": timed(lambda: F.dropout(x, 0.1, True)),
            "matmul_ms": timed(lambda: x @ w)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--compile", action="store_true", help="also time the torch.compile'd model")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dropout-micro", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res = {"torch_threads": torch.get_num_threads(), "eager": step_times(False, a.steps, a.batch)}
    if a.compile:
        res["compiled"] = step_times(True, a.steps, a.batch)
    if a.dropout_micro:
        res["dropout_micro"] = dropout_micro()
    print(json.dumps(res) if a.json else "\n".join(f"{k:16s} {v}" for k, v in res.items()))


if __name__ == "__main__":
    main()
