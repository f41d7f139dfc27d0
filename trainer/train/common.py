"""What every training stage shares: flags, seeding, resumable checkpoints, progress, saving.

``run_stage`` is the one skeleton of a training verb (check inputs, load, measure, train,
measure again, save with a manifest and a summary line); a verb is a ``TrainingStage`` that
fills in its data, its trainer and its measurements. Stages build an HF ``Trainer`` (or a TRL
trainer, which is one) so that checkpointing, ``--resume``, gradient accumulation and
``accelerate launch`` (DDP/FSDP) come from the library. Intermediate checkpoints live next to
the output (``<out>.checkpoints/``) so they survive a crash; the output itself is written
atomically and only when training finished.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
from transformers import TrainerCallback

from slmforge.errors import UserError
from slmforge.fileio import atomic_dir
from slmforge.manifest import ArtifactManifest, InputRef, input_ref, lineage_of

TRAINER_STATE = "trainer_state.json"
IGNORE = -100  # label of a position that has no loss (transformers' ignore_index)


@dataclass
class TrainOptions:
    """The flags every ``slmforge train`` verb takes (see ``common_options``)."""

    model: Path
    data: Path
    out: Path
    max_steps: int | None = None
    epochs: float = 1.0
    lr: float | None = None
    batch_size: int = 4
    grad_accum: int = 1
    seq_len: int = 512
    seed: int = 0
    save_every: int = 50
    resume: bool = False
    keep_adapter: bool = False
    full: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    eval_tokens: int = 16384
    extra: dict[str, Any] = field(default_factory=dict)

    def params(self) -> dict[str, Any]:
        """Hyperparameters for the manifest (paths are recorded as inputs instead)."""
        skip = {"model", "data", "out", "resume", "extra"}
        return {k: v for k, v in asdict(self).items() if k not in skip} | self.extra


def checkpoint_options(func: Callable) -> Callable:
    """``--save-every`` and ``--resume``: what every training verb (distill included) takes to survive a crash."""
    opts = [
        click.option("--save-every", type=click.IntRange(min=0), default=50, show_default=True,
                     help="Write a resumable checkpoint every N steps (0: never)."),
        click.option("--resume", is_flag=True, help="Continue from the last checkpoint of an interrupted run."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def common_options(default_lr: float, default_seq_len: int = 512) -> Callable:
    """Click options shared by pretrain/sft/align; the stage picks its own learning-rate default."""

    def decorate(func: Callable) -> Callable:
        opts = [
            click.option("--model", "model", required=True, type=click.Path(path_type=Path),
                         help="HF checkpoint dir to start from (e.g. from 'slmforge base import')."),
            click.option("--data", "data", required=True, type=click.Path(path_type=Path),
                         help="Training data: a dataset dir or a JSONL file."),
            click.option("--out", "out", required=True, type=click.Path(path_type=Path),
                         help="Output checkpoint dir (written atomically when training ends)."),
            click.option("--max-steps", type=click.IntRange(min=1), default=None,
                         help="Stop after this many optimizer steps (overrides --epochs)."),
            click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True),
            click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=default_lr, show_default=True),
            click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
                         help="Sequences per device per step."),
            click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True,
                         help="Gradient accumulation steps."),
            click.option("--seq-len", type=click.IntRange(min=8), default=default_seq_len, show_default=True,
                         help="Tokens per packed training sequence."),
            click.option("--seed", type=int, default=0, show_default=True),
            checkpoint_options,
            click.option("--keep-adapter", is_flag=True,
                         help="Save the LoRA adapter instead of merging it into the model."),
            click.option("--full", is_flag=True, help="Train all weights instead of a LoRA adapter."),
            click.option("--lora-r", type=click.IntRange(min=1), default=16, show_default=True),
            click.option("--lora-alpha", type=click.IntRange(min=1), default=32, show_default=True),
            click.option("--eval-tokens", type=click.IntRange(min=0), default=16384, show_default=True,
                         help="Held-out tokens for the before/after evaluation (0: skip)."),
        ]
        for opt in reversed(opts):
            func = opt(func)
        return func

    return decorate


def options_from(kwargs: dict[str, Any], **extra: Any) -> TrainOptions:
    """Split click kwargs into TrainOptions (known fields) and stage-specific extras."""
    known = {f for f in TrainOptions.__dataclass_fields__ if f != "extra"}
    base = {k: v for k, v in kwargs.items() if k in known}
    rest = {k: v for k, v in kwargs.items() if k not in known and k != "as_json"}
    return TrainOptions(**base, extra={**rest, **extra})


# --------------------------------------------------------------------------- inputs

def check_model_dir(path: Path) -> Path:
    """A usable HF checkpoint dir, or one clear line saying what is wrong."""
    if not path.exists():
        raise UserError(f"--model {path}: directory not found; import a base first with 'slmforge base import'")
    if not path.is_dir() or not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
        raise UserError(f"--model {path}: not an HF checkpoint dir (no config.json); "
                        "pass a dir from 'slmforge base import' or an earlier 'slmforge train' stage")
    return path


def check_out(out: Path, inputs: list[Path]) -> None:
    """Refuse to write the output over one of the inputs."""
    target = out.resolve()
    for p in inputs:
        if p.exists() and p.resolve() == target:
            raise UserError(f"--out {out}: is also an input; choose another output directory")


def load_model_and_tokenizer(path: Path) -> tuple[Any, Any]:
    """float32 model (CPU training) and its tokenizer, with a pad token set."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_dir(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.eos_token_id is None:
        raise UserError(f"--model {path}: tokenizer has no eos token; fix tokenizer_config.json")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    # no KV cache while training: with a cache transformers ignores the per-example position_ids of
    # packed rows and lets examples attend to each other (save_output turns it back on)
    model.config.use_cache = False
    return model, tokenizer


