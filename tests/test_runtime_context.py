"""Context budgeting: the prompt always fits; chunks go lowest-ranked first, then the oldest turns."""

from __future__ import annotations

import pytest
from slmforge.runtime.answer.context_budget import plan_prompt
from slmforge.runtime.generate.chat_template import render_chat
from slmforge.runtime.index.store import Hit

from slmforge.errors import UserError


def words(text: str) -> int:
    return len(text.split())


def render(messages: list[dict]) -> str:
    return render_chat(None, messages)


def hit(i: int, n_words: int) -> Hit:
    return Hit(chunk_id=i, source=f"doc{i}.rst", heading=f"H{i}", text=" ".join([f"w{i}"] * n_words), score=1 / i,
               vec_score=0.5, bm25_rank=i)


def plan(question="What is x?", hits=(), history=(), n_ctx=200, max_tokens=50):
    return plan_prompt(question, list(hits), list(history), "Be brief.", render, words, n_ctx, max_tokens)


def test_everything_fits_untouched():
    p = plan(hits=[hit(1, 10), hit(2, 10)])
    assert [h.chunk_id for h in p.hits] == [1, 2] and p.dropped_chunks == 0
    assert p.prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>") and p.prompt.endswith("assistant\n")
    assert "[1] doc1.rst — H1" in p.prompt and "[2] doc2.rst — H2" in p.prompt
    assert p.prompt_tokens + p.max_tokens <= 200


def test_lowest_ranked_chunks_dropped_whole():
    hits = [hit(i, 40) for i in range(1, 5)]
    p = plan(hits=hits, n_ctx=150, max_tokens=40)
    assert [h.chunk_id for h in p.hits] == [1, 2] and p.dropped_chunks == 2
    assert p.prompt_tokens + 40 <= 150
    assert p.prompt.count("w2") == 40  # a kept chunk is whole, never cut


def test_history_trimmed_oldest_pair_first_after_chunks():
    history = []
    for i in range(4):
        history += [{"role": "user", "content": f"old question {i} " + "q " * 20},
                    {"role": "assistant", "content": f"old answer {i} " + "a " * 20}]
    p = plan(hits=[hit(1, 30)], history=history, n_ctx=160, max_tokens=30)
    assert p.dropped_chunks == 1 and p.dropped_turns >= 1
    assert p.history == history[2 * p.dropped_turns:]
    assert p.history[0]["role"] == "user" and "old question 3" in p.prompt
    assert p.prompt_tokens + 30 <= 160


def test_question_longer_than_context_is_one_clear_error():
    with pytest.raises(UserError, match="question is too long.*context window is 100"):
        plan(question="why " * 500, hits=[hit(1, 5)], n_ctx=100)


def test_answer_shrinks_before_failing():
    p = plan(question="why " * 60, n_ctx=100, max_tokens=50)
    assert p.max_tokens == 100 - p.prompt_tokens and p.max_tokens >= 16


def test_context_budget_keeps_best_chunks_whole_and_trims_the_next():
    hits = [hit(1, 30), hit(2, 30), hit(3, 30)]
    whole = plan_prompt("What is x?", hits, [], "Be brief.", render, words, 2000, 50, context_tokens=45)
    assert [h.chunk_id for h in whole.hits] == [1] and whole.dropped_chunks == 2
    text = "Cats sleep often. " * 8 + "The copy module copies a file here. " + "Dogs bark loudly. " * 8
    sentences = Hit(chunk_id=2, source="d.rst", heading="", score=0.5, vec_score=0.5, bm25_rank=2, text=text)
    cut = plan_prompt("How do I copy a file?", [hit(1, 30), sentences], [], "Be brief.", render, words, 2000, 50,
                      context_tokens=30 + 24, trim=True)
    assert [h.chunk_id for h in cut.hits] == [1, 2] and cut.dropped_chunks == 0
    # the sentence nearest the question first, then others while they fit, in the document's order
    assert cut.hits[1].text == "Cats sleep often. " * 5 + "The copy module copies a file here."
    assert sentences.text == text  # the index's hit is not changed
    none_left = plan_prompt("How do I copy a file?", [hit(1, 30), sentences], [], "Be brief.", render, words, 2000,
                            50, context_tokens=30 + 10, trim=True)
    assert [h.chunk_id for h in none_left.hits] == [1]  # too little room for a useful cut: dropped


def test_no_context_budget_is_todays_behaviour():
    hits = [hit(i, 30) for i in range(1, 4)]
    assert [h.chunk_id for h in plan(hits=hits, n_ctx=2000).hits] == [1, 2, 3]


def test_a_profile_tunes_the_fast_path_and_never_the_legacy_one():
    from slmforge.runtime.answer.engine import FAST_MAX_N_CTX, answer_path

    default, zero = answer_path(legacy=False), answer_path(legacy=False, profile_name="raspberry-pi-zero-2w")
    assert zero.llama.n_ubatch == 128 and default.llama.n_ubatch == 256
    assert zero.llama.flash_attn == default.llama.flash_attn and zero.max_n_ctx == min(1024, FAST_MAX_N_CTX)
    assert answer_path(legacy=True, profile_name="raspberry-pi-zero-2w").llama.n_ubatch == 512
    assert answer_path(legacy=False, profile_name="no-such-device") == default
