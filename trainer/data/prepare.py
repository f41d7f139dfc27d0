"""`data prepare`: documents → clean, deduplicated, redacted train/held-out text pieces.

Writes train.jsonl, heldout.jsonl, stats.json, stats.png and slmforge.json. Order of work: read → markup to text → drop boilerplate → cut into pieces sized for LM
training → redact PII → drop near-empty, exact and near-duplicate pieces (across all
documents, so nothing in held-out repeats train) → split by document, seeded.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmforge.trainer.data.dedup import deduplicate
from slmforge.trainer.data.ingest import Document, collect_files, read_documents
from slmforge.trainer.data.pii import CLASSES, DEFAULT_CLASSES, redact
from slmforge.trainer.data.report import plot_dataset
from slmforge.trainer.data.textclean import looks_like_text, remove_boilerplate, repeated_lines, to_plain_text
from tqdm import tqdm

from slmforge.errors import UserError
from slmforge.fileio import atomic_dir, atomic_write_json, atomic_write_text
from slmforge.manifest import ArtifactManifest, input_ref


@dataclass(frozen=True)
class PrepareOptions:
    heldout_fraction: float = 0.1
    seed: int = 0
    min_chars: int = 100
    max_chars: int = 2000
    redact: frozenset[str] = DEFAULT_CLASSES  # PII classes to replace (trainer/data/pii.py); empty = keep all
    near_dup_threshold: float = 0.8
    plot: bool = True


@dataclass(frozen=True)
class Piece:
    text: str
    source: str
    doc_id: str

    def record(self) -> dict[str, str]:
        return {"text": self.text, "source": self.source, "doc_id": self.doc_id}


def split_pieces(text: str, max_chars: int) -> list[str]:
    """Paragraphs packed into pieces of at most ``max_chars`` (long paragraphs cut at lines, then words)."""
    paragraphs: list[str] = []
    for para in (p.strip("\n") for p in text.split("\n\n")):
        if not para.strip():
            continue
        if len(para) <= max_chars:
            paragraphs.append(para)
        else:
            lines = [segment for line in para.split("\n") for segment in _split_line(line, max_chars)]
            paragraphs.extend(_pack(lines, max_chars, "\n"))
    return _pack(paragraphs, max_chars, "\n\n")


def _pack(parts: list[str], max_chars: int, sep: str) -> list[str]:
    """Join consecutive parts with ``sep`` while the result stays within ``max_chars``."""
    packed: list[str] = []
    current = ""
    for part in parts:
        if current and len(current) + len(sep) + len(part) > max_chars:
            packed.append(current)
            current = ""
        current = f"{current}{sep}{part}" if current else part
    if current:
        packed.append(current)
    return packed


def _split_line(line: str, max_chars: int) -> list[str]:
    """A line longer than ``max_chars`` cut at spaces where possible, else hard."""
    segments = []
    while len(line) > max_chars:
        cut = line.rfind(" ", 0, max_chars)
        cut = cut if cut > max_chars // 2 else max_chars
        segments.append(line[:cut].rstrip())
        line = line[cut:].lstrip()
    segments.append(line)
    return segments


def split_by_document(doc_ids: list[str], fraction: float, seed: int) -> set[str]:
    """The held-out document ids: a seeded shuffle of the sorted ids, at least one, never all."""
    ids = sorted(set(doc_ids))
    if fraction <= 0 or len(ids) < 2:
        return set()
    random.Random(seed).shuffle(ids)
    count = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    return set(ids[:count])


def _clean_documents(docs: list[Document]) -> tuple[list[str], int]:
    texts = [to_plain_text(d.text, d.kind) for d in tqdm(docs, desc="clean", unit="doc", leave=False)]
    repeated = repeated_lines(texts)
    cleaned, dropped = [], 0
    for text in texts:
        text, n = remove_boilerplate(text, repeated)
        cleaned.append(text)
        dropped += n
    return cleaned, dropped


def build_pieces(docs: list[Document], opts: PrepareOptions) -> tuple[list[Piece], dict[str, Any]]:
    """Clean, cut, redact and deduplicate; return kept pieces (input order) and their counts."""
    texts, boilerplate_lines = _clean_documents(docs)
    pii: Counter[str] = Counter()
    candidates: list[Piece] = []
    too_short = 0
    total = 0
    for doc, text in zip(docs, tqdm(texts, desc="cut+redact", unit="doc", leave=False)):
        for raw in split_pieces(text, opts.max_chars):
            total += 1
            if opts.redact:
                raw, found = redact(raw, opts.redact)
                pii.update(found)
            if not looks_like_text(raw, opts.min_chars):
                too_short += 1
                continue
            candidates.append(Piece(raw, doc.source, doc.doc_id))
    dedup = deduplicate([p.text for p in candidates], threshold=opts.near_dup_threshold, seed=opts.seed + 1)
    kept = [candidates[i] for i in dedup.keep]
    counts = {
        "pieces_total": total,
        "dropped_near_empty": too_short,
        "boilerplate_lines_removed": boilerplate_lines,
        "exact_duplicates": dedup.exact,
        "near_duplicates": dedup.near,
        "pii": {c.upper(): pii.get(c.upper(), 0) for c in CLASSES if c in opts.redact},
        "pieces_kept": len(kept),
    }
    return kept, counts


def _split(pieces: list[Piece], opts: PrepareOptions) -> tuple[list[Piece], list[Piece], str]:
    doc_ids = [p.doc_id for p in pieces]
    held_ids = split_by_document(doc_ids, opts.heldout_fraction, opts.seed)
    if held_ids or opts.heldout_fraction <= 0:
        return ([p for p in pieces if p.doc_id not in held_ids], [p for p in pieces if p.doc_id in held_ids],
                "by_document")
    # a single document cannot be split by document: hold out its last pieces instead
    count = min(len(pieces) - 1, math.ceil(opts.heldout_fraction * len(pieces)))
    if count <= 0:
        return pieces, [], "none (a single piece)"
    return pieces[:-count], pieces[-count:], "by_piece (only one document)"


def _jsonl(pieces: list[Piece]) -> str:
    return "".join(json.dumps(p.record(), ensure_ascii=False) + "\n" for p in pieces)


def prepare(paths: list[str | Path], out: str | Path, opts: PrepareOptions) -> dict[str, Any]:
    """Run the whole preparation and write the dataset directory atomically; return stats."""
    start = time.perf_counter()
    if Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"--out {out}: a file is in the way; the dataset is a folder, pick another path")
    files, skipped = collect_files(paths)
    docs = read_documents(files)
    pieces, counts = build_pieces(docs, opts)
    if not pieces:
        raise UserError(f"no text left after cleaning ({counts['pieces_total']} pieces, "
                        f"{counts['dropped_near_empty']} shorter than --min-chars {opts.min_chars}); "
                        "give more text or lower --min-chars")
    train, held, split_mode = _split(pieces, opts)
    stats: dict[str, Any] = {
        "files_read": len(files),
        "files_skipped": skipped,
        "documents": len(docs),
        "documents_by_format": dict(Counter(d.kind for d in docs)),
        **counts,
        "split": split_mode,
        "train_documents": len({p.doc_id for p in train}),
        "heldout_documents": len({p.doc_id for p in held}),
        "train_pieces": len(train),
        "heldout_pieces": len(held),
        "train_chars": sum(len(p.text) for p in train),
        "heldout_chars": sum(len(p.text) for p in held),
        "heldout_doc_ids": sorted({p.doc_id for p in held}),
    }
    params = {"heldout_fraction": opts.heldout_fraction, "min_chars": opts.min_chars, "max_chars": opts.max_chars,
              "redact": sorted(opts.redact), "near_dup_threshold": opts.near_dup_threshold}
    inputs = [input_ref("documents", p) for p in paths]
    with atomic_dir(out) as tmp:
        atomic_write_text(tmp / "train.jsonl", _jsonl(train))
        if held:
            atomic_write_text(tmp / "heldout.jsonl", _jsonl(held))
        atomic_write_json(tmp / "stats.json", stats)
        if opts.plot:
            plot_dataset([len(p.text) for p in train], [len(p.text) for p in held], stats, tmp / "stats.png")
        ArtifactManifest(kind="dataset", stage="prepare", inputs=inputs, params=params, seed=opts.seed,
                         metrics={k: v for k, v in stats.items() if k not in ("files_skipped", "heldout_doc_ids")},
                         summary=f"{len(train)} train / {len(held)} held-out",
                         duration_s=round(time.perf_counter() - start, 3)).write(tmp)
    return stats
