"""Logit distillation: teach a (pruned) student to match its teacher's next-token distribution.

Loss per token = alpha · T² · KL(teacher_T ‖ student_T) + (1 − alpha) · cross-entropy on the text,
where ``_T`` is the softmax at temperature T (forward KL, Hinton et al.). Teacher and student
must share the tokenizer: the loss compares distributions over the same ids. A training stage
like the others (``run_stage``): an HF ``Trainer`` whose loss step also runs the frozen teacher,
so checkpoints, ``--resume`` and the progress bar are the shared ones.
"""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from slmforge.trainer.shrink.compress import checkpoint_bytes, model_size
from slmforge.trainer.train.common import (
    TrainingStage,
    TrainOptions,
    check_model_dir,
    load_model_and_tokenizer,
    run_stage,
    run_summary,
    training_arguments,
    work_dir_for,
)
from slmforge.trainer.train.perplexity import perplexity
from slmforge.trainer.train.pretrain import BlockDataset, pack_blocks
from transformers import Trainer, TrainingArguments, default_data_collator

from slmforge.errors import UserError
from slmforge.fileio import atomic_write_json
from slmforge.heldout import train_and_heldout
from slmforge.manifest import InputRef, input_ref

LOSS = "alpha*T^2*KL(teacher||student) + (1-alpha)*CE"


@dataclass(frozen=True)
class DistillOptions:
    temperature: float = 2.0
    alpha: float = 0.5  # share of the KD term; 1 - alpha goes to the LM loss
    max_steps: int = 200
    lr: float = 1e-4
    batch_size: int = 4
    seq_len: int = 256
    warmup_steps: int = 10
    eval_tokens: int = 16384
    seed: int = 0
    save_every: int = 50
    resume: bool = False

    def check(self) -> None:
        if self.temperature <= 0:
            raise UserError(f"--temperature {self.temperature}: must be > 0 (2 is a good start)")
        if not 0 <= self.alpha <= 1:
            raise UserError(f"--alpha {self.alpha}: must be between 0 (LM loss only) and 1 (KD only)")
        if self.max_steps < 1 or self.batch_size < 1 or self.seq_len < 8:
            raise UserError("--max-steps and --batch-size must be >= 1 and --seq-len >= 8")


@dataclass
class DistillResult:
    checkpoint: Path
    metrics: dict[str, Any]


def kd_loss(student_logits: Any, teacher_logits: Any, temperature: float) -> Any:
    """T² · KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over tokens."""
    import torch.nn.functional as F

    vocab = student_logits.size(-1)
    s = F.log_softmax(student_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def check_same_tokenizer(teacher: Any, student: Any, teacher_dir: Path, student_dir: Path) -> None:
    if teacher.get_vocab() != student.get_vocab():
        raise UserError(f"teacher {teacher_dir} and student {student_dir} have different tokenizers; logit "
                        "distillation needs the same vocabulary (prune the teacher with 'slmforge compress')")


class BlockStream:
    """Block indices from back-to-back seeded permutations, ``count`` of them: batches never straddle
    a reshuffle differently on a resumed run, and an epoch's tail joins the next epoch's head."""

    def __init__(self, blocks: int, count: int, seed: int) -> None:
        self.blocks, self.count, self.seed = blocks, count, seed

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed)
        order: list[int] = []
        while len(order) < self.count:
            order += rng.sample(range(self.blocks), self.blocks)
        return iter(order[:self.count])

    def __len__(self) -> int:
        return self.count


