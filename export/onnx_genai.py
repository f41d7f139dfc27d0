"""HF checkpoint -> ONNX folder for onnxruntime-genai (int4 / int8 CPU, fp32 reference).

onnxruntime-genai's model builder writes the graph, the quantized weights, genai_config.json
and the tokenizer files in one go; we run it as a subprocess (it prints a lot and keeps
module-level state) on a local folder only, into a temp folder renamed when complete.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from slmforge.errors import UserError
from slmforge.fileio import atomic_dir

PRECISIONS: tuple[str, ...] = ("fp32", "int8", "int4")  # best quality first
REQUIRED_FILES = ("genai_config.json", "tokenizer.json")


def check_precision(name: str) -> str:
    lower = name.lower()
    if lower not in PRECISIONS:
        raise UserError(f"unknown ONNX quant {name!r}; choose one of {', '.join(PRECISIONS)}")
    return lower


def build_onnx(checkpoint: str | Path, out_dir: str | Path, precision: str = "int4") -> Path:
    """Run the model builder for CPU; ``out_dir`` appears only when the build succeeded."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    precision = check_precision(precision)
    if not (checkpoint / "config.json").is_file():
        raise UserError(f"{checkpoint}: not an HF checkpoint (config.json missing)")
    with tempfile.TemporaryDirectory(prefix="slmforge-onnx-cache-") as cache, atomic_dir(out_dir) as tmp:
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint.resolve()),
                   "-o", str(tmp), "-p", precision, "-e", "cpu", "-c", cache]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            raise UserError(f"{checkpoint}: onnxruntime-genai's model builder failed for {precision}: "
                            f"{lines[-1].strip() if lines else 'no message'}")
        check_onnx_folder(tmp)
    return out_dir


def check_onnx_folder(folder: str | Path) -> dict:
    """genai_config.json, tokenizer and every model file it names must be present and non-empty."""
    folder = Path(folder)
    for name in REQUIRED_FILES:
        if not (folder / name).is_file():
            raise UserError(f"{folder}: {name} missing; not an onnxruntime-genai model folder")
    try:
        config = json.loads((folder / "genai_config.json").read_text())
        model_file = config["model"]["decoder"]["filename"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{folder}/genai_config.json: unreadable ({exc.__class__.__name__}: {exc})") from None
    onnx_path = folder / model_file
    if not onnx_path.is_file() or onnx_path.stat().st_size == 0:
        raise UserError(f"{folder}: model file {model_file} named in genai_config.json is missing or empty")
    return config


def folder_size(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
