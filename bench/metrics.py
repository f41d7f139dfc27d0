"""Answer-quality metrics, one home for every bench that judges answers (bench run, merge bench, eval).

Pure functions on strings and numbers: no model, no runtime, so each definition can be tested on
hand-made answers and read in one place (the definitions are restated in docs/evaluation.md).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from slmforge.runtime.telemetry.drift import split_sentences

from slmforge.answer_words import STOP_WORDS, content_words, groundedness  # noqa: F401 - eval's metrics, one home
from slmforge.intervals import BOOTSTRAP_SAMPLES, bootstrap_ci, paired_bootstrap  # noqa: F401 - one home
from slmforge.rag_prompt import cited_numbers, strip_citations

# -- overlap with the reference -----------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> list[str]:
    """SQuAD's normalization: lower case, no punctuation, no articles, single spaces."""
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split()


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall after normalization (SQuAD's F1)."""
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (one row of the DP table at a time)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: longest common subsequence of the normalized tokens over their lengths (P and R weighed
    equally, as rouge-score does). Unlike token F1 it rewards saying things in the reference's order."""
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def answer_scores(answer: str, reference: str) -> dict[str, float]:
    """Token F1 and ROUGE-L of an answer against its reference, [n] markers removed from both."""
    pred, ref = strip_citations(answer), strip_citations(reference)
    return {"f1": token_f1(pred, ref), "rouge_l": rouge_l(pred, ref)}


# -- citations ----------------------------------------------------------------------------------------------

def citation_judgement(answer: str, chunk_matches: Sequence[bool] | None) -> tuple[bool, bool | None]:
    """(cites, accurate) for one RAG answer.

    ``cites``: the answer holds at least one [n] marker. ``chunk_matches[i]``: the (i+1)-th context
    chunk holds the reference's place; None when the reference names no source (cannot be judged).
    ``accurate``: among the passages it cites, one matches (a number with no passage behind it
    matches nothing); None when the answer cites nothing or the question cannot be judged."""
    cited = cited_numbers(answer)
    if not cited or chunk_matches is None:
        return bool(cited), None
    return True, any(1 <= n <= len(chunk_matches) and chunk_matches[n - 1] for n in cited)


# -- refusals -----------------------------------------------------------------------------------------------

# "The documents do not cover this." (rag_prompt.NOT_IN_DOCUMENTS) and the usual ways of saying it or
# saying "I don't know". Matched in the answer's first two sentences: a refusal comes first.
_SOURCE = r"(?:documents?|documentation|context|passages?|sources?|(?:provided|given) (?:text|information))"
_NEGATED = r"(?:do(?:es)? not|do(?:es)?n't|did not|didn't|cannot|can't|can not|fails? to)"
REFUSAL_PATTERNS = tuple(re.compile(p) for p in (
    (rf"\b{_SOURCE}\b[^.?!]{{0,40}}\b{_NEGATED} (?:\w+ )?(?:cover|contain|mention|include|provide|say|address|"
     r"answer|discuss|specify|state|have|tell|explain)"),
    rf"\bnot (?:covered|mentioned|found|included|provided|addressed|answered|discussed)\b[^.?!]{{0,30}}\b{_SOURCE}",
    (r"\b(?:no|not enough|insufficient) (?:relevant |specific )?information"
     r"(?: (?:about|on|regarding|in|is|was|available|provided|given)\b|\s*(?:[.,;!]|$))"),
    (r"\bi (?:do not|don't|cannot|can't|can not|am unable to|'m unable to|am not able to|'m not able to) "
     r"(?:know|find|answer|say|provide|determine|help|have|access|give|tell)\b"),
    r"\bi (?:am|'m) not sure\b",
    r"\bthere (?:is|'s) no (?:mention|information|answer)\b",
))


def is_refusal(answer: str) -> bool:
    """Does the answer decline (the documents do not cover it / it does not know)? An empty answer does."""
    text = strip_citations(answer).lower().replace("\u2019", "'")
    sentences = split_sentences(text, min_chars=1)
    if not sentences:
        return True
    head = " ".join(sentences[:2])
    return any(p.search(head) for p in REFUSAL_PATTERNS)


# -- aggregation and intervals ------------------------------------------------------------------------------

def mean_of(values: Iterable[float | bool | None]) -> tuple[float | None, int]:
    """Mean of the values that could be judged (None left out) and how many there were."""
    real = [float(v) for v in values if v is not None]
    return (float(np.mean(real)) if real else None), len(real)


def median_of(values: Iterable[float | None]) -> float | None:
    real = [float(v) for v in values if v is not None]
    return float(np.median(real)) if real else None

