"""An answer that cites a passage it was not given ends there (a model counting "[1] [2] … [62]")."""

from __future__ import annotations

from slmforge.runtime.index.store import Hit

from slmforge.rag_prompt import cites_missing_passage
from tests.runtime_fixtures import ScriptedBackend, engine_around

COUNTING = ["Use shutil.copy", " [1]", " [2]", " [3]", " [4]", " [5]", " [6]", " [7]"]


def test_cites_missing_passage():
    assert not cites_missing_passage("Use shutil [1][2].", 2)
    assert cites_missing_passage("Use shutil [1] [2] [3]", 2)
    assert not cites_missing_passage("a list `[5]` in code and [1]", 2)
    assert not cites_missing_passage("closed book [4]", 0)  # no passages given: nothing to check against


def hit(i: int) -> Hit:
    return Hit(chunk_id=i, source=f"d{i}.rst", heading="", text="shutil.copy copies.", score=1 / i, vec_score=0.5,
               bm25_rank=i)


def test_engine_ends_an_answer_at_the_first_citation_of_a_passage_it_was_not_given():
    answer = engine_around(ScriptedBackend(COUNTING), [hit(1), hit(2)]).answer("How do I copy a file?")
    assert answer.answer == "Use shutil.copy [1] [2] [3]" and answer.finish_reason == "stop"
    engine = engine_around(ScriptedBackend(COUNTING), [hit(i) for i in range(1, 9)])
    assert engine.answer("How do I copy a file?").answer == "".join(COUNTING)  # all cited passages exist
