"""How much our generation loop costs over the bare libraries, as ratios from one run.

* GGUF prefill (pp512): our ``LlamaCppBackend.stream`` of a 512-token prompt to its first token
  (tokenize, prefill, first sample, detokenize) against the bare library on the same ``Llama``:
  ``reset``, ``eval`` of the same 512 tokens, one greedy ``llama_sampler_sample``. Goal ≥ 0.98.
* GGUF decode (tg128): our ``LlamaCppBackend.stream`` (llama-cpp-python's ``Llama.generate`` + detokenize + EOG
  check + timing) against a bare token loop on the same ``Llama`` object and threads:
  ``llama_sampler_sample`` (greedy, in C) then ``Llama.eval`` of that one token. Goal ≥ 0.98.
* ONNX: our ``OnnxGenaiBackend.stream`` against a bare ``generate_next_token`` loop, and the ONNX
  backend's decode against the GGUF backend's on the same prompt.

Runs alternate (ours, bare, ours, bare, …) so a loaded machine slows both alike; ratios use
medians. ``--profile`` adds a cProfile of our loop (where the time goes besides llama_decode).

    python -m slmforge.bench.dev.runtime_overhead MODEL.gguf [--onnx DIR] [--threads 2] [--out overhead.json]
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from slmforge.bench.measure import PP_TOKENS
from tqdm import tqdm

from slmforge.errors import UserError
from slmforge.fileio import atomic_write_json

PROMPT = ("The Python standard library is very extensive, offering a wide range of facilities. "
          "It contains built-in modules that provide access to system functionality such as file I/O")


def decode_rate(first: float | None, end: float, tokens: int) -> float:
    """Tokens per second after the first token (the same definition as our StreamTimer)."""
    if first is None or tokens < 2 or end <= first:
        return 0.0
    return (tokens - 1) / (end - first)


def bare_llama_loop(llm: Any, prompt_tokens: list[int], n: int) -> float:
    """llama-cpp-python at its barest: C greedy sampler, then eval of the sampled token."""
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_greedy()
    try:
        llm.reset()
        llm.eval(prompt_tokens)
        first = None
        for i in range(n):
            token = llama_cpp.llama_sampler_sample(sampler, llm._ctx.ctx, -1)
            if i == 0:
                first = time.perf_counter()
            llm.eval([token])
        return decode_rate(first, time.perf_counter(), n)
    finally:
        llama_cpp.llama_sampler_free(sampler)


def bare_genai_loop(model: Any, prompt_tokens: list[int], n: int) -> float:
    """onnxruntime-genai at its barest: ``generate_next_token`` n times after the prompt."""
    import numpy as np
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt_tokens) + n + 1, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.asarray(prompt_tokens, dtype=np.int32))
    first = None
    for i in range(n):
        generator.generate_next_token()
        if i == 0:
            first = time.perf_counter()
    return decode_rate(first, time.perf_counter(), n)


def pp_prompt(backend: Any, n: int) -> tuple[str, list[int]]:
    """A text prompt of ``n`` tokens (as the backend tokenizes it) and those tokens."""
    text = PROMPT
    while len(backend.tokenize(text)) < n + 8:
        text += " " + PROMPT
    tokens = backend.tokenize(text)[:n]
    text = backend._llm.detokenize(tokens, special=True).decode("utf-8", errors="replace")
    return text, backend.tokenize(text)


def ours_prefill(backend: Any, prompt: str, n: int) -> float:
    """Our path's prefill rate: prompt tokens ÷ time from the call to the first streamed token."""
    backend._llm.reset()
    start = time.perf_counter()
    stream = backend.stream(prompt, max_tokens=1, temperature=0.0)
    next(iter(stream), None)
    elapsed = time.perf_counter() - start
    stream.drain()
    return n / elapsed


def bare_prefill(llm: Any, tokens: list[int]) -> float:
    """The library's prefill rate on the same tokens: eval, then one greedy sample in C."""
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_greedy()
    try:
        llm.reset()
        start = time.perf_counter()
        llm.eval(tokens)
        llama_cpp.llama_sampler_sample(sampler, llm._ctx.ctx, -1)
        return len(tokens) / (time.perf_counter() - start)
    finally:
        llama_cpp.llama_sampler_free(sampler)


def ours(backend: Any, n: int) -> float:
    """Our loop: ``backend.stream`` drained, decode tok/s as it reports it."""
    reset = getattr(getattr(backend, "_llm", None), "reset", None)
    if reset:
        reset()  # no prompt-prefix reuse from the previous run
    result = backend.generate(PROMPT, max_tokens=n, temperature=0.0)
    return result.decode_tok_s


