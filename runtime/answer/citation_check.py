"""Check each [n] an answer cites against the passages, as the answer streams, and move a wrong one.

Why: a small model learns *that* it should cite long before it learns *which* passage to cite. Trained
on examples whose answering passage is usually ranked first, it writes "[1]" after an answer it copied
from passage [3]. The words of the answer say where it came from, so the runtime checks: when a marker
ends, the text written since the previous marker (its claim) is compared with each passage by the share
of its content words the passage holds (``answer_words.groundedness``, the measure eval uses). A cited
passage that holds less than half of the claim is replaced by the one that holds the most of it, if that
one holds at least half and clearly more. Only the markers change: the model's words, and what it
generates next, do not.

A marker is held back from the stream until it is complete (a few characters), then written checked. What
counts as a marker is ``rag_prompt``'s grammar, the one eval counts citations by; code spans, markers glued to a
word (``x[1]``) and a marker that opens a line followed by a space (a list item, or the model echoing a context
header) pass through as written. One difference: a lone backtick makes the rest of its line code here (whether
it closes is not known yet while streaming), so a marker after it is left as written.
"""

from __future__ import annotations

from collections.abc import Sequence

from slmforge.answer_words import groundedness
from slmforge.rag_prompt import GLUED, MARKER, MARKER_PREFIX, marker_numbers

# A passage that holds this share of a claim's content words supports it: a cited passage that does stays
# cited (an answer drawn from two passages), and a marker moves only to a passage that does …
SUPPORTED = 0.5
# … and holds this much more of them than the cited one (docs/evaluation.md: how these were chosen).
MARGIN = 0.1
_MAX_MARKER = 40  # longer runs are written as they come


class CitationChecker:
    """A stream filter: feed it the model's text deltas, write out what it returns."""

    def __init__(self, passages: Sequence[str], question: str = "") -> None:
        self.passages = list(passages)
        self.question = question
        self.moves: list[tuple[int, int]] = []  # (cited, moved to) for every number it replaced
        self._pending = ""  # a marker being written, not yet emitted
        self._pending_opens_line = False  # it began a line: a list item or an echoed header if a space follows
        self._claim: list[str] = []  # emitted text since the previous marker
        self._line_start = True  # nothing but spaces emitted on this line so far
        self._last = ""  # the last emitted character
        self._ticks = 0  # backticks in the run being read
        self._code: str | None = None  # None, "inline" or "fence"
        self._out: list[str] = []

    @property
    def text(self) -> str:
        """Everything written so far."""
        return "".join(self._out)

    def feed(self, delta: str) -> str:
        """The part of ``delta`` (and of earlier held-back text) that can be written now."""
        start = len(self._out)
        for ch in delta:
            self._step(ch)
        return "".join(self._out[start:])

    def finish(self) -> str:
        """What is still held back, written out (the answer has ended)."""
        start = len(self._out)
        self._close_ticks()
        self._release()
        return "".join(self._out[start:])

    # -- the character loop ---------------------------------------------------------------------------

    def _step(self, ch: str) -> None:
        if self._pending:
            candidate = self._pending + ch
            if len(candidate) <= _MAX_MARKER and (MARKER_PREFIX.fullmatch(candidate) or MARKER.fullmatch(candidate)):
                self._pending = candidate
                return
            self._release(next_char=ch)
        if ch != "`":
            self._close_ticks()
        if ch == "[" and self._code is None and self.passages and not GLUED.fullmatch(self._last or " "):
            self._pending, self._pending_opens_line = ch, self._line_start
            return
        if ch == "`":
            self._ticks += 1
        elif ch == "\n" and self._code == "inline":
            self._code = None
        self._emit(ch)

    def _close_ticks(self) -> None:
        """A run of backticks has ended: a fence (```) or an inline code mark opens or closes."""
        if not self._ticks:
            return
        if self._ticks >= 3 and self._code != "inline":
            self._code = None if self._code == "fence" else "fence"
        elif self._ticks < 3 and self._code != "fence":
            self._code = None if self._code == "inline" else "inline"
        self._ticks = 0

    def _release(self, next_char: str = "") -> None:
        """Write the held-back text: its whole marker (if it starts with one) checked, the rest read again."""
        pending, self._pending = self._pending, ""
        whole = MARKER.match(pending)
        if whole is None:
            for ch in pending:
                self._emit(ch)
            return
        marker, rest = whole.group(), pending[whole.end():]
        as_written = self._pending_opens_line and not rest and next_char in (" ", "\t")
        self._out.append(marker if as_written else self._checked(marker))
        self._claim, self._last, self._line_start = [], "]", False
        for ch in rest:
            self._step(ch)

    def _emit(self, ch: str) -> None:
        self._out.append(ch)
        self._claim.append(ch)
        self._last = ch
        if ch == "\n":
            self._line_start = True
        elif not ch.isspace():
            self._line_start = False

    # -- the check --------------------------------------------------------------------------------------

    def _checked(self, marker: str) -> str:
        cited = marker_numbers(marker)
        claim = "".join(self._claim)
        support = [groundedness(claim, passage, self.question) for passage in self.passages]
        if any(s is None for s in support):
            return marker  # the claim has no content word of its own: nothing to judge it by
        best = max(range(len(support)), key=lambda i: support[i])
        if support[best] < SUPPORTED:
            return marker
        checked: list[int] = []
        for n in cited:
            if 1 <= n <= len(support) and support[n - 1] < min(SUPPORTED, support[best] - MARGIN):
                self.moves.append((n, best + 1))
                n = best + 1
            if n not in checked:
                checked.append(n)
        if checked == cited:
            return marker
        if marker.count("[") == 1:
            return "[" + ", ".join(map(str, checked)) + "]"
        return "".join(f"[{n}]" for n in checked)


def check_citations(text: str, passages: Sequence[str], question: str = "") -> tuple[str, list[tuple[int, int]]]:
    """The whole-text form: ``text`` with its markers checked, and the moves made."""
    checker = CitationChecker(passages, question)
    out = checker.feed(text) + checker.finish()
    return out, checker.moves
