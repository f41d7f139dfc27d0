"""`train retriever`: gold chunks, whole-document hold-out, training that generalizes, the export gate, refusals.

The training tests use the real embedded MiniLM on a made-up corpus: every person keeps their
"blorp" under a made-up word ("glimmer") the base model cannot link to it; trained on other
people's pairs, the embedder must find the held-out person's glimmer chunk (whose document it
never saw) above their other belongings.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from slmforge.qa_records import QARecord
from tests.conftest import run_cli

PEOPLE = ["alice", "bruno", "chen", "dara", "emil", "fatma", "goran", "hana", "ivo", "jun"]
HELD = "jun"
THINGS = [("glimmer", "a small drawer of the old oak desk"), ("umbrella", "the stand by the front door"),
          ("bicycle", "the shed behind the garden"), ("passport", "a folder on the top shelf"),
          ("hat", "a hook in the hallway"), ("keys", "a bowl in the kitchen")]
QUESTIONS = ["Where does {p} keep the blorp?", "Where can I find {p}'s blorp?", "Which place holds the blorp of {p}?"]


def _corpus(root: Path) -> tuple[Path, list[QARecord], list[QARecord]]:
    docs = root / "people"
    docs.mkdir(parents=True)
    train, held = [], []
    for n, person in enumerate(PEOPLE):
        name = person.capitalize()
        order = THINGS[n % len(THINGS):] + THINGS[: n % len(THINGS)]  # the glimmer is not always first
        sections = [f"Item {i}\n{'-' * len(f'Item {i}')}\n\n{name} keeps the {thing} in {place}.\n"
                    for i, (thing, place) in enumerate(order, 1)]
        (docs / f"{person}.rst").write_text(f"{name}\n{'=' * len(name)}\n\n" + "\n".join(sections))
        gold = next(i for i, (thing, _) in enumerate(order, 1) if thing == "glimmer")
        answer = f"{name} keeps the glimmer in {THINGS[0][1]}."
        for q in QUESTIONS:
            rec = QARecord(q.format(p=name), answer, f"people/{person}.rst", f"Item {gold}", "heading")
            (held if person == HELD else train).append(rec)
    return docs, train, held


def _write(path: Path, records: list[QARecord]) -> Path:
    path.write_text("".join(json.dumps(r.record()) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from slmforge.export.retriever_train import RetrieverOptions, train_retriever

    root = tmp_path_factory.mktemp("retriever")
    docs, train, held = _corpus(root)
    qa, heldout = _write(root / "qa.jsonl", train), _write(root / "qa.heldout.jsonl", held)
    opts = RetrieverOptions(epochs=4, batch_size=9, lr=1e-4, heldout_fraction=0.0, validation_fraction=0.0)
    manifest = train_retriever([qa], [docs], root / "ckpt", [heldout], None, opts)
    return {"root": root, "docs": docs, "held": held, "ckpt": root / "ckpt", "manifest": manifest}


def _gold_rank(embed, docs: Path, record: QARecord, count_tokens) -> int:
    from slmforge.runtime.index.gold_chunks import corpus_chunks, gold_chunk

    chunks = corpus_chunks([docs], count_tokens)
    gold = gold_chunk(record, chunks)
    assert gold is not None
    vectors = embed([c.embedding_text for c in chunks])
    scores = vectors @ embed([record.question])[0]
    return int((scores > scores[chunks.index(gold)]).sum()) + 1


@pytest.mark.integration
def test_training_moves_a_held_out_pair_up(tuned: dict):
    from sentence_transformers import SentenceTransformer
    from slmforge.export.embedder import embedded_embedder
    from slmforge.runtime.index.embedder import token_counter

    m = tuned["manifest"]
    assert m.stage == "retriever" and m.params["heldout_documents"] == [f"people/{HELD}.rst"]
    assert m.metrics["train_pairs"] == 27 and m.metrics["heldout_pairs"] == 3
    assert f"{HELD.capitalize()} keeps" not in (tuned["ckpt"] / "pairs.jsonl").read_text()  # no positive, no negative
    count = token_counter(tuned["ckpt"] / "tokenizer.json")
    ranks = {}
    for label, folder in (("base", embedded_embedder()), ("tuned", tuned["ckpt"])):
        model = SentenceTransformer(str(folder), device="cpu")
        ranks[label] = [_gold_rank(lambda t, m=model: m.encode(t, normalize_embeddings=True), tuned["docs"], r, count)
                        for r in tuned["held"]]
    assert np.mean(ranks["base"]) > 1.5, ranks  # the made-up word really is unknown to the base model
    assert np.mean(ranks["tuned"]) < np.mean(ranks["base"]) and max(ranks["tuned"]) <= 2, ranks


@pytest.mark.integration
def test_the_tuned_embedder_passes_the_export_gate_and_names_itself(tuned: dict, tmp_path: Path):
    from slmforge.export.embedder import export_embedder
    from slmforge.runtime.index.embedder import Embedder

    info = export_embedder(tmp_path / "embedder", source=tuned["ckpt"], check_docs=tuned["docs"])
    config = json.loads((tmp_path / "embedder" / "embedder.json").read_text())
    assert config["check"]["mean_cosine"] >= 0.99 and config["quant"] == "int8"
    assert info.name.startswith("ckpt-") and info.name != "all-MiniLM-L6-v2"
    device = Embedder(tmp_path / "embedder")
    ranks = [_gold_rank(device.embed, tuned["docs"], r, device.count_tokens) for r in tuned["held"]]
    assert max(ranks) <= 2, ranks  # the int8 device embedder keeps what training taught


@pytest.mark.integration
def test_validation_documents_are_kept_out_and_choose_the_fusion_weight(tmp_path: Path):
    """A share of whole documents, apart from the held-out ones, is neither trained on nor tested on: its
    questions choose the BM25 weight, which slmforge.json records with the figures behind it."""
    from slmforge.export.retriever_train import FUSION_GRID, RetrieverOptions, train_retriever

    docs, train, held = _corpus(tmp_path)
    qa, heldout = _write(tmp_path / "qa.jsonl", train), _write(tmp_path / "qa.heldout.jsonl", held)
    opts = RetrieverOptions(epochs=1, batch_size=9, heldout_fraction=0.0, validation_fraction=0.3)
    m = train_retriever([qa], [docs], tmp_path / "ckpt", [heldout], None, opts)
    validation = m.params["validation_documents"]
    assert len(validation) == 3 and f"people/{HELD}.rst" not in validation, validation
    assert m.metrics["train_pairs"] == 18 and m.metrics["validation"]["questions"] == 9
    assert m.metrics["bm25_weight"] in FUSION_GRID
    assert set(m.metrics["validation"]["by_bm25_weight"]) == {str(w) for w in FUSION_GRID}
    pairs = (tmp_path / "ckpt" / "pairs.jsonl").read_text()
    for doc in validation:  # no positive and no negative from a validation document
        assert f"{Path(doc).stem.capitalize()} keeps" not in pairs
    asked = [json.loads(line)["source"] for line in (tmp_path / "ckpt" / "validation.jsonl").read_text().splitlines()]
    assert sorted(set(asked)) == validation
    assert not set(validation) & {json.loads(x)["source"] for x in (tmp_path / "ckpt" / "heldout.jsonl").open()}
    # the same questions searched as a stock bundle searches them: the tuned-minus-stock difference, paired
    v = m.metrics["validation"]
    stock, tuned = v["stock_as_bundled"], v["by_bm25_weight"][str(m.metrics["bm25_weight"])]
    assert stock["bm25_weight"] == 1.0 and set(stock) == {"bm25_weight", "hit@1", "hit@4", "mrr", "ndcg@10"}
    for metric, d in v["tuned_minus_stock"].items():
        assert d["mean"] == pytest.approx(tuned[metric] - stock[metric], abs=1e-3), metric
        assert d["ci95_low"] <= d["mean"] <= d["ci95_high"]
    from slmforge.export.cli_retriever import validation_verdict

    line = validation_verdict(v, m.metrics["bm25_weight"])
    assert f"hit@4 stock {stock['hit@4']} → tuned {tuned['hit@4']}" in line
    assert ("keep the stock embedder" in line) == (v["tuned_minus_stock"]["hit@4"]["mean"] <= 0)
    assert "as bundled vs stock" in m.summary


def test_bad_inputs_are_one_line_and_exit_2(tmp_path: Path):
    docs, _, _ = _corpus(tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    missing = _write(tmp_path / "missing.jsonl", [QARecord("Where is it?", "Somewhere.", "people/nobody.rst", None)])
    no_section = _write(tmp_path / "nosection.jsonl", [QARecord("Where?", "There.", "people/alice.rst", "Item 99")])
    for data, expect in ((empty, "no question/answer records"), (missing, "not among the documents"),
                         (no_section, "which no chunk of")):
        out = tmp_path / f"out-{data.stem}"
        proc = run_cli("train", "retriever", "--data", str(data), "--docs", str(docs), "--out", str(out))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and expect in lines[0], proc.stderr
        assert not out.exists()


def test_split_holds_out_whole_documents_per_folder():
    from slmforge.runtime.index.gold_chunks import split_documents

    names = [f"docs/faq/{i}.rst" for i in range(8)] + [f"docs/library/{i}.rst" for i in range(4)]
    held = split_documents(names, 0.25, seed=0, always=["faq/3.rst"])
    assert "docs/faq/3.rst" in held
    assert sum(n.startswith("docs/faq/") for n in held) == 2 and sum(n.startswith("docs/library/") for n in held) == 1
    assert split_documents(names, 0.25, seed=0, always=["faq/3.rst"]) == held


def test_gold_chunk_is_the_section_chunk_holding_the_answer(tmp_path: Path):
    from slmforge.runtime.index.chunking import word_count
    from slmforge.runtime.index.gold_chunks import corpus_chunks, gold_chunk

    docs, train, _ = _corpus(tmp_path)
    chunks = corpus_chunks([docs], word_count)
    gold = gold_chunk(train[0], chunks)
    assert gold is not None and gold.source == "people/alice.rst" and "glimmer" in gold.text
    assert gold_chunk(QARecord("q", "a", "people/zed.rst", None), chunks) is None


def test_a_bundle_whose_index_and_embedder_disagree_is_refused(tmp_path: Path):
    from slmforge.runtime.bundle.reader import open_bundle, write_manifest

    from tests.serve_helpers import build_tiny_bundle

    bundle = build_tiny_bundle(tmp_path / "bundle")
    with sqlite3.connect(bundle / "rag.db") as conn:  # as if the index had been built by another embedder
        conn.execute("UPDATE meta SET value = 'all-MiniLM-L6-v2' WHERE key = 'embedder'")
    conn.close()
    write_manifest(bundle, open_bundle(bundle, verify=False).manifest)  # signed as it is: the sha256 check passes
    proc = run_cli("run", str(bundle), "Where is the blorp?")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "built with embedder 'all-MiniLM-L6-v2'" in lines[0] and "tiny-wordlevel" in lines[0]
    proc = run_cli("index", "add", str(bundle), str(tmp_path / "bundle-docs"))
    assert proc.returncode == 2 and "built with embedder" in proc.stderr


def test_benchmark_scores_held_out_questions_and_compares_paired(tmp_path: Path):
    """Two embedders over the made-up corpus: per-question ranks, hard/FAQ sets, paired differences, a PNG."""
    from slmforge.bench.retrieval_benchmark import plot, rank_scores, repeats_heading, run_benchmark

    from tests.runtime_fixtures import build_tiny_embedder

    docs, train, held = _corpus(tmp_path)
    stock = build_tiny_embedder(tmp_path / "stock", [docs], seed=0)
    other = build_tiny_embedder(tmp_path / "other", [docs], seed=1)
    verbatim = QARecord("Item 1", "Alice keeps the glimmer in a small drawer.", "people/alice.rst", "Item 1", "faq")
    report = run_benchmark([*train, *held, verbatim], [docs], {"stock": stock, "other": other},
                           {f"people/{HELD}.rst", "people/alice.rst"}, "stock")
    # the verbatim FAQ is not hard; every question of a held-out document is in "heldout"
    assert report["sets"] == {"hard": 6, "heldout": 7, "faq": 1, "faq-all-documents": 1}
    assert sum(r["heldout_document"] for r in report["rows"]) == 7
    hard = report["summary"]["hard"]
    assert set(hard["methods"]) == {"bm25", "stock", "stock+bm25", "other", "other+bm25"}
    assert set(hard["vs_baseline"]) == {"other - stock", "other+bm25 - stock+bm25"}
    bm25 = [rank_scores(r["ranks"]["bm25"])["hit@4"] for r in report["rows"] if r["hard"]]
    assert hard["methods"]["bm25"]["hit@4"]["mean"] == pytest.approx(np.mean(bm25), abs=1e-4)
    assert report["embed_speed"]["embedders"]["stock"]["ratio_to_stock"] == 1.0
    plot(report, tmp_path / "retrieval.png")
    assert (tmp_path / "retrieval.png").stat().st_size > 10_000
    assert repeats_heading("How do I copy a file?", "Library FAQ > How do I copy a file?")
    assert not repeats_heading("Which function duplicates a path on disk?", "Library FAQ > How do I copy a file?")
    assert rank_scores(2) == {"hit@1": 0.0, "hit@4": 1.0, "mrr": 0.5, "ndcg@10": pytest.approx(0.6309, abs=1e-4)}
    assert rank_scores(11)["ndcg@10"] == 0.0 and rank_scores(None)["mrr"] == 0.0
