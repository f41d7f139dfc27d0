"""What the on-device runtime process costs besides the model: the term export's fit check adds.

Runs ``slmforge run BUNDLE QUESTION --json`` in a child process per bundle and takes the child's
peak RSS (its VmHWM, recorded at exit); with ``--serve`` also ``slmforge serve BUNDLE`` answering
three questions over HTTP (its VmHWM read from /proc while it still runs). ``serve`` is what a device
keeps running: it holds the embedder's onnxruntime session beside the model, while ``run`` embeds in
a child that exits before the model loads. From each peak it subtracts what export already counts —
the model file, the KV cache and the generator's own buffers (``fit.runtime_memory``: the window and
cache type the fast path runs on the bundle's profile, and for serve the batched context's streams) —
leaving the process: Python, numpy, onnxruntime, SQLite, the CLI and the HTTP server. Minus the
embedder's file it is the base that ``fit.RUNTIME_BASE_BYTES`` must cover. ``rss_over_files`` is the
whole peak ÷ (model file + embedder file), issue #18's figure; ``--legacy`` measures today's path too
(``run --legacy-runtime``), in the same run.

    python -m slmforge.bench.dev.runtime_footprint BUNDLE... [--legacy] [--serve] [--out bench/results/runtime_footprint.json]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from slmforge.export import fit
from slmforge.runtime.bundle.reader import open_bundle

from slmforge.fileio import atomic_write_json
from slmforge.output import format_table

QUESTION = "How do I copy a file in Python?"
SERVE_QUESTIONS = (QUESTION, "How do I delete a file?", "What is a lambda function?")
MB = 1e6


# The child records its own peak at exit (measure.peak_rss_bytes: VmHWM of its address space on
# Linux); the ru_maxrss the parent sees also keeps the pre-exec peak of the process it was forked
# from (a 1.2 GB pytest made a 390 MB `slmforge run` read as 1.3 GB).
_CHILD = """
import atexit, sys
def _record(path=sys.argv.pop(1)):
    from slmforge.bench.measure import peak_rss_bytes
    open(path, 'w').write(str(peak_rss_bytes()))
atexit.register(_record)
from slmforge.cli import main
main()
"""


def peak_rss_of(argv: list[str]) -> int:
    """Peak resident bytes of ``slmforge ARGV`` run in a child process, as the child measures itself."""
    with tempfile.TemporaryDirectory(prefix="slmforge-footprint-") as tmp:
        record = Path(tmp, "peak_rss_bytes")
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(record), *argv], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"error: slmforge {' '.join(argv)} exited {proc.returncode}: {proc.stderr[-300:]}")
        return int(record.read_text())


def gguf_config(model: Path) -> dict[str, Any]:
    """The few hyperparameters the KV-cache formula needs, read from the GGUF's metadata."""
    from slmforge.gguf_header import read_gguf_header

    metadata = read_gguf_header(model).metadata
    arch = metadata["general.architecture"]

    def value(key: str) -> int:
        return int(metadata[f"{arch}.{key}"])

    heads = value("attention.head_count")
    config = {"num_hidden_layers": value("block_count"), "num_attention_heads": heads,
              "num_key_value_heads": value("attention.head_count_kv"), "hidden_size": value("embedding_length")}
    if f"{arch}.attention.key_length" in metadata:  # Gemma 3: 256, not hidden / heads
        config["head_dim"] = value("attention.key_length")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is not None:
        config["vocab_size"] = tokens.length
    return config


