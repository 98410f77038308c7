"""The embedded latency database: storage, the hit / measured / predicted paths, concurrency."""
import multiprocessing as mp
import pickle
import sqlite3
import threading

import pytest

from narformer_core.graph import ArchGraph, Node
from narformer_core.latency.db import LatencyDB, LatencyDBError, LatencyRecord, QueryResult
from narformer_core.latency.measure import Measurement
from narformer_core.spaces import nb201

KEY = "cpu-Test_CPU-ort1.0-t1-b1"
CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


@pytest.fixture
def db(tmp_path):
    with LatencyDB(tmp_path / "lat.sqlite") as d:
        yield d


def chain(n: int) -> ArchGraph:
    """A distinct little graph per n (a chain of n+1 Relu nodes after the input)."""
    return ArchGraph([Node("input")] + [Node("Relu", (i,)) for i in range(n + 1)], space="test")


def test_add_graph_and_measurement_roundtrip(db):
    g = nb201.to_graph(CELL)
    h = db.add_graph(g)
    assert h == g.stable_hash() and db.add_graph(g) == h  # idempotent
    assert db.get_graph(h) == g and db.has_graph(h)
    assert db.get(h, KEY) is None
    rid = db.add_measurement(h, KEY, median_ms=1.5, std_ms=0.1, iqr_ms=0.05, repeats=30,
                             platform={"cpu": "Test"}, note="by hand")
    rec = db.get(h, KEY)
    assert isinstance(rec, LatencyRecord) and rec.id == rid
    assert (rec.median_ms, rec.std_ms, rec.iqr_ms, rec.repeats) == (1.5, 0.1, 0.05, 30)
    assert rec.platform == {"cpu": "Test"} and rec.source == "measured" and rec.note == "by hand"
    db.add_measurement(h, KEY, median_ms=1.2)
    assert db.get(h, KEY).median_ms == 1.2  # the latest measurement wins
    assert db.get(h, "some-other-platform") is None
    df = db.list_measurements()
    assert list(df.median_ms) == [1.2, 1.5]  # newest first
    assert df.family.iloc[0] == "nb201" and df.description.iloc[0] == CELL


def test_add_measurement_accepts_a_measurement_object(db):
    h = db.add_graph(chain(1), family="chains", description="two relus")
    m = Measurement(median_ms=2.0, mean_ms=2.1, std_ms=0.3, min_ms=1.9, p90_ms=2.5, iqr_ms=0.2,
                    repeats=30, platform={"cpu": "X"}, measured_at="2024-01-01T00:00:00+00:00")
    db.add_measurement(h, KEY, m, note="from measure_onnx")
    rec = db.get(h, KEY)
    assert (rec.median_ms, rec.std_ms, rec.iqr_ms, rec.repeats) == (2.0, 0.3, 0.2, 30)
    assert rec.measured_at == "2024-01-01T00:00:00+00:00" and rec.platform == {"cpu": "X"}
    assert db.list_measurements().family.iloc[0] == "chains"


def test_bad_writes_are_refused_clearly(db):
    h = db.add_graph(chain(0))
    with pytest.raises(LatencyDBError, match="not in the database"):
        db.add_measurement("0" * 64, KEY, median_ms=1.0)
    with pytest.raises(LatencyDBError, match="source must be one of"):
        db.add_measurement(h, KEY, median_ms=1.0, source="guessed")
    with pytest.raises(LatencyDBError, match="positive"):
        db.add_measurement(h, KEY, median_ms=-1.0)
    with pytest.raises(LatencyDBError, match="finite"):
        db.add_measurement(h, KEY, median_ms=float("nan"))
    with pytest.raises(LatencyDBError, match="must be a number"):
        db.add_measurement(h, KEY)
    with pytest.raises(LatencyDBError, match="ArchGraph"):
        db.add_graph("|none~0|")
    with pytest.raises(LatencyDBError, match="file path"):
        LatencyDB(":memory:")
    assert db.stats()["measurements"] == 0  # nothing half-written


