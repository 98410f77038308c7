"""One latency benchmark table from the fit caches of several `bench latency` processes.

    python scripts/assemble_latency_bench.py --out assets/latency/session14/bench_s14_all.json \
        CACHE[=LABEL] [CACHE[=LABEL] ...] [--retest-floor BENCH.json] [--markdown]

Every `bench latency --out X` keeps its finished fits in `X.fits.jsonl`. When a benchmark is
spread over processes (one per core, or one per predictor option), each writes its own X and the
last writer's X lists only its own predictors; the caches hold them all. This script reads the
caches, renames a predictor column where `=LABEL` is given (two NAR-Former options side by side),
and writes the table `bench latency` would have written: per family and averaged, in domain and
leave one family out, with the fits' timings. Fits of other data sets than the first cache's
first fit are refused (the `data` fingerprint of each line).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def read_cache(path: Path, label: str | None, data: str | None,
               seed: int | None = None) -> tuple[list[dict], str, int | None]:
    fits = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if data is None:
            data = r["data"]
        if r["data"] != data:
            raise SystemExit(f"{path}: a fit of data set {r['data']}, not {data}; caches of one data set only")
        # Another bench seed is another in-domain split: its figures are not comparable in one table.
        if seed is None:
            seed = r.get("seed")
        if r.get("seed") != seed:
            raise SystemExit(f"{path}: a fit of bench seed {r.get('seed')}, not {seed}; caches of one seed only")
        if label:
            r["predictor"] = label
            r["fit"] = {**r["fit"], "predictor": label}
        fits.append(r)
    return fits, data, seed


def assemble(fits: list[dict]) -> dict:
    out = {"in_domain": {}, "lofo": {}, "average": {"in_domain": {}, "lofo": {}}, "fits": []}
    seen = set()
    for r in fits:
        key = (r["setting"], r["held_out"], r["predictor"])
        if key in seen:            # the same fit cached twice (a resumed run): keep the first
            continue
        seen.add(key)
        out["fits"].append(r["fit"])
        table = out[r["setting"]].setdefault(r["predictor"], {})
        table.update(r["scores"])
    for setting in ("in_domain", "lofo"):
        for name, per in out[setting].items():
            # Mean over families, each family weighted alike (as bench latency does).
            out["average"][setting][name] = {
                "mape": round(float(np.mean([v["mape"] for v in per.values()])), 3),
                "acc10": round(float(np.mean([v["acc10"] for v in per.values()])), 2),
                "families": len(per)}
    return out


def markdown(res: dict) -> str:
    names = list(res["in_domain"])
    lines = []
    for setting in ("in_domain", "lofo"):
        cols = [n for n in names if n in res[setting]] + [n for n in res[setting] if n not in names]
        if not cols:
            continue
        fams = sorted({f for n in cols for f in res[setting][n]})
        lines += [f"\n{setting}", "| family | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for f in fams:
            cells = [(lambda v: f"{v['mape']:.2f}% / {v['acc10']:.0f}%" if v else "-")(res[setting][n].get(f))
                     for n in cols]
            lines.append(f"| {f} | " + " | ".join(cells) + " |")
        avg = res["average"][setting]
        lines.append("| **mean** | " + " | ".join(
            f"**{avg[n]['mape']:.2f}% / {avg[n]['acc10']:.1f}%** ({avg[n]['families']} families)" for n in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("caches", nargs="+", help="X.fits.jsonl files, each optionally =LABEL")
    ap.add_argument("--out", required=True)
    ap.add_argument("--retest-floor", default=None, help="a bench JSON whose test_retest_floor to copy")
    ap.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    args = ap.parse_args(argv)
    fits, data, seed = [], None, None
    for spec in args.caches:
        path, _, label = spec.partition("=")
        more, data, seed = read_cache(Path(path), label or None, data, seed)
        fits += more
    res = assemble(fits)
    res.update({"data": data, "seed": seed, "assembled_from": args.caches})
    if args.retest_floor:
        floor = json.loads(Path(args.retest_floor).read_text()).get("test_retest_floor")
        if floor:
            res["test_retest_floor"] = floor
    Path(args.out).write_text(json.dumps(res, indent=1))
    if args.markdown:
        print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
