"""Command line: ``python -m narformer_core <command> ...``.

Errors the user can fix (bad file, bad arch string, missing data) print one line on stderr and
exit with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Named training presets. "paper" is the published protocol; "fast" is our time-to-accuracy
# protocol (see README: fewer, cheaper steps reaching the same Kendall's tau).
PRESETS: dict[str, dict] = {
    "paper": {"epochs": 4000, "batch_size": 256, "lr": 1e-4, "twin_grad": True, "target": "fraction",
              "model": {"dropout": 0.1}},
    # fast: chosen on validation tau at 781 cells (assets/results/time_to_accuracy/, README table).
    "fast": {"epochs": 200, "batch_size": 64, "lr": 5e-4, "twin_grad": False, "target": "quantile",
             "warmup": 0.05, "lambda_rank": 0.1, "rank_loss": "logistic", "lambda_cons": 0.05,
             "model": {"d_model": 128, "n_heads": 4, "ffn_dim": 512, "depths": [4, 1, 1, 1], "dropout": 0.0}},
}


class UserError(Exception):
    """Printed as one line; exit status 2."""


def _train_config(args) -> "TrainConfig":
    from .train import TrainConfig

    preset = dict(PRESETS[args.preset])
    model = dict(preset.pop("model", {}))
    model.update(_model_overrides(getattr(args, "model_json", None)))
    if getattr(args, "dropout", None) is not None:
        model["dropout"] = args.dropout
    for k in ("epochs", "batch_size", "lr", "weight_decay", "lambda_rank", "rank_loss", "lambda_cons", "threads",
              "precision"):
        if getattr(args, k, None) is not None:
            preset[k] = getattr(args, k)
    if getattr(args, "twin_grad", None) is not None:
        preset["twin_grad"] = args.twin_grad
    if getattr(args, "equivalents", None):
        preset["equivalents"] = True
    return TrainConfig(space=args.space, labels=args.labels, test_labels=args.test_labels,
                       train_size=args.train_size, val_size=args.val_size, seed=args.seed,
                       init_seed=getattr(args, "init_seed", None),
                       test_every=getattr(args, "test_every", 0) or 0, device=args.device,
                       data_dir=args.data_dir, model=model, **preset)


def _model_overrides(text: str | None) -> dict:
    """``--model-json`` -> NARFormerConfig overrides, checked here so a typo is one clear line."""
    if not text:
        return {}
    from dataclasses import fields

    from .model import NARFormerConfig

    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--model-json is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise UserError(f"--model-json must be a JSON object of model settings, got {type(d).__name__}")
    known = {f.name for f in fields(NARFormerConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UserError(f"--model-json has unknown model settings {unknown}; known: {', '.join(sorted(known))}")
    return d


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", default="nb201", choices=["nb201", "nb101"])
    p.add_argument("--train-size", type=int, default=781)
    p.add_argument("--seed", type=int, default=0, help="split seed (which cells train and validate)")
    p.add_argument("--init-seed", type=int,
                   help="seed of the weights, batch order and dropout (default: --seed); "
                        "runs on one split with different init seeds can form an ensemble")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    add_protocol_args(p)


def add_protocol_args(p: argparse.ArgumentParser) -> None:
    """Labels, preset and its overrides: the training flags `train`, `bench` and `sweep` share."""
    p.add_argument("--labels", default=None, help="training/validation label source (default: the space's embedded default)")
    p.add_argument("--test-labels", default=None, help="label source for testing (default: --labels)")
    p.add_argument("--val-size", type=int, default=200)
    p.add_argument("--preset", default="fast", choices=sorted(PRESETS))
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--dropout", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--lambda-rank", type=float, help="weight of the ranking loss term")
    p.add_argument("--rank-loss", choices=["l1", "logistic"],
                   help="ranking term: the paper's L1 on label differences, or a logistic loss over all pairs")
    p.add_argument("--lambda-cons", type=float, help="weight of the consistency (twin) term")
    p.add_argument("--model-json", default=None,
                   help='model config overrides as JSON, e.g. \'{"d_model": 64, "depths": [2, 1, 1, 1]}\'')
    p.add_argument("--twin-grad", dest="twin_grad", action="store_true", default=None,
                   help="backpropagate through the augmented twin (as the paper)")
    p.add_argument("--no-twin-grad", dest="twin_grad", action="store_false")
    p.add_argument("--equivalents", action="store_true", default=None,
                   help="NB201: feed each training cell as a random functionally equivalent cell every step")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"],
                   help="training arithmetic: fp32 (default), bf16 autocast, or auto (bf16 where native)")
    p.add_argument("--data-dir", default=None)


def evaluate_checkpoint(path, labels=None, test_labels=None, data_dir=None, precision: str = "fp32",
                        equivalence: str = "mean", validation_only: bool = False) -> dict:
    """Kendall's tau of a checkpoint: on all architectures and on the unseen ones.

    ``precision`` "bf16" predicts under bfloat16 autocast (faster where native; README, Speed).
    ``equivalence`` "mean" (default) averages NB201 predictions over equivalent cells, "off" reports
    the network's own outputs (README, "Equivalent cells"). ``validation_only``: only the validation
    figures, for choosing between checkpoints without seeing a test figure."""
    from .metrics import kendall_tau
    from .predictors import NARFormerPredictor

    pred = NARFormerPredictor.from_checkpoint(path)
    pred.precision = precision
    pred.equivalence = equivalence
    task = pred.task(labels, test_labels, data_dir)
    if validation_only:
        val = np.asarray(pred.meta["val_idx"], dtype=np.int64)
        val = val[~np.isnan(task.y[val])]
        return {"checkpoint": str(path), "space": task.space, "labels": task.labels, "n_val": int(len(val)),
                "val_tau": pred.meta.get("val_tau"), "equivalence": equivalence, "precision": precision,
                "val_tau_as_predicted": kendall_tau(pred.predict(task, val), task.y[val])}
    t0 = time.perf_counter()
    p = pred.predict(task)
    predict_s = time.perf_counter() - t0
    seen = np.zeros(len(task), bool)
    seen[pred.meta["train_idx"]] = True
    seen[pred.meta["val_idx"]] = True
    ok = ~np.isnan(task.y_test)
    out = {"checkpoint": str(path), "space": task.space, "labels": task.labels, "test_labels": task.test_labels,
           "kendall_tau_all": kendall_tau(p[ok], task.y_test[ok]),
           "kendall_tau_unseen": kendall_tau(p[ok & ~seen], task.y_test[ok & ~seen]),
           "n_test": int(ok.sum()), "n_unseen": int((ok & ~seen).sum()),
           "n_train": int(len(pred.meta["train_idx"])), "n_val": int(len(pred.meta["val_idx"])),
           "checkpoint_kind": pred.meta.get("kind"), "epoch": pred.meta.get("epoch"),
           "val_tau": pred.meta.get("val_tau"), "predict_seconds": round(predict_s, 3), "precision": precision}
    if task.space == "nb201":
        # val_tau above is what the checkpoint recorded when it was trained (raw outputs); this is
        # the same 200 validation cells scored with the predictions reported here.
        out["equivalence"] = equivalence
        val = np.asarray(pred.meta["val_idx"])
        val = val[~np.isnan(task.y[val])]
        out["val_tau_as_predicted"] = kendall_tau(p[val], task.y[val])
        # Cross-source figures: the same predictions against other measurements of accuracy.
        from .data import DataUnavailable
        from .data.nb201 import load_labels

        other = {}
        for src in ("nb201-val", "nb201-test", "analog"):
            try:
                y = load_labels(src, data_dir)
            except DataUnavailable:
                continue
            m = ~np.isnan(y)
            other[src] = {"kendall_tau": kendall_tau(p[m], y[m]), "n": int(m.sum())}
        out["tau_vs_sources"] = other
    return out


def cmd_train(args) -> int:
    from .train import train

    cfg = _train_config(args)
    out = Path(args.out or f"runs/{cfg.space}-n{cfg.train_size}-s{cfg.seed}")
    summary = train(cfg, out, resume=not args.fresh, progress=not args.quiet, max_seconds=args.max_seconds)
    print(json.dumps({"run_dir": str(out), **summary}, indent=None if args.json else 2))
    return 0


def cmd_evaluate(args) -> int:
    res = evaluate_checkpoint(args.checkpoint, args.labels, args.test_labels, args.data_dir, args.precision,
                              args.equivalence, args.validation_only)
    print(json.dumps(res, indent=None if args.json else 2))
    return 0


def selected_checkpoint(run_dir: Path, summary: dict) -> Path:
    name = {"best": "best.pt", "best_ema": "best_ema.pt"}.get(summary["selected"], "latest.pt")
    return Path(run_dir) / name


def cmd_bench(args) -> int:
    if args.what == "accuracy":
        from .train import train

        cfg = _train_config(args)
        ctx = tempfile.TemporaryDirectory() if args.out is None else None
        run_dir = Path(ctx.name if ctx else args.out)
        try:
            summary = train(cfg, run_dir, resume=False, progress=not args.quiet)
            res = evaluate_checkpoint(selected_checkpoint(run_dir, summary), None, cfg.test_labels, cfg.data_dir)
        finally:
            if ctx:
                ctx.cleanup()
        res.update({"train_seconds": summary["train_seconds"], "selected": summary["selected"],
                    "selected_on": "validation tau only", "epochs": cfg.epochs, "preset": args.preset,
                    "seed": cfg.seed})
        print(json.dumps(res, indent=None if args.json else 2))
        return 0
    handler = BENCHES.get(args.what)
    if handler is None:
        raise UserError(f"unknown benchmark {args.what!r}; known: accuracy, {', '.join(sorted(BENCHES))}")
    return handler(args)


# Extensions add benchmark handlers: name -> function(args) -> exit status.
BENCHES: dict = {}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m narformer_core", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an accuracy predictor (progress bar; resumable)")
    _add_train_args(p)
    p.add_argument("--out", help="run folder (default runs/<space>-n<size>-s<seed>)")
    p.add_argument("--test-every", type=int, default=0, help="log test tau every N epochs (reporting only)")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming the run folder")
    p.add_argument("--max-seconds", type=float, default=None, help="save and stop after this long")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="Kendall's tau of a checkpoint on the whole space")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--labels", default=None, help="override the checkpoint's label source")
    p.add_argument("--test-labels", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                   help="prediction arithmetic (bf16: faster where the CPU has it natively)")
    p.add_argument("--equivalence", choices=["mean", "off"], default="mean",
                   help="NB201: average each cell's prediction over its functionally equivalent cells "
                        "(mean, the default) or report the network's own outputs (off)")
    p.add_argument("--validation-only", action="store_true",
                   help="print only the validation figures (to choose between checkpoints before any test figure)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("bench", help="benchmarks that print figures")
    p.add_argument("what", help="accuracy (others are added by extensions: arena, latency)")
    _add_train_args(p)
    p.add_argument("--out", default=None, help="keep the run folder here (default: a temporary folder)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
    bench_extra = p
    # Other command families register themselves here (search, latency, ...), each in its own
    # module with register(subparsers, bench_parser) so no single file grows without bound.
    import importlib

    for name in EXTENSIONS:
        try:
            mod = importlib.import_module(f".{name}", __package__)
        except ModuleNotFoundError as e:
            if e.name and e.name.endswith(name):
                continue
            raise
        mod.register(sub, bench_extra)
    return ap


EXTENSIONS = ("cli_search", "cli_latency", "cli_sweep")


def main(argv=None) -> int:
    from .data import DataUnavailable
    from .graph import GraphError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, GraphError, DataUnavailable, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
