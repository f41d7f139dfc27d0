"""Continual pretraining (CPT): next-token loss on the domain's raw text, packed without padding.

Documents are tokenized, joined with EOS and cut into full ``seq_len`` blocks (GPT-style
packing), so every position of every batch is a real token. Positions restart after each EOS
and attention runs per document (``packed_attention``): no document attends to the one before
it, and an EOS is not trained to guess the first token of an unrelated next document.
Held-out perplexity before and after training goes into the manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from slmforge.trainer.train.common import (
    IGNORE,
    TrainingStage,
    TrainOptions,
    change,
    heldout_ppl,
    run_stage,
    run_summary,
    training_arguments,
)
from slmforge.trainer.train.packed_attention import packed_attention

from slmforge.errors import UserError
from slmforge.heldout import split_heldout
from slmforge.hf_tokens import text_ids
from slmforge.manifest import InputRef, input_ref


class BlockDataset(torch.utils.data.Dataset):
    """Fixed-length token blocks; labels are the inputs (the model shifts them)."""

    def __init__(self, blocks: list[list[int]]) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return {"input_ids": self.blocks[i]}


class BlockCollator:
    """Stack blocks; positions restart after each EOS, and the token after an EOS is no target."""

    def __init__(self, eos_id: int) -> None:
        self.eos_id = eos_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        ids = torch.tensor([f["input_ids"] for f in features], dtype=torch.long)
        doc_start = torch.zeros_like(ids, dtype=torch.bool)
        doc_start[:, 0] = True
        doc_start[:, 1:] = ids[:, :-1] == self.eos_id
        index = torch.arange(ids.shape[1]).expand_as(ids)
        position_ids = index - torch.where(doc_start, index, 0).cummax(dim=1).values
        return {"input_ids": ids, "labels": ids.masked_fill(doc_start, IGNORE), "position_ids": position_ids}


def pack_blocks(tokenizer: Any, texts: list[str], seq_len: int) -> list[list[int]]:
    """One EOS-separated token stream (each text starting with BOS when the model wants one) cut into full
    blocks; a corpus shorter than a block is one block."""
    stream: list[int] = []
    for text in texts:
        stream.extend(text_ids(tokenizer, text))  # BOS first when the model wants it, as at run time
        stream.append(tokenizer.eos_token_id)
    if len(stream) < 2:
        raise UserError("the training text gives fewer than 2 tokens; nothing to learn from")
    if len(stream) < seq_len:
        return [stream]
    return [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]


def build_trainer(model: Any, tokenizer: Any, blocks: list[list[int]], opts: TrainOptions, work: Path) -> Any:
    from transformers import Trainer, TrainingArguments

    return Trainer(model=model, args=TrainingArguments(**training_arguments(opts, work)),
                   train_dataset=BlockDataset(blocks), data_collator=BlockCollator(tokenizer.eos_token_id),
                   processing_class=tokenizer)


class PretrainStage(TrainingStage):
    """CPT: packed blocks of the training text; held-out perplexity before and after."""

    name = "pretrain"

    def read_data(self) -> None:
        self.files, self.train_texts, self.held_texts, self.held_source = split_heldout(self.opts.data, self.opts.seed)

    def prepare(self, model: Any, tokenizer: Any) -> None:
        self.blocks = pack_blocks(tokenizer, self.train_texts, self.opts.seq_len)

    def measure_before(self, model: Any, tokenizer: Any) -> dict[str, Any]:
        return {"heldout_ppl_before": heldout_ppl(model, tokenizer, self.held_texts, self.opts)}

    def build_trainer(self, model: Any, tokenizer: Any, work: Path) -> Any:
        return build_trainer(model, tokenizer, self.blocks, self.opts, work)

    def training_context(self, trainer: Any) -> Any:
        return packed_attention(trainer.model)

    def measure_after(self, model: Any, tokenizer: Any, before: dict[str, Any]) -> dict[str, Any]:
        return {
            "train_tokens": sum(len(b) for b in self.blocks),
            "train_blocks": len(self.blocks),
            "padding_tokens": 0,
            "heldout_source": self.held_source,
            **before,
            "heldout_ppl_after": heldout_ppl(model, tokenizer, self.held_texts, self.opts),
        }

    def inputs(self) -> list[InputRef]:
        return [input_ref("base", self.opts.model)] + [input_ref("data", p) for p in self.files]

    def summary(self, metrics: dict[str, Any], seconds: float) -> str:
        return run_summary(metrics, seconds,
                           change("held-out ppl", metrics["heldout_ppl_before"], metrics["heldout_ppl_after"]))


def train_pretrain(opts: TrainOptions) -> dict[str, Any]:
    """Run CPT end to end; return the manifest metrics."""
    return run_stage(PretrainStage(opts))
