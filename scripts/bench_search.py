"""Search comparison on NB201: random search, regularised evolution, predictor-guided evolution.

    nice -n 10 python scripts/bench_search.py                    # accuracy only, budgets 50/100/150, seeds 0-9
    nice -n 10 python scripts/bench_search.py --device pixel3 --latency-budget 5 --budgets 50,100

Each algorithm runs once per seed at the largest budget, searching on nb201-val; a smaller budget
b is the run's first b evaluations (no algorithm's decisions depend on the budget; the tests check
that a run with budget b is exactly that prefix). The best found is reported on nb201-test and
analog, with its regret to the best cell of the (feasible) space on each source.
Writes assets/results/search_<name>.json and .png.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from narformer_core.cli_search import _ints, _names, search_bench  # noqa: E402

OUT = ROOT / "assets" / "results"


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    algos = list(dict.fromkeys(r["algo"] for r in res["runs"]))
    budgets = res["budgets"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.3))
    for a in algos:
        curves = np.array([r["best_curve"] for r in res["runs"] if r["algo"] == a])
        x = np.arange(1, curves.shape[1] + 1)
        m, s = curves.mean(0), curves.std(0)
        ax.plot(x, m, label=a)
        ax.fill_between(x, m - s, m + s, alpha=0.15)
    top = res.get("space_best_search")
    if top is not None:
        ax.axhline(top, color="k", lw=0.8, ls="--", label=f"best in space ({top:.2f})")
    ax.set(xlabel="evaluations", ylabel=f"best found so far, {res['labels']} (%)",
           title=f"best so far (mean ± std over {len(res['seeds'])} seeds)")
    lo = min(np.mean([r["best_curve"][min(budgets) - 1] for r in res["runs"] if r["algo"] == a]) for a in algos)
    ax.set_ylim(lo - 1.0, (top or lo) + 0.3)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    # the reporting source that knows the most of the cells found (nb201-test lacks those < 90 %)
    src = min(res["test_labels"], key=lambda s: sum(r[f"test[{s}]"]["n_unknown"] for r in res["table"]))
    w = 0.8 / len(algos)
    for k, a in enumerate(algos):
        rows = [r for r in res["table"] if r["algo"] == a]
        y = [r[f"test[{src}]"]["mean"] for r in rows]
        e = [r[f"test[{src}]"]["std"] for r in rows]
        # an algorithm merged in at fewer budgets (--merge) keeps each bar over its own budget
        x = np.array([budgets.index(r["budget"]) for r in rows], dtype=float)
        bx.bar(x + k * w - 0.4 + w / 2, y, w, yerr=e, capsize=3, label=a)
    bx.set_xticks(range(len(budgets)), [f"budget {b}" for b in budgets])
    lo = min(r[f"test[{src}]"]["mean"] - r[f"test[{src}]"]["std"] for r in res["table"])
    hi = max(r[f"test[{src}]"]["mean"] + r[f"test[{src}]"]["std"] for r in res["table"])
    bx.set_ylim(lo - 0.3, hi + 0.3)
    bx.set(ylabel=f"{src} accuracy of the best found (%)", title=f"test accuracy of the architecture found ({src})")
    bx.grid(alpha=0.3, axis="y")
    bx.legend(fontsize=8)
    if res.get("device"):
        fig.suptitle(f"under {res['latency_budget_ms']} ms on {res['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_pareto(res: dict, fronts: dict, true_front: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    t = [p for p in true_front if p["acc"] is not None and p["acc"] > 80]
    ax.step([p["latency_ms"] for p in t], [p["acc"] for p in t], where="post", color="k", lw=1,
            label="front of the whole space")
    for a, front in fronts.items():
        f = [p for p in front if p["acc"] > 80]
        ax.plot([p["latency_ms"] for p in f], [p["acc"] for p in f], marker="o", ms=4, lw=1, drawstyle="steps-post",
                label=f"{a} (seed {res['seeds'][0]})")
    if res.get("latency_budget_ms"):
        ax.axvline(res["latency_budget_ms"], color="r", ls=":", label="latency budget")
    ax.set(xlabel=f"latency on {res['device']} (ms)", ylabel=f"{res['labels']} accuracy (%)",
           title="Pareto fronts of the evaluated cells")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def merge(old: dict, new: dict) -> dict:
    """``old`` with the algorithms of ``new`` added or replaced (same labels, seeds and device)."""
    for k in ("labels", "test_labels", "seeds", "device", "latency_budget_ms"):
        if old.get(k) != new.get(k):
            raise SystemExit(f"--merge: {k} differs ({old.get(k)!r} in the file, {new.get(k)!r} now)")
    algos = {r["algo"] for r in new["runs"]}
    out = dict(old)
    out["table"] = [r for r in old["table"] if r["algo"] not in algos] + new["table"]
    out["runs"] = [r for r in old["runs"] if r["algo"] not in algos] + new["runs"]
    out["budgets"] = sorted(set(old["budgets"]) | set(new["budgets"]))
    out["command"] = old.get("command", "") + " ; then " + new["command"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algos", default="random,evolution,predictor:gbdt,predictor:mlp")
    ap.add_argument("--budgets", default="50,100,150")
    ap.add_argument("--seeds", default="0-9")
    ap.add_argument("--device", default=None, help="latency device (HELP or nn-Meter name)")
    ap.add_argument("--latency-budget", type=float, default=None, help="ms")
    ap.add_argument("--name", default=None, help="output name (default nb201, or <device>_<budget>ms)")
    ap.add_argument("--merge", action="store_true",
                    help="add these algorithms' rows to the existing output file (replacing their old rows) "
                         "instead of overwriting it; labels, seeds and device must match")
    ap.add_argument("--replot", default=None, metavar="JSON", help="only redraw the figures of a saved result")
    args = ap.parse_args()
    if args.replot:
        path = Path(args.replot)
        res = json.loads(path.read_text())
        plot(res, path.with_suffix(".png"))
        if res.get("pareto_seed0"):
            plot_pareto(res, res["pareto_seed0"], res["pareto_space"], path.with_name(path.stem + "_pareto.png"))
        print(f"redrew the figures of {path}")
        return
    from narformer_core.search import run_search, space_pareto_front

    def progress(algo, seed, r):
        print(f"{algo:>15} seed={seed} best={r.best_acc:.2f} test={r.test['nb201-test']:.2f} "
              f"cpu {r.cpu_s:.1f}s", flush=True)

    algos, budgets, seeds = _names(args.algos), _ints(args.budgets, "--budgets"), _ints(args.seeds, "--seeds")
    res = search_bench(algos, budgets, seeds, device=args.device, latency_budget=args.latency_budget,
                       progress=progress)
    res["command"] = "python scripts/bench_search.py " + " ".join(sys.argv[1:])
    probe = run_search("random", 1, 0, device=args.device, latency_budget=args.latency_budget)
    res["space_best"] = probe.space_best
    res["space_best_search"] = probe.space_best[res["labels"]]["acc"]
    name = args.name or ("nb201" if not args.device else f"{args.device}_{args.latency_budget:g}ms")
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / f"search_{name}.json"
    if args.merge and out.exists():
        res = merge(json.loads(out.read_text()), res)
    if args.device:
        fronts = {r["algo"]: r["pareto"] for r in res["runs"] if r["seed"] == seeds[0]}
        true_front = space_pareto_front(args.device, res["labels"])
        res["pareto_seed0"] = fronts
        res["pareto_space"] = true_front
        plot_pareto(res, fronts, true_front, OUT / f"search_{name}_pareto.png")
    out.write_text(json.dumps(res, indent=1))
    plot(res, out.with_suffix(".png"))
    src = res["test_labels"]
    print(f"{'algo':>15} {'budget':>6} {'search (val)':>15} " + " ".join(f"{'test ' + s:>17} {'regret ' + s:>17}" for s in src))
    for r in res["table"]:
        cells = " ".join(f"{r[f'test[{s}]']['mean']:>9.3f} ± {r[f'test[{s}]']['std']:.3f} "
                         f"{r[f'regret[{s}]']['mean']:>9.3f} ± {r[f'regret[{s}]']['std']:.3f}"
                         + (f" ({r[f'test[{s}]']['n_unknown']} unknown)" if r[f'test[{s}]']['n_unknown'] else "")
                         for s in src)
        print(f"{r['algo']:>15} {r['budget']:>6} {r['search']['mean']:>8.3f} ± {r['search']['std']:.3f} {cells}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
