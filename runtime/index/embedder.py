"""Sentence embeddings on the device: an ONNX encoder (onnxruntime) plus a tokenizers tokenizer.

The folder is what ``slmforge.export.embedder.export_embedder`` writes: ``model.onnx``,
``tokenizer.json`` and ``embedder.json`` (name, dim, max_tokens, pooling, normalize).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from slmforge.runtime.bundle.reader import resolve_inside

from slmforge.errors import UserError
from slmforge.manifest import EmbedderInfo

EMBEDDER_CONFIG = "embedder.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
BATCH = 32


def token_counter(tokenizer_file: Path):
    """Word pieces of a text without [CLS]/[SEP] and without truncation: what the chunker sizes chunks by."""
    from tokenizers import Tokenizer

    counter = Tokenizer.from_file(str(tokenizer_file))
    counter.no_padding()
    counter.no_truncation()
    return lambda text: len(counter.encode(text, add_special_tokens=False).ids)


def read_embedder_info(directory: Path) -> EmbedderInfo:
    path = Path(directory) / EMBEDDER_CONFIG
    if not path.is_file():
        raise UserError(f"{directory}: no {EMBEDDER_CONFIG}; is this an embedder folder from 'slmforge export'?")
    try:
        return EmbedderInfo.model_validate(json.loads(path.read_text()))
    except ValueError as exc:
        raise UserError(f"{path}: not a valid embedder config ({exc.__class__.__name__})") from None


class Embedder:
    """Embed texts into L2-normalized float32 vectors (mean pooling over real tokens)."""

    def __init__(self, dir: Path, threads: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.dir = Path(dir)
        self.info = read_embedder_info(self.dir)
        self.dim = int(self.info.dim)
        self.max_tokens = int(self.info.max_tokens)
        model_file = resolve_inside(self.dir, getattr(self.info, "model_file", MODEL_FILE), "embedder.json's model_file")
        for needed in (model_file, self.dir / TOKENIZER_FILE):
            if not needed.is_file():
                raise UserError(f"{needed}: missing from the embedder folder; re-export or re-bundle")
        self.tokenizer = Tokenizer.from_file(str(self.dir / TOKENIZER_FILE))
        self._count = token_counter(self.dir / TOKENIZER_FILE)
        self.tokenizer.enable_truncation(max_length=self.max_tokens)
        pad_id = self.tokenizer.token_to_id("[PAD]") or 0
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token="[PAD]")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Spinning worker threads burn the CPU the generator needs between calls (and collapse on a busy host).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise UserError(f"{model_file}: onnxruntime could not load the embedder ({exc})") from None
        self._inputs = {i.name for i in self.session.get_inputs()}

    def count_tokens(self, text: str) -> int:
        """Word pieces in ``text`` without the [CLS]/[SEP] markers and without truncation."""
        return self._count(text)

    def embed(self, texts: list[str]) -> np.ndarray:
        """``len(texts) × dim`` float32, each row of unit length; batches shortest-first to pad little."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), BATCH):
            idx = order[start : start + BATCH]
            out[idx] = self._embed_batch([texts[i] for i in idx])
        return out

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(None, feeds)[0]
        if self.info.pooling == "cls":
            pooled = hidden[:, 0, :]
        else:
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        if self.info.normalize:
            pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled.astype(np.float32)
