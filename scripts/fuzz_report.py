"""Robustness figures: push N fuzzed inputs through the command line and the app's upload path.

    python scripts/fuzz_report.py --n 1000 --seed 0 --json assets/results/fuzz_report.json

Every input runs through the in-process command line (``cli.main``) and the app path (see
``narformer_core/fuzz.py`` for both and for what counts as a crash); a sample of ``--subprocess``
inputs also runs as real ``python -m narformer_core`` processes (exit status != 0, no traceback on
stderr). Prints one row per category: inputs tried, refused with a clear error, accepted (valid by
chance, or a valid control), crashes; then the totals. Exit status 1 if anything crashed or if a
malicious pickle's code ran.

The process caps its own address space (``--mem-limit-gb``, default 12) so that a case that
tried to allocate far too much fails with MemoryError (counted as a crash) instead of taking the
shared machine's memory.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# One torch / onnxruntime thread per case: the figures must not depend on the machine's load.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _cap_memory(gb: float) -> None:
    if gb <= 0:
        return
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        want = int(gb * 2 ** 30)
        if hard != resource.RLIM_INFINITY:
            want = min(want, hard)
        resource.setrlimit(resource.RLIMIT_AS, (want, hard))
    except (ImportError, ValueError, OSError) as e:
        print(f"note: could not cap memory ({e})", file=sys.stderr)


def _pick_subprocess_cases(cases, k: int, seed: int):
    """``k`` cases that some command reads, spread over categories (round robin)."""
    import numpy as np

    by_cat: dict[str, list] = collections.defaultdict(list)
    for c in cases:
        if c.kind not in ("nb201", "nb101") and c.expect == "error":
            by_cat[c.category].append(c)
    rng = np.random.default_rng(seed)
    cats = sorted(by_cat)
    rng.shuffle(cats)
    out = []
    while len(out) < k and any(by_cat[c] for c in cats):
        for c in cats:
            if by_cat[c] and len(out) < k:
                out.append(by_cat[c].pop(int(rng.integers(len(by_cat[c])))))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="fuzzed inputs (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subprocess", type=int, default=20,
                    help="of these, how many also run as real `python -m narformer_core` processes (default 20)")
    ap.add_argument("--only", default=None, help="comma-separated generator names (default: all)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per input and channel (default 120)")
    ap.add_argument("--mem-limit-gb", type=float, default=12.0, help="address-space cap of this process (0: none)")
    ap.add_argument("--json", default=None, help="write every outcome and the summary here")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n must be at least 1")

    _cap_memory(args.mem_limit_gb)
    import torch

    torch.set_num_threads(1)
    from narformer_core.fuzz import GENERATORS, FuzzContext, generate, run_case, run_subprocess, summarize, \
        cli_commands, write_case

    only = set(args.only.split(",")) if args.only else None
    if only and only - set(GENERATORS):
        ap.error(f"unknown generators {sorted(only - set(GENERATORS))}; known: {', '.join(GENERATORS)}")
    t0 = time.perf_counter()
    with FuzzContext(seed=args.seed, timeout_s=args.timeout) as ctx:
        cases = generate(args.n, args.seed, ctx, only)
        gen_s = time.perf_counter() - t0
        outcomes = []
        for k, case in enumerate(cases):
            o = run_case(case, ctx)
            outcomes.append(o)
            if not args.quiet and (o.status == "crash" or (k + 1) % 100 == 0):
                if o.status == "crash":
                    bad = [r for r in o.runs if r.status == "crash"]
                    why = bad[0].detail if bad else "the pickle's code ran"
                    print(f"  CRASH {case.category} ({case.note}): {why}", file=sys.stderr)
                print(f"  {k + 1}/{len(cases)} inputs, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        # The same inputs as real processes: exit status and stderr as a user sees them.
        sub = []
        for case in _pick_subprocess_cases(cases, args.subprocess, args.seed):
            folder = ctx.root / f"sub-{ctx.next_id()}"
            path = write_case(case, folder)
            for argv in cli_commands(case, path, ctx)[:1]:
                r = run_subprocess(argv, case)
                sub.append({"category": case.category, "note": case.note, "argv0": argv[0],
                            "exit_code": r.exit_code, "status": r.status, "detail": r.detail,
                            "seconds": round(r.seconds, 2)})
        seconds = time.perf_counter() - t0

    summary = summarize(outcomes)
    code_ran = sum(o.code_ran for o in outcomes)
    malicious = sum(1 for o in outcomes if o.case.marker)
    sub_crashes = sum(1 for s in sub if s["status"] == "crash")
    rows = summary["categories"]
    w = max(len(c) for c in rows) + 2
    print(f"{'category':<{w}}{'tried':>7}{'clear errors':>14}{'accepted':>10}{'crashes':>9}")
    for cat, r in rows.items():
        print(f"{cat:<{w}}{r['tried']:>7}{r['clear_errors']:>14}{r['accepted']:>10}{r['crashes']:>9}")
    t = summary["total"]
    print(f"{'TOTAL':<{w}}{t['tried']:>7}{t['clear_errors']:>14}{t['accepted']:>10}{t['crashes']:>9}")
    print(f"\n{t['runs']} runs in all (each input through every command that reads it and the app path):")
    for ch, c in summary["channels"].items():
        print(f"  {ch:<28} {c['runs']:>5} runs: {c['error']:>5} clear errors, {c['accepted']:>4} accepted, "
              f"{c['crash']} crashes")
    print(f"malicious pickles: {malicious} tried, code ran {code_ran} times")
    print(f"real processes (python -m narformer_core): {len(sub)} inputs, "
          f"{sum(1 for s in sub if s['exit_code'] not in (0, None))} exited non-zero, "
          f"{sum(1 for s in sub if 'traceback' in s['detail'].lower())} tracebacks, {sub_crashes} crashes")
    print(f"seed {args.seed}, {seconds:.0f} s ({gen_s:.0f} s generating)")
    if args.json:
        out = {"n": args.n, "seed": args.seed, "seconds": round(seconds, 1), "summary": summary,
               "malicious_pickles": malicious, "malicious_code_ran": code_ran, "subprocess": sub,
               "outcomes": [o.to_dict() for o in outcomes]}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 1 if t["crashes"] or code_ran or sub_crashes else 0


if __name__ == "__main__":
    sys.exit(main())
