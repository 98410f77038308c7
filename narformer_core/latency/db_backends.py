"""Where :class:`~narformer_core.latency.db.LatencyDB` keeps its rows: a SQLite file or a PostgreSQL server.

A backend owns the connections (one per thread and process), runs one write transaction at a time
per connection and retries what its engine says is safe to retry. The SQL itself lives in
``db.py`` and is written once, with ``?`` placeholders; a backend translates placeholders and the
few type names that differ (SQLite's ``AUTOINCREMENT`` and ``REAL``), nothing else.

The location picks the backend: ``postgresql://user:password@host:port/dbname`` (or
``postgres://``) is a PostgreSQL server reached with psycopg 3; anything else is a SQLite file.
"""
from __future__ import annotations

import os
import random
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable

_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
POSTGRES_SCHEMES = ("postgresql", "postgres")


class LatencyDBError(ValueError):
    """A request the latency database cannot satisfy; the message says why."""


def is_database_url(location: Any) -> bool:
    """True when ``location`` is a ``scheme://...`` URL rather than a file path."""
    return isinstance(location, str) and _URL_SCHEME.match(location) is not None


def mask_url(location: Any) -> str:
    """``location`` as text that is safe to print: a URL's password becomes ``***``."""
    text = str(location)
    if not is_database_url(text):
        return text
    # user:password@ in the authority part (stops at the first '/', so paths are left alone).
    text = re.sub(r"^([^:/]+://[^/@:]*:)[^/@]*@", r"\1***@", text)
    # password=... among the query parameters, which libpq accepts too.
    return re.sub(r"([?&]password=)[^&]*", r"\1***", text, flags=re.IGNORECASE)


def _scrub(message: str, location: str) -> str:
    """Remove ``location``'s password from an engine's error message, should it quote it."""
    secrets = re.findall(r"^[^:/]+://[^/@:]*:([^/@]*)@", location)
    secrets += re.findall(r"[?&]password=([^&]*)", location, flags=re.IGNORECASE)
    for s in secrets:
        if s:
            message = message.replace(s, "***")
    return message


class _Backend:
    """What LatencyDB needs from a storage engine."""

    kind = ""

    def __init__(self, timeout: float):
        self.timeout = float(timeout)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[Any] = []
        self._pid = os.getpid()

    # -- to be provided by each engine
    def _open(self):
        raise NotImplementedError

    def _close_one(self, conn) -> None:
        raise NotImplementedError

    def write(self, body: Callable[["Tx"], Any]) -> Any:
        raise NotImplementedError

    def read(self, sql: str, params: tuple = ()) -> list[tuple]:
        raise NotImplementedError

    def create_schema(self, statements: tuple[str, ...]) -> None:
        raise NotImplementedError

    def display(self) -> str:
        raise NotImplementedError

    # -- shared: one connection per thread, none inherited across fork
    def _conn(self):
        if os.getpid() != self._pid:
            # A forked child must not touch its parent's connections: start afresh.
            self._local, self._all, self._pid = threading.local(), [], os.getpid()
            self._lock = threading.Lock()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _forget(self, conn) -> None:
        """Drop a connection that broke, so the thread's next call opens a new one."""
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)
        self._close_one(conn)

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for c in conns:
            self._close_one(c)
        self._local = threading.local()


class Tx:
    """The statements a write transaction may run (handed to the body given to ``write``)."""

    def __init__(self, run: Callable[[str, tuple], Any], insert: Callable[[str, tuple], int]):
        self._run, self._insert = run, insert

    def execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run one statement; the rows it returns (empty for statements that return none)."""
        return self._run(sql, params)

    def insert(self, sql: str, params: tuple = ()) -> int:
        """Run one INSERT into a table with an ``id`` column; the new row's id."""
        return self._insert(sql, params)


# ---------------------------------------------------------------------------------------- SQLite
def _is_busy(e: sqlite3.OperationalError) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


