"""The model architectures slmforge imports and exports, as data: one entry per family.

Base import (trainer/) and the GGUF writer (export/) both read this table, so a family is
supported by both or by neither, and the refusal names the same list. Adding a family is one
``Architecture`` entry: its HF ``architectures`` names, llama.cpp's architecture name (tensor
names then come from gguf-py's TensorNameMap for that name), the per-tensor transforms
llama.cpp's kernels expect, and the extra metadata its loader reads (docs/architectures.md).
Plain Python: the table is shared by packages that may not import torch or gguf.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# One extra GGUF metadata entry: key suffix after "<arch>." -> value (int, float, bool, str or list of bool).
HParams = dict[str, Any]


class ArchitectureUnsupported(ValueError):
    """A checkpoint this family's entry cannot write faithfully (the message says which setting)."""


@dataclass(frozen=True)
class Architecture:
    """How one HF model family becomes a GGUF llama.cpp runs with the same logits.

    ``permute_qk``: llama.cpp's Llama rope rotates interleaved pairs, HF rotates halves, so the
    q/k projection rows are reordered (the NeoX-style families need nothing).
    ``norm_shift``: added to every ``*norm.weight``; Gemma's RMSNorm computes x * (1 + w) and
    llama.cpp's computes x * w.
    ``extra_hparams``: config -> the family's own metadata (sliding window, rope bases...);
    it raises ``ArchitectureUnsupported`` for a setting llama.cpp would compute differently.
    """

    gguf_arch: str
    hf_names: tuple[str, ...]
    model_types: tuple[str, ...]
    permute_qk: bool = False
    norm_shift: float = 0.0
    extra_hparams: Callable[[dict[str, Any]], HParams] = field(default=lambda config: {})


def rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """The global layers' rope settings: transformers 5 keeps them in ``rope_parameters`` (per layer
    type for Gemma 3), 4.x in ``rope_theta``/``rope_scaling``."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    params = dict(params.get("full_attention", params))
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    return params


def _gemma3_hparams(config: dict[str, Any]) -> HParams:
    head_dim = int(config.get("head_dim") or 256)
    scalar = config.get("query_pre_attn_scalar", head_dim)
    if scalar != head_dim:
        # llama.cpp scales queries by 1/sqrt(head_dim) (hidden/heads only for the 62-layer 27B)
        raise ArchitectureUnsupported(f"gemma3 with query_pre_attn_scalar {scalar} != head_dim {head_dim}: "
                                      "llama.cpp would scale attention differently")
    if config.get("attn_logit_softcapping") is not None:
        raise ArchitectureUnsupported("gemma3 with attn_logit_softcapping: llama.cpp's gemma3 has none")
    out: HParams = {"attention.key_length": head_dim, "attention.value_length": head_dim}
    layer_types = config.get("layer_types") or []
    if "sliding_attention" in layer_types and config.get("sliding_window"):
        out["attention.sliding_window"] = int(config["sliding_window"])
        pattern = [t == "sliding_attention" for t in layer_types]
        llama_cpp_default = [i % 6 < 5 for i in range(len(layer_types))]  # llama.cpp's gemma3 default: 5 local, 1 global
        if pattern != llama_cpp_default:
            out["attention.sliding_window_pattern"] = pattern
    local = (config.get("rope_parameters") or {}).get("sliding_attention", {}).get(
        "rope_theta", config.get("rope_local_base_freq"))
    if local is not None:
        out["rope.freq_base_swa"] = float(local)
    if config.get("final_logit_softcapping"):
        out["final_logit_softcapping"] = float(config["final_logit_softcapping"])
    return out


def _phi3_hparams(config: dict[str, Any]) -> HParams:
    rope = rope_parameters(config)
    if rope.get("rope_type", "default") not in ("default", None) or rope.get("long_factor"):
        raise ArchitectureUnsupported(f"phi3 with rope scaling {rope.get('rope_type')!r} (long-context "
                                      "factors) is not written yet; only the 4k-context rope is")
    fraction = float(rope.get("partial_rotary_factor", config.get("partial_rotary_factor") or 1.0))
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    return {
        "rope.dimension_count": int(fraction * hidden) // heads,
        "rope.scaling.original_context_length": int(config.get("original_max_position_embeddings")
                                                    or rope.get("original_max_position_embeddings")
                                                    or config["max_position_embeddings"]),
        # llama.cpp reads 0 as "no sliding window" (and ignores any other value for phi3 today)
        "attention.sliding_window": int(config.get("sliding_window") or 0),
    }


ARCHITECTURES: tuple[Architecture, ...] = (
    # Llama 2/3.x, SmolLM2, Mistral; llama3 rope scaling is written as the rope_freqs tensor
    Architecture("llama", ("LlamaForCausalLM", "MistralForCausalLM"), ("llama", "mistral"), permute_qk=True),
    # Qwen 2/2.5: q/k/v biases map by name
    Architecture("qwen2", ("Qwen2ForCausalLM",), ("qwen2",)),
    # Qwen 3: per-head q_norm/k_norm map by name, explicit head_dim
    Architecture("qwen3", ("Qwen3ForCausalLM",), ("qwen3",)),
    # Gemma 3 text: norms +1, the embedding scale is llama.cpp's own, local layers with their own rope base
    Architecture("gemma3", ("Gemma3ForCausalLM",), ("gemma3_text", "gemma3"), norm_shift=1.0,
                 extra_hparams=_gemma3_hparams),
    # Phi-3: fused qkv and gate_up tensors map whole, partial rotary; 4k-context rope only
    Architecture("phi3", ("Phi3ForCausalLM",), ("phi3",), extra_hparams=_phi3_hparams),
)

# GGUF files name the family by general.architecture; Mistral GGUFs say "llama" today, older ones "mistral".
GGUF_ALIASES = {"mistral": "llama"}


def supported_names() -> list[str]:
    """Every HF architecture name we export, for refusals."""
    return [name for arch in ARCHITECTURES for name in arch.hf_names]


def supported_gguf_archs() -> list[str]:
    return [arch.gguf_arch for arch in ARCHITECTURES]


def for_config(config: dict[str, Any]) -> Architecture | None:
    """The entry for an HF config.json (by ``architectures``, else ``model_type``), or None."""
    if not isinstance(config, dict):
        return None
    for name in config.get("architectures") or []:
        for arch in ARCHITECTURES:
            if name in arch.hf_names:
                return arch
    if not config.get("architectures"):
        for arch in ARCHITECTURES:
            if config.get("model_type") in arch.model_types:
                return arch
    return None


def for_gguf(gguf_arch: str | None) -> Architecture | None:
    """The entry for a GGUF's general.architecture, or None."""
    name = GGUF_ALIASES.get(gguf_arch or "", gguf_arch)
    return next((arch for arch in ARCHITECTURES if arch.gguf_arch == name), None)


def unsupported_message(what: str) -> str:
    """The one refusal line import and export both print."""
    return f"architecture {what} is not supported; supported: {', '.join(supported_names())} (docs/architectures.md)"
