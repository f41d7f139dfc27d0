"""HF checkpoint (safetensors) -> GGUF in F32/F16/BF16, written with gguf-py's GGUFWriter.

Why our own writer rather than llama.cpp's converter: the converter is a script tied to a
llama.cpp checkout, it guesses the pre-tokenizer from a hash of known tokenizers, and it is
where exported models usually go wrong (EOS, BOS, chat template). Here every tokenizer fact
comes from the checkpoint's own files, and the result is checked against the HF tokenizer.
Tensor names come from gguf-py's TensorNameMap; llama.cpp's rotary layout for Llama needs the
Q/K rows of each head reordered from HF's half-split into interleaved pairs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from slmforge.export.files import temp_sibling
from slmforge.export.gguf_spm_vocab import adds_space_prefix, is_spm_style, read_spm_vocab

from slmforge.architectures import (
    Architecture,
    ArchitectureUnsupported,
    for_config,
    rope_parameters,
    unsupported_message,
)
from slmforge.errors import UserError

OUT_TYPES = ("F32", "F16", "BF16")

# The split regexes of the two byte-level BPE families we know, as published in their tokenizer.json.
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass
class GGUFResult:
    path: Path
    out_type: str
    architecture: str
    pre_tokenizer: str
    tensors: int
    parameters: int
    seconds: float


def load_config(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / "config.json"
    if not path.is_file():
        raise UserError(f"{checkpoint}: not an HF checkpoint (config.json missing); pass a folder from "
                        "'slmforge base import', 'train' or 'merge'")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def architecture_of(config: dict[str, Any], where: Path) -> Architecture:
    """The table entry (slmforge/architectures.py) for an HF config, or a one-line refusal."""
    arch = for_config(config)
    if arch is None:
        what = config.get("architectures") or config.get("model_type")
        raise UserError(f"{where}: {unsupported_message(str(what))}")
    extra_hparams(arch, config, where)  # a setting llama.cpp would compute differently refuses here, before any work
    return arch


def extra_hparams(arch: Architecture, config: dict[str, Any], where: Path) -> dict[str, Any]:
    try:
        return arch.extra_hparams(config)
    except ArchitectureUnsupported as exc:
        raise UserError(f"{where}: {exc}; not exported, since llama.cpp would not compute what transformers does") from None


def rope_theta(config: dict[str, Any]) -> float:
    return float(rope_parameters(config)["rope_theta"])


def rope_scaling(config: dict[str, Any]) -> dict[str, Any] | None:
    """The global layers' rope scaling, None for plain rope."""
    params = rope_parameters(config)
    kind = params.get("rope_type", params.get("type", "default"))
    return None if kind in (None, "default") else params


def head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


# ---------------------------------------------------------------------------- tensors


def safetensor_files(checkpoint: Path) -> list[Path]:
    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [checkpoint / s for s in shards]
    single = checkpoint / "model.safetensors"
    if single.is_file():
        return [single]
    raise UserError(f"{checkpoint}: no model.safetensors (or sharded index) found; save the model with "
                    "save_pretrained(safe_serialization=True)")


def iter_hf_tensors(checkpoint: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 array) for every tensor in the checkpoint's safetensors files."""
    from safetensors import SafetensorError, safe_open

    for file in safetensor_files(checkpoint):
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                    yield name, handle.get_tensor(name).float().numpy()
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{file}: unreadable safetensors file ({exc}); re-save or re-download the checkpoint") from None


