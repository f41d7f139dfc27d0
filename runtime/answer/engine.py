"""Answer questions from a bundle: embed → retrieve → fit the context → generate, with citations."""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
from slmforge.runtime.answer.citation_check import CitationChecker
from slmforge.runtime.answer.context_budget import PromptPlan, plan_prompt
from slmforge.runtime.answer.types import Answer, citation, retrieval_summary
from slmforge.runtime.bundle.reader import Bundle
from slmforge.runtime.generate.backend import Backend, default_threads, load_backend
from slmforge.runtime.generate.result_stream import ResultStream
from slmforge.runtime.index.embedder import Embedder, read_embedder_info
from slmforge.runtime.index.store import Hit, RagIndex

from slmforge.errors import UserError
from slmforge.rag_prompt import DEFAULT_SYSTEM_PROMPT, build_messages, cites_missing_passage

DEFAULT_MAX_TOKENS = 256
# Small models loop on greedy decoding; Ollama's default over the last 64 tokens (llama.cpp's window).
DEFAULT_REPEAT_PENALTY = 1.1
# docs/runtime-tuning.md: a 256-token budget for the retrieved context halved RAG time to first token
# but left the answering chunk out for 12 % of held-out questions (eval hit@4 1.00 -> 0.88), so the
# default keeps whole chunks (None); a device profile may set `runtime: {context_tokens: N}`.
FAST_CONTEXT_TOKENS: int | None = None
FAST_MAX_N_CTX = 1024
LEGACY_ENV = "SLMFORGE_LEGACY_RUNTIME"  # "1": answer the way the runtime did before issue #18 (for comparisons)


@dataclass(frozen=True)
class AnswerPath:
    """How an engine turns a question into prefill: llama.cpp's settings and the retrieved context's budget.

    ``context_tokens`` None: whole chunks until ``n_ctx`` is full (the runtime before issue #18);
    ``max_n_ctx`` caps the bundle's context window (KV cache memory) unless the caller asks for one."""

    name: str
    llama: Any  # llamacpp.LlamaSettings (imported lazily: an ONNX bundle never loads llama_cpp)
    context_tokens: int | None
    trim: bool
    max_n_ctx: int | None
    keep_prefix: bool = False  # prefill the fixed prefix (system prompt, template head) once, at load


def answer_path(legacy: bool | None = None, profile_name: str | None = None) -> AnswerPath:
    """The fast path, or today's path when ``legacy`` (default: the ``SLMFORGE_LEGACY_RUNTIME`` variable).

    A device profile's ``runtime:`` section overrides the fast path's knobs (its ``max_context`` caps n_ctx)."""
    from slmforge.runtime.generate.llamacpp import LEGACY_SETTINGS

    if legacy is None:
        legacy = os.environ.get(LEGACY_ENV, "") not in ("", "0")
    if legacy:
        return AnswerPath("legacy", LEGACY_SETTINGS, None, False, None)
    return fast_path_for(_device_profile(profile_name))


def fast_path_for(profile: Any) -> AnswerPath:
    """The fast path as it runs on ``profile`` (a ``DeviceProfile``; None: the defaults): export's fit check
    budgets the same window and KV cache type the runtime will allocate."""
    from dataclasses import replace

    from slmforge.runtime.generate.llamacpp import FAST_SETTINGS

    path = AnswerPath("fast", FAST_SETTINGS, FAST_CONTEXT_TOKENS, True, FAST_MAX_N_CTX, keep_prefix=True)
    if profile is None:
        return path
    tuning = profile.runtime.model_dump(exclude_none=True)
    context = tuning.pop("context_tokens", path.context_tokens)
    return replace(path, name=f"fast ({profile.name})", llama=replace(path.llama, **tuning), context_tokens=context,
                   max_n_ctx=min(path.max_n_ctx or profile.max_context, profile.max_context))


