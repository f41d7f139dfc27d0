"""Does a cross-encoder reranker pay for itself on device? (issue #17's reranker question)

A cross-encoder reads the question and a chunk together, so it can judge what a bi-encoder's
single vector and BM25's words miss; it also costs one transformer pass per candidate per
question. This bench measures both on the retrieval benchmark's questions (the same hard and
FAQ sets as ``slmforge bench retrieval``, held-out documents only):

1. Train a cross-encoder from the embedded MiniLM (the embedder's own base: same tokenizer, same
   size) on the training pairs of a ``train retriever`` run (its ``pairs.jsonl``: question,
   gold chunk and one mined hard negative, training documents only), with sentence-transformers'
   ``CrossEncoderTrainer`` and binary cross-entropy: the gold chunk 1, the hard negative and one
   random other training chunk 0. Settings fixed before any figure was seen: 1 epoch, batch 16,
   lr 2e-5, warm-up 10 %, seed 0, 256 tokens.
2. Export it as the embedder is exported (ONNX, int8 dynamic weights, ``export/embedder.py``) and
   score with onnxruntime: the device's path, not torch's.
3. For every first-stage embedder, build the index as ``bundle`` does, take the top ``--candidates``
   of its search as bundled (vector + BM25 fusion), rerank them by the cross-encoder, and compare
   hit@1/hit@4/MRR/nDCG@10 with the bundled order (paired bootstrap, as ``eval``).
4. Time it per question beside the question's own embedding (the first stage's model cost), in
   the same run.

    python -m slmforge.bench.dev.reranker --qa QA... --docs DOCS --retriever RETRIEVER_DIR \\
        --embedder stock=EXPORT/embedder [--embedder trained=...] [--candidates 20] [--out bench/results/reranker]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from slmforge.bench.metrics import bootstrap_ci, paired_bootstrap
from slmforge.bench.plots import pyplot, write_png
from slmforge.bench.retrieval_benchmark import build_index, question_sets
from slmforge.export.embedder import _export_onnx, _quantize, embedded_embedder
from slmforge.runtime.index.embedder import Embedder
from slmforge.runtime.index.gold_chunks import METRICS, gold_chunks, index_chunks, rank_scores
from tqdm import tqdm

from slmforge.fileio import atomic_write_json
from slmforge.output import format_table
from slmforge.qa_records import read_qa, same_document

MAX_TOKENS = 256
SEED = 0


def training_rows(pairs_file: Path, seed: int = SEED) -> dict[str, list]:
    """(question, chunk, label) rows: the gold chunk 1; the mined hard negative and a random other gold chunk 0."""
    triplets = [json.loads(line) for line in pairs_file.read_text().splitlines() if line.strip()]
    if not triplets or "negative" not in triplets[0]:
        raise SystemExit(f"error: {pairs_file}: no (anchor, positive, negative) rows; train the retriever with "
                         "--hard-negatives 1 or more")
    rng = random.Random(seed)
    positives = [t["positive"] for t in triplets]
    rows: dict[str, list] = {"question": [], "chunk": [], "label": []}
    for t in triplets:
        other = rng.choice([p for p in positives if p != t["positive"]] or positives)
        for chunk, label in ((t["positive"], 1.0), (t["negative"], 0.0), (other, 0.0)):
            rows["question"].append(t["anchor"])
            rows["chunk"].append(chunk)
            rows["label"].append(label)
    return rows


def train_cross_encoder(pairs_file: Path, scratch: Path) -> tuple[Any, dict[str, Any]]:
    """A MiniLM cross-encoder fitted on the retriever's training pairs; the model and its training figures."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    torch.manual_seed(SEED)
    model = CrossEncoder(str(embedded_embedder()), num_labels=1, max_length=MAX_TOKENS, device="cpu")
    data = Dataset.from_dict(training_rows(pairs_file))
    args = CrossEncoderTrainingArguments(
        output_dir=str(scratch / "checkpoints"), num_train_epochs=1, per_device_train_batch_size=16,
        learning_rate=2e-5, warmup_ratio=0.1, seed=SEED, save_strategy="no", report_to="none", logging_steps=10,
        use_cpu=True)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=BinaryCrossEntropyLoss(model))
    result = trainer.train()
    return model, {"rows": len(data), "steps": int(result.global_step), "train_loss": round(result.training_loss, 4),
                   "train_runtime_s": round(float(result.metrics.get("train_runtime", 0.0)), 1)}


