"""What averaging over equivalent NB201 cells buys, measured on fresh single runs.

    python scripts/bench_equivalence.py --train-size 781 --seeds 1-4 --epochs 100 --precision bf16 \
        --inputs raw,canonical --json

For every split seed and input kind it trains one fast-preset model (one thread), selects its
checkpoint on validation as usual, and scores its predictions on the 200 validation cells and on
all 15,625 cells, with and without the class mean (spaces/nb201.py, "Functional equivalence"):

    raw        cells tokenized as they are (what every shipped checkpoint does)
    canonical  every cell tokenized as its class representative (nb201.canonical), in training
               and prediction: the network cannot tell equivalent cells apart, so averaging is moot
    augmented  raw cells, and every training step feeds each training cell as a random
               equivalent cell (train --equivalents)

One JSON line per run (``--json``), or a table. Decisions use the ``val*`` columns only.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from narformer_core.cli import PRESETS, selected_checkpoint  # noqa: E402
from narformer_core.cli_search import _ints  # noqa: E402
from narformer_core.metrics import kendall_tau  # noqa: E402
from narformer_core.predictors import NARFormerPredictor  # noqa: E402
from narformer_core.spaces import nb201  # noqa: E402
from narformer_core.tasks import AccuracyTask, load_task, split  # noqa: E402
from narformer_core.train import TrainConfig, train  # noqa: E402

INPUTS = ("raw", "canonical", "augmented")


def canonical_task(task: AccuracyTask) -> AccuracyTask:
    """The same cells and labels, each tokenized as its class representative."""
    cells = [nb201.canonical(c) for c in nb201.enumerate_all()]
    return AccuracyTask(task.space, task.labels, task.test_labels, nb201.op_id_matrix(cells), task.adj,
                        task.n_nodes, task.y, task.y_test, task.ids)


def run(inputs: str, seed: int, args) -> dict:
    task = load_task("nb201", args.labels, data_dir=args.data_dir)
    if inputs == "canonical":
        task = canonical_task(task)
    preset = copy.deepcopy(PRESETS["fast"])
    model = preset.pop("model")
    cfg = TrainConfig(space="nb201", labels=task.labels, train_size=args.train_size, seed=seed, threads=1,
                      precision=args.precision, data_dir=args.data_dir, model=model,
                      equivalents=inputs == "augmented", **{**preset, "epochs": args.epochs})
    with tempfile.TemporaryDirectory() as d:
        summary = train(cfg, d, resume=False, progress=False, task=task)
        pred = NARFormerPredictor.from_checkpoint(selected_checkpoint(Path(d), summary))
    pred.equivalence = "off"
    own = pred.predict(task)
    mean = nb201.mean_over_equivalents(own)
    _, val = split(task, args.train_size, 200, seed)
    return {"inputs": inputs, "seed": seed, "train_size": args.train_size, "epochs": args.epochs,
            "selected": summary["selected"], "train_seconds": summary["train_seconds"],
            "val": kendall_tau(own[val], task.y[val]), "val_mean": kendall_tau(mean[val], task.y[val]),
            "all": kendall_tau(own, task.y), "all_mean": kendall_tau(mean, task.y)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-size", type=int, default=781)
    ap.add_argument("--seeds", default="1-4", help="split seeds, '1,2' or '1-4'")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--inputs", default="raw,canonical", help=f"comma list of {', '.join(INPUTS)}")
    ap.add_argument("--labels", default="nb201-val")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    kinds = [k.strip() for k in args.inputs.split(",") if k.strip()]
    bad = [k for k in kinds if k not in INPUTS]
    if bad:
        ap.error(f"unknown input kind(s) {', '.join(bad)}; known: {', '.join(INPUTS)}")
    for seed in _ints(args.seeds, "--seeds"):
        for kind in kinds:
            row = run(kind, seed, args)
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(f"{kind:9s} seed {seed}: val {row['val']:.4f} -> {row['val_mean']:.4f} averaged, "
                      f"all {row['all']:.4f} -> {row['all_mean']:.4f} ({row['train_seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
