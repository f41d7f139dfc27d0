"""Retrieval bench: search latency and recall@10 of each vector path, plus FAQ hit@k on a real bundle.

    python -m slmforge.bench.dev.retrieval BUNDLE [--sizes 1000,10000,100000] [--out DIR]

Vectors are real: the bundle's own chunk embeddings (its embedder over the shipped documents).
Indexes larger than the bundle are filled by mixing real vectors: each synthetic vector is
normalize(a·v_i + (1−a)·v_j + σ·noise) with v_i, v_j random real chunk vectors, a ~ U(0.5, 1)
and σ = 0.05, so the cloud keeps the real vectors' shape instead of being isotropic noise.
Queries are the FAQ questions embedded with the bundle's embedder. Every method is timed in
the same run, so ratios against numpy brute force are what to read on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from slmforge.runtime.bundle.reader import open_bundle
from slmforge.runtime.index.chunking import Chunk
from slmforge.runtime.index.embedder import Embedder
from slmforge.runtime.index.store import DocumentRecord, RagIndex
from tqdm import tqdm

from slmforge.fileio import atomic_write_json
from slmforge.output import format_table

RECALL_AT = 10
SYNTH_NOISE = 0.05
DOC_SIZE = 1000  # synthetic chunks per document (= per transaction) when filling large indexes


def real_vectors(index: RagIndex) -> np.ndarray:
    rows = index.conn.execute("SELECT embedding FROM chunks ORDER BY chunk_id").fetchall()
    return np.stack([np.frombuffer(r[0], dtype=np.float32) for r in rows])


def synthetic_vectors(real: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` vectors: all real ones first, then mixtures of real pairs plus a little noise (see module doc)."""
    if n <= len(real):
        return real[:n].copy()
    rng = np.random.default_rng(seed)
    extra = n - len(real)
    i, j = rng.integers(0, len(real), extra), rng.integers(0, len(real), extra)
    a = rng.uniform(0.5, 1.0, (extra, 1)).astype(np.float32)
    mixed = a * real[i] + (1 - a) * real[j] + SYNTH_NOISE * rng.standard_normal((extra, real.shape[1])).astype(np.float32)
    mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
    return np.concatenate([real, mixed.astype(np.float32)])


def build_index(path: Path, vectors: np.ndarray, embedder_name: str, **settings: Any) -> RagIndex:
    idx = RagIndex.create(path, dim=vectors.shape[1], embedder=embedder_name, **settings)
    docs = range(0, len(vectors), DOC_SIZE)
    for start in tqdm(docs, desc=f"fill {len(vectors)}", unit="doc", file=sys.stderr, leave=False):
        block = vectors[start:start + DOC_SIZE]
        chunks = [Chunk(f"synthetic chunk {start + i}", f"synthetic/{start // DOC_SIZE}", ("synthetic",), 0, 0, 3)
                  for i in range(len(block))]
        idx.add_documents([DocumentRecord(f"synthetic/{start // DOC_SIZE}", str(start), 0, chunks, block)])
    return idx


def latency(fn: Callable[[np.ndarray], list[int]], queries: np.ndarray) -> tuple[list[list[int]], list[float]]:
    results, times = [], []
    for q in queries:
        start = time.perf_counter()
        results.append(fn(q))
        times.append((time.perf_counter() - start) * 1000)
    return results, times


def recall(got: list[list[int]], exact: list[list[int]]) -> float:
    return float(np.mean([len(set(g[:RECALL_AT]) & set(e)) / len(e) for g, e in zip(got, exact)]))


def bench_size(n: int, real: np.ndarray, queries: np.ndarray, workdir: Path, candidates: list[int]) -> list[dict]:
    vectors = synthetic_vectors(real, n)
    idx = build_index(workdir / f"bench-{n}.db", vectors, "bench")
    ids = np.array([r[0] for r in idx.conn.execute("SELECT chunk_id FROM chunks ORDER BY chunk_id")])
    matrix = vectors  # numpy brute force holds the float matrix in memory

    def numpy_top(q: np.ndarray) -> list[int]:
        scores = matrix @ q
        top = np.argpartition(-scores, RECALL_AT)[:RECALL_AT]
        return ids[top[np.argsort(-scores[top])]].tolist()

    exact = [ids[np.argsort(-(matrix @ q))[:RECALL_AT]].tolist() for q in queries]
    methods: dict[str, Callable[[np.ndarray], list[int]]] = {"numpy brute force": numpy_top}
    methods["sqlite-vec float"] = lambda q: [c for c, _ in idx.vector_search(q, RECALL_AT, mode="float")]
    for cand in candidates:
        for mode in ("bitscan+rescore", "bit+rescore", "int8+rescore"):
            def run(q: np.ndarray, mode: str = mode, cand: int = cand) -> list[int]:
                idx.settings["rescore_candidates"] = cand
                return [c for c, _ in idx.vector_search(q, RECALL_AT, mode=mode)]
            label = "numpy bit scan+rescore" if mode == "bitscan+rescore" else f"sqlite-vec {mode}"
            methods[f"{label} ({cand})"] = run
    rows = []
    for name, fn in methods.items():
        fn(queries[0])  # warm the page cache
        got, times = latency(fn, queries)
        rows.append({"chunks": n, "method": name, "p50_ms": round(float(np.percentile(times, 50)), 3),
                     "p95_ms": round(float(np.percentile(times, 95)), 3), "recall@10": round(recall(got, exact), 4)})
    base = next(r["p50_ms"] for r in rows if r["method"] == "numpy brute force")
    for r in rows:
        r["p50_vs_numpy"] = round(r["p50_ms"] / base, 2) if base > 0 else None
    idx.close()
    return rows


