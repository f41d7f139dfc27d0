"""Fine-tune the device embedder on the user's own (question, chunk) pairs: ``slmforge train retriever``.

It lives beside the embedder's export rather than in trainer/ because its positives are the
index's own chunks (the runtime's chunker, cut with the embedder's tokenizer) and trainer/ may
not import the runtime. Training is sentence-transformers' MultipleNegativesRankingLoss: every
other chunk of a batch is a negative (duplicates kept out of a batch), plus one hard negative
per question mined from all chunks of the documents with the untrained encoder. Whole
documents are held out (every document a held-out QA file names, plus a seeded share of the
rest per folder) and written to ``heldout.jsonl``, so the benchmark never asks about a
document the embedder was trained on. A second seeded share of whole documents is kept for
validation: after training, the index's hybrid search with the tuned embedder is run on their
questions for each BM25 fusion weight of a small grid, and the weight with the best hit@4 is
written to ``slmforge.json``; the export carries it to the bundle's index.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slmforge.export.embedder import embedded_embedder
from slmforge.runtime.index.embedder import TOKENIZER_FILE, token_counter
from slmforge.runtime.index.gold_chunks import (
    METRICS,
    CorpusChunk,
    corpus_chunks,
    gold_chunks,
    index_chunks,
    question_scores,
    split_documents,
)
from slmforge.runtime.index.store import DEFAULTS, RagIndex

from slmforge.errors import UserError
from slmforge.fileio import atomic_dir, atomic_write_text
from slmforge.intervals import difference_text, paired_bootstrap
from slmforge.manifest import ArtifactManifest, input_ref
from slmforge.qa_records import QARecord

HELDOUT_FILE = "heldout.jsonl"
PAIRS_FILE = "pairs.jsonl"
VALIDATION_FILE = "validation.jsonl"
# BM25 fusion weights tried on the validation questions: 0 is the embedder alone, the index default is included.
FUSION_GRID: tuple[float, ...] = tuple(sorted({0.0, 0.25, 0.5, float(DEFAULTS["bm25_weight"])}))


@dataclass(frozen=True)
class RetrieverOptions:
    """Fixed before looking at any benchmark figure (sentence-transformers' usual MNRL settings)."""

    epochs: int = 1  # ~500 pairs: one epoch is 16 steps, ~5 min on 2 cores (measured)
    batch_size: int = 32
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    hard_negatives: int = 1  # per question, mined from ranks 1..mine_depth of the untrained encoder
    mine_depth: int = 20
    mine_margin: float = 0.05  # a negative must score below 0.95 × the positive's score: no near-duplicates
    heldout_fraction: float = 0.25
    validation_fraction: float = 0.2  # of the documents left after the held-out ones, per folder
    seed: int = 0


def training_pairs(records: list[QARecord], chunks: list[CorpusChunk], where: str) -> list[tuple[QARecord, CorpusChunk]]:
    """(question, gold chunk) for every record; one clear error for a record whose chunk is missing."""
    if not records:
        raise UserError(f"{where}: no question/answer pairs; pass QA JSONL from 'slmforge data qa'")
    return list(zip(records, gold_chunks(records, chunks, where)))


def _mine(model: Any, pairs: list[tuple[str, str]], corpus: list[str], opts: RetrieverOptions):
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    data = Dataset.from_dict({"anchor": [q for q, _ in pairs], "positive": [p for _, p in pairs]})
    if opts.hard_negatives <= 0:
        return data
    return mine_hard_negatives(data, model, corpus=corpus, range_max=opts.mine_depth,
                               relative_margin=opts.mine_margin, num_negatives=opts.hard_negatives,
                               sampling_strategy="top", batch_size=32, output_format="triplet", verbose=True)


def train_retriever(
    qa_files: list[Path],
    docs: list[Path],
    out: Path,
    heldout_files: list[Path] | None = None,
    base: Path | None = None,
    opts: RetrieverOptions | None = None,
) -> ArtifactManifest:
    """Train on the pairs of the training documents and write the checkpoint (with ``slmforge.json``) at ``out``."""
    from slmforge.qa_records import read_qa

    opts = opts or RetrieverOptions()
    started = time.perf_counter()
    base = Path(base) if base is not None else embedded_embedder()
    if not (base / "config.json").is_file() or not (base / TOKENIZER_FILE).is_file():
        raise UserError(f"{base}: not an HF sentence-transformer folder (needs config.json and {TOKENIZER_FILE})")
    for path in [*qa_files, *(heldout_files or []), *docs]:
        if not Path(path).exists():
            raise UserError(f"{path}: not found")
    records = [r for f in qa_files for r in read_qa(f)]
    # an empty held-out file (data qa --heldout-fraction 0) holds out nothing; an empty training file is an error
    kept_out = [r for f in heldout_files or [] if Path(f).read_text().strip() for r in read_qa(f)]
    chunks = corpus_chunks(docs, token_counter(base / TOKENIZER_FILE))
    where = ", ".join(map(str, qa_files))
    pairs = training_pairs(records, chunks, where)
    gold_chunks(kept_out, chunks, ", ".join(map(str, heldout_files or [])))  # a held-out record must be askable too
    held = split_documents({c.source for c in chunks}, opts.heldout_fraction, opts.seed,
                           always={r.source for r in kept_out if r.source})
    # another seed, so validation documents are not simply the next ones in the held-out ranking
    validation_docs = split_documents({c.source for c in chunks} - held, opts.validation_fraction, opts.seed + 1)
    train = [(r, c) for r, c in pairs if c.source not in held | validation_docs]
    validation = [(r, c) for r, c in pairs if c.source in validation_docs]
    heldout = [r for r, c in pairs if c.source in held] + kept_out
    if not train:
        raise UserError(f"{where}: every pair lies in a held-out or validation document; pass QA pairs of more "
                        f"documents or a smaller --heldout-fraction ({opts.heldout_fraction}) or "
                        f"--validation-fraction ({opts.validation_fraction})")
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(opts.seed)
    model = SentenceTransformer(str(base), device="cpu")
    # Negatives come only from the training documents: a held-out or validation chunk must not shape the embedder.
    corpus = [c.embedding_text for c in chunks if c.source not in held | validation_docs]
    data = _mine(model, [(r.question, c.embedding_text) for r, c in train], corpus, opts)
    with atomic_dir(Path(out)) as tmp:
        history = _fit(model, data, tmp, opts)
        fusion = choose_fusion(model, docs, validation, token_counter(base / TOKENIZER_FILE), stock=base)
        model.save(str(tmp))
        for leftover in ("checkpoints", "runs", "README.md"):
            target = tmp / leftover
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        atomic_write_text(tmp / HELDOUT_FILE, "".join(json.dumps(r.record()) + "\n" for r in heldout))
        atomic_write_text(tmp / PAIRS_FILE, "".join(json.dumps(row) + "\n" for row in data.to_list()))
        atomic_write_text(tmp / VALIDATION_FILE, "".join(json.dumps(r.record()) + "\n" for r, _ in validation))
        manifest = ArtifactManifest(
            kind="checkpoint", stage="retriever", seed=opts.seed,
            inputs=[input_ref("base", base), *(input_ref("data", f) for f in qa_files),
                    *(input_ref("heldout", f) for f in heldout_files or []), *(input_ref("docs", d) for d in docs)],
            params={**asdict(opts), "loss": "MultipleNegativesRankingLoss", "batch_sampler": "no_duplicates",
                    "heldout_documents": sorted(held), "validation_documents": sorted(validation_docs),
                    "fusion_grid": list(FUSION_GRID)},
            metrics={"pairs": len(pairs), "train_pairs": len(train), "training_rows": len(data),
                     "hard_negatives": "negative" in data.column_names,
                     "heldout_pairs": len(heldout), "train_documents": len({c.source for _, c in train}),
                     "heldout_documents": len(held), "chunks": len(chunks), **history, **fusion},
            duration_s=round(time.perf_counter() - started, 1),
            summary=f"embedder tuned on {len(train)} pairs of {len({c.source for _, c in train})} documents; "
                    f"{len(held)} documents held out ({len(heldout)} questions); "
                    + (f"BM25 weight {fusion['bm25_weight']} chosen on {len(validation)} validation questions"
                       + _gain_phrase(fusion) if fusion else "no validation documents: the index's default BM25 weight"),
        )
        manifest.write(tmp)
    return manifest


def _fit(model: Any, data: Any, scratch: Path, opts: RetrieverOptions) -> dict[str, Any]:
    """MNRL over the triplets; returns the training loss and step count."""
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers

    args = SentenceTransformerTrainingArguments(
        output_dir=str(scratch / "checkpoints"), num_train_epochs=opts.epochs,
        per_device_train_batch_size=opts.batch_size, learning_rate=opts.lr, warmup_ratio=opts.warmup_ratio,
        batch_sampler=BatchSamplers.NO_DUPLICATES, seed=opts.seed, save_strategy="no", report_to="none",
        logging_steps=5, use_cpu=True, dataloader_drop_last=False,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data,
                                         loss=MultipleNegativesRankingLoss(model))
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"train_loss": round(float(result.training_loss), 4), "steps": int(result.global_step),
            "first_logged_loss": round(float(losses[0]), 4) if losses else None,
            "last_logged_loss": round(float(losses[-1]), 4) if losses else None,
            "train_runtime_s": round(float(result.metrics.get("train_runtime", 0.0)), 1)}


