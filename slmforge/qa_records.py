"""The question/answer record every stage shares: ``data qa`` writes it, SFT, ``data rag`` and ``eval`` read it.

One line of ``qa.jsonl`` / ``qa.heldout.jsonl``::

    {"messages": [{"role": "user", ...}, {"role": "assistant", ...}],
     "source": "docs/faq/library.rst",            # the document, named as the index names it
     "section": "How do I copy a file?",          # the heading of the section that answers it (optional)
     "origin": "faq"}                             # faq | file | heading | definition | procedure | teacher

``source`` and ``section`` say where the answer lives, so retrieval hit@k and citation accuracy
can be judged against the chunks a bundle retrieved (``chunk_matches``). Files from users may
also be alpaca (instruction/input/output) or plain question/answer records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmforge.datafiles import iter_jsonl
from slmforge.errors import UserError
from slmforge.formats import CHAT_FORMATS, FORMATS, described, detect_format

HEADING_SEPARATOR = " > "  # how the index joins a chunk's heading path (runtime/index/chunking.Chunk.heading_path)


@dataclass(frozen=True)
class QARecord:
    question: str
    answer: str
    source: str | None = None
    section: str | None = None
    origin: str | None = None

    def record(self) -> dict[str, Any]:
        """The JSONL object (chat messages, so SFT reads it as it is)."""
        out: dict[str, Any] = {"messages": [{"role": "user", "content": self.question},
                                            {"role": "assistant", "content": self.answer}]}
        out.update({k: v for k, v in (("source", self.source), ("section", self.section), ("origin", self.origin))
                    if v is not None})
        return out


def _optional_str(where: str, obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise UserError(f"{where}: field \"{key}\" must be a string")
    return value or None


def record_from_json(where: str, obj: dict[str, Any], default_source: str | None = None) -> QARecord:
    """Any chat-format JSONL object (``slmforge.formats``) as one QARecord: its last question and answer."""
    fmt = detect_format(obj)
    if fmt not in CHAT_FORMATS:
        raise UserError(f"{where}: unrecognized record with fields {sorted(obj)}; expected {described(CHAT_FORMATS)}")
    problem = FORMATS[fmt].problem(obj)
    if problem:
        raise UserError(f"{where}: {problem}")
    chat = FORMATS[fmt].chat
    assert chat is not None  # every format in CHAT_FORMATS has one
    turns = chat(obj)
    question = next(t["content"] for t in reversed(turns) if t["role"] == "user").strip()
    answer = turns[-1]["content"].strip()
    if not question or not answer:
        raise UserError(f"{where}: empty question or answer; fill it in or remove the line")
    source = _optional_str(where, obj, "source") or default_source
    return QARecord(question, answer, source, _optional_str(where, obj, "section"),
                    _optional_str(where, obj, "origin"))


def read_qa(path: str | Path) -> list[QARecord]:
    """Every record of a QA JSONL file; empty questions/answers or an empty file are one clear error."""
    p = Path(path)
    records = []
    for lineno, obj in iter_jsonl(p):
        records.append(record_from_json(f"{p}:{lineno}", obj))
    if not records:
        raise UserError(f"{p}: no question/answer records (the file is empty); pass held-out questions as JSONL")
    return records


_INLINE_MARKUP = re.compile(r"[`*\\]")  # reST/Markdown emphasis and literals: the index keeps them, QA text does not


def _norm(text: str) -> str:
    return " ".join(_INLINE_MARKUP.sub("", text).lower().split())


def same_document(a: str, b: str) -> bool:
    """Two source names of one document: equal, or one is the other with leading folders dropped.

    The index names documents ``<folder>/<path>`` relative to the folder it was given; a QA file
    made from another folder level names the same file with more or fewer leading parts.
    """
    pa, pb = Path(a).parts, Path(b).parts
    n = min(len(pa), len(pb))
    return n > 0 and pa[-n:] == pb[-n:]


def in_section(heading_path: str, section: str) -> bool:
    """A chunk under ``heading_path`` (``A > B > C``) lies in ``section`` when one of its headings is it."""
    sep = HEADING_SEPARATOR
    return f"{sep}{_norm(section)}{sep}" in f"{sep}{_norm(heading_path)}{sep}"  # whole headings, even with '>' in them


def chunk_matches(ref: QARecord, source: str, heading_path: str) -> bool:
    """Does a retrieved chunk (its source and heading path) hold the reference answer's place?

    Same document, and the same section when the record names one; a record with no source
    matches nothing (it cannot be judged)."""
    if not ref.source or not same_document(ref.source, source):
        return False
    return ref.section is None or in_section(heading_path, ref.section)
