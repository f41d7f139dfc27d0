"""llama.cpp's memory beyond the model file and the KV cache, per model and context (export/fit.py's generator term).

One child per (model, n_ctx, n_batch): load with ``use_mmap=False`` (the weights really in RAM, as
on a device), evaluate a short prompt, and take RSS after minus RSS before, minus the file size and
the KV cache computed from the GGUF's metadata. Children, so that one load does not inherit the
previous one's heap.

    python -m slmforge.bench.dev.generator_memory MODEL.gguf... [--ctx 1024 4096] [--out bench/results/generator_memory.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from slmforge.bench.dev.runtime_footprint import gguf_config
from slmforge.export import fit

MB = 1e6

_CHILD = """
import json, sys
from llama_cpp import Llama
def rss():
    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmRSS'))
path, n_ctx, n_batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
before = rss()
llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch, use_mmap=False, n_threads=2, verbose=False)
llm.eval(llm.tokenize(b"The capital of France is"))
print(json.dumps({"rss_delta": rss() - before}))
"""


def measure(model: Path, n_ctx: int, n_batch: int) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", _CHILD, str(model), str(n_ctx), str(n_batch)],
                          capture_output=True, text=True, check=True)
    delta = json.loads(done.stdout.strip().splitlines()[-1])["rss_delta"]
    config = gguf_config(model)
    kv = fit.kv_cache_bytes(config, n_ctx, fit.KV_BYTES_PER_VALUE["gguf"])
    size = model.stat().st_size
    return {"model": model.name, "vocab": config.get("vocab_size"), "n_ctx": n_ctx, "n_batch": n_batch,
            "rss_delta_mb": round(delta / MB, 1), "file_mb": round(size / MB, 1), "kv_mb": round(kv / MB, 1),
            "generator_mb": round((delta - size - kv) / MB, 1),
            "fit_estimate_mb": round(fit.generator_overhead_bytes("gguf", config) / MB, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--ctx", nargs="+", type=int, default=[1024, 4096])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path("bench/results/generator_memory.json"))
    args = parser.parse_args()
    rows = [measure(m, n_ctx, args.batch) for m in args.models for n_ctx in args.ctx]
    for row in rows:
        print(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
