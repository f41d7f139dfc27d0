"""GGUF generation through llama-cpp-python."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmforge.runtime.generate.backend import (
    GenerationResult,
    StopCheck,
    StreamTimer,
    check_prompt_fits,
    default_threads,
)
from slmforge.runtime.generate.chat_template import render_chat
from slmforge.runtime.generate.llama_probe import ensure_llama_cpp_runs
from slmforge.runtime.generate.result_stream import ResultStream

from slmforge.errors import UserError

if TYPE_CHECKING:
    import numpy as np

DEFAULT_N_CTX = 2048
KV_TYPES = ("f16", "q8_0")


@dataclass(frozen=True)
class LlamaSettings:
    """How llama.cpp runs a GGUF: the knobs bench/dev/llama_tuning.py times (docs/runtime-tuning.md).

    ``threads`` 0 means the caller's (or the host's) choice; ``threads_batch`` 0 means the same as ``threads``."""

    threads: int = 0
    threads_batch: int = 0
    n_batch: int = 512
    n_ubatch: int = 512
    flash_attn: bool = False
    kv_type: str = "f16"
    use_mmap: bool = True


# The runtime before issue #18 (kept so the same run can compare: ``--legacy-runtime``).
LEGACY_SETTINGS = LlamaSettings()
# What the runtime uses now: flash attention (no n_ctx × n_ubatch score matrix: smaller compute buffer;
# prefill ×1.15, decode ×1.04 here), a 256-token physical batch (half the compute buffer; prefill ×1.05),
# mmap'd weights, and an f16 KV cache: a q8_0 one halves the cache (12 MB at 1,024 positions on SmolLM2-135M)
# but cost prefill ×0.79 beside flash attention in the same run, so only a profile short of memory asks for it
# (``runtime: {kv_type: q8_0}``). Figures: docs/runtime-tuning.md, bench/results/llama_tuning.json.
FAST_SETTINGS = LlamaSettings(flash_attn=True, kv_type="f16", n_ubatch=256)


QUANT_KV_BLOCK = 32  # a q8_0 block: llama.cpp refuses a quantized KV cache whose head size it does not divide


def kv_type_for(model_path: Path, kv_type: str) -> str:
    """``kv_type``, or f16 where the model's attention heads are too small to quantize (llama.cpp would refuse)."""
    if kv_type == "f16":
        return kv_type
    # imported here: it brings gguf-py (5 MB resident), which a profile on the f16 cache never needs
    from slmforge.gguf_header import read_gguf_header

    try:
        meta = read_gguf_header(model_path).metadata
        arch = meta["general.architecture"]
        heads = int(meta[f"{arch}.attention.head_count"])
        width = int(meta[f"{arch}.embedding_length"])
        dims = (int(meta.get(f"{arch}.attention.key_length", width // heads)),
                int(meta.get(f"{arch}.attention.value_length", width // heads)))
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError, struct.error):
        return kv_type  # llama.cpp will say what is wrong with the file
    return kv_type if all(d % QUANT_KV_BLOCK == 0 for d in dims) else "f16"


def open_llama(model_path: Path, settings: LlamaSettings, n_ctx: int, **extra: Any) -> Any:
    """A ``llama_cpp.Llama`` on ``model_path`` with ``settings`` (the one place its knobs are spelled)."""
    import llama_cpp

    if settings.kv_type not in KV_TYPES:
        raise UserError(f"KV cache type {settings.kv_type!r} is not one of {', '.join(KV_TYPES)}")
    kv = getattr(llama_cpp, f"GGML_TYPE_{kv_type_for(model_path, settings.kv_type)}".upper())
    threads = settings.threads or default_threads()
    n_batch = min(settings.n_batch, n_ctx)
    return llama_cpp.Llama(
        model_path=str(model_path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=min(settings.n_ubatch, n_batch),
        n_threads=threads, n_threads_batch=settings.threads_batch or threads, flash_attn=settings.flash_attn, type_k=kv, type_v=kv,
        use_mmap=settings.use_mmap, verbose=False, **extra,
    )


class LlamaCppBackend:
    """A loaded GGUF model; ``stream`` yields text deltas and stops at the model's end-of-generation token."""

    name = "llama.cpp"

    def __init__(
        self, model_path: Path, n_ctx: int | None = None, threads: int | None = None, chat_template: str | None = None,
        settings: LlamaSettings = FAST_SETTINGS,
    ) -> None:
        self.model_path = Path(model_path)
        ensure_llama_cpp_runs(self.model_path)  # a build that crashes on this CPU: one line, not SIGSEGV
        self.threads = threads or settings.threads or default_threads()
        self.settings = replace(settings, threads=self.threads)
        try:
            self.n_ctx = n_ctx or DEFAULT_N_CTX
            self._llm = open_llama(self.model_path, self.settings, self.n_ctx)
            trained = int(self._llm._model.n_ctx_train())
            if trained and self.n_ctx > trained:  # never run past what the model was trained on
                self._llm.close()
                self.n_ctx = trained
                self._llm = open_llama(self.model_path, self.settings, self.n_ctx)
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
        first = self._llm.tokenize(b"a", add_bos=True, special=False)[:1]
        # starts each perplexity window when the model wants BOS (llama.cpp puts it before every prompt)
        self.bos_id: int | None = first[0] if first and first[0] == self._llm.token_bos() else None
        self._scorer: Any = None  # the logits_all context of ``logits``

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

    def keep_prefix(self, text: str) -> int:
        """Prefill ``text`` now: the next prompt that starts with it evaluates only the rest (``Llama.generate``
        keeps the longest common token prefix of the previous prompt and removes the KV cache after it)."""
        tokens = self.tokenize(text)[: self.n_ctx - 1]
        self._llm.reset()
        if tokens:
            import llama_cpp

            self._llm.eval(tokens)
            # wait for it here: llama.cpp books queued tokens at the next sync, which would put this prefill
            # (and the idle time until the first question) into that question's prefill_ms
            llama_cpp.llama_synchronize(self._llm._ctx.ctx)
        return len(tokens)

    def render_chat(self, messages: list[dict]) -> str:
        return render_chat(self.chat_template, messages, bos_token=self.bos_token, eos_token=self.eos_token)

    def stream(
        self, prompt: str, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
        repeat_penalty: float = 1.0, stop: StopCheck | None = None,
    ) -> ResultStream[GenerationResult]:
        return ResultStream(self._deltas(prompt, max_tokens, temperature, top_p, seed, repeat_penalty, stop))

    def _deltas(
        self, prompt: str, max_tokens: int, temperature: float, top_p: float, seed: int | None, repeat_penalty: float,
        stop: StopCheck | None = None,
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
                if stop is not None and stop(timer.text()):
                    finish = "stop"
                    break
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
        (the generation context keeps the last position's only); made on first use, grown when a longer one comes.
        It keeps an f16 KV cache and no flash attention, so export's quality gate scores as it always has."""
        import numpy as np

        if self._scorer is None or self._scorer.n_ctx() < len(tokens):
            self._close_scorer()
            size = max(2, len(tokens))
            try:
                self._scorer = open_llama(self.model_path, replace(LEGACY_SETTINGS, threads=self.threads, n_batch=size,
                                                                   n_ubatch=size), size,
                                          logits_all=True)
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
