"""SentencePiece-style vocabularies (Gemma, Llama 2, Phi-3) from a tokenizer.json, for llama.cpp's "llama" tokenizer.

These tokenizers are BPE with byte fallback over '▁'-marked text. llama.cpp's SPM tokenizer merges
the adjacent pair whose merged token has the highest score, so the scores must reproduce the
merge order of tokenizer.json: a token made by merge rank r scores -r (gguf-py's LlamaHfVocab
writes -1000 for every token, which leaves the merge order to chance). Tokens no merge makes
(characters, bytes, specials) score 0; llama.cpp never ranks them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from slmforge.errors import UserError

_BYTE_TOKEN = re.compile(r"^<0x[0-9A-F]{2}>$")


def is_spm_style(tokenizer_json: dict[str, Any]) -> bool:
    """BPE with byte fallback and '▁' for spaces (a normalizer Replace or a Metaspace pre-tokenizer)."""
    model = tokenizer_json.get("model") or {}
    return model.get("type") == "BPE" and bool(model.get("byte_fallback")) and "▁" in _space_steps(tokenizer_json)


def _space_steps(tokenizer_json: dict[str, Any]) -> str:
    """The normalizer and pre-tokenizer as text: enough to see '▁' and a prepend."""
    import json

    return json.dumps([tokenizer_json.get("normalizer"), tokenizer_json.get("pre_tokenizer")], ensure_ascii=False)


def adds_space_prefix(tokenizer_json: dict[str, Any]) -> bool:
    """Llama 2 / Phi-3 prepend '▁' to the text (normalizer Prepend, or Metaspace with a prepend scheme); Gemma does not."""
    steps = _space_steps(tokenizer_json)
    if '"Prepend"' in steps:
        return True
    pre = tokenizer_json.get("pre_tokenizer") or {}
    metas = [p for p in pre.get("pretokenizers", [pre]) if p.get("type") == "Metaspace"]
    return any(m.get("prepend_scheme", "always" if m.get("add_prefix_space", True) else "never") != "never" for m in metas)


def read_spm_vocab(tokenizer_json: dict[str, Any], vocab_size: int, where: Path) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and llama.cpp token types for ``vocab_size`` ids (missing ids are UNUSED pads)."""
    from gguf import TokenType

    model = tokenizer_json["model"]
    rank: dict[str, int] = {}
    for r, merge in enumerate(model.get("merges") or []):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        rank.setdefault(left + right, r)
    by_id: dict[int, tuple[str, float, int]] = {}
    for token, i in model["vocab"].items():
        if _BYTE_TOKEN.match(token):
            kind = TokenType.BYTE
        elif token == model.get("unk_token"):
            kind = TokenType.UNKNOWN
        else:
            kind = TokenType.NORMAL
        by_id[int(i)] = (token, -float(rank[token]) if token in rank else 0.0, kind)
    for added in tokenizer_json.get("added_tokens", []):
        i = int(added["id"])
        if by_id.get(i, ("", 0.0, 0))[2] in (TokenType.BYTE, TokenType.UNKNOWN):
            continue
        kind = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
        content = added["content"]
        if kind == TokenType.USER_DEFINED and added.get("normalized"):
            # matched after the normalizer (' ' -> '▁') in HF; llama.cpp matches user-defined tokens in the raw
            # text and prints them as stored, so it needs the spaces (as Gemma's own GGUF stores its space runs)
            content = content.replace("▁", " ")
        by_id[i] = (content, -1000.0, kind)
    if max(by_id) >= vocab_size:
        raise UserError(f"{where}: token id {max(by_id)} is outside the model's vocab_size {vocab_size}")
    if sum(1 for _, _, kind in by_id.values() if kind == TokenType.BYTE) != 256:
        raise UserError(f"{where}: byte-fallback tokenizer without the 256 <0xXX> byte tokens; llama.cpp could not "
                        "encode unseen characters, so stopping")
    tokens, scores, types = [], [], []
    for i in range(vocab_size):
        token, score, kind = by_id.get(i, (f"[PAD{i}]", -1000.0, TokenType.UNUSED))
        tokens.append(token)
        scores.append(score)
        types.append(int(kind))
    return tokens, scores, types