class OnnxReranker:
    """The cross-encoder as the device would run it: int8 ONNX through onnxruntime, one batch per question."""

    def __init__(self, model: Any, folder: Path) -> None:
        import onnxruntime as ort

        fp32, int8 = folder / "reranker-fp32.onnx", folder / "reranker.onnx"
        _export_onnx(model.model, fp32, output="logits")
        _quantize(fp32, int8, "int8")
        self.tokenizer = model.tokenizer
        self.session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
        self.size_mb = round(int8.stat().st_size / 1e6, 1)

    def scores(self, question: str, chunks: list[str]) -> np.ndarray:
        enc = self.tokenizer([question] * len(chunks), chunks, truncation="only_second", max_length=MAX_TOKENS,
                             padding=True, return_tensors="np")
        feed = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
        return self.session.run(None, feed)[0].reshape(-1)


def rerank_embedder(name: str, folder: Path, reranker: OnnxReranker, records: list, docs: list[Path],
                    depth: int, scratch: Path) -> dict[str, Any]:
    """Ranks of each question's gold chunk as bundled and after reranking the top ``depth``, with timings."""
    emb = Embedder(folder)
    place = scratch / name
    place.mkdir()
    with build_index(place, emb, docs) as index:
        chunks = index_chunks(index)
        golds = gold_chunks(records, list(chunks.values()), "benchmark questions")
        bundled, reranked, embed_ms, rerank_ms = [], [], [], []
        for rec, gold in tqdm(list(zip(records, golds)), desc=f"rerank ({name})", unit="q", leave=False):
            start = time.perf_counter()
            vector = emb.embed([rec.question])[0]
            embed_ms.append((time.perf_counter() - start) * 1000)
            hits = index.search(vector, rec.question, k=depth)
            keys = [chunks[h.chunk_id].key for h in hits]
            start = time.perf_counter()
            scores = reranker.scores(rec.question, [chunks[h.chunk_id].embedding_text for h in hits])
            rerank_ms.append((time.perf_counter() - start) * 1000)
            order = [keys[i] for i in np.argsort(-scores, kind="stable")]
            bundled.append(keys.index(gold.key) + 1 if gold.key in keys else None)
            reranked.append(order.index(gold.key) + 1 if gold.key in order else None)
    return {"golds": golds, "bundled": bundled, "reranked": reranked,
            "embed_query_ms_median": round(float(np.median(embed_ms)), 2),
            "rerank_ms_median": round(float(np.median(rerank_ms)), 2),
            "rerank_ms_p95": round(float(np.percentile(rerank_ms, 95)), 2)}