class DistillTrainer(Trainer):
    """An HF Trainer whose loss mixes the frozen teacher's soft targets with the text's next tokens."""

    loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides it by the accumulation steps

    def __init__(self, *args: Any, teacher: Any, temperature: float, alpha: float, sampler_seed: int,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device)
        self.temperature, self.alpha, self.sampler_seed = temperature, alpha, sampler_seed
        self.parts: list[tuple[float, float]] = []  # (kd, lm) of the micro-batches since the last log

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        args = self.args
        count = args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps \
            * args.world_size
        return BlockStream(len(self.train_dataset if train_dataset is None else train_dataset), count,
                           self.sampler_seed)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        ids = inputs["input_ids"]
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=ids, use_cache=False).logits
        out = model(input_ids=ids, labels=ids, use_cache=False)
        kd = kd_loss(out.logits, teacher_logits, self.temperature)
        self.parts.append((kd.item(), out.loss.item()))
        loss = self.alpha * kd + (1 - self.alpha) * out.loss
        return (loss, out) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.parts:  # the step's two terms beside its loss, kept in trainer_state.json
            logs["kd"] = sum(k for k, _ in self.parts) / len(self.parts)
            logs["lm"] = sum(lm for _, lm in self.parts) / len(self.parts)
            self.parts = []
        super().log(logs, start_time)


def history_of(trainer: Any) -> list[dict[str, float]]:
    """Per-step loss, KD and LM terms, from the log (so a resumed run has the steps before its resume too)."""
    return [{"step": h["step"], "loss": h["loss"], "kd": h["kd"], "lm": h["lm"]}
            for h in trainer.state.log_history if "kd" in h]


class DistillStage(TrainingStage):
    """Distillation as a training stage: the student trains (all weights) against the frozen teacher."""

    name = "distill"
    progress_label = "distill"

    def __init__(self, teacher_dir: Path, distill_opts: DistillOptions, opts: TrainOptions) -> None:
        super().__init__(opts)
        self.teacher_dir, self.distill_opts = teacher_dir, distill_opts

    def checked_paths(self) -> list[Path]:
        return [self.teacher_dir, self.opts.model, self.opts.data]

    def read_data(self) -> None:
        from transformers import AutoTokenizer

        check_model_dir(self.teacher_dir)
        check_same_tokenizer(AutoTokenizer.from_pretrained(self.teacher_dir),
                             AutoTokenizer.from_pretrained(self.opts.model),
                             self.teacher_dir, self.opts.model)  # before minutes of model loading
        self.train_texts, self.held = train_and_heldout(self.opts.data)
        if not self.held:
            raise UserError(f"--data {self.opts.data}: no heldout.jsonl; distill reports held-out perplexity, "
                            "prepare the data with 'slmforge data prepare'")

    def prepare(self, model: Any, tokenizer: Any) -> None:
        self.teacher, _ = load_model_and_tokenizer(self.teacher_dir)
        self.teacher.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.blocks = pack_blocks(tokenizer, self.train_texts, self.opts.seq_len)

    def ppl(self, model: Any) -> float:
        """Held-out perplexity on ``--seq-len`` windows (as compress measures it)."""
        return round(perplexity(model, self.tokenizer, self.held, seq_len=self.opts.seq_len,
                                max_tokens=self.opts.eval_tokens), 4)

    def measure_before(self, model: Any, tokenizer: Any) -> dict[str, Any]:
        return {"heldout_ppl_teacher": self.ppl(self.teacher), "heldout_ppl_before": self.ppl(model)}

    def build_trainer(self, model: Any, tokenizer: Any, work: Path) -> Any:
        d = self.distill_opts
        # a diverged step must show in the log (the Trainer would hide a non-finite loss by default)
        args = TrainingArguments(**training_arguments(self.opts, work, warmup_steps=d.warmup_steps,
                                                      logging_nan_inf_filter=False))
        self.trainer = DistillTrainer(
            model=model, args=args, train_dataset=BlockDataset(self.blocks), data_collator=default_data_collator,
            processing_class=tokenizer, teacher=self.teacher, temperature=d.temperature, alpha=d.alpha,
            sampler_seed=self.opts.seed)
        return self.trainer

    def measure_after(self, model: Any, tokenizer: Any, before: dict[str, Any]) -> dict[str, Any]:
        history = history_of(self.trainer)
        if not all(math.isfinite(h["loss"]) for h in history):
            shutil.rmtree(work_dir_for(self.opts.out), ignore_errors=True)  # resuming would diverge again
            raise UserError("distillation diverged (loss is not finite); lower --lr")
        metrics = {**before, "heldout_ppl_after": self.ppl(model)}
        lost = metrics["heldout_ppl_before"] - metrics["heldout_ppl_teacher"]
        if lost > 0:
            metrics["recovered_share"] = round(
                (metrics["heldout_ppl_before"] - metrics["heldout_ppl_after"]) / lost, 4)
        metrics.update({f"teacher_{k}": v for k, v in model_size(self.teacher).items()})
        metrics.update({f"student_{k}": v for k, v in model_size(model).items()})
        metrics["teacher_bytes"] = checkpoint_bytes(self.teacher_dir)
        metrics["final_kd"] = round(sum(h["kd"] for h in history[-10:]) / len(history[-10:]), 4)
        metrics["final_lm"] = round(sum(h["lm"] for h in history[-10:]) / len(history[-10:]), 4)
        metrics["train_blocks"] = len(self.blocks)
        return metrics

    def inputs(self) -> list[InputRef]:
        return [input_ref("teacher", self.teacher_dir), input_ref("student", self.opts.model),
                input_ref("data", self.opts.data)]

    def params(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self.distill_opts).items() if k != "resume"}, "loss": LOSS}

    def write_extras(self, directory: Path, trainer: Any, metrics: dict[str, Any]) -> None:
        metrics["student_bytes"] = checkpoint_bytes(directory)
        history = history_of(trainer)
        atomic_write_json(directory / "distill_history.json", history)
        _plot(history, metrics, directory / "distill.png")

    def summary(self, metrics: dict[str, Any], seconds: float) -> str:
        recovered = metrics.get("recovered_share")
        return run_summary(metrics, seconds,
                           f"held-out ppl {metrics['heldout_ppl_before']:.2f} → {metrics['heldout_ppl_after']:.2f}"
                           f" (teacher {metrics['heldout_ppl_teacher']:.2f}"
                           + (f", {recovered:.0%} of the pruning loss recovered)" if recovered is not None else ")"))