def test_query_hit_measured_predicted(db):
    calls = {"measure": 0, "predict": 0}

    def measure(g):
        calls["measure"] += 1
        return {"median_ms": 3.0, "std_ms": 0.2, "repeats": 10}

    def predict(g):
        calls["predict"] += 1
        return 9.9

    g1, g2 = chain(1), chain(2)
    r = db.query(g1, KEY, measure=measure, predict=predict)
    assert isinstance(r, QueryResult)
    assert (r.value_ms, r.origin, r.record.source) == (3.0, "measured", "measured")
    r = db.query(g1, KEY, measure=measure, predict=predict)
    assert (r.value_ms, r.origin) == (3.0, "hit") and calls == {"measure": 1, "predict": 0}

    # Not allowed to measure: predicted, recorded as a prediction, never served as a measurement.
    r = db.query(g2, KEY, measure=measure, predict=predict, allow_measure=False)
    assert (r.value_ms, r.origin, r.record.source) == (9.9, "predicted", "predicted")
    assert db.get(g2.stable_hash(), KEY) is None
    assert db.get_prediction(g2.stable_hash(), KEY).median_ms == 9.9
    r = db.query(g2, KEY, measure=measure, predict=predict, allow_measure=False)
    assert r.origin == "predicted" and calls == {"measure": 1, "predict": 2}

    # Once measuring is allowed, the prediction does not count as a hit: it is measured.
    r = db.query(g2, KEY, measure=measure, predict=predict)
    assert (r.value_ms, r.origin) == (3.0, "measured")
    assert db.get(g2.stable_hash(), KEY).source == "measured"

    # A number is accepted from measure; no callables at all is a clear error.
    assert db.query(chain(3), KEY, measure=lambda g: 4.5).origin == "measured"
    with pytest.raises(LatencyDBError, match="no predict callable"):
        db.query(chain(4), KEY, measure=measure, allow_measure=False)

    s = db.stats()
    assert s["by_source"] == {"measured": 3, "imported": 0, "predicted": 2}
    assert s["graphs"] == 4 and s["graphs_measured"] == 3 and s["by_platform"] == {KEY: 5}
    assert len(db.list_measurements(source="predicted")) == 2
    assert len(db.list_measurements(platform_key="nowhere")) == 0
    assert len(db.list_measurements(limit=2)) == 2


def test_imported_rows_count_as_measurements(db):
    h = db.add_graph(nb201.to_graph(CELL))
    db.add_measurement(h, "help-pixel3", median_ms=17.2381, source="imported", note="HELP table")
    r = db.query(nb201.to_graph(CELL), "help-pixel3", predict=lambda g: 1.0, allow_measure=False)
    assert (r.origin, r.value_ms, r.record.source) == ("hit", 17.2381, "imported")


def test_measurement_from_another_platform_is_refused(db):
    m = Measurement(1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1,
                    {"cpu": "Other", "provider": "CPUExecutionProvider", "onnxruntime": "1.0",
                     "threads": 8, "batch_size": 1}, "2024-01-01T00:00:00+00:00")
    with pytest.raises(LatencyDBError, match="wrong key"):
        db.query(chain(0), KEY, measure=lambda g: m)
    assert db.stats()["measurements"] == 0


def test_reopen_and_pickle_keep_the_data(tmp_path):
    path = tmp_path / "lat.sqlite"
    with LatencyDB(path) as a:
        h = a.add_graph(chain(0))
        a.add_measurement(h, KEY, median_ms=1.0)
    b = LatencyDB(path)
    assert b.get(h, KEY).median_ms == 1.0
    c = pickle.loads(pickle.dumps(b))
    assert c.get(h, KEY).median_ms == 1.0
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    b.close()
    c.close()


def test_threads_share_one_db_object(db):
    hashes = [db.add_graph(chain(i)) for i in range(4)]
    errors = []

    def work(k):
        try:
            for j in range(25):
                db.add_measurement(hashes[k], KEY, median_ms=1.0 + j, note=f"thread {k}")
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert db.stats()["measurements"] == 100


def _writer(path, k, start, n):
    db = LatencyDB(path)
    graphs = [chain(i) for i in range(5)]
    start.wait(60)
    for j in range(n):
        h = db.add_graph(graphs[j % 5])  # every process upserts the same graphs too
        db.add_measurement(h, f"proc-{j % 2}", median_ms=1.0 + j, repeats=j, note=f"{k}:{j}")
    db.close()


def test_concurrent_writer_processes_lose_nothing(tmp_path):
    path = str(tmp_path / "lat.sqlite")
    LatencyDB(path).close()
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(path, k, start, 50)) for k in range(4)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    with LatencyDB(path) as db:
        df = db.list_measurements()
        assert len(df) == 200
        assert set(df.note) == {f"{k}:{j}" for k in range(4) for j in range(50)}
        assert db.stats()["graphs"] == 5
