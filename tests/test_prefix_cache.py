"""The fast answer path keeps the fixed prompt prefix in llama.cpp's KV cache across requests:
later prompts skip it, and no request's text reaches another's answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from slmforge.runtime.answer.engine import Engine, answer_path
from slmforge.runtime.bundle.reader import open_bundle

from tests.serve_helpers import tiny_bundle_path

QUESTIONS = ["How do I copy a file?", "What is a lambda expression?", "Why are strings immutable?"]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle_path(tmp_path_factory)


def prompt_evaluated(engine: Engine) -> int:
    """Tokens llama.cpp prefilled for the last answer (its perf counter is reset per generation)."""
    import llama_cpp

    return int(llama_cpp.llama_perf_context(engine.backend._llm._ctx.ctx).n_p_eval)


def test_prefix_is_prefilled_once_and_skipped_by_every_question(tiny_bundle: Path):
    with Engine(open_bundle(tiny_bundle), threads=1, path=answer_path(legacy=False)) as engine:
        prefix = engine.backend.tokenize(engine.fixed_prefix())
        assert len(prefix) > 5 and engine.backend._llm.n_tokens == len(prefix)
        for question in QUESTIONS:
            answer = engine.answer(question, k=2, max_tokens=8)
            assert prompt_evaluated(engine) <= answer.tokens["prompt"] - len(prefix) + 1


def test_no_request_leaks_into_another_answer(tiny_bundle: Path):
    """Each answer, given after other requests on one engine, equals the answer of a fresh engine."""
    bundle = open_bundle(tiny_bundle)
    fresh = {}
    for question in QUESTIONS:
        with Engine(bundle, threads=1, path=answer_path(legacy=False)) as engine:
            fresh[question] = engine.answer(question, k=2, max_tokens=24).answer
    assert len(set(fresh.values())) > 1  # different questions, different answers: a leak would show
    with Engine(bundle, threads=1, path=answer_path(legacy=False)) as shared:
        for question in [*QUESTIONS, *reversed(QUESTIONS)]:
            assert shared.answer(question, k=2, max_tokens=24).answer == fresh[question]


def test_legacy_path_keeps_the_old_settings(tiny_bundle: Path):
    with Engine(open_bundle(tiny_bundle), threads=1, path=answer_path(legacy=True)) as old, \
            Engine(open_bundle(tiny_bundle), threads=1) as new:
        assert old.n_ctx == 2048 and new.n_ctx == 1024
        assert not old.backend.settings.flash_attn and new.backend.settings.flash_attn
        assert old.backend._llm.n_tokens == 0  # no prefix kept: today's first request prefills everything


def test_llama_backend_ends_where_stop_says(tiny_bundle: Path):
    with Engine(open_bundle(tiny_bundle), threads=1, path=answer_path(legacy=False)) as engine:
        prompt = engine.plan(QUESTIONS[0], k=1)[0].prompt
        free = engine.backend.generate(prompt, max_tokens=24)
        cut = engine.backend.generate(prompt, max_tokens=24, stop=lambda text: len(text) >= 8)
        assert free.completion_tokens > cut.completion_tokens and cut.finish_reason == "stop"
        assert free.text.startswith(cut.text) and len(cut.text) >= 8