class SQLiteBackend(_Backend):
    """One SQLite file: WAL journal, a busy timeout, ``BEGIN IMMEDIATE`` writes retried while locked."""

    kind = "sqlite"

    def __init__(self, path: str | os.PathLike, timeout: float):
        if str(path) in ("", ":memory:") or str(path).startswith("file::memory:"):
            raise LatencyDBError("the latency database needs a file path (an in-memory database "
                                 "is private to one connection, and this class opens one per thread)")
        super().__init__(timeout)
        self.path = Path(path)
        if not self.path.parent.exists():
            raise LatencyDBError(f"cannot create the latency database {self.path}: folder "
                                 f"{self.path.parent} does not exist")

    def display(self) -> str:
        return str(self.path)

    def _open(self) -> sqlite3.Connection:
        # check_same_thread=False only so close() may close every thread's connection; each
        # connection is still used by the one thread that opened it.
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL"))
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _close_one(self, conn) -> None:
        try:
            conn.close()
        except sqlite3.Error:
            pass

    def _retry(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn``, retrying while SQLite says the database is locked or busy."""
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if not _is_busy(e) or time.monotonic() > deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)

    def write(self, body: Callable[[Tx], Any]) -> Any:
        conn = self._conn()
        tx = Tx(lambda sql, p: conn.execute(sql, p).fetchall(),
                lambda sql, p: int(conn.execute(sql, p).lastrowid))

        def attempt():
            # IMMEDIATE takes the write lock up front, so a transaction never has to upgrade a
            # read lock mid-way (the case busy_timeout cannot resolve).
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = body(tx)
                conn.execute("COMMIT")
                return out
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        return self._retry(attempt)

    def read(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = self._conn()
        return self._retry(lambda: conn.execute(sql, params).fetchall())

    def create_schema(self, statements: tuple[str, ...]) -> None:
        self.write(lambda tx: [tx.execute(s) for s in statements])


# ------------------------------------------------------------------------------------ PostgreSQL
# SQLSTATEs after which PostgreSQL has rolled the whole transaction back, so running it again is
# safe: serialization_failure and deadlock_detected.
_RETRYABLE_SQLSTATES = ("40001", "40P01")
# Any fixed number: the advisory lock that keeps concurrent first-time schema creation in line
# (CREATE TABLE IF NOT EXISTS alone can still collide in the catalogue when run at once).
_SCHEMA_LOCK_KEY = 7_231_004_517


def _postgres_sql(sql: str) -> str:
    """The shared SQL in PostgreSQL's dialect: %s placeholders, 64-bit ids, double precision."""
    if "%" in sql:
        raise LatencyDBError("internal error: latency database SQL must not contain '%'")
    sql = sql.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
    # SQLite's REAL is 8 bytes; PostgreSQL's is 4 (1.2 would come back as 1.2000000476837158).
    sql = re.sub(r"\bREAL\b", "DOUBLE PRECISION", sql)
    return sql.replace("?", "%s")


class PostgresBackend(_Backend):
    """A PostgreSQL database: READ COMMITTED transactions, upserts by primary key, retries on 40001/40P01."""

    kind = "postgresql"

    def __init__(self, url: str, timeout: float):
        super().__init__(timeout)
        self.url = url
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise LatencyDBError(
                f"the latency database {mask_url(url)} is a PostgreSQL server, which needs psycopg 3: "
                "pip install 'psycopg[binary]'") from None

    def display(self) -> str:
        return mask_url(self.url)

    def _open(self):
        import psycopg

        kwargs = {}
        if "connect_timeout" not in self.url:
            # Fail within seconds on an unreachable host rather than after libpq's long default.
            kwargs["connect_timeout"] = max(1, min(int(self.timeout), 10))
        try:
            # autocommit: reads need no transaction; writes open one explicitly (see write()).
            return psycopg.connect(self.url, autocommit=True, **kwargs)
        except psycopg.Error as e:
            reason = _scrub(" ".join(str(e).split()), self.url) or type(e).__name__
            raise LatencyDBError(f"cannot connect to the latency database {self.display()}: "
                                 f"{reason}") from None
        except Exception as e:  # malformed URLs surface from libpq's parser as other errors
            reason = _scrub(str(e), self.url)
            raise LatencyDBError(f"cannot use the latency database URL {self.display()}: "
                                 f"{reason}") from None

    def _close_one(self, conn) -> None:
        try:
            conn.close()
        except Exception:
            pass

    def _guard(self, conn, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; a connection that broke is dropped and the failure reported in a sentence."""
        import psycopg

        try:
            return fn()
        except psycopg.OperationalError as e:
            if conn.broken or conn.closed:
                self._forget(conn)
                reason = _scrub(" ".join(str(e).split()), self.url)
                raise LatencyDBError(f"lost the connection to the latency database "
                                     f"{self.display()}: {reason}") from None
            raise

    def write(self, body: Callable[[Tx], Any]) -> Any:
        import psycopg

        deadline = time.monotonic() + self.timeout
        delay = 0.01
        while True:
            conn = self._conn()

            def run(sql, params):
                cur = conn.execute(_postgres_sql(sql), params)
                return cur.fetchall() if cur.description is not None else []

            def insert(sql, params):
                cur = conn.execute(_postgres_sql(sql) + " RETURNING id", params)
                return int(cur.fetchone()[0])

            def attempt():
                with conn.transaction():
                    return body(Tx(run, insert))

            try:
                return self._guard(conn, attempt)
            except psycopg.Error as e:
                if e.sqlstate not in _RETRYABLE_SQLSTATES or time.monotonic() > deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)

    def read(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = self._conn()
        return self._guard(conn, lambda: conn.execute(_postgres_sql(sql), params).fetchall())

    def create_schema(self, statements: tuple[str, ...]) -> None:
        def body(tx: Tx):
            tx.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK_KEY,))
            for s in statements:
                tx.execute(s)

        self.write(body)


def open_backend(location: str | os.PathLike, timeout: float) -> _Backend:
    """The backend for ``location``: a postgresql:// URL or a SQLite file path."""
    if is_database_url(location):
        scheme = _URL_SCHEME.match(location).group(1).lower()
        if scheme in POSTGRES_SCHEMES:
            return PostgresBackend(location, timeout)
        raise LatencyDBError(f"the latency database {mask_url(location)} has an unsupported URL "
                             f"scheme {scheme!r}: give a SQLite file path or a "
                             "postgresql://user:password@host:port/dbname URL")
    return SQLiteBackend(location, timeout)
