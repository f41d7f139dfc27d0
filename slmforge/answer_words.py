"""Content words of a text and how much of an answer a context holds: the one measure of "is it in there".

Used by eval's groundedness (does the answer come from the passages it was given?) and by ``data rag``
(does a context built to hold no answer hold one anyway?), so the two judge support the same way.
"""

from __future__ import annotations

import re

from slmforge.rag_prompt import strip_citations

# Function words that say nothing about where an answer came from (a compact English list; content words
# are what remains, including code identifiers, which the tokenizer splits at dots and underscores stay).
_STOP_WORDS_TEXT = """
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing done down during each either else etc even ever every few for from
further get gets got had has have having he her here hers herself him himself his how however i if in into is
it its itself just let like may me might more most much must my myself no nor not now of off often on once one
only or other our ours ourselves out over own per please same shall she should since so some such than that
the their theirs them themselves then there these they this those though through thus to too under until up
upon us use used uses using very via was way we well were what when where whether which while who whom whose
why will with within without would yes yet you your yours yourself yourselves
"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())
_WORD = re.compile(r"[a-z0-9_]+")


def content_words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (punctuation splits them; [n] markers dropped), minus stop words and
    single letters."""
    words = _WORD.findall(strip_citations(text).lower())
    return [w for w in words if w not in STOP_WORDS and (len(w) > 1 or w.isdigit())]


def groundedness(answer: str, context: str, question: str = "") -> float | None:
    """Share of the answer's content words (with repeats) that occur in the context the model was given,
    leaving out the question's own words (the retrieved chunks hold them by construction, so restating the
    question is no sign of using the context); None when no such word is left."""
    asked = set(content_words(question))
    words = [w for w in content_words(answer) if w not in asked]
    if not words:
        return None
    seen = set(content_words(context))
    return sum(w in seen for w in words) / len(words)
