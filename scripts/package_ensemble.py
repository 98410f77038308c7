"""Ship finished training runs on one split as one ensemble checkpoint, with its metadata.

    python scripts/package_ensemble.py nb201-1563-ensemble runs/ens1563/m1 runs/ens1563/m2 ... [--dest DIR]

Takes from each run the checkpoint it selected on validation (summary.json); a source that is a
checkpoint file instead of a run folder is taken as it is (an ensemble file adds all its members,
which is how two ensembles of one split merge). Checks that all share
the split, labels and target map, saves NAME.pt (loadable like any checkpoint, weights_only=True),
computes the ensemble's validation tau (the 200 validation cells of the split, training labels:
the figure that decides whether it replaces a single checkpoint), evaluates it on the whole space
against every label source, and writes NAME.json with the members, both figures and the command.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from narformer_core.runs import metrics_rows  # noqa: E402
from narformer_core.cli import evaluate_checkpoint, selected_checkpoint  # noqa: E402
from narformer_core.ensemble import build_ensemble, save_ensemble, validation_tau  # noqa: E402
from narformer_core.predictors import NARFormerPredictor, load_weights_only  # noqa: E402
from narformer_core.train import _on_cpu  # noqa: E402


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _first_config(sources: list[str], ck: dict) -> dict:
    """The first run's config.json (model and machine details included), else the file's own config."""
    folder = Path(sources[0])
    return json.loads((folder / "config.json").read_text()) if folder.is_dir() else ck.get("train_config", {})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("runs", nargs="+", help="finished run folders (each with summary.json), or checkpoint files")
    ap.add_argument("--dest", default="assets/checkpoints")
    ap.add_argument("--float16", action="store_true", help="store the weights at half width (half the file)")
    ap.add_argument("--int8", action="store_true", help="store matrices as int8 with a scale per row (a quarter)")
    ap.add_argument("--no-test", action="store_true", help="validation figure only (no whole-space evaluation)")
    a = ap.parse_args()
    summaries, paths = [], []
    for r in a.runs:
        if Path(r).is_file():            # a checkpoint as it is (a whole ensemble adds all its members)
            src = load_weights_only(Path(r))
            summaries.append({"checkpoint": r, "val_tau": src.get("val_tau"),
                              "members": len(src.get("members", ())) + sum(
                                  e.get("members", 0) for e in src.get("member_files", ())) or 1})
            paths.append(Path(r))
            continue
        s = json.loads((Path(r) / "summary.json").read_text())
        config = json.loads((Path(r) / "config.json").read_text())
        log = metrics_rows(r)
        summaries.append({"run": r, "init_seed": config.get("init_seed"),
                          **{k: s.get(k) for k in ("selected", "val_tau", "epochs", "train_seconds")},
                          "metrics": log})      # each member's tau curve ships with the weights
        paths.append(selected_checkpoint(Path(r), s))
    ck = _on_cpu(build_ensemble(paths, float16=a.float16, int8=a.int8))
    dest = Path(a.dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"{a.name}.pt"
    save_ensemble(ck, out)
    t0 = time.perf_counter()
    ck["val_tau"] = validation_tau(NARFormerPredictor.from_checkpoint(out))
    files = save_ensemble(ck, out)
    meta = {"name": a.name,
            "made_by": "python scripts/package_ensemble.py " + " ".join([a.name, *a.runs])
                       + (" --float16" if a.float16 else "") + (" --int8" if a.int8 else ""),
            "float16": a.float16, "int8": a.int8,
            "members": summaries,
            "n_members": len(ck["members"]),
            "files": [{"file": f.name, "bytes": f.stat().st_size} for f in files],
            "val_tau": ck["val_tau"],
            "member_val_tau_mean": _mean(s["val_tau"] for s in summaries if "run" in s),
            "train_config_of_first": _first_config(a.runs, ck)}
    print(json.dumps({"val_tau": meta["val_tau"], "member_val_tau_mean": meta["member_val_tau_mean"],
                      "members": meta["n_members"], "files": meta["files"], "validation_seconds": round(time.perf_counter() - t0, 2)}))
    if not a.no_test:
        meta["evaluation"] = evaluate_checkpoint(out)
        print(json.dumps(meta["evaluation"], indent=2))
    (dest / f"{a.name}.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
