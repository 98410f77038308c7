"""The measured latency data set: real exports, real timings, tiny networks (NB201 C=8, N=1, 32 px)."""
import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from narformer_core.graph import ArchGraph
from narformer_core.latency import dataset as ds
from narformer_core.latency import zoo

QUICK = {"warmup": 1, "repeats": 3, "min_seconds": 0.0}
ARCHS = ["|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|",
         "|skip_connect~0|+|nor_conv_1x1~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_3x3~1|none~2|",
         "|nor_conv_1x1~0|+|none~0|none~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"]


def tiny_spec(arch):
    return {"family": "nasbench201", "resolution": 32, "batch_size": 1, "arch": arch, "channels": 8,
            "cells_per_stage": 1}


SPECS = [tiny_spec(a) for a in ARCHS]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two networks first, then all three: the second call must add only the missing one."""
    d = tmp_path_factory.mktemp("latency_ds")
    path, db = d / "set.jsonl.gz", d / "lat.sqlite"
    first = ds.build_dataset(path, specs=SPECS[:2], measure=QUICK, progress=False, db=db)
    second = ds.build_dataset(path, specs=SPECS, measure=QUICK, progress=False, db=db)
    return path, db, first, second


def test_lines_are_complete_records(built):
    path, _, first, second = built
    assert first["added"] == 2 and second["added"] == 1 and second["total"] == 3
    lines = gzip.open(path, "rt").read().splitlines()
    assert len(lines) == 3
    for line, spec in zip(lines, SPECS):
        r = json.loads(line)
        assert r["spec_id"] == zoo.spec_id(spec) and r["spec"] == spec and r["family"] == "nasbench201"
        g = ArchGraph.from_dict(r["graph"])
        assert g.stable_hash() == r["graph_hash"] and len(g) == r["n_nodes"] > 10
        # structure only: no weight values anywhere in the record
        assert "raw_data" not in line and "float_data" not in line
        assert r["static"]["flops"] > 0 and r["static"]["params"] > 0 and r["static"]["batch_size"] == 1
        assert r["median_ms"] > 0 and r["iqr_ms"] >= 0 and r["std_ms"] >= 0 and r["repeats"] >= 3
        assert r["min_ms"] <= r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert len(r["samples_ms"]) == r["repeats"]
        assert r["platform"]["threads"] == 1 and r["platform_key"].endswith("-t1-b1")
        assert r["measured_at"].endswith("+00:00")


def test_extend_adds_no_duplicates(built):
    path, _, _, _ = built
    again = ds.build_dataset(path, specs=SPECS, measure=QUICK, progress=False)
    assert again["added"] == 0 and again["total"] == 3
    records, graphs, y = ds.load_dataset(path)
    assert len({r["spec_id"] for r in records}) == 3 and len(graphs) == 3
    assert np.all(y > 0) and y.dtype == np.float64
    _, _, y_min = ds.load_dataset(path, column="min_ms")
    assert np.all(y_min <= y)


def test_database_got_every_measurement(built):
    from narformer_core.latency.db import LatencyDB

    path, db, _, _ = built
    records = ds.load_records(path)
    with LatencyDB(db) as d:
        for r in records:
            rec = d.get(r["graph_hash"], r["platform_key"])
            assert rec is not None and rec.median_ms == pytest.approx(r["median_ms"])
        assert d.stats()["graphs_measured"] == 3


def test_damaged_tail_is_dropped_then_repaired(built, tmp_path):
    path, _, _, _ = built
    copy = tmp_path / "cut.jsonl.gz"
    data = path.read_bytes()
    # An interrupted append: a new gzip member cut in the middle.
    extra = gzip.compress(b'{"spec_id": "x", "graph": {}, "median_ms": 1.0}\n')
    copy.write_bytes(data + extra[: len(extra) // 2])
    with pytest.warns(UserWarning, match="incomplete"):
        assert len(ds.load_records(copy)) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ds.build_dataset(copy, specs=SPECS, measure=QUICK, progress=False)
    assert res["total"] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # repaired: reads cleanly now
        assert len(ds.load_records(copy)) == 3


def test_other_platform_is_refused(built, tmp_path):
    path, _, _, _ = built
    other = tmp_path / "other.jsonl.gz"
    r = ds.load_records(path)[0]
    r["platform_key"] = "cpu-Some_Other_CPU-ort1.0-t1-b1"
    with gzip.open(other, "wt") as f:
        f.write(json.dumps(r) + "\n")
    with pytest.raises(ds.DatasetError, match="platforms do not mix"):
        ds.build_dataset(other, specs=SPECS, measure=QUICK, progress=False)
    with pytest.raises(ds.DatasetError, match="several platforms"):
        with gzip.open(other, "at") as f:
            f.write(json.dumps(ds.load_records(path)[1]) + "\n")
        ds.load_dataset(other)


def test_remeasure_and_test_retest(built, tmp_path):
    path, _, _, _ = built
    second = tmp_path / "retest.jsonl.gz"
    res = ds.remeasure(path, second, 2, measure=QUICK, progress=False)
    assert res["added"] == 2 and res["graph_mismatches"] == 0 and res["n"] == 2
    assert res["mape"] >= 0 and 0 <= res["acc10"] <= 100
    again = ds.remeasure(path, second, 2, measure=QUICK, progress=False)
    assert again["added"] == 0
    lines = ds.load_records(second, require_graph=False)
    assert all(r["same_graph"] and r["first_median_ms"] > 0 and "graph" not in r for r in lines)
    assert set(ds.test_retest(path, second)["per_family"]) == {"nasbench201"}


def test_remeasure_start_at_wraps_and_skips_cpu_clock(built, tmp_path):
    path, _, _, _ = built
    out = tmp_path / "rotated.jsonl.gz"
    ds.remeasure(path, out, 3, measure={**QUICK, "cpu_time": False}, progress=False, start_at=2)
    order = [r["spec_id"] for r in ds.load_records(out, require_graph=False)]
    first = [r["spec_id"] for r in ds.load_records(path)]
    assert order == [first[2], first[0], first[1]]
    assert all("cpu_median_ms" not in r for r in ds.load_records(out, require_graph=False))


def test_combine_passes_pools_every_run(built, tmp_path):
    path, _, _, _ = built
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    ds.remeasure(path, a, 3, measure=QUICK, progress=False)
    ds.remeasure(path, b, 2, measure=QUICK, progress=False, start_at=1)
    # Pass files (no graphs) compact like data sets: one gzip stream, the same records.
    before = ds.load_records(a, require_graph=False)
    assert ds.compact(a)["records"] == 3 and ds.load_records(a, require_graph=False) == before
    res = ds.combine_passes(path, [a, b], tmp_path / "c.jsonl.gz")
    # Pass b timed networks 1 and 2 only: network 0 is left out, not half-labelled.
    assert res["records"] == 2 and res["skipped_not_in_every_pass"] == 1
    src = {r["spec_id"]: r for r in ds.load_records(path)}
    pa = {r["spec_id"]: r for r in ds.load_records(a, require_graph=False)}
    pb = {r["spec_id"]: r for r in ds.load_records(b, require_graph=False)}
    for r in ds.load_records(tmp_path / "c.jsonl.gz"):
        sid = r["spec_id"]
        assert r["graph"] == src[sid]["graph"] and r["static"] == src[sid]["static"]
        assert r["min_ms"] == min(pa[sid]["min_ms"], pb[sid]["min_ms"])
        assert r["pass_min_ms"] == [pa[sid]["min_ms"], pb[sid]["min_ms"]]
        fastest = pa[sid] if pa[sid]["min_ms"] <= pb[sid]["min_ms"] else pb[sid]
        assert r["load_avg"] == fastest["load_avg"]
        assert r["repeats"] == pa[sid]["repeats"] + pb[sid]["repeats"]
        pooled = pa[sid]["samples_ms"] + pb[sid]["samples_ms"]
        assert r["median_ms"] == pytest.approx(float(np.median(pooled)))
        assert "cpu_median_ms" not in r  # the passes' clock only: no stale figure from the source
    # A combined file is a data set like any other: it loads for training on its min_ms.
    _, graphs, y = ds.load_dataset(tmp_path / "c.jsonl.gz", column="min_ms")
    assert len(graphs) == 2 and (y > 0).all()
    with pytest.raises(ds.DatasetError, match="at least one pass"):
        ds.combine_passes(path, [], tmp_path / "d.jsonl.gz")


def test_stride_and_reference_timings(built, tmp_path):
    path, _, _, _ = built
    first = ds.load_records(path)
    out = tmp_path / "strided.jsonl.gz"
    ref = first[1]["spec_id"]
    with pytest.warns(UserWarning, match="only 2 networks taking every 2-th"):
        ds.remeasure(path, out, 5, measure=QUICK, progress=False, stride=2, reference=ref,
                     reference_seconds=0.01)
    recs = ds.load_records(out, require_graph=False)
    # every second network, the first k of those: networks 0 and 2 of three
    assert [r["spec_id"] for r in recs] == [first[0]["spec_id"], first[2]["spec_id"]]
    for r in recs:
        assert r["reference_spec_id"] == ref and r["ref_before_ms"] > 0 and r["ref_after_ms"] > 0
    with pytest.raises(ds.DatasetError, match="not a spec_id"):
        ds.remeasure(path, tmp_path / "x.jsonl.gz", 1, measure=QUICK, progress=False, reference="nope")
    with pytest.raises(ValueError, match="stride"):
        ds.remeasure(path, tmp_path / "y.jsonl.gz", 1, measure=QUICK, progress=False, stride=0)


def _steady_pass(built, tmp_path) -> tuple[Path, Path, list[dict]]:
    """A real 3-network pass with a reference, its reference times then set to a steady 2 ms."""
    path, _, _, _ = built
    a = tmp_path / "a.jsonl.gz"
    ds.remeasure(path, a, 3, measure=QUICK, progress=False, reference=ds.load_records(path)[0]["spec_id"],
                 reference_seconds=0.01)
    base = ds.load_records(a, require_graph=False)
    for r in base:
        r["ref_before_ms"] = r["ref_after_ms"] = 2.0
    return path, a, base


def test_combine_passes_corrects_for_the_reference_speed(built, tmp_path):
    """A pass timed while the host ran 1.5x slower (its reference too) gets the same label."""
    path, a, base = _steady_pass(built, tmp_path)
    slow = [dict(r, min_ms=r["min_ms"] * 1.5, ref_before_ms=3.0 * 0.9, ref_after_ms=3.0 / 0.9) for r in base]
    ds._rewrite(a, base)
    b = tmp_path / "b.jsonl.gz"
    ds._rewrite(b, slow)
    ds.combine_passes(path, [a, b], tmp_path / "c.jsonl.gz")
    by_id = {r["spec_id"]: r for r in base}
    for r in ds.load_records(tmp_path / "c.jsonl.gz"):
        m = by_id[r["spec_id"]]["min_ms"]
        # reference level: the median of 2 ms (three records) and 3 ms (three records) = 2.5 ms
        assert r["reference_level_ms"] == pytest.approx(2.5)
        assert r["pass_refnorm_ms"] == pytest.approx([m * 2.5 / 2.0, m * 1.5 * 2.5 / 3.0])
        assert r["refnorm_ms"] == pytest.approx(m * 1.25)   # both passes agree once corrected
        assert r["min_ms"] == pytest.approx(m)              # the raw label is kept as it was
    _, _, y = ds.load_dataset(tmp_path / "c.jsonl.gz", column="refnorm_ms")   # a label like any other
    assert y == pytest.approx([by_id[sid]["min_ms"] * 1.25 for sid in by_id])
    # A pass without reference timings: no corrected column at all (labels on one footing).
    plain = tmp_path / "plain.jsonl.gz"
    ds._rewrite(plain, [{k: v for k, v in r.items() if not k.startswith("ref")} for r in base])
    ds.combine_passes(path, [a, plain], tmp_path / "d.jsonl.gz")
    assert all("refnorm_ms" not in r for r in ds.load_records(tmp_path / "d.jsonl.gz"))


def test_rolling_reference_takes_the_median_around_each_network():
    """One wild reference timing moves only its own network's moment correction, not the rolling one."""
    recs = [{"spec_id": f"n{i}", "ref_before_ms": 2.0, "ref_after_ms": 2.0} for i in range(7)]
    recs[3] = dict(recs[3], ref_before_ms=8.0, ref_after_ms=8.0)      # a hiccup while timing the reference
    speed = ds.rolling_reference_speed(recs, 2)
    assert speed == pytest.approx({f"n{i}": 2.0 for i in range(7)})
    assert ds.rolling_reference_speed(recs, 0)["n3"] == pytest.approx(8.0)   # window 0: the moment
    # a real slowdown of the host (every reference timing from n3 on) is followed
    slow = [dict(r, ref_before_ms=4.0, ref_after_ms=4.0) if i >= 3 else r for i, r in enumerate(recs)]
    speed = ds.rolling_reference_speed(slow, 2)
    assert speed["n0"] == pytest.approx(2.0) and speed["n5"] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="negative"):
        ds.rolling_reference_speed(recs, -1)


