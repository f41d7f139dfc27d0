"""Question/answer pairs generated from a document's structure and content (no FAQ needed).

Three kinds, each a ``QARecord`` with ``origin`` set:

- ``heading``: a section heading turned into a question (questions.heading_question),
  answered by the section's first paragraph(s);
- ``definition``: a definitional sentence ("X is a …", "X returns …") or a documented API
  entry (reST ``.. function::`` and kin) → "What is X?" / "What does X() do?";
- ``procedure``: "To do X, …" followed by its command, code or numbered steps → "How do I X?".

Answers are bounded (a few sentences, not whole pages): eval scores token F1 against short
references, and a model taught to copy paragraphs answers every question with one.
"""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from dataclasses import dataclass, replace

from slmforge.trainer.data.qa.faq import document_sections
from slmforge.trainer.data.qa.questions import case_table, heading_question, question_words_ok
from slmforge.trainer.data.textclean import markdown_inline, to_plain_text

from slmforge.qa_records import QARecord

ORIGINS = ("heading", "definition", "procedure")


@dataclass(frozen=True)
class AnswerBounds:
    """How long generated answers may be (characters)."""

    min_chars: int = 60  # less carries no content ("See below.", a bare code line)
    definition_chars: int = 400
    section_chars: int = 500
    procedure_chars: int = 900


_ABBREV = re.compile(r"\b(?:e\.g|i\.e|etc|vs|cf|Mr|Dr|No|approx|incl|Fig)\.$", re.IGNORECASE)
_SENTENCE_GAP = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(`*])")
_LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[*+-]|#\.)\s+\S")
_NUMBERED = re.compile(r"^\s*(?:\d+[.)]|#\.)\s+\S")
_CROSS_REF = re.compile(r"^(?:see|refer to|for (?:more|details|further)|this (?:section|chapter|page|document))\b",
                        re.IGNORECASE)
_PRONOUN_START = {"it", "this", "that", "these", "those", "there", "they", "which", "here", "he", "she", "we", "you",
                  "one", "each", "all", "both", "such", "another", "other", "some", "most", "many", "what", "who",
                  "i", "if", "when", "since", "because", "as", "so", "but", "and", "or", "then", "now", "also",
                  "however", "thus", "hence", "otherwise", "in", "on", "at", "for", "with", "by", "from", "to", "an",
                  "a", "the", "no", "not", "only", "any", "every", "our", "your", "its", "their", "his", "her", "my"}
_DEFINITION = re.compile(
    r"^(?P<subject>(?:(?:A|An|The)\s+)?[\w.()`'-]+(?:\s+[\w.()`'-]+){0,4}?)\s+"
    r"(?P<verb>is|are|returns|return|is used to|are used to)\s+(?P<rest>.+)$", re.DOTALL)
_SIGNATURE = re.compile(r"^(\s*)\.\.\s+(?:py:)?(function|method|class|classmethod|staticmethod|exception|"
                        r"decorator|data|attribute|coroutinefunction|coroutinemethod|abstractmethod)::\s*(.+)$")
_MODULE = re.compile(r"^\.\.\s+(?:py:)?(?:module|currentmodule)::\s*(\S+)")
_PROCEDURE = re.compile(r"^To\s+(?P<goal>[a-z][^,:;]{3,90}?)\s*,\s+(?P<rest>.+)$", re.DOTALL)


def sentences(text: str) -> list[str]:
    """Sentences of one paragraph (abbreviations like 'e.g.' do not end one)."""
    out: list[str] = []
    for piece in _SENTENCE_GAP.split(" ".join(text.split())):
        if out and _ABBREV.search(out[-1]):
            out[-1] += " " + piece
        else:
            out.append(piece)
    return [s for s in out if s]


def _blocks(text: str) -> list[str]:
    """Paragraphs; a code block cut by blank lines stays one block."""
    out: list[str] = []
    for block in (b for b in text.split("\n\n") if b.strip()):
        if out and block.startswith(" ") and out[-1].startswith(" "):
            out[-1] += "\n\n" + block
        else:
            out.append(block)
    return out


