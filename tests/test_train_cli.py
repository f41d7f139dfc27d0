"""`slmforge train` as a user meets it: bad input is one line and no debris; a killed run resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from slmforge.trainer.train.common import TrainOptions, work_dir_for

from slmforge.cli import main

DOC = "Lists are mutable sequences. How do I copy a file? Use shutil.copy(). Tuples are immutable. "


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def kill_at_checkpoint_4_then_resume(argv: list[str], flags: dict, out: Path) -> None:
    """Run the verb, SIGKILL it once its step-4 checkpoint is on disk, then finish it with --resume."""
    argv = [*argv]
    for key, value in flags.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "TQDM_DISABLE": "1"}

    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = work_dir_for(out) / "checkpoint-4" / "trainer_state.json"
    deadline = time.time() + 600
    while not marker.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert marker.exists() and not out.exists(), "the run should have been killed mid-training"

    second = subprocess.run(argv + ["--resume"], env=env, capture_output=True, text=True, timeout=600, check=False)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming from" in second.stderr


def leftovers(out: Path) -> list[str]:
    """Anything the failed run left next to its output (the output itself, partial or checkpoint dirs)."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name))


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


PAIR = json.dumps({"prompt": "q?", "chosen": "a.", "rejected": "b."})
KTO = json.dumps({"prompt": "q?", "completion": "a.", "label": True})
CHAT = json.dumps({"messages": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "a."}]})


@pytest.mark.parametrize("case", ["empty corpus", "malformed line", "missing model", "kto data to dpo"])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tiny_checkpoint, tmp_path, capsys, case):
    out = tmp_path / "run" / "out"
    model = tiny_checkpoint
    if case == "empty corpus":
        data = write(tmp_path / "ds" / "train.jsonl", []).parent
        argv, expect = ["pretrain"], "no records (the file is empty)"
    elif case == "malformed line":
        data = write(tmp_path / "qa.jsonl", [CHAT, CHAT, CHAT[:-3]])
        argv, expect = ["sft"], "qa.jsonl:3: not valid JSON"
    elif case == "missing model":
        data, model = write(tmp_path / "qa.jsonl", [CHAT]), tmp_path / "no-such-model"
        argv, expect = ["sft"], "no-such-model: directory not found"
    else:
        data = write(tmp_path / "kto.jsonl", [KTO, KTO])
        argv, expect = ["align", "--method", "dpo"], "this is KTO data (prompt/completion/label), but 'dpo' needs"
    out.parent.mkdir(parents=True, exist_ok=True)
    code, err = run_main(["train", *argv, "--model", str(model), "--data", str(data), "--out", str(out)], capsys)
    assert code == 2
    assert err.startswith("error: ") and expect in err and err.count("\n") == 1, err
    assert leftovers(out) == []


def test_kto_needs_a_batch_of_two(tiny_checkpoint, tmp_path, capsys):
    data = write(tmp_path / "kto.jsonl", [KTO, KTO])
    code, err = run_main(["train", "align", "--method", "kto", "--model", str(tiny_checkpoint), "--data", str(data),
                          "--out", str(tmp_path / "o"), "--batch-size", "1"], capsys)
    assert code == 2 and "--batch-size must be at least 2" in err


def test_killed_run_resumes_to_the_same_weights(tiny_checkpoint, tmp_path):
    """SIGKILL after step 4's checkpoint, --resume, and compare with an uninterrupted run (same seed)."""
    from safetensors.torch import load_file
    from slmforge.trainer.train.pretrain import train_pretrain

    data = write(tmp_path / "corpus.jsonl", [json.dumps({"text": DOC * n}) for n in range(1, 7)])
    flags = {"max_steps": 24, "batch_size": 2, "seq_len": 32, "save_every": 4, "eval_tokens": 0, "lr": 1e-3, "seed": 3}
    out = tmp_path / "resumed"
    argv = [sys.executable, "-m", "slmforge.cli", "train", "pretrain", "--model", str(tiny_checkpoint),
            "--data", str(data), "--out", str(out)]
    kill_at_checkpoint_4_then_resume(argv, flags, out)
    metrics = json.loads((out / "slmforge.json").read_text())["metrics"]
    assert metrics["resumed_from_step"] >= 4 and metrics["steps"] == 24
    assert not work_dir_for(out).exists()

    straight = tmp_path / "straight"
    train_pretrain(TrainOptions(model=tiny_checkpoint, data=data, out=straight, **flags))
    a, b = load_file(out / "model.safetensors"), load_file(straight / "model.safetensors")
    base = load_file(tiny_checkpoint / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert max((a[k] - base[k]).abs().max().item() for k in a) > 1e-3  # and training did move the weights
    assert torch.equal(a["model.embed_tokens.weight"], b["model.embed_tokens.weight"])


def test_killed_distill_resumes_to_the_same_weights(tiny_checkpoint, tmp_path):
    """distill resumes as the train verbs do: SIGKILL after step 4's checkpoint, --resume, same weights and history."""
    from safetensors.torch import load_file
    from slmforge.trainer.shrink.distill import DistillOptions, distill

    from tests.tiny_checkpoint import build_tiny_checkpoint

    data = write(tmp_path / "ds" / "train.jsonl", [json.dumps({"text": DOC * n}) for n in range(1, 7)]).parent
    write(data / "heldout.jsonl", [json.dumps({"text": DOC * 2})])
    student = build_tiny_checkpoint(tmp_path / "student", seed=1)  # same tokenizer, other weights
    flags = {"max_steps": 16, "batch_size": 2, "seq_len": 32, "save_every": 4, "eval_tokens": 64, "lr": 1e-3, "seed": 3}
    out = tmp_path / "resumed"
    argv = [sys.executable, "-m", "slmforge.cli", "distill", "--teacher", str(tiny_checkpoint), "--student",
            str(student), "--data", str(data), "--out", str(out)]
    kill_at_checkpoint_4_then_resume(argv, flags, out)
    manifest = json.loads((out / "slmforge.json").read_text())
    assert manifest["metrics"]["resumed_from_step"] >= 4 and manifest["metrics"]["steps"] == 16
    assert manifest["summary"].startswith("held-out ppl ") and "16 steps" in manifest["summary"]
    assert not work_dir_for(out).exists()

    straight = distill(tiny_checkpoint, student, data, tmp_path / "straight", DistillOptions(**flags))
    a, b = load_file(out / "model.safetensors"), load_file(straight.checkpoint / "model.safetensors")
    base = load_file(student / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert max((a[k] - base[k]).abs().max().item() for k in a) > 1e-3  # and training did move the weights
    history = [json.loads((d / "distill_history.json").read_text()) for d in (out, straight.checkpoint)]
    assert [h["step"] for h in history[0]] == list(range(1, 17))
    assert [h["kd"] for h in history[0]] == pytest.approx([h["kd"] for h in history[1]], abs=1e-5)
