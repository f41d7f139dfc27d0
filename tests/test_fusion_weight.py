"""The BM25 fusion weight of a tuned embedder: chosen on validation questions, carried to the index, checked.

`train retriever` picks the weight whose hybrid search gives its validation questions the best hit@4;
the export writes it into embedder.json, `bundle` into rag.db (and the manifest), and the index's
search uses it. A weight that is not a finite number >= 0, wherever it is read, is one line and exit 2.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

N_CHUNKS = 12
DIM = 16  # the bit vectors need a multiple of 8
SOURCE = "notes/d.rst"


def _index(path: Path):
    """Twelve chunks with one-hot vectors: chunk i says ``wordi``, and chunks 6–11 also say ``alpha``."""
    from slmforge.runtime.index.chunking import Chunk
    from slmforge.runtime.index.store import DocumentRecord, RagIndex

    chunks = [Chunk(f"word{i} filler" + (" alpha" if i >= 6 else ""), SOURCE, ("Notes", f"S{i}"), i * 100,
                    i * 100 + 50, 3) for i in range(N_CHUNKS)]
    index = RagIndex.create(path, dim=DIM, embedder="one-hot")
    index.add_documents([DocumentRecord(SOURCE, "0" * 64, 1, chunks, np.eye(N_CHUNKS, DIM, dtype=np.float32))])
    return index


def test_the_weight_is_chosen_on_validation_data(tmp_path: Path):
    """Where the words point away from the answer BM25 must be left out (0); where only the words find
    it, a positive weight must be chosen. Both from the same grid, by the validation questions alone."""
    from slmforge.export.retriever_train import FUSION_GRID, fusion_by_weight

    with _index(tmp_path / "rag.db") as index:
        gold = [(SOURCE, j * 100) for j in range(6)]
        # BM25 hurts: each vector is its gold chunk's, the words ("alpha") match six other chunks only
        hurts = fusion_by_weight(index, np.eye(N_CHUNKS, DIM, dtype=np.float32)[:6], ["alpha"] * 6, gold)
        # BM25 helps: the vectors point at chunks 6–11, the words name the gold chunk and no other
        away = np.zeros((6, DIM), dtype=np.float32)
        away[:, 6:N_CHUNKS] = 1 / np.sqrt(6)
        helps = fusion_by_weight(index, away, [f"word{j}" for j in range(6)], gold)
    assert 0.0 in FUSION_GRID and len(FUSION_GRID) >= 3
    assert hurts["bm25_weight"] == 0.0, hurts
    assert hurts["validation"]["by_bm25_weight"]["0.0"]["hit@4"] == 1.0
    assert hurts["validation"]["by_bm25_weight"]["1.0"]["hit@4"] == 0.0  # six "alpha" chunks outrank the gold one
    assert helps["bm25_weight"] > 0.0, helps
    assert helps["validation"]["by_bm25_weight"]["0.0"]["hit@4"] == 0.0
    assert helps["validation"]["questions"] == 6


def _tiny_export(root: Path, weight: object | None) -> tuple[Path, Path]:
    """An export around the tiny embedder, its embedder.json given ``weight`` as a tuned checkpoint's export would."""
    from slmforge.export.embedder import with_fusion

    from tests.runtime_fixtures import build_tiny_embedder, make_export_dir, real_gguf, small_corpus
    from tests.serve_helpers import CORPUS

    docs = small_corpus(CORPUS, root / "docs")
    embedder = build_tiny_embedder(root / "embedder", [docs])
    if weight is not None:
        ckpt = root / "ckpt"
        ckpt.mkdir()
        (ckpt / "slmforge.json").write_text(json.dumps({"kind": "checkpoint", "stage": "retriever",
                                                        "metrics": {"bm25_weight": weight}}))
        info = with_fusion(embedder, ckpt)
        assert info.bm25_weight == weight
    return make_export_dir(root / "export", real_gguf(), embedder), docs


def test_the_chosen_weight_reaches_the_index_and_its_search(tmp_path: Path):
    from slmforge.runtime.bundle.build import build_bundle
    from slmforge.runtime.bundle.reader import open_bundle
    from slmforge.runtime.index.embedder import Embedder
    from slmforge.runtime.index.store import DEFAULTS, RagIndex

    export, docs = _tiny_export(tmp_path / "tuned", 0.25)
    build_bundle(export, [docs], tmp_path / "bundle", progress=False)
    manifest = open_bundle(tmp_path / "bundle", verify=True).manifest
    assert manifest.embedder.bm25_weight == 0.25 and manifest.index["settings"]["bm25_weight"] == 0.25
    with RagIndex(tmp_path / "bundle" / "rag.db") as index:
        assert index.settings["bm25_weight"] == 0.25
        vec = Embedder(tmp_path / "bundle" / "embedder").embed(["Where is the blorp?"])[0]
        default = [h.score for h in index.search(vec, "Where is the blorp?", k=4)]
        assert default == [h.score for h in index.search(vec, "Where is the blorp?", k=4, bm25_weight=0.25)]
        assert default != [h.score for h in index.search(vec, "Where is the blorp?", k=4, bm25_weight=1.0)]
    # the command line still wins; a stock embedder (no weight) keeps the index default
    build_bundle(export, [docs], tmp_path / "given", progress=False, index_settings={"bm25_weight": 0.5})
    stock, stock_docs = _tiny_export(tmp_path / "stock", None)
    build_bundle(stock, [stock_docs], tmp_path / "stock-bundle", progress=False,
                 index_settings={"bm25_weight": None, "vec_weight": None})
    for bundle, expect in (("given", 0.5), ("stock-bundle", DEFAULTS["bm25_weight"])):
        with RagIndex(tmp_path / bundle / "rag.db") as index:
            assert index.settings["bm25_weight"] == expect, bundle


@pytest.mark.parametrize("bad", [-1, "abc", "nan"])
def test_a_bad_weight_in_a_manifest_is_one_line_and_exit_2(tmp_path: Path, bad: object):
    from slmforge.export.embedder import with_fusion
    from slmforge.runtime.bundle.build import build_bundle
    from slmforge.runtime.bundle.reader import open_bundle, write_manifest

    from tests.runtime_fixtures import build_tiny_embedder

    export, docs = _tiny_export(tmp_path / "t", 0.5)
    # in the index a bundle ships (rag.db's meta, the manifest re-signed so only the weight is wrong)
    build_bundle(export, [docs], tmp_path / "bundle", progress=False)
    with sqlite3.connect(tmp_path / "bundle" / "rag.db") as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'bm25_weight'", (str(bad),))
    conn.close()
    write_manifest(tmp_path / "bundle", open_bundle(tmp_path / "bundle", verify=False).manifest)
    proc = run_cli("run", str(tmp_path / "bundle"), "Where is the blorp?")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "bm25_weight" in lines[0], proc.stderr
    # in the embedder.json an export hands to 'bundle'
    config = json.loads((export / "embedder" / "embedder.json").read_text()) | {"bm25_weight": bad}
    (export / "embedder" / "embedder.json").write_text(json.dumps(config))
    proc = run_cli("bundle", "--export", str(export), "--docs", str(docs), "--out", str(tmp_path / "again"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert not (tmp_path / "again").exists()
    # in the checkpoint's slmforge.json the export reads
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "slmforge.json").write_text(json.dumps({"metrics": {"bm25_weight": bad}}))
    embedder = build_tiny_embedder(tmp_path / "e", [docs])
    from slmforge.errors import UserError

    with pytest.raises(UserError, match="bm25_weight"):
        with_fusion(embedder, ckpt)
