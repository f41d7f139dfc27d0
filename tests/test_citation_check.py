"""The runtime moves an [n] to the passage that holds the words before it, as the answer streams."""

from __future__ import annotations

import pytest
from slmforge.runtime.answer.citation_check import CitationChecker, check_citations
from slmforge.runtime.index.store import Hit

from tests.runtime_fixtures import ScriptedBackend, engine_around

PASSAGES = [
    "copy.deepcopy builds a new compound object and inserts copies of the objects found in the original.",
    "shutil.copyfile copies the contents of a file to another file; shutil.copy also copies permission bits.",
    "The glob module finds all the pathnames matching a pattern.",
]
QUESTION = "How do I copy a file?"
ANSWER_FROM_2 = "Use shutil.copy, which copies the contents and the permission bits."


def streamed(text: str, passages: list[str], step: int) -> str:
    checker = CitationChecker(passages, QUESTION)
    pieces = [checker.feed(text[i:i + step]) for i in range(0, len(text), step)]
    return "".join(pieces) + checker.finish()


def test_a_marker_after_words_of_another_passage_moves_there():
    text, moves = check_citations(f"{ANSWER_FROM_2} [1]", PASSAGES, QUESTION)
    assert text == f"{ANSWER_FROM_2} [2]" and moves == [(1, 2)]


def test_a_marker_whose_passage_holds_the_words_stays():
    assert check_citations(f"{ANSWER_FROM_2} [2]", PASSAGES, QUESTION) == (f"{ANSWER_FROM_2} [2]", [])


def test_each_marker_is_judged_on_the_words_since_the_previous_one():
    text = f"{ANSWER_FROM_2} [3] A deep copy builds a new compound object [3]."
    assert check_citations(text, PASSAGES, QUESTION)[0] == \
        f"{ANSWER_FROM_2} [2] A deep copy builds a new compound object [1]."


def test_a_cited_passage_that_holds_half_of_the_claim_stays():
    passages = ["escape performs percent-encoding of query strings",
                "escape performs percent-encoding of query strings; unescape decodes them again"]
    text = "escape performs percent-encoding of query strings and unescape decodes them [1]"
    assert check_citations(text, passages, "What does escape do?") == (text, [])  # [1]: 4 of 6 words, [2]: 6


def test_nothing_moves_when_no_passage_holds_most_of_the_claim():
    text = "Ask your system administrator for the backup tapes [1]."
    assert check_citations(text, PASSAGES, QUESTION) == (text, [])


def test_a_list_marker_keeps_its_form_and_loses_duplicates():
    assert check_citations(f"{ANSWER_FROM_2} [1, 2]", PASSAGES, QUESTION)[0] == f"{ANSWER_FROM_2} [2]"
    assert check_citations(f"{ANSWER_FROM_2} [3][1]", PASSAGES, QUESTION)[0] == f"{ANSWER_FROM_2} [2]"


@pytest.mark.parametrize(("marker", "checked"), [
    (" [1 ,3]", " [2]"),  # a space before the separator, as rag_prompt reads it
    (" [1][2", " [2][2"),  # cut off by the token limit: the whole marker is checked, the rest is text
    (" [1][see]", " [2][see]"),
    ("\n[1]", "\n[2]"),  # a citation on a line of its own
])
def test_every_marker_eval_counts_is_checked(marker: str, checked: str):
    assert check_citations(ANSWER_FROM_2 + marker, PASSAGES, QUESTION)[0] == ANSWER_FROM_2 + checked


@pytest.mark.parametrize("text", [
    f"{ANSWER_FROM_2} `paths[1]`",  # inline code
    f"{ANSWER_FROM_2}\n```\nx = [1]\n```",  # a code block
    f"{ANSWER_FROM_2} names[1]",  # indexing, glued to a word
    f"{ANSWER_FROM_2}\n[1] docs/faq.rst — How do I copy a file?",  # a context header echoed at a line start
    f"{ANSWER_FROM_2} [12345]",  # not a passage number
])
def test_what_is_not_a_citation_passes_untouched(text: str):
    assert check_citations(text, PASSAGES, QUESTION) == (text, [])


def test_closed_book_answers_pass_untouched():
    assert check_citations(f"{ANSWER_FROM_2} [1]", [], QUESTION) == (f"{ANSWER_FROM_2} [1]", [])


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_the_stream_writes_what_the_whole_text_check_writes(step: int):
    text = f"{ANSWER_FROM_2} [1] A deep copy builds a new compound object [2, 3]. `a[1]` [x] [1"
    assert streamed(text, PASSAGES, step) == check_citations(text, PASSAGES, QUESTION)[0]


def test_a_marker_is_held_back_only_until_it_is_complete():
    checker = CitationChecker(PASSAGES, QUESTION)
    assert checker.feed(f"{ANSWER_FROM_2} [") == ANSWER_FROM_2 + " "
    assert checker.feed("1") == ""
    assert checker.feed("]") == ""  # "[1][2]" may follow
    assert checker.feed(" More") == "[2] More"


def test_the_engine_streams_checked_markers_and_keeps_the_model_s_own_text():
    generated = f"{ANSWER_FROM_2} [1]"
    hits = [Hit(chunk_id=i, source=f"d{i}.rst", heading="", text=t, score=1.0, vec_score=0.5, bm25_rank=i)
            for i, t in enumerate(PASSAGES, 1)]
    pieces = [generated[i:i + 3] for i in range(0, len(generated), 3)]  # as a model would stream it
    stream = engine_around(ScriptedBackend(pieces), hits).answer_stream(QUESTION)
    deltas = list(stream)
    answer = stream.result
    assert "".join(deltas) == answer.answer == f"{ANSWER_FROM_2} [2]"
    assert answer.generated_text == generated and answer.citation_moves == [[1, 2]]
    assert "generated_text" not in answer.to_dict()
