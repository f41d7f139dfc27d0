"""A ``Backend`` whose answers share one batched llama.cpp context (``serve --parallel N``).

Why a wrapper: the engine and the answering service stay as they are and call ``stream`` from
several threads at once; each call becomes a job of the ``BatchScheduler``, whose thread decodes
every running answer in one ``llama_decode`` per step. Everything that is not generation
(tokenizing, the chat template, scoring logits) is the wrapped single-sequence backend's.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from slmforge.runtime.generate.backend import GenerationResult, StopCheck, StreamTimer, check_prompt_fits
from slmforge.runtime.generate.batch_scheduler import BatchScheduler, Sampling
from slmforge.runtime.generate.result_stream import ResultStream

from slmforge.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    from slmforge.runtime.generate.llamacpp import LlamaCppBackend


def profile_parallel(profile_name: str | None) -> int:
    """Answers to generate at once by default: the bundle's device profile says (``parallel``); the host, or a
    custom profile not on this device, gets ``HOST_PARALLEL`` (nothing measured: serving must start fast)."""
    from slmforge.profiles import HOST_PARALLEL, load_profile

    if not profile_name or profile_name == "host":
        return HOST_PARALLEL
    try:
        return load_profile(profile_name).parallel
    except UserError:
        return HOST_PARALLEL


def batched(backend: Any, parallel: int, explicit: bool) -> tuple[Any, int]:
    """``backend`` made to generate ``parallel`` answers at once, and the parallelism it really has.

    Only llama.cpp decodes several sequences in one batch here; another backend keeps one at a time
    (a refusal when the user asked for more with ``--parallel``, silence when only the profile did)."""
    if parallel <= 1:
        return backend, 1
    from slmforge.runtime.generate.llamacpp import LlamaCppBackend

    if not isinstance(backend, LlamaCppBackend):
        if explicit:
            raise UserError(f"--parallel {parallel} needs a GGUF model (llama.cpp); this bundle runs on "
                            f"{getattr(backend, 'name', 'another backend')}: use --parallel 1")
        return backend, 1
    try:
        return BatchedLlamaBackend(backend, parallel), parallel
    except RuntimeError as exc:
        raise UserError(f"{exc}; lower --parallel or --n-ctx") from None


class BatchedLlamaBackend:
    """``parallel`` answers at a time over the model ``single`` has loaded."""

    name = "llama.cpp"

    def __init__(self, single: LlamaCppBackend, parallel: int) -> None:
        self.single = single
        self.n_ctx = single.n_ctx
        self.parallel = parallel
        self._llm = single._llm  # the loaded model; the scheduler makes its own context over it
        self.scheduler = BatchScheduler(self._llm, parallel, n_ctx_per_seq=single.n_ctx, threads=single.threads)

    def tokenize(self, text: str) -> list[int]:
        return self.single.tokenize(text)

    def keep_prefix(self, text: str) -> int:
        """Prefill ``text`` once in the batched context: every answer whose prompt starts with it copies
        those KV cells and decodes only the rest (the lone backend's ``keep_prefix``, for N sequences)."""
        return self.scheduler.keep_prefix(self.tokenize(text))

    def render_chat(self, messages: list[dict]) -> str:
        return self.single.render_chat(messages)

    def logits(self, tokens: list[int]) -> np.ndarray:
        return self.single.logits(tokens)

    def stream(
        self, prompt: str, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
        repeat_penalty: float = 1.0, stop: StopCheck | None = None,
    ) -> ResultStream[GenerationResult]:
        return ResultStream(self._deltas(prompt, max_tokens, Sampling(temperature, top_p, repeat_penalty, seed), stop))

    def _deltas(self, prompt: str, max_tokens: int, sampling: Sampling,
                stop: StopCheck | None = None) -> Generator[str, None, GenerationResult]:
        tokens = self.tokenize(prompt)
        check_prompt_fits(len(tokens), max_tokens, self.n_ctx)
        budget = max(1, min(max_tokens, self.n_ctx - len(tokens)))
        timer = StreamTimer(prompt_tokens=len(tokens))
        job = self.scheduler.submit(tokens, budget, sampling)
        stopped = False
        try:
            for token in job.stream():
                delta = timer.add(self._llm.detokenize([token]))
                if delta:
                    yield delta
                    if stop is not None and stop(timer.text()):
                        stopped = True
                        break
        finally:  # a closed or stopped stream (client gone, guard hit) frees its sequence at the scheduler's next step
            job.cancel()
        tail = timer.flush()
        if tail:
            yield tail
        return timer.result("stop" if stopped else job.finish_reason, prefill_ms=job.prefill_ms)

    def generate(self, prompt: str, **kw: Any) -> GenerationResult:
        return self.stream(prompt, **kw).drain()

    def stats(self) -> dict[str, Any]:
        return self.scheduler.stats()

    def close(self) -> None:
        self.scheduler.close()
        self.single.close()
