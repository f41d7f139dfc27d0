"""`serve --parallel N`: several answers decoded in one llama.cpp context (tiny random model).

Batched answers must be the very tokens each prompt gets when decoded alone, and a stream that is
closed (a client that left) must give back its sequence: slot and KV cells."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from slmforge.runtime.generate.backend import load_backend
from slmforge.runtime.generate.batch_scheduler import Sampling
from slmforge.runtime.generate.batched import BatchedLlamaBackend, batched, profile_parallel
from slmforge.runtime.generate.llamacpp import FAST_SETTINGS, LlamaCppBackend, kv_type_for

from slmforge.errors import UserError
from slmforge.profiles import HOST_PARALLEL
from tests.serve_helpers import serving, tiny_bundle_path

QUESTIONS = ["How do I copy a file?", "What is a list comprehension?", "Tell me about pathlib and files", "hi",
             "Why are floating point numbers inaccurate? Explain in detail please.", "x y z"]


@pytest.fixture(scope="module")
def tiny_gguf(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slmforge.export.gguf_writer import write_gguf

    out = tmp_path_factory.mktemp("gguf") / "model-F16.gguf"
    write_gguf(tiny_checkpoint, out, "F16", source_sha256="ab" * 32, progress=False)
    return out


@pytest.fixture(scope="module")
def single(tiny_gguf: Path):
    backend = load_backend(tiny_gguf, n_ctx=256, threads=2)
    yield backend
    backend.close()


def _prompts(backend: LlamaCppBackend) -> list[str]:
    return [backend.render_chat([{"role": "user", "content": q}]) for q in QUESTIONS]


def _all_at_once(backend: BatchedLlamaBackend, prompts: list[str], **kw) -> list:
    out: list = [None] * len(prompts)

    def run(i: int) -> None:
        out[i] = backend.generate(prompts[i], **kw)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _kv_free(backend: BatchedLlamaBackend) -> bool:
    import llama_cpp

    memory = backend.scheduler._memory
    return all(llama_cpp.llama_memory_seq_pos_max(memory, seq) == -1 for seq in range(backend.parallel))


@pytest.mark.parametrize("repeat_penalty", [1.0, 2.0])
def test_batched_greedy_tokens_equal_decoding_alone(single: LlamaCppBackend, repeat_penalty: float):
    """Six prompts through three slots (so slots are reused mid-run): each answer equals its lone decode."""
    prompts = _prompts(single)
    alone = [single.generate(p, max_tokens=40, repeat_penalty=repeat_penalty) for p in prompts]
    together = BatchedLlamaBackend(single, parallel=3)
    try:
        got = _all_at_once(together, prompts, max_tokens=40, repeat_penalty=repeat_penalty)
        stats = together.stats()
    finally:
        together.scheduler.close()
    assert [g.text for g in got] == [a.text for a in alone]
    assert [(g.completion_tokens, g.finish_reason) for g in got] == [(a.completion_tokens, a.finish_reason)
                                                                       for a in alone]
    if repeat_penalty > 1:  # different prompts, different answers: a mix-up of sequences would show
        assert len({a.text for a in alone}) >= 3
    assert stats["decoded_tokens"] > stats["steps"]  # steps really decoded several sequences at once


def test_closed_stream_frees_its_sequence(single: LlamaCppBackend):
    """A stream closed after two deltas (a client that left) ends its job; the slot and KV cells are free again,
    the answers around it are undisturbed."""
    prompts = _prompts(single)
    together = BatchedLlamaBackend(single, parallel=2)
    try:
        gone = together.stream(prompts[4], max_tokens=200, repeat_penalty=2.0)
        next(gone), next(gone)
        assert together.stats()["active"] == 1
        gone.close()
        deadline = time.monotonic() + 30
        while together.stats()["active"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert together.stats()["active"] == 0 and _kv_free(together)
        got = _all_at_once(together, prompts[:2], max_tokens=30, repeat_penalty=2.0)
        assert [g.text for g in got] == [single.generate(p, max_tokens=30, repeat_penalty=2.0).text
                                         for p in prompts[:2]]
        assert _kv_free(together)
    finally:
        together.scheduler.close()


def test_parallel_default_comes_from_the_profile_and_only_llama_cpp_batches(single: LlamaCppBackend):
    assert profile_parallel("raspberry-pi-5-8gb") == 4
    assert profile_parallel("raspberry-pi-zero-2w") == 1
    assert profile_parallel("host") == profile_parallel(None) == profile_parallel("nowhere.yaml") == HOST_PARALLEL

    class Onnx:
        name = "onnxruntime-genai"

    assert batched(Onnx(), 4, explicit=False)[1] == 1  # a profile default does not refuse a bundle
    with pytest.raises(UserError, match="--parallel 4 needs a GGUF model"):
        batched(Onnx(), 4, explicit=True)
    assert batched(single, 1, explicit=True) == (single, 1)


def test_server_client_leaving_mid_stream_frees_its_slot(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path):
    """Through `serve --parallel 2`: a client that hangs up mid-stream leaves no active sequence behind (499 in
    telemetry), and the server goes on answering."""
    bundle = tiny_bundle_path(tmp_path_factory)
    with serving(bundle, "--parallel", "2", "--no-cache", "--telemetry", str(tmp_path / "t.db")) as srv:
        assert httpx.get(srv.url + "/health").json()["batch"]["parallel"] == 2
        with httpx.stream("POST", srv.url + "/v1/chat/completions", timeout=120,
                          json={"messages": [{"role": "user", "content": "Explain Python classes."}],
                                "max_tokens": 1000, "temperature": 0.8, "seed": 1, "stream": True}) as resp:
            for n, _ in enumerate(resp.iter_lines()):
                if n == 4:
                    break
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            health = httpx.get(srv.url + "/health").json()
            if health["batch"]["active"] == 0 and health["queue"]["inflight"] == 0:
                break
            time.sleep(0.2)
        assert health["batch"]["active"] == 0 and health["queue"]["inflight"] == 0, health
        again = httpx.post(srv.url + "/v1/chat/completions", timeout=120,
                           json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
        assert again.status_code == 200


def test_heads_too_small_for_a_quantized_kv_cache_get_f16(tiny_gguf: Path, single: LlamaCppBackend):
    """llama.cpp refuses a q8_0 KV cache when the head size (16 here) is not a multiple of 32: the runtime
    falls back to f16 for such a model instead of failing to load it."""
    asked = load_backend(tiny_gguf, n_ctx=256, threads=1, llama_settings=replace(FAST_SETTINGS, kv_type="q8_0"))
    try:  # a profile that asks for q8_0 (the Pi Zero 2 W's) still loads this model ...
        assert asked.generate("hi", max_tokens=2).completion_tokens >= 1
    finally:
        asked.close()
    assert kv_type_for(tiny_gguf, "q8_0") == "f16"  # ... with f16, since its heads are too small
    assert kv_type_for(tiny_gguf, "f16") == "f16"


def test_a_stop_check_ends_a_batched_answer_like_a_lone_one_and_frees_it(single: LlamaCppBackend):
    """The citation guard's ``stop`` ends the batched answer at the same text as the lone path's."""
    prompt = _prompts(single)[0]
    def stop(text: str) -> bool:
        return len(text) >= 12

    alone = single.generate(prompt, max_tokens=40, stop=stop)
    together = BatchedLlamaBackend(single, parallel=2)
    try:
        got = together.generate(prompt, max_tokens=40, stop=stop)
        deadline = time.monotonic() + 10
        while not _kv_free(together) and time.monotonic() < deadline:
            time.sleep(0.05)
        freed = _kv_free(together)
    finally:
        together.scheduler.close()
    assert alone.finish_reason == "stop" and alone.completion_tokens < 40
    assert (got.text, got.finish_reason) == (alone.text, alone.finish_reason)
    assert freed


SYSTEM = "You answer questions about Python from the passages given. Cite them."


def _with_system(backend: LlamaCppBackend, system: str, question: str) -> str:
    return backend.render_chat([{"role": "system", "content": system}, {"role": "user", "content": question}])


def test_kept_prefix_gives_the_same_greedy_tokens_and_never_leaks(single: LlamaCppBackend):
    """The batched context keeps the fixed prefix like the lone backend: prompts that start with it copy its KV
    cells and decode only the rest. Each answer must still equal its lone decode: prompts that share the whole
    prefix, one whose system prompt leaves it half-way (part of the cells copied, the rest removed), and ones that
    do not start with it at all; slots are reused, so a stale or foreign cell in a copy would change an answer."""
    head = _with_system(single, SYSTEM, "\x00")
    prefix = head[: head.index("\x00")]
    prompts = [_with_system(single, SYSTEM, q) for q in QUESTIONS[:4]]
    diverging = _with_system(single, SYSTEM[:30] + " Never cite.", QUESTIONS[4])
    outside = [_prompts(single)[5], "plain text that is not a chat at all: " + QUESTIONS[0]]
    every = prompts + [diverging] + outside
    alone = [single.generate(p, max_tokens=30, repeat_penalty=2.0) for p in every]
    together = BatchedLlamaBackend(single, parallel=3)
    try:
        kept = together.keep_prefix(prefix)
        got = _all_at_once(together, every, max_tokens=30, repeat_penalty=2.0)
        shared = {p: together.scheduler.submit(single.tokenize(p), 1, Sampling()) for p in (prompts[0], diverging,
                                                                                       outside[1])}
        for job in shared.values():
            list(job.stream())
        stats = together.stats()
        freed = _kv_free(together)
    finally:
        together.scheduler.close()
    assert kept == len(single.tokenize(prefix)) > 10
    assert [g.text for g in got] == [a.text for a in alone]
    assert len({a.text for a in alone}) >= 4  # different prompts, different answers: a mix-up would show
    assert shared[prompts[0]].reused == kept  # the whole prefix copied, not decoded
    assert 0 < shared[diverging].reused < kept  # copied up to where the system prompt differs
    assert shared[outside[1]].reused <= 1  # at most a BOS in common
    assert stats["reused_tokens"] >= 5 * kept and freed


def test_bare_batch_bench_times_one_against_n_at_a_fixed_context(tiny_gguf: Path, tmp_path: Path):
    """The bare llama.cpp ceiling under `serve --parallel`: every timed round starts at the same context length
    (the sequences are rolled back), and the report holds both rates and their ratio, with its PNG."""
    import json

    import llama_cpp
    from slmforge.bench.dev.bare_batch import BareBatch, main

    bare = BareBatch(tiny_gguf, parallel=3, context=20, threads=2)
    try:
        memory = llama_cpp.llama_get_memory(bare.ctx)
        assert bare.rate([0, 1, 2], steps=5) > 0
        assert [llama_cpp.llama_memory_seq_pos_max(memory, s) for s in range(3)] == [19, 19, 19]
    finally:
        bare.close()
    out = tmp_path / "bare.json"
    assert main([str(tiny_gguf), "--parallel", "2", "--context", "8", "--steps", "3", "--rounds", "1",
                 "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["context"] == 8 and row["ratio"] == pytest.approx(row["batched_tok_s"] / row["one_tok_s"], abs=0.01)
    assert out.with_suffix(".png").stat().st_size > 5_000
