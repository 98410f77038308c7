"""Command line for search and the predictor arena (registered by cli.py).

  python -m narformer_core search --algo predictor --budget 100 --seed 0 --json
  python -m narformer_core search --algo evolution --device-latency pixel3 --latency-budget 5
  python -m narformer_core bench arena --json
  python -m narformer_core bench search --json
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from .arena import arena_table  # noqa: F401  (the bench's table; scripts/bench_arena.py imports it from here)

ARENA_PREDICTORS = ("mlp", "gin", "gbdt", "zen")
ARENA_TRAIN_SIZES = (100, 781, 1563)
# The long NAR-Former runs train on NB201 validation accuracy; the arena matches them by default.
ARENA_LABELS = "nb201-val"


def _ints(text: str, what: str) -> list[int]:
    """'0,1,2' or '0-9' (or both: '0-4,8') -> a list of whole numbers."""
    import re

    from .cli import UserError

    out: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        rng = re.fullmatch(r"(\d+)-(\d+)", part)
        if rng:
            out.extend(range(int(rng.group(1)), int(rng.group(2)) + 1))
        elif re.fullmatch(r"-?\d+", part):
            out.append(int(part))
        elif part:
            raise UserError(f"{what} must be whole numbers like '0,1,2' or '0-9', got {text!r}")
    if not out:
        raise UserError(f"{what} is empty")
    return out


def _names(text: str) -> list[str]:
    return [s.strip() for s in str(text).split(",") if s.strip()]


def _add_once(p: argparse.ArgumentParser, flag: str, **kw) -> None:
    """Add an option to the shared bench parser unless another extension already did."""
    if flag not in p._option_string_actions:
        p.add_argument(flag, **kw)


def register(subparsers, bench_parser) -> None:
    from .baselines import PREDICTORS
    from .cli import BENCHES

    p = subparsers.add_parser("search", help="search NB201 with the benchmark as the oracle")
    p.add_argument("--algo", default="evolution", choices=["random", "evolution", "predictor"])
    p.add_argument("--budget", type=int, default=100, help="number of evaluations (accuracy lookups)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels", default="nb201-val", help="label source searched on (default nb201-val)")
    p.add_argument("--test-labels", default="nb201-test,analog",
                   help="comma-separated label sources the best found is reported on")
    p.add_argument("--device-latency", default=None, metavar="DEVICE",
                   help="report latency on this device (HELP or nn-Meter name) and the Pareto front")
    p.add_argument("--latency-budget", type=float, default=None, metavar="MS",
                   help="search only cells within this latency on --device-latency")
    p.add_argument("--predictor", default="gbdt", help=f"guide of --algo predictor: {', '.join(PREDICTORS)}")
    p.add_argument("--population", type=int, default=None, help="evolution: population size (20)")
    p.add_argument("--sample-size", type=int, default=None, help="evolution: tournament size (5)")
    p.add_argument("--n-select", type=int, default=None, help="predictor: cells evaluated per round (10)")
    p.add_argument("--history", action="store_true", help="include every evaluation in the output")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_search)

    _add_once(bench_parser, "--predictors", default=None,
              help=f"arena: comma-separated predictors (default {','.join(ARENA_PREDICTORS)})")
    _add_once(bench_parser, "--train-sizes", default=None,
              help=f"arena: comma-separated train sizes (default {','.join(map(str, ARENA_TRAIN_SIZES))})")
    _add_once(bench_parser, "--seeds", default=None, help="arena/search: seeds, '0,1,2' or '0-9'")
    _add_once(bench_parser, "--equivalence", choices=["off", "mean"], default="off",
              help="arena: score own outputs (off) or all predictors averaged over equivalent NB201 cells")
    _add_once(bench_parser, "--algos", default=None,
              help="search bench: random,evolution,predictor:gbdt (predictor:<name> picks the guide)")
    _add_once(bench_parser, "--budgets", default=None, help="search bench: budgets (default 50,100,150)")
    _add_once(bench_parser, "--device-latency", default=None, help="search bench: latency device")
    _add_once(bench_parser, "--latency-budget", type=float, default=None, help="search bench: latency budget, ms")
    BENCHES["arena"] = cmd_bench_arena
    BENCHES["search"] = cmd_bench_search


def _check_search_args(args) -> None:
    from .cli import UserError

    if args.budget is not None and args.budget < 1:
        raise UserError(f"--budget must be a positive number of evaluations, got {args.budget}")
    if args.latency_budget is not None:
        if args.device_latency is None:
            raise UserError("--latency-budget needs --device-latency DEVICE")
        if not args.latency_budget > 0:
            raise UserError(f"--latency-budget must be a positive number of ms, got {args.latency_budget}")
    if args.device_latency is not None:
        from .data.latency_sets import NB201_DEVICES
        if args.device_latency not in NB201_DEVICES:
            raise UserError(f"unknown latency device {args.device_latency!r}; known: {', '.join(NB201_DEVICES)}")


def cmd_search(args) -> int:
    from .baselines import PREDICTORS
    from .cli import UserError
    from .data.nb201 import LABEL_SOURCES
    from .search import run_search

    _check_search_args(args)
    tests = _names(args.test_labels)
    for s in [args.labels, *tests]:
        if s not in LABEL_SOURCES:
            raise UserError(f"unknown NB201 label source {s!r}; known: {', '.join(LABEL_SOURCES)}")
    if args.algo == "predictor" and args.predictor not in PREDICTORS:
        raise UserError(f"unknown predictor {args.predictor!r}; known: {', '.join(PREDICTORS)}")
    if args.algo != "evolution" and (args.population is not None or args.sample_size is not None):
        raise UserError("--population and --sample-size apply to --algo evolution only")
    if args.algo != "predictor" and args.n_select is not None:
        raise UserError("--n-select applies to --algo predictor only")
    opts = {}
    if args.algo == "evolution":
        opts = {k: v for k, v in (("population_size", args.population), ("sample_size", args.sample_size)) if v is not None}
    elif args.algo == "predictor" and args.n_select is not None:
        opts["n_select"] = args.n_select
    bar = None
    if not args.json and sys.stderr.isatty():
        from tqdm.auto import tqdm
        bar = tqdm(total=args.budget, desc=f"search {args.algo}", unit="eval")

    def progress(n, budget, best):
        if bar:
            bar.update(1)
            bar.set_postfix(best=f"{best:.2f}")

    res = run_search(args.algo, args.budget, args.seed, args.labels, tests, args.device_latency,
                     args.latency_budget, args.predictor, progress=progress, data_dir=args.data_dir, **opts)
    if bar:
        bar.close()
    print(json.dumps(res.to_dict(history=args.history), indent=None if args.json else 2))
    return 0


# ---------------------------------------------------------------------------- benches
def arena(predictors, train_sizes, seeds, labels=ARENA_LABELS, test_labels=None, val_size=200, data_dir=None,
          predictor_kwargs: dict | None = None, progress=None, equivalence: str = "off") -> dict:
    """Kendall's tau on every architecture outside the split, per predictor, train size and seed.

    Splits come from ``tasks.split(task, n, val_size, seed)``: the same cells for every predictor,
    and the same as a NAR-Former run trained with ``--train-size n --seed s``. ``equivalence``
    "off" scores each predictor's own outputs; "mean" scores every predictor's outputs averaged
    over equivalent cells (spaces/nb201.py), the same treatment for every predictor.
    """
    from .baselines import make_predictor
    from .metrics import kendall_tau
    from .spaces import nb201
    from .tasks import load_task, split

    if equivalence not in ("off", "mean"):
        raise ValueError(f"equivalence must be 'off' or 'mean', got {equivalence!r}")

    task = load_task("nb201", labels, test_labels or labels, data_dir)
    ok = ~np.isnan(task.y_test)
    runs = []
    for n in train_sizes:
        for seed in seeds:
            tr, va = split(task, n, val_size, seed)
            unseen = ok.copy()
            unseen[tr] = unseen[va] = False
            test_idx = np.flatnonzero(unseen)
            for name in predictors:
                p = make_predictor(name, **(predictor_kwargs or {}).get(name, {}))
                if hasattr(p, "equivalence"):
                    p.equivalence = "off"          # the arena applies one treatment to all, below
                t0, c0 = time.perf_counter(), time.process_time()
                p.fit(task, tr, va, seed=seed)
                fit_wall, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
                t0, c0 = time.perf_counter(), time.process_time()
                extra = {}
                if equivalence == "mean":      # the classes' means, and the same fit's own outputs
                    own, pred = nb201.own_and_class_means(test_idx, lambda members: p.predict(task, members))
                    extra["tau_own_outputs"] = kendall_tau(own, task.y_test[test_idx])
                else:
                    pred = p.predict(task, test_idx)
                pred_wall, pred_cpu = time.perf_counter() - t0, time.process_time() - c0
                row = {"predictor": name, "train_size": n, "seed": seed,
                       "tau": kendall_tau(pred, task.y_test[test_idx]), "n_test": int(test_idx.size),
                       "fit_wall_s": fit_wall, "fit_cpu_s": fit_cpu,
                       "predict_wall_s": pred_wall, "predict_cpu_s": pred_cpu, "equivalence": equivalence, **extra}
                # What the predictor chose on its validation cells (GBDT: tree size; torch: step),
                # so a saved run says how it was made; only scalars (NAR-Former's meta holds its split).
                meta = getattr(p, "meta", None) if name != "narformer" else None
                if meta:
                    row["selection"] = {k: v for k, v in meta.items() if isinstance(v, (int, float, str)) or v is None}
                runs.append(row)
                if progress:
                    progress(row)
    return {"labels": task.labels, "test_labels": task.test_labels, "val_size": val_size,
            "tau_on": "every architecture outside train and validation", "runs": runs,
            "table": arena_table(runs)}


def cmd_bench_arena(args) -> int:
    from .baselines import PREDICTORS
    from .cli import UserError

    if args.space != "nb201":
        raise UserError("the arena runs on NB201 (the Zen score and the long runs are NB201)")
    names = _names(args.predictors or ",".join(ARENA_PREDICTORS))
    bad = [n for n in names if n not in PREDICTORS]
    if bad:
        raise UserError(f"unknown predictor(s) {', '.join(bad)}; known: {', '.join(PREDICTORS)}")
    sizes = _ints(args.train_sizes or ",".join(map(str, ARENA_TRAIN_SIZES)), "--train-sizes")
    seeds = _ints(args.seeds or "0,1,2", "--seeds")
    if min(sizes) < 2:
        raise UserError(f"--train-sizes must be at least 2, got {min(sizes)}")
    kw = {}
    if "narformer" in names and args.epochs:
        kw["narformer"] = {"epochs": args.epochs}

    def progress(row):
        if not args.quiet:
            print(f"{row['predictor']:>9} n={row['train_size']:<5} seed={row['seed']} tau={row['tau']:.4f} "
                  f"fit {row['fit_wall_s']:.1f}s", file=sys.stderr, flush=True)

    res = arena(names, sizes, seeds, args.labels or ARENA_LABELS, args.test_labels, args.val_size, args.data_dir,
                kw, progress, getattr(args, "equivalence", "off"))
    print(json.dumps(res, indent=None if args.json else 2))
    return 0


def search_bench(algos, budgets, seeds, labels="nb201-val", test_labels=("nb201-test", "analog"), device=None,
                 latency_budget=None, data_dir=None, progress=None) -> dict:
    """Each algorithm once per seed at the largest budget; smaller budgets are prefixes of it
    (no algorithm's decisions depend on the budget: tests/test_search.py checks it)."""
    from .search import run_search, summarize

    top = max(budgets)
    rows, per_run = [], []
    for algo in algos:
        base, _, guide = algo.partition(":")
        results = []
        for seed in seeds:
            r = run_search(base, top, seed, labels, test_labels, device, latency_budget,
                           **({"predictor": guide or "gbdt"} if base == "predictor" else {}), data_dir=data_dir)
            results.append(r)
            per_run.append({"algo": algo, "seed": seed, "wall_s": r.wall_s, "cpu_s": r.cpu_s,
                            "best_curve": [float(x) for x in r.best_curve()],
                            **{f"best_at_{b}": r.prefix(b).to_dict(history=False)["best"] for b in budgets},
                            **({"pareto": r.pareto} if r.pareto else {})})
            if progress:
                progress(algo, seed, r)
        for b in budgets:
            rows.append({"algo": algo, "budget": b, **summarize([r.prefix(b) for r in results]),
                         "cpu_s_per_run_at_max_budget": round(float(np.mean([r.cpu_s for r in results])), 3)})
    return {"labels": labels, "test_labels": list(test_labels), "budgets": list(budgets), "seeds": list(seeds),
            "device": device, "latency_budget_ms": latency_budget, "table": rows, "runs": per_run}


def cmd_bench_search(args) -> int:
    from .baselines import PREDICTORS
    from .cli import UserError
    from .data.nb201 import LABEL_SOURCES

    algos = _names(args.algos or "random,evolution,predictor:gbdt")
    for a in algos:
        base, _, guide = a.partition(":")
        if base not in ("random", "evolution", "predictor") or (guide and (base != "predictor" or guide not in PREDICTORS)):
            raise UserError(f"unknown search {a!r}: use random, evolution or predictor:<{'|'.join(PREDICTORS)}>")
    budgets = _ints(args.budgets or "50,100,150", "--budgets")
    if min(budgets) < 1:
        raise UserError(f"--budgets must be positive, got {min(budgets)}")
    seeds = _ints(args.seeds or "0-9", "--seeds")
    labels = args.labels or "nb201-val"
    tests = _names(args.test_labels or "nb201-test,analog")
    for s in [labels, *tests]:
        if s not in LABEL_SOURCES:
            raise UserError(f"unknown NB201 label source {s!r}; known: {', '.join(LABEL_SOURCES)}")
    _check_search_args(argparse.Namespace(budget=None, latency_budget=args.latency_budget,
                                          device_latency=args.device_latency))

    def progress(algo, seed, r):
        if not args.quiet:
            print(f"{algo:>16} seed={seed} best={r.best_acc:.2f} cpu {r.cpu_s:.1f}s", file=sys.stderr, flush=True)

    res = search_bench(algos, budgets, seeds, labels, tests, args.device_latency, args.latency_budget,
                       args.data_dir, progress)
    print(json.dumps(res, indent=None if args.json else 2))
    return 0
