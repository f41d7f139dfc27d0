"""GGUF generation through llama-cpp-python."""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmforge.runtime.backend import (
    GenerationResult,
    StreamTimer,
    check_prompt_fits,
    default_threads,
)
from slmforge.runtime.chat_template import render_chat
from slmforge.runtime.llama_probe import ensure_llama_cpp_runs
from slmforge.runtime.result_stream import ResultStream

from slmforge.errors import UserError

if TYPE_CHECKING:
    import numpy as np

DEFAULT_N_CTX = 2048


class LlamaCppBackend:
    """A loaded GGUF model; ``stream`` yields text deltas and stops at the model's end-of-generation token."""

    name = "llama.cpp"

    def __init__(
        self, model_path: Path, n_ctx: int | None = None, threads: int | None = None, chat_template: str | None = None
    ) -> None:
        self.model_path = Path(model_path)
        ensure_llama_cpp_runs(self.model_path)  # a build that crashes on this CPU: one line, not SIGSEGV
        from llama_cpp import Llama

        self.threads = threads or default_threads()
        try:
            self.n_ctx = n_ctx or DEFAULT_N_CTX
            self._llm = self._load(Llama)
            trained = int(self._llm._model.n_ctx_train())
            if trained and self.n_ctx > trained:  # never run past what the model was trained on
                self._llm.close()
                self.n_ctx = trained
                self._llm = self._load(Llama)
            metadata = dict(self._llm.metadata)
        except (ValueError, RuntimeError, OSError) as exc:
            raise UserError(f"{self.model_path}: llama.cpp could not load this GGUF ({exc}); re-export it") from None
        self.metadata = metadata
        self.chat_template = chat_template or metadata.get("tokenizer.chat_template")
        vocab = self._llm._model.vocab
        self._vocab = vocab
        self.bos_token = self._token_text(self._llm.token_bos())
        self.eos_token = self._token_text(self._llm.token_eos())
        self.eos_id: int | None = int(self._llm.token_eos())  # ends each held-out text in a perplexity stream
        self._scorer: Any = None  # the logits_all context of ``logits``

    def _load(self, llama_class: Any) -> Any:
        return llama_class(
            model_path=str(self.model_path),
            n_ctx=self.n_ctx,
            n_batch=min(512, self.n_ctx),
            n_threads=self.threads,
            n_threads_batch=self.threads,
            verbose=False,
        )

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def _is_end(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` as the model sees a prompt (special tokens parsed, BOS as the model wants)."""
        return self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def render_chat(self, messages: list[dict]) -> str:
        return render_chat(self.chat_template, messages, bos_token=self.bos_token, eos_token=self.eos_token)

    def stream(
        self, prompt: str, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
        repeat_penalty: float = 1.0,
    ) -> ResultStream[GenerationResult]:
        return ResultStream(self._deltas(prompt, max_tokens, temperature, top_p, seed, repeat_penalty))

    def _deltas(
        self, prompt: str, max_tokens: int, temperature: float, top_p: float, seed: int | None, repeat_penalty: float,
    ) -> Generator[str, None, GenerationResult]:
        tokens = self.tokenize(prompt)
        check_prompt_fits(len(tokens), max_tokens, self.n_ctx)
        budget = max(1, min(max_tokens, self.n_ctx - len(tokens)))
        if seed is not None:
            self._llm.set_seed(seed)
        timer = StreamTimer(prompt_tokens=len(tokens))
        finish = "length"
        sampling: dict[str, Any] = {"temp": temperature, "top_p": top_p, "top_k": 0 if temperature > 0 else 1,
                                    "min_p": 0.0, "repeat_penalty": repeat_penalty}
        _reset_perf(self._llm)
        for token in self._llm.generate(tokens, **sampling):
            if self._is_end(token):
                finish = "stop"
                break
            delta = timer.add(self._llm.detokenize([token]))
            if delta:
                yield delta
            if timer.completion_tokens >= budget:
                break
        tail = timer.flush()
        if tail:
            yield tail
        return timer.result(finish, prefill_ms=_prefill_ms(self._llm))

    def generate(self, prompt: str, **kw: Any) -> GenerationResult:
        return self.stream(prompt, **kw).drain()

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Logits of every position, from a second context with ``logits_all`` on the same memory-mapped GGUF
        (the generation context keeps the last position's only); made on first use, grown when a longer one comes."""
        import numpy as np

        if self._scorer is None or self._scorer.n_ctx() < len(tokens):
            from llama_cpp import Llama

            self._close_scorer()
            size = max(2, len(tokens))
            try:
                self._scorer = Llama(model_path=str(self.model_path), n_ctx=size, n_batch=size, n_ubatch=size,
                                     n_threads=self.threads, n_threads_batch=self.threads, logits_all=True,
                                     verbose=False)
            except (ValueError, RuntimeError, OSError) as exc:
                raise UserError(f"{self.model_path}: llama.cpp cannot load this GGUF ({exc}); re-export it") from None
        self._scorer.reset()
        self._scorer.eval(tokens)
        return np.array(self._scorer.scores[: len(tokens)], dtype=np.float32)

    def _close_scorer(self) -> None:
        scorer, self._scorer = getattr(self, "_scorer", None), None
        if scorer is not None:
            scorer.close()

    def close(self) -> None:
        self._close_scorer()
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()

    def __del__(self) -> None:  # llama.cpp frees native memory on close; be tidy if the caller forgot
        with contextlib.suppress(Exception):
            self.close()




def _reset_perf(llm: Any) -> None:
    import llama_cpp

    llama_cpp.llama_perf_context_reset(llm._ctx.ctx)


def _prefill_ms(llm: Any) -> float | None:
    """llama.cpp's own prompt-eval time (the part of time-to-first-token spent reading the prompt)."""
    import llama_cpp

    perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
    return float(perf.t_p_eval_ms) if perf.n_p_eval > 0 else None
