"""The answer every level of the answer path hands back, and the figures it carries.

Why one type: the engine generates an ``Answer``; the answering service routes that same object
(cache, escalation) and fills in how it was routed and how well its sources support it; the server,
`run --json`, telemetry and the benches read it. Nothing is copied field by field between levels.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from slmforge.runtime.generate.result_stream import ResultStream
    from slmforge.runtime.index.store import Hit

# What the HTTP API shows of an answer's retrieval summary (its ``slmforge.retrieval`` block), in this order;
# ``out_of_domain`` is added by the answering service, ``cache_similarity`` only to answers from the cache.
API_RETRIEVAL_FIELDS = ("top1", "k", "gap", "out_of_domain", "cache_similarity")


@dataclass
class Answer:
    """One answer: text and sources, timings, the retrieval summary, and how the answering service routed it.

    The route fields keep their defaults (a local answer, a cache miss) when the engine is used alone."""

    answer: str
    citations: list[dict[str, Any]] = field(default_factory=list)
    # [cited, moved to] for each [n] the runtime moved to the passage that holds the words before it
    # (answer.citation_check); ``generated_text`` is the model's own text, markers as it wrote them.
    citation_moves: list[list[int]] = field(default_factory=list)
    generated_text: str | None = field(default=None, repr=False)
    timings: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=lambda: {"prompt": 0, "completion": 0})
    retrieval: dict[str, Any] = field(default_factory=dict)
    finish_reason: str = "stop"
    dropped_chunks: int = 0
    dropped_turns: int = 0
    route: str = "local"  # local | cache | escalated | escalation_failed
    cache: str = "miss"  # miss | exact | semantic
    support: float | None = None  # mean best cosine of the answer's sentences to the chunks it was given
    note: str | None = None
    escalation_reason: str | None = None
    hits: list[Hit] = field(default_factory=list, repr=False)
    telemetry: dict[str, Any] = field(default_factory=dict, repr=False)  # its telemetry row (answering service)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for hidden in ("hits", "telemetry", "generated_text"):
            out.pop(hidden)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def usage(self) -> dict[str, int]:
        """OpenAI's ``usage`` field."""
        prompt, completion = self.tokens.get("prompt", 0), self.tokens.get("completion", 0)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def details(self) -> dict[str, Any]:
        """The HTTP API's ``slmforge`` block."""
        retrieval = {key: self.retrieval[key] for key in API_RETRIEVAL_FIELDS if key in self.retrieval}
        return {"route": self.route, "cache": self.cache, "retrieval": retrieval, "support": self.support,
                "timings": self.timings, "note": self.note, "escalation_reason": self.escalation_reason}


class Answerer(Protocol):
    """What answers questions from a bundle (``engine.Engine``); eval and the benches take this."""

    def answer_stream(
        self, question: str, k: int = 4, use_rag: bool = True, history: list[dict] | None = None,
        max_tokens: int | None = None, sampling: dict[str, Any] | None = None,
    ) -> ResultStream[Answer]: ...

    def answer(
        self, question: str, k: int = 4, use_rag: bool = True, history: list[dict] | None = None,
        max_tokens: int | None = None, sampling: dict[str, Any] | None = None,
    ) -> Answer: ...


def citation(hit: Hit) -> dict[str, Any]:
    """What a user sees for a source: file, heading, chunk id, and cosine similarity to the question."""
    score = hit.vec_score if hit.vec_score is not None else hit.score
    return {"source": hit.source, "heading": hit.heading, "chunk_id": hit.chunk_id, "score": round(float(score), 4)}


def retrieval_summary(hits: list[Hit], nearest: float | None = None) -> dict[str, Any]:
    """How well the index matched the question, computed once per answer: low values mean it is off the documents.

    ``scores``: the kept hits' cosines in rank order (fusion may rank a BM25 match first, so the figures below
    sort them: similarity is the signal). ``top1``: ``nearest`` (best cosine over all vector candidates, even one
    k cut) when known, else the hits' best. ``k``: hits with a cosine. ``gap``: best minus k-th hit cosine (the
    HTTP API's ``slmforge.retrieval.gap`` and telemetry's ``slmforge.retrieval.gap``). ``lead``: best minus
    second-best hit cosine (how clearly one passage wins; `run --json` only)."""
    scores = [h.vec_score for h in hits if h.vec_score is not None]
    ranked = sorted(scores, reverse=True)
    top1 = nearest if nearest is not None else (ranked[0] if ranked else None)
    several = len(ranked) > 1
    return {"top1": top1, "k": len(ranked),
            "gap": round(ranked[0] - ranked[-1], 4) if several else None,
            "lead": round(ranked[0] - ranked[1], 4) if several else None,
            "scores": scores}
