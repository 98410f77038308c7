"""Predictor arena on NB201: Kendall's tau and time per predictor and train size, same splits.

    nice -n 10 python scripts/bench_arena.py                       # mlp, gin, gbdt, zen; 100/781/1563; seeds 0-2
    python scripts/bench_arena.py --train-sizes 100,781,1563,7813 --seeds 0-2
    python scripts/bench_arena.py --add-narformer runs/expA/best_ema.pt ...   # merge NAR-Former rows

Splits are ``tasks.split(task, n, 200, seed)`` for every predictor: a NAR-Former checkpoint trained
with ``python -m narformer_core train --labels nb201-val --train-size n --seed s`` used the same
cells, so ``--add-narformer`` scores it the same way (tau on every cell outside train and
validation, against nb201-val) and merges it into the saved table without rerunning the rest.
Writes assets/results/arena_nb201.json and arena_nb201.png.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from narformer_core.cli_search import ARENA_LABELS, _ints, _names, arena, arena_table  # noqa: E402

OUT = ROOT / "assets" / "results"


def narformer_row(path: str, labels: str = ARENA_LABELS, equivalence: str = "off") -> dict:
    """Score a NAR-Former checkpoint like the arena scores its predictors (``equivalence`` as in
    cli_search.arena: "off", its own outputs, or "mean" over equivalent cells)."""
    from narformer_core.metrics import kendall_tau
    from narformer_core.predictors import NARFormerPredictor
    from narformer_core.tasks import split

    pred = NARFormerPredictor.from_checkpoint(path)
    task = pred.task(labels, labels)
    tr, va = np.sort(pred.meta["train_idx"]), np.sort(pred.meta["val_idx"])
    seed = int(pred.meta["train_config"]["seed"])
    ref_tr, ref_va = split(task, len(tr), len(va), seed)
    if not (np.array_equal(tr, ref_tr) and np.array_equal(va, ref_va)):
        raise SystemExit(f"{path}: its split is not tasks.split(task, {len(tr)}, {len(va)}, {seed}); not comparable")
    unseen = ~np.isnan(task.y_test)
    unseen[tr] = unseen[va] = False
    extra = {}
    if equivalence == "mean":
        pred.equivalence = "off"
        own = pred.predict(task)
        extra["tau_own_outputs"] = kendall_tau(own[unseen], task.y_test[unseen])
    pred.equivalence = equivalence
    p = pred.predict(task)
    summary = Path(path).parent / "summary.json"
    train_s = json.loads(summary.read_text()).get("train_seconds") if summary.exists() else None
    return {"predictor": "narformer", "train_size": int(len(tr)), "seed": seed,
            "tau": kendall_tau(p[unseen], task.y_test[unseen]), "n_test": int(unseen.sum()),
            "fit_wall_s": train_s, "fit_cpu_s": None, "predict_wall_s": None, "predict_cpu_s": None,
            "equivalence": equivalence, **extra,
            "source": f"checkpoint {Path(path).parent.name}/{Path(path).name} "
                      f"({pred.meta['train_config'].get('epochs')} epochs)"}


def _merge(old: list[dict], new: list[dict]) -> list[dict]:
    """Runs of ``new`` replace those of ``old`` with the same predictor, train size and seed."""
    key = lambda r: (r["predictor"], r["train_size"], r["seed"])  # noqa: E731
    fresh = {key(r) for r in new}
    return [r for r in old if key(r) not in fresh] + new


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = sorted({r["predictor"] for r in res["table"]})
    for name in names:
        rows = sorted((r for r in res["table"] if r["predictor"] == name), key=lambda r: r["train_size"])
        n = [r["train_size"] for r in rows]
        ax.errorbar(n, [r["tau_mean"] for r in rows], yerr=[r["tau_std"] for r in rows], marker="o", capsize=3,
                    label=name)
        t = [r["fit_cpu_s"] if r["fit_cpu_s"] is not None else r["fit_wall_s"] for r in rows]
        if any(v is not None for v in t):
            bx.plot(n, [v if v is not None else np.nan for v in t], marker="o", label=name)
    ax.set(xscale="log", xlabel="training architectures", ylabel="Kendall's tau (unseen cells)",
           title=f"NB201 arena, labels {res['labels']} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    bx.set(xscale="log", yscale="log", xlabel="training architectures",
           ylabel="fit time, s (CPU s; where unknown, wall s)",
           title="time to fit (zen: none)")
    bx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predictors", default="mlp,gin,gbdt,zen")
    ap.add_argument("--train-sizes", default="100,781,1563")
    ap.add_argument("--seeds", default="0-2")
    ap.add_argument("--add-narformer", nargs="*", default=[], metavar="CHECKPOINT",
                    help="only merge these NAR-Former checkpoints into the saved table")
    ap.add_argument("--equivalence", choices=["off", "mean"], default="off",
                    help="score own outputs (off) or every predictor's outputs averaged over equivalent cells")
    ap.add_argument("--out", default=str(OUT / "arena_nb201.json"))
    ap.add_argument("--fresh", action="store_true", help="replace the saved runs instead of merging into them")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.read_text()) if out.exists() and not args.fresh else None
    if old is not None and {r.get("equivalence", "off") for r in old["runs"]} - {args.equivalence}:
        raise SystemExit(f"{out} holds runs scored with another --equivalence; use another --out, or --fresh")
    if args.add_narformer:
        if old is None:
            raise SystemExit(f"{out} does not exist yet: run the arena first")
        res = old
        res["runs"] = _merge(res["runs"], [narformer_row(p, equivalence=args.equivalence) for p in args.add_narformer])
    else:
        def progress(r):
            print(f"{r['predictor']:>5} n={r['train_size']:<5} seed={r['seed']} tau={r['tau']:.4f} "
                  f"fit {r['fit_cpu_s']:.1f} CPU s / {r['fit_wall_s']:.1f} s", flush=True)

        res = arena(_names(args.predictors), _ints(args.train_sizes, "--train-sizes"), _ints(args.seeds, "--seeds"),
                    progress=progress, equivalence=args.equivalence)
        cmd = "python scripts/bench_arena.py " + " ".join(sys.argv[1:])
        if old is not None:
            res["runs"] = _merge(old["runs"], res["runs"])
            cmd = old.get("command", "") + " ; " + cmd
        res["command"] = cmd
    res["table"] = arena_table(res["runs"])
    out.write_text(json.dumps(res, indent=1))
    plot(res, out.with_suffix(".png"))
    print(f"{'predictor':>10} {'n':>5} {'seeds':>5} {'tau':>15} {'fit CPU s':>9} {'fit wall s':>10}")
    for r in res["table"]:
        print(f"{r['predictor']:>10} {r['train_size']:>5} {r['n_seeds']:>5} {r['tau_mean']:>8.4f} ± {r['tau_std']:.4f} "
              f"{r['fit_cpu_s'] if r['fit_cpu_s'] is not None else '-':>9} "
              f"{r['fit_wall_s'] if r['fit_wall_s'] is not None else '-':>10}")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