def summarize(result: dict[str, Any], sets: dict[str, list[int]]) -> dict[str, Any]:
    """Means with intervals for both orders and reranked − bundled, per question set."""
    out: dict[str, Any] = {}
    for set_name, members in sets.items():
        if not members:
            continue
        table: dict[str, Any] = {"n": len(members)}
        scored = {order: [rank_scores(result[order][i]) for i in members] for order in ("bundled", "reranked")}
        for order, scores in scored.items():
            table[order] = {m: dict(zip(("mean", "low", "high"), (round(v, 4) for v in bootstrap_ci([s[m] for s in scores]))))
                            for m in METRICS}
        table["reranked - bundled"] = {m: paired_bootstrap([s[m] for s in scored["reranked"]],
                                                           [s[m] for s in scored["bundled"]]) for m in METRICS}
        out[set_name] = table
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    """Bundled vs reranked, every metric with its interval, one panel per (embedder, question set)."""
    plt = pyplot()
    panels = [(name, set_name, table) for name, r in report["embedders"].items() for set_name, table in r["summary"].items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
    for ax, (name, set_name, table) in zip(axes[0], panels):
        for j, order in enumerate(("bundled", "reranked")):
            means = [table[order][m]["mean"] for m in METRICS]
            err = [[table[order][m]["mean"] - table[order][m]["low"] for m in METRICS],
                   [table[order][m]["high"] - table[order][m]["mean"] for m in METRICS]]
            ax.bar(np.arange(len(METRICS)) + j * 0.4, means, 0.4, yerr=err, capsize=2, label=order)
        timing = report["embedders"][name]
        ax.set_xticks(np.arange(len(METRICS)) + 0.2, METRICS)
        ax.set(ylim=(0, 1), title=f"{name}, {set_name} (n={table['n']})\nrerank {timing['rerank_ms_median']:.0f} ms "
               f"vs query embedding {timing['embed_query_ms_median']:.0f} ms (median)")
        ax.legend(fontsize=8)
    write_png(plt, fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qa", type=Path, action="append", required=True)
    ap.add_argument("--docs", type=Path, action="append", required=True)
    ap.add_argument("--retriever", type=Path, required=True, help="a `train retriever` output (pairs, held-out documents)")
    ap.add_argument("--embedder", action="append", required=True, help="NAME=DIR of an exported embedder")
    ap.add_argument("--candidates", type=int, default=20, help="top chunks of the bundled search the reranker reorders")
    ap.add_argument("--out", type=Path, default=Path("bench/results/reranker"))
    args = ap.parse_args(argv)
    params = json.loads((args.retriever / "slmforge.json").read_text())["params"]
    heldout_docs = set(params["heldout_documents"])
    records = [r for f in args.qa for r in read_qa(f)]
    held = [bool(r.source and any(same_document(r.source, d) for d in heldout_docs)) for r in records]
    records = [r for r, h in zip(records, held) if h]
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"questions": len(records), "candidates": args.candidates, "max_tokens": MAX_TOKENS,
                              "retriever": str(args.retriever), "embedders": {}}
    with tempfile.TemporaryDirectory(prefix="bench-reranker-") as tmp:
        model, report["training"] = train_cross_encoder(args.retriever / "pairs.jsonl", Path(tmp))
        reranker = OnnxReranker(model, Path(tmp))
        report["reranker_onnx_mb"] = reranker.size_mb
        for spec in args.embedder:
            name, folder = spec.split("=", 1)
            result = rerank_embedder(name, Path(folder), reranker, records, args.docs, args.candidates, Path(tmp))
            sets = question_sets(records, result["golds"], [True] * len(records))
            report["embedders"][name] = {
                "summary": summarize(result, sets),
                **{k: v for k, v in result.items() if k.endswith(("_median", "_p95"))},
                "rows": [{"question": r.question, "source": r.source, "section": r.section, "origin": r.origin,
                          "bundled_rank": b, "reranked_rank": a}
                         for r, b, a in zip(records, result["bundled"], result["reranked"])]}
    rows = [[name, set_name, t["n"], *(f"{t['bundled'][m]['mean']:.3f} → {t['reranked'][m]['mean']:.3f} "
                                       f"[{t['reranked - bundled'][m]['ci95_low']:+.3f}, "
                                       f"{t['reranked - bundled'][m]['ci95_high']:+.3f}]" for m in METRICS),
             r["rerank_ms_median"], r["embed_query_ms_median"]]
            for name, r in report["embedders"].items() for set_name, t in r["summary"].items()]
    print(format_table(["embedder", "set", "n", *METRICS, "rerank ms", "embed ms"], rows))
    atomic_write_json(args.out / "reranker.json", report)
    plot(report, args.out / "reranker.png")
    print(f"wrote {args.out / 'reranker.json'} and {args.out / 'reranker.png'}")


if __name__ == "__main__":
    main()
