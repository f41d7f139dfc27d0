"""Fit a RAG prompt into the model's context window.

Question + retrieved chunks + history + the answer's reserve must fit ``n_ctx``.
We drop whole chunks, lowest-ranked first, then the oldest history turns; text is
never cut inside a sentence, so no token is ever split. A question that cannot fit
on its own is the user's to shorten: one clear error.

The retrieved context can also have a budget of its own in tokens (``context_tokens``):
every prompt token is prefill the user waits for before the first word, so chunks enter
in rank order while they fit, and with ``trim`` the first one that does not fit keeps
only its sentences nearest the question (docs/runtime-tuning.md has the measurements).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from slmforge.runtime.index.store import Hit

from slmforge.errors import UserError
from slmforge.rag_prompt import build_messages

MIN_ANSWER_TOKENS = 16
MIN_TRIMMED_TOKENS = 24  # a cut chunk shorter than this is not worth its header: drop it instead
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n{2,}")
_WORD = re.compile(r"\w+")


@dataclass
class PromptPlan:
    prompt: str
    prompt_tokens: int
    hits: list[Hit]
    history: list[dict]
    max_tokens: int
    dropped_chunks: int = 0
    dropped_turns: int = 0
    messages: list[dict] = field(default_factory=list)
    nearest: float | None = None  # best cosine over all vector candidates, even those k cut from ``hits``


def plan_prompt(
    question: str,
    hits: Sequence[Hit],
    history: Sequence[dict],
    system_prompt: str | None,
    render: Callable[[list[dict]], str],
    count_tokens: Callable[[str], int],
    n_ctx: int,
    max_tokens: int,
    context_tokens: int | None = None,
    trim: bool = False,
) -> PromptPlan:
    """The largest prompt (best chunks, newest history) that leaves ``max_tokens`` for the answer;
    with ``context_tokens``, the chunks first fit that budget (``budget_chunks``)."""
    hits, history = list(hits), [dict(m) for m in history]
    dropped_chunks = dropped_turns = 0
    if context_tokens is not None:
        kept = budget_chunks(question, hits, context_tokens, count_tokens, trim)
        dropped_chunks, hits = len(hits) - len(kept), kept
    while True:
        messages = build_messages(system_prompt, history, question, hits)
        prompt = render(messages)
        n = count_tokens(prompt)
        if n + max_tokens <= n_ctx:
            return PromptPlan(prompt, n, hits, history, max_tokens, dropped_chunks, dropped_turns, messages)
        if hits:
            hits.pop()  # lowest-ranked first
            dropped_chunks += 1
        elif history:
            # drop the oldest exchange (user + assistant) together so roles stay paired
            del history[: 2 if len(history) >= 2 and history[0].get("role") == "user" else 1]
            dropped_turns += 1
        elif n + MIN_ANSWER_TOKENS <= n_ctx:
            room = n_ctx - n  # the bare question fits with a shorter answer: say less rather than fail
            return PromptPlan(prompt, n, hits, history, room, dropped_chunks, dropped_turns, messages)
        else:
            raise UserError(
                f"the question is too long: {n} prompt tokens, but the model's context window is {n_ctx} "
                f"and the answer needs at least {MIN_ANSWER_TOKENS}; shorten the question"
            )


def budget_chunks(question: str, hits: Sequence[Hit], budget: int, count_tokens: Callable[[str], int],
                  trim: bool) -> list[Hit]:
    """Chunks in rank order while their text fits ``budget`` tokens; with ``trim`` the first that does not
    fit is cut to its sentences sharing most words with the question (kept in document order)."""
    kept: list[Hit] = []
    left = budget
    for hit in hits:
        cost = count_tokens(hit.text)
        if cost <= left:
            kept.append(hit)
            left -= cost
            continue
        if trim and left >= MIN_TRIMMED_TOKENS:
            text = nearest_sentences(question, hit.text, left, count_tokens)
            if text:
                kept.append(replace(hit, text=text))
        break
    return kept


def nearest_sentences(question: str, text: str, budget: int, count_tokens: Callable[[str], int]) -> str:
    """The sentences of ``text`` that share most words with ``question``, as many as fit ``budget`` tokens."""
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]
    asked = {w.lower() for w in _WORD.findall(question)}
    ranked = sorted(range(len(sentences)),
                    key=lambda i: (-len(asked & {w.lower() for w in _WORD.findall(sentences[i])}), i))
    chosen: list[int] = []
    left = budget
    for i in ranked:
        cost = count_tokens(sentences[i])
        if cost <= left:
            chosen.append(i)
            left -= cost
    return " ".join(sentences[i] for i in sorted(chosen))
