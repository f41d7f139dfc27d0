"""A local GGUF model as a teacher that writes one question and a short answer for a passage.

Run through llama.cpp (imported lazily: no torch on this path), with a fixed prompt and greedy
decoding so the same passages give the same pairs. The reply is parsed strictly: anything that
is not "Question: …?" then "Answer: …", or whose answer is not found in the passage, is dropped.
Small teachers write poor questions; the rules in generate.py do not need one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from slmforge.errors import UserError
from slmforge.qa_records import QARecord

SYSTEM = ("You write one question that a reader of the passage might ask, and its answer taken from the passage. "
          "Reply in exactly two lines:\nQuestion: <the question>?\nAnswer: <one or two sentences from the passage>")
# one worked example: small teachers follow a shown format far more often than a described one
EXAMPLE = (("Passage:\nThe pump must be primed before first use. To prime it, fill the housing with water and close "
           "the cap."), "Question: How do I prime the pump?\nAnswer: Fill the housing with water and close the cap.")
_REPLY = re.compile(r"^\s*Question:\s*(?P<q>[^\n]+\?)\s*\n+\s*Answer:\s*(?P<a>.+?)\s*$", re.DOTALL)
_WORD = re.compile(r"[a-z0-9_]+")
_STOP = {"the", "a", "an", "of", "to", "and", "or", "in", "on", "is", "are", "it", "for", "with", "as", "by", "be",
         "that", "this", "you", "can", "if", "not", "from", "at"}


def check_gguf(path: Path) -> Path:
    """The teacher file exists and starts with the GGUF magic; anything else is one clear error."""
    if not path.is_file():
        raise UserError(f"--teacher {path}: not found; pass a local .gguf model file")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise UserError(f"--teacher {path}: not a GGUF file (no GGUF magic at its start); pass a .gguf model, "
                        "e.g. one written by 'slmforge export'")
    return path


def grounded(answer: str, passage: str, share: float = 0.7) -> bool:
    """Most of the answer's content words appear in the passage (the teacher copied, it did not invent)."""
    words = [w for w in _WORD.findall(answer.lower()) if w not in _STOP]
    seen = set(_WORD.findall(passage.lower()))
    return bool(words) and sum(w in seen for w in words) >= share * len(words)


def adds_content(question: str, answer: str, min_new_words: int = 3) -> bool:
    """The answer says something the question did not ("Create a new class object." to "How do you create a
    new class object?" only echoes it)."""
    asked = set(_WORD.findall(question.lower()))
    return len({w for w in _WORD.findall(answer.lower()) if w not in _STOP and w not in asked}) >= min_new_words


def parse_reply(reply: str, passage: str, max_answer_chars: int = 400) -> tuple[str, str] | None:
    """(question, answer) from the teacher's reply, or None when it does not follow the format exactly."""
    m = _REPLY.match(reply)
    if not m:
        return None
    question, answer = " ".join(m.group("q").split()), " ".join(m.group("a").split())
    if "\n" in m.group("a").strip() and "Question:" in m.group("a"):
        return None  # a second pair: the format asks for one
    if not (3 <= len(question.split()) <= 25) or not (20 <= len(answer) <= max_answer_chars):
        return None
    return (question, answer) if grounded(answer, passage) and adds_content(question, answer) else None


class Teacher:
    """A GGUF chat model loaded once; ``ask`` gives one pair for a passage, or None."""

    def __init__(self, path: Path, n_ctx: int = 2048, max_tokens: int = 128, max_passage_chars: int = 1200) -> None:
        self.path = check_gguf(Path(path))
        self.max_tokens = max_tokens
        self.max_passage_chars = max_passage_chars
        try:
            from llama_cpp import Llama
        except ImportError:
            raise UserError("--teacher needs llama-cpp-python; install slmforge with its base dependencies") from None
        try:
            self._llm: Any = Llama(model_path=str(self.path), n_ctx=n_ctx, verbose=False, seed=0)
        except (ValueError, RuntimeError, OSError) as exc:
            raise UserError(f"--teacher {self.path}: llama.cpp could not load this GGUF ({exc})") from None
        self.n_ctx = n_ctx

    def reply(self, passage: str) -> str:
        """The teacher's raw reply for one passage (greedy, fixed prompt)."""
        passage = passage[: self.max_passage_chars]
        out = self._llm.create_chat_completion(
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": EXAMPLE[0]},
                      {"role": "assistant", "content": EXAMPLE[1]}, {"role": "user", "content": f"Passage:\n{passage}"}],
            temperature=0.0, top_k=1, max_tokens=self.max_tokens, stop=["\n\n"])
        return str(out["choices"][0]["message"]["content"] or "")

    def ask(self, passage: str, source: str, section: str | None) -> QARecord | None:
        parsed = parse_reply(self.reply(passage), passage)
        return QARecord(parsed[0], parsed[1], source, section, "teacher") if parsed else None

    def close(self) -> None:
        self._llm.close()
