"""The RAG index (``rag.db``): chunks in SQLite, vectors in sqlite-vec, words in FTS5.

Search fuses two rankings by reciprocal rank fusion: nearest vectors and BM25 over the
same chunks. The default vector path is a Hamming scan of sqlite-vec's bit vectors held in
memory (runtime/index/bitscan.py) whose candidates are re-scored exactly with the float vectors;
the other modes query sqlite-vec directly, always through ``MATCH … AND k = ?``. Every document is
written in its own transaction, so an interrupted update leaves whole documents.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from slmforge.runtime.index.bitscan import BitScan
from slmforge.runtime.index.chunking import Chunk
from slmforge.runtime.index.sqlite import connect, database_error, hot_journal_advice

from slmforge.errors import UserError

INDEX_VERSION = 1
VectorMode = Literal["bitscan+rescore", "bit+rescore", "float", "int8+rescore"]
VECTOR_MODES: tuple[str, ...] = ("bitscan+rescore", "bit+rescore", "float", "int8+rescore")
DEFAULTS: dict[str, Any] = {
    "vector_mode": "bitscan+rescore",
    "vec_weight": 1.0,
    "bm25_weight": 1.0,
    "rrf_k": 60,
    "rescore_candidates": 128,
    "fusion_depth": 20,
}
_WORD = re.compile(r"\w+", re.UNICODE)


def setting_value(key: str, value: Any) -> Any:
    """One search setting, parsed and checked, from wherever it comes (CLI, embedder.json, rag.db's meta):
    a negative or NaN weight would silently reorder every answer's passages, so it is refused here, once."""
    if key not in DEFAULTS:
        raise UserError(f"unknown index setting '{key}'; known: {sorted(DEFAULTS)}")
    if key == "vector_mode":
        if value not in VECTOR_MODES:
            raise UserError(f"vector mode '{value}' is not one of {', '.join(VECTOR_MODES)}")
        return str(value)
    kind = type(DEFAULTS[key])
    try:
        parsed = kind(value)
    except (TypeError, ValueError):
        raise UserError(f"index setting {key}={value!r} is not a number") from None
    if isinstance(parsed, float) and not (math.isfinite(parsed) and parsed >= 0):
        raise UserError(f"index setting {key}={value!r} must be a finite number >= 0")
    if isinstance(parsed, int) and parsed < 1:
        raise UserError(f"index setting {key}={value!r} must be a whole number >= 1")
    return parsed


@dataclass
class Hit:
    chunk_id: int
    source: str
    heading: str
    text: str
    score: float  # fused reciprocal-rank score (what the ranking uses)
    vec_score: float | None  # cosine similarity to the query, when the chunk was a vector candidate
    bm25_rank: int | None  # 1-based rank in the BM25 list, None if no word matched
    vec_rank: int | None = None
    char_start: int = 0
    char_end: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DocumentRecord:
    """One document ready to be written: its chunks and their vectors (same order)."""

    source: str
    sha256: str
    size: int
    chunks: list[Chunk]
    vectors: np.ndarray
    warning: str | None = None


@dataclass
class IndexStatus:
    path: str
    documents: int
    chunks: int
    dim: int
    embedder: str
    settings: dict[str, Any]
    size_bytes: int
    updated: str | None
    sources: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def fts_query(text: str) -> str:
    """Words of ``text`` as an FTS5 OR-query of quoted terms (user text can never be FTS syntax)."""
    words = dict.fromkeys(w.lower() for w in _WORD.findall(text) if len(w) > 1 or w.isdigit())
    return " OR ".join(f'"{w}"' for w in words)


def _f32(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype=np.float32).tobytes()


def embedder_settings(info: Any) -> dict[str, Any]:
    """The search settings an embedder comes with: the BM25 weight ``train retriever`` chose on its
    validation questions (a stock embedder has none, and its index keeps ``DEFAULTS``)."""
    weight = getattr(info, "bm25_weight", None)
    return {} if weight is None else {"bm25_weight": setting_value("bm25_weight", weight)}


class RagIndex:
    """Open (or with ``create``) a rag.db; ``search`` may be called from several threads (``serve --parallel``
    answers several questions at once): one search runs at a time, so the bit scan reloads consistently."""

    def __init__(self, db_path: str | Path, readonly: bool = False) -> None:
        self.path = Path(db_path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no index here; build one with 'slmforge bundle' or 'slmforge index add'")
        try:
            self.conn = connect(self.path, readonly=readonly)
            meta = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        except database_error() as exc:
            advice = hot_journal_advice(self.path, "re-run 'slmforge index add BUNDLE DOCS...'")
            raise UserError(advice or f"{self.path}: not a readable index ({exc}); rebuild it with 'slmforge bundle'") from None
        if int(meta.get("version", -1)) != INDEX_VERSION:
            raise UserError(f"{self.path}: index version {meta.get('version')} is not {INDEX_VERSION}; rebuild the bundle")
        self.dim = int(meta["dim"])
        self.embedder = meta.get("embedder", "")
        try:
            self.settings = {k: setting_value(k, meta[k]) if k in meta else v for k, v in DEFAULTS.items()}
        except UserError as exc:
            raise UserError(f"{self.path}: {exc}; rebuild the bundle") from None
        self.bitscan = BitScan(self.conn)
        self._search_lock = threading.Lock()

    def require_embedder(self, name: str, where: str) -> None:
        """Refuse to search with an embedder other than the one that built the vectors (they would not compare)."""
        if self.embedder != name:
            raise UserError(f"{where}: the index was built with embedder '{self.embedder}' but the bundle embeds with "
                            f"'{name}'; rebuild the index with 'slmforge bundle' (or 'slmforge index add')")

    # -- creation -------------------------------------------------------------------------------------

    @classmethod
    def create(cls, db_path: str | Path, dim: int, embedder: str, **settings: Any) -> RagIndex:
        """An empty index at ``db_path`` (which must not exist yet)."""
        path = Path(db_path)
        if path.exists():
            raise UserError(f"{path}: already exists; open it instead of creating it")
        unknown = set(settings) - set(DEFAULTS)
        if unknown:
            raise UserError(f"unknown index settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        merged = {**DEFAULTS, **{k: setting_value(k, v) for k, v in settings.items()}}
        conn = connect(path)
        with conn:
            conn.executescript(
                f"""
                CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                CREATE TABLE documents (
                    doc_id INTEGER PRIMARY KEY, source TEXT NOT NULL UNIQUE, sha256 TEXT NOT NULL,
                    size INTEGER NOT NULL, n_chunks INTEGER NOT NULL, warning TEXT, indexed_at TEXT NOT NULL);
                CREATE TABLE chunks (
                    chunk_id INTEGER PRIMARY KEY AUTOINCREMENT, doc_id INTEGER NOT NULL REFERENCES documents(doc_id),
                    source TEXT NOT NULL, heading TEXT NOT NULL, text TEXT NOT NULL, char_start INTEGER NOT NULL,
                    char_end INTEGER NOT NULL, n_tokens INTEGER NOT NULL, content_hash TEXT NOT NULL,
                    embedding BLOB NOT NULL);
                CREATE INDEX chunks_by_doc ON chunks(doc_id);
                CREATE VIRTUAL TABLE chunks_fts USING fts5(heading, text, tokenize='porter unicode61');
                CREATE VIRTUAL TABLE vec_float USING vec0(embedding float[{dim}] distance_metric=cosine);
                CREATE VIRTUAL TABLE vec_bit USING vec0(embedding bit[{dim}]);
                CREATE VIRTUAL TABLE vec_int8 USING vec0(embedding int8[{dim}]);
                """
            )
            rows = {"version": INDEX_VERSION, "dim": dim, "embedder": embedder, "created": _now(), **merged}
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in rows.items()])
        conn.close()
        return cls(path)

    def set_settings(self, **settings: Any) -> None:
        checked = {key: setting_value(key, value) for key, value in settings.items()}
        self.settings.update(checked)
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in checked.items()])

    # -- writing --------------------------------------------------------------------------------------

    def document_hashes(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT source, sha256 FROM documents").fetchall())

    def add_documents(self, documents: Iterable[DocumentRecord]) -> int:
        """Insert or replace each document atomically (its old chunks go in the same transaction)."""
        written = 0
        for doc in documents:
            if len(doc.chunks) != len(doc.vectors):
                raise ValueError(f"{doc.source}: {len(doc.chunks)} chunks but {len(doc.vectors)} vectors")
            if len(doc.vectors) and doc.vectors.shape[1] != self.dim:
                raise UserError(f"{doc.source}: vectors have {doc.vectors.shape[1]} dims, the index {self.dim}")
            with self.conn:  # one transaction per document: commit at the end or roll back
                self.conn.execute("BEGIN IMMEDIATE")
                self._delete_source(doc.source)
                cur = self.conn.execute(
                    "INSERT INTO documents(source, sha256, size, n_chunks, warning, indexed_at) VALUES (?,?,?,?,?,?)",
                    (doc.source, doc.sha256, doc.size, len(doc.chunks), doc.warning, _now()),
                )
                doc_id = cur.lastrowid
                for chunk, vec in zip(doc.chunks, doc.vectors):
                    blob = _f32(vec)
                    cur = self.conn.execute(
                        "INSERT INTO chunks(doc_id, source, heading, text, char_start, char_end, n_tokens, content_hash,"
                        " embedding) VALUES (?,?,?,?,?,?,?,?,?)",
                        (doc_id, doc.source, chunk.heading_path, chunk.text, chunk.char_start, chunk.char_end,
                         chunk.n_tokens, chunk.content_hash, blob),
                    )
                    cid = cur.lastrowid
                    self.conn.execute("INSERT INTO chunks_fts(rowid, heading, text) VALUES (?,?,?)",
                                      (cid, chunk.heading_path, chunk.text))
                    self.conn.execute("INSERT INTO vec_float(rowid, embedding) VALUES (?, ?)", (cid, blob))
                    self.conn.execute("INSERT INTO vec_bit(rowid, embedding) VALUES (?, vec_quantize_binary(?))",
                                      (cid, blob))
                    self.conn.execute("INSERT INTO vec_int8(rowid, embedding) VALUES (?, vec_quantize_int8(?, 'unit'))",
                                      (cid, blob))
                self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('updated', ?)", (_now(),))
            self.bitscan.invalidate()
            written += 1
        return written

    def remove(self, sources: Iterable[str]) -> int:
        """Remove documents by source name; each in its own transaction. Returns how many existed."""
        removed = 0
        for source in sources:
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                removed += self._delete_source(source)
                self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('updated', ?)", (_now(),))
            self.bitscan.invalidate()
        return removed

    def _delete_source(self, source: str) -> int:
        row = self.conn.execute("SELECT doc_id FROM documents WHERE source = ?", (source,)).fetchone()
        if row is None:
            return 0
        ids = [r[0] for r in self.conn.execute("SELECT chunk_id FROM chunks WHERE doc_id = ?", (row[0],))]
        for table in ("chunks_fts", "vec_float", "vec_bit", "vec_int8"):
            self.conn.executemany(f"DELETE FROM {table} WHERE rowid = ?", [(i,) for i in ids])
        self.conn.execute("DELETE FROM chunks WHERE doc_id = ?", (row[0],))
        self.conn.execute("DELETE FROM documents WHERE doc_id = ?", (row[0],))
        return 1

    # -- reading --------------------------------------------------------------------------------------

    def status(self, with_sources: bool = False) -> IndexStatus:
        docs, chunks = self.conn.execute("SELECT COUNT(*), COALESCE(SUM(n_chunks), 0) FROM documents").fetchone()
        updated = self.conn.execute("SELECT value FROM meta WHERE key = 'updated'").fetchone()
        sources = []
        if with_sources:
            sources = [
                {"source": s, "sha256": h, "chunks": n, "warning": w, "indexed_at": t}
                for s, h, n, w, t in self.conn.execute(
                    "SELECT source, sha256, n_chunks, warning, indexed_at FROM documents ORDER BY source")
            ]
        return IndexStatus(
            path=str(self.path), documents=int(docs), chunks=int(chunks), dim=self.dim, embedder=self.embedder,
            settings=dict(self.settings), size_bytes=self.path.stat().st_size,
            updated=updated[0] if updated else None, sources=sources,
        )

    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])

    def passage(self, chunk_id: int) -> dict[str, Any] | None:
        """One chunk as a reader sees it (document, section, text, place in the document); None if absent."""
        row = self.conn.execute("SELECT chunk_id, source, heading, text, char_start, char_end FROM chunks "
                                "WHERE chunk_id = ?", (int(chunk_id),)).fetchone()
        if row is None:
            return None
        return dict(zip(("chunk_id", "source", "heading", "text", "char_start", "char_end"), row))

    def vector_search(self, query_vec: np.ndarray, k: int, mode: str | None = None) -> list[tuple[int, float]]:
        """(chunk_id, cosine) of the ``k`` nearest chunks, best first, by the given vector mode."""
        mode = mode or self.settings["vector_mode"]
        q = _f32(np.asarray(query_vec, dtype=np.float32).reshape(-1))
        if mode == "float":
            rows = self.conn.execute(
                "SELECT rowid, distance FROM vec_float WHERE embedding MATCH ? AND k = ?", (q, k)).fetchall()
            return [(int(r), 1.0 - float(d)) for r, d in rows]
        n = max(k, int(self.settings["rescore_candidates"]))
        if mode == "bitscan+rescore":
            query_bits = self.conn.execute("SELECT vec_quantize_binary(?)", (q,)).fetchone()[0]
            return self._rescore(self.bitscan.nearest(query_bits, n), np.frombuffer(q, dtype=np.float32), k)
        if mode == "bit+rescore":
            sql = "SELECT rowid FROM vec_bit WHERE embedding MATCH vec_quantize_binary(?) AND k = ?"
        elif mode == "int8+rescore":
            sql = "SELECT rowid FROM vec_int8 WHERE embedding MATCH vec_quantize_int8(?, 'unit') AND k = ?"
        else:
            raise UserError(f"vector mode '{mode}' is not one of {', '.join(VECTOR_MODES)}")
        ids = [int(r[0]) for r in self.conn.execute(sql, (q, n))]
        return self._rescore(ids, np.frombuffer(q, dtype=np.float32), k)

    def _rescore(self, ids: list[int], query: np.ndarray, k: int) -> list[tuple[int, float]]:
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self.conn.execute(f"SELECT chunk_id, embedding FROM chunks WHERE chunk_id IN ({marks})", ids).fetchall()
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), self.dim)
        scores = matrix @ query
        order = np.argsort(-scores)[:k]
        return [(int(rows[i][0]), float(scores[i])) for i in order]

    def bm25_search(self, query_text: str, k: int) -> list[int]:
        """chunk_ids of the ``k`` best BM25 matches for the words of ``query_text``, best first."""
        match = fts_query(query_text)
        if not match:
            return []
        rows = self.conn.execute(
            "SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY rank LIMIT ?", (match, k)).fetchall()
        return [int(r[0]) for r in rows]

    def search(
        self,
        query_vec: np.ndarray,
        query_text: str,
        k: int = 4,
        vec_weight: float | None = None,
        bm25_weight: float | None = None,
    ) -> list[Hit]:
        """The ``k`` best chunks by reciprocal rank fusion of vector and BM25 rankings."""
        return self.search_scored(query_vec, query_text, k, vec_weight, bm25_weight)[0]

    def search_scored(
        self,
        query_vec: np.ndarray,
        query_text: str,
        k: int = 4,
        vec_weight: float | None = None,
        bm25_weight: float | None = None,
    ) -> tuple[list[Hit], float | None]:
        """``search`` plus the best cosine among all vector candidates.

        Fusion may rank a BM25 match with a weak cosine first, and ``k`` may be 1, so the hits alone
        understate how close the question is to the documents; drift and escalation need the nearest."""
        if k <= 0:
            return [], None
        with self._search_lock:
            return self._search_scored(query_vec, query_text, k, vec_weight, bm25_weight)

    def _search_scored(self, query_vec: np.ndarray, query_text: str, k: int, vec_weight: float | None,
                       bm25_weight: float | None) -> tuple[list[Hit], float | None]:
        s = self.settings
        depth = max(k, int(s["fusion_depth"]))
        w_vec = s["vec_weight"] if vec_weight is None else vec_weight
        w_bm25 = s["bm25_weight"] if bm25_weight is None else bm25_weight
        vec_hits = self.vector_search(query_vec, depth) if w_vec > 0 else []
        bm25_ids = self.bm25_search(query_text, depth) if w_bm25 > 0 else []
        rrf_k = float(s["rrf_k"])
        fused: dict[int, float] = {}
        for rank, (cid, _) in enumerate(vec_hits, 1):
            fused[cid] = fused.get(cid, 0.0) + w_vec / (rrf_k + rank)
        for rank, cid in enumerate(bm25_ids, 1):
            fused[cid] = fused.get(cid, 0.0) + w_bm25 / (rrf_k + rank)
        best = sorted(fused, key=lambda c: -fused[c])[:k]
        nearest = round(vec_hits[0][1], 4) if vec_hits else None
        if not best:
            return [], nearest
        cosine = dict(vec_hits)
        vec_rank = {cid: r for r, (cid, _) in enumerate(vec_hits, 1)}
        bm25_rank = {cid: r for r, cid in enumerate(bm25_ids, 1)}
        missing = [c for c in best if c not in cosine]
        cosine.update(self._rescore(missing, np.asarray(query_vec, dtype=np.float32).reshape(-1), len(missing)))
        marks = ",".join("?" * len(best))
        rows = {
            r[0]: r
            for r in self.conn.execute(
                f"SELECT chunk_id, source, heading, text, char_start, char_end FROM chunks WHERE chunk_id IN ({marks})",
                best)
        }
        hits = [
            Hit(chunk_id=c, source=rows[c][1], heading=rows[c][2], text=rows[c][3], score=round(fused[c], 6),
                vec_score=round(cosine[c], 4) if c in cosine else None, bm25_rank=bm25_rank.get(c),
                vec_rank=vec_rank.get(c), char_start=rows[c][4], char_end=rows[c][5])
            for c in best if c in rows
        ]
        return hits, nearest

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> RagIndex:  # noqa: PYI034 - not subclassed
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def timed(fn: Any, *args: Any, **kw: Any) -> tuple[Any, float]:
    """(result, milliseconds) of one call."""
    start = time.perf_counter()
    out = fn(*args, **kw)
    return out, (time.perf_counter() - start) * 1000
