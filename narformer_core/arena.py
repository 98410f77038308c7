"""The predictor arena's results: per-run rows to one row per (predictor, train size), and tables
for the Rankings page. Plain functions, no Streamlit: the page, the bench and the tests share them.

The file is ``$NARFORMER_RESULTS_DIR/arena_nb201.json`` (default ``assets/results/``), written by
``scripts/bench_arena.py`` (the same function as ``python -m narformer_core bench arena``). Its
``runs`` are the truth; its ``table`` is recomputed from them, so a hand-merged file cannot
disagree with itself.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ARENA_FILE = "arena_nb201.json"
# The same arena with every predictor's predictions averaged over equivalent NB201 cells
# (scripts/bench_arena.py --equivalence mean; README, "Equivalent cells").
EQUIVALENCE_FILE = "arena_nb201_equivalence.json"
ARENA_COMMAND = ("nice -n 10 python scripts/bench_arena.py --predictors mlp,gin,gbdt,zen "
                 "--train-sizes 100,781,1563 --seeds 0-2")
# Row order of the table and the legend: the paper's model first, the training-free score last.
NAMES = {"narformer": "NAR-Former", "gin": "GIN", "mlp": "MLP", "gbdt": "GBDT", "zen": "Zen (zero-cost)"}
_REQUIRED = ("predictor", "train_size", "seed", "tau")


class ArenaFileError(ValueError):
    """The arena file exists but is not a list of arena runs."""


def results_dir() -> Path:
    env = os.environ.get("NARFORMER_RESULTS_DIR")
    return Path(env) if env else PROJECT_ROOT / "assets" / "results"


def arena_file(averaged: bool = False) -> Path:
    return results_dir() / (EQUIVALENCE_FILE if averaged else ARENA_FILE)


def display_name(predictor: str) -> str:
    return NAMES.get(predictor, predictor)


def _order(predictor: str) -> tuple[int, str]:
    names = list(NAMES)
    return (names.index(predictor) if predictor in names else len(names), predictor)


def load_arena(path: str | Path | None = None) -> dict | None:
    """The arena results at ``path`` (default :func:`arena_file`), or None when there is no file.

    Raises :class:`ArenaFileError` with a sentence saying what is wrong when the file is not JSON
    or its runs lack a predictor, train size, seed or a finite tau.
    """
    path = Path(path) if path is not None else arena_file()
    if not path.exists():
        return None
    try:
        res = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ArenaFileError(f"{path.name} is not readable JSON: {str(e)[:200]}") from None
    runs = res.get("runs") if isinstance(res, dict) else None
    if not isinstance(runs, list):
        raise ArenaFileError(f"{path.name} has no list of runs; it is not an arena result "
                             f"(made by scripts/bench_arena.py)")
    for k, r in enumerate(runs):
        missing = [f for f in _REQUIRED if not isinstance(r, dict) or r.get(f) is None]
        if missing:
            raise ArenaFileError(f"{path.name}: run {k} lacks {', '.join(missing)}")
        try:
            tau, n = float(r["tau"]), int(r["train_size"])
        except (TypeError, ValueError):
            raise ArenaFileError(f"{path.name}: run {k} has a tau or train size that is not a number") from None
        if not math.isfinite(tau) or not -1 <= tau <= 1 or n < 1:
            raise ArenaFileError(f"{path.name}: run {k} has tau {r['tau']!r} and train size {r['train_size']!r}; "
                                 f"a tau is between -1 and 1 and a train size at least 1")
    return res


def arena_table(runs: list[dict], ndigits: int | None = 4) -> list[dict]:
    """One row per (predictor, train size): tau mean/std/min/max over seeds and mean wall/CPU time.

    Rows may come from different places (the bench, or NAR-Former checkpoints of the long runs,
    see scripts/bench_arena.py); time fields a row lacks stay null. Figures are rounded to
    ``ndigits`` (taus) and 3 (seconds) for the JSON file; None keeps them exact.
    """
    def rnd(v: float, k: int) -> float:
        return float(v) if ndigits is None else round(float(v), k)

    groups: dict[tuple[str, int], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["predictor"], int(r["train_size"])), []).append(r)
    table = []
    for (name, n), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        taus = np.array([r["tau"] for r in rs], float)

        def mean(key):
            v = [r[key] for r in rs if r.get(key) is not None]
            return rnd(np.mean(v), 3) if v else None

        table.append({"predictor": name, "train_size": n, "n_seeds": len(rs), "seeds": sorted(r["seed"] for r in rs),
                      "tau_mean": rnd(taus.mean(), ndigits), "tau_std": rnd(taus.std(), ndigits),
                      "tau_min": rnd(taus.min(), ndigits), "tau_max": rnd(taus.max(), ndigits),
                      "fit_wall_s": mean("fit_wall_s"), "fit_cpu_s": mean("fit_cpu_s"),
                      "predict_wall_s": mean("predict_wall_s"), "predict_cpu_s": mean("predict_cpu_s"),
                      "source": rs[0].get("source", "bench arena")})
    return table


def old_gbdt_rule(run: dict) -> bool:
    """A GBDT run saved before the GBDT chose its tree size on validation cells: its size rule was
    picked by looking at unseen cells, so it is not a fair baseline. Newer runs record what the
    GBDT selected on (``selection.selected_on``)."""
    return run.get("predictor") == "gbdt" and not (run.get("selection") or {}).get("selected_on")


def arena_frame(res: dict) -> pd.DataFrame:
    """The table of :func:`arena_table` as a DataFrame, by predictor in display order, then by
    train size; ``name`` is the display name, ``single_seed`` marks rows without a spread and
    ``old_gbdt_rule`` GBDT rows with a run of :func:`old_gbdt_rule`."""
    cols = ["predictor", "name", "train_size", "n_seeds", "seeds", "tau_mean", "tau_std", "tau_min", "tau_max",
            "fit_wall_s", "fit_cpu_s", "source", "single_seed", "old_gbdt_rule"]
    rows = arena_table(res.get("runs", []), ndigits=None)
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    df["name"] = df["predictor"].map(display_name)
    old = {(r["predictor"], int(r["train_size"])) for r in res.get("runs", []) if old_gbdt_rule(r)}
    df["old_gbdt_rule"] = [(p, n) in old for p, n in zip(df["predictor"], df["train_size"])]
    df["single_seed"] = df["n_seeds"] == 1
    df = df.sort_values(["predictor", "train_size"], key=lambda s: s.map(_order) if s.name == "predictor" else s)
    return df[cols].reset_index(drop=True)


def _seconds(s) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "fit time not recorded"
    if s < 0.1:
        return "fit < 0.1 s"
    return f"fit {s:.1f} s" if s < 10 else f"fit {s:,.0f} s"


def cell_text(row) -> str:
    """'0.814 ± 0.001 (3 seeds) · fit 54 s'; a single seed says so instead of a spread; † marks
    a GBDT row of the old size rule."""
    if int(row["n_seeds"]) == 1:
        tau = f"{row['tau_mean']:.3f} (1 seed only, no spread)"
    else:
        tau = f"{row['tau_mean']:.3f} ± {row['tau_std']:.3f} ({int(row['n_seeds'])} seeds)"
    mark = " †" if row.get("old_gbdt_rule") else ""
    return f"{tau}{mark} · {_seconds(row['fit_wall_s'])}"


def arena_grid(frame: pd.DataFrame) -> pd.DataFrame:
    """Predictor x train size: one row per predictor, one column per train size ('781 cells'),
    each cell :func:`cell_text`; '–' where that predictor has no run at that size."""
    if frame.empty:
        return pd.DataFrame(columns=["predictor"])
    sizes = sorted(frame["train_size"].unique())
    preds = sorted(frame["predictor"].unique(), key=_order)
    out = pd.DataFrame({"predictor": [display_name(p) for p in preds]})
    for n in sizes:
        cells = {r["predictor"]: cell_text(r) for _, r in frame[frame["train_size"] == n].iterrows()}
        out[f"{n:,} cells"] = [cells.get(p, "–") for p in preds]
    return out


def other_sources(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Display name -> where its runs came from, for rows not made by the bench itself."""
    out: dict[str, list[str]] = {}
    for _, r in frame[frame["source"] != "bench arena"].iterrows():
        out.setdefault(r["name"], []).append(f"{r['train_size']:,} cells: {r['source']}")
    return out
