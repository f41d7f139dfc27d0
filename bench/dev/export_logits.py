"""Our GGUF export of a real checkpoint vs transformers: logits at every position, in llama.cpp.

The architecture matrix (tests/test_arch_matrix.py) proves each family on tiny random models; this
is the same comparison on a real one (docs/architectures.md quotes it for Gemma 3 270M). llama.cpp
runs with an F32 KV cache and one thread, torch with one thread, so the figures are the writer's.

    python -m slmforge.bench.dev.export_logits --model CHECKPOINT --out-type F32
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

TEXTS = [
    "The capital of France is",
    "A module is a file containing Python definitions and statements. " * 12,
    "<start_of_turn>user\nHow do I copy a file in Python?<end_of_turn>\n<start_of_turn>model\n",
]


def compare(model_dir: Path, out_type: str) -> dict:
    import torch
    from llama_cpp import Llama
    from slmforge.export.gguf_writer import write_gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="export-logits-") as tmp:
        started = time.perf_counter()
        result = write_gguf(model_dir, Path(tmp) / f"model-{out_type}.gguf", out_type, progress=False)
        report = {"model": str(model_dir), "architecture": result.architecture, "out_type": out_type,
                  "tensors": result.tensors, "parameters": result.parameters,
                  "write_s": round(time.perf_counter() - started, 1), "texts": []}
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        llm = Llama(model_path=str(result.path), n_ctx=1024, n_batch=1024, logits_all=True, n_threads=1,
                    verbose=False, type_k=0, type_v=0)  # GGML_TYPE_F32 KV cache
        try:
            for text in TEXTS:
                ids = tokenizer(text)["input_ids"]  # with the model's own BOS rule
                with torch.no_grad():
                    reference = model(torch.tensor([ids])).logits[0].numpy()
                llm.reset()
                llm.eval(ids)
                got = np.array(llm.scores[: len(ids)])
                report["texts"].append({
                    "tokens": len(ids), "max_abs_diff": round(float(np.abs(got - reference).max()), 4),
                    "mean_abs_diff": round(float(np.abs(got - reference).mean()), 5),
                    "logit_std": round(float(reference.std()), 2),
                    "top1_agreement": round(float((got.argmax(-1) == reference.argmax(-1)).mean()), 4)})
        finally:
            llm.close()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="HF checkpoint folder")
    parser.add_argument("--out-type", default="F32", choices=["F32", "F16", "BF16"])
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args()
    report = compare(args.model, args.out_type)
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
