"""One question in, one routed answer out: cache → local model → groundedness → escalation → telemetry.

The server's handlers stay thin HTTP; this is where a request becomes an answer. A
repeated question is answered from the cache; otherwise the bundle's Engine answers it,
the answer's support by its cited chunks is measured, and a configured larger model
takes over when the small one is out of its depth (offline: keep the local answer and
say so). Every answer leaves one telemetry row with drift signals (query vector,
retrieval top-1, out-of-domain flag) but no text unless ``--log-text``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from slmforge.runtime.answer.cache import AnswerCache, CacheHit
from slmforge.runtime.answer.context_budget import MIN_ANSWER_TOKENS
from slmforge.runtime.answer.escalate import EscalationError, EscalationPolicy, Escalator, context_messages
from slmforge.runtime.answer.types import Answer, Answerer, citation
from slmforge.runtime.generate.result_stream import ResultStream
from slmforge.runtime.index.store import Hit, RagIndex
from slmforge.runtime.serve.gate import Overloaded
from slmforge.runtime.telemetry.drift import NULL_PROBES, IndexReference, answer_support
from slmforge.runtime.telemetry.feedback import parse_rating, record_feedback
from slmforge.runtime.telemetry.store import TelemetryStore, measure_resources

from slmforge.errors import UserError
from slmforge.rag_prompt import passage_label

if TYPE_CHECKING:
    from slmforge.runtime.bundle.reader import Bundle
    from slmforge.runtime.generate.backend import Backend
    from slmforge.runtime.index.embedder import Embedder

RECENT_EXCHANGES = 1000  # kept in memory only, so feedback can quote what it rates


@dataclass
class ChatParams:
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    use_rag: bool = True
    k: int = 4
    repeat_penalty: float | None = None

    def sampling(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
                "repeat_penalty": self.repeat_penalty}


class AnsweringEngine(Answerer, Protocol):
    """What the service needs of an engine: ``engine.Engine`` is the one that ships."""

    bundle: Bundle
    backend: Backend
    embedder: Embedder
    index: RagIndex
    generation: dict[str, Any]

    @property
    def n_ctx(self) -> int: ...

    def embed(self, texts: list[str]) -> np.ndarray: ...

    def retrieve(self, question: str, k: int = 4) -> tuple[list[Hit], dict[str, float], float | None]: ...

    def close(self) -> None: ...


def cache_entry(answer: Answer) -> dict[str, Any]:
    """What the cache keeps of an answer to stand in for it later (no tokens or timings: a cache hit costs none)."""
    return {"text": answer.answer, "finish_reason": answer.finish_reason, "citations": answer.citations,
            "retrieval": answer.retrieval, "support": answer.support}


def index_version(index: RagIndex) -> str:
    """Changes whenever documents are added to or removed from the index (its meta 'updated' and size)."""
    row = index.conn.execute("SELECT value FROM meta WHERE key = 'updated'").fetchone()
    return f"{row[0] if row else 'created'}:{index.count()}"


def index_reference(index: RagIndex, embed: Callable[[list[str]], np.ndarray]) -> IndexReference:
    """The drift reference: the index's chunk vectors and its scores for off-topic probe questions."""
    rows = index.conn.execute("SELECT embedding FROM chunks").fetchall()
    vectors = np.frombuffer(b"".join(r[0] for r in rows), dtype=np.float32).reshape(-1, index.dim)
    return IndexReference.from_vectors(vectors, embed(NULL_PROBES))


