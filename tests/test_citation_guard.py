"""An answer that cites a passage it was not given ends there (a model counting "[1] [2] … [62]")."""

from __future__ import annotations

from collections.abc import Generator

from slmforge.runtime.answer.context_budget import PromptPlan
from slmforge.runtime.answer.engine import Engine, answer_path
from slmforge.runtime.generate.backend import GenerationResult, StreamTimer
from slmforge.runtime.generate.result_stream import ResultStream
from slmforge.runtime.index.store import Hit

from slmforge.rag_prompt import cites_missing_passage

COUNTING = ["Use shutil.copy", " [1]", " [2]", " [3]", " [4]", " [5]", " [6]", " [7]"]


def test_cites_missing_passage():
    assert not cites_missing_passage("Use shutil [1][2].", 2)
    assert cites_missing_passage("Use shutil [1] [2] [3]", 2)
    assert not cites_missing_passage("a list `[5]` in code and [1]", 2)
    assert not cites_missing_passage("closed book [4]", 0)  # no passages given: nothing to check against


class CountingBackend:
    """Streams an answer that keeps counting citations, honouring ``stop`` as the real backends do."""

    name = "fake"
    n_ctx = 512

    def tokenize(self, text: str) -> list[int]:
        return list(range(len(text.split())))

    def render_chat(self, messages: list[dict]) -> str:
        return "\n".join(m["content"] for m in messages)

    def stream(self, prompt: str, max_tokens: int = 256, stop=None, **_: object) -> ResultStream[GenerationResult]:
        def deltas() -> Generator[str, None, GenerationResult]:
            timer, finish = StreamTimer(prompt_tokens=3), "length"
            for piece in COUNTING[:max_tokens]:
                timer.add(piece.encode())
                yield piece
                if stop is not None and stop(timer.text()):
                    finish = "stop"
                    break
            return timer.result(finish)

        return ResultStream(deltas())


def hit(i: int) -> Hit:
    return Hit(chunk_id=i, source=f"d{i}.rst", heading="", text="shutil.copy copies.", score=1 / i, vec_score=0.5,
               bm25_rank=i)


def test_engine_ends_an_answer_at_the_first_citation_of_a_passage_it_was_not_given():
    engine = Engine.__new__(Engine)  # no model, no index: the answer path around a fake backend
    engine.path, engine.generation, engine._backend = answer_path(legacy=False), {}, CountingBackend()
    engine.plan = lambda *a, **k: (PromptPlan("prompt", 3, [hit(1), hit(2)], [], 64), {})  # type: ignore[method-assign]
    answer = engine.answer("How do I copy a file?")
    assert answer.answer == "Use shutil.copy [1] [2] [3]" and answer.finish_reason == "stop"
    engine.plan = lambda *a, **k: (PromptPlan("prompt", 3, [hit(i) for i in range(1, 9)], [], 64), {})  # type: ignore[method-assign]
    assert engine.answer("How do I copy a file?").answer == "".join(COUNTING)  # all cited passages exist
