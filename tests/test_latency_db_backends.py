"""LatencyDB on both backends: the same concurrent-writer test on SQLite and on a real PostgreSQL.

The PostgreSQL server is a throwaway one started from Debian's ``postgresql`` package (initdb and
pg_ctl under /usr/lib/postgresql/*/bin) in a temporary folder, on a free port, with a password, and
stopped afterwards. CI installs the package (.ci/run); where it is missing the PostgreSQL cases
skip and say why.
"""
from __future__ import annotations

import collections
import glob
import multiprocessing as mp
import os
import pickle
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import uuid

import pytest

import test_latency_db as base
from narformer_core.graph import ArchGraph, Node
from narformer_core.latency.db import LatencyDB, LatencyDBError, is_database_url, mask_url

KEY = "cpu-Test_CPU-ort1.0-t1-b1"
PASSWORD = "s3cret-pw"
WRITERS, PER_WRITER, SHARED, PRIVATE = 4, 50, 5, 5


# ------------------------------------------------------------------------ a throwaway PostgreSQL
def _pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """initdb + pg_ctl in a temporary folder; as the ``postgres`` user when we are root."""

    def __init__(self, bindir: str):
        self.bindir = bindir
        self.as_postgres = os.geteuid() == 0
        self.root = tempfile.mkdtemp(prefix="latdb-pg-")
        self.data = os.path.join(self.root, "data")
        self.sock = os.path.join(self.root, "sock")
        self.log = os.path.join(self.root, "server.log")
        os.mkdir(self.sock)
        pwfile = os.path.join(self.root, "pw")
        with open(pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        if self.as_postgres:
            # PostgreSQL refuses to run as root; the Debian package creates this user for it.
            import pwd

            pw = pwd.getpwnam("postgres")
            for p in (self.root, self.sock, pwfile):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        self.port = _free_port()
        self._run("initdb", "-D", self.data, "-U", "lat", "--auth=scram-sha-256",
                  f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C", "--no-sync")
        opts = (f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=40")
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", opts, "-w", "-t", "60", "start")
        self.started = True

    def _run(self, tool: str, *args: str) -> None:
        cmd = [os.path.join(self.bindir, tool), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if r.returncode != 0:
            log = open(self.log).read()[-2000:] if os.path.exists(self.log) else ""
            raise RuntimeError(f"{tool} failed ({r.returncode}): {r.stderr[-2000:]}\n{log}")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://lat:{PASSWORD}@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        import psycopg

        name = "lat_" + uuid.uuid4().hex[:10]
        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_server():
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg 3 is not installed (pip install 'psycopg[binary]')")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin "
                    "(apt-get install postgresql; CI does)")
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root and runuser is missing")
    server = _Server(bindir)
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    """A fresh, empty database of each kind: a SQLite file path or a postgresql:// URL."""
    if request.param == "sqlite":
        return str(tmp_path / "lat.sqlite")
    return request.getfixturevalue("pg_server").new_database()


@pytest.fixture
def pg_db(pg_server):
    with LatencyDB(pg_server.new_database()) as d:
        yield d


# ------------------------------------------------------------------------ concurrent writers
def chain(n: int) -> ArchGraph:
    return ArchGraph([Node("input")] + [Node("Relu", (i,)) for i in range(n + 1)], space="test")


def _graph_for(k: int, j: int) -> ArchGraph:
    """Even steps use graphs every writer shares (upsert conflicts); odd ones the writer's own."""
    if j % 2 == 0:
        return chain((j // 2) % SHARED)
    return chain(100 + k * PRIVATE + (j // 2) % PRIVATE)


def _median(k: int, j: int) -> float:
    return 1.0 + k * 1000 + j + 0.123456789  # not representable in 4-byte floats


def _writer(location, k, start, out):
    db = LatencyDB(location)
    start.wait(60)
    written = []
    for j in range(PER_WRITER):
        g = _graph_for(k, j)
        h = db.add_graph(g, family=f"writer{k}" if j % 2 else "shared")
        rid = db.add_measurement(h, f"platform-{j % 3}", median_ms=_median(k, j), repeats=j,
                                 note=f"{k}:{j}")
        written.append((f"{k}:{j}", rid))
    db.close()
    out.put(written)


def _raw_counts(location: str) -> dict:
    """Row counts read past LatencyDB, straight from the engine."""
    sql = {"graphs": "SELECT COUNT(*), COUNT(DISTINCT graph_hash) FROM graphs",
           "measurements": "SELECT COUNT(*), COUNT(DISTINCT id) FROM measurements",
           "notes": "SELECT COUNT(DISTINCT note) FROM measurements"}
    if is_database_url(location):
        import psycopg

        with psycopg.connect(location) as c:
            return {k: c.execute(q).fetchone() for k, q in sql.items()}
    c = sqlite3.connect(location)
    try:
        return {k: c.execute(q).fetchone() for k, q in sql.items()}
    finally:
        c.close()


def test_concurrent_writer_processes_lose_and_duplicate_nothing(location):
    LatencyDB(location).close()  # the schema first, as a deployment would
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(location, k, start, out)) for k in range(WRITERS)]
    for p in procs:
        p.start()
    start.set()
    written = []
    for _ in procs:
        written += out.get(timeout=120)  # drained before join, so no writer blocks on the queue
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * WRITERS

    expected_notes = {f"{k}:{j}" for k in range(WRITERS) for j in range(PER_WRITER)}
    expected_graphs = {_graph_for(k, j).stable_hash() for k in range(WRITERS) for j in range(PER_WRITER)}
    with LatencyDB(location) as db:
        df = db.list_measurements()
        stats = db.stats()
        graphs_back = {h: db.get_graph(h) for h in expected_graphs}
    counts = _raw_counts(location)
    dup_notes = sum(c - 1 for c in collections.Counter(df.note).values() if c > 1)
    print(f"\n[{db.backend}] rows written {len(written)}, rows found {len(df)}, duplicate rows "
          f"{dup_notes}, duplicate ids {counts['measurements'][0] - counts['measurements'][1]}, "
          f"graphs {counts['graphs'][0]} (distinct {counts['graphs'][1]}, expected "
          f"{len(expected_graphs)})", file=sys.stderr)

    assert len(written) == WRITERS * PER_WRITER == len(df)
    assert dup_notes == 0 and set(df.note) == expected_notes
    assert counts["measurements"][0] == counts["measurements"][1] == counts["notes"][0] == len(written)
    # Every id a writer was given is a row, holding what that writer wrote.
    assert sorted(rid for _, rid in written) == sorted(df.id)
    by_id = df.set_index("id")
    for note, rid in written:
        k, j = map(int, note.split(":"))
        row = by_id.loc[rid]
        assert row.note == note and row.median_ms == _median(k, j) and row.repeats == j
        assert row.graph_hash == _graph_for(k, j).stable_hash()
        assert row.platform_key == f"platform-{j % 3}"
    # Shared graphs were upserted by every writer at once, yet each is stored exactly once.
    assert counts["graphs"][0] == counts["graphs"][1] == len(expected_graphs) == stats["graphs"]
    assert all(g is not None and g.stable_hash() == h for h, g in graphs_back.items())
    assert stats["measurements"] == len(written) and stats["graphs_measured"] == len(expected_graphs)
    assert stats["by_platform"] == {f"platform-{p}": sum(1 for k in range(WRITERS)
                                                         for j in range(PER_WRITER) if j % 3 == p)
                                    for p in range(3)}


# ------------------------------------------------------------------------ same semantics on PostgreSQL
# The SQLite suite's own tests, run unchanged against a PostgreSQL database.
SEMANTIC_TESTS = ["test_add_graph_and_measurement_roundtrip",
                  "test_add_measurement_accepts_a_measurement_object",
                  "test_bad_writes_are_refused_clearly", "test_query_hit_measured_predicted",
                  "test_imported_rows_count_as_measurements",
                  "test_measurement_from_another_platform_is_refused",
                  "test_threads_share_one_db_object"]


@pytest.mark.parametrize("name", SEMANTIC_TESTS)
def test_sqlite_suite_passes_on_postgresql(pg_db, name):
    getattr(base, name)(pg_db)


def test_postgresql_reopen_pickle_and_float_precision(pg_server):
    url = pg_server.new_database()
    with LatencyDB(url) as a:
        assert a.backend == "postgresql" and a.path is None
        h = a.add_graph(chain(0))
        a.add_measurement(h, KEY, median_ms=1.2, std_ms=0.1)
    b = LatencyDB(url)
    c = pickle.loads(pickle.dumps(b))
    for d in (b, c):
        rec = d.get(h, KEY)
        assert (rec.median_ms, rec.std_ms) == (1.2, 0.1)  # 8-byte floats, as in SQLite
        assert d.platforms() == [KEY]
        d.close()


def test_passwords_never_show(pg_server):
    url = pg_server.new_database()
    with LatencyDB(url) as db:
        assert PASSWORD not in repr(db) and PASSWORD not in db.location
        assert PASSWORD not in str(db.stats()) and "***" in db.stats()["path"]
    assert mask_url("postgresql://u:pw@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert mask_url("postgres://u@h/d?password=pw&sslmode=off") == "postgres://u@h/d?password=***&sslmode=off"
    assert mask_url("/tmp/a:b@c.sqlite") == "/tmp/a:b@c.sqlite"  # paths are not URLs

    # A wrong password and a port nobody listens on: a sentence, naming the server, no password.
    bad = url.replace(PASSWORD, "not-" + PASSWORD)
    with pytest.raises(LatencyDBError, match="cannot connect to the latency database") as e:
        LatencyDB(bad)
    assert "not-" + PASSWORD not in str(e.value) and "127.0.0.1" in str(e.value)
    closed = f"postgresql://lat:{PASSWORD}@127.0.0.1:{_free_port()}/x"
    with pytest.raises(LatencyDBError, match="cannot connect") as e:
        LatencyDB(closed, timeout=3)
    assert PASSWORD not in str(e.value)


def test_missing_psycopg_and_unknown_schemes_are_clear(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # makes `import psycopg` fail
    with pytest.raises(LatencyDBError, match=r"needs psycopg 3: pip install") as e:
        LatencyDB(f"postgresql://lat:{PASSWORD}@db.example:5432/lat")
    assert PASSWORD not in str(e.value)
    with pytest.raises(LatencyDBError, match="unsupported URL scheme 'mysql'"):
        LatencyDB(f"mysql://lat:{PASSWORD}@db.example/lat")
    with LatencyDB(tmp_path / "x.sqlite") as db:  # paths still mean SQLite, without psycopg
        assert db.backend == "sqlite" and db.location == str(tmp_path / "x.sqlite")


# ------------------------------------------------------------------------ the CLI and the app take a URL
def test_cli_measure_stores_into_postgresql(pg_server, capsys, tmp_path):
    import json

    from narformer_core.cli import main
    from test_cli_latency import conv_onnx

    url = pg_server.new_database()
    model = tmp_path / "tiny.onnx"
    model.write_bytes(conv_onnx())
    code = main(["measure", str(model), "--json", "--repeats", "3", "--warmup", "1",
                 "--min-seconds", "0", "--db", url])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert PASSWORD not in out.out + out.err
    d = json.loads(out.out)
    assert d["db"] == url.replace(PASSWORD, "***")
    with LatencyDB(url) as db:
        assert db.get(d["graph_hash"], d["platform_key"]).id == d["db_row"]


def test_app_reads_and_writes_a_postgresql_url_from_the_environment(pg_server, monkeypatch):
    from narformer_core import app_services as svc
    from narformer_core.onnx_import import load_onnx
    from test_cli_latency import conv_onnx

    url = pg_server.new_database()
    monkeypatch.setenv("NARFORMER_LATENCY_DB", url)
    assert svc.latency_db_path() == url  # a string: Path() would fold the '//'
    assert svc.latency_db_label() == url.replace(PASSWORD, "***")
    data = conv_onnx(4, 8, 1)
    graph = load_onnx(data)
    res = svc.measure_and_store(data, graph, family="tiny", description="one conv", repeats=3)
    df, stats = svc.latency_db_contents()
    assert list(df.id) == [res["id"]] and stats["measurements"] == 1
    assert stats["path"] == svc.latency_db_label()
    assert list(svc.stored_latency(graph).id) == [res["id"]]

    monkeypatch.setenv("NARFORMER_LATENCY_DB", f"postgresql://lat:{PASSWORD}@127.0.0.1:{_free_port()}/x")
    with pytest.raises(ValueError, match="cannot connect") as e:  # what the pages catch and show
        svc.latency_db_contents()
    assert PASSWORD not in str(e.value)


def _forked_child_writes(db, h):
    db.add_measurement(h, KEY, median_ms=2.0, note="child")
    db.close()


def test_a_forked_child_leaves_the_parents_connection_alone(location):
    """A child forked from a process holding a connection opens its own; the parent's keeps working."""
    db = LatencyDB(location)
    h = db.add_graph(chain(0))
    db.add_measurement(h, KEY, median_ms=1.0, note="parent before")
    p = mp.get_context("fork").Process(target=_forked_child_writes, args=(db, h))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    db.add_measurement(h, KEY, median_ms=3.0, note="parent after")
    assert list(db.list_measurements().note) == ["parent after", "child", "parent before"]
    db.close()


def test_postgresql_retries_a_transaction_the_server_aborted(pg_db):
    """A serialization failure rolls the attempt back and runs the whole transaction again, once."""
    import psycopg

    h = pg_db.add_graph(chain(0))
    attempts = []

    def body(tx):
        rid = tx.insert("INSERT INTO measurements (graph_hash, platform_key, median_ms, measured_at, "
                        "source) VALUES (?, ?, ?, ?, ?)", (h, KEY, 1.0, "2024-01-01", "measured"))
        attempts.append(rid)
        if len(attempts) == 1:
            raise psycopg.errors.SerializationFailure("could not serialize access")
        return rid

    rid = pg_db._write(body)
    assert len(attempts) == 2 and rid == attempts[1]
    assert list(pg_db.list_measurements().id) == [rid]  # the first attempt left nothing behind
    with pytest.raises(psycopg.errors.UniqueViolation):  # other errors are not retried
        pg_db._write(lambda tx: tx.execute("INSERT INTO graphs (graph_hash, graph_json, created_at) "
                                           "VALUES (?, ?, ?)", (h, "{}", "x")))
