"""Tiny random Llama checkpoints for tests: real (small) BPE tokenizer, random weights.

Built from a config in about a second, so the unit suite never needs the real
model. The tokenizer mirrors SmolLM2's conventions (ChatML special tokens,
byte-level BPE, ``<|im_end|>`` as EOS) so every stage meets the same edge cases.
"""

from __future__ import annotations

from pathlib import Path

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
