"""Text datasets and held-out text: where they are and how they are read, for every stage.

``data prepare`` writes a dataset folder (``train.jsonl``, ``heldout.jsonl``: ``{"text"}`` per
line). CPT, pruning, distillation, SFT's optional text perplexity, export's quality gate and
``bench run`` all measure perplexity on held-out text; they read it here so the same path gives
the same texts (and the same one-line errors) in each of them.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import NamedTuple

from slmforge.datafiles import iter_jsonl
from slmforge.errors import UserError

TRAIN_NAME = "train.jsonl"
HELDOUT_NAME = "heldout.jsonl"
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
HELDOUT_FRACTION = 0.1  # share of a dataset's lines held out when it has no heldout.jsonl
MAKE_DATASET = "'slmforge data prepare DOCS --out DIR'"


def read_texts(path: str | Path, purpose: str = "measure perplexity on") -> list[str]:
    """The non-empty ``text`` of every line of a ``{"text"}`` JSONL file; no text at all is an error."""
    p = Path(path)
    texts: list[str] = []
    records = 0
    for lineno, obj in iter_jsonl(p):
        records += 1
        text = obj.get("text")
        if not isinstance(text, str):
            raise UserError(f"{p}:{lineno}: no \"text\" string field; perplexity needs {{\"text\": ...}} lines")
        if text.strip():
            texts.append(text)
    if not records:
        raise UserError(f"{p}: no records (the file is empty); nothing to {purpose}")
    if not texts:
        raise UserError(f"{p}: no non-empty \"text\" lines; nothing to {purpose}")
    return texts


def load_heldout_texts(path: str | Path) -> list[str]:
    """Held-out texts from a dataset dir (its heldout.jsonl), a ``{"text"}`` JSONL file, a text file,
    or a folder of text files (``TEXT_SUFFIXES``, in sorted order)."""
    p = Path(path)
    if p.is_dir() and (p / HELDOUT_NAME).is_file():
        return read_texts(p / HELDOUT_NAME)
    if p.is_file() and p.suffix == ".jsonl":
        return read_texts(p)
    if p.is_file():
        texts = [p.read_text(encoding="utf-8", errors="replace")]
    elif p.is_dir():
        texts = [f.read_text(encoding="utf-8", errors="replace") for f in sorted(p.rglob("*"))
                 if f.is_file() and f.suffix in TEXT_SUFFIXES]
    else:
        raise UserError(f"{p}: held-out text not found; pass a dataset dir from 'slmforge data prepare', "
                        "a .jsonl file with a \"text\" field, or text files")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise UserError(f"{p}: no {HELDOUT_NAME} in this directory and no text ({', '.join(TEXT_SUFFIXES)}); pass a "
                        "dataset dir from 'slmforge data prepare', a .jsonl file with a \"text\" field, or text files")
    return texts


def text_dataset_files(data: str | Path) -> tuple[Path, Path | None]:
    """(train file, held-out file or None) for a dataset dir or a single JSONL file of text."""
    p = Path(data)
    if p.is_dir():
        train = p / TRAIN_NAME
        if not train.is_file():
            raise UserError(f"--data {p}: no {TRAIN_NAME} in this directory; make one with {MAKE_DATASET}")
        heldout = p / HELDOUT_NAME
        return train, heldout if heldout.is_file() else None
    if not p.is_file():
        raise UserError(f"--data {p}: not found; pass a dataset dir from 'slmforge data prepare' or a .jsonl file")
    return p, None


class TextSplit(NamedTuple):
    """Training and held-out texts of one dataset, the files they came from and where the held-out part came from."""

    files: list[Path]
    train: list[str]
    heldout: list[str]
    heldout_source: str


def split_heldout(data: str | Path, seed: int) -> TextSplit:
    """The dataset's own held-out file, else ``HELDOUT_FRACTION`` of its lines (seeded); CPT trains on the rest."""
    train_file, heldout_file = text_dataset_files(data)
    train = read_texts(train_file, "train on")
    if heldout_file is not None:
        return TextSplit([train_file, heldout_file], train, read_texts(heldout_file), heldout_file.name)
    if len(train) < 2:
        return TextSplit([train_file], train, [], "none")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    held_idx = set(order[:max(1, int(len(train) * HELDOUT_FRACTION))])
    return TextSplit([train_file], [t for i, t in enumerate(train) if i not in held_idx],
                     [t for i, t in enumerate(train) if i in held_idx],
                     f"{HELDOUT_FRACTION:.0%} of lines (seed {seed})")


def train_and_heldout(data: str | Path) -> tuple[list[str], list[str]]:
    """(training texts, held-out texts) for pruning and distillation: a single JSONL file is both,
    a dataset dir without heldout.jsonl has none held out."""
    train_file, heldout_file = text_dataset_files(data)
    train = read_texts(train_file, "train on")
    if Path(data).is_file():
        return train, train
    return train, read_texts(heldout_file) if heldout_file is not None else []