class _TorchEmbedder:
    """The tuned encoder in the shape ``sync_documents`` embeds with (before any ONNX export)."""

    def __init__(self, model: Any, count_tokens: Any) -> None:
        self.model, self.count_tokens = model, count_tokens
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(dimension())

    def embed(self, texts: list[str]) -> Any:
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False).astype(np.float32)


def choose_fusion(model: Any, docs: list[Path], validation: list[tuple[QARecord, CorpusChunk]],
                  count_tokens: Any, stock: Path | None = None) -> dict[str, Any]:
    """The BM25 fusion weight of ``FUSION_GRID`` whose hybrid search, with the tuned encoder over an index
    of all documents built as ``bundle`` builds it, gives the validation questions the best hit@4 (ties:
    nDCG@10, then the index default). With ``stock`` (the untuned encoder's folder), the same questions are
    also searched as a stock bundle searches them (default weight), and the tuned-minus-stock difference is
    reported: whether tuning pays on documents it never saw, before anything is bundled. The tuned side's weight
    was picked on these same questions (best of four), so the difference leans its way a little. ``{}`` when
    there are no validation questions."""
    if not validation:
        return {}
    questions = [r.question for r, _ in validation]
    gold = [c.key for _, c in validation]
    with _validation_index(_TorchEmbedder(model, count_tokens), docs) as (index, embed):
        scores = _scores_by_weight(index, embed(questions), questions, gold, FUSION_GRID)
    fusion = _choose_weight(scores)
    tuned = scores[fusion["bm25_weight"]]
    if stock is None:
        return fusion
    from sentence_transformers import SentenceTransformer

    default = float(DEFAULTS["bm25_weight"])
    with _validation_index(_TorchEmbedder(SentenceTransformer(str(stock), device="cpu"), count_tokens), docs) as (
            index, embed):
        untuned = question_scores(index, index_chunks(index), embed(questions), questions, gold, {"bm25_weight": default})
    fusion["validation"]["stock_as_bundled"] = {"bm25_weight": default, **_means(untuned)}
    fusion["validation"]["tuned_minus_stock"] = {
        m: paired_bootstrap([s[m] for s in tuned], [s[m] for s in untuned]) for m in METRICS}
    return fusion


