"""Every rung of the GGUF quantization ladder on one checkpoint: real size and bits per weight
read back from the file, and quality against the source (perplexity ratio, KL, top-1) on
held-out text. Writes a JSON report and a PNG (size vs. perplexity ratio).

    python -m slmforge.bench.dev.export_ladder --model CKPT --out bench/results/export_ladder
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from slmforge.export import quality, quantize
from slmforge.export.gguf_writer import write_gguf

from slmforge.assets import example_docs
from slmforge.heldout import load_heldout_texts


def run(model: Path, heldout: Path, eval_tokens: int, threads: int | None) -> list[dict[str, Any]]:
    windows = quality.token_windows(model, load_heldout_texts(heldout), 512, eval_tokens)
    reference = quality.source_reference(model, windows)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ladder-") as tmp:
        f16 = write_gguf(model, Path(tmp) / "model-F16.gguf", "F16").path
        for quant in ("F16", *quantize.LADDER):
            started = time.perf_counter()
            path = f16 if quant == "F16" else Path(tmp) / f"model-{quant}.gguf"
            contents = quantize.inspect_gguf(f16) if quant == "F16" else quantize.quantize_gguf(f16, path, quant, threads)
            seconds = time.perf_counter() - started
            report = quality.compare(reference, quality.artifact_logits(path, windows, threads))
            rows.append({"quant": quant, "size_mb": round(contents.size_bytes / 1e6, 1),
                         "bits_per_weight": contents.bits_per_weight, "tensor_types": contents.tensor_types,
                         "quantize_s": round(seconds, 1), **report.as_dict()})
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r["size_mb"] for r in rows], [r["ppl_ratio"] for r in rows])
    for r in rows:
        ax.annotate(f"{r['quant']}\n{r['bits_per_weight']:.2f} b/w", (r["size_mb"], r["ppl_ratio"]), fontsize=8,
                    textcoords="offset points", xytext=(4, 4))
    ax.axhline(1.10, color="red", linestyle="--", linewidth=0.8, label="default gate, <= 4-bit (1.10)")
    ax.axhline(1.02, color="orange", linestyle="--", linewidth=0.8, label="default gate, 8-bit (1.02)")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("perplexity ratio (exported / source)")
    ax.set_title("GGUF ladder: size vs. quality against the source checkpoint")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--heldout", type=Path, default=example_docs())
    parser.add_argument("--eval-tokens", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True, help="folder for ladder.json and ladder.png")
    args = parser.parse_args()
    rows = run(args.model, args.heldout, args.eval_tokens, args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ladder.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, args.out / "ladder.png")
    for r in rows:
        print(f"{r['quant']:7} {r['size_mb']:7.1f} MB {r['bits_per_weight']:6.2f} b/w  ppl ratio {r['ppl_ratio']:.4f}"
              f"  KL {r['kl_mean']:.4f}  top-1 {r['top1_agreement']:.3f}")


if __name__ == "__main__":
    main()