def test_combine_passes_writes_the_rolling_label(built, tmp_path):
    path, a, base = _steady_pass(built, tmp_path)
    base[1]["ref_before_ms"] = base[1]["ref_after_ms"] = 4.0     # one noisy reference timing mid-pass
    ds._rewrite(a, base)
    ds.combine_passes(path, [a], tmp_path / "c.jsonl.gz", reference_window=1)
    by_id = {r["spec_id"]: r for r in base}
    out = {r["spec_id"]: r for r in ds.load_records(tmp_path / "c.jsonl.gz")}
    noisy = base[1]["spec_id"]
    # level: the median reference time (2 ms); the rolling median around the noisy one is 2 ms too
    assert out[noisy]["refroll_ms"] == pytest.approx(by_id[noisy]["min_ms"])
    assert out[noisy]["refnorm_ms"] == pytest.approx(by_id[noisy]["min_ms"] / 2)
    assert out[noisy]["reference_window"] == 1
    ds.combine_passes(path, [a], tmp_path / "d.jsonl.gz", reference_window=0)   # window 0 = the moment
    for r in ds.load_records(tmp_path / "d.jsonl.gz"):
        assert r["refroll_ms"] == pytest.approx(r["refnorm_ms"])
    # A re-test on another set's scale: the corrected columns follow that reference level.
    ds.combine_passes(path, [a], tmp_path / "e.jsonl.gz", reference_window=1, reference_level=3.0)
    rescaled = {r["spec_id"]: r for r in ds.load_records(tmp_path / "e.jsonl.gz")}
    assert all(r["reference_level_ms"] == 3.0 for r in rescaled.values())
    assert rescaled[noisy]["refroll_ms"] == pytest.approx(by_id[noisy]["min_ms"] * 3.0 / 2.0)
    with pytest.raises(ds.DatasetError, match="positive"):
        ds.combine_passes(path, [a], tmp_path / "f.jsonl.gz", reference_level=0.0)


