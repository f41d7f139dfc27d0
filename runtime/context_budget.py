"""Fit a RAG prompt into the model's context window.

Question + retrieved chunks + history + the answer's reserve must fit ``n_ctx``.
We drop whole chunks, lowest-ranked first, then the oldest history turns; text is
never cut, so no token is ever split. A question that cannot fit on its own is
the user's to shorten: one clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from slmforge.runtime.index import Hit

from slmforge.errors import UserError
from slmforge.rag_prompt import build_messages

MIN_ANSWER_TOKENS = 16


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
) -> PromptPlan:
    """The largest prompt (best chunks, newest history) that leaves ``max_tokens`` for the answer."""
    hits, history = list(hits), [dict(m) for m in history]
    dropped_chunks = dropped_turns = 0
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