@contextlib.contextmanager
def _validation_index(embedder: _TorchEmbedder, docs: list[Path]) -> Iterator[tuple[RagIndex, Any]]:
    """An index of all ``docs`` built with ``embedder`` as ``bundle`` builds one, and the embedder's question
    encoder, in a temp folder that goes away afterwards."""
    from slmforge.runtime.index.sync import sync_documents

    with tempfile.TemporaryDirectory(prefix="retriever-validation-") as scratch, \
            RagIndex.create(Path(scratch) / "rag.db", dim=embedder.dim, embedder="validation") as index:
        sync_documents(index, embedder, list(docs), progress=False)  # type: ignore[arg-type]
        yield index, embedder.embed


def _gain_phrase(fusion: dict[str, Any]) -> str:
    gain = fusion["validation"].get("tuned_minus_stock")
    return f" (hit@4 as bundled vs stock there {difference_text(gain['hit@4'])})" if gain else ""


def _means(scores: list[dict[str, float]]) -> dict[str, float]:
    return {m: round(sum(s[m] for s in scores) / len(scores), 4) for m in METRICS}


def fusion_by_weight(index: RagIndex, vectors: Any, questions: list[str], gold: list[tuple[str, int]],
                     grid: tuple[float, ...] = FUSION_GRID) -> dict[str, Any]:
    """hit@1/hit@4/MRR/nDCG@10 of the index's hybrid search for each BM25 weight, and the chosen weight."""
    return _choose_weight(_scores_by_weight(index, vectors, questions, gold, grid))


def _scores_by_weight(index: RagIndex, vectors: Any, questions: list[str], gold: list[tuple[str, int]],
                      grid: tuple[float, ...]) -> dict[float, list[dict[str, float]]]:
    """Each question's scores under the hybrid search at every BM25 weight of ``grid``."""
    chunks = index_chunks(index)
    return {w: question_scores(index, chunks, vectors, questions, gold, {"bm25_weight": w}) for w in grid}


def _choose_weight(scores: dict[float, list[dict[str, float]]]) -> dict[str, Any]:
    """The weight whose questions score the best hit@4 (ties: nDCG@10, then the index default), and the table."""
    table = {str(w): _means(s) for w, s in scores.items()}
    default = float(DEFAULTS["bm25_weight"])
    best = max(scores, key=lambda w: (table[str(w)]["hit@4"], table[str(w)]["ndcg@10"], w == default))
    questions = len(next(iter(scores.values())))
    return {"bm25_weight": best, "validation": {"questions": questions, "selected_by": "hit@4, then nDCG@10",
                                                "by_bm25_weight": table}}
