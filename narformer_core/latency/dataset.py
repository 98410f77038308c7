"""The measured latency data set: zoo networks, their graphs and their latency on this machine.

One gzip-compressed JSON line per network::

    spec, spec_id, family, description, graph (ArchGraph.to_dict: structure, no weights),
    graph_hash, n_nodes, static (batch_size, flops, params, memory_access), median_ms, iqr_ms,
    std_ms, mean_ms, min_ms, p10_ms, p25_ms, p90_ms, repeats, samples_ms (every timed run),
    cpu_median_ms, cpu_iqr_ms, cpu_min_ms, cpu_samples_ms (the inference thread's CPU time per
    run, see :func:`cpu_time_ms`: steady on a busy machine where the wall clock is not),
    platform, platform_key, measured_at, load_avg (the 1-minute load average when the timing
    started), export_s, measure_options, schema

:func:`build_dataset` samples zoo specs round robin over the families
(``zoo.sample_specs(n, seed)``, a longer list extends a shorter one), exports each to ONNX in
memory, imports it to the architecture graph and times it with ``measure_onnx``. It appends as it
goes, so an interrupted build loses at most the network being measured, and a second call skips
every ``spec_id`` already in the file: building to ``n`` resumes, ``extend`` adds that many new
networks.

Why one gzip member per line: a member is complete as soon as its write returns, so a build
killed at any moment leaves a file whose every line but possibly the last is readable; the
reader stops at a damaged tail and the next build rewrites the file without it.

:func:`remeasure` times networks of a finished file again, later, into a second file, and
:func:`test_retest` compares the two: the noise floor no predictor can beat.
:func:`combine_passes` pools several such passes into one data set whose ``min_ms`` (the fastest
run over all passes) is a label steady enough to learn from on a shared machine.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import time
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..graph import ArchGraph

SCHEMA = 1
# Networks timed before and after each one whose reference timings set its host speed in
# ``refroll_ms`` (session 18, AMD passes: +-2 agreed best of 0, 1, 2 and 5; scripts/label_estimators.py).
ROLLING_REFERENCE_WINDOW = 2
DEFAULT_MEASURE = {"threads": 1, "warmup": 5, "repeats": 30, "min_seconds": 1.0, "cpu_time": True}


class DatasetError(ValueError):
    """A data set file that cannot be read or extended; the message says why."""


# ------------------------------------------------------------------ reading
def _read_lines(path: Path) -> tuple[list[dict], bool]:
    """All complete records of a file, and whether its tail was damaged (then dropped)."""
    if not path.exists():
        return [], False
    out: list[dict] = []
    damaged = False
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                if not line.endswith("\n"):          # the last line of a cut-off member
                    damaged = True
                    break
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    damaged = True
                    break
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        if not out and not isinstance(e, EOFError) and path.stat().st_size > 0:
            raise DatasetError(f"{path} is not a gzip JSON-lines data set: {e}") from None
        damaged = True
    return out, damaged


def read_complete_lines(path: Path) -> list[dict]:
    """Every complete record of an existing file; a damaged last line is skipped with a warning."""
    records, damaged = _read_lines(path)
    if damaged:
        warnings.warn(f"{path}: the last line is incomplete (an interrupted build?); it was skipped")
    return records


def structure_fields(spec: Mapping, graph: ArchGraph, networks) -> dict:
    """The fields of a record that describe the network itself (no timing)."""
    from ..features import static_features

    return {"schema": SCHEMA, "spec_id": networks.spec_id(spec), "family": spec["family"], "spec": dict(spec),
            "description": networks.describe(spec), "graph": graph.to_dict(), "graph_hash": graph.stable_hash(),
            "n_nodes": len(graph), "static": static_features(graph)}


def load_records(path: str | os.PathLike, require_graph: bool = True, structures: bool = False) -> list[dict]:
    """Every complete record of a data set file (a damaged last line is skipped with a warning).

    Re-measurement files carry no graphs (the first file has them): read them with
    ``require_graph=False``. ``structures``: also accept untimed records of a structure set
    (``kind: "structure"``, latency/pretrain.py), which :func:`remeasure` can time for the first time.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"no latency data set at {path}")
    records = read_complete_lines(path)
    for i, r in enumerate(records):
        missing = [k for k in ("spec_id", "graph", "median_ms") if k not in r
                   and (require_graph or k != "graph")
                   and not (structures and k == "median_ms" and r.get("kind") == "structure")]
        if missing:
            raise DatasetError(f"{path} line {i + 1} is not a latency record: it lacks {missing}")
    return records


