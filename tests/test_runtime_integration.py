"""The runtime on the real model: SmolLM2-135M GGUF + all-MiniLM-L6-v2 over the shipped Python docs.

The bundle is built once per cache (it embeds ~2k chunks; minutes on 2 busy cores) and reused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slmforge.fileio import sha256_path
from tests.conftest import run_cli
from tests.runtime_fixtures import make_export_dir, real_gguf

pytestmark = pytest.mark.integration


def _cache() -> Path:
    return Path(os.environ.get("SLMFORGE_CACHE", Path.home() / ".cache" / "slmforge")) / "test-runtime"


@pytest.fixture(scope="session")
def real_embedder() -> Path:
    """all-MiniLM-L6-v2 exported to int8 ONNX by export_embedder (cached; the export checks cosine vs torch)."""
    from slmforge.export.embedder import embedded_embedder, export_embedder

    out = _cache() / f"embedder-{sha256_path(embedded_embedder())[:12]}"
    if not (out / "embedder.json").is_file():
        export_embedder(out)
    return out


@pytest.fixture(scope="session")
def real_bundle(real_embedder: Path, corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from slmforge.runtime.bundle.build import build_bundle

    key = sha256_path(real_embedder)[:8] + sha256_path(corpus_dir)[:8]
    out = _cache() / f"bundle-python-docs-{key}"
    if not (out / "manifest.json").is_file():
        export = make_export_dir(tmp_path_factory.mktemp("export") / "export", real_gguf(), real_embedder)
        build_bundle(export, [corpus_dir], out, progress=False)
    return out


def test_run_json_answers_with_citations(real_bundle: Path, corpus_dir: Path):
    proc = run_cli("run", str(real_bundle), "How do I copy a file in Python?", "--json", "--max-tokens", "96")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["answer"].strip()
    assert len(out["citations"]) >= 1
    for c in out["citations"]:
        assert (corpus_dir.parent / c["source"]).is_file() and set(c) == {"source", "heading", "chunk_id", "score"}
    assert any("copy" in (c["heading"] + c["source"]).lower() for c in out["citations"])
    assert set(out["timings"]) == {"embed_ms", "search_ms", "prefill_ms", "ttft_ms", "decode_tok_s"}
    assert out["tokens"]["prompt"] > 50 and 0 < out["tokens"]["completion"] <= 96


def test_generation_stops_at_eos(real_bundle: Path):
    from slmforge.runtime.answer.engine import Engine
    from slmforge.runtime.bundle.reader import open_bundle

    with Engine(open_bundle(real_bundle)) as engine:
        a = engine.answer("Reply with just the word: yes", use_rag=False, max_tokens=200)
        assert a.finish_reason == "stop" and a.tokens["completion"] < 200 and "<|im_end|>" not in a.answer
        assert engine.backend.name == "llama.cpp"
        stream = engine.answer_stream("What does shutil.copy do?", k=2, max_tokens=24)
        deltas = list(stream)
        # the fast path budgets the context in tokens: the second chunk may be cut or, rarely, left out
        assert "".join(deltas).strip() == stream.result.answer and 1 <= len(stream.result.citations) <= 2


def test_repeat_penalty_stops_greedy_loops(real_bundle: Path):
    """Greedy 135M decoding loops ('* `assert`' 120 times) without the bundle's default penalty (1.1)."""
    from slmforge.runtime.answer.engine import DEFAULT_REPEAT_PENALTY, Engine
    from slmforge.runtime.bundle.reader import open_bundle

    def distinct(text: str) -> float:
        ids = engine.backend.tokenize(text)
        return len(set(ids)) / max(1, len(ids))

    question = "List the Python keywords."
    with Engine(open_bundle(real_bundle)) as engine:
        looping = engine.answer(question, use_rag=False, max_tokens=128, sampling={"repeat_penalty": 1.0}).answer
        default = engine.answer(question, use_rag=False, max_tokens=128).answer
        # measured: 0.10 without the penalty on both answer paths; with it 0.38 (legacy: f16 KV cache) and
        # 0.26 (the fast path's former q8_0 KV cache, whose greedy path differs; the fast path keeps f16 since #18's
        # tuning table, and this relative bound holds on both)
        assert distinct(looping) < 0.2 and distinct(default) > 2 * distinct(looping), (looping, default)
    assert DEFAULT_REPEAT_PENALTY == 1.1


def test_empty_and_too_long_questions_are_one_line(real_bundle: Path):
    for question, expected in (("   ", "question is empty"), ("why " * 5000, "question is too long")):
        proc = run_cli("run", str(real_bundle), question)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr


def test_chat_keeps_history(real_bundle: Path):
    proc = subprocess.run([sys.executable, "-m", "slmforge.cli", "chat", str(real_bundle), "--max-tokens", "24",
                           "--k", "1"], input="What is a tuple?\nAnd a list?\n", capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("[1]") == 2  # one cited answer per turn


def test_faq_hit_at_4(real_bundle: Path):
    from slmforge.bench.dev.retrieval import faq_hits

    result = faq_hits(real_bundle, ks=(4,))
    print(json.dumps(result))
    assert result["questions"] >= 150
    assert result["hybrid hit@4"] >= 0.9