def _device_profile(name: str | None) -> Any:
    if not name or name == "host":
        return None
    from slmforge.profiles import load_profile

    try:
        return load_profile(name)
    except UserError:  # a custom profile not on this device: the defaults
        return None



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

    def __init__(self, bundle: Bundle, threads: int | None = None, n_ctx: int | None = None,
                 path: AnswerPath | None = None, one_shot: bool = False) -> None:
        """``one_shot`` (``slmforge run``): the question is embedded in a child process that exits before the model
        loads (``embed_child``), so this process never maps onnxruntime next to the model's pages (peak RSS)."""
        self.bundle = bundle
        manifest = bundle.manifest
        self.path = path or answer_path(profile_name=manifest.profile)
        self.one_shot = one_shot
        self.threads = threads or profile_threads(manifest.profile)
        self.generation = dict(manifest.generation)
        self.system_prompt = manifest.system_prompt or DEFAULT_SYSTEM_PROMPT
        self._embedder: Embedder | None = None
        self.index = RagIndex(bundle.rag_db, readonly=True)
        self.index.require_embedder(read_embedder_info(bundle.embedder_dir).name, str(bundle.rag_db))
        if n_ctx is None:
            n_ctx = self.generation.get("n_ctx")
            if self.path.max_n_ctx:
                n_ctx = min(int(n_ctx or self.path.max_n_ctx), self.path.max_n_ctx)
        self._n_ctx_asked = n_ctx
        self._backend: Backend | None = None
        if not one_shot:
            self.backend  # noqa: B018 - load now: a server or a bench wants load errors and load time up front

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.bundle.embedder_dir, threads=self.threads)
        return self._embedder

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = load_backend(
                self.bundle.model_path, n_ctx=self._n_ctx_asked, threads=self.threads,
                chat_template=self.bundle.manifest.chat_template, llama_settings=self.path.llama,
            )
            self._keep_prefix()
        return self._backend

    @backend.setter
    def backend(self, backend: Backend) -> None:
        """``serve --parallel`` puts the batched backend over the loaded model in its place (it keeps the
        prefix in its own context too)."""
        if backend is not self._backend:
            self._backend = backend
            self._keep_prefix()

    def _keep_prefix(self) -> None:
        keep = getattr(self._backend, "keep_prefix", None)
        if keep is not None and self.path.keep_prefix and not self.one_shot:
            keep(self.fixed_prefix())

    def fixed_prefix(self) -> str:
        """The prompt text every question starts with: the template's head and the system prompt.

        llama-cpp-python reuses the longest common token prefix of the previous prompt (``Llama.generate``),
        so once this is in the KV cache a question pays only for its chunks and itself."""
        marker = "\x00question\x00"
        rendered = self.backend.render_chat(build_messages(self.system_prompt, [], marker, []))
        return rendered[: rendered.index(marker)] if marker in rendered else ""

    @property
    def n_ctx(self) -> int:
        return self.backend.n_ctx

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed(texts)

    def retrieve(self, question: str, k: int = 4) -> tuple[list[Hit], dict[str, float], float | None]:
        """Hits for ``question``, the embed/search times in ms, and the best cosine over all candidates."""
        t0 = time.perf_counter()
        if self.one_shot and self._embedder is None:
            from slmforge.runtime.answer.embed_child import embed_in_child

            vec = embed_in_child(self.bundle.embedder_dir, [question], threads=self.threads)[0]
        else:
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
            context_tokens=self.path.context_tokens, trim=self.path.trim,
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
        passages = len(plan.hits)
        generation = self.backend.stream(plan.prompt, max_tokens=plan.max_tokens, **{**defaults, **overrides},
                                         stop=lambda text: cites_missing_passage(text, passages))
        checker = CitationChecker([h.text for h in plan.hits], question)
        try:
            for delta in generation:
                written = checker.feed(delta)
                if written:
                    yield written
        finally:
            generation.close()  # a client that goes away frees its sequence now, not at garbage collection
        tail = checker.finish()
        if tail:
            yield tail
        result = generation.result
        timings = {
            **timings, "prefill_ms": result.prefill_ms, "ttft_ms": result.ttft_ms,
            "decode_tok_s": result.decode_tok_s, "total_ms": round((time.perf_counter() - started) * 1000, 2),
        }
        return Answer(
            answer=checker.text.strip(),
            citations=[citation(h) for h in plan.hits],
            citation_moves=[list(move) for move in checker.moves],
            generated_text=result.text.strip(),
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
        if self._backend is not None:
            self._backend.close()
        self.index.close()

    def __enter__(self) -> Engine:  # noqa: PYI034 - not subclassed
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