def test_not_a_dataset(tmp_path):
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"this is not gzip at all")
    with pytest.raises(ds.DatasetError, match="not a gzip"):
        ds.load_records(bad)
    with pytest.raises(ds.DatasetError, match="no latency data set"):
        ds.load_records(tmp_path / "missing.jsonl.gz")
    with pytest.raises(ds.DatasetError, match="how many"):
        ds.build_dataset(tmp_path / "x.jsonl.gz")


def test_pending_specs_round_robin_and_skip_present():
    todo = ds._pending_specs(4, seed=3, families=("squeezenet", "vgg16"), present=set())
    assert [s["family"] for s in todo] == ["squeezenet", "vgg16", "squeezenet", "vgg16"]
    present = {zoo.spec_id(todo[0]), zoo.spec_id(todo[2])}
    more = ds._pending_specs(2, seed=3, families=("squeezenet", "vgg16"), present=present)
    assert [zoo.spec_id(s) for s in more] == [zoo.spec_id(todo[1]), zoo.spec_id(todo[3])]


def test_a_key_without_cpu_generation_joins_its_generation_but_not_another(built, tmp_path):
    """Records from before CPU generations were in the key (session 14) may be extended and
    loaded beside new ones of a matching machine; two generations stay apart."""
    from narformer_core.latency.measure import platform_info, platform_key, without_generation

    path, _, _, _ = built
    here = platform_key(platform_info(1, 1))
    legacy = tmp_path / "legacy.jsonl.gz"
    recs = ds.load_records(path)
    with gzip.open(legacy, "wt") as f:
        for r in recs[:2]:
            f.write(json.dumps({**r, "platform_key": without_generation(here)}) + "\n")
    ds.build_dataset(legacy, specs=SPECS, measure=QUICK, progress=False)     # extends, not refused
    keys = {r["platform_key"] for r in ds.load_records(legacy)}
    assert here in keys and len(ds.load_dataset(legacy)[0]) == len(ds.load_records(legacy))
    if here != without_generation(here):                                     # x86 / ARM Linux
        assert keys == {here, without_generation(here)}
        other = tmp_path / "other_generation.jsonl.gz"
        with gzip.open(other, "wt") as f:
            f.write(json.dumps({**recs[0], "platform_key": here.replace("-ort", "x9-ort", 1)}) + "\n")
            f.write(json.dumps(recs[1]) + "\n")
        with pytest.raises(ds.DatasetError, match="several platforms"):
            ds.load_dataset(other)


def test_a_structure_set_is_timed_by_remeasure_and_labelled_by_combine(tmp_path):
    """Session 21: new networks drawn untimed (a structure set) get their labels from two passes."""
    from narformer_core.latency.pretrain import structure_record

    structures = tmp_path / "structures.jsonl.gz"
    with gzip.open(structures, "wt") as f:
        for spec in SPECS[:2]:
            f.write(json.dumps(structure_record(spec)[0]) + "\n")
    with pytest.raises(ds.DatasetError, match="not a latency record"):
        ds.load_records(structures)              # a data set is still a timed one
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    res = ds.remeasure(structures, a, 2, measure=QUICK, progress=False)
    assert res["added"] == 2 and "mape" not in res          # no first timing to agree with
    ds.remeasure(structures, b, 2, measure=QUICK, progress=False, start_at=1)
    assert all(r["first_median_ms"] is None for r in ds.load_records(a, require_graph=False))
    out = ds.combine_passes(structures, [a, b], tmp_path / "labelled.jsonl.gz")
    assert out["records"] == 2
    records, graphs, y = ds.load_dataset(tmp_path / "labelled.jsonl.gz", column="min_ms")
    assert len(graphs) == 2 and np.all(y > 0) and all("kind" not in r for r in records)
