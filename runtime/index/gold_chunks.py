"""Which chunk of the index answers a question: the gold chunk of a QA record, and whole-document splits.

A QA record names its document and section (``slmforge/qa_records.py``); a section may span
several chunks, so the gold chunk is the one of that section holding most of the answer's
words. The retriever's training pairs and its benchmark both need it, chunked exactly as
the index chunks (same chunker, same token counter, same sizes), so a trained embedder learns
the passages it will search.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from slmforge.runtime.index.chunking import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_OVERLAP,
    TokenCounter,
    chunk_text,
    decode_document,
)
from slmforge.runtime.index.store import RagIndex
from slmforge.runtime.index.sync import scan

from slmforge.errors import UserError
from slmforge.qa_records import QARecord, in_section, same_document

_WORD = re.compile(r"[a-z0-9_]{3,}")
DEPTH = 10  # ranks looked at: nDCG@10, MRR@10
METRICS = ("hit@1", "hit@4", "mrr", "ndcg@10")


@dataclass(frozen=True)
class CorpusChunk:
    """One chunk as the index stores it: its document, heading path, text and offset."""

    source: str
    heading: str
    text: str
    char_start: int
    embedding_text: str

    @property
    def key(self) -> tuple[str, int]:
        """Identity across indexes built from the same documents with the same chunking."""
        return self.source, self.char_start


def corpus_chunks(docs: Sequence[Path], count_tokens: TokenCounter, max_tokens: int = DEFAULT_MAX_TOKENS,
                  overlap: int = DEFAULT_OVERLAP) -> list[CorpusChunk]:
    """Every chunk of the documents under ``docs``, named and cut as ``sync_documents`` names and cuts them."""
    out = []
    for path, name in scan([Path(d) for d in docs]):
        text, _ = decode_document(path.read_bytes(), name)
        out += [CorpusChunk(name, c.heading_path, c.text, c.char_start, c.embedding_text())
                for c in chunk_text(text, name, count_tokens, max_tokens=max_tokens, overlap=overlap)]
    if not out:
        raise UserError(f"no text documents under {', '.join(map(str, docs))} (looked for .rst .md .markdown .txt)")
    return out


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def gold_chunk(record: QARecord, chunks: Iterable[CorpusChunk]) -> CorpusChunk | None:
    """The chunk of the record's document (and section, when named) sharing most words with its answer."""
    if not record.source:
        return None
    candidates = [c for c in chunks if same_document(record.source, c.source)
                  and (record.section is None or in_section(c.heading, record.section))]
    if not candidates:
        return None
    answer = _words(record.answer)
    return max(candidates, key=lambda c: len(answer & _words(c.text)))  # first wins a tie: the section's start


def gold_chunks(records: Sequence[QARecord], chunks: Sequence[CorpusChunk], where: str) -> list[CorpusChunk]:
    """The gold chunk of every record; a record whose document or section is not among the chunks is one error."""
    by_doc: dict[str, list[CorpusChunk]] = {}
    for c in chunks:
        by_doc.setdefault(c.source, []).append(c)
    out = []
    for i, rec in enumerate(records, 1):
        docs = [name for name in by_doc if rec.source and same_document(rec.source, name)]
        found = gold_chunk(rec, (c for name in docs for c in by_doc[name]))
        if found is None:
            what = ("names no source document" if not rec.source else
                    f"names document '{rec.source}', which is not among the documents" if not docs else
                    f"names section '{rec.section}', which no chunk of '{rec.source}' lies in")
            raise UserError(f"{where}: record {i} ({rec.question[:60]!r}) {what}; pass the documents the QA pairs "
                            "were made from with --docs")
        out.append(found)
    return out


def split_documents(sources: Iterable[str], fraction: float, seed: int = 0,
                    always: Iterable[str] = ()) -> set[str]:
    """Documents held out, chosen by a seeded hash of their names per top folder (faq, library, …) so
    every kind of page is represented; ``always`` names documents held out in any case."""
    names = sorted(set(sources))
    held = {n for n in names if any(same_document(a, n) for a in always)}
    groups: dict[str, list[str]] = {}
    for name in names:
        parts = Path(name).parts
        groups.setdefault(parts[-2] if len(parts) > 1 else "", []).append(name)
    for members in groups.values():
        ranked = sorted(members, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
        want = round(fraction * len(members))
        for name in ranked:
            if sum(m in held for m in members) >= want:
                break
            held.add(name)
    return held


def index_chunks(index: RagIndex) -> dict[int, CorpusChunk]:
    """Every chunk of an index by chunk_id, as ``corpus_chunks`` names them (so gold keys match)."""
    rows = index.conn.execute("SELECT chunk_id, source, heading, text, char_start FROM chunks ORDER BY chunk_id")
    return {cid: CorpusChunk(src, head, text, start, f"{head}\n\n{text}") for cid, src, head, text, start in rows}


def ranked_keys(index: RagIndex, chunks: dict[int, CorpusChunk], vectors: np.ndarray, questions: list[str],
                weights: dict[str, float]) -> list[list[tuple[str, int]]]:
    """The keys of the ``DEPTH`` chunks the index's hybrid search returns for each question, best first."""
    return [[chunks[h.chunk_id].key for h in index.search(v, q, k=DEPTH, **weights)] for v, q in zip(vectors, questions)]


def question_scores(index: RagIndex, chunks: dict[int, CorpusChunk], vectors: np.ndarray, questions: list[str],
                    gold: list[tuple[str, int]], weights: dict[str, float]) -> list[dict[str, float]]:
    """hit@1/hit@4/MRR/nDCG@10 of each question whose gold chunk key is ``gold[i]``, under the index's hybrid
    search with ``weights``."""
    lists = ranked_keys(index, chunks, vectors, questions, weights)
    return [rank_scores(keys.index(g) + 1 if g in keys else None) for keys, g in zip(lists, gold)]


def rank_scores(rank: int | None) -> dict[str, float]:
    """hit@1, hit@4, reciprocal rank and nDCG@10 of one question with one relevant chunk at ``rank`` (1-based)."""
    if rank is None or rank > DEPTH:
        return dict.fromkeys(METRICS, 0.0)
    return {"hit@1": float(rank <= 1), "hit@4": float(rank <= 4), "mrr": 1.0 / rank,
            "ndcg@10": 1.0 / math.log2(rank + 1)}
