"""Supervised fine-tuning on chat data: the model's own chat template, loss on assistant tokens only.

Each conversation is rendered with the tokenizer's chat template; the assistant turns (their
text and the closing EOS, e.g. ``<|im_end|>``, so the model learns to stop) are the only
positions with a loss. Examples are packed with ``position_ids`` restarting per example and
attention runs per example (``packed_attention``), so no example sees another; a step's whole
budget (``batch_size × seq_len`` tokens) is then one row, so no compute at all goes to padding
(``step_layout``). Logits are computed only where the next token is trained.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from slmforge.trainer.data.datasets import load_records, to_messages
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
from slmforge.trainer.train.packed_attention import packed_attention, supports_packed_attention

from slmforge.errors import UserError
from slmforge.heldout import load_heldout_texts
from slmforge.hf_tokens import with_bos

HELDOUT_FRACTION = 0.1


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def tokenize_conversation(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with labels = IGNORE everywhere except assistant text and its EOS; BOS first when
    the model wants one (``slmforge.hf_tokens``), as llama.cpp puts it before the prompt at run time."""
    if not tokenizer.chat_template:
        raise UserError("the model's tokenizer has no chat template; SFT needs one (tokenizer_config.json "
                        "or chat_template.jinja)")
    eos = tokenizer.eos_token_id
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], generation_prompt=True)
        full = _render(tokenizer, messages[:i + 1], generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise UserError("the chat template does not render conversations prefix by prefix; "
                            "cannot tell assistant tokens apart")
        segments += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in segments:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        if trained:
            # learn the answer up to and including its EOS; whatever the template adds after EOS is context
            cut = len(piece) - piece[::-1].index(eos) if eos in piece else len(piece)
            piece_labels = piece[:cut] + [IGNORE] * (len(piece) - cut)
        else:
            piece_labels = [IGNORE] * len(piece)
        ids += piece
        labels += piece_labels
    return with_bos(tokenizer, done, ids, labels, IGNORE)  # the runtime's prompt starts with BOS when the model wants it


def pack_examples(examples: list[tuple[list[int], list[int]]], row_len: int) -> list[dict[str, list[int]]]:
    """First-fit-decreasing bins of at most ``row_len`` tokens; position_ids restart per example."""
    bins: list[dict[str, list[int]]] = []
    for ids, labels in sorted(examples, key=lambda e: -len(e[0])):
        for row in bins:
            if len(row["input_ids"]) + len(ids) <= row_len:
                break
        else:
            row = {"input_ids": [], "labels": [], "position_ids": []}
            bins.append(row)
        row["input_ids"] += ids
        row["labels"] += labels
        row["position_ids"] += list(range(len(ids)))
    return bins


def step_layout(seq_len: int, batch_size: int, per_example_attention: bool) -> tuple[int, int]:
    """(tokens per packed row, rows per step) for a step budget of ``batch_size × seq_len`` tokens.

    With attention per example a row's length costs nothing extra, so the budget is one row and
    nothing is padded (rows of ``seq_len`` left 10–13 % padding: the batch pads to its longest
    row). Without it, transformers' block-diagonal mask grows with the square of the row, so rows
    stay ``seq_len`` long. Examples are still cut at ``seq_len`` either way.
    """
    return (seq_len * batch_size, 1) if per_example_attention else (seq_len, batch_size)


class PackedCollator:
    """Pad a batch of packed rows to its longest row; padding is its own 'example' with no loss.

    The batch also says where the loss is: ``logits_to_keep`` marks the positions whose next token
    is a trained one and ``shift_labels`` holds those tokens, so the model projects only them onto
    the vocabulary (the lm_head is ~20 % of a step; prompts and padding need none of it).
    """

    def __init__(self, pad_id: int, trained_logits_only: bool = True) -> None:
        self.pad_id = pad_id
        # off under torch DataParallel (several GPUs, one process), which would split the 1-D shift_labels by count
        self.trained_logits_only = trained_logits_only

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": []}
        for r in rows:
            pad = width - len(r["input_ids"])
            batch["input_ids"].append(r["input_ids"] + [self.pad_id] * pad)
            batch["labels"].append(r["labels"] + [IGNORE] * pad)
            batch["position_ids"].append(r["position_ids"] + list(range(pad)))
        out = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
        if not self.trained_logits_only:
            return out
        targets = torch.nn.functional.pad(out["labels"][:, 1:], (0, 1), value=IGNORE)
        targets[:, :-1][out["position_ids"][:, 1:] == 0] = IGNORE  # an example's last token predicts nothing
        keep = targets != IGNORE
        return out | {"logits_to_keep": keep, "shift_labels": targets[keep]}


class RowDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, list[int]]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.rows[i]


