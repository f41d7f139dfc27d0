"""Peak memory of merging two real checkpoints, as a multiple of one checkpoint's size on disk.

Goal: `slmforge merge` peaks at ≤ 2.5× one checkpoint (it streams tensor by tensor).
Measured in the same run, each in a fresh process (peak RSS from wait4): an interpreter that
only imports the merge code (the floor), `slmforge merge`, mergekit on the same recipe (peer,
if installed) and a naive merge (load both models with transformers, average state dicts).

    .venv/bin/python -m slmforge.bench.dev.merge_memory --out bench/results/merge_memory
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from slmforge.output import format_table

NAIVE = """
import sys, torch
from transformers import AutoModelForCausalLM
a = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
b = AutoModelForCausalLM.from_pretrained(sys.argv[2], dtype=torch.float32)
sd_b = b.state_dict()
merged = {k: (v + sd_b[k]) / 2 for k, v in a.state_dict().items()}
a.load_state_dict(merged)
a.save_pretrained(sys.argv[3])
"""
FLOOR = "import torch, slmforge.trainer.merge.engine, slmforge.trainer.merge.config\n"  # what every merge process pays


def make_perturbed_copy(src: Path, dst: Path, scale: float = 0.02, seed: int = 0) -> Path:
    """A second 'fine-tuned' parent: every float tensor plus Gaussian noise at ``scale`` × its std."""
    import torch
    from slmforge.trainer.merge.safetensors_stream import StreamingWriter, checkpoint_tensors, read_tensor

    if (dst / "model.safetensors").is_file():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    infos = checkpoint_tensors(src)
    from slmforge.trainer.merge.safetensors_stream import DTYPES

    writer = StreamingWriter(dst / "model.safetensors", [(n, DTYPES[i.dtype], i.shape) for n, i in infos.items()])
    gen = torch.Generator().manual_seed(seed)
    for name, info in infos.items():
        t = read_tensor(info)
        if t.is_floating_point() and t.numel() > 1:
            t = t + torch.randn(t.shape, generator=gen, dtype=t.dtype) * (scale * t.float().std().item())
        writer.write(name, t)
    writer.close()
    for f in src.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "slmforge.json"):
            shutil.copy(f, dst / f.name)
    return dst


def peak_rss(cmd: list[str], log: Path) -> tuple[int, float, int]:
    """Run ``cmd``; return (peak RSS bytes, seconds, exit code)."""
    started = time.time()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "SLMFORGE_DEBUG": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
    return usage.ru_maxrss * 1024, time.time() - started, os.waitstatus_to_exitcode(status)


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/results/merge_memory"), show_default=True)
@click.option("--model", type=click.Path(path_type=Path), default=None, help="Checkpoint A (default: the embedded base).")
@click.option("--other", type=click.Path(path_type=Path), default=None,
              help="Checkpoint B (default: A plus 2% Gaussian noise, made once).")
@click.option("--work", type=click.Path(path_type=Path), default=Path.home() / ".cache" / "slmforge" / "bench-merge",
              show_default=True, help="Scratch folder for the second parent and the merged outputs.")
@click.option("--skip-naive", is_flag=True)
def main(out: Path, model: Path | None, other: Path | None, work: Path, skip_naive: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if model is None:
        from slmforge.trainer.base.importer import import_base

        model = import_base(None, out=None).checkpoint
    other_kind = "given"
    if other is None:
        other = make_perturbed_copy(model, work / "perturbed")
        other_kind = "the base plus 2% Gaussian noise per tensor (make_perturbed_copy, seed 0)"
    size = (model / "model.safetensors").stat().st_size
    recipe = out / "recipe.yaml"
    recipe.write_text(f"merge_method: linear\nmodels:\n  - model: {model}\n    parameters: {{weight: 0.5}}\n"
                      f"  - model: {other}\n    parameters: {{weight: 0.5}}\ndtype: float32\n")
    py = sys.executable
    runs = {"floor (import only)": [py, "-c", FLOOR],
            "slmforge merge": [py, "-m", "slmforge.cli", "merge", str(recipe), "--out", str(work / "ours")]}
    mergekit_yaml = Path(py).parent / "mergekit-yaml"
    if mergekit_yaml.exists():
        runs["mergekit-yaml"] = [str(mergekit_yaml), str(recipe), str(work / "mergekit"), "--no-copy-tokenizer"]
    if not skip_naive:
        runs["naive (2 models in RAM)"] = [py, "-c", NAIVE, str(model), str(other), str(work / "naive")]
    rows, results = [], {}
    for label, cmd in runs.items():
        rss, secs, code = peak_rss(cmd, out / f"{label.split()[0]}.log")
        results[label] = {"peak_rss_bytes": rss, "ratio_to_checkpoint": round(rss / size, 3), "seconds": round(secs, 1),
                          "exit_code": code}
        rows.append([label, f"{rss / 2**20:.0f}", f"{rss / size:.2f}x", f"{secs:.1f}", code])
    report = {"checkpoint": str(model), "other": str(other), "other_kind": other_kind, "checkpoint_bytes": size, "goal_ratio": 2.5,
              "runs": results}
    (out / "merge_memory.json").write_text(json.dumps(report, indent=2))
    click.echo(f"checkpoint on disk: {size / 2**20:.0f} MiB ({model})")
    click.echo(format_table(["run", "peak RSS MiB", "× checkpoint", "seconds", "exit"], rows))
    _plot(results, out / "merge_memory.png")
    for name in ("ours", "naive", "mergekit"):
        shutil.rmtree(work / name, ignore_errors=True)


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results)
    ratios = [results[k]["ratio_to_checkpoint"] for k in labels]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bars = ax.barh(labels, ratios, color=["#999" if "floor" in k else "#2a7" if "slmforge" in k else "#c63"
                                          for k in labels])
    ax.axvline(2.5, color="k", ls="--", lw=1, label="goal 2.5×")
    ax.bar_label(bars, fmt="%.2f×", padding=3)
    ax.set_xlabel("peak RSS / one checkpoint's size on disk")
    ax.set_title("Merging two SmolLM2-135M checkpoints (fp32)")
    ax.invert_yaxis()
    ax.set_xlim(0, max(ratios + [2.5]) * 1.2)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
