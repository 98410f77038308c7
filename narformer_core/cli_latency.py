"""Latency commands: ``predict-latency``, ``measure``, ``latency ...`` and ``bench latency``.

    python -m narformer_core predict-latency MODEL.onnx --json
    python -m narformer_core measure MODEL.onnx --json [--db latency.sqlite]
    python -m narformer_core latency build-dataset --n 2000 --out assets/latency/zoo_cpu.jsonl.gz
    python -m narformer_core latency build-dataset --extend 500 --out assets/latency/zoo_cpu.jsonl.gz
    python -m narformer_core latency build-dataset --remeasure 200 --from assets/latency/zoo_cpu.jsonl.gz \
        --out assets/latency/zoo_cpu_retest.jsonl.gz
    python -m narformer_core latency summary assets/latency/zoo_cpu.jsonl.gz
    python -m narformer_core latency calibrate --networks 20     # this machine's correction of the checkpoint
    python -m narformer_core latency train --dataset assets/latency/zoo_cpu.jsonl.gz --out assets/latency/narformer_latency.pt
    python -m narformer_core latency structure-set --n 5000 --seed 16 --exclude assets/latency/zoo2000_s14.jsonl.gz \
        --out assets/latency/pretrain/zoo5000_seed16.jsonl.gz     # unmeasured networks for --pretrain
    python -m narformer_core bench latency --json [--dataset ...] [--nb201 --devices gold_6226,pixel3]

Registered by ``cli.py`` through ``register(subparsers, bench_parser)``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli import BENCHES, UserError

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "latency"
DEFAULT_DATASET = ASSETS / "zoo_cpu.jsonl.gz"
RECORD_DATASET = ASSETS / "zoo2000_s14.jsonl.gz"   # the 2,000-network set of record (assets/latency/README.md)
DEFAULT_RETEST = ASSETS / "zoo_cpu_retest.jsonl.gz"
DEFAULT_CHECKPOINT = ASSETS / "narformer_latency.pt"
DEFAULT_NB201_RESULTS = ASSETS / "nb201_devices.jsonl"


def _print(obj, as_json: bool) -> None:
    print(json.dumps(obj, indent=None if as_json else 2, default=_jsonable))


def _jsonable(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _measure_opts(args) -> dict:
    return {"threads": args.threads, "warmup": args.warmup, "repeats": args.repeats,
            "min_seconds": args.min_seconds, "cpu_time": not getattr(args, "no_cpu_time", False)}


def _add_measure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs at least (default 30)")
    p.add_argument("--min-seconds", type=float, default=1.0,
                   help="keep timing until this many seconds have passed (default 1.0)")


# ------------------------------------------------------------------ predict-latency / measure
def _load_model_graph(path: str):
    from .onnx_import import load_onnx

    p = Path(path)
    if not p.is_file():
        raise UserError(f"no ONNX file at {p}")
    return load_onnx(p)


def cmd_predict_latency(args) -> int:
    import time

    from .features import static_features
    from .app_services import unseen_latency_ops
    from .latency.predictors import load_predictor

    graph = _load_model_graph(args.model)
    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        raise UserError(f"no latency checkpoint at {ckpt}; train one with "
                        "`python -m narformer_core latency train` or pass --checkpoint")
    pred = load_predictor(ckpt)
    t0 = time.perf_counter()
    ms = float(pred.predict([graph])[0])
    from .latency.measure import platform_info, platform_key, platform_keys_compatible, without_generation

    here = platform_key(platform_info(1, 1))
    trained_on = str(pred.meta.get("platform_key"))
    out = {"model": str(args.model), "latency_ms": round(ms, 4), "predictor": pred.name,
           "predicts": pred.meta.get("column", "median_ms"),
           "checkpoint": str(ckpt), "platform_key": pred.meta.get("platform_key"),
           "same_platform_as_here": platform_keys_compatible(trained_on, here),
           # A key recorded before CPU generations were cannot tell two generations apart.
           "platform_generation_unrecorded": trained_on == without_generation(trained_on),
           "static": static_features(graph), "n_nodes": len(graph),
           "unknown_ops": graph.meta.get("unknown_ops", []),
           # Operator types none of the predictor's training networks had: expect a larger error.
           "unseen_ops": unseen_latency_ops(pred, graph),
           "predict_seconds": round(time.perf_counter() - t0, 4)}
    out.update(_calibrated(args, ckpt, here, graph, ms, trained_on, out["same_platform_as_here"]))
    _print(out, args.json)
    return 0


def _calibrated(args, ckpt: Path, here: str, graph, ms: float, trained_on: str, same_platform: bool) -> dict:
    """This machine's calibration of the checkpoint, applied (``latency calibrate`` fits one)."""
    from .latency.calibration import CalibrationError, find_calibration

    if args.no_calibration:
        return {"calibration": None}
    try:
        cal = find_calibration(ckpt, here, args.calibration_dir)
    except CalibrationError as e:
        # A damaged or foreign file: say so and predict uncalibrated rather than fail.
        return {"calibration": None, "calibration_error": str(e)}
    if cal is None:
        if same_platform:
            return {"calibration": None}
        return {"calibration": None,
                "calibration_hint": f"predicted in {trained_on} milliseconds; time a few zoo networks here "
                                    "with `python -m narformer_core latency calibrate` to predict this machine's"}
    here_ms = float(cal.apply([ms], [graph])[0])
    return {"latency_ms": round(here_ms, 4), "latency_ms_uncalibrated": round(ms, 4),
            "calibration": {"platform_key": cal.platform_key, "networks": cal.n, "fitted_at": cal.fitted_at,
                            "speed_ratio": round(cal.speed_ratio, 4),
                            "this_network_ratio": round(here_ms / ms, 4),
                            "leave_one_out_mape": cal.loo.get("calibrated_mape")}}


