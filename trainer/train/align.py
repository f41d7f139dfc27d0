"""Preference alignment with trl: DPO (sigmoid loss), IPO (DPO with the ipo loss), KTO, ORPO.

The reference model's log-probs are computed once before training (``precompute_ref_log_probs``)
where the method has a reference (DPO/IPO/KTO); with LoRA the reference is the base with the
adapter switched off, so no second copy of the model is held. ORPO needs no reference.
Before and after training we measure, on held-out pairs, how much more likely the model makes
the chosen answer than the rejected one (mean log p(chosen) - log p(rejected), in nats).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from slmforge.trainer.data.datasets import load_records, to_kto
from slmforge.trainer.train.common import (
    IGNORE,
    TrainingStage,
    TrainOptions,
    change,
    run_stage,
    run_summary,
    training_arguments,
)
from slmforge.trainer.train.sft import tokenize_conversation

from slmforge.errors import UserError

DEFAULT_LOSS = {"dpo": "sigmoid", "ipo": "ipo", "kto": "kto", "orpo": None}


def _user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def split_by_prompt(records: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list, list]:
    """Hold out whole prompts (so a KTO prompt's two answers never straddle the split)."""
    prompts = sorted({r["prompt"] for r in records})
    random.Random(seed).shuffle(prompts)
    n_held = int(len(prompts) * fraction)
    if fraction > 0 and n_held == 0 and len(prompts) >= 4:
        n_held = 1
    held = set(prompts[:n_held])
    return [r for r in records if r["prompt"] not in held], [r for r in records if r["prompt"] in held]


def eval_pairs(fmt: str, records: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) triples to measure the margin on; KTO data pairs up by prompt."""
    if fmt == "preference":
        return [(r["prompt"], r["chosen"], r["rejected"]) for r in records]
    good: dict[str, str] = {}
    bad: dict[str, str] = {}
    for r in records:
        (good if r["label"] else bad).setdefault(r["prompt"], r["completion"])
    return [(p, good[p], bad[p]) for p in sorted(good) if p in bad]


def completion_logp(model: Any, tokenizer: Any, prompt: str, completion: str, max_len: int) -> float:
    """Sum of log p(completion tokens incl. EOS | chat-templated prompt)."""
    ids, labels = tokenize_conversation(tokenizer, _user(prompt) + _assistant(completion))
    ids, labels = ids[:max_len], labels[:max_len]
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    y = torch.tensor([labels], device=device)[:, 1:]
    logps = torch.log_softmax(model(input_ids=x).logits[:, :-1].float(), dim=-1)
    mask = y != IGNORE
    picked = logps.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return float((picked * mask).sum())


def pair_logps(model: Any, tokenizer: Any, pairs: list[tuple[str, str, str]], max_len: int) -> list[tuple[float, float]]:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = [(completion_logp(model, tokenizer, p, c, max_len), completion_logp(model, tokenizer, p, r, max_len))
               for p, c, r in pairs]
    model.train(was_training)
    return out


def margin_metrics(before: list[tuple[float, float]], after: list[tuple[float, float]], beta: float) -> dict[str, Any]:
    """Held-out margins before/after, preference accuracy, and the DPO-style implicit reward margin."""
    if not before:
        return {"heldout_pairs": 0}
    n = len(before)
    m_before = [c - r for c, r in before]
    m_after = [c - r for c, r in after]
    reward = [beta * ((ca - cb) - (ra - rb)) for (cb, rb), (ca, ra) in zip(before, after)]
    return {
        "heldout_pairs": n,
        "heldout_margin_before": round(sum(m_before) / n, 4),
        "heldout_margin_after": round(sum(m_after) / n, 4),
        "heldout_accuracy_before": round(sum(m > 0 for m in m_before) / n, 4),
        "heldout_accuracy_after": round(sum(m > 0 for m in m_after) / n, 4),
        "heldout_reward_margin_after": round(sum(reward) / n, 4),
        # trl's rewards/accuracies with the model before this run as reference: did training move chosen above
        # rejected? Raw accuracy cannot move when every reference answer is far longer than the model's own.
        "heldout_reward_accuracy_after": round(sum(r > 0 for r in reward) / n, 4),
    }


def to_trl_dataset(method: str, fmt: str, records: list[dict[str, Any]]) -> Any:
    """Conversational records (so trl applies the model's chat template to prompt and answers)."""
    from datasets import Dataset

    if method == "kto":
        rows = [{"prompt": _user(r["prompt"]), "completion": _assistant(r["completion"]), "label": r["label"]}
                for r in to_kto(fmt, records)]
    else:
        rows = [{"prompt": _user(r["prompt"]), "chosen": _assistant(r["chosen"]),
                 "rejected": _assistant(r["rejected"])} for r in records]
    return Dataset.from_list(rows)


def build_trainer(method: str, model: Any, tokenizer: Any, dataset: Any, opts: TrainOptions, work: Path) -> Any:
    """The trl trainer for ``method`` with our shared TrainingArguments."""
    beta = opts.extra["beta"]
    loss_type = opts.extra.get("loss_type") or DEFAULT_LOSS[method]
    args = training_arguments(opts, work)
    args.pop("remove_unused_columns")  # trl trainers choose their own columns
    # trl turns on gradient checkpointing and bf16 by default: both slow a CPU down
    common = {"beta": beta, "max_length": opts.seq_len, "gradient_checkpointing": False}
    try:
        if method in ("dpo", "ipo"):
            from trl import DPOConfig, DPOTrainer

            config = DPOConfig(**args, **common, loss_type=[loss_type], precompute_ref_log_probs=True)
            return DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
        if method == "kto":
            from trl import KTOConfig, KTOTrainer

            config = KTOConfig(**args, **common, loss_type=loss_type, precompute_ref_log_probs=True)
            return KTOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        config = ORPOConfig(**args, **common)
        return ORPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    except ValueError as exc:  # trl validates option combinations (e.g. an unknown loss_type) with ValueError
        raise UserError(f"align --method {method}: {exc}") from None


class AlignStage(TrainingStage):
    """DPO/IPO/KTO/ORPO: held-out preference margins before and after."""

    def __init__(self, opts: TrainOptions) -> None:
        super().__init__(opts)
        self.method = opts.extra["method"]
        self.name = f"align-{self.method}"

    def read_data(self) -> None:
        opts = self.opts
        if self.method == "kto" and opts.batch_size < 2:
            raise UserError("align --method kto: --batch-size must be at least 2 (KTO estimates its KL term "
                            "from the other examples in a batch)")
        self.fmt, records = load_records(opts.data, self.method)
        self.train_records, held_records = split_by_prompt(records, opts.extra["heldout_fraction"], opts.seed)
        if not self.train_records:
            raise UserError(f"{opts.data}: every record was held out; lower --heldout-fraction or add data")
        self.pairs = eval_pairs(self.fmt, held_records)

    def measure_before(self, model: Any, tokenizer: Any) -> dict[str, Any]:
        self.logps_before = pair_logps(model, tokenizer, self.pairs, self.opts.seq_len)
        return {}

    def build_trainer(self, model: Any, tokenizer: Any, work: Path) -> Any:
        dataset = to_trl_dataset(self.method, self.fmt, self.train_records)
        return build_trainer(self.method, model, tokenizer, dataset, self.opts, work)

    def measure_after(self, model: Any, tokenizer: Any, before: dict[str, Any]) -> dict[str, Any]:
        after = pair_logps(model, tokenizer, self.pairs, self.opts.seq_len)
        return {
            "method": self.method,
            "loss_type": self.opts.extra.get("loss_type") or DEFAULT_LOSS[self.method],
            "format": self.fmt,
            "train_records": len(self.train_records),
            **margin_metrics(self.logps_before, after, self.opts.extra["beta"]),
        }

    def summary(self, metrics: dict[str, Any], seconds: float) -> str:
        reward = metrics.get("heldout_reward_accuracy_after")
        return run_summary(metrics, seconds,
                           change(f"{self.method} held-out margin", metrics.get("heldout_margin_before"),
                                  metrics.get("heldout_margin_after")),
                           change("accuracy", metrics.get("heldout_accuracy_before"),
                                  metrics.get("heldout_accuracy_after")),
                           f"reward accuracy {reward:.2f}" if reward is not None else None)


def train_align(opts: TrainOptions) -> dict[str, Any]:
    """Run preference alignment end to end; return the manifest metrics."""
    return run_stage(AlignStage(opts))