def faq_hits(bundle_path: Path, ks: tuple[int, ...] = (1, 4, 10)) -> dict[str, Any]:
    """hit@k over the bundle's FAQ questions: hybrid (default weights), vector only, BM25 only."""
    from slmforge.bench.quality import faq_questions

    bundle = open_bundle(bundle_path)
    embedder = Embedder(bundle.embedder_dir)
    with RagIndex(bundle.rag_db, readonly=True) as idx:
        questions = faq_questions(idx)
        vecs = embedder.embed([q.question for q in questions])
        out: dict[str, Any] = {"questions": len(questions)}
        for label, weights in (("hybrid", {}), ("vector", {"bm25_weight": 0.0}), ("bm25", {"vec_weight": 0.0})):
            found = [idx.search(v, q.question, k=max(ks), **weights) for q, v in zip(questions, vecs)]
            for k in ks:
                hit = [any(h.source == q.source and h.heading == q.heading for h in f[:k]) for q, f in zip(questions, found)]
                out[f"{label} hit@{k}"] = round(float(np.mean(hit)), 4) if hit else None
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        pts = [r for r in rows if r["method"] == method]
        style = {"color": plt.cm.tab20(i % 20), "marker": "os^D"[i % 4]}  # 11 methods: tab10 would repeat a colour
        ax1.plot([p["chunks"] for p in pts], [p["p50_ms"] for p in pts], label=method, **style)
        ax2.scatter([p["p50_vs_numpy"] for p in pts], [p["recall@10"] for p in pts], label=method, **style)
    ax1.set(xscale="log", yscale="log", xlabel="chunks", ylabel="p50 search latency (ms)",
            title="Vector search latency by index size")
    ax2.set(xscale="log", xlabel="p50 latency / numpy brute force (same run)", ylabel="recall@10 vs exact",
            title="Speed vs recall (all sizes)")
    ax2.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax2.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--candidates", default="64,128,256", help="first-pass candidates re-scored exactly")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("bench/results/retrieval"))
    ap.add_argument("--vectors-db", type=Path, default=None,
                    help="take the real vectors and questions from this rag.db (same embedder) instead of the bundle's")
    ap.add_argument("--no-faq", action="store_true", help="skip FAQ hit@k")
    ap.add_argument("--faq-only", action="store_true", help="only FAQ hit@k (merged into an existing retrieval.json)")
    args = ap.parse_args(argv)
    from slmforge.bench.quality import faq_questions

    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "retrieval.json"
    report: dict[str, Any] = json.loads(report_path.read_text()) if args.faq_only and report_path.is_file() else {}
    if not args.faq_only:
        bundle = open_bundle(args.bundle)
        embedder = Embedder(bundle.embedder_dir)
        with RagIndex(args.vectors_db or bundle.rag_db, readonly=True) as idx:
            real = real_vectors(idx)
            questions = [q.question for q in faq_questions(idx)][: args.queries]
        queries = embedder.embed(questions)
        rows: list[dict] = []
        with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as tmp:
            for n in [int(s) for s in args.sizes.split(",")]:
                rows += bench_size(n, real, queries, Path(tmp), [int(c) for c in args.candidates.split(",")])
                print(format_table(list(rows[-1]), [list(r.values()) for r in rows if r["chunks"] == n]), flush=True)
        report.update({
            "bundle": str(args.bundle), "vectors_from": str(args.vectors_db or bundle.rag_db), "real_chunks": len(real),
            "queries": len(queries),
            "synthetic": f"normalize(a*v_i + (1-a)*v_j + {SYNTH_NOISE}*noise), a~U(0.5,1), real chunk vectors v",
            "rows": rows,
        })
        plot(rows, args.out / "retrieval.png")
    if not args.no_faq:
        report["faq"] = faq_hits(args.bundle)
        print(json.dumps(report["faq"], indent=2))
    atomic_write_json(report_path, report)
    print(f"wrote {report_path}" + ("" if args.faq_only else f" and {args.out / 'retrieval.png'}"))


if __name__ == "__main__":
    main()
