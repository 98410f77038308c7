"""Distil an ensemble checkpoint into one model (one model's prediction time, the ensemble's ranking).

    python scripts/distill_ensemble.py assets/checkpoints/nb201-1563.pt --out runs/distill1563 \
        --epochs 15 --threads 1 [--package nb201-1563-distilled]

The student (fast preset unless overridden) learns the teacher's predicted accuracy of every cell
but the validation cells, is selected on the validation cells' measured labels, and keeps the
teacher's split (narformer_core.ensemble.distill). --package copies it to assets/checkpoints with a
JSON of how it was made and its evaluation (test figures, computed after selection).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from narformer_core.runs import metrics_rows  # noqa: E402
from narformer_core.cli import PRESETS, evaluate_checkpoint  # noqa: E402
from narformer_core.ensemble import distill  # noqa: E402
from narformer_core.train import TrainConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("teacher")
    ap.add_argument("--out", required=True, help="the student's run folder")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--init-seed", type=int)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--package", help="name to ship it under in assets/checkpoints")
    a = ap.parse_args()
    preset = dict(PRESETS["fast"])
    model = preset.pop("model")
    preset.update(epochs=a.epochs, batch_size=a.batch_size, threads=a.threads)
    if a.lr is not None:
        preset["lr"] = a.lr
    cfg = TrainConfig(model=model, init_seed=a.init_seed, **preset)
    student = distill(a.teacher, a.out, cfg, progress=True)
    made = json.loads((Path(a.out) / "distilled.json").read_text())
    print(json.dumps({"student": str(student), "val_tau": made["summary"]["val_tau"],
                      "selected": made["summary"]["selected"], "teacher_val_tau": made["teacher_val_tau"],
                      "train_seconds": made["summary"]["train_seconds"]}))
    if a.package:
        dest = Path("assets/checkpoints") / f"{a.package}.pt"
        torch.save(torch.load(student, weights_only=True), dest)
        evaluation = evaluate_checkpoint(dest)
        meta = {"name": a.package, "made_by": "python scripts/distill_ensemble.py " + " ".join(sys.argv[1:]),
                **made, "train_config": json.loads((Path(a.out) / "config.json").read_text()),
                "evaluation": evaluation,
                "metrics": metrics_rows(a.out)}
        dest.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        print(json.dumps(evaluation, indent=2))


if __name__ == "__main__":
    main()