def alternate(a: Callable[[], float], b: Callable[[], float], repeats: int, desc: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    a(), b()  # warm-up
    for _ in tqdm(range(repeats), desc=desc, unit="pair", file=sys.stderr, leave=False):
        xs.append(a())
        ys.append(b())
    return xs, ys


def summary(ours_rates: list[float], bare_rates: list[float]) -> dict[str, Any]:
    """Median and best-of ratios: on a loaded machine the best run is the least disturbed one."""
    mo, mb = statistics.median(ours_rates), statistics.median(bare_rates)
    bo, bb = max(ours_rates), max(bare_rates)
    return {"ours_tok_s": round(mo, 2), "bare_tok_s": round(mb, 2), "ratio": round(mo / mb, 4) if mb else None,
            "best_ratio": round(bo / bb, 4) if bb else None,
            "ours_runs": [round(x, 2) for x in ours_rates], "bare_runs": [round(x, 2) for x in bare_rates]}


def profile_ours(backend: Any, n: int, top: int = 12) -> dict[str, Any]:
    """cProfile of one run of our loop: where the time goes, and the share spent outside llama_decode.

    That share does not depend on how loaded the machine is, unlike a ratio of two timed runs:
    ``1 - share`` is the ratio our loop would reach against a loop that only decodes."""
    profiler = cProfile.Profile()
    profiler.enable()
    ours(backend, n)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = max(stats.total_tt, 1e-9)
    decode = sum(row[3] for (file, _, name), row in stats.stats.items()
                 if name == "decode" and file.replace("\\", "/").endswith("llama_cpp/_internals.py"))
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(top)
    return {"total_s": round(total, 4), "llama_decode_s": round(decode, 4),
            "outside_decode_share": round(1 - decode / total, 5), "top_functions": buffer.getvalue()}


def measure_overhead(gguf: Path, onnx: Path | None, threads: int, tokens: int, repeats: int,
                     profile: bool) -> dict[str, Any]:
    from slmforge.runtime.generate.backend import load_backend

    out: dict[str, Any] = {"gguf": str(gguf), "onnx": str(onnx) if onnx else None, "threads": threads,
                           "tokens": tokens, "repeats": repeats, "prompt_chars": len(PROMPT)}
    gguf_backend = load_backend(gguf, threads=threads)
    llm = gguf_backend._llm
    out["settings"] = asdict(gguf_backend.settings)
    pp_text, pp_tokens = pp_prompt(gguf_backend, PP_TOKENS)
    xs, ys = alternate(lambda: ours_prefill(gguf_backend, pp_text, len(pp_tokens)),
                       lambda: bare_prefill(llm, pp_tokens), repeats, "GGUF prefill ours vs bare")
    out["gguf_prefill"] = {**summary(xs, ys), "prompt_tokens": len(pp_tokens)}
    prompt_tokens = gguf_backend.tokenize(PROMPT)
    xs, ys = alternate(lambda: ours(gguf_backend, tokens), lambda: bare_llama_loop(llm, prompt_tokens, tokens),
                       repeats, "GGUF ours vs bare")
    out["gguf_loop"] = summary(xs, ys)
    if profile:
        out["gguf_profile"] = profile_ours(gguf_backend, tokens)
    if onnx:
        onnx_backend = load_backend(onnx, threads=threads)
        onnx_tokens = onnx_backend.tokenize(PROMPT)
        xs, ys = alternate(lambda: ours(onnx_backend, tokens),
                           lambda: bare_genai_loop(onnx_backend._model, onnx_tokens, tokens),
                           repeats, "ONNX ours vs bare")
        out["onnx_loop"] = summary(xs, ys)
        xs, ys = alternate(lambda: ours(onnx_backend, tokens), lambda: ours(gguf_backend, tokens), repeats,
                           "ONNX vs GGUF backend")
        backends = summary(xs, ys)
        out["onnx_vs_gguf"] = {"onnx_tok_s": backends["ours_tok_s"], "gguf_tok_s": backends["bare_tok_s"],
                               "ratio": backends["ratio"], "onnx_runs": backends["ours_runs"],
                               "gguf_runs": backends["bare_runs"]}
        onnx_backend.close()
    gguf_backend.close()
    return out


@click.command()
@click.argument("gguf", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--onnx", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="An onnxruntime-genai model folder of the same model (ONNX vs GGUF decode).")
@click.option("--threads", type=click.IntRange(1), default=None, help="Threads for both (default: host cores).")
@click.option("--tokens", default=128, show_default=True, type=click.IntRange(8), help="Tokens decoded per run.")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(1), help="Alternating run pairs.")
@click.option("--profile", is_flag=True, help="Also cProfile our loop and print where its time goes.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the result as JSON here too.")
def main(gguf: Path, onnx: Path | None, threads: int | None, tokens: int, repeats: int, profile: bool,
         out: Path | None) -> None:
    """Our prefill and decode tok/s vs. bare llama-cpp-python (and ONNX vs GGUF), from one run."""
    from slmforge.runtime.generate.backend import default_threads

    try:
        result = measure_overhead(gguf, onnx, threads or default_threads(), tokens, repeats, profile)
    except UserError as exc:
        raise click.ClickException(str(exc)) from None
    if out:
        atomic_write_json(out, result)
    pre = result["gguf_prefill"]
    click.echo(f"GGUF prefill (pp{pre['prompt_tokens']}): ours {pre['ours_tok_s']} tok/s vs bare llama-cpp-python "
               f"{pre['bare_tok_s']} tok/s → ratio {pre['ratio']} (best-of {pre['best_ratio']}; goal ≥ 0.98)")
    loop = result["gguf_loop"]
    click.echo(f"GGUF decode: ours {loop['ours_tok_s']} tok/s vs bare llama-cpp-python {loop['bare_tok_s']} tok/s "
               f"→ ratio {loop['ratio']} (best-of ratio {loop['best_ratio']}; goal ≥ 0.98; medians of {repeats} "
               f"alternating runs, {result['threads']} threads)")
    if "onnx_loop" in result:
        o, v = result["onnx_loop"], result["onnx_vs_gguf"]
        click.echo(f"ONNX decode: ours {o['ours_tok_s']} vs bare onnxruntime-genai {o['bare_tok_s']} → ratio {o['ratio']}")
        click.echo(f"ONNX backend vs GGUF backend decode: {v['onnx_tok_s']} vs {v['gguf_tok_s']} → ratio {v['ratio']}")
    if profile:
        prof = result["gguf_profile"]
        click.echo(prof["top_functions"])
        click.echo(f"our loop spends {prof['outside_decode_share']:.3%} of its time outside llama_decode "
                   f"({prof['total_s']} s total, {prof['llama_decode_s']} s in llama_decode)")
    click.echo(json.dumps({k: v for k, v in result.items() if k != "gguf_profile"}, indent=2))


if __name__ == "__main__":
    main()
