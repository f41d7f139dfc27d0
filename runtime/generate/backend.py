"""One small generation interface over llama.cpp (GGUF) and onnxruntime-genai (ONNX).

The engine and the server only see ``Backend``; which library runs the model is
decided once, by the model artifact's format.
"""

from __future__ import annotations

import codecs
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from slmforge.runtime.generate.result_stream import ResultStream

from slmforge.errors import UserError

if TYPE_CHECKING:
    import numpy as np


@dataclass
class GenerationResult:
    """What one generation produced and how long each phase took."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    prefill_ms: float
    ttft_ms: float
    decode_tok_s: float
    total_ms: float
    finish_reason: Literal["stop", "length"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Backend(Protocol):
    name: str
    n_ctx: int

    def tokenize(self, text: str) -> list[int]: ...

    def render_chat(self, messages: list[dict]) -> str: ...

    def stream(
        self, prompt: str, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
        repeat_penalty: float = 1.0, stop: StopCheck | None = None,
    ) -> ResultStream[GenerationResult]:
        """Text deltas as they are decoded; the stream's ``result`` is the GenerationResult once it ends.
        ``stop`` sees the text so far after each delta: True ends the answer there (finish reason "stop")."""
        ...

    def generate(self, prompt: str, **kw: Any) -> GenerationResult: ...

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Next-token logits at every position of ``tokens`` (row i predicts token i + 1), float32 (len, vocab):
        held-out perplexity and export's quality gate score an artifact through the runtime that will run it."""
        ...

    def close(self) -> None: ...


def default_threads() -> int:
    """Physical-ish cores of the host (llama.cpp is slower with hyperthreads)."""
    try:
        import psutil

        return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except Exception:  # noqa: BLE001 - psutil cannot read cores in some sandboxes
        return max(1, os.cpu_count() or 1)


StopCheck = Callable[[str], bool]


@dataclass
class StreamTimer:
    """Turns token ids into text deltas and timings; shared by both backends.

    Token bytes are decoded incrementally so a multi-byte character split over
    two tokens is never emitted half.
    """

    prompt_tokens: int
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    completion_tokens: int = 0
    parts: list[str] = field(default_factory=list)
    _decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))

    def add(self, token_bytes: bytes) -> str:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.completion_tokens += 1
        delta = self._decoder.decode(token_bytes)
        if delta:
            self.parts.append(delta)
        return delta

    def text(self) -> str:
        return "".join(self.parts)

    def flush(self) -> str:
        delta = self._decoder.decode(b"", final=True)
        if delta:
            self.parts.append(delta)
        return delta

    def result(self, finish_reason: Literal["stop", "length"], prefill_ms: float | None = None) -> GenerationResult:
        end = time.perf_counter()
        first = self.first_token_at or end
        ttft_ms = (first - self.started) * 1000
        decode_s = end - first
        decoded_after_first = max(0, self.completion_tokens - 1)
        return GenerationResult(
            text="".join(self.parts),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            prefill_ms=round(prefill_ms if prefill_ms is not None else ttft_ms, 2),
            ttft_ms=round(ttft_ms, 2),
            decode_tok_s=round(decoded_after_first / decode_s, 2) if decode_s > 0 and decoded_after_first else 0.0,
            total_ms=round((end - self.started) * 1000, 2),
            finish_reason=finish_reason,
        )


def check_prompt_fits(prompt_tokens: int, max_tokens: int, n_ctx: int) -> None:
    """A prompt that leaves no room for one new token cannot run: say so in one line."""
    if prompt_tokens >= n_ctx:
        raise UserError(
            f"the prompt is {prompt_tokens} tokens but the model's context window is {n_ctx}; "
            "shorten the question or the history, or use fewer retrieved chunks (--k)"
        )


def load_backend(
    model_path: Path,
    n_ctx: int | None = None,
    threads: int | None = None,
    chat_template: str | None = None,
    llama_settings: Any = None,
) -> Backend:
    """A backend for ``model_path``: a ``.gguf`` file → llama.cpp, an ONNX folder → onnxruntime-genai.

    ``llama_settings`` (``llamacpp.LlamaSettings``) says how llama.cpp runs a GGUF; default: the tuned ones."""
    path = Path(model_path)
    if path.is_file() and path.suffix == ".gguf":
        from slmforge.runtime.generate.llamacpp import FAST_SETTINGS, LlamaCppBackend

        return LlamaCppBackend(path, n_ctx=n_ctx, threads=threads, chat_template=chat_template,
                               settings=llama_settings or FAST_SETTINGS)
    if path.is_dir() and (path / "genai_config.json").is_file():
        from slmforge.runtime.generate.onnx_genai import OnnxGenaiBackend

        return OnnxGenaiBackend(path, n_ctx=n_ctx, threads=threads, chat_template=chat_template)
    if not path.exists():
        raise UserError(f"{path}: model not found")
    raise UserError(
        f"{path}: not a model this runtime can run; expected a .gguf file or an ONNX folder with genai_config.json"
    )