def rotary_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """HF stores each head's rotary dims as two halves; llama.cpp's Llama kernel expects them
    interleaved in pairs. Reorder the output rows of a q/k projection accordingly."""
    rows = weight.shape[0]
    per_head = rows // n_heads
    grouped = weight.reshape(n_heads, 2, per_head // 2, *weight.shape[1:])
    return np.ascontiguousarray(grouped.swapaxes(1, 2).reshape(weight.shape))


def _llama3_rope_freqs(config: dict[str, Any], params: dict[str, Any]) -> np.ndarray:
    """Per-frequency divisors for Llama 3.1+ 'llama3' rope scaling (Meta's published rule)."""
    dim = head_dim(config)
    base = rope_theta(config)
    factor = float(params.get("factor", 8.0))
    low = float(params.get("low_freq_factor", 1.0))
    high = float(params.get("high_freq_factor", 4.0))
    old_ctx = float(params.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    divisors = []
    for i in range(0, dim, 2):
        freq = 1.0 / (base ** (i / dim))
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            divisors.append(1.0)
        elif wavelen > low_wavelen:
            divisors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            divisors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(divisors, dtype=np.float32)


def _gguf_tensor_type(gguf_name: str, array: np.ndarray, out_type: str):
    """Norms, biases and other 1-D tensors stay F32 (llama.cpp's kernels expect that)."""
    from gguf import GGMLQuantizationType as Q

    if array.ndim <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return Q.F32
    return {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16}[out_type]


# ---------------------------------------------------------------------------- tokenizer


def detect_pre_tokenizer(tokenizer_json: dict[str, Any], where: Path) -> str:
    """llama.cpp's pre-tokenizer name from the tokenizer.json pre-tokenizer structure.

    llama.cpp hashes the tokens of a check string to recognise known tokenizers; we read
    the structure instead, which also works for a tokenizer no one has registered yet.
    """
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds and kinds[0] == "Split" and kinds[-1] == "ByteLevel":
        regex = (steps[0].get("pattern") or {}).get("Regex")
        if regex == _LLAMA3_REGEX:
            return "llama-bpe"
        if regex == _QWEN2_REGEX:
            return "qwen2"
    raise UserError(f"{where}/tokenizer.json: pre-tokenizer {kinds or 'none'} is not one llama.cpp knows "
                    "(gpt-2, smollm, llama-bpe, qwen2); a wrong guess would tokenize differently, so stopping")


def _tokenizer_json(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{checkpoint}: tokenizer.json missing; only fast (tokenizers) BPE tokenizers are supported")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def read_vocab(checkpoint: Path, vocab_size: int, data: dict[str, Any] | None = None) -> tuple[list[str], list[int], str]:
    """Tokens, llama.cpp token types and pre-tokenizer name from a byte-level BPE tokenizer.json."""
    from gguf import TokenType

    path = checkpoint / "tokenizer.json"
    data = data if data is not None else _tokenizer_json(checkpoint)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(f"{path}: tokenizer model {model.get('type')!r} is not BPE; only BPE tokenizers are supported")
    by_id: dict[int, tuple[str, int]] = {i: (t, TokenType.NORMAL) for t, i in model["vocab"].items()}
    for added in data.get("added_tokens", []):
        kind = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
        by_id[int(added["id"])] = (added["content"], kind)
    if max(by_id) >= vocab_size:
        raise UserError(f"{path}: token id {max(by_id)} is outside the model's vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        token, kind = by_id.get(i, (f"[PAD{i}]", TokenType.UNUSED))
        tokens.append(token)
        types.append(int(kind))
    return tokens, types, detect_pre_tokenizer(data, checkpoint)


def _add_vocab(writer: Any, checkpoint: Path, vocab_size: int) -> tuple[str, bool]:
    """The token list in llama.cpp's form: "llama" (SentencePiece-style: Gemma, Llama 2, Phi-3) or "gpt2"
    (byte-level BPE); returns (pre-tokenizer name, whether BPE merges belong in the file)."""
    data = _tokenizer_json(checkpoint)
    if is_spm_style(data):
        tokens, scores, types = read_spm_vocab(data, vocab_size, checkpoint / "tokenizer.json")
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_add_space_prefix(adds_space_prefix(data))
        return "default", False
    tokens, types, pre = read_vocab(checkpoint, vocab_size, data)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    return pre, True


def _add_tokenizer(writer: Any, checkpoint: Path, config: dict[str, Any]) -> str:
    from gguf import SpecialVocab

    pre, with_merges = _add_vocab(writer, checkpoint, int(config["vocab_size"]))
    special = SpecialVocab(checkpoint, load_merges=with_merges, n_vocab=int(config["vocab_size"]))
    if with_merges and not special.merges:
        raise UserError(f"{checkpoint}/tokenizer.json: no BPE merges found; the tokenizer file is incomplete")
    tok_cfg_path = checkpoint / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text()) if tok_cfg_path.is_file() else {}
    # SpecialVocab leaves add_bos/add_eos unset when tokenizer_config.json omits them;
    # llama.cpp would then fall back to its own default (add BOS), so write them explicitly.
    special.add_special_token.setdefault("bos", bool(tok_cfg.get("add_bos_token", False)))
    special.add_special_token.setdefault("eos", bool(tok_cfg.get("add_eos_token", False)))
    if special.chat_template is None and (checkpoint / "chat_template.jinja").is_file():
        special.chat_template = (checkpoint / "chat_template.jinja").read_text()
    special.add_to_gguf(writer, quiet=True)
    return pre


# ---------------------------------------------------------------------------- hyperparameters


def _add_hparams(writer: Any, config: dict[str, Any], arch: Architecture, out_type: str, where: Path) -> None:
    from gguf import LlamaFileType, RopeScalingType

    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or config["num_attention_heads"]))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_rope_freq_base(rope_theta(config))
    extra = extra_hparams(arch, config, where)
    if "rope.dimension_count" not in extra:
        writer.add_rope_dimension_count(head_dim(config))
    if head_dim(config) != config["hidden_size"] // config["num_attention_heads"] and "attention.key_length" not in extra:
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
    writer.add_vocab_size(int(config["vocab_size"]))
    scaling = rope_scaling(config)
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind == "linear":
            writer.add_rope_scaling_type(RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(scaling["factor"]))
        elif kind != "llama3":  # llama3 is written as the rope_freqs tensor
            raise UserError(f"rope scaling {kind!r} is not supported for GGUF export (supported: default, linear, llama3)")
    for key, value in extra.items():
        _add_value(writer, f"{arch.gguf_arch}.{key}", value)
    writer.add_file_type({"F32": LlamaFileType.ALL_F32, "F16": LlamaFileType.MOSTLY_F16,
                          "BF16": LlamaFileType.MOSTLY_BF16}[out_type])


def _add_value(writer: Any, key: str, value: Any) -> None:
    """One table-given metadata entry, typed the way llama.cpp's loader reads it (counts as uint32)."""
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, list):
        writer.add_array(key, value)  # gguf-py types the elements (bool for a sliding-window pattern)
    else:
        writer.add_string(key, str(value))