_FENCE = re.compile(r"^(\s*)(```|~~~)[^\n]*\n(.*?)^\1\2[ \t]*$", re.MULTILINE | re.DOTALL)
_TAG = re.compile(r"</?[A-Za-z][^>\n]*>")


def markdown_for_answers(text: str) -> str:
    """Markdown with fenced code indented (so it stays code, not prose joined into a sentence) and inline
    HTML tags dropped (READMEs wrap badges and images in <div>, <picture>, <abbr>)."""
    text = _FENCE.sub(lambda m: "\n".join("    " + line if line.strip() else "" for line in m.group(3).split("\n")),
                      text)
    return "\n".join(line if line.startswith("    ") else _TAG.sub("", line) for line in text.split("\n"))


def _is_prose(block: str) -> bool:
    """A paragraph a reader reads (not code, a list, a table or a signature line)."""
    first = block.lstrip("\n").split("\n")[0]
    return (not first.startswith((" ", ">>>", "...", "|", "$")) and not _LIST_ITEM.match(first)
            and len(block.split()) >= 6 and sum(ch.isalpha() for ch in block) >= 0.6 * len(block.replace(" ", ""))
            and not re.match(r"^[\w.]+\(.*\)$", first.strip()))


def _clip_sentences(text: str, max_chars: int, max_sentences: int = 4) -> str:
    """Whole sentences up to ``max_chars`` (at least one)."""
    kept: list[str] = []
    for sentence in sentences(text)[:max_sentences]:
        if kept and (len(" ".join([*kept, sentence])) > max_chars or _POINTER.search(sentence)):
            break
        kept.append(sentence)
    return " ".join(kept)