def record_graph(record: Mapping) -> ArchGraph:
    return ArchGraph.from_dict(record["graph"])


LATENCY_COLUMNS = ("median_ms", "min_ms", "p10_ms", "p25_ms", "mean_ms", "cpu_median_ms", "cpu_min_ms",
                   "refnorm_ms", "refroll_ms")
# refnorm_ms / refroll_ms: min_ms corrected for the host's drift at that moment / over the
# networks timed around it (combine_passes)


def load_dataset(path: str | os.PathLike, families: Sequence[str] | None = None,
                 platform_key: str | None = None, column: str = "median_ms"
                 ) -> tuple[list[dict], list[ArchGraph], np.ndarray]:
    """(records, graphs, latencies in ms) of a data set, optionally filtered.

    ``column`` picks the statistic (the median by default; ``min_ms`` or ``p10_ms`` are steadier
    on a busy machine, see assets/latency/README.md). ``platform_key`` keeps only measurements
    taken on that platform; by default a file holding several platforms is refused, since their
    latencies are not comparable.
    """
    records, y = select_records(path, families, platform_key, column)
    return records, [record_graph(r) for r in records], y


def select_records(path: str | os.PathLike, families: Sequence[str] | None = None,
                   platform_key: str | None = None, column: str = "median_ms",
                   require_graph: bool = True) -> tuple[list[dict], np.ndarray]:
    """:func:`load_dataset` without building the graphs (a third of its time on 2,000 networks):
    the records and their latencies in ms, filtered and checked the same way."""
    if column not in LATENCY_COLUMNS:
        raise DatasetError(f"unknown latency column {column!r}; use one of {', '.join(LATENCY_COLUMNS)}")
    from .measure import common_platform

    records = load_records(path, require_graph=require_graph)
    if families is not None:
        records = [r for r in records if r.get("family") in set(families)]
    keys = sorted({r.get("platform_key", "?") for r in records})
    if platform_key is not None:
        records = [r for r in records if r.get("platform_key") == platform_key]
    elif len(keys) > 1 and common_platform(keys) is None:     # an older key without the CPU generation may join
        raise DatasetError(f"{path} mixes measurements from several platforms ({', '.join(keys)}); "
                           "pass platform_key to pick one")
    lacking = [r["spec_id"] for r in records if column not in r]
    if lacking:
        raise DatasetError(f"{len(lacking)} records of {path} have no {column} (older records); "
                           "use median_ms, min_ms or mean_ms")
    return records, np.array([float(r[column]) for r in records], dtype=np.float64)


def _append(path: Path, record: Mapping) -> None:
    line = json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n"
    with gzip.open(path, "ab", compresslevel=9) as f:
        f.write(line.encode("utf-8"))


def _rewrite(path: Path, records: Iterable[Mapping]) -> None:
    """Rewrite a file with the given records as one gzip stream (atomic replace)."""
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wb", compresslevel=9) as f:
        for r in records:
            f.write((json.dumps(r, separators=(",", ":"), sort_keys=True) + "\n").encode("utf-8"))
    os.replace(tmp, path)


