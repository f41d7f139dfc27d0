"""Tiny random Llama checkpoints for tests: real (small) BPE tokenizer, random weights.

Built from a config in about a second, so the unit suite never needs the real
model. The tokenizer mirrors SmolLM2's conventions (ChatML special tokens,
byte-level BPE, ``<|im_end|>`` as EOS) so every stage meets the same edge cases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# SmolLM2's shape: ChatML that opens with a default system turn when the messages bring none.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_SEED_TEXT = """
Python is a programming language that lets you work quickly and integrate systems more effectively.
How do I copy a file? Use shutil.copy() or shutil.copyfile() from the shutil module.
How do I read a text file line by line? Open it with open() and iterate over the file object.
Lists are mutable sequences; tuples are immutable. Dictionaries map keys to values.
The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { } < > : ; , . ! ? ' " #
Exceptions are raised with raise and handled with try and except clauses.
A module is a file containing Python definitions and statements.
"""


def build_tiny_tokenizer(vocab_size: int = 384, corpus: list[str] | None = None):
    """A byte-level BPE tokenizer trained in well under a second; returns PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((corpus or _SEED_TEXT.strip().splitlines()) * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
        additional_special_tokens=SPECIAL_TOKENS,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def build_tiny_checkpoint(out_dir: str | Path, seed: int = 0, num_layers: int = 2, hidden_size: int = 64) -> Path:
    """Write a tiny random Llama HF checkpoint (safetensors + tokenizer + slmforge.json) to ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from slmforge.manifest import ArtifactManifest

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    ArtifactManifest(
        kind="checkpoint",
        stage="tiny",
        seed=seed,
        params={"num_layers": num_layers, "hidden_size": hidden_size, "vocab_size": len(tokenizer)},
    ).write(out)
    return out


# ---------------------------------------------------------------------------- the architecture matrix
# One random checkpoint per family in slmforge/architectures.py (tests/test_arch_matrix.py): each is
# the family's transformers config at test size with what makes the family different switched on:
# Gemma 3's sliding-window layers with a window shorter than the test text and a global layer among
# them, Phi-3's partial rotary, Qwen's biases. Norm weights and biases are randomized after init
# (transformers starts them at 1, 0 or, for Gemma, 0 meaning 1), so a lost norm shift or bias shows.

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


def build_tiny_arch_checkpoint(out_dir: str | Path, hf_name: str, seed: int = 0, hidden_size: int = 64,
                               tokenizer_dir: Path | None = None, **shape: Any) -> Path:
    """Write a random ``hf_name`` checkpoint to ``out_dir``: tiny by default, with the tiny BPE tokenizer
    or the one in ``tokenizer_dir``; ``shape`` overrides config fields (docs/architectures.md builds a
    real-size one this way to time our writer against llama.cpp's converter)."""
    import torch
    import transformers

    config_cls, model_cls, overrides = TINY_SHAPES[hf_name]
    if tokenizer_dir is not None:
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    else:
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
    settings.update(shape)
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