def build_examples(tokenizer: Any, conversations: list[list[dict[str, str]]],
                   seq_len: int) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Tokenized examples (truncated to ``seq_len``) and how many had to be truncated."""
    out, truncated = [], 0
    for messages in conversations:
        ids, labels = tokenize_conversation(tokenizer, messages)
        if len(ids) > seq_len:
            truncated += 1
            ids, labels = ids[:seq_len], labels[:seq_len]
        if any(lab != IGNORE for lab in labels[1:]):
            out.append((ids, labels))
    return out, truncated


def split_heldout(items: list[Any], seed: int) -> tuple[list[Any], list[Any]]:
    """A deterministic held-out slice (10%, at least 1 when there are 5+ examples)."""
    if len(items) < 5:
        return items, []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held = set(order[:max(1, int(len(items) * HELDOUT_FRACTION))])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def assistant_loss(model: Any, examples: list[tuple[list[int], list[int]]]) -> float | None:
    """Mean loss per assistant token on held-out examples (no grad)."""
    if not examples:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for ids, labels in examples:
            x = torch.tensor([ids], device=device)
            y = torch.tensor([labels], device=device)
            logits = model(input_ids=x).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y[:, 1:].reshape(-1),
                                                    ignore_index=IGNORE, reduction="sum")
            total += nll.item()
            count += int((y[:, 1:] != IGNORE).sum())
    model.train(was_training)
    return round(total / count, 4) if count else None


def build_trainer(model: Any, tokenizer: Any, rows: list[dict[str, list[int]]], opts: TrainOptions,
                  work: Path, rows_per_step: int | None = None) -> Any:
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(**training_arguments(opts, work,
                                                  per_device_train_batch_size=rows_per_step or opts.batch_size))
    return Trainer(model=model, args=args, train_dataset=RowDataset(rows),
                   data_collator=PackedCollator(tokenizer.pad_token_id, trained_logits_only=args.n_gpu <= 1),
                   processing_class=tokenizer)


class SftStage(TrainingStage):
    """Chat SFT: packed examples, loss on assistant tokens; held-out answer loss (and document ppl) before/after."""

    name = "sft"

    def read_data(self) -> None:
        opts = self.opts
        self.fmt, records = load_records(opts.data, "sft")
        self.conversations = [to_messages(self.fmt, r) for r in records]
        self.held_texts = load_heldout_texts(opts.extra["heldout_text"]) if opts.extra.get("heldout_text") else []

    def prepare(self, model: Any, tokenizer: Any) -> None:
        opts = self.opts
        self.examples, self.truncated = build_examples(tokenizer, self.conversations, opts.seq_len)
        if not self.examples:
            raise UserError(f"{opts.data}: no example keeps an assistant token within --seq-len {opts.seq_len}")
        self.train_ex, held_ex = split_heldout(self.examples, opts.seed)
        self.row_len, self.rows_per_step = step_layout(opts.seq_len, opts.batch_size, supports_packed_attention(model))
        self.rows = pack_examples(self.train_ex, self.row_len)
        self.held_ex = held_ex[:opts.extra.get("eval_examples") or len(held_ex)]  # the split itself stays the same

    def measure_before(self, model: Any, tokenizer: Any) -> dict[str, Any]:
        return {"heldout_answer_loss_before": assistant_loss(model, self.held_ex),
                "heldout_ppl_before": heldout_ppl(model, tokenizer, self.held_texts, self.opts)}

    def build_trainer(self, model: Any, tokenizer: Any, work: Path) -> Any:
        return build_trainer(model, tokenizer, self.rows, self.opts, work, self.rows_per_step)

    def training_context(self, trainer: Any) -> Any:
        return packed_attention(trainer.model)

    def measure_after(self, model: Any, tokenizer: Any, before: dict[str, Any]) -> dict[str, Any]:
        real = sum(len(ids) for ids, _ in self.train_ex)
        ppl = {"heldout_ppl_before": before["heldout_ppl_before"],
               "heldout_ppl_after": heldout_ppl(model, tokenizer, self.held_texts, self.opts)}
        return {
            "format": self.fmt,
            "examples": len(self.examples),
            "heldout_examples": len(self.held_ex),
            "truncated_examples": self.truncated,
            "packed_rows": len(self.rows),
            "rows_per_step": self.rows_per_step,
            "packing_fill": round(real / (len(self.rows) * self.row_len), 4),
            "assistant_tokens": sum(sum(lab != IGNORE for lab in labels) for _, labels in self.train_ex),
            "heldout_answer_loss_before": before["heldout_answer_loss_before"],
            "heldout_answer_loss_after": assistant_loss(model, self.held_ex),
            **(ppl if self.held_texts else {}),
        }

    def summary(self, metrics: dict[str, Any], seconds: float) -> str:
        return run_summary(metrics, seconds,
                           change("held-out ppl", metrics.get("heldout_ppl_before"), metrics.get("heldout_ppl_after")),
                           change("answer loss", metrics["heldout_answer_loss_before"],
                                  metrics["heldout_answer_loss_after"], digits=3))


def train_sft(opts: TrainOptions) -> dict[str, Any]:
    """Run SFT end to end; return the manifest metrics."""
    return run_stage(SftStage(opts))
