"""Per-request telemetry in a local SQLite file next to the bundle (never inside its signed files).

One row per request, one transaction per row, WAL journal: a process killed mid-request
loses at most that request, never a committed row. Column names are OpenTelemetry GenAI
semantic-convention attribute names where one exists (``gen_ai.usage.input_tokens``, ...),
``slmforge.*`` otherwise; durations follow OpenTelemetry and are in seconds. Prompt and
answer text are stored only when the server runs with ``--log-text``. docs/telemetry.md
lists every field.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slmforge.errors import UserError

SCHEMA_VERSION = 1
DEFAULT_MAX_ROWS = 100_000
DEFAULT_MAX_DAYS = 90.0

# attribute name -> SQLite type. Order is the column order.
REQUEST_COLUMNS: dict[str, str] = {
    "time": "REAL",  # unix seconds when the request arrived
    "gen_ai.response.id": "TEXT",  # the request id; feedback refers to it
    "http.route": "TEXT",
    "http.response.status_code": "INTEGER",
    "gen_ai.operation.name": "TEXT",  # chat | embeddings
    "gen_ai.request.model": "TEXT",
    "gen_ai.request.max_tokens": "INTEGER",
    "gen_ai.request.temperature": "REAL",
    "gen_ai.response.finish_reasons": "TEXT",  # JSON list
    "gen_ai.usage.input_tokens": "INTEGER",
    "gen_ai.usage.output_tokens": "INTEGER",
    "gen_ai.server.time_to_first_token": "REAL",  # seconds
    "gen_ai.server.request.duration": "REAL",  # seconds, whole request
    "gen_ai.server.time_per_output_token": "REAL",  # seconds, decode phase
    "slmforge.decode.tokens_per_second": "REAL",
    "process.memory.usage": "INTEGER",  # RSS bytes after the request
    "slmforge.process.memory.peak": "INTEGER",  # peak RSS bytes of the process so far
    "process.cpu.utilization": "REAL",  # process CPU time / (wall time x CPUs) during the request
    "hw.battery.charge": "REAL",  # 0..1, where the device has a battery
    "slmforge.battery.plugged": "INTEGER",
    "slmforge.retrieval.k": "INTEGER",
    "slmforge.retrieval.top1_score": "REAL",
    "slmforge.retrieval.gap": "REAL",  # rank-1 minus rank-k score
    "slmforge.query.centroid_similarity": "REAL",  # cosine of the query to the index centroid
    "slmforge.query.out_of_domain": "INTEGER",
    "slmforge.query.embedding": "BLOB",  # float16 vector, for drift windows (not text)
    "slmforge.answer.support": "REAL",  # answer-to-cited-context similarity
    "slmforge.cache.hit": "TEXT",  # miss | exact | semantic
    "slmforge.route": "TEXT",  # local | cache | escalated | escalation_failed
    "slmforge.backend": "TEXT",
    "slmforge.model.quant": "TEXT",
    "slmforge.index.version": "TEXT",
    "error.type": "TEXT",
    "gen_ai.input.messages": "TEXT",  # only with --log-text
    "gen_ai.output.messages": "TEXT",  # only with --log-text
}
TEXT_COLUMNS = ("gen_ai.input.messages", "gen_ai.output.messages")

FEEDBACK_COLUMNS: dict[str, str] = {
    "time": "REAL",
    "gen_ai.response.id": "TEXT",
    "label": "INTEGER",  # 1 thumbs up, 0 thumbs down
    "prompt": "TEXT",  # kept because the user chose to rate this exchange
    "completion": "TEXT",
    "correction": "TEXT",  # a better answer the user typed, if any
    "comment": "TEXT",
}


def telemetry_path(bundle_root: str | os.PathLike[str]) -> Path:
    """``<bundle>.telemetry.db`` beside the bundle directory (or .tar): outside its signed files."""
    root = Path(bundle_root).resolve()
    return root.parent / f"{root.name}.telemetry.db"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def encode_vector(vec: np.ndarray | None) -> bytes | None:
    return None if vec is None else np.asarray(vec, dtype=np.float16).tobytes()


def decode_vector(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else np.frombuffer(blob, dtype=np.float16).astype(np.float32)


class TelemetryStore:
    """Append-only request and feedback log with a retention limit (rows and days)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        log_text: bool = False,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_days: float = DEFAULT_MAX_DAYS,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        self.log_text = log_text
        self.max_rows = max_rows
        self.max_days = max_days
        self._lock = threading.Lock()
        self._inserts = 0
        if readonly:
            if not self.path.is_file():
                raise UserError(f"{self.path}: no telemetry yet; serve the bundle (slmforge serve) to collect some")
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses no commit
        self._create("requests", REQUEST_COLUMNS)
        self._create("feedback", FEEDBACK_COLUMNS)
        self._conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self._conn.execute('CREATE INDEX IF NOT EXISTS requests_time ON requests ("time")')
        self._conn.execute('CREATE INDEX IF NOT EXISTS requests_id ON requests ("gen_ai.response.id")')

    def _create(self, table: str, columns: dict[str, str]) -> None:
        cols = ", ".join(f"{_quote(n)} {t}" for n, t in columns.items())
        self._conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY, {cols})")
        have = {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}
        for name, sql_type in columns.items():  # a newer runtime adds columns to an older file
            if name not in have:
                self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {_quote(name)} {sql_type}")

    def _insert(self, table: str, columns: dict[str, str], attrs: dict[str, Any]) -> int:
        unknown = set(attrs) - set(columns)
        if unknown:
            raise ValueError(f"unknown telemetry attributes for {table}: {sorted(unknown)}")
        names = list(attrs)
        sql = (
            f"INSERT INTO {table} ({', '.join(_quote(n) for n in names)}) "
            f"VALUES ({', '.join('?' for _ in names)})"
        )
        with self._lock:
            cur = self._conn.execute(sql, [attrs[n] for n in names])  # autocommit: one row, one commit
            return int(cur.lastrowid)

    def record(self, attrs: dict[str, Any]) -> int:
        """Store one request's attributes (text dropped unless ``log_text``); prune now and then."""
        row = {"time": time.time(), **attrs}
        if not self.log_text:
            for name in TEXT_COLUMNS:
                row.pop(name, None)
        for name, value in list(row.items()):
            if isinstance(value, (list, tuple, dict)):
                row[name] = json.dumps(value)
            elif isinstance(value, np.ndarray):
                row[name] = encode_vector(value)
            elif isinstance(value, np.generic):
                row[name] = value.item()
        rowid = self._insert("requests", REQUEST_COLUMNS, row)
        self._inserts += 1
        if self._inserts % 100 == 1:
            self.prune()
        return rowid

    def record_feedback(self, attrs: dict[str, Any]) -> int:
        return self._insert("feedback", FEEDBACK_COLUMNS, {"time": time.time(), **attrs})

    def prune(self) -> int:
        """Apply the retention limit: drop rows older than ``max_days`` and beyond ``max_rows``."""
        with self._lock:
            cutoff = time.time() - self.max_days * 86400
            n = self._conn.execute('DELETE FROM requests WHERE "time" < ?', (cutoff,)).rowcount
            n += self._conn.execute(
                "DELETE FROM requests WHERE id <= (SELECT id FROM requests ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (self.max_rows,),
            ).rowcount
            return n

    def requests(self, since: float | None = None) -> list[dict[str, Any]]:
        """All request rows, oldest first, as attribute dicts (embeddings decoded)."""
        sql = "SELECT * FROM requests" + (' WHERE "time" >= ?' if since is not None else "") + " ORDER BY id"
        with self._lock:
            cur = self._conn.execute(sql, () if since is None else (since,))
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r)) for r in cur.fetchall()]
        for row in rows:
            row["slmforge.query.embedding"] = decode_vector(row.get("slmforge.query.embedding"))
        return rows

    def request_by_id(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            cur = self._conn.execute('SELECT * FROM requests WHERE "gen_ai.response.id" = ?', (request_id,))
            names = [d[0] for d in cur.description]
            row = cur.fetchone()
        return None if row is None else dict(zip(names, row))

    def feedback(self) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._conn.execute("SELECT * FROM feedback ORDER BY id")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


@dataclass
class ResourceSample:
    """Process and device resources around one request (psutil where it has them)."""

    wall_start: float = field(default_factory=time.perf_counter)
    cpu_start: float = 0.0
    attrs: dict[str, Any] = field(default_factory=dict)


def _process():
    import psutil

    return psutil.Process()


def _peak_rss_bytes() -> int | None:
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, Linux KiB
    except (ImportError, OSError):
        info = _process().memory_info()
        return getattr(info, "peak_wset", None)  # Windows


@contextmanager
def measure_resources() -> Iterator[ResourceSample]:
    """Fill ``sample.attrs`` with RSS, peak RSS, CPU utilization and battery after the block."""
    import psutil

    proc = _process()
    sample = ResourceSample()
    times = proc.cpu_times()
    sample.cpu_start = times.user + times.system
    try:
        yield sample
    finally:
        times = proc.cpu_times()
        wall = time.perf_counter() - sample.wall_start
        cpus = psutil.cpu_count() or 1
        sample.attrs["process.memory.usage"] = proc.memory_info().rss
        sample.attrs["slmforge.process.memory.peak"] = _peak_rss_bytes()
        if wall > 0:
            used = times.user + times.system - sample.cpu_start
            sample.attrs["process.cpu.utilization"] = round(used / (wall * cpus), 4)
        try:
            battery = psutil.sensors_battery()
        except (AttributeError, NotImplementedError, OSError):
            battery = None
        if battery is not None:
            sample.attrs["hw.battery.charge"] = round(battery.percent / 100.0, 4)
            sample.attrs["slmforge.battery.plugged"] = None if battery.power_plugged is None else int(
                battery.power_plugged
            )