# ---------------------------------------------------------------------------- driver


def _gguf_tensors(checkpoint: Path, config: dict[str, Any], arch: Architecture) -> Iterator[tuple[str, np.ndarray]]:
    """(gguf name, array) in checkpoint order, renamed and transformed as the table says, tied heads dropped."""
    import gguf

    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch.gguf_arch)
    name_map = gguf.get_tensor_name_map(arch_enum, int(config["num_hidden_layers"]))
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    tied = bool(config.get("tie_word_embeddings", False))
    scaling = rope_scaling(config)
    if scaling is not None and scaling.get("rope_type", scaling.get("type")) == "llama3":
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", _llama3_rope_freqs(config, scaling)
    for name, array in iter_hf_tensors(checkpoint):
        if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue
        new_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise UserError(f"{checkpoint}: tensor {name!r} has no GGUF name for architecture {arch.gguf_arch}; "
                            "the checkpoint does not look like a plain causal LM")
        if arch.permute_qk and name.endswith("q_proj.weight"):
            array = rotary_permute(array, n_head)
        elif arch.permute_qk and name.endswith("k_proj.weight"):
            array = rotary_permute(array, n_kv)
        if arch.norm_shift and name.endswith("norm.weight"):
            array = array + np.float32(arch.norm_shift)
        yield new_name, array


def write_gguf(checkpoint: str | Path, out_path: str | Path, out_type: str = "F16",
               source_sha256: str | None = None, progress: bool = True) -> GGUFResult:
    """Convert an HF checkpoint to one GGUF file; written under a temp name, renamed at the end."""
    import gguf

    started = time.perf_counter()
    checkpoint, out_path = Path(checkpoint), Path(out_path)
    out_type = out_type.upper()
    if out_type not in OUT_TYPES:
        raise UserError(f"unknown GGUF float type {out_type!r}; choose one of {', '.join(OUT_TYPES)} "
                        "(quantized types come from 'quantize' after an F16 export)")
    config = load_config(checkpoint)
    arch = architecture_of(config, checkpoint)
    with temp_sibling(out_path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch.gguf_arch)
        writer.add_name(config.get("_name_or_path") or checkpoint.name)
        writer.add_string("slmforge.source.path", str(checkpoint.resolve()))
        if source_sha256:
            writer.add_string("slmforge.source.sha256", source_sha256)
        _add_hparams(writer, config, arch, out_type, checkpoint)
        pre = _add_tokenizer(writer, checkpoint, config)
        count = params = 0
        for gguf_name, array in _gguf_tensors(checkpoint, config, arch):
            qtype = _gguf_tensor_type(gguf_name, array, out_type)
            data = gguf.quants.quantize(array.astype(np.float32), qtype)
            writer.add_tensor(gguf_name, data, raw_dtype=qtype)
            count += 1
            params += array.size
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=progress)
        writer.close()
    return GGUFResult(out_path, out_type, arch.gguf_arch, pre, count, params, round(time.perf_counter() - started, 2))
