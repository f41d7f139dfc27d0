"""Preference alignment with trl: DPO (sigmoid loss), IPO (DPO with the ipo loss), KTO, ORPO.

The reference model's log-probs are computed once before training (``precompute_ref_log_probs``)
where the method has a reference (DPO/IPO/KTO); with LoRA the reference is the base with the
adapter switched off, so no second copy of the model is held. ORPO needs no reference.
Before and after training we measure, on held-out pairs, how much more likely the model makes
the chosen answer than the rejected one (mean log p(chosen) - log p(rejected), in nats).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch
from slmforge.trainer.datasets import load_records, to_kto
from slmforge.trainer.train_common import (
    IGNORE,
    TrainOptions,
    check_model_dir,
    check_out,
    cleanup_failed_start,
    load_model_and_tokenizer,
    prepare_work_dir,
    run_training,
    save_output,
    seed_everything,
    standard_inputs,
    training_arguments,
    wrap_lora,
)
from slmforge.trainer.train_sft import tokenize_conversation

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
        "margin_before": round(sum(m_before) / n, 4),
        "margin_after": round(sum(m_after) / n, 4),
        "accuracy_before": round(sum(m > 0 for m in m_before) / n, 4),
        "accuracy_after": round(sum(m > 0 for m in m_after) / n, 4),
        "reward_margin_after": round(sum(reward) / n, 4),
        # trl's rewards/accuracies with the model before this run as reference: did training move chosen above
        # rejected? Raw accuracy cannot move when every reference answer is far longer than the model's own.
        "reward_accuracy_after": round(sum(r > 0 for r in reward) / n, 4),
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


def train_align(opts: TrainOptions) -> dict[str, Any]:
    """Run preference alignment end to end; return the manifest metrics."""
    started = time.time()
    method = opts.extra["method"]
    check_model_dir(opts.model)
    check_out(opts.out, [opts.model, opts.data])
    if method == "kto" and opts.batch_size < 2:
        raise UserError("align --method kto: --batch-size must be at least 2 (KTO estimates its KL term "
                        "from the other examples in a batch)")
    fmt, records = load_records(opts.data, method)
    train_records, held_records = split_by_prompt(records, opts.extra["heldout_fraction"], opts.seed)
    if not train_records:
        raise UserError(f"{opts.data}: every record was held out; lower --heldout-fraction or add data")
    pairs = eval_pairs(fmt, held_records)
    seed_everything(opts.seed)
    model, tokenizer = load_model_and_tokenizer(opts.model)
    before = pair_logps(model, tokenizer, pairs, opts.seq_len)
    model = wrap_lora(model, opts)
    dataset = to_trl_dataset(method, fmt, train_records)
    work, resume_from = prepare_work_dir(opts.out, opts.resume)
    try:
        trainer = build_trainer(method, model, tokenizer, dataset, opts, work)
        run = run_training(trainer, resume_from)
    except BaseException:
        cleanup_failed_start(opts.out)
        raise
    after = pair_logps(trainer.model, tokenizer, pairs, opts.seq_len)
    metrics = {
        **run,
        "method": method,
        "loss_type": opts.extra.get("loss_type") or DEFAULT_LOSS[method],
        "format": fmt,
        "train_records": len(train_records),
        **margin_metrics(before, after, opts.extra["beta"]),
    }
    save_output(trainer, tokenizer, opts, f"align-{method}", standard_inputs(opts, [opts.data]), metrics, started)
    return metrics