def cmd_calibrate(args) -> int:
    import time

    from .latency.calibration import CalibrationError, calibrate_checkpoint

    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise UserError(f"no latency checkpoint at {ckpt}")
    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=args.networks, desc="calibrate: timing zoo networks here", unit="net", dynamic_ncols=True)
    t0 = time.perf_counter()
    db = None
    if args.db:
        from .latency.db import LatencyDB

        db = LatencyDB(args.db)
    try:
        cal, path, _ = calibrate_checkpoint(ckpt, networks=args.networks, seed=args.seed, min_seconds=args.min_seconds,
                                            default_dataset=RECORD_DATASET, directory=args.calibration_dir,
                                            out=args.out, db=db,
                                            progress=(lambda i, n, what: bar.update(1)) if bar is not None else None)
    except CalibrationError as e:
        raise UserError(str(e)) from None
    finally:
        if bar is not None:
            bar.close()
        if db is not None:
            db.close()
    _print({"calibration": str(path), "platform_key": cal.platform_key, "checkpoint": str(ckpt),
            "checkpoint_platform": cal.checkpoint_platform, "networks": cal.n,
            "speed_ratio": round(cal.speed_ratio, 4), "bandwidth": cal.bandwidth,
            "leave_one_out": cal.loo, "seconds": round(time.perf_counter() - t0, 1)}, args.json)
    return 0


