"""The prompt a bundle answers from, rendered in one place for the runtime and for training.

The runtime asks the model with retrieved chunks numbered ``[1] … [k]``; RAG-aware SFT
(``data rag``) renders its examples with exactly these functions, so what the model is
trained on and what it sees on the device cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Answer the question briefly using the numbered context, and cite the "
    "passages you used like [1]. If the context does not contain the answer, say that the documents do "
    "not cover it."
)
# What a trained model answers when no retrieved passage holds the answer (and what eval counts as a refusal).
NOT_IN_DOCUMENTS = "The documents do not cover this."
# Where the passages of a "not covered" training example come from (``data rag --unanswerable-from``): every
# section but the question's own, or other documents only.
UNANSWERABLE_FROM = ("other-sections", "other-documents")


class ContextChunk(Protocol):
    """What the prompt needs of a retrieved chunk (runtime.index.Hit has it)."""

    source: str
    heading: str
    text: str


def passage_label(source: str, heading: str) -> str:
    """Where a passage comes from, as its context header names it (and eval's answers.jsonl lists it)."""
    return f"{source} — {heading}" if heading else source


def context_block(chunks: Sequence[ContextChunk]) -> str:
    """Retrieved chunks as numbered sources the model can cite as [1], [2], …"""
    parts = []
    for i, chunk in enumerate(chunks, 1):
        parts.append(f"[{i}] {passage_label(chunk.source, chunk.heading)}\n{chunk.text.strip()}")
    return "\n\n".join(parts)


def user_message(question: str, chunks: Sequence[ContextChunk]) -> str:
    if not chunks:
        return question
    return f"Context:\n{context_block(chunks)}\n\nQuestion: {question}"


def build_messages(system_prompt: str | None, history: Sequence[dict], question: str,
                   chunks: Sequence[ContextChunk]) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + list(history) + [{"role": "user", "content": user_message(question, chunks)}]


# -- citation markers: the [n] the prompt asks for, read back from an answer ------------------------------
# A marker is [n], [n, m] or a run like [1][2], not glued to a word or a closing bracket (so ``x[1]``
# indexing is not one) and never inside `code` or a ``` block (``[1, 2]`` there is a list). A line that
# repeats a context header ("[2] faq/library.rst — How do I copy a file?") is the model echoing its
# prompt, not citing: it is kept as text and not counted.
_NUMBERS = r"\d{1,3}(?:\s*[,;]\s*\d{1,3})*"  # inside one bracket: 1, "1, 2", "1; 2"
MARKER = re.compile(rf"(?:\[{_NUMBERS}\])+")  # a whole marker, runs included
# The start of a marker still being written (the runtime holds it back until it is whole).
MARKER_PREFIX = re.compile(rf"(?:\[{_NUMBERS}\])*\[(?:{_NUMBERS}\s*(?:[,;]\s*)?)?")
# What may not come right before a marker: a word character, a closing bracket or parenthesis, a quote.
GLUED = re.compile(r"[\w\])'\"]")
_MARKERS = re.compile(
    r"(?P<code>```.*?(?:```|\Z)|`[^`\n]*`)"
    r"|(?P<echo>(?m:^[ \t]*\[\d{1,3}\][ \t]+[^\n]*? \u2014 [^\n]*$))"
    rf"|(?<!{GLUED.pattern})(?P<cite>{MARKER.pattern})",
    re.DOTALL,
)


def marker_numbers(marker: str) -> list[int]:
    """The numbers of one marker, in the order written ("[2, 1]" -> [2, 1])."""
    return [int(n) for n in re.findall(r"\d+", marker)]


def cited_numbers(answer: str) -> list[int]:
    """The passage numbers an answer cites, in order of first citation."""
    found: dict[int, None] = {}
    for m in _MARKERS.finditer(answer or ""):
        if m.group("cite"):
            found.update((n, None) for n in marker_numbers(m.group("cite")))
    return list(found)


def cites_missing_passage(answer: str, passages: int) -> bool:
    """Does ``answer`` cite a passage number beyond the ``passages`` it was given? A model that starts
    counting ("[1] [2] [3] … [62]") does, and the runtime ends the answer there."""
    return passages > 0 and any(n > passages for n in cited_numbers(answer))


def strip_citations(answer: str) -> str:
    """The answer without its [n] markers (code left as it is), for scoring it against a reference."""
    return _MARKERS.sub(lambda m: m.group("code") or m.group("echo") or "", answer or "")
