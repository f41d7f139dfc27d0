"""Our GGUF export of a real checkpoint vs transformers: logits at every position, in llama.cpp.

The architecture matrix (tests/test_arch_matrix.py) proves each family on tiny random models; this
is the same comparison on a real one (docs/architectures.md quotes it for Gemma 3 270M). llama.cpp
runs with an F32 KV cache and one thread, torch with one thread, so the figures are the writer's.

    python -m slmforge.bench.dev.export_logits --model CHECKPOINT --out-type F16 --quant Q8_0 --quant Q4_K_M

``--quant`` also quantizes the written file (export/quantize.py) and compares each quantized file.
Tokenization: llama.cpp on the written file vs the HF tokenizer over the shipped corpus and a few
hard lines, and with ``--source-gguf`` vs llama.cpp on the GGUF the checkpoint was imported from.
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


def _texts_vs_reference(gguf_path: Path, tokenizer, model) -> list[dict]:
    import torch
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), n_ctx=1024, n_batch=1024, logits_all=True, n_threads=1,
                verbose=False, type_k=0, type_v=0)  # GGML_TYPE_F32 KV cache
    rows = []
    try:
        for text in TEXTS:
            ids = tokenizer(text)["input_ids"]  # with the model's own BOS rule
            with torch.no_grad():
                reference = model(torch.tensor([ids])).logits[0].numpy()
            llm.reset()
            llm.eval(ids)
            got = np.array(llm.scores[: len(ids)])
            rows.append({
                "tokens": len(ids), "max_abs_diff": round(float(np.abs(got - reference).max()), 4),
                "mean_abs_diff": round(float(np.abs(got - reference).mean()), 5),
                "logit_std": round(float(reference.std()), 2),
                "top1_agreement": round(float((got.argmax(-1) == reference.argmax(-1)).mean()), 4)})
    finally:
        llm.close()
    return rows


def _tokenization(gguf_path: Path, tokenizer, source_gguf: Path | None) -> dict:
    """Texts whose llama.cpp tokenization differs from HF's (and from the source GGUF's)."""
    from llama_cpp import Llama

    from slmforge.assets import example_docs

    texts = [p.read_text(encoding="utf-8")[:20000] for p in sorted(Path(example_docs()).rglob("*.rst"))[:12]]
    texts += ["naïve café — 東京 🚀  tabs\tand\nnewlines  1234567 x=3.14e-10",
              "<start_of_turn>user\nHow do I copy a file?<end_of_turn>\n<start_of_turn>model\n",
              "  leading spaces and ∮ E⋅da = Q,  ǅ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"]
    ours = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    source = Llama(model_path=str(source_gguf), vocab_only=True, verbose=False) if source_gguf else None
    out = {"texts": len(texts), "tokens": 0, "differ_from_hf": 0, "differ_from_source_gguf": None}
    try:
        for text in texts:
            got = ours.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            hf = tokenizer(text, add_special_tokens=False)["input_ids"]
            out["tokens"] += len(hf)
            out["differ_from_hf"] += got != hf
            if source is not None:
                same = got == source.tokenize(text.encode("utf-8"), add_bos=False, special=True)
                out["differ_from_source_gguf"] = (out["differ_from_source_gguf"] or 0) + (not same)
    finally:
        ours.close()
        if source is not None:
            source.close()
    return out


def compare(model_dir: Path, out_type: str, quants: list[str], source_gguf: Path | None = None) -> dict:
    import torch
    from slmforge.export.gguf_writer import write_gguf
    from slmforge.export.quantize import quantize_gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with tempfile.TemporaryDirectory(prefix="export-logits-") as tmp:
        started = time.perf_counter()
        result = write_gguf(model_dir, Path(tmp) / f"model-{out_type}.gguf", out_type, progress=False)
        report = {"model": str(model_dir), "architecture": result.architecture, "out_type": out_type,
                  "tensors": result.tensors, "parameters": result.parameters,
                  "write_s": round(time.perf_counter() - started, 1),
                  "tokenization": _tokenization(result.path, tokenizer, source_gguf),
                  "texts": _texts_vs_reference(result.path, tokenizer, model), "quants": {}}
        for quant in quants:
            path = Path(tmp) / f"model-{quant}.gguf"
            quantize_gguf(result.path, path, quant, threads=1)
            report["quants"][quant] = {"mib": round(path.stat().st_size / 2**20, 1),
                                       "texts": _texts_vs_reference(path, tokenizer, model)}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="HF checkpoint folder")
    parser.add_argument("--out-type", default="F32", choices=["F32", "F16", "BF16"])
    parser.add_argument("--quant", action="append", default=[], help="also quantize to this type and compare (repeatable)")
    parser.add_argument("--source-gguf", type=Path, help="the GGUF the checkpoint was imported from (tokenization check)")
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args()
    report = compare(args.model, args.out_type, args.quant, args.source_gguf)
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