def cmd_measure(args) -> int:
    from .features import static_features
    from .latency.measure import measure_onnx

    graph = _load_model_graph(args.model)
    m = measure_onnx(Path(args.model), threads=args.threads, warmup=args.warmup, repeats=args.repeats,
                     min_seconds=args.min_seconds, batch_size=args.batch_size)
    out = {"model": str(args.model), "latency_ms": round(m.median_ms, 4), **m.to_dict(),
           "platform_key": m.platform_key, "graph_hash": graph.stable_hash(),
           "static": static_features(graph), "n_nodes": len(graph)}
    if args.threads == 1:
        # The inference thread's CPU time: what the shipped predictor predicts (steady on a busy machine).
        from .latency.dataset import cpu_time_ms

        cpu = cpu_time_ms(Path(args.model).read_bytes(), warmup=min(args.warmup, 2),
                          repeats=max(5, args.repeats // 2))
        out.update({k: cpu[k] for k in ("cpu_median_ms", "cpu_iqr_ms", "cpu_min_ms")})
    if args.db:
        from .latency.db import LatencyDB

        with LatencyDB(args.db) as db:
            h = db.add_graph(graph, family=args.family or "user", description=Path(args.model).name)
            out["db_row"] = db.add_measurement(h, m.platform_key, m, note=f"measure {Path(args.model).name}")
            out["db"] = db.location  # a URL's password masked
    _print(out, args.json)
    return 0


# ------------------------------------------------------------------ latency build-dataset / summary
def cmd_build_dataset(args) -> int:
    from .latency import dataset as ds

    families = [f.strip() for f in args.families.split(",")] if args.families else None
    if families:
        from .latency.zoo import FAMILIES
        bad = [f for f in families if f not in FAMILIES]
        if bad:
            raise UserError(f"unknown families {bad}; the zoo has {', '.join(FAMILIES)}")
    if args.remeasure:
        if not args.source:
            raise UserError("--remeasure K needs --from FIRST.jsonl.gz (the data set to re-measure)")
        res = ds.remeasure(args.source, args.out, args.remeasure, measure=_measure_opts(args),
                           progress=not args.quiet, db=args.db, start_at=args.start_at,
                           stride=args.stride, reference=args.reference,
                           reference_source=args.reference_from)
    else:
        if args.n is None and not args.extend:
            raise UserError("say how many networks: --n TOTAL or --extend NEW")
        res = ds.build_dataset(args.out, args.n, extend=args.extend or 0, seed=args.seed,
                               families=families, db=args.db, measure=_measure_opts(args),
                               progress=not args.quiet, allow_mixed_platform=args.allow_mixed_platform)
    _print(res, args.json)
    return 0


def cmd_summary(args) -> int:
    from .latency import dataset as ds

    out = ds.summarize(args.dataset)
    if args.retest:
        out["test_retest"] = ds.test_retest(args.dataset, args.retest, args.column)
    _print(out, args.json)
    return 0


def cmd_combine(args) -> int:
    from .latency import dataset as ds

    for p in [args.source, *args.passes]:
        if not Path(p).is_file():
            raise UserError(f"no data set at {p}")
    window = ds.ROLLING_REFERENCE_WINDOW if args.reference_window is None else args.reference_window
    level = None
    if args.reference_level_from:
        if not Path(args.reference_level_from).is_file():
            raise UserError(f"no data set at {args.reference_level_from}")
        levels = {r.get("reference_level_ms") for r in ds.load_records(args.reference_level_from, require_graph=False)}
        if len(levels) != 1 or None in levels:
            raise UserError(f"{args.reference_level_from} has no single reference level "
                            "(it was not combined from passes with a reference network)")
        level = levels.pop()
    _print(ds.combine_passes(args.source, args.passes, args.out, reference_window=window,
                             reference_level=level), args.json)
    return 0


def cmd_structure_set(args) -> int:
    from .latency.pretrain import build_structure_set

    families = [f.strip() for f in args.families.split(",") if f.strip()] if args.families else None
    try:
        out = build_structure_set(args.out, args.n, seed=args.seed, exclude=args.exclude, families=families,
                                  start=args.start, stop=args.stop, progress=not args.quiet)
    except ValueError as e:          # an unknown family, or families of two kinds in one draw
        raise UserError(str(e)) from None
    _print(out, args.json)
    return 0


def cmd_compact(args) -> int:
    from .latency import dataset as ds

    _print(ds.compact(args.dataset), args.json)
    return 0


def cmd_merge(args) -> int:
    from .latency.predictors import LatencyCheckpointError, merge_narformer_ensembles

    try:
        merged = merge_narformer_ensembles(args.checkpoints)
    except (LatencyCheckpointError, ValueError) as e:
        raise UserError(str(e)) from None
    if args.val_mape is not None:
        merged.meta["val_mape"] = float(args.val_mape)
    out = merged.save(args.out, half_weights=args.half)
    _print({"out": str(out), "members": merged.members, "bytes": out.stat().st_size, "merged_from": merged.meta["merged_from"],
            "val_mape": merged.meta["val_mape"]}, args.json)
    return 0


# ------------------------------------------------------------------ training and benchmark
def _json_arg(text: str | None, what: str) -> dict:
    if not text:
        return {}
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise UserError(f"{what} must be a JSON object, got {type(d).__name__}")
    return d


def _factories(args, fingerprints: dict | None = None) -> dict:
    """Column name -> factory of a fresh predictor, from the command line options."""
    from .latency.op_cost import DEFAULT_SHRINK
    from .latency.predictors import KINDS, make_predictor

    kinds = [k.strip() for k in (args.predictors or ",".join(KINDS)).split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise UserError(f"unknown predictors {bad}; known: {', '.join(KINDS)}")
    nar_model = _json_arg(getattr(args, "model_json", None), "--model-json")
    nar_train = _json_arg(getattr(args, "narformer_json", None), "--narformer-json")
    nnlp = _json_arg(getattr(args, "nnlp_json", None), "--nnlp-json")
    if getattr(args, "epochs", None):
        nar_train.setdefault("epochs", args.epochs)
        nnlp.setdefault("epochs", args.epochs)
    if getattr(args, "target", None):
        nar_train["target"] = args.target
    if getattr(args, "op_dropout", None) is not None:
        if not 0 <= args.op_dropout < 1:
            raise UserError(f"--op-dropout is a probability below 1, got {args.op_dropout}")
        nar_train["op_dropout"] = args.op_dropout
    static_raw = not getattr(args, "no_static_raw", False)
    scheme = getattr(args, "token_scheme", None) or "nerf"
    node_raw = bool(getattr(args, "node_raw", False))
    node_align = bool(getattr(args, "node_align", False))
    prior_blend = bool(getattr(args, "prior_blend", False))
    members = int(getattr(args, "members", None) or 1)
    offset = getattr(args, "offset", None) or "flops"
    static_codes = not getattr(args, "no_static_codes", False)
    pretrain = getattr(args, "pretrain", None)
    if pretrain and not Path(pretrain).is_file():
        raise UserError(f"--pretrain: no structure set at {pretrain}")
    teacher = getattr(args, "pretrain_teacher", None)
    if teacher and not pretrain:
        raise UserError("--pretrain-teacher labels the networks of --pretrain STRUCTURE_SET: give both")
    if teacher and not Path(teacher).is_file():
        raise UserError(f"--pretrain-teacher: no checkpoint at {teacher}")
    names = {"narformer": "NAR-Former", "flops": "FLOPs regression", "nnlp": "NNLP GNN", "opcost": "operator-cost sum"}
    make = {
        "narformer": lambda: make_predictor("narformer", model=nar_model, train=nar_train,
                                             static_raw=static_raw, scheme=scheme, node_raw=node_raw,
                                             members=members, offset=offset, static_codes=static_codes,
                                             pretrain=pretrain, pretrain_teacher=teacher,
                                             node_align=node_align, prior_blend=prior_blend),
        "flops": lambda: make_predictor("flops"),
        "nnlp": lambda: make_predictor("nnlp", **nnlp),
        "opcost": lambda: make_predictor("opcost"),
    }
    # Fail on bad options now, not after an hour of other trainings.
    for k in kinds:
        try:
            make[k]()
        except (TypeError, ValueError) as e:
            raise UserError(f"bad options for the {k} predictor: {e}") from None
    # The scheme joins the fingerprint only when it is not the default, so fits cached before the
    # option existed keep their keys.
    nar_print = ([nar_model, nar_train, static_raw] + ([scheme] if scheme != "nerf" else [])
                 + (["node_raw"] if node_raw else []) + (["node_align"] if node_align else [])
                 + ([f"members={members}"] if members > 1 else [])
                 + ([f"offset={offset}-shrink{DEFAULT_SHRINK}-blocks"] if offset == "opcost" else [])
                 + (["no_static_codes"] if not static_codes else [])
                 + ([f"pretrain={Path(pretrain).name}:{Path(pretrain).stat().st_size}"] if pretrain else [])
                 # Session 20: the pretraining proxy (cost sum) splits its kinds by channel blocks.
                 + (["proxy=opcost-blocks"] if pretrain and not teacher else [])
                 + ([f"teacher={_file_digest(teacher)}"] if teacher else [])
                 + (["prior=opcost-blocks"] if prior_blend else []))
    fingerprint = {"narformer": json.dumps(nar_print, sort_keys=True),
                   "flops": "ridge-poly2", "nnlp": json.dumps(nnlp, sort_keys=True), "opcost": f"nnls-relative-shrink{DEFAULT_SHRINK}-blocks"}
    if fingerprints is not None:
        fingerprints.update({names[k]: fingerprint[k] for k in kinds})
    return {names[k]: make[k] for k in kinds}


def _file_digest(path) -> str:
    """Name and content hash of a file: a fits-cache key that changes when the file does."""
    import hashlib
    return f"{Path(path).name}:{hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]}"


def cmd_train_latency(args) -> int:
    from .latency.dataset import load_dataset

    records, graphs, y = load_dataset(args.dataset, column=args.column)
    if len(graphs) < 10:
        raise UserError(f"{args.dataset} has only {len(graphs)} networks; train on at least 10")
    factories = _factories(args)
    if len(factories) != 1:
        raise UserError("latency train trains one predictor: pass one of --predictors narformer|flops|nnlp|opcost")
    (name, factory), = factories.items()
    pred = factory().fit(graphs, y, seed=args.seed, progress=not args.quiet)
    pred.meta.update({"dataset": str(args.dataset), "n_networks": len(graphs), "column": args.column,
                      "platform_key": records[0].get("platform_key"),
                      "families": sorted({r.get("family") for r in records})})
    path = pred.save(args.out)
    _print({"checkpoint": str(path), "predictor": name, **pred.meta}, args.json)
    return 0


def bench_latency(args) -> int:
    """``bench latency``: one table of in-domain and leave-one-family-out MAPE / Acc(10%)."""
    import time

    if getattr(args, "nb201", False):
        return _bench_nb201(args)
    from .latency.dataset import load_dataset
    from .latency.train_latency import bench_table, latency_bench

    # Bad predictor options fail before the data set is read.
    prints: dict = {}
    factories = _factories(args, prints)
    dataset = Path(args.dataset)
    records, graphs, y = load_dataset(dataset, column=args.column)
    if len(graphs) < 20:
        raise UserError(f"{dataset} has only {len(graphs)} networks: too few for a benchmark")
    fams = [r["family"] for r in records]
    lofo = None
    if args.lofo_families:
        lofo = [f.strip() for f in args.lofo_families.split(",")]
        bad = sorted(set(lofo) - set(fams))
        if bad:
            raise UserError(f"--lofo-families {bad} are not in {dataset}")
    extra = _extra_train(args, dataset, records)
    t0 = time.perf_counter()
    # Finished fits go to a cache beside --out, so a stopped benchmark resumes where it was.
    cache = Path(str(args.out) + ".fits.jsonl") if args.out else None
    on_fitted = None
    if getattr(args, "save_in_domain", None):
        save_dir = Path(args.save_in_domain)

        def on_fitted(fit: dict, predictor) -> None:
            if fit["setting"] != "in_domain":
                return
            predictor.meta.update({
                "dataset": str(dataset), "n_networks": len(graphs), "column": args.column,
                "platform_key": records[0].get("platform_key"), "families": sorted(set(fams)),
                "bench_seed": args.seed, "test_indices": fit["test_indices"],
                "test_mape": fit["test_mape"], "test_acc10": fit["test_acc10"]})
            if extra is not None:
                predictor.meta["extra_train"] = _extra_train_note(args, extra)
            slug = predictor.kind if getattr(predictor, "kind", None) else fit["predictor"].replace(" ", "_")
            predictor.save(save_dir / f"{slug}_in_domain.pt")
    res = latency_bench(graphs, y, fams, factories, seed=args.seed, lofo=not args.no_lofo,
                        lofo_families=lofo, progress=not args.quiet, cache=cache, fingerprints=prints,
                        on_fitted=on_fitted, extra=None if extra is None else extra[:3])
    if extra is not None:
        res["extra_train"] = {**_extra_train_note(args, extra), "per_family": extra[3]}
    res.update({"dataset": str(dataset), "n_networks": len(graphs), "column": args.column,
                "platform_key": records[0].get("platform_key"), "seconds": round(time.perf_counter() - t0, 1),
                "seed": args.seed})
    if getattr(args, "retest", None) and Path(args.retest).exists():
        from .latency.dataset import test_retest
        try:
            floor = test_retest(dataset, args.retest, args.column)
        except ValueError as e:     # a bad floor file must not throw away the benchmark
            floor = {"n": 0}
            print(f"warning: no test-retest floor from {args.retest}: {e}", file=sys.stderr)
        if floor.get("n"):     # a re-measurement of other networks says nothing about these
            res["test_retest_floor"] = {k: v for k, v in floor.items() if k != "per_family"}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1, default=_jsonable))
    if args.json:
        print(json.dumps(res, default=_jsonable))
    else:
        print(f"{res['n_networks']} networks of {dataset.name}, column {args.column}, "
              f"platform {res['platform_key']}")
        print(bench_table(res))
        if "test_retest_floor" in res:
            f = res["test_retest_floor"]
            print(f"test-retest floor: MAPE {f.get('mape')}% / Acc(10%) {f.get('acc10')}% over {f.get('n')} networks")
    return 0


def _extra_train(args, dataset: Path, records: list) -> tuple | None:
    """``--extra-train``: (graphs, ms, families, count per family) of measured networks that only
    ever train, from one file or several; refused if one was timed on another platform, or repeats
    a network of the set (it could be a test network) or of another extra file (it would count twice)."""
    paths = [Path(p) for p in (getattr(args, "extra_train", None) or [])]
    if not paths:
        return None
    from collections import Counter

    import numpy as np

    from .latency.dataset import load_dataset
    from .latency.families import test_only

    platform = records[0].get("platform_key")
    seen = {r["graph_hash"]: dataset.name for r in records}
    graphs, ms, fams = [], [], []
    for path in paths:
        if not path.is_file():
            raise UserError(f"no data set at {path} (--extra-train)")
        x_records, x_graphs, x_ms = load_dataset(path, column=args.column)
        keys = {r.get("platform_key") for r in x_records}
        if keys != {platform}:
            raise UserError(f"--extra-train {path} was timed on {sorted(map(str, keys))}, the data set on "
                            f"{platform}: milliseconds of two platforms do not mix")
        test_families = test_only({r.get("family") for r in x_records})
        if test_families:
            raise UserError(f"--extra-train {path} holds networks of {', '.join(test_families)}: outside-zoo "
                            "families are the test of unseen families and never train")
        again = Counter(seen[r["graph_hash"]] for r in x_records if r["graph_hash"] in seen)
        if again:
            where = ", ".join(f"{n} of {name}" for name, n in sorted(again.items()))
            raise UserError(f"--extra-train {path} repeats networks ({where})"
                            + (": they could be test networks" if dataset.name in again else ""))
        seen.update({r["graph_hash"]: path.name for r in x_records})
        graphs += list(x_graphs)
        ms.append(np.asarray(x_ms, dtype=np.float64))
        fams += [r["family"] for r in x_records]
    return graphs, np.concatenate(ms), fams, dict(sorted(Counter(fams).items()))


def _extra_train_note(args, extra: tuple) -> dict:
    """What a fit's metadata and the bench result say about ``--extra-train``."""
    return {"paths": [str(p) for p in args.extra_train], "n": len(extra[1])}


def _bench_nb201(args) -> int:
    from .data.latency_sets import NB201_DEVICES
    from .latency.train_latency import nb201_table, run_nb201_devices

    devices = [d.strip() for d in args.devices.split(",")] if args.devices else list(NB201_DEVICES)
    try:
        fractions = [float(f) for f in (args.fractions or "0.05,0.1").split(",")]
    except ValueError:
        raise UserError(f"--fractions must be comma-separated numbers, got {args.fractions!r}") from None
    train = _json_arg(getattr(args, "narformer_json", None), "--narformer-json")
    if args.epochs:
        train["epochs"] = args.epochs
    model = _json_arg(getattr(args, "model_json", None), "--model-json")
    results = run_nb201_devices(devices, fractions, results=args.results or DEFAULT_NB201_RESULTS, seed=args.seed, model=model,
                                train=train, data_dir=args.data_dir, progress=not args.quiet)
    table = nb201_table(results)
    if args.json:
        print(json.dumps(table, default=_jsonable))
    else:
        print("device            fraction  n_train  MAPE     Acc(10%)  tau      | connected cells: MAPE  Acc(10%)  tau")
        for r in table["rows"]:
            print(f"{r['device']:<17} {r['fraction']:<9g} {r['n_train']:<8} {r['mape']:<8.3f} "
                  f"{r['acc10']:<9.2f} {r['kendall_tau']:<8.4f} | {'':17}{r['mape_connected']:<7.3f}"
                  f"{r['acc10_connected']:<10.2f}{r['kendall_tau_connected']:.4f}")
        for f, s in table["summary"].items():
            print(f"median over {s['devices']} devices at {f}: MAPE {s['median_mape']}% "
                  f"(connected cells {s['median_mape_connected']}%), Acc(10%) {s['median_acc10']}%, "
                  f"tau {s['median_tau']}")
    return 0


def _add_once(p: argparse.ArgumentParser, flag: str, **kw) -> None:
    """Add an option unless another extension sharing the bench parser already did."""
    if flag not in p._option_string_actions:
        p.add_argument(flag, **kw)


def _add_predictor_args(p: argparse.ArgumentParser, bench: bool) -> None:
    _add_once(p, "--dataset", default=str(DEFAULT_DATASET), help="latency: the measured data set")
    _add_once(p, "--column", default="cpu_median_ms",
              help="latency: which measured statistic to predict: cpu_median_ms (default: the "
                   "inference thread's CPU time, steady on a busy machine), median_ms (wall clock), "
                   "min_ms, p10_ms, ...")
    _add_once(p, "--predictors", default=None if bench else "narformer",
              help="latency: comma-separated narformer, flops, nnlp, opcost")
    _add_once(p, "--target", default=None, choices=["log", "ms", "residual"],
              help="NAR-Former latency target (default: the predictor's default)")
    _add_once(p, "--no-static-raw", action="store_true",
              help="NAR-Former latency: only the sin/cos codes of the static features, as in the paper")
    _add_once(p, "--token-scheme", default=None, choices=["nerf", "trans"],
              help="NAR-Former latency: frequencies of the tokens' sin/cos codes (default nerf)")
    _add_once(p, "--node-raw", action="store_true",
              help="NAR-Former latency: append each operator's own numbers (attributes, output shape, "
                   "its MACs, parameters and memory access, standardised) to its 480-value token")
    _add_once(p, "--node-align", action="store_true",
              help="NAR-Former latency: append to each token whether the operator's channel counts "
                   "fill whole SIMD blocks of 8 and 16 floats (onnxruntime's NCHWc blocks)")
    _add_once(p, "--prior-blend", action="store_true",
              help="NAR-Former latency: blend the prediction (in log) with the operator-cost sum fitted on the "
                   "same training networks, its weight (0 to 0.5) chosen on the fit's validation networks")
    _add_once(p, "--no-static-codes", action="store_true",
              help="NAR-Former latency: the head reads the four standardised static features only, "
                   "not their sin/cos codes (needs the raw features, so not with --no-static-raw)")
    _add_once(p, "--offset", default=None, choices=["flops", "opcost"],
              help="NAR-Former latency, residual target: measured from the FLOPs regression (default) "
                   "or from a sum of per-operator costs (latency/op_cost.py)")
    _add_once(p, "--members", type=int, default=None,
              help="NAR-Former latency: train this many networks (other initial seeds) and average them")
    _add_once(p, "--op-dropout", type=float, default=None,
              help="NAR-Former latency: unknown-operator training; each operator type of a training "
                   "network is shown as 'unknown' with this probability, and types no training network "
                   "had are shown so at prediction (e.g. 0.1)")
    _add_once(p, "--pretrain", default=None, metavar="STRUCTURE_SET",
              help="NAR-Former latency: pretrain on these unmeasured networks (latency structure-set), their "
                   "latency from the operator-cost sum fitted on the training networks, then fine-tune "
                   "(epochs: pretrain_epochs in --narformer-json, default 8)")
    _add_once(p, "--pretrain-teacher", default=None, metavar="CHECKPOINT",
              help="NAR-Former latency, with --pretrain: the pretraining networks' latency is this "
                   "checkpoint's prediction instead of the operator-cost sum (self-training). It must have "
                   "been fitted on the same training networks (checked), e.g. a --save-in-domain file "
                   "of the same bench seed")
    _add_once(p, "--narformer-json", default=None, help="NAR-Former latency training overrides (JSON)")
    _add_once(p, "--nnlp-json", default=None, help="NNLP GNN options (JSON), e.g. '{\"width\": 256}'")


def register(sub, bench_parser) -> None:
    p = sub.add_parser("predict-latency", help="predict an ONNX model's latency on this machine's platform")
    p.add_argument("model", help="an ONNX file")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                   help="a latency predictor checkpoint (default: the shipped NAR-Former one)")
    p.add_argument("--no-calibration", action="store_true",
                   help="predict in the checkpoint's platform's milliseconds even where this machine has a calibration")
    p.add_argument("--calibration-dir", default=None,
                   help="where calibrations live (default $NARFORMER_CALIBRATION_DIR or assets/calibration)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict_latency)

    p = sub.add_parser("measure", help="measure an ONNX model's latency here (onnxruntime, CPU)")
    p.add_argument("model", help="an ONNX file")
    _add_measure_args(p)
    p.add_argument("--batch-size", type=int, default=1, help="fills a dynamic batch axis")
    p.add_argument("--db", default=None, help="also store the measurement in this latency database: a SQLite file "
                   "or a postgresql://user:password@host:port/dbname URL")
    p.add_argument("--family", default=None, help="family label for the database")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_measure)

    lat = sub.add_parser("latency", help="the measured latency data set and latency predictors")
    lsub = lat.add_subparsers(dest="latency_command", required=True)
    p = lsub.add_parser("build-dataset", help="measure zoo networks into a gzip JSON-lines file "
                        "(resumable; --extend adds more; --remeasure K for the test-retest floor)")
    p.add_argument("--out", default=str(DEFAULT_DATASET))
    p.add_argument("--n", type=int, default=None, help="networks in the file when done (resumes)")
    p.add_argument("--extend", type=int, default=0, help="add this many new networks")
    p.add_argument("--seed", type=int, default=0, help="seed of the zoo draw (keep it to resume/extend)")
    p.add_argument("--families", default=None, help="comma-separated subset of the zoo families")
    p.add_argument("--db", default=None, help="also write every measurement into this LatencyDB (a SQLite file or a "
                   "postgresql:// URL)")
    p.add_argument("--remeasure", type=int, default=0, metavar="K",
                   help="re-measure the first K networks of --from into --out instead")
    p.add_argument("--from", dest="source", default=None, help="the data set to re-measure, or a structure set (latency structure-set) to time for the "
                        "first time; `latency combine --source` takes it too")
    p.add_argument("--start-at", type=int, default=0, metavar="I",
                   help="with --remeasure: begin at network I of the K and wrap around (two passes with "
                   "starts K/2 apart time each network far apart in time; run them one after the other: "
                   "side by side they were noisier, see assets/latency/README.md)")
    p.add_argument("--stride", type=int, default=1, metavar="S",
                   help="with --remeasure: every S-th network of --from (a re-test sample spread over the pass)")
    p.add_argument("--reference", default=None, metavar="SPEC_ID",
                   help="with --remeasure: time this network of --from before and after each one (the host's "
                   "speed at that moment; `latency combine` then adds the drift-corrected column refnorm_ms)")
    p.add_argument("--reference-from", default=None, metavar="DATASET",
                   help="look --reference up in this data set instead of --from")
    p.add_argument("--no-cpu-time", action="store_true",
                   help="skip the second timing by the inference thread's CPU clock (faster passes)")
    p.add_argument("--allow-mixed-platform", action="store_true",
                   help="append even though the file holds another platform's measurements")
    _add_measure_args(p)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_build_dataset)

    p = lsub.add_parser("summary", help="counts and ranges per family; --retest adds the test-retest floor")
    p.add_argument("dataset", nargs="?", default=str(DEFAULT_DATASET))
    p.add_argument("--retest", default=None, help="a re-measurement file of the same networks")
    p.add_argument("--column", default="median_ms", help="the latency column the floor compares")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_summary)

    p = lsub.add_parser("combine", help="pool several timing passes (build-dataset --remeasure) of the same "
                        "networks into one data set; its min_ms is the fastest run over all passes")
    p.add_argument("--source", required=True, help="the data set the passes re-measured (gives the graphs)")
    p.add_argument("--passes", nargs="+", required=True, help="the pass files")
    p.add_argument("--out", required=True)
    p.add_argument("--reference-window", type=int, default=None, metavar="W",
                   help="refroll_ms takes the host's speed as the median reference time over the W "
                        "networks timed before and after each one (default: 2)")
    p.add_argument("--reference-level-from", metavar="DATASET",
                   help="scale the corrected columns to this combined set's reference level (a re-test "
                        "of that set; by default the median reference time of these passes)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_combine)

    p = lsub.add_parser("structure-set", help="draw zoo networks that are not in the measured set and store "
                        "their graphs, untimed (NAR-Former's pretraining networks; resumable)")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, required=True, help="networks in the whole list")
    p.add_argument("--seed", type=int, required=True, help="seed of the zoo draw (not the measured set's)")
    p.add_argument("--exclude", nargs="*", default=[str(RECORD_DATASET)],
                   help="data sets whose networks the list must not repeat (default: the 2,000-network set of "
                   "record, which holds every network of the smaller zoo sets too)")
    p.add_argument("--start", type=int, default=0, help="write only networks start..stop-1 of the list "
                   "(two processes build two halves into two files; cat joins them)")
    p.add_argument("--stop", type=int, default=None)
    p.add_argument("--families", default=None, metavar="A,B",
                   help="draw only these families, round robin (default: the zoo's ten); the training-only "
                   "families (latency/extra_families.py: mlp_mixer, vit) are drawn on their own")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_structure_set)

    p = lsub.add_parser("compact", help="rewrite a data set as one gzip stream (smaller, same records)")
    p.add_argument("dataset")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compact)

    p = lsub.add_parser("calibrate", help="time a few zoo networks here and fit this machine's correction of a "
                        "latency checkpoint (predict-latency then applies it)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--networks", type=int, default=20,
                   help="zoo networks to time, spread over the families (default 20, about 30 s)")
    p.add_argument("--min-seconds", type=float, default=0.6, help="timed runs per network at least this long")
    p.add_argument("--seed", type=int, default=0, help="which zoo networks")
    p.add_argument("--calibration-dir", default=None,
                   help="where calibrations live (default $NARFORMER_CALIBRATION_DIR or assets/calibration)")
    p.add_argument("--out", default=None, help="write the calibration to this file instead (to keep or compare; "
                   "predict-latency and the app look only in the calibration folder)")
    p.add_argument("--db", default=None, help="also store the timings in this latency database")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    p = lsub.add_parser("merge", help="one NAR-Former ensemble from the members of checkpoints fitted on the same "
                        "training networks (e.g. a self-trained student and its teacher)")
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--val-mape", type=float, default=None,
                   help="the merged ensemble's validation MAPE, if measured (its parts' own stay recorded)")
    p.add_argument("--half", action="store_true",
                   help="store the networks' weights as float16 (half the file; on the shipped ensemble predictions "
                        "moved by at most 3.4e-5 relative)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_merge)

    p = lsub.add_parser("train", help="train a latency predictor on the whole data set (10%% for "
                        "validation) and save its checkpoint")
    _add_predictor_args(p, bench=False)
    p.add_argument("--out", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--model-json", default=None, help="NAR-Former model overrides (JSON)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train_latency)

    # bench latency: the accuracy bench's options (--epochs, --seed, --model-json, --out, --json,
    # --data-dir) are shared; these are added for latency.
    _add_predictor_args(bench_parser, bench=True)
    b = bench_parser
    _add_once(b, "--no-lofo", action="store_true", help="latency: in-domain only")
    _add_once(b, "--lofo-families", default=None, help="latency: hold out only these families (comma-separated)")
    _add_once(b, "--extra-train", default=None, nargs="+", metavar="DATASET",
              help="latency: further measured networks, one file or several (same platform, same --column, "
                   "no network twice), that join every training set and never test or validate; the splits "
                   "of --dataset stay as they are")
    _add_once(b, "--retest", default=str(DEFAULT_RETEST),
              help="latency: re-measurement file for the test-retest floor line")
    _add_once(b, "--save-in-domain", default=None, metavar="DIR",
              help="latency: save every in-domain fit as DIR/<predictor>_in_domain.pt, with the indices and "
                   "scores of the test networks it never saw")
    _add_once(b, "--nb201", action="store_true", help="latency: the NB201 per-device cell benchmark instead")
    _add_once(b, "--devices", default=None, help="latency --nb201: comma-separated devices (default all 31)")
    _add_once(b, "--fractions", default=None, help="latency --nb201: training fractions (default 0.05,0.1)")
    _add_once(b, "--results", default=None,
              help=f"latency --nb201: JSON-lines file results are appended to and resumed from "
                   f"(default {DEFAULT_NB201_RESULTS.relative_to(ASSETS.parents[1])})")
    BENCHES["latency"] = bench_latency