def distill(teacher_dir: Path, student_dir: Path, data: Path, out: Path, opts: DistillOptions) -> DistillResult:
    """Train the student against the teacher on ``data``; report held-out perplexities and sizes."""
    opts.check()
    train_opts = TrainOptions(model=student_dir, data=data, out=out, max_steps=opts.max_steps, lr=opts.lr,
                              batch_size=opts.batch_size, seq_len=opts.seq_len, seed=opts.seed,
                              save_every=opts.save_every, resume=opts.resume, full=True, eval_tokens=opts.eval_tokens)
    metrics = run_stage(DistillStage(teacher_dir, opts, train_opts))
    return DistillResult(out.resolve(), metrics)


def _plot(history: list[dict[str, float]], metrics: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = [h["step"] for h in history]
    ax1.plot(steps, [h["kd"] for h in history], label="KD (T²·KL)", lw=1)
    ax1.plot(steps, [h["lm"] for h in history], label="LM (CE)", lw=1)
    ax1.set_xlabel("step")
    ax1.set_title("distillation loss")
    ax1.legend()
    labels = ["teacher", "student before", "student after"]
    values = [metrics["heldout_ppl_teacher"], metrics["heldout_ppl_before"], metrics["heldout_ppl_after"]]
    bars = ax2.bar(labels, values, color=["#777", "#c63", "#2a7"])
    ax2.bar_label(bars, fmt="%.1f")
    ax2.set_title(f"held-out perplexity ({metrics['student_blocks']} of {metrics['teacher_blocks']} blocks)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    """Teacher / pruned / distilled rows for the CLI table."""
    mib = 2**20
    return [
        ["teacher", metrics["teacher_blocks"], f"{metrics['teacher_parameters']:,}",
         f"{metrics['teacher_bytes'] / mib:.1f}", metrics["heldout_ppl_teacher"]],
        ["student (before)", metrics["student_blocks"], f"{metrics['student_parameters']:,}",
         f"{metrics['student_bytes'] / mib:.1f}", metrics["heldout_ppl_before"]],
        ["student (distilled)", metrics["student_blocks"], f"{metrics['student_parameters']:,}",
         f"{metrics['student_bytes'] / mib:.1f}", metrics["heldout_ppl_after"]],
    ]