class AnswerService:
    """Routes questions for one loaded Engine; called from the model gate's threads (several at once with
    ``serve --parallel``: the cache, telemetry store, index search and batched backend are thread-safe)."""

    def __init__(self, engine: AnsweringEngine, store: TelemetryStore, model_name: str, cache: AnswerCache | None = None,
                 escalator: Escalator | None = None, policy: EscalationPolicy | None = None, default_k: int = 4,
                 default_max_tokens: int | None = None) -> None:
        self.engine = engine
        self.store = store
        self.model_name = model_name
        self.cache = cache
        self.escalator = escalator
        self.policy = policy or EscalationPolicy()
        self.default_k = default_k
        self.default_max_tokens = int(default_max_tokens or engine.generation.get("max_tokens", 256))
        self.backend_name = getattr(engine.backend, "name", "unknown")
        self.embedder_name = engine.embedder.info.name
        self.quant = str(engine.bundle.manifest.model.get("quant", "unknown"))
        self._version = index_version(engine.index)
        self.reference = index_reference(engine.index, engine.embed)
        self._recent: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._recent_lock = threading.Lock()
        self.stopping = threading.Event()

    # -- small pieces the server asks for ---------------------------------------------------------

    def params(self, max_tokens: int, temperature: float | None = None, top_p: float | None = None,
               seed: int | None = None, use_rag: bool = True, k: int | None = None,
               repeat_penalty: float | None = None) -> ChatParams:
        return ChatParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, use_rag=use_rag,
                          k=k or self.default_k, repeat_penalty=repeat_penalty)

    def cache_stats(self) -> dict[str, Any] | None:
        return None if self.cache is None else self.cache.stats()

    def batch_stats(self) -> dict[str, Any] | None:
        """The batched backend's slots and decode rate (None for a one-answer-at-a-time backend)."""
        stats = getattr(self.engine.backend, "stats", None)
        return stats() if callable(stats) else None

    def record(self, attrs: dict[str, Any]) -> None:
        self.store.record(attrs)

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Vectors and the number of word pieces embedded (for the usage field)."""
        counter = getattr(self.engine.embedder, "count_tokens", None)
        tokens = sum(counter(t) for t in texts) if counter else sum(len(t.split()) for t in texts)
        return self.engine.embed(texts), int(tokens)

    def close(self) -> None:
        self.store.close()
        self.engine.close()

    def _current_version(self) -> str:
        version = index_version(self.engine.index)
        if version != self._version:  # documents changed under us: new reference, cache empties on next get
            self._version, self.reference = version, index_reference(self.engine.index, self.engine.embed)
        return version

    # -- answering ----------------------------------------------------------------------------------

    def ask(self, question: str, history: list[dict[str, Any]], params: ChatParams, request_id: str) -> Answer:
        return self.ask_stream(question, history, params, request_id, streaming=False).drain()

    def ask_stream(self, question: str, history: list[dict[str, Any]], params: ChatParams, request_id: str,
                   cancel: threading.Event | None = None, streaming: bool = True) -> ResultStream[Answer]:
        """Text deltas of the routed answer; the stream's ``result`` is the Answer with its telemetry row once it
        ends (none when ``cancel`` stopped it)."""
        return ResultStream(self._answer(question, history, params, request_id, cancel, streaming))

    def _answer(self, question: str, history: list[dict[str, Any]], params: ChatParams, rid: str,
                cancel: threading.Event | None, streaming: bool) -> Generator[str, None, Answer | None]:
        with measure_resources() as resources:
            version = self._current_version()
            vector = self.engine.embed([question])[0]
            cacheable = self.cache is not None and not history and params.use_rag
            hit = self.cache.get(question, version, vector) if cacheable else None
            if hit is not None and hit.value["finish_reason"] == "length" and params.max_tokens > hit.value["max_tokens"]:
                hit = None  # a cut-off answer only stands in for requests that allow no more tokens
            if hit is not None:
                reply = self._from_cache(hit)
                yield reply.answer
            else:
                answer = None
                try:
                    local = self.engine.answer_stream(question, k=params.k, use_rag=params.use_rag, history=history,
                                                      max_tokens=params.max_tokens, sampling=params.sampling())
                    for delta in local:
                        if cancel is not None and cancel.is_set():
                            local.close()
                            return None
                        if self.stopping.is_set():  # SIGTERM: do not hold the shutdown for a long answer
                            local.close()
                            raise Overloaded(503, 5, "the server is shutting down; ask again later")
                        yield delta
                    answer = local.result
                except UserError:
                    if self.escalator is None or not self._overflows(question):
                        raise
                if answer is None:  # the question alone is over the local context: only escalation can answer
                    reply = Answer(answer="")
                    reply.escalation_reason = self.policy.reason(None, None, context_overflow=True)
                    hits = self.engine.retrieve(question, params.k)[0] if params.use_rag else []
                    self._escalate(reply, question, history, hits, params, fallback=None)
                    yield reply.answer
                else:
                    reply = answer
                    self._judge(reply)
                    if not streaming and self.escalator is not None:
                        reply.escalation_reason = self.policy.reason(reply.retrieval.get("top1"), reply.support)
                        if reply.escalation_reason:
                            self._escalate(reply, question, history, answer.hits, params, fallback=answer.answer)
                    if cacheable and reply.route in ("local", "escalated"):
                        self.cache.put(question, version, {**cache_entry(reply), "max_tokens": params.max_tokens},
                                       vector)
        reply.telemetry = self._attrs(reply, rid, question, history, params, vector, version, resources.attrs)
        self._remember(rid, question, reply.answer)
        return reply

    def _overflows(self, question: str) -> bool:
        return len(self.engine.backend.tokenize(question)) + MIN_ANSWER_TOKENS > self.engine.n_ctx

    @staticmethod
    def _from_cache(hit: CacheHit) -> Answer:
        cached = hit.value
        answer = Answer(answer=cached["text"], citations=cached["citations"], retrieval=dict(cached["retrieval"]),
                        finish_reason=cached["finish_reason"], support=cached["support"], route="cache", cache=hit.kind)
        answer.retrieval["cache_similarity"] = round(hit.similarity, 4)
        return answer

    def _judge(self, answer: Answer) -> None:
        """The drift reference's verdict on the retrieval (so a client can say "not in the documents"; the page
        does) and how well the retrieved chunks support the answer."""
        answer.retrieval["out_of_domain"] = self.reference.is_out_of_domain(answer.retrieval.get("top1"))
        answer.support = answer_support(answer.answer, [h.text for h in answer.hits], self.engine.embed)

    def _escalate(self, reply: Answer, question: str, history: list[dict[str, Any]], hits: list[Hit],
                  params: ChatParams, fallback: str | None) -> None:
        assert self.escalator is not None
        messages = context_messages([*history, {"role": "user", "content": question}],
                                    [(passage_label(h.source, h.heading), h.text) for h in hits])
        try:
            result = self.escalator.complete(messages, params.max_tokens, params.temperature or 0.0)
        except EscalationError as exc:
            if fallback is None:
                raise UserError(f"the question does not fit the local model's context window and {exc}; "
                                "shorten the question") from None
            reply.route = "escalation_failed"
            reply.note = f"Could not escalate to the larger model ({exc}); this is the local model's answer."
            reply.answer = f"{fallback}\n\n({reply.note})"
            return
        reply.route, reply.answer, reply.finish_reason = "escalated", result.text, result.finish_reason
        reply.citation_moves, reply.generated_text = [], None  # they described the local model's text
        reply.tokens = {"prompt": result.prompt_tokens or reply.tokens["prompt"],
                        "completion": result.completion_tokens or reply.tokens["completion"]}
        reply.note = f"answered by {result.model} via {self.escalator.endpoint}"
        if hits and not reply.citations:
            reply.citations = [citation(h) for h in hits]

    def _attrs(self, reply: Answer, rid: str, question: str, history: list[dict[str, Any]], params: ChatParams,
               vector: np.ndarray, version: str, resources: dict[str, Any]) -> dict[str, Any]:
        top1 = reply.retrieval.get("top1")
        tok_s = reply.timings.get("decode_tok_s") or None
        ttft = reply.timings.get("ttft_ms")
        return {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": self.model_name,
            "gen_ai.response.id": rid,
            "gen_ai.request.max_tokens": params.max_tokens,
            "gen_ai.request.temperature": params.temperature,
            "gen_ai.response.finish_reasons": [reply.finish_reason],
            "gen_ai.usage.input_tokens": reply.tokens["prompt"],
            "gen_ai.usage.output_tokens": reply.tokens["completion"],
            "gen_ai.server.time_to_first_token": None if ttft is None else round(ttft / 1000, 4),
            "gen_ai.server.time_per_output_token": None if not tok_s else round(1.0 / tok_s, 5),
            "slmforge.decode.tokens_per_second": tok_s,
            "slmforge.retrieval.k": reply.retrieval.get("k"),
            "slmforge.retrieval.top1_score": top1,
            "slmforge.retrieval.gap": reply.retrieval.get("gap"),
            "slmforge.query.centroid_similarity": round(self.reference.centroid_similarity(vector), 4),
            "slmforge.query.out_of_domain": self.reference.is_out_of_domain(top1),
            "slmforge.query.embedding": vector,
            "slmforge.answer.support": reply.support,
            "slmforge.cache.hit": reply.cache,
            "slmforge.route": reply.route,
            "slmforge.backend": self.backend_name,
            "slmforge.model.quant": self.quant,
            "slmforge.index.version": version,
            "gen_ai.input.messages": [*history, {"role": "user", "content": question}],
            "gen_ai.output.messages": [{"role": "assistant", "content": reply.answer}],
            **resources,
        }

    # -- feedback -----------------------------------------------------------------------------------

    def _remember(self, rid: str, question: str, answer: str) -> None:
        with self._recent_lock:
            self._recent[rid] = (question, answer)
            while len(self._recent) > RECENT_EXCHANGES:
                self._recent.popitem(last=False)

    def feedback(self, rid: str, rating: Any, correction: str | None = None, comment: str | None = None,
                 prompt: str | None = None, completion: str | None = None) -> int:
        """Store a rating of request ``rid``; LookupError when neither we nor the caller know the exchange."""
        good = parse_rating(rating)
        with self._recent_lock:
            known = self._recent.get(rid)
        if known is None and prompt and completion:
            known = (prompt, completion)
        if known is None:
            raise LookupError(f"unknown request id {rid!r} (this server keeps the last {RECENT_EXCHANGES} answers "
                              "since it started); send 'prompt' and 'completion' with the rating")
        return record_feedback(self.store, rid, good, known[0], known[1], correction=correction, comment=comment)
