"""Token ids of text for training and measuring with an HF tokenizer: BOS where the model wants it.

At run time llama.cpp tokenizes every prompt with ``add_bos`` and so puts BOS first exactly when the
GGUF says so (``tokenizer.ggml.add_bos_token``), a flag export writes from the HF tokenizer's own rule
(its post-processor / ``add_bos_token``); ``bench run`` measures perplexity through the same call,
so each of its texts starts with BOS. Training and export's gate assemble ids from pieces with
``add_special_tokens=False`` and lost that BOS: Gemma, which is trained with it, was fine-tuned and
measured on inputs it never sees at run time. Every such caller asks here, so the rule is one.
"""

from __future__ import annotations

from typing import Any


def bos_id(tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer puts one before a text on its own (llama.cpp then does too), else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return int(bos) if ids and ids[0] == bos else None


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Ids of one whole text as the model reads it at run time: BOS first when it wants one, no EOS."""
    bos = bos_id(tokenizer)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids if bos is None or ids[:1] == [bos] else [bos, *ids]


def with_bos(tokenizer: Any, rendered: str, ids: list[int], labels: list[int], ignore: int) -> tuple[list[int], list[int]]:
    """A rendered conversation's (ids, labels) with BOS put first (no loss on it) when the model wants one
    and the chat template did not already write it."""
    bos = bos_id(tokenizer)
    if bos is None or ids[:1] == [bos] or (tokenizer.bos_token and rendered.startswith(tokenizer.bos_token)):
        return ids, labels
    return [bos, *ids], [ignore, *labels]
