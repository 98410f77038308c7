"""A latency database: NNLQP's "evolving database", on SQLite or PostgreSQL.

Every query either finds a stored measurement of the graph on the platform ("hit"), or measures
the graph and stores the result ("measured"), so the database grows with use; where measuring is
not possible it asks a predictor and records the answer as a *prediction*. Predictions live in
the same table but are tagged ``source='predicted'`` and are never returned as measurements.

The location is a SQLite file path (the default: one file, no server) or a
``postgresql://user:password@host:port/dbname`` URL, so measurement workers on several hosts can
write into one database (see docs/LATENCY_DB.md). Both are safe with several writer processes and
threads at once: one connection per thread and process, every write in its own transaction,
retried where the engine says so (SQLite: WAL journal, busy timeout, ``BEGIN IMMEDIATE``;
PostgreSQL: upserts by primary key, retries after serialization failures and deadlocks). All SQL
is the parameterised statements in this one class; ``db_backends`` runs them.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from ..graph import ArchGraph
from .db_backends import LatencyDBError, Tx, is_database_url, mask_url, open_backend

__all__ = ["LatencyDB", "LatencyDBError", "LatencyRecord", "QueryResult", "SOURCES",
           "MEASURED_SOURCES", "is_database_url", "mask_url"]

SOURCES = ("measured", "imported", "predicted")
# What counts as a real measurement: our own, or one imported from a published table.
MEASURED_SOURCES = ("measured", "imported")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS graphs (
        graph_hash  TEXT PRIMARY KEY,
        family      TEXT,
        description TEXT,
        graph_json  TEXT NOT NULL,
        created_at  TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS measurements (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        graph_hash    TEXT NOT NULL REFERENCES graphs(graph_hash),
        platform_key  TEXT NOT NULL,
        platform_json TEXT,
        median_ms     REAL NOT NULL,
        std_ms        REAL,
        iqr_ms        REAL,
        repeats       INTEGER,
        measured_at   TEXT NOT NULL,
        source        TEXT NOT NULL CHECK (source IN ('measured', 'imported', 'predicted')),
        note          TEXT)""",
    "CREATE INDEX IF NOT EXISTS measurements_lookup ON measurements (graph_hash, platform_key, source)",
    "CREATE INDEX IF NOT EXISTS measurements_platform ON measurements (platform_key)",
)
_COLUMNS = ("id", "graph_hash", "platform_key", "platform_json", "median_ms", "std_ms", "iqr_ms",
            "repeats", "measured_at", "source", "note")


@dataclass(frozen=True)
class LatencyRecord:
    """One row of the measurements table."""

    id: int
    graph_hash: str
    platform_key: str
    platform: dict
    median_ms: float
    std_ms: float | None
    iqr_ms: float | None
    repeats: int | None
    measured_at: str
    source: str
    note: str | None

    @classmethod
    def _from_row(cls, row) -> "LatencyRecord":
        d = dict(zip(_COLUMNS, row))
        d["platform"] = json.loads(d.pop("platform_json") or "{}")
        return cls(**d)


