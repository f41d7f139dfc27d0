"""A retrieval benchmark that is hard: held-out questions whose wording does not repeat their chunk's heading.

FAQ chunks carry their question in their heading, so FAQ hit@k is easy by construction. Here
every question comes from documents the retriever was not trained on, its gold chunk is the
one of its section holding most of its answer (``runtime/index/gold_chunks.py``), and a question
whose content words cover half or more of that section's heading is left out of the hard set
(it is kept in the ``faq`` set, measured separately so a trained embedder cannot silently lose
it). Each embedder (an exported device folder: int8 ONNX + tokenizer) gets its own index of
the same documents, built as ``bundle`` builds it, and is measured vector-only and fused with
BM25 the way the index searches (reciprocal rank fusion). Trained-minus-stock differences come
with the paired bootstrap of ``slmforge eval``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from slmforge.bench.metrics import bootstrap_ci, content_words, paired_bootstrap
from slmforge.bench.plots import pyplot, write_png
from slmforge.runtime.index.embedder import Embedder, read_embedder_info
from slmforge.runtime.index.gold_chunks import (
    METRICS,
    CorpusChunk,
    gold_chunks,
    index_chunks,
    rank_scores,
    ranked_keys,
)
from slmforge.runtime.index.store import RagIndex, embedder_settings
from slmforge.runtime.index.sync import sync_documents
from tqdm import tqdm

from slmforge.errors import UserError
from slmforge.qa_records import QARecord, same_document

HEADING_REPEAT = 0.5  # a question holding this share of its heading's content words repeats the heading
TIMING_TEXTS = 100


def repeats_heading(question: str, heading_path: str) -> bool:
    """Does the question reuse the wording of the innermost heading of its gold chunk?"""
    heading = set(content_words(heading_path.split(" > ")[-1]))
    return bool(heading) and len(heading & set(content_words(question))) >= HEADING_REPEAT * len(heading)


def build_index(folder: Path, embedder: Embedder, docs: Sequence[Path]) -> RagIndex:
    """An index of ``docs`` with this embedder, exactly as ``bundle`` builds one (with the BM25 weight
    ``train retriever`` chose for a tuned embedder, so "+bm25" is the search its bundle runs)."""
    index = RagIndex.create(folder / "rag.db", dim=embedder.dim, embedder=embedder.info.name,
                            **embedder_settings(embedder.info))
    sync_documents(index, embedder, list(docs), progress=True)
    return index


def embed_speed(embedders: dict[str, Embedder], texts: list[str], rounds: int = 3) -> dict[str, Any]:
    """Milliseconds per chunk of each embedder, interleaved in one run; ratios against the first."""
    times: dict[str, list[float]] = {name: [] for name in embedders}
    for _ in range(rounds):
        for name, emb in embedders.items():
            start = time.perf_counter()
            emb.embed(texts)
            times[name].append((time.perf_counter() - start) * 1000 / len(texts))
    first = next(iter(embedders))
    out = {name: {"ms_per_chunk_median": round(float(np.median(t)), 3)} for name, t in times.items()}
    base = out[first]["ms_per_chunk_median"]
    for row in out.values():
        row["ratio_to_" + first] = round(row["ms_per_chunk_median"] / base, 3)
    return {"texts": len(texts), "rounds": rounds, "threads": "onnxruntime default", "embedders": out}


def question_sets(records: list[QARecord], golds: list[CorpusChunk], held: list[bool]) -> dict[str, list[int]]:
    """Indices of the hard held-out questions (heading not repeated), of every question of the held-out
    documents (a manual whose generated questions name their section has few hard ones, and its users ask
    those too), the verbatim FAQ questions of held-out documents, and (when some documents were trained on)
    the FAQ questions of every document, as FAQ hit@k was measured before (trained documents included, so
    not a held-out figure)."""
    hard = [i for i, (r, g) in enumerate(zip(records, golds)) if held[i] and not repeats_heading(r.question, g.heading)]
    faq = [i for i, r in enumerate(records) if held[i] and r.origin == "faq"]
    sets = {"hard": hard, "heldout": [i for i in range(len(records)) if held[i]], "faq": faq}
    if not all(held):
        sets["faq-all-documents"] = [i for i, r in enumerate(records) if r.origin == "faq"]
    return sets


def run_benchmark(records: list[QARecord], docs: Sequence[Path], embedders: dict[str, Path],
                  heldout_docs: set[str] | None, baseline: str, threads: int | None = None) -> dict[str, Any]:
    """Per-question ranks and summary figures of BM25 and of every embedder alone and fused with BM25."""
    held = [heldout_docs is None or bool(r.source and any(same_document(r.source, d) for d in heldout_docs))
            for r in records]
    if not any(held):
        raise UserError("no questions left from the held-out documents; pass the QA files of the documents the "
                        "retriever was not trained on")
    if baseline not in embedders:
        raise UserError(f"--baseline {baseline}: not one of the embedders ({', '.join(embedders)})")
    rows: list[dict[str, Any]] = []
    questions = [r.question for r in records]
    with tempfile.TemporaryDirectory(prefix="retrieval-bench-") as tmp:
        loaded: dict[str, Embedder] = {}
        ranked: dict[str, list[list[tuple[str, int]]]] = {}
        golds: list[CorpusChunk] = []
        fused_weight: dict[str, float] = {}
        for name, folder in embedders.items():
            emb = loaded[name] = Embedder(folder, threads=threads)
            place = Path(tmp) / name
            place.mkdir()
            with build_index(place, emb, docs) as index:
                chunks = index_chunks(index)
                if not golds:
                    golds = gold_chunks(records, list(chunks.values()), "benchmark questions")
                vectors = emb.embed(questions)
                if "bm25" not in ranked:
                    ranked["bm25"] = ranked_keys(index, chunks, vectors, questions, {"vec_weight": 0.0})
                ranked[name] = ranked_keys(index, chunks, vectors, questions, {"bm25_weight": 0.0})
                ranked[f"{name}+bm25"] = ranked_keys(index, chunks, vectors, questions, {})  # as its bundle searches
                fused_weight[name] = index.settings["bm25_weight"]
        sample = [c.embedding_text for c in list(chunks.values())[:: max(1, len(chunks) // TIMING_TEXTS)]][:TIMING_TEXTS]
        speed = embed_speed(loaded, sample)
    sets = question_sets(records, golds, held)
    for i, (rec, gold) in enumerate(tqdm(list(zip(records, golds)), desc="scoring", unit="q", leave=False)):
        row: dict[str, Any] = {"question": rec.question, "source": rec.source, "section": rec.section,
                               "origin": rec.origin, "gold": {"source": gold.source, "heading": gold.heading,
                                                             "char_start": gold.char_start},
                               "heldout_document": held[i], "hard": i in sets["hard"], "ranks": {}}
        for method, lists in ranked.items():
            keys = lists[i]
            row["ranks"][method] = keys.index(gold.key) + 1 if gold.key in keys else None
        rows.append(row)
    info = {name: read_embedder_info(folder).model_dump(mode="json") for name, folder in embedders.items()}
    return {"questions": len(records), "sets": {k: len(v) for k, v in sets.items()},
            "heading_repeat_threshold": HEADING_REPEAT, "embedders": info, "baseline": baseline,
            "bm25_weight_as_bundled": fused_weight,
            "summary": summarize(rows, sets, list(ranked), baseline), "embed_speed": speed, "rows": rows}


def summarize(rows: list[dict[str, Any]], sets: dict[str, list[int]], methods: list[str],
              baseline: str) -> dict[str, Any]:
    """Mean and 95 % interval of each metric per set and method; paired differences against the baseline."""
    out: dict[str, Any] = {}
    for set_name, members in sets.items():
        if not members:
            continue
        scores = {m: [rank_scores(rows[i]["ranks"][m]) for i in members] for m in methods}
        table: dict[str, Any] = {"n": len(members), "methods": {}}
        for m in methods:
            table["methods"][m] = {}
            for metric in METRICS:
                mean, low, high = bootstrap_ci([s[metric] for s in scores[m]])
                table["methods"][m][metric] = {"mean": round(mean, 4), "ci95": [round(low, 4), round(high, 4)]}
        table["vs_baseline"] = {}
        for m in methods:
            base = baseline if "+" not in m else f"{baseline}+bm25"
            if m in (baseline, f"{baseline}+bm25", "bm25") or base not in scores:
                continue
            table["vs_baseline"][f"{m} - {base}"] = {
                metric: paired_bootstrap([s[metric] for s in scores[m]], [s[metric] for s in scores[base]])
                for metric in METRICS}
        out[set_name] = table
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    """Bars of every metric per method with 95 % intervals, one panel per question set."""
    plt = pyplot()
    sets = list(report["summary"])
    cols = min(2, len(sets))  # two panels a row: four in one row are too small to read
    rows = -(-len(sets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4.5 * rows), squeeze=False)
    for ax in axes.flat[len(sets):]:
        ax.set_visible(False)
    for ax, set_name in zip(axes.flat, sets):
        table = report["summary"][set_name]
        methods = list(table["methods"])
        width = 0.8 / len(methods)
        for j, m in enumerate(methods):
            means = [table["methods"][m][k]["mean"] for k in METRICS]
            lows = [table["methods"][m][k]["mean"] - table["methods"][m][k]["ci95"][0] for k in METRICS]
            highs = [table["methods"][m][k]["ci95"][1] - table["methods"][m][k]["mean"] for k in METRICS]
            ax.bar(np.arange(len(METRICS)) + j * width, means, width, yerr=[lows, highs], capsize=2, label=m,
                   color=plt.cm.tab10(j % 10))
        ax.set_xticks(np.arange(len(METRICS)) + 0.4 - width / 2, METRICS)
        ax.set(ylim=(0, 1), ylabel="mean (95 % bootstrap interval)", title=f"{set_name} questions (n={table['n']})")
    # one legend under the panels: inside a panel it hides the bars it explains
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=len(methods), fontsize=8)
    write_png(plt, fig, path, rect=(0, 0.07 / rows, 1, 1))
