"""Ship a finished training run as a checkpoint in assets/checkpoints with its metadata.

    python scripts/package_checkpoint.py runs/f781 nb201-781

Copies the checkpoint that the run selected on validation (summary.json), evaluates it on the
whole space against every available label source, and writes NAME.json beside it: the training
config, split seed and sizes, epochs, labels, validation tau, the evaluation figures and the
run's metrics log (so the tau curve ships with the weights).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from narformer_core.runs import metrics_rows  # noqa: E402
from narformer_core.cli import evaluate_checkpoint, selected_checkpoint  # noqa: E402
from narformer_core.train import _on_cpu  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("name")
    ap.add_argument("--dest", default="assets/checkpoints")
    a = ap.parse_args()
    run = Path(a.run_dir)
    summary = json.loads((run / "summary.json").read_text())
    src = selected_checkpoint(run, summary)
    dest = Path(a.dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"{a.name}.pt"
    # Loaded and saved again rather than copied: a run trained on a GPU holds CUDA tensors, and
    # the shipped file must load on a CPU-only machine without a map_location.
    ck = torch.load(src, map_location="cpu", weights_only=True)
    torch.save(_on_cpu(ck), out)
    evaluation = evaluate_checkpoint(out)
    evaluation["checkpoint"] = str(out)
    config = json.loads((run / "config.json").read_text())
    meta = {
        "name": a.name,
        "made_by": f"python -m narformer_core train (config below), then scripts/package_checkpoint.py {a.run_dir} {a.name}",
        "selected_on_validation": summary,
        "train_config": config,
        "evaluation": evaluation,
        "metrics": metrics_rows(run),
    }
    (dest / f"{a.name}.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(evaluation, indent=2))


if __name__ == "__main__":
    main()