def wrap_lora(model: Any, opts: TrainOptions) -> Any:
    """A LoRA adapter on every linear layer (default), or the model itself with --full."""
    if opts.full:
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=opts.lora_r, lora_alpha=opts.lora_alpha, lora_dropout=0.0,
                        target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


EVAL_WINDOW = 512  # held-out perplexity windows, whatever --seq-len, so the stages' figures compare


def heldout_ppl(model: Any, tokenizer: Any, texts: list[str], opts: TrainOptions) -> float | None:
    """Perplexity on the first ``--eval-tokens`` held-out tokens (None when there is nothing to measure)."""
    from slmforge.trainer.train.perplexity import perplexity

    if not texts or opts.eval_tokens == 0:
        return None
    return round(perplexity(model, tokenizer, texts, seq_len=EVAL_WINDOW, max_tokens=opts.eval_tokens), 4)


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


# --------------------------------------------------------------------------- trainer wiring

def work_dir_for(out: Path) -> Path:
    """Where resumable checkpoints of a run writing ``out`` live (a sibling, removed on success)."""
    out = out.resolve()
    return out.parent / f"{out.name}.checkpoints"


def last_complete_checkpoint(work: Path) -> Path | None:
    """The newest checkpoint-N dir that was completely written (trainer_state.json is saved last)."""
    if not work.is_dir():
        return None
    found = []
    for d in work.glob("checkpoint-*"):
        step = d.name.removeprefix("checkpoint-")
        if d.is_dir() and step.isdigit() and (d / TRAINER_STATE).is_file():
            found.append((int(step), d))
    return max(found)[1] if found else None


def prepare_work_dir(out: Path, resume: bool) -> tuple[Path, Path | None]:
    """The checkpoint dir and the checkpoint to resume from; a fresh run starts from an empty dir."""
    work = work_dir_for(out)
    if not resume:
        if work.exists():
            shutil.rmtree(work)
        return work, None
    last = last_complete_checkpoint(work)
    if last is None:
        click.echo(f"note: no complete checkpoint in {work}; starting from step 0", err=True)
        return work, None
    for d in work.glob("checkpoint-*"):  # a checkpoint cut off by the crash would confuse the trainer
        if d.is_dir() and not (d / TRAINER_STATE).is_file():
            shutil.rmtree(d)
    click.echo(f"resuming from {last}", err=True)
    return work, last


def accelerator_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available())