def _open_for_append(path: Path) -> list[dict]:
    """Existing records of ``path``; a damaged tail is cut off first so appends stay readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records, damaged = _read_lines(path)
    if damaged:
        warnings.warn(f"{path}: dropping an incomplete last line left by an interrupted build")
        _rewrite(path, records)
    return records


def compact(path: str | os.PathLike) -> dict:
    """Rewrite a data set, a re-measurement (pass) file or a structure set as one gzip stream
    (smaller than one member per line); same records."""
    path = Path(path)
    before = path.stat().st_size
    records, _ = _read_lines(path)
    if records and records[0].get("kind") == "structure":      # a structure set (latency.pretrain)
        if any("spec_id" not in r or "graph" not in r for r in records):
            raise DatasetError(f"{path}: not every line is a structure record (spec_id and graph)")
    else:
        records = load_records(path, require_graph=False)
    _rewrite(path, records)
    return {"records": len(records), "bytes_before": before, "bytes_after": path.stat().st_size}


# ------------------------------------------------------------------ one network
def _load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def cpu_time_ms(data: bytes, *, threads: int = 1, warmup: int = 2, repeats: int = 20,
                seed: int = 0) -> dict:
    """Per-run CPU time of the calling thread (``time.thread_time``), in ms: median, IQR, min.

    Why: on a shared machine the wall clock counts the time the OS gives to other processes.
    With one intra-op thread onnxruntime computes on the calling thread, so that thread's CPU
    time is the inference's own work, steady while the wall clock is not (measured on this
    project's 2-core machine at load 7: wall IQR 20-60% of the median, thread time 2-10%).
    It still moves with cache and memory-bandwidth contention. Only meaningful for threads=1.
    """
    from .measure import _open_session, _random_feeds

    if threads != 1:
        raise ValueError("thread CPU time measures single-threaded inference only (threads=1)")
    session = _open_session(data, 1)
    feeds, _ = _random_feeds(session, 1, np.random.default_rng(seed))
    for _ in range(warmup):
        session.run(None, feeds)
    t = []
    for _ in range(repeats):
        c0 = time.thread_time()
        session.run(None, feeds)
        t.append(time.thread_time() - c0)
    ms = np.asarray(t) * 1e3
    q25, q50, q75 = np.percentile(ms, [25, 50, 75])
    return {"cpu_median_ms": float(q50), "cpu_iqr_ms": float(q75 - q25), "cpu_min_ms": float(ms.min()),
            "cpu_samples_ms": [round(float(x), 3) for x in ms]}


def measure_spec(spec: Mapping, measure: Mapping | None = None, networks=None) -> tuple[dict, ArchGraph]:
    """Export, import and time one zoo spec -> (record, graph).

    ``networks``: the module that builds the spec (``export_onnx``, ``spec_id``, ``describe``);
    the zoo by default, ``latency.outside_zoo`` for the families outside it.
    """
    from ..onnx_import import load_onnx
    from .measure import measure_onnx, platform_key

    if networks is None:
        from . import zoo as networks
    opts = {**DEFAULT_MEASURE, **(measure or {})}
    t0 = time.perf_counter()
    data = networks.export_onnx(spec)
    graph = load_onnx(data, max_bytes=None)
    export_s = time.perf_counter() - t0
    load = _load_avg()
    m = measure_onnx(data, threads=int(opts["threads"]), warmup=int(opts["warmup"]),
                     repeats=int(opts["repeats"]), min_seconds=float(opts["min_seconds"]),
                     batch_size=int(spec.get("batch_size", 1)))
    timed_cpu = int(opts["threads"]) == 1 and bool(opts.get("cpu_time", True))
    cpu = cpu_time_ms(data, repeats=max(10, int(opts["repeats"]) // 2)) if timed_cpu else {}
    del data
    record = {
        **structure_fields(spec, graph, networks),
        "median_ms": m.median_ms, "iqr_ms": m.iqr_ms, "std_ms": m.std_ms, "mean_ms": m.mean_ms,
        "min_ms": m.min_ms, "p90_ms": m.p90_ms, "repeats": m.repeats, "platform": m.platform,
        "platform_key": platform_key(m.platform), "measured_at": m.measured_at,
        "p10_ms": float(np.percentile(m.samples_ms, 10)), "p25_ms": float(np.percentile(m.samples_ms, 25)),
        # Every timed run, to the microsecond: any other statistic can be computed later.
        "samples_ms": [round(x, 3) for x in m.samples_ms],
        **cpu,
        "load_avg": load, "export_s": round(export_s, 3),
        "measure_options": {k: opts[k] for k in DEFAULT_MEASURE},
    }
    return record, graph


def _store_in_db(db, record: Mapping, graph: ArchGraph, note: str | None = None) -> None:
    h = db.add_graph(graph, family=record["family"], description=record.get("description"))
    db.add_measurement(h, record["platform_key"], median_ms=record["median_ms"],
                       std_ms=record["std_ms"], iqr_ms=record["iqr_ms"], repeats=record["repeats"],
                       platform=record["platform"], measured_at=record["measured_at"],
                       source="measured", note=note)


def _this_platform_key(measure: Mapping | None) -> str:
    from .measure import platform_info, platform_key

    opts = {**DEFAULT_MEASURE, **(measure or {})}
    return platform_key(platform_info(int(opts["threads"]), 1))


def _check_platform(existing: Sequence[Mapping], measure: Mapping | None, path: Path,
                    allow_mixed: bool) -> None:
    from .measure import platform_keys_compatible

    here = _this_platform_key(measure)
    # Records from before CPU generations were recorded may be extended on a matching machine.
    other = sorted({str(r.get("platform_key")) for r in existing
                    if not platform_keys_compatible(str(r.get("platform_key")), here)})
    if other and not allow_mixed:
        raise DatasetError(
            f"{path} holds measurements from {', '.join(map(str, other))}, and this machine is {here}: "
            "latencies from different platforms do not mix. Write to another file, or pass "
            "allow_mixed_platform (--allow-mixed-platform) if you really mean to.")


# ------------------------------------------------------------------ the build
def _pending_specs(k: int, seed: int, families: Sequence[str], present: set[str]) -> list[dict]:
    """The next ``k`` specs of the seeded round-robin sequence that are not in ``present``."""
    from . import zoo

    if k <= 0:
        return []
    m = len(present) + k
    while True:
        specs = zoo.sample_specs(m, seed, families)
        todo = [s for s in specs if zoo.spec_id(s) not in present]
        if len(todo) >= k:
            return todo[:k]
        m = int(m * 1.5) + len(families)


def build_dataset(out: str | os.PathLike, n: int | None = None, *, extend: int = 0, seed: int = 0,
                  families: Sequence[str] | None = None, db: str | os.PathLike | None = None,
                  measure: Mapping | None = None, progress: bool = True,
                  allow_mixed_platform: bool = False, max_failures: int = 20,
                  on_record: Callable[[dict], None] | None = None,
                  specs: Sequence[Mapping] | None = None) -> dict:
    """Grow the data set at ``out``: up to ``n`` networks in all, or ``extend`` new ones.

    ``specs`` replaces the seeded zoo draw (tests use tiny hand-made specs). Networks whose
    export or timing fails are skipped and counted (the build stops after ``max_failures``).
    Returns a summary: counts, seconds, failures.
    """
    from . import zoo

    out = Path(out)
    families = tuple(families or zoo.FAMILIES)
    if n is None and not extend and specs is None:
        raise DatasetError("say how many networks: n (total) or extend (new ones)")
    if n is not None and n < 0 or extend < 0:
        raise DatasetError("n and extend cannot be negative")
    existing = _open_for_append(out)
    _check_platform(existing, measure, out, allow_mixed_platform)
    present = {r["spec_id"] for r in existing}
    if specs is not None:
        todo = [dict(s) for s in specs if zoo.spec_id(s) not in present]
        todo = todo[:extend] if extend else todo
    else:
        k = extend if extend else max(0, int(n) - len(existing))
        todo = _pending_specs(k, seed, families, present)

    database = None
    if db is not None:
        from .db import LatencyDB
        database = LatencyDB(db)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc=f"measure -> {out.name}", unit="net", dynamic_ncols=True)
    t0 = time.perf_counter()
    added, failures = 0, []
    try:
        for spec in todo:
            try:
                record, graph = measure_spec(spec, measure)
            except (ValueError, RuntimeError, MemoryError) as e:
                failures.append({"spec_id": zoo.spec_id(spec), "family": spec.get("family"),
                                 "error": f"{type(e).__name__}: {str(e)[:300]}"})
                if bar:
                    bar.write(f"skipped {zoo.spec_id(spec)} ({spec.get('family')}): {failures[-1]['error']}")
                if len(failures) >= max_failures:
                    raise DatasetError(f"{len(failures)} networks failed; stopping. Last: "
                                       f"{failures[-1]['error']}") from None
                continue
            _append(out, record)
            present.add(record["spec_id"])
            if database is not None:
                _store_in_db(database, record, graph, note=f"dataset {out.name}")
            added += 1
            if on_record:
                on_record(record)
            if bar:
                cpu = record.get("cpu_median_ms")
                bar.set_postfix_str(f"{record['family'][:12]} {record['median_ms']:.2f} ms"
                                    + (f" (cpu {cpu:.2f})" if cpu else "") + f", load {record['load_avg']}")
                bar.update(1)
    finally:
        if bar:
            bar.close()
        if database is not None:
            database.close()
    return {"path": str(out), "added": added, "total": len(existing) + added,
            "seconds": round(time.perf_counter() - t0, 1), "failures": failures}


# ------------------------------------------------------------------ test-retest
class ReferenceTimer:
    """One fixed network timed again and again between the measured ones: the host's speed now.

    Why: on a shared VM the speed of the host moves between minutes (other tenants), and that
    drift, common to every network timed at the same moment, is part of the disagreement between
    two timing passes (session 13: correcting for it took the floor from 5.42% to 4.79%). Timing one reference network just before and just after each network lets
    a label be expressed at the pass's typical speed (:func:`combine_passes`, ``refnorm_ms``).
    The reference's session stays open: it measures the machine, not a session's set-up.
    """

    def __init__(self, data: bytes, *, threads: int = 1, seconds: float = 0.25, warmup: int = 5):
        from .measure import _open_session, _random_feeds

        self.seconds = float(seconds)
        self._session = _open_session(data, int(threads))
        self._feeds, _ = _random_feeds(self._session, 1, np.random.default_rng(0))
        for _ in range(int(warmup)):
            self._session.run(None, self._feeds)

    def min_ms(self) -> float:
        """The fastest of the runs in ``seconds`` (at least 5 runs)."""
        run, feeds = self._session.run, self._feeds
        best, n, started = float("inf"), 0, time.perf_counter()
        while n < 5 or time.perf_counter() - started < self.seconds:
            t0 = time.perf_counter()
            run(None, feeds)
            best = min(best, time.perf_counter() - t0)
            n += 1
        return best * 1e3


def remeasure(source: str | os.PathLike, out: str | os.PathLike, k: int, *,
              measure: Mapping | None = None, progress: bool = True, db=None, start_at: int = 0,
              stride: int = 1, reference: str | None = None, reference_seconds: float = 0.25,
              reference_source: str | os.PathLike | None = None) -> dict:
    """Time the first ``k`` networks of ``source`` again (a later run) into ``out``.

    The networks are rebuilt from their specs (the export is deterministic) and their graph hash
    is checked against the first measurement. Resumable like the build. ``source`` is laid out
    round robin over the families, so its first ``k`` lines cover them evenly.

    ``start_at``: begin at that network of the ``k`` and wrap around, so that two passes with
    starts ``k/2`` apart time every network twice, far apart in time, which is what
    :func:`combine_passes` needs. Session 4 ran two such passes side by side (one per core); on
    the same 40 networks that gave labels 3.6x noisier than one measurer at a time with 1 s
    sessions (assets/latency/README.md), so prefer one pass after another.

    ``stride``: take every ``stride``-th network of ``source`` (then the first ``k`` of those), so
    a re-test sample is spread over a whole pass instead of its first minutes.
    ``reference``: the spec_id of a network of ``source`` to time before and after each network
    (:class:`ReferenceTimer`); each record then carries ``ref_before_ms``/``ref_after_ms``.
    ``reference_source``: look the reference up in that data set instead (e.g. a zoo network as
    the reference of an outside-zoo pass, so that both sets are timed against the same network).
    """
    from .families import network_module as builder   # each kind of family builds its own

    source, out = Path(source), Path(out)
    first = load_records(source, structures=True)
    done = {r["spec_id"] for r in _open_for_append(out)}
    if int(stride) < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    chosen = first[::int(stride)][:k]
    if k > len(chosen):
        every = "" if int(stride) == 1 else f" taking every {int(stride)}-th network"
        warnings.warn(f"{source} has only {len(chosen)} networks{every}; re-measuring all of them")
    ref_timer = None
    if reference is not None:
        pool = first if reference_source is None else load_records(reference_source, require_graph=False)
        ref_rec = next((r for r in pool if r["spec_id"] == reference), None)
        if ref_rec is None:
            raise DatasetError(f"the reference {reference!r} is not a spec_id of "
                               f"{reference_source or source}")
        opts = {**DEFAULT_MEASURE, **(measure or {})}
        ref_timer = ReferenceTimer(builder(ref_rec["spec"]).export_onnx(ref_rec["spec"]),
                                   threads=int(opts["threads"]), seconds=reference_seconds)
    if chosen:
        s0 = int(start_at) % len(chosen)
        chosen = chosen[s0:] + chosen[:s0]
    todo = [r for r in chosen if r["spec_id"] not in done]
    database = None
    if db is not None:
        from .db import LatencyDB
        database = LatencyDB(db)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc=f"re-measure -> {out.name}", unit="net", dynamic_ncols=True)
    t0, added, mismatched = time.perf_counter(), 0, 0
    try:
        for r0 in todo:
            before = ref_timer.min_ms() if ref_timer else None
            record, graph = measure_spec(r0["spec"], measure, networks=builder(r0["spec"]))
            if ref_timer:
                record.update({"reference_spec_id": reference, "ref_before_ms": round(before, 4),
                               "ref_after_ms": round(ref_timer.min_ms(), 4)})
            if record["spec_id"] != r0["spec_id"]:
                raise DatasetError(f"spec {r0['spec_id']} re-hashes to {record['spec_id']}: "
                                   "the zoo's spec format changed since the first measurement")
            same = record["graph_hash"] == r0.get("graph_hash")
            mismatched += not same
            record.update({"first_median_ms": r0.get("median_ms"), "first_measured_at": r0.get("measured_at"),
                           "first_platform_key": r0.get("platform_key"), "same_graph": same})
            del record["graph"]        # the first file has it; graph_hash ties the two together
            _append(out, record)
            if database is not None:
                _store_in_db(database, record, graph, note=f"re-measurement {out.name}")
            added += 1
            if bar:
                first_ms = f"{r0['median_ms']:.2f} -> " if "median_ms" in r0 else ""
                bar.set_postfix_str(f"{first_ms}{record['median_ms']:.2f} ms")
                bar.update(1)
    finally:
        if bar:
            bar.close()
        if database is not None:
            database.close()
    # A structure set has no first timing to agree with: its passes meet in combine_passes.
    untimed = any("median_ms" not in r for r in first)
    return {"path": str(out), "added": added, "seconds": round(time.perf_counter() - t0, 1),
            "graph_mismatches": mismatched, **({} if untimed else test_retest(source, out))}


# ------------------------------------------------------------------ several passes, one label
# What a record keeps of its source: the network, not the source's own timing.
_STRUCTURE_FIELDS = ("schema", "spec_id", "family", "spec", "description", "graph", "graph_hash",
                     "n_nodes", "static")


def combine_passes(source: str | os.PathLike, passes: Sequence[str | os.PathLike],
                   out: str | os.PathLike, reference_window: int = ROLLING_REFERENCE_WINDOW,
                   reference_level: float | None = None) -> dict:
    """One data set from several timing passes of the same networks: every timed run pooled.

    Why: on this machine the latency of a network moves by 10-20 % between two sessions minutes
    apart (the host's other tenants, not our own load: measured on an idle VM), and the slowdowns
    are one-sided, so the fastest run of a single session still disagrees with the next session's
    by ~7 %. The fastest run over two sessions far apart in time agreed with another such pair to
    ~3 % in a 40-network pilot (one measurer at a time, 1 s sessions); over the 2,000-network set,
    three sessions gave a 6.6 % floor (assets/latency/README.md). The combined record's ``min_ms``
    is that label; ``median_ms`` and the quantiles are over the pooled runs; ``pass_min_ms`` /
    ``pass_median_ms`` / ``pass_measured_at`` keep each pass's own figures.

    ``source`` gives the structure (spec, graph, static features); ``passes`` are files written
    by :func:`remeasure`. Only networks timed in every pass are written, in the source's order.

    When every pass timed the same reference network around each network (``remeasure(...,
    reference=...)``), records also get ``refnorm_ms``: each pass's ``min_ms`` scaled by the
    reference's median speed over all passes divided by its speed at that moment, averaged over
    the passes in log space (``pass_refnorm_ms`` keeps each pass's figure). They also get
    ``refroll_ms``, the same with the host's speed taken as the median of the reference's times
    over the ``reference_window`` networks timed before and after (in each pass file's order,
    which is the order they were timed in): a single 0.25 s reference timing is itself noisy
    (session 18, ``scripts/label_estimators.py``: 3.93% -> 3.60% re-test on the AMD passes).

    ``reference_level``: the reference time (ms) that the corrected columns are scaled to; by
    default the median over these passes. A re-test of a labelled set must use the set's own
    level (its records' ``reference_level_ms``), or a host that ran everything, the reference
    included, 5% slower that day shifts every re-test label by 5% (session 19).
    """
    if int(reference_window) < 0:
        raise DatasetError(f"the reference window cannot be negative, got {reference_window}")
    if reference_level is not None and not float(reference_level) > 0:
        raise DatasetError(f"the reference level must be a positive time, got {reference_level}")
    src = load_records(source, structures=True)
    pass_maps, pass_records = [], []
    for p in passes:
        recs = load_records(p, require_graph=False)
        pass_records.append(recs)
        pass_maps.append({r["spec_id"]: r for r in recs})
    if not pass_maps:
        raise DatasetError("combine_passes needs at least one pass")
    keys = {m[sid]["platform_key"] for m in pass_maps for sid in m}
    from .measure import common_platform
    # A pass recorded before CPU generations were may join passes of one generation; two
    # generations never mix.
    if common_platform(keys) is None:
        raise DatasetError(f"the passes were measured on different platforms: {sorted(keys)}")
    # Drift correction (ReferenceTimer): only when every pass timed the same reference around
    # each network, so that all labels of the file are on one footing.
    refs = {r.get("reference_spec_id") for m in pass_maps for r in m.values()}
    level, rolling = None, None
    if len(refs) == 1 and None not in refs:
        level = (float(reference_level) if reference_level is not None
                 else float(np.median([_ref_speed(r) for m in pass_maps for r in m.values()])))
        rolling = [rolling_reference_speed(recs, reference_window) for recs in pass_records]
    out = Path(out)
    written, missing, mismatched = [], 0, 0
    for r0 in src:
        runs = [m.get(r0["spec_id"]) for m in pass_maps]
        if any(r is None for r in runs):
            missing += 1
            continue
        if any(r.get("graph_hash") != r0.get("graph_hash") for r in runs):
            mismatched += 1
            continue
        pooled = np.concatenate([np.asarray(r["samples_ms"], dtype=float) for r in runs])
        q10, q25, q50, q75, q90 = np.percentile(pooled, [10, 25, 50, 75, 90])
        rec = {k: r0[k] for k in _STRUCTURE_FIELDS if k in r0}
        rec.update({
            # min from each pass's unrounded figure (samples_ms are kept to the microsecond)
            "median_ms": float(q50), "min_ms": min(float(r["min_ms"]) for r in runs), "mean_ms": float(pooled.mean()),
            "std_ms": float(pooled.std(ddof=1)) if len(pooled) > 1 else 0.0,
            "iqr_ms": float(q75 - q25), "p10_ms": float(q10), "p25_ms": float(q25), "p90_ms": float(q90),
            "repeats": int(len(pooled)),
            "pass_min_ms": [float(r["min_ms"]) for r in runs],
            "pass_median_ms": [float(r["median_ms"]) for r in runs],
            "pass_measured_at": [r.get("measured_at") for r in runs],
            "pass_load_avg": [r.get("load_avg") for r in runs],
            # the load when the session that gave min_ms started
            "load_avg": min(runs, key=lambda r: float(r["min_ms"])).get("load_avg"),
            "platform": runs[0]["platform"], "platform_key": runs[0]["platform_key"],
            "measured_at": max(str(r.get("measured_at", "")) for r in runs),
            "measure_options": runs[0].get("measure_options"),
            "combined_from": [Path(p).name for p in passes],
        })
        if level is not None:
            # The fastest run at the reference's typical speed over all passes. The correction
            # removes the slow drift, so what is left is two-sided: passes are averaged (in log).
            each = [float(r["min_ms"]) * level / _ref_speed(r) for r in runs]
            rolled = [float(r["min_ms"]) * level / speeds[r0["spec_id"]] for r, speeds in zip(runs, rolling)]
            rec.update({"refnorm_ms": float(np.exp(np.mean(np.log(each)))), "pass_refnorm_ms": each,
                        "refroll_ms": float(np.exp(np.mean(np.log(rolled)))), "pass_refroll_ms": rolled,
                        "reference_window": int(reference_window),
                        "reference_spec_id": runs[0]["reference_spec_id"], "reference_level_ms": level})
        written.append(rec)
    if not written:
        raise DatasetError(f"no network of {source} was timed in all {len(passes)} passes")
    _rewrite(out, written)
    spread = [(max(r["pass_min_ms"]) - min(r["pass_min_ms"])) / min(r["pass_min_ms"]) for r in written]
    return {"path": str(out), "records": len(written), "passes": len(passes),
            "skipped_not_in_every_pass": missing, "skipped_graph_mismatch": mismatched,
            "median_spread_between_pass_minima_pct": round(float(np.median(spread)) * 100, 2)}


def rolling_reference_speed(records: Sequence[Mapping], window: int) -> dict[str, float]:
    """{spec_id: the host's speed around that network}, from one pass's records in timing order.

    The speed is the reference's time around each network (:func:`_ref_speed`), and with
    ``window`` > 0 the median of it, in log, over that network and the ``window`` networks timed
    before and after it (fewer at the ends of the pass).
    """
    if int(window) < 0:
        raise ValueError(f"reference_window cannot be negative, got {window}")
    ref = np.log([_ref_speed(r) for r in records])
    w = int(window)
    smooth = [float(np.median(ref[max(0, i - w):i + w + 1])) for i in range(len(ref))]
    return {r["spec_id"]: float(np.exp(x)) for r, x in zip(records, smooth)}


def _ref_speed(record: Mapping) -> float:
    """The reference network's time around this record's timing (geometric mean of before/after)."""
    return float(np.sqrt(float(record["ref_before_ms"]) * float(record["ref_after_ms"])))


def test_retest(first: str | os.PathLike, second: str | os.PathLike, column: str = "median_ms") -> dict:
    """How far two measurements of the same networks disagree: the floor for any predictor.

    MAPE and Acc(10%) take the first measurement as the truth and the second as the
    "prediction", exactly as a predictor is scored; per family as well.
    """
    from ..metrics import acc_within, kendall_tau, mape

    a = {r["spec_id"]: r for r in load_records(first)}
    pairs = [(a[r["spec_id"]], r) for r in load_records(second, require_graph=False)
             if r["spec_id"] in a and column in r and column in a[r["spec_id"]]]
    if not pairs:
        return {"n": 0, "column": column}
    t = np.array([p[0][column] for p in pairs])
    s = np.array([p[1][column] for p in pairs])
    fam = np.array([str(p[0].get("family", "?")) for p in pairs])
    out: dict[str, Any] = {
        "column": column, "n": len(pairs), "mape": round(mape(s, t), 3), "acc10": round(acc_within(s, t), 2),
        "kendall_tau": round(kendall_tau(s, t), 4),
        "median_ape": round(float(np.median(np.abs(s - t) / t) * 100), 3),
        "mean_ratio_second_over_first": round(float(np.mean(s / t)), 4),
        "platforms": sorted({p[0].get("platform_key", "?") for p in pairs} |
                            {p[1].get("platform_key", "?") for p in pairs}),
        "per_family": {},
    }
    for f in sorted(set(fam.tolist())):
        m = fam == f
        out["per_family"][str(f)] = {"n": int(m.sum()), "mape": round(mape(s[m], t[m]), 3),
                                "acc10": round(acc_within(s[m], t[m]), 2)}
    return out


def summarize(path: str | os.PathLike) -> dict:
    """Counts and latency range per family; the platform(s) and measurement dates."""
    records = load_records(path)
    fams: dict[str, list[float]] = {}
    for r in records:
        fams.setdefault(r.get("family", "?"), []).append(float(r["median_ms"]))
    rel_iqr = [r["iqr_ms"] / r["median_ms"] for r in records if r.get("median_ms")]
    cpu_iqr = [r["cpu_iqr_ms"] / r["cpu_median_ms"] for r in records if r.get("cpu_median_ms")]
    wall_cpu = [r["median_ms"] / r["cpu_median_ms"] for r in records if r.get("cpu_median_ms")]
    dates = sorted(r.get("measured_at", "") for r in records)
    return {
        "path": str(path), "records": len(records), "bytes": Path(path).stat().st_size,
        "platforms": sorted({r.get("platform_key", "?") for r in records}),
        "measured_from": dates[0] if dates else None, "measured_to": dates[-1] if dates else None,
        "median_relative_iqr_pct": round(float(np.median(rel_iqr)) * 100, 2) if rel_iqr else math.nan,
        "median_relative_cpu_iqr_pct": round(float(np.median(cpu_iqr)) * 100, 2) if cpu_iqr else None,
        "median_wall_over_cpu": round(float(np.median(wall_cpu)), 3) if wall_cpu else None,
        "families": {f: {"n": len(v), "min_ms": round(min(v), 3), "median_ms": round(float(np.median(v)), 3),
                         "max_ms": round(max(v), 3)} for f, v in sorted(fams.items())},
    }


def extra_train_paths(meta: dict) -> list[str]:
    """The ``bench latency --extra-train`` files a fit's metadata names: ``extra_train.paths``
    (session 22 on) or the one ``extra_train.path`` of session 21's fits."""
    x = meta.get("extra_train") or {}
    return [str(p) for p in (x.get("paths") or ([x["path"]] if x.get("path") else []))]
