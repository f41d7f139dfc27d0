"""Read and validate the training data formats (JSONL), with line numbers in every error.

The data stage (``slmforge data prepare|qa|pairs``) writes these files; the training stages
read them here. Each method accepts a set of formats, and giving it another one is a clear
one-line error instead of a KeyError deep inside a trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmforge.datafiles import iter_jsonl
from slmforge.errors import UserError
from slmforge.formats import CHAT_FORMATS, FORMATS, described, detect_format

# --------------------------------------------------------------------------- formats

# what each method reads; SFT reads every chat format; KTO also takes pairs (one desirable and one undesirable example)
ACCEPTS: dict[str, tuple[str, ...]] = {
    "pretrain": ("text",),
    "sft": CHAT_FORMATS,
    "dpo": ("preference",),
    "ipo": ("preference",),
    "orpo": ("preference",),
    "kto": ("kto", "preference"),
}
MAKE_HINT = {
    "text": "'slmforge data prepare DOCS --out DIR'",
    "preference": "'slmforge data pairs --out prefs.jsonl'",
    "kto": "'slmforge data pairs --kto-out kto.jsonl'",
}
MAKE_CHAT_HINT = "'slmforge data qa DOCS --out qa.jsonl'"


def load_records(path: str | Path, method: str) -> tuple[str, list[dict[str, Any]]]:
    """Read a JSONL file for ``method``; return (format, records). Every line must share one format."""
    p = Path(path)
    accepted = ACCEPTS[method]
    fmt: str | None = None
    records: list[dict[str, Any]] = []
    for lineno, obj in iter_jsonl(p):
        this = detect_format(obj)
        if this is None:
            raise UserError(f"{p}:{lineno}: unrecognized record with fields {sorted(obj)}; "
                            f"'{method}' reads {described(accepted)}")
        if this not in accepted:
            users = [m for m, acc in ACCEPTS.items() if this in acc]
            hint = MAKE_HINT.get(accepted[0], MAKE_CHAT_HINT)
            raise UserError(f"{p}:{lineno}: this is {FORMATS[this].description}, but '{method}' needs "
                            f"{described(accepted)}; use it with {' / '.join(users)} or build the right data with {hint}")
        if fmt is not None and this != fmt:
            raise UserError(f"{p}:{lineno}: {FORMATS[this].description} mixed with {FORMATS[fmt].description} "
                            "from earlier lines; use one format per file")
        fmt = this
        problem = FORMATS[this].problem(obj)
        if problem:
            raise UserError(f"{p}:{lineno}: {problem}")
        records.append(obj)
    if not records:
        raise UserError(f"{p}: no records (the file is empty); nothing to train on")
    assert fmt is not None
    return fmt, records


def to_messages(fmt: str, record: dict[str, Any]) -> list[dict[str, str]]:
    """An SFT record as chat messages (alpaca: instruction + optional input → user turn)."""
    chat = FORMATS[fmt].chat
    if chat is None:
        raise ValueError(f"{fmt} records are not conversations")
    return chat(record)


def to_kto(fmt: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """KTO examples; pairs become one desirable and one undesirable example each."""
    if fmt == "kto":
        return [{"prompt": r["prompt"], "completion": r["completion"], "label": r["label"]} for r in records]
    out = []
    for r in records:
        out.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
        out.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
    return out

