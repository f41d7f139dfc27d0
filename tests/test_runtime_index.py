"""The RAG index: hybrid search, vector modes, incremental sync, and crash safety (kill -9)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from slmforge.runtime.index.embedder import Embedder
from slmforge.runtime.index.sqlite import connect
from slmforge.runtime.index.store import RagIndex, fts_query
from slmforge.runtime.index.sync import sync_documents

from tests.runtime_fixtures import build_tiny_embedder, fake_model_export, small_corpus

FAQ_Q = "How do I delete a file? (And other file questions...)"


@pytest.fixture(scope="module")
def tiny_embedder(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    return Embedder(build_tiny_embedder(tmp_path_factory.mktemp("emb") / "embedder", [corpus_dir]))


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, tiny_embedder: Embedder, corpus_dir: Path) -> RagIndex:
    """Read-only tests share one index of the small corpus."""
    tmp = tmp_path_factory.mktemp("idx")
    idx = RagIndex.create(tmp / "rag.db", dim=tiny_embedder.dim, embedder="tiny")
    sync_documents(idx, tiny_embedder, [small_corpus(corpus_dir, tmp / "docs")], progress=False)
    return idx


def consistent(idx: RagIndex) -> tuple[int, int]:
    """Every table agrees on the chunks; each document holds exactly the chunks it says. Returns (docs, chunks)."""
    c = idx.conn
    n = c.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
    for table in ("chunks_fts", "vec_float", "vec_bit", "vec_int8"):
        assert c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == n, table
    bad = c.execute("SELECT d.source FROM documents d LEFT JOIN chunks k ON k.doc_id = d.doc_id GROUP BY d.doc_id "
                    "HAVING COUNT(k.chunk_id) != d.n_chunks").fetchall()
    assert bad == []
    return c.execute("SELECT COUNT(*) FROM documents").fetchone()[0], n


def test_sqlite_connect_has_vec_and_fts5(tmp_path: Path):
    conn = connect(tmp_path / "x.db")
    assert conn.execute("SELECT vec_version()").fetchone()[0].startswith("v")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(x)")


def test_faq_question_finds_its_answer(index: RagIndex, tiny_embedder: Embedder):
    """The test embedder is a 32-dim toy whose cosines carry little meaning (its vectors rank this answer
    about 20th), so the answer is asserted through the words; the real embedder's FAQ hit@k is
    measured in test_runtime_integration."""
    vec = tiny_embedder.embed([FAQ_Q])[0]
    hits = index.search(vec, FAQ_Q, k=4)
    assert len(hits) == 4
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.vec_score is not None for h in hits)  # every hit carries its cosine, candidate or not
    words = index.search(vec, FAQ_Q, k=4, vec_weight=0)
    assert words[0].heading.endswith(FAQ_Q) and words[0].source == "docs/faq/library.rst"
    assert words[0].bm25_rank == 1 and words[0].vec_rank is None


def test_vector_modes_agree_with_exact(index: RagIndex, tiny_embedder: Embedder):
    q = tiny_embedder.embed(["copy a file with metadata"])[0]
    rows = index.conn.execute("SELECT chunk_id, embedding FROM chunks").fetchall()
    matrix = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
    exact = [rows[i][0] for i in np.argsort(-(matrix @ q))[:5]]
    for mode in ("float", "bitscan+rescore", "bit+rescore", "int8+rescore"):
        got = [cid for cid, _ in index.vector_search(q, 5, mode=mode)]
        assert got[0] == exact[0], mode
        assert len(set(got) & set(exact)) >= 4, mode


def test_bit_scan_sees_writes_from_this_and_other_connections(tmp_path: Path):
    """The in-memory bits are reloaded after our own writes and after another process's commit."""
    from slmforge.runtime.index.chunking import Chunk
    from slmforge.runtime.index.store import DocumentRecord

    rng = np.random.default_rng(0)

    def doc(name: str, n: int) -> DocumentRecord:
        vecs = rng.standard_normal((n, 48)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        chunks = [Chunk(f"{name} {i}", name, (name,), 0, 0, 2) for i in range(n)]
        return DocumentRecord(name, name, 0, chunks, vecs)

    writer = RagIndex.create(tmp_path / "rag.db", dim=48, embedder="test")
    first = doc("a", 30)
    writer.add_documents([first])
    reader = RagIndex(tmp_path / "rag.db", readonly=True)
    q = first.vectors[3]
    assert reader.vector_search(q, 1)[0][1] == pytest.approx(1.0)  # bits loaded: the vector finds itself
    assert writer.vector_search(q, 1)[0][1] == pytest.approx(1.0)
    second = doc("b", 30)
    writer.add_documents([second])  # another connection commits
    target = second.vectors[7]
    assert reader.vector_search(target, 1)[0][1] == pytest.approx(1.0)
    assert writer.vector_search(target, 1)[0][1] == pytest.approx(1.0)  # our own write, too
    writer.remove(["b"])
    assert writer.vector_search(target, 1)[0][1] < 0.9 and reader.vector_search(target, 1)[0][1] < 0.9
    reader.close()
    writer.close()


def test_fusion_weights(index: RagIndex, tiny_embedder: Embedder):
    q_text = "shutil copyfile destination"
    q = tiny_embedder.embed([q_text])[0]
    vec_only = index.search(q, q_text, k=5, bm25_weight=0)
    assert [h.chunk_id for h in vec_only] == [cid for cid, _ in index.vector_search(q, 5)]
    bm25_only = index.search(q, q_text, k=5, vec_weight=0)
    assert [h.chunk_id for h in bm25_only] == index.bm25_search(q_text, 5)


def test_query_text_is_never_fts_syntax(index: RagIndex, tiny_embedder: Embedder):
    nasty = 'NEAR("copy" * AND) OR -file: ^"'
    assert fts_query(nasty).count('"') % 2 == 0
    hits = index.search(tiny_embedder.embed([nasty])[0], nasty, k=3)
    assert len(hits) == 3
    assert index.bm25_search("", 5) == [] and fts_query("?!") == ""


def test_incremental_sync(tmp_path: Path, tiny_embedder: Embedder, corpus_dir: Path):
    docs = small_corpus(corpus_dir, tmp_path / "docs")
    index = RagIndex.create(tmp_path / "rag.db", dim=tiny_embedder.dim, embedder="tiny")
    sync_documents(index, tiny_embedder, [docs], progress=False)
    docs_before, _ = consistent(index)
    assert docs_before == 4
    again = sync_documents(index, tiny_embedder, [docs], progress=False)
    assert len(again.unchanged) == 4 and not (again.added or again.replaced or again.removed)
    (docs / "faq" / "library.rst").write_text("Changed\n=======\n\nOnly this remains about zebra crossings.\n")
    (docs / "tutorial" / "inputoutput.rst").unlink()
    (docs / "notes.txt").write_bytes("Caf\xe9 notes about zebra.\n".encode("cp1252"))  # not UTF-8
    report = sync_documents(index, tiny_embedder, [docs], progress=False)
    assert report.replaced == ["docs/faq/library.rst"]
    assert report.removed == ["docs/tutorial/inputoutput.rst"]
    assert report.added == ["docs/notes.txt"] and "not UTF-8" in report.warnings[0]
    n_docs, _ = consistent(index)
    assert n_docs == 4
    hits = index.search(tiny_embedder.embed(["zebra"])[0], "zebra", k=4, vec_weight=0)
    assert {h.source for h in hits} == {"docs/faq/library.rst", "docs/notes.txt"}  # only the new texts say zebra
    assert "Café" in next(h for h in hits if h.source == "docs/notes.txt").text
    assert index.remove(["docs/notes.txt", "docs/nope.txt"]) == 1
    assert consistent(index)[0] == 3


def test_kill_9_during_index_add_then_rerun(tmp_path: Path, corpus_dir: Path, tiny_embedder: Embedder):
    from slmforge.runtime.bundle.build import build_bundle
    from slmforge.runtime.bundle.reader import open_bundle

    from slmforge.errors import UserError

    small = small_corpus(corpus_dir, tmp_path / "small")
    export = fake_model_export(tmp_path / "export", tiny_embedder.dir)
    bundle = build_bundle(export, [small], tmp_path / "bundle", progress=False).path
    many = tmp_path / "many"
    for part in ("faq", "library"):
        shutil.copytree(corpus_dir / part, many / part)
    total = 4 + sum(1 for p in many.rglob("*.rst"))
    db = bundle / "rag.db"

    def indexed() -> int:
        try:
            conn = connect(db, readonly=True, timeout=0.1)
            return conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
        except Exception:  # noqa: BLE001 - locked mid-write: try again
            return -1

    proc = subprocess.Popen([sys.executable, "-m", "slmforge.cli", "index", "add", str(bundle), str(many), "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while indexed() < 4 + 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "index add finished before it could be killed"
    with RagIndex(db) as idx:  # opens, rolls back a hot journal if any, holds only whole documents
        n_docs, _ = consistent(idx)
    assert 4 + 3 <= n_docs < total
    with pytest.raises(UserError, match="rag.db.*re-run"):
        open_bundle(bundle)  # the manifest still describes the old index
    done = subprocess.run([sys.executable, "-m", "slmforge.cli", "index", "add", str(bundle), str(many), "--json"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    b = open_bundle(bundle)
    with RagIndex(b.rag_db) as idx:
        assert consistent(idx)[0] == total
    assert b.manifest.index["documents"] == total


def test_popcount_matches_python_with_and_without_numpy_2(monkeypatch: pytest.MonkeyPatch):
    """numpy ≥ 2 counts bits natively; the byte table keeps numpy 1.26 (the base install's floor) working."""
    from slmforge.runtime.index import bitscan

    words = np.random.default_rng(0).integers(0, 2**63, (64, 6), dtype=np.uint64)
    expected = [sum(int(w).bit_count() for w in row) for row in words]
    assert bitscan._popcount_rows(words).tolist() == expected
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert bitscan._popcount_rows(words).tolist() == expected