@dataclass(frozen=True)
class QueryResult:
    """The answer to :meth:`LatencyDB.query`: the latency and where it came from."""

    value_ms: float
    origin: str  # "hit" | "measured" | "predicted"
    record: LatencyRecord


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class LatencyDB:
    """Graphs and their latency measurements: a SQLite file (created on first use) or a
    ``postgresql://`` URL (the tables are created on first use; the database must exist)."""

    def __init__(self, path: str | os.PathLike, *, timeout: float = 60.0):
        self.timeout = float(timeout)
        self._backend = open_backend(path, self.timeout)
        self.backend = self._backend.kind  # "sqlite" | "postgresql"
        # ``path``: the SQLite file; None for a server. ``location``: what to print (no password).
        self.path = getattr(self._backend, "path", None)
        self.location = self._backend.display()
        self._location = str(path) if self.path is None else str(self.path)
        self._backend.create_schema(_SCHEMA)

    # ------------------------------------------------------------ connections and transactions
    def _write(self, body: Callable[[Tx], Any]) -> Any:
        """Run ``body`` in one write transaction (retried as a whole where the engine allows)."""
        return self._backend.write(body)

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self._backend.read(sql, params)

    def close(self) -> None:
        """Close every connection this object opened in this process."""
        self._backend.close()

    def __enter__(self) -> "LatencyDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LatencyDB({self.location!r})"

    # Connections cannot cross processes: a pickled LatencyDB (e.g. sent to a worker) reopens.
    def __getstate__(self) -> dict:
        return {"path": self._location, "timeout": self.timeout}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], timeout=state["timeout"])

    # ------------------------------------------------------------ graphs
    def add_graph(self, graph: ArchGraph, family: str | None = None,
                  description: str | None = None) -> str:
        """Store a graph (idempotent) and return its hash. ``family`` defaults to its space."""
        if not isinstance(graph, ArchGraph):
            raise LatencyDBError(f"add_graph takes an ArchGraph, got {type(graph).__name__}")
        h = graph.stable_hash()
        family = family if family is not None else graph.space
        if description is None:
            description = graph.meta.get("arch_str")
        self._write(lambda tx: tx.execute(
            "INSERT INTO graphs (graph_hash, family, description, graph_json, created_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (graph_hash) DO UPDATE SET "
            "family = COALESCE(excluded.family, graphs.family), "
            "description = COALESCE(excluded.description, graphs.description)",
            (h, family, description, graph.to_json(), _now())))
        return h

    def get_graph(self, graph_hash: str) -> ArchGraph | None:
        rows = self._read("SELECT graph_json FROM graphs WHERE graph_hash = ?", (graph_hash,))
        return ArchGraph.from_dict(json.loads(rows[0][0])) if rows else None

    def has_graph(self, graph_hash: str) -> bool:
        return bool(self._read("SELECT 1 FROM graphs WHERE graph_hash = ?", (graph_hash,)))

    # ------------------------------------------------------------ measurements
    def add_measurement(self, graph_hash: str, platform_key: str, measurement: Any = None, *,
                        median_ms: float | None = None, std_ms: float | None = None,
                        iqr_ms: float | None = None, repeats: int | None = None,
                        platform: Mapping | None = None, measured_at: str | None = None,
                        source: str = "measured", note: str | None = None) -> int:
        """Store one latency for a stored graph; returns the row id.

        Give either ``measurement`` (a :class:`~narformer_core.latency.measure.Measurement`, or a
        mapping with at least ``median_ms``) or the fields themselves; explicit fields win.
        """
        if source not in SOURCES:
            raise LatencyDBError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
        if not platform_key or not isinstance(platform_key, str):
            raise LatencyDBError("a measurement needs a platform key (a non-empty string)")
        fields: dict[str, Any] = {}
        if measurement is not None:
            if isinstance(measurement, Mapping):
                fields = dict(measurement)
            elif hasattr(measurement, "median_ms"):
                fields = {k: getattr(measurement, k, None) for k in
                          ("median_ms", "std_ms", "iqr_ms", "repeats", "platform", "measured_at")}
            else:
                raise LatencyDBError(f"cannot read a measurement from {type(measurement).__name__}")
        given = {"median_ms": median_ms, "std_ms": std_ms, "iqr_ms": iqr_ms, "repeats": repeats,
                 "platform": platform, "measured_at": measured_at}
        fields.update({k: v for k, v in given.items() if v is not None})

        value = fields.get("median_ms")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise LatencyDBError(f"median_ms must be a number, got {value!r}") from None
        if not math.isfinite(value):
            raise LatencyDBError(f"median_ms must be finite, got {value}")
        if source != "predicted" and value <= 0:
            raise LatencyDBError(f"a measured latency must be positive, got {value} ms")

        def opt_float(k):
            v = fields.get(k)
            return None if v is None else float(v)

        row = (graph_hash, platform_key, json.dumps(dict(fields.get("platform") or {}), sort_keys=True),
               value, opt_float("std_ms"), opt_float("iqr_ms"),
               None if fields.get("repeats") is None else int(fields["repeats"]),
               str(fields.get("measured_at") or _now()), source, note)

        def insert(tx: Tx):
            if not tx.execute("SELECT 1 FROM graphs WHERE graph_hash = ?", (graph_hash,)):
                raise LatencyDBError(f"graph {graph_hash[:12]}... is not in the database; "
                                     "add_graph it first")
            return tx.insert(
                "INSERT INTO measurements (graph_hash, platform_key, platform_json, median_ms, "
                "std_ms, iqr_ms, repeats, measured_at, source, note) VALUES (?,?,?,?,?,?,?,?,?,?)", row)

        return self._write(insert)

    def _latest(self, graph_hash: str, platform_key: str, sources: tuple[str, ...]) -> LatencyRecord | None:
        marks = ",".join("?" * len(sources))
        rows = self._read(
            f"SELECT {', '.join(_COLUMNS)} FROM measurements WHERE graph_hash = ? AND "
            f"platform_key = ? AND source IN ({marks}) ORDER BY id DESC LIMIT 1",
            (graph_hash, platform_key, *sources))
        return LatencyRecord._from_row(rows[0]) if rows else None

    def get(self, graph_hash: str, platform_key: str) -> LatencyRecord | None:
        """The latest real measurement (measured or imported) of a graph on a platform, or None.

        Predictions are never returned here; see :meth:`get_prediction`.
        """
        return self._latest(graph_hash, platform_key, MEASURED_SOURCES)

    def get_prediction(self, graph_hash: str, platform_key: str) -> LatencyRecord | None:
        return self._latest(graph_hash, platform_key, ("predicted",))

    def query(self, graph: ArchGraph, platform_key: str, *,
              measure: Callable[[ArchGraph], Any] | None = None,
              predict: Callable[[ArchGraph], float] | None = None,
              allow_measure: bool = True) -> QueryResult:
        """The latency of ``graph`` on ``platform_key``, growing the database as a side effect.

        1. A stored measurement -> origin "hit".
        2. Else, if ``allow_measure`` and ``measure`` is given: ``measure(graph)`` (a Measurement,
           a mapping with ``median_ms`` or a number of ms) is stored -> origin "measured".
        3. Else ``predict(graph)`` (ms) is stored as a prediction -> origin "predicted". Each call
           predicts afresh, since the predictor may have been retrained since the last one.

        Two processes missing at once may both measure; both rows are kept and the latest wins.
        """
        h = self.add_graph(graph)
        hit = self.get(h, platform_key)
        if hit is not None:
            return QueryResult(hit.median_ms, "hit", hit)
        if allow_measure and measure is not None:
            m = measure(graph)
            if isinstance(m, (int, float)):
                m = {"median_ms": float(m)}
            plat = getattr(m, "platform", None)
            if plat:
                from .measure import platform_key as key_of
                if key_of(plat) != platform_key:
                    raise LatencyDBError(
                        f"the measure callable measured on {key_of(plat)}, not on the platform "
                        f"asked for ({platform_key}); refusing to store it under the wrong key")
            rid = self.add_measurement(h, platform_key, m, source="measured")
            rec = self._by_id(rid)
            return QueryResult(rec.median_ms, "measured", rec)
        if predict is not None:
            value = predict(graph)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise LatencyDBError(f"the predict callable returned {value!r}, not a number of ms") from None
            rid = self.add_measurement(h, platform_key, median_ms=value, source="predicted")
            rec = self._by_id(rid)
            return QueryResult(rec.median_ms, "predicted", rec)
        why = "measuring is not allowed" if not allow_measure else "no measure callable was given"
        raise LatencyDBError(f"no stored measurement of graph {h[:12]}... on {platform_key}, {why}, "
                             "and no predict callable was given")

    def _by_id(self, rid: int) -> LatencyRecord:
        rows = self._read(f"SELECT {', '.join(_COLUMNS)} FROM measurements WHERE id = ?", (rid,))
        return LatencyRecord._from_row(rows[0])

    # ------------------------------------------------------------ overviews
    def list_measurements(self, platform_key: str | None = None, limit: int | None = None,
                          source: str | None = None):
        """Newest first, joined with the graph's family and description (a pandas DataFrame)."""
        import pandas as pd

        where, params = [], []
        if platform_key is not None:
            where.append("m.platform_key = ?")
            params.append(platform_key)
        if source is not None:
            if source not in SOURCES:
                raise LatencyDBError(f"source must be one of {', '.join(SOURCES)}, not {source!r}")
            where.append("m.source = ?")
            params.append(source)
        sql = ("SELECT m.id, m.graph_hash, g.family, g.description, m.platform_key, m.median_ms, "
               "m.std_ms, m.iqr_ms, m.repeats, m.measured_at, m.source, m.note "
               "FROM measurements m JOIN graphs g ON g.graph_hash = m.graph_hash")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY m.id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        cols = ["id", "graph_hash", "family", "description", "platform_key", "median_ms", "std_ms",
                "iqr_ms", "repeats", "measured_at", "source", "note"]
        return pd.DataFrame(self._read(sql, tuple(params)), columns=cols)

    def platforms(self) -> list[str]:
        return [r[0] for r in self._read("SELECT DISTINCT platform_key FROM measurements ORDER BY 1")]

    def stats(self) -> dict:
        """Counts for a dashboard: graphs, rows by source, rows by platform."""
        n_graphs = self._read("SELECT COUNT(*) FROM graphs")[0][0]
        by_source = dict(self._read("SELECT source, COUNT(*) FROM measurements GROUP BY source"))
        by_platform = dict(self._read(
            "SELECT platform_key, COUNT(*) FROM measurements GROUP BY platform_key ORDER BY 1"))
        measured_graphs = self._read(
            "SELECT COUNT(DISTINCT graph_hash) FROM measurements WHERE source IN (?, ?)",
            MEASURED_SOURCES)[0][0]
        return {
            "path": self.location,
            "backend": self.backend,
            "graphs": int(n_graphs),
            "measurements": int(sum(by_source.values())),
            "by_source": {s: int(by_source.get(s, 0)) for s in SOURCES},
            "by_platform": {k: int(v) for k, v in by_platform.items()},
            "graphs_measured": int(measured_graphs),
        }
