"""Logit distillation: teach a (pruned) student to match its teacher's next-token distribution.

Loss per token = alpha · T² · KL(teacher_T ‖ student_T) + (1 − alpha) · cross-entropy on the text,
where ``_T`` is the softmax at temperature T (forward KL, Hinton et al.). Teacher and student
must share the tokenizer: the loss compares distributions over the same ids. A plain loop
(not HF Trainer) because the loss needs a second, frozen model in the step.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slmforge.errors import UserError
from slmforge.fileio import atomic_dir, atomic_write_json
from slmforge.manifest import ArtifactManifest, input_ref, lineage_of


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


def distill(teacher_dir: Path, student_dir: Path, data: Path, out: Path, opts: DistillOptions) -> DistillResult:
    """Train the student against the teacher on ``data``; report held-out perplexities and sizes."""
    import torch
    from slmforge.trainer.compress import checkpoint_bytes, model_size
    from slmforge.trainer.perplexity import perplexity
    from slmforge.trainer.train_common import (
        check_model_dir,
        check_out,
        load_model_and_tokenizer,
        seed_everything,
    )
    from slmforge.trainer.train_pretrain import pack_blocks
    from tqdm import tqdm
    from transformers import get_cosine_schedule_with_warmup

    from slmforge.heldout import train_and_heldout

    opts.check()
    check_out(out, [teacher_dir, student_dir, data])
    started = time.time()
    seed_everything(opts.seed)
    from transformers import AutoTokenizer

    check_model_dir(teacher_dir)
    check_model_dir(student_dir)
    check_same_tokenizer(AutoTokenizer.from_pretrained(teacher_dir), AutoTokenizer.from_pretrained(student_dir),
                         teacher_dir, student_dir)  # before minutes of model loading
    teacher, _ = load_model_and_tokenizer(teacher_dir)
    student, tokenizer = load_model_and_tokenizer(student_dir)
    train_texts, held = train_and_heldout(data)
    if not held:
        raise UserError(f"--data {data}: no heldout.jsonl; distill reports held-out perplexity, "
                        "prepare the data with 'slmforge data prepare'")
    blocks = pack_blocks(tokenizer, train_texts, opts.seq_len)
    teacher.eval().requires_grad_(False)

    def ppl(model: Any) -> float:
        return round(perplexity(model, tokenizer, held, seq_len=opts.seq_len, max_tokens=opts.eval_tokens), 4)

    metrics: dict[str, Any] = {"ppl_teacher": ppl(teacher), "ppl_student_before": ppl(student)}
    optimizer = torch.optim.AdamW(student.parameters(), lr=opts.lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, opts.warmup_steps, opts.max_steps)
    rng = random.Random(opts.seed)
    order: list[int] = []
    history: list[dict[str, float]] = []
    student.train()
    bar = tqdm(range(opts.max_steps), desc="distill", unit="step", dynamic_ncols=True)
    for step in bar:
        if len(order) < opts.batch_size:  # reshuffle each epoch over the packed blocks
            order += rng.sample(range(len(blocks)), len(blocks))
        batch, order = order[: opts.batch_size], order[opts.batch_size:]
        ids = torch.tensor([blocks[i] for i in batch], dtype=torch.long)
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, use_cache=False).logits
        out_s = student(input_ids=ids, labels=ids, use_cache=False)
        kd = kd_loss(out_s.logits, t_logits, opts.temperature)
        loss = opts.alpha * kd + (1 - opts.alpha) * out_s.loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        history.append({"step": step + 1, "loss": loss.item(), "kd": kd.item(), "lm": out_s.loss.item()})
        bar.set_postfix(kd=f"{kd.item():.3f}", lm=f"{out_s.loss.item():.3f}")
    bar.close()
    if not all(math.isfinite(h["loss"]) for h in history):
        raise UserError("distillation diverged (loss is not finite); lower --lr")
    metrics["ppl_student_after"] = ppl(student)
    lost = metrics["ppl_student_before"] - metrics["ppl_teacher"]
    if lost > 0:
        metrics["recovered_share"] = round((metrics["ppl_student_before"] - metrics["ppl_student_after"]) / lost, 4)
    metrics.update({f"teacher_{k}": v for k, v in model_size(teacher).items()})
    metrics.update({f"student_{k}": v for k, v in model_size(student).items()})
    metrics["teacher_bytes"] = checkpoint_bytes(teacher_dir)
    metrics["final_kd"] = round(sum(h["kd"] for h in history[-10:]) / len(history[-10:]), 4)
    metrics["final_lm"] = round(sum(h["lm"] for h in history[-10:]) / len(history[-10:]), 4)
    metrics["train_blocks"] = len(blocks)
    metrics["tokens_seen"] = opts.max_steps * opts.batch_size * len(blocks[0])
    with atomic_dir(out) as tmp:
        student.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        metrics["student_bytes"] = checkpoint_bytes(tmp)
        atomic_write_json(tmp / "distill_history.json", history)
        _plot(history, metrics, tmp / "distill.png")
        ArtifactManifest(
            kind="checkpoint", stage="distill",
            inputs=[input_ref("teacher", teacher_dir), input_ref("student", student_dir), input_ref("data", data)],
            params={**asdict(opts), "loss": "alpha*T^2*KL(teacher||student) + (1-alpha)*CE"},
            seed=opts.seed, metrics=metrics, parent=str(student_dir.resolve()),
            lineage=lineage_of(student_dir), duration_s=round(time.time() - started, 2),
        ).write(tmp)
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
    values = [metrics["ppl_teacher"], metrics["ppl_student_before"], metrics["ppl_student_after"]]
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
         f"{metrics['teacher_bytes'] / mib:.1f}", metrics["ppl_teacher"]],
        ["student (before)", metrics["student_blocks"], f"{metrics['student_parameters']:,}",
         f"{metrics['student_bytes'] / mib:.1f}", metrics["ppl_student_before"]],
        ["student (distilled)", metrics["student_blocks"], f"{metrics['student_parameters']:,}",
         f"{metrics['student_bytes'] / mib:.1f}", metrics["ppl_student_after"]],
    ]