def training_arguments(opts: TrainOptions, work: Path, **overrides: Any) -> dict[str, Any]:
    """TrainingArguments fields shared by HF and TRL trainers, with CPU-sane defaults."""
    args: dict[str, Any] = {
        "output_dir": str(work),
        "max_steps": opts.max_steps or -1,
        "num_train_epochs": opts.epochs,
        "learning_rate": opts.lr,
        "per_device_train_batch_size": opts.batch_size,
        "gradient_accumulation_steps": opts.grad_accum,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "seed": opts.seed,
        "data_seed": opts.seed,
        "save_strategy": "steps" if opts.save_every else "no",
        "save_steps": opts.save_every or 500,
        "save_total_limit": 2,
        "logging_steps": 1,
        "report_to": [],
        "disable_tqdm": True,
        "bf16": False,
        "fp16": False,
        "include_num_input_tokens_seen": "all",
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        "remove_unused_columns": False,
        "ddp_find_unused_parameters": False,
        # Without an accelerator, say so: accelerate only joins a torchrun/`accelerate launch` process group
        # (gloo) when told it runs on CPU; otherwise every rank would train alone on all the data.
        "use_cpu": not accelerator_available(),
    }
    args.update(overrides)
    return args


def attach_progress(trainer: Any, desc: str = "train") -> ProgressBar:
    """Replace the trainer's own printing with one tqdm bar showing loss and tokens/s."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    bar = ProgressBar(desc)
    trainer.add_callback(bar)
    return bar


class ProgressBar(TrainerCallback):
    """tqdm with rate, ETA, loss and tokens/s; also records the run's throughput for the manifest."""

    def __init__(self, desc: str = "train") -> None:
        self.desc = desc
        self.bar = None
        self.loss: float | None = None
        self.t0 = 0.0
        self.tokens0 = 0
        self.tokens_per_s: float | None = None
        self.train_seconds: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.desc, unit="step",
                            dynamic_ncols=True)
        self.t0 = time.perf_counter()
        self.tokens0 = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])

    def on_step_end(self, args, state, control, **kwargs):
        elapsed = time.perf_counter() - self.t0
        if elapsed > 0:
            self.tokens_per_s = (state.num_input_tokens_seen - self.tokens0) / elapsed
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            post = {}
            if self.loss is not None:
                post["loss"] = f"{self.loss:.3f}"
            if self.tokens_per_s:
                post["tok/s"] = f"{self.tokens_per_s:.0f}"
            self.bar.set_postfix(post, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        self.train_seconds = time.perf_counter() - self.t0
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_training(trainer: Any, resume_from: Path | None, desc: str = "train") -> dict[str, Any]:
    """Train (resuming if asked) and return the numbers the manifest records."""
    bar = attach_progress(trainer, desc)
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    state = trainer.state
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    return {
        "steps": state.global_step,
        "train_loss": result.training_loss,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "tokens_seen": int(state.num_input_tokens_seen),
        "tokens_per_s": round(bar.tokens_per_s, 1) if bar.tokens_per_s else None,
        "train_seconds": round(bar.train_seconds or 0.0, 2),
        "resumed_from_step": int(resume_from.name.split("-")[-1]) if resume_from else None,
    }


# --------------------------------------------------------------------------- the stage skeleton

class TrainingStage(ABC):
    """One training verb: what ``run_stage`` asks of it, in the order it asks.

    A new verb subclasses this, sets ``name`` (the manifest's ``stage``) and fills in
    ``read_data``, ``prepare``, ``build_trainer``, the two measurements and ``summary``;
    everything else (checks, seeding, LoRA, checkpoints and --resume, progress, atomic save,
    manifest) is ``run_stage``'s.
    """

    name = "train"
    progress_label = "train"

    def __init__(self, opts: TrainOptions) -> None:
        self.opts = opts

    def checked_paths(self) -> list[Path]:
        """Inputs the output must not overwrite."""
        return [self.opts.model, self.opts.data]

    def read_data(self) -> None:
        """Read and check the data before any model is loaded, so bad input fails in a second."""

    def load_model(self) -> tuple[Any, Any]:
        return load_model_and_tokenizer(self.opts.model)

    def prepare(self, model: Any, tokenizer: Any) -> None:
        """Turn the data into training rows (the tokenizer is known now)."""

    def measure_before(self, model: Any, tokenizer: Any) -> dict[str, Any]:
        """Held-out figures of the model as it comes in."""
        return {}

    @abstractmethod
    def build_trainer(self, model: Any, tokenizer: Any, work: Path) -> Any:
        """The HF/trl trainer over the prepared rows, checkpointing into ``work``."""

    def training_context(self, trainer: Any) -> contextlib.AbstractContextManager:
        """Held open around ``trainer.train()`` only (e.g. per-piece attention on packed rows)."""
        return contextlib.nullcontext()

    def measure_after(self, model: Any, tokenizer: Any, before: dict[str, Any]) -> dict[str, Any]:
        """The stage's metrics after training (``before`` is what ``measure_before`` returned)."""
        return before

    def inputs(self) -> list[InputRef]:
        return [input_ref("base", self.opts.model), input_ref("data", self.opts.data)]

    def params(self) -> dict[str, Any]:
        return self.opts.params()

    def write_extras(self, directory: Path, trainer: Any, metrics: dict[str, Any]) -> None:
        """Files beside the checkpoint (written into the atomic output dir; may add to ``metrics``)."""

    def summary(self, metrics: dict[str, Any], seconds: float) -> str:
        """The one line the pipeline table shows for this stage."""
        return run_summary(metrics, seconds)


def run_stage(stage: TrainingStage) -> dict[str, Any]:
    """Run one training verb end to end; return the metrics its manifest records."""
    opts = stage.opts
    started = time.time()
    check_model_dir(opts.model)
    check_out(opts.out, stage.checked_paths())
    stage.read_data()
    seed_everything(opts.seed)
    model, tokenizer = stage.load_model()
    stage.prepare(model, tokenizer)
    before = stage.measure_before(model, tokenizer)
    model = wrap_lora(model, opts)
    work, resume_from = prepare_work_dir(opts.out, opts.resume)
    try:
        trainer = stage.build_trainer(model, tokenizer, work)
        with stage.training_context(trainer):
            run = run_training(trainer, resume_from, stage.progress_label)
    except BaseException:
        cleanup_failed_start(opts.out)
        raise
    metrics = {**run, **stage.measure_after(trainer.model, tokenizer, before)}
    save_output(trainer, tokenizer, stage, metrics, started)
    return metrics


# --------------------------------------------------------------------------- summary line

def change(label: str, before: float | None, after: float | None, digits: int = 2) -> str | None:
    """``"label 19.89 → 19.05"``, or ``"label 19.05"`` without a before, or None without an after."""
    if after is None:
        return None
    if before is None:
        return f"{label} {after:.{digits}f}"
    return f"{label} {before:.{digits}f} → {after:.{digits}f}"


def run_summary(metrics: dict[str, Any], seconds: float, *parts: str | None) -> str:
    """The stage's own figures, then ``N steps, T s``: one line for the pipeline table."""
    tail = f"{metrics.get('steps', 0)} steps, {seconds:,.0f} s"
    return ", ".join([p for p in parts if p] + [tail])


# --------------------------------------------------------------------------- output

def unwrap(trainer: Any) -> Any:
    return trainer.accelerator.unwrap_model(trainer.model)


def save_output(trainer: Any, tokenizer: Any, stage: TrainingStage, metrics: dict[str, Any],
                started: float) -> Path | None:
    """Write the final checkpoint atomically (LoRA merged unless --keep-adapter) with its manifest.

    Only the main process writes; the resumable checkpoints are removed once the output exists.
    """
    opts = stage.opts
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return None
    model = unwrap(trainer)
    is_peft = hasattr(model, "peft_config")
    adapter_kept = is_peft and opts.keep_adapter
    if is_peft and not opts.keep_adapter:
        model = model.merge_and_unload()
    model.config.use_cache = True
    inputs = stage.inputs()
    duration = round(time.time() - started, 2)
    with atomic_dir(opts.out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if adapter_kept:
            _record_base(tmp, opts.model)
        stage.write_extras(tmp, trainer, metrics)
        ArtifactManifest(
            kind="checkpoint",
            stage=stage.name,
            inputs=inputs,
            params={**stage.params(),
                    "adapter": "lora-kept" if adapter_kept else ("lora-merged" if is_peft else "full")},
            seed=opts.seed,
            metrics=metrics,
            parent=str(opts.model.resolve()),
            lineage=lineage_of(opts.model),
            duration_s=duration,
            summary=stage.summary(metrics, duration),
        ).write(tmp)
    shutil.rmtree(work_dir_for(opts.out), ignore_errors=True)
    return opts.out


def _record_base(directory: Path, base: Path) -> None:
    """Point the kept adapter at its base by absolute path so AutoPeftModel can load it."""
    cfg_path = directory / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(base.resolve())
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def cleanup_failed_start(out: Path) -> None:
    """Remove a checkpoint dir that holds no complete checkpoint (a run that failed before saving)."""
    work = work_dir_for(out)
    if work.exists() and last_complete_checkpoint(work) is None:
        shutil.rmtree(work, ignore_errors=True)