def has_content(answer: str, bounds: AnswerBounds) -> bool:
    """Enough prose to answer something: not only code, not a bare cross-reference, not over-long."""
    blocks = _blocks(answer)
    prose = " ".join(b for b in blocks if _is_prose(b) or _LIST_ITEM.match(b.strip()))
    has_code = any(b.startswith(" ") for b in blocks)  # "…run:" and the command: the command is the content
    return (len(prose) >= (bounds.min_chars // 2 if has_code else bounds.min_chars) and not _CROSS_REF.match(answer.strip())
            and not answer.rstrip().endswith(":") and len(answer) <= bounds.procedure_chars)


_META_OPENING = re.compile(r"\b(?:I|we|let's|in the following|this (?:section|chapter|tutorial|page|document)|"
                           r"the following|as (?:mentioned|described|shown) (?:above|earlier)|"
                           r"so far|in this (?:section|chapter|tutorial))\b", re.IGNORECASE)
# a sentence that points at what is not in the answer ("The following example shows …")
_POINTER = re.compile(r"\b(?:the following|below|this example|example below|see the example)\b", re.IGNORECASE)
# what follows "To do X," when it is not an instruction: a clause, or a pointer elsewhere
_NOT_IMPERATIVE = (r"(?:that|which|the|a|an|this|these|it|there|and|or|so|as|since|because|when|if|please see|see|"
                   r"refer|check out|visit|read more|consider the following)\b")
_STOP = {"what", "is", "are", "how", "do", "does", "i", "the", "a", "an", "of", "and", "or", "to", "in", "on", "for",
         "with", "my", "work", "use", "objects", "object"}


def _stems(text: str) -> set[str]:
    return {w[:5] for w in re.findall(r"[a-z][a-z0-9_]+", text.lower()) if w not in _STOP}


def _opens_answer(sentence: str) -> bool:
    """Can an answer start with this sentence? Not when it talks about the document ("In this section …"),
    asks a question itself, or points back at something the answer leaves out ("This style of access …")."""
    first = sentence.split()[0].lower().strip(",") if sentence.split() else ""
    return (not _META_OPENING.search(sentence) and not sentence.rstrip().endswith("?")
            and first not in ("this", "these", "that", "those", "it", "such", "they", "here", "now", "then", "also"))


def section_answer(text: str, bounds: AnswerBounds, question: str = "") -> tuple[str, bool]:
    """(answer, is a procedure) for a heading's question: the section's opening prose, up to
    ``bounds.section_chars`` in whole sentences, starting at the first of its first three paragraphs
    that is about the question (shares a word with it) and does not talk about the document itself.
    A "How do I …?" whose prose leads into a command or code block ("…run:") gets that block too."""
    blocks = _blocks(text)
    wanted = _stems(question)
    start = next((n for n, b in enumerate(blocks[:3]) if _is_prose(b) and _opens_answer(sentences(b)[0])
                  and (not wanted or wanted & _stems(b))), None)
    if start is None:
        return "", False
    kept: list[str] = []
    n = start
    while n < len(blocks) and _is_prose(blocks[n]) and len(" ".join(kept)) < bounds.section_chars:
        said = sentences(blocks[n])
        room = [s for i, s in enumerate(said) if len(" ".join(kept + said[:i + 1])) <= bounds.section_chars
                and len(kept) + i < 4 and not _POINTER.search(s)]
        if len(room) < len(said):
            kept += room if room == said[:len(room)] else []
            break
        kept += said
        n += 1
    if not kept:
        return "", False
    answer = " ".join(kept)
    code = blocks[n] if n < len(blocks) and not _is_prose(blocks[n]) else ""
    if answer.endswith(":"):
        lead_in = kept.pop()
        if question.startswith("How do I") and code and len(answer) + len(code) <= bounds.procedure_chars:
            return f"{' '.join(kept)} {lead_in}".strip() + "\n\n" + code.rstrip(), True
        answer = " ".join(kept)  # "…as follows:" without what followed
    return answer, False


def _subject_ok(subject: str) -> bool:
    words = subject.split()
    return (bool(words) and words[0].lower() not in _PRONOUN_START - {"a", "an", "the"}
            and not words[0].lower().endswith("ing") and words[0][:1].isalpha()
            and (words[0][:1].isupper() or not words[0].isalpha())  # a sentence's start, or an identifier
            and words[0].lower() not in ("where", "while", "whether", "how", "why", "note", "example")
            and not {w.lower() for w in words} & {"which", "that", "who", "whose", "special", "common", "simple",
                                                  "good", "useful", "important", "typical", "few", "new", "similar",
                                                  "different", "better", "main", "only", "key", "problem", "idea"}
            and not (len(words) == 1 and words[0].lower() in _PRONOUN_START)
            and not (words[0].lower() in ("a", "an", "the") and len(words) > 1
                     and words[1].lower() in _PRONOUN_START | {"following", "result", "same", "first", "last",
                                                               "next", "previous", "above", "below", "default"}))


def _sentence_case(subject: str, cases: Counter[str] | None) -> str:
    """'The int type' → 'the int type', 'Generators' → 'generators' (unless the document capitalizes it)."""
    first, _, rest = subject.partition(" ")
    cases = cases or Counter()
    if first[:1].isupper() and (first[1:].islower() or len(first) == 1) and (
            first.lower() in ("a", "an", "the") or cases[first.lower()] > cases[first]):
        first = first.lower()
    return f"{first} {rest}".strip()


def definition_pairs(text: str, source: str, section: str | None, bounds: AnswerBounds,
                     cases: Counter[str] | None = None) -> list[QARecord]:
    """'X is a …' / 'X returns …' sentences in prose paragraphs → 'What is X?' / 'What does X return?'."""
    pairs = []
    for block in _blocks(text):
        if not _is_prose(block):
            continue
        said = sentences(block)
        for n, sentence in enumerate(said):
            m = _DEFINITION.match(sentence)
            if not m or not _subject_ok(m.group("subject")):
                continue
            subject, verb, rest = m.group("subject").strip("`"), m.group("verb"), m.group("rest")
            called = re.match(r"(?:also |usually |often )?(?:called|known as|named)\s+([\w.()-]+)"
                              r"(?=[\s,.;:])", rest)
            if called:  # "Errors detected during execution are called exceptions" defines exceptions
                subject = called.group(1)
            elif verb in ("is", "are") and not re.match(r"(?:a|an|the|one of|used)\b", rest):
                continue  # "X is available on Unix" describes, "X is a …" defines
            subject = _sentence_case(subject, cases)
            if verb.startswith("return") and not re.search(r"[()._]", subject):
                continue  # "Define a method which returns …" is an instruction, not a function's contract
            if verb.startswith("return"):
                question = f"What does {subject} return?"
            else:
                question = f"What {'are' if verb.startswith('are') else 'is'} {subject}?"
                if verb.endswith("used to"):
                    question = f"What {'are' if verb.startswith('are') else 'is'} {subject} used for?"
            answer = sentence
            if n + 1 < len(said) and said[n + 1].split()[0].lower() in ("it", "this", "they", "its", "these", "their"):
                answer = f"{sentence} {said[n + 1]}"  # the next sentence continues the definition
            if len(answer) > bounds.definition_chars:
                answer = sentence
            if len(answer) <= bounds.definition_chars and question_words_ok(question, min_words=3):
                pairs.append(QARecord(question, answer, source, section, "definition"))
    return pairs


def api_pairs(raw: str, source: str, section: str | None, bounds: AnswerBounds,
              module: str | None = None) -> list[QARecord]:
    """Documented API entries (reST ``.. function:: name(args)`` and kin) → 'What does module.name() do?'."""
    lines = raw.split("\n")
    pairs = []
    classes: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        mod = _MODULE.match(line)
        if mod:
            module = mod.group(1)
            continue
        m = _SIGNATURE.match(line)
        if not m:
            continue
        indent, kind, signature = len(m.group(1)), m.group(2), m.group(3).strip()
        name = re.split(r"[\s(\[]", signature, maxsplit=1)[0]
        while classes and classes[-1][0] >= indent:
            classes.pop()
        owner = classes[-1][1] if classes and "." not in name else (module if "." not in name else None)
        qualified = f"{owner}.{name}" if owner and not name.startswith(owner + ".") else name
        end = i + 1
        while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
            end += 1
        if kind in ("class", "exception"):
            classes.append((indent, name.split(".")[-1]))
        body = to_plain_text(textwrap.dedent("\n".join(lines[i + 1:end])), "rst")
        body = "\n\n".join(b for b in _blocks(body) if not re.match(r"^\s*:\w", b))
        first = next((b for b in _blocks(body) if _is_prose(b)), "")
        answer = _clip_sentences(first, bounds.definition_chars, max_sentences=3) if first else ""
        if not answer:
            continue
        if kind in ("function", "method", "classmethod", "staticmethod", "decorator", "coroutinefunction",
                    "coroutinemethod", "abstractmethod"):
            question = f"What does {qualified}() do?"
        elif kind in ("class", "exception"):
            question = f"What is the {qualified} {'exception' if kind == 'exception' else 'class'}?"
        else:
            question = f"What is {qualified}?"
        pairs.append(QARecord(question, answer, source, section, "definition"))
    return pairs


def procedure_pairs(text: str, source: str, section: str | None, bounds: AnswerBounds) -> list[QARecord]:
    """'To do X, …' paragraphs (with the command, code or steps after them) → 'How do I do X?'."""
    pairs = []
    blocks = _blocks(text)
    for n, block in enumerate(blocks):
        flat = " ".join(block.split())
        m = _PROCEDURE.match(flat)
        if not m or not _is_prose(block):
            continue
        goal = m.group("goal").strip()
        rest = m.group("rest")
        if not re.match(r"[a-z]+\b", rest) or re.match(_NOT_IMPERATIVE, rest):
            continue  # "To speed up loading, Python caches …" explains; a procedure tells the reader what to do
        question = re.sub(r"\byour\b", "my", f"How do I {goal}?")
        if not question_words_ok(question) or goal.split()[0] in ("be", "do", "see", "this", "that"):
            continue
        answer = _clip_sentences(flat, bounds.procedure_chars // 2, max_sentences=3)
        if flat.rstrip().endswith(":") or answer.endswith(":"):  # the command, code or steps follow
            steps = []
            for later in blocks[n + 1:n + 4]:
                if _is_prose(later) and steps:
                    break
                if _is_prose(later):
                    break
                steps.append(later.rstrip())
            if not steps:
                continue
            if len(flat) > bounds.procedure_chars // 2:
                continue  # the lead-in to the code would be cut off
            answer = flat + "\n\n" + "\n\n".join(steps)
            if len(answer) > bounds.procedure_chars:
                continue
        if "\n\n" not in answer and _POINTER.search(answer):
            continue  # "use the following commands" without the commands
        pairs.append(QARecord(question, answer, source, section, "procedure"))
    return pairs


def steps_pairs(question: str | None, text: str, source: str, section: str | None,
                bounds: AnswerBounds) -> list[QARecord]:
    """A 'How do I …?' section whose text is numbered steps → the steps (with their lead-in) as the answer."""
    if not question or not question.startswith("How do I"):
        return []
    blocks = _blocks(text)
    for n, block in enumerate(blocks):
        items = [line for line in block.split("\n") if _NUMBERED.match(line)]
        if len(items) >= 2:
            lead = blocks[n - 1] if n and _is_prose(blocks[n - 1]) else ""
            answer = (" ".join(lead.split()) + "\n\n" if lead else "") + block.strip()
            if len(answer) <= bounds.procedure_chars:
                return [QARecord(question, answer, source, section, "procedure")]
    return []


def _plain(raw: str, markup: str) -> str:
    """Readable text of a section (Markdown links that were wrapped across lines resolved after unwrapping)."""
    text = to_plain_text(raw, markup)
    return markdown_inline(text) if markup == "md" else text


def generate_pairs(text: str, kind: str, source: str, bounds: AnswerBounds | None = None) -> list[QARecord]:
    """Every generated pair of one document of ``kind`` (rst|md|html|txt), in document order, unfiltered
    across documents (build.py drops near-duplicate questions over the whole corpus)."""
    bounds = bounds or AnswerBounds()
    sections, markup = document_sections(text, kind)
    if markup == "md":
        sections = [replace(s, own=markdown_for_answers(s.own)) for s in sections]
    cases = case_table(to_plain_text("\n\n".join(s.own for s in sections), markup))
    pairs: list[QARecord] = []
    module: str | None = None
    for sec in sections:
        plain = _plain(sec.own, markup)
        heading = sec.heading or None
        question = heading_question(sec.title, cases) if sec.title else None
        found = steps_pairs(question, plain, source, heading, bounds)
        if question and not found:
            answer, is_procedure = section_answer(plain, bounds, question)
            if answer:
                found.append(QARecord(question, answer, source, heading, "procedure" if is_procedure else "heading"))
        if markup == "rst":
            found += api_pairs(sec.own, source, heading, bounds, module)
            module = next((m.group(1) for line in sec.own.split("\n") if (m := _MODULE.match(line))), module)
        found += definition_pairs(plain, source, heading, bounds, cases)
        found += procedure_pairs(plain, source, heading, bounds)
        pairs += [p for p in found if question_words_ok(p.question, min_words=3) and has_content(p.answer, bounds)]
    return pairs


def passages(text: str, kind: str, max_chars: int = 1500) -> list[tuple[str | None, str]]:
    """(section heading, its opening prose up to ``max_chars``) for every section with a passage to ask about:
    what a teacher model reads."""
    sections, markup = document_sections(text, kind)
    out = []
    for sec in sections:
        own = markdown_for_answers(sec.own) if markup == "md" else sec.own
        prose = [" ".join(b.split()) for b in _blocks(_plain(own, markup)) if _is_prose(b)]
        passage = ""
        for block in prose:
            if passage and len(passage) + len(block) > max_chars:
                break
            passage = f"{passage}\n\n{block}".strip()
        if len(passage) >= 200:
            out.append((sec.heading or None, passage[:max_chars]))
    return out


def origin_counts(pairs: list[QARecord]) -> Counter[str]:
    return Counter(p.origin or "unknown" for p in pairs)
