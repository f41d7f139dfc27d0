"""What each llama.cpp knob does to prefill (pp512) and decode (tg128) on this machine, from one run.

Every variant is timed against the runtime's settings of today (``LEGACY_SETTINGS``) in alternating
repeats (baseline, variant, baseline, …) on the same GGUF and threads, so a loaded machine slows both
alike; the table reports each variant as a ratio to its own baseline, beside the absolute tok/s.
Knobs: threads, ``n_threads_batch``, ``n_batch``/``n_ubatch``, flash attention, KV cache type, mmap vs. load, and the quant
itself (``--quant Q4_0 Q4_K_M`` requantizes the GGUF with llama.cpp into a temp folder: speed only,
the quality gate judges real exports).

    python -m slmforge.bench.dev.llama_tuning MODEL.gguf [--threads 2] [--repeats 3] [--quant Q4_0 Q4_K_M]
        [--out bench/results/llama_tuning.json]   (also writes a PNG beside it)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import click
from slmforge.bench.measure import PP_TOKENS, TG_TOKENS, LlamaCppProbe, random_tokens
from slmforge.runtime.generate.llamacpp import LEGACY_SETTINGS, LlamaSettings, open_llama
from tqdm import tqdm

from slmforge.fileio import atomic_write_json
from slmforge.output import format_table


def variants(threads: int) -> dict[str, LlamaSettings]:
    """One knob changed at a time from today's settings, then the combination the runtime now uses."""
    from slmforge.runtime.generate.llamacpp import FAST_SETTINGS

    base = replace(LEGACY_SETTINGS, threads=threads)
    out = {
        "threads 1": replace(base, threads=1),
        f"n_threads_batch 1 (decode {threads})": replace(base, threads_batch=1),
        "n_batch 256 (n_ubatch 256)": replace(base, n_batch=256, n_ubatch=256),
        "n_ubatch 128": replace(base, n_ubatch=128),
        "n_ubatch 256": replace(base, n_ubatch=256),
        "flash attention": replace(base, flash_attn=True),
        "flash attention + KV q8_0": replace(base, flash_attn=True, kv_type="q8_0"),
        "no mmap (load)": replace(base, use_mmap=False),
        f"fast path (flash attention {'on' if FAST_SETTINGS.flash_attn else 'off'}, n_ubatch {FAST_SETTINGS.n_ubatch}, "
        f"KV {FAST_SETTINGS.kv_type})": replace(FAST_SETTINGS, threads=threads),
    }
    return out


def requantize(gguf: Path, quant: str, folder: Path) -> Path:
    """``gguf`` requantized to ``quant`` by llama.cpp (allow_requantize: for speed, not for quality)."""
    import llama_cpp

    out = folder / f"{gguf.stem}-{quant}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    params.allow_requantize = True
    params.nthread = 2
    if llama_cpp.llama_model_quantize(str(gguf).encode(), str(out).encode(), params) != 0:
        raise click.ClickException(f"{gguf}: llama.cpp could not requantize to {quant}")
    return out


def time_pair(gguf_a: Path, a: LlamaSettings, gguf_b: Path, b: LlamaSettings, repeats: int,
              label: str) -> dict[str, Any]:
    """pp512 and tg128 of a (the baseline) and b, alternating; medians and b ÷ a."""
    llm_a, llm_b = open_llama(gguf_a, a, n_ctx=1024), open_llama(gguf_b, b, n_ctx=1024)
    try:
        probes = LlamaCppProbe(llm_a), LlamaCppProbe(llm_b)
        pp = random_tokens(probes[0].vocab_size, PP_TOKENS, seed=1)
        tg = random_tokens(probes[0].vocab_size, TG_TOKENS, seed=2)
        for probe in probes:  # warm-up, as llama-bench does
            probe.prefill(pp[:16])
            probe.decode(tg[:16])
        rates: dict[str, list[float]] = {"pp_a": [], "pp_b": [], "tg_a": [], "tg_b": []}
        for _ in tqdm(range(repeats), desc=label, unit="rep", file=sys.stderr, leave=False):
            for side, probe in zip("ab", probes, strict=True):
                rates[f"pp_{side}"].append(PP_TOKENS / probe.prefill(pp))
                rates[f"tg_{side}"].append(TG_TOKENS / probe.decode(tg))
    finally:
        llm_a.close()
        llm_b.close()
    med = {key: statistics.median(v) for key, v in rates.items()}
    return {"variant": label, "settings": asdict(b), "file": gguf_b.name,
            "pp512_base": round(med["pp_a"], 1), "pp512": round(med["pp_b"], 1),
            "pp512_ratio": round(med["pp_b"] / med["pp_a"], 3),
            "tg128_base": round(med["tg_a"], 1), "tg128": round(med["tg_b"], 1),
            "tg128_ratio": round(med["tg_b"] / med["tg_a"], 3)}


def plot(rows: list[dict[str, Any]], png: Path) -> None:
    from slmforge.bench.plots import pyplot, write_png

    plt = pyplot()
    labels = [r["variant"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    y = range(len(rows))
    ax.barh([i - 0.2 for i in y], [r["pp512_ratio"] for r in rows], height=0.4, label="prefill pp512")
    ax.barh([i + 0.2 for i in y], [r["tg128_ratio"] for r in rows], height=0.4, label="decode tg128")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_xlabel("speed ÷ today's settings (same run, alternating repeats)")
    ax.set_title("llama.cpp knobs on this machine")
    ax.legend(loc="lower right")
    write_png(plt, fig, png)


@click.command()
@click.argument("gguf", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--threads", type=click.IntRange(1), default=None, help="Threads (default: host cores).")
@click.option("--knobs/--no-knobs", default=True, show_default=True, help="Time the knobs (else only --quant).")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1), help="Alternating repeats.")
@click.option("--quant", "quants", multiple=True, help="Also time this quant of the same model (e.g. Q4_0).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench/results/llama_tuning.json"),
              show_default=True)
def main(gguf: Path, threads: int | None, knobs: bool, repeats: int, quants: tuple[str, ...], out: Path) -> None:
    """Time llama.cpp's knobs against today's runtime settings, one variant at a time."""
    from slmforge.runtime.generate.backend import default_threads

    threads = threads or default_threads()
    base = replace(LEGACY_SETTINGS, threads=threads)
    rows = [time_pair(gguf, base, gguf, s, repeats, label) for label, s in variants(threads).items() if knobs]
    with tempfile.TemporaryDirectory(prefix="slmforge-quant-") as tmp:
        for quant in quants:
            other = requantize(gguf, quant, Path(tmp))
            rows.append(time_pair(gguf, base, other, base, repeats, f"quant {quant} (today's settings)"))
    keys = ["variant", "pp512", "pp512_ratio", "tg128", "tg128_ratio", "pp512_base", "tg128_base"]
    click.echo(format_table(keys, [[r[k] for k in keys] for r in rows]))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, {"gguf": str(gguf), "threads": threads, "repeats": repeats, "rows": rows})
    plot(rows, out.with_suffix(".png"))
    click.echo(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
