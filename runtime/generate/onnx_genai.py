"""ONNX generation through onnxruntime-genai (the folder its model builder writes)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmforge.runtime.bundle.reader import resolve_inside
from slmforge.runtime.generate.backend import (
    GenerationResult,
    StopCheck,
    StreamTimer,
    check_prompt_fits,
    default_threads,
)
from slmforge.runtime.generate.chat_template import render_chat
from slmforge.runtime.generate.result_stream import ResultStream

from slmforge.errors import UserError

if TYPE_CHECKING:
    import numpy as np

DEFAULT_N_CTX = 2048


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def _file_names(config: Any) -> list[Any]:
    """Every ``filename`` value anywhere in a genai_config (decoder, embeddings, vision...)."""
    if isinstance(config, dict):
        own = [config["filename"]] if "filename" in config else []
        return own + [n for value in config.values() for n in _file_names(value)]
    if isinstance(config, list):
        return [n for value in config for n in _file_names(value)]
    return []


class OnnxGenaiBackend:
    """A loaded onnxruntime-genai model; same contract as the llama.cpp backend."""

    name = "onnxruntime-genai"

    def __init__(
        self, model_dir: Path, n_ctx: int | None = None, threads: int | None = None, chat_template: str | None = None
    ) -> None:
        import onnxruntime_genai as og

        self.model_dir = Path(model_dir)
        self.threads = threads or default_threads()
        genai = _read_json(self.model_dir / "genai_config.json")
        for name in _file_names(genai):  # onnxruntime-genai opens them: none may lead out of the folder
            resolve_inside(self.model_dir, name, "genai_config.json's 'filename'")
        model_cfg = genai.get("model", {})
        trained = int(model_cfg.get("context_length") or DEFAULT_N_CTX)
        self.n_ctx = min(n_ctx or DEFAULT_N_CTX, trained)
        eos = model_cfg.get("eos_token_id", [])
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.eos_id: int | None = min(self.eos_ids) if self.eos_ids else None  # ends each held-out text (perplexity)
        try:
            config = og.Config(str(self.model_dir))
            self._set_threads(genai, config)
            self._model = og.Model(config)
            self._tokenizer = og.Tokenizer(self._model)
        except Exception as exc:  # noqa: BLE001 - onnxruntime-genai raises plain RuntimeError/OrtException
            raise UserError(f"{self.model_dir}: onnxruntime-genai cannot load this model ({exc}); re-export it") from None
        tok_cfg = _read_json(self.model_dir / "tokenizer_config.json")
        template_file = self.model_dir / "chat_template.jinja"
        self.chat_template = chat_template or tok_cfg.get("chat_template") or (
            template_file.read_text() if template_file.is_file() else None)
        self.bos_token = _token_str(tok_cfg.get("bos_token"))
        self.eos_token = _token_str(tok_cfg.get("eos_token"))

    def _set_threads(self, genai: dict[str, Any], config: Any) -> None:
        session = genai.get("model", {}).get("decoder", {}).get("session_options", {})
        if "intra_op_num_threads" in session:
            return
        # the CPU provider takes no provider options (0.18 refuses the model): set the session's threads;
        # older onnxruntime-genai has no overlay, and threads then come from the config file only
        with contextlib.suppress(Exception):
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": self.threads, "inter_op_num_threads": 1}}}}))

    def tokenize(self, text: str) -> list[int]:
        return [int(t) for t in self._tokenizer.encode(text)]

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
        import onnxruntime_genai as og

        tokens = self.tokenize(prompt)
        check_prompt_fits(len(tokens), max_tokens, self.n_ctx)
        budget = max(1, min(max_tokens, self.n_ctx - len(tokens)))
        params = og.GeneratorParams(self._model)
        options: dict[str, Any] = {"max_length": len(tokens) + budget, "do_sample": temperature > 0}
        if temperature > 0:
            options.update(temperature=temperature, top_p=top_p, top_k=0)
        if repeat_penalty != 1.0:
            options["repetition_penalty"] = repeat_penalty
        if seed is not None:
            options["random_seed"] = int(seed)
        params.set_search_options(**options)
        generator = og.Generator(self._model, params)
        timer = StreamTimer(prompt_tokens=len(tokens))
        generator.append_tokens(tokens)
        finish = "length"
        decoder = self._tokenizer.create_stream()
        while not generator.is_done():
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in self.eos_ids:
                finish = "stop"
                break
            delta = decoder.decode(token)
            timer.add(delta.encode("utf-8"))
            if delta:
                yield delta
                if stop is not None and stop(timer.text()):
                    finish = "stop"
                    break
            if timer.completion_tokens >= budget:
                break
        del generator
        return timer.result(finish)

    def generate(self, prompt: str, **kw: Any) -> GenerationResult:
        return self.stream(prompt, **kw).drain()

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Logits of every position: one prefill of ``tokens`` in a fresh generator, its logits output read back."""
        import numpy as np
        import onnxruntime_genai as og

        params = og.GeneratorParams(self._model)
        params.set_search_options(max_length=len(tokens) + 1, do_sample=False)
        generator = og.Generator(self._model, params)
        generator.append_tokens(np.asarray(tokens, dtype=np.int32))
        out = np.array(generator.get_output("logits"), dtype=np.float32)[0, : len(tokens)]
        del generator
        return out

    def close(self) -> None:
        self._model = None
        self._tokenizer = None


def _token_str(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return str(value or "")
