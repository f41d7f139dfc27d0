"""Tokenizer repairs a GGUF import needs beyond special ids and flags: user-defined tokens, turn template.

transformers rebuilds a SentencePiece GGUF's tokenizer as BPE with merges recovered from the
vocabulary. llama.cpp first cuts every USER_DEFINED token out of the raw text (longest first)
and only then runs its merges; transformers adds most of those tokens as added tokens but
skips the ones it respells (Gemma's runs of 2–31 spaces, stored as real spaces, looked up as
'▁▁…'). Without them, 32 spaces become 16+16 in HF and 31+'▁…' in llama.cpp; with them the two
agree token for token (Gemma 3 270M: 0 of 270,111 tokens differ on the shipped corpus).

A base (pretrained) Gemma GGUF carries no chat template, but SFT and the runtime need one: the
Gemma turn format is written, with ``<end_of_turn>`` as EOS (as Gemma's instruct GGUFs do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"

# Gemma's turn format. No BOS in the text: llama.cpp adds it when tokenizing (add_bos true), so
# writing it here would double it at run time. A system message is folded into the first user
# turn (Gemma has no system role).
GEMMA_TURN_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set first = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def add_user_defined_tokens(tokenizer: Any, gguf_path: Path) -> list[str]:
    """Add llama.cpp's USER_DEFINED tokens the HF tokenizer lacks as added tokens (same ids)."""
    from llama_cpp import LLAMA_TOKEN_ATTR_USER_DEFINED, Llama
    from tokenizers import AddedToken

    llm = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        vocab = llm._model
        user_defined = [i for i in range(vocab.n_vocab()) if vocab.token_get_attr(i) & LLAMA_TOKEN_ATTR_USER_DEFINED]
    finally:
        llm.close()
    have = set(tokenizer.added_tokens_decoder)
    missing = [i for i in user_defined if i not in have]
    if not missing:
        return []
    size = len(tokenizer)
    # normalized=True: the HF vocabulary spells these after the normalizer (' ' -> '▁'), so they must match there
    tokenizer.add_tokens([AddedToken(tokenizer.convert_ids_to_tokens(i), normalized=True, special=False)
                          for i in missing])
    if len(tokenizer) != size:
        raise ValueError(f"adding {len(missing)} user-defined tokens grew the vocabulary from {size} to {len(tokenizer)}")
    return [(f"user-defined tokens: {len(missing)} of llama.cpp's {len(user_defined)} added as whole tokens "
            f"(e.g. {tokenizer.convert_ids_to_tokens(missing[0])!r})")]


def add_turn_template(tokenizer: Any, meta: dict[str, Any]) -> list[str]:
    """A GGUF without a chat template whose vocabulary has Gemma's turn tokens gets Gemma's turn format."""
    if meta.get("chat_template") or tokenizer.chat_template:
        return []
    vocab = tokenizer.get_vocab()
    if START_OF_TURN not in vocab or END_OF_TURN not in vocab:
        return []
    tokenizer.chat_template = GEMMA_TURN_TEMPLATE
    changes = ["chat_template: none in the GGUF -> Gemma turn format"]
    if tokenizer.eos_token != END_OF_TURN:
        changes.append(f"eos_token: {tokenizer.eos_token!r} -> {END_OF_TURN!r} (ends a turn)")
        tokenizer.eos_token = END_OF_TURN
    return changes
