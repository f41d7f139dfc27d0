"""The answer path's shared pieces without a model: the result stream, the retrieval summary, the answer's API views."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import pytest
from slmforge.runtime.answer.types import Answer, retrieval_summary
from slmforge.runtime.generate.result_stream import ResultStream


def _words(closed: list[str]) -> Generator[str, None, int]:
    try:
        yield "a"
        yield "b"
    finally:
        closed.append("inner")
    return 2


def test_result_is_read_after_the_stream_ends_and_travels_up_a_level():
    closed: list[str] = []
    inner = ResultStream(_words(closed))
    with pytest.raises(RuntimeError, match="read it to the end"):
        _ = inner.result
    assert list(inner) == ["a", "b"] and inner.result == 2

    def outer() -> Generator[str, None, int]:
        below = ResultStream(_words(closed))
        yield from below
        return below.result + 1

    assert ResultStream(outer()).drain() == 3


def test_closing_a_stream_closes_the_one_below():
    closed: list[str] = []

    def outer() -> Generator[str, None, int]:
        yield from ResultStream(_words(closed))
        return 0

    stream = ResultStream(outer())
    assert next(stream) == "a"
    stream.close()
    assert closed == ["inner"]
    with pytest.raises(RuntimeError):
        _ = stream.result


@dataclass
class _Hit:
    vec_score: float | None


def test_retrieval_summary_figures():
    hits = [_Hit(0.5), _Hit(0.7), _Hit(None), _Hit(0.4)]  # fusion order: a BM25 match may come first
    s = retrieval_summary(hits)  # type: ignore[arg-type]
    assert s == {"top1": 0.7, "k": 3, "gap": 0.3, "lead": 0.2, "scores": [0.5, 0.7, 0.4]}
    assert retrieval_summary(hits, nearest=0.9)["top1"] == 0.9  # type: ignore[arg-type]
    assert retrieval_summary([_Hit(0.5)]) == {"top1": 0.5, "k": 1, "gap": None, "lead": None,  # type: ignore[list-item]
                                              "scores": [0.5]}


def test_answer_api_views_keep_the_http_shape():
    answer = Answer(answer="x", tokens={"prompt": 3, "completion": 2},
                    retrieval={"top1": 0.7, "k": 3, "gap": 0.3, "lead": 0.2, "scores": [0.5, 0.7, 0.4],
                               "out_of_domain": False})
    assert answer.usage() == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    details = answer.details()
    assert list(details) == ["route", "cache", "retrieval", "support", "timings", "note", "escalation_reason"]
    assert details["retrieval"] == {"top1": 0.7, "k": 3, "gap": 0.3, "out_of_domain": False}
    assert "hits" not in answer.to_dict() and "telemetry" not in answer.to_dict()