def vm_hwm_bytes(pid: int) -> int:
    """Peak resident bytes of a running process (Linux: VmHWM in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise SystemExit(f"error: /proc/{pid}/status has no VmHWM (this bench reads Linux's /proc)")


def peak_rss_of_serve(bundle_path: Path, threads: int | None) -> int:
    """Peak resident bytes of ``slmforge serve BUNDLE`` after it answered ``SERVE_QUESTIONS`` (64 tokens each)."""
    from slmforge.bench.dev.load_test import post_chat, server_process

    extra = ["--no-cache", *(["--threads", str(threads)] if threads else [])]
    with server_process(bundle_path, queue=4, extra=extra) as (url, proc):
        for question in SERVE_QUESTIONS:
            status, _, _ = post_chat(url, question, 64, 900)
            if status != 200:
                raise SystemExit(f"error: serve {bundle_path} answered {status} to {question!r}")
        return vm_hwm_bytes(proc.pid)


def measure(bundle_path: Path, legacy: bool = False, threads: int | None = None, serve: bool = False) -> dict[str, Any]:
    """One bundle's peak RSS in ``run`` (or ``serve``), split into the terms export's fit check adds."""
    bundle = open_bundle(bundle_path)
    m = bundle.manifest
    if m.model.get("format") != "gguf":
        raise SystemExit(f"error: {bundle_path}: only GGUF bundles are measured here (the generator term is llama.cpp's)")
    from slmforge.runtime.answer.engine import answer_path

    path = answer_path(legacy, profile_name=m.profile)
    n_ctx = int(m.generation["n_ctx"])
    if path.max_n_ctx:
        n_ctx = min(n_ctx, path.max_n_ctx)
    config = gguf_config(bundle.model_path)
    from slmforge.runtime.generate.llamacpp import kv_type_for

    kv_type = kv_type_for(bundle.model_path, path.llama.kv_type)
    streams, contexts = 1, 1
    if serve:
        from slmforge.runtime.generate.batched import profile_parallel

        streams, contexts = fit.serve_streams(profile_parallel(m.profile))
        peak = peak_rss_of_serve(bundle_path, threads)
    else:
        peak = peak_rss_of(["run", str(bundle_path), QUESTION, "--json", *(["--legacy-runtime"] if legacy else []),
                            *(["--threads", str(threads)] if threads else [])])
    kv = int(fit.kv_cache_bytes(config, n_ctx, 1) * fit.KV_TYPE_BYTES_PER_VALUE[kv_type]) * streams
    generator = fit.generator_overhead_bytes("gguf", config) * contexts
    model_bytes = bundle.model_path.stat().st_size
    embedder_bytes = (bundle.embedder_dir / "model.onnx").stat().st_size
    process = peak - model_bytes - kv - generator
    return {"bundle": str(bundle_path), "profile": m.profile, "command": "serve" if serve else "run",
            "path": "legacy" if legacy else "fast", "quant": m.model["quant"],
            "n_ctx": n_ctx, "kv_type": kv_type, "kv_streams": streams, "peak_rss_mb": round(peak / MB, 1),
            "rss_over_files": round(peak / (model_bytes + embedder_bytes), 3),
            "model_file_mb": round(model_bytes / MB, 1), "kv_cache_mb": round(kv / MB, 1),
            "generator_overhead_mb": round(generator / MB, 1), "runtime_process_mb": round(process / MB, 1),
            "embedder_file_mb": round(embedder_bytes / MB, 1), "runtime_base_mb": round((process - embedder_bytes) / MB, 1)}


def plot(rows: list[dict[str, Any]], png: Path) -> None:
    """Peak RSS per bundle and path, split into what it holds, against 1.5 × (model + embedder files)."""
    from slmforge.bench.plots import pyplot, write_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10.5, 1.6 + 0.6 * len(rows)))
    labels = [f"{Path(r['bundle']).name} {r.get('command', 'run')} ({r.get('path', '')})" for r in rows]
    left = [0.0] * len(rows)
    for key, name in (("model_file_mb", "model file"), ("kv_cache_mb", "KV cache (formula)"),
                      ("generator_overhead_mb", "generator buffers (fit)"), ("runtime_process_mb", "the rest")):
        values = [max(0.0, r[key]) for r in rows]
        ax.barh(labels, values, left=left, label=name)
        left = [a + b for a, b in zip(left, values, strict=True)]
    for i, r in enumerate(rows):
        ax.text(r["peak_rss_mb"] + 4, i, f"{r['peak_rss_mb']:.0f} MB = {r['rss_over_files']:.2f}× files", va="center")
        ax.plot([1.5 * (r["model_file_mb"] + r["embedder_file_mb"])] * 2, [i - 0.4, i + 0.4], color="black")
    ax.set_xlabel("peak RSS of `slmforge run` / `serve`, MB (black line: 1.5 × model + embedder files)")
    ax.set_xlim(0, max(r["peak_rss_mb"] for r in rows) * 1.45)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    write_png(plt, fig, png)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--legacy", action="store_true", help="also measure `run --legacy-runtime` (today's path)")
    ap.add_argument("--threads", type=int, default=None, help="run's --threads (memory barely depends on it)")
    ap.add_argument("--serve", action="store_true",
                    help="also measure `serve` answering 3 questions (the embedder stays in its process)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/runtime_footprint.json"))
    args = ap.parse_args(argv)
    rows = [measure(path, legacy, args.threads) for path in args.bundles for legacy in ([True, False] if args.legacy else [False])]
    if args.serve:
        rows += [measure(path, False, args.threads, serve=True) for path in args.bundles]
    print(format_table(list(rows[0]), [list(r.values()) for r in rows]))
    used = fit.RUNTIME_BASE_BYTES / MB
    print(f"fit.RUNTIME_BASE_BYTES = {used:.1f} MB; measured max {max(r['runtime_base_mb'] for r in rows):.1f} MB")
    atomic_write_json(args.out, {"question": QUESTION, "rows": rows, "fit_runtime_base_mb": round(used, 1)})
    plot(rows, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
