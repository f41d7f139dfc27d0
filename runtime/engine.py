"""Answer questions from a bundle: embed → retrieve → fit the context → generate, with citations."""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

import numpy as np
from slmforge.runtime.answer import Answer, citation, retrieval_summary
from slmforge.runtime.backend import Backend, default_threads, load_backend
from slmforge.runtime.bundle import Bundle
from slmforge.runtime.context_budget import PromptPlan, plan_prompt
from slmforge.runtime.embedder import Embedder
from slmforge.runtime.index import Hit, RagIndex
from slmforge.runtime.result_stream import ResultStream

from slmforge.errors import UserError
from slmforge.rag_prompt import DEFAULT_SYSTEM_PROMPT

DEFAULT_MAX_TOKENS = 256
# Small models loop on greedy decoding; Ollama's default over the last 64 tokens (llama.cpp's window).
DEFAULT_REPEAT_PENALTY = 1.1


def profile_threads(profile_name: str | None) -> int:
    """Threads to run with: the host's cores, no more than the bundle's device profile has."""
    host = default_threads()
    if not profile_name or profile_name == "host":  # the host is this machine: no need to measure it again
        return host
    try:
        from slmforge.profiles import load_profile

        return max(1, min(host, load_profile(profile_name).cpu.cores))
    except UserError:  # a custom profile not on this device: the host decides
        return host


class Engine:
    """Everything needed to answer from one bundle, loaded once."""

    def __init__(self, bundle: Bundle, threads: int | None = None, n_ctx: int | None = None) -> None:
        self.bundle = bundle
        manifest = bundle.manifest
        self.threads = threads or profile_threads(manifest.profile)
        self.generation = dict(manifest.generation)
        self.system_prompt = manifest.system_prompt or DEFAULT_SYSTEM_PROMPT
        self.embedder = Embedder(bundle.embedder_dir, threads=self.threads)
        self.index = RagIndex(bundle.rag_db, readonly=True)
        self.index.require_embedder(self.embedder.info.name, str(bundle.rag_db))
        self.backend: Backend = load_backend(
            bundle.model_path, n_ctx=n_ctx or self.generation.get("n_ctx"), threads=self.threads,
            chat_template=manifest.chat_template,
        )

    @property
    def n_ctx(self) -> int:
        return self.backend.n_ctx

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed(texts)

    def retrieve(self, question: str, k: int = 4) -> tuple[list[Hit], dict[str, float], float | None]:
        """Hits for ``question``, the embed/search times in ms, and the best cosine over all candidates."""
        t0 = time.perf_counter()
        vec = self.embedder.embed([question])[0]
        t1 = time.perf_counter()
        hits, nearest = self.index.search_scored(vec, question, k=k)
        t2 = time.perf_counter()
        return hits, {"embed_ms": round((t1 - t0) * 1000, 2), "search_ms": round((t2 - t1) * 1000, 2)}, nearest

    def plan(
        self, question: str, k: int = 4, use_rag: bool = True, history: list[dict] | None = None,
        max_tokens: int | None = None,
    ) -> tuple[PromptPlan, dict[str, float]]:
        """Retrieve and fit the prompt; no generation (the server and the benches use this too)."""
        question = (question or "").strip()
        if not question:
            raise UserError("the question is empty; ask something")
        if k < 0:
            raise UserError(f"--k must be 0 or more, not {k}")
        hits, timings, nearest = (self.retrieve(question, k) if use_rag and k > 0
                                  else ([], {"embed_ms": 0.0, "search_ms": 0.0}, None))
        plan = plan_prompt(
            question, hits, history or [], self.system_prompt, self.backend.render_chat, self._count,
            self.n_ctx, max_tokens or int(self.generation.get("max_tokens", DEFAULT_MAX_TOKENS)),
        )
        plan.nearest = nearest
        return plan, timings

    def _count(self, prompt: str) -> int:
        return len(self.backend.tokenize(prompt))

    def answer_stream(
        self, question: str, k: int = 4, use_rag: bool = True, history: list[dict] | None = None,
        max_tokens: int | None = None, sampling: dict[str, Any] | None = None,
    ) -> ResultStream[Answer]:
        """Text deltas of the answer; the stream's ``result`` is the full Answer once it ends.

        ``sampling`` (temperature, top_p, seed) overrides the bundle's defaults for this answer (the server
        passes a request's own values)."""
        return ResultStream(self._answer_deltas(question, k, use_rag, history, max_tokens, sampling))

    def _answer_deltas(
        self, question: str, k: int, use_rag: bool, history: list[dict] | None, max_tokens: int | None,
        sampling: dict[str, Any] | None,
    ) -> Generator[str, None, Answer]:
        started = time.perf_counter()
        plan, timings = self.plan(question, k, use_rag, history, max_tokens)
        defaults = {"temperature": float(self.generation.get("temperature", 0.0)),
                    "top_p": float(self.generation.get("top_p", 1.0)), "seed": self.generation.get("seed"),
                    "repeat_penalty": float(self.generation.get("repeat_penalty", DEFAULT_REPEAT_PENALTY))}
        overrides = {key: v for key, v in (sampling or {}).items() if key in defaults and v is not None}
        generation = self.backend.stream(plan.prompt, max_tokens=plan.max_tokens, **{**defaults, **overrides})
        yield from generation
        result = generation.result
        timings = {
            **timings, "prefill_ms": result.prefill_ms, "ttft_ms": result.ttft_ms,
            "decode_tok_s": result.decode_tok_s, "total_ms": round((time.perf_counter() - started) * 1000, 2),
        }
        return Answer(
            answer=result.text.strip(),
            citations=[citation(h) for h in plan.hits],
            timings=timings,
            tokens={"prompt": result.prompt_tokens, "completion": result.completion_tokens},
            retrieval=retrieval_summary(plan.hits, plan.nearest),
            finish_reason=result.finish_reason,
            dropped_chunks=plan.dropped_chunks,
            dropped_turns=plan.dropped_turns,
            hits=plan.hits,
        )

    def answer(
        self, question: str, k: int = 4, use_rag: bool = True, history: list[dict] | None = None,
        max_tokens: int | None = None, sampling: dict[str, Any] | None = None,
    ) -> Answer:
        return self.answer_stream(question, k, use_rag, history, max_tokens, sampling).drain()

    def close(self) -> None:
        self.backend.close()
        self.index.close()

    def __enter__(self) -> Engine:  # noqa: PYI034 - not subclassed
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
