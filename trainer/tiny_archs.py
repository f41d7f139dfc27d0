"""Tiny random checkpoints of every family in slmforge/architectures.py, for the architecture matrix.

Each shape is the family's transformers config at test size (a few layers, width 64) with the
features that make the family different switched on: Gemma 3's sliding-window layers with a
window shorter than the test text and a global layer among them, Phi-3's partial rotary, Qwen's
biases. Norm weights and biases are randomized after init (transformers starts them at 1, 0
or, for Gemma, 0 meaning 1), so a lost norm shift or bias changes the logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmforge.trainer.tiny import build_tiny_tokenizer

# HF architecture name -> (transformers config class, model class, config overrides)
TINY_SHAPES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "LlamaForCausalLM": ("LlamaConfig", "LlamaForCausalLM", {}),
    "MistralForCausalLM": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "Qwen2ForCausalLM": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "Qwen3ForCausalLM": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}),
    "Gemma3ForCausalLM": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                          {"num_hidden_layers": 6, "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 16,
                           "rms_norm_eps": 1e-6}),
    "Phi3ForCausalLM": ("Phi3Config", "Phi3ForCausalLM",
                        {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
                         "original_max_position_embeddings": 512}),
}


def build_tiny_arch_checkpoint(out_dir: str | Path, hf_name: str, seed: int = 0, hidden_size: int = 64) -> Path:
    """Write a tiny random ``hf_name`` checkpoint with the tiny BPE tokenizer to ``out_dir``."""
    import torch
    import transformers

    config_cls, model_cls, overrides = TINY_SHAPES[hf_name]
    tokenizer = build_tiny_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer), "hidden_size": hidden_size, "intermediate_size": hidden_size * 2,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
        "initializer_range": 0.15,  # sharp attention, so a wrong rope layout or window shows in the logits
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|im_start|>"), "eos_token_id": eos, "pad_token_id": eos,
    }
    settings.update(overrides)
    config = getattr(transformers, config_cls)(**settings)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0 if hf_name.startswith("Gemma") else 1.0, 0.2)
            elif name.endswith(".bias"):
                param.normal_(0.0, 0.5)
    model.generation_config.eos_token_id = eos
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
