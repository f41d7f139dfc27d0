"""Turn marked-up documents into clean training text.

Markup (reST roles and directives, HTML tags, Markdown links) is noise a small model
would learn to reproduce, so it is reduced to the words a reader sees; code stays.
Unicode is NFKC-normalized so the same text always tokenizes the same way.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from html.parser import HTMLParser

# --------------------------------------------------------------------------- unicode and whitespace

_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def normalize_unicode(text: str) -> str:
    """NFKC, Unix newlines, no zero-width or control characters, tabs as 4 spaces."""
    text = unicodedata.normalize("NFKC", text).translate(_INVISIBLE)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    return _CONTROL.sub("", text)


def normalize_whitespace(text: str) -> str:
    """No trailing spaces, at most one blank line; space runs collapsed in prose lines only
    (indented and doctest lines are code, where spacing means something)."""
    lines = []
    for line in text.split("\n"):
        line = line.rstrip()
        if line and not line.startswith((" ", ">>>", "...")):
            line = re.sub(r" {2,}", " ", line)
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


_LIST_ITEM = re.compile(r"^(?:[*+-]|\d+[.)]|#\.)\s")


def unwrap_paragraphs(text: str) -> str:
    """Join hard-wrapped prose lines of a paragraph into one line (code, lists and tables untouched).

    Sources wrap at ~80 columns; a model trained on that learns to break lines mid-sentence.
    """
    blocks = []
    for block in text.split("\n\n"):
        lines = block.split("\n")
        prose = all(line and not line.startswith((" ", ">>>", "...", "|")) for line in lines) and not any(
            _LIST_ITEM.match(line) for line in lines[1:])
        blocks.append(" ".join(line.strip() for line in lines) if prose and len(lines) > 1 else block)
    return "\n\n".join(blocks)


# --------------------------------------------------------------------------- reStructuredText

_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+<>_:.])\1{2,}\s*$")
_TABLE_RULE = re.compile(r"^\s*(?:[=+\-| ]*[=\-][=+\-| ]*)$")
_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::\s*(.*)$")
_TARGET_OR_COMMENT = re.compile(r"^(\s*)\.\.(?:\s+|$)")
_FIELD = re.compile(r"^\s*:[\w -]+:(?:\s.*)?$")
_ROLE = re.compile(r":(?:[\w-]+:)?([\w-]+):`([^`]+)`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]+>`__?")
_REF = re.compile(r"`([^`]+)`__?(?!\w)")
_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)
_INTERPRETED = re.compile(r"(?<![\w`])`([^`]+)`(?![\w`])")
_STRONG = re.compile(r"\*\*(\S(?:.*?\S)?)\*\*")
_EMPHASIS = re.compile(r"(?<![\w*\\])\*(\S(?:[^*\n]*?\S)?)\*(?![\w*])")
_FOOTNOTE = re.compile(r"\s?\[(?:#\w*|\d+|\*)\]_")

# directives whose whole block carries no reader-visible text
_DROP_DIRECTIVES = {"index", "toctree", "contents", "image", "figure", "raw", "highlight", "sectionauthor",
                    "moduleauthor", "tabularcolumns", "testsetup", "testcleanup", "include", "literalinclude",
                    "currentmodule", "audit-event", "impl-detail", "availability", "productionlist", "rubric",
                    "only", "ifconfig", "autosummary", "meta"}
# directives whose argument is an API signature worth keeping as a line
_SIGNATURE_DIRECTIVES = {"function", "class", "method", "classmethod", "staticmethod", "attribute", "data",
                         "exception", "decorator", "decoratormethod", "describe", "opcode", "cmdoption",
                         "option", "envvar", "pdbcommand", "module", "coroutinefunction", "coroutinemethod",
                         "abstractmethod", "property"}
_LABELLED_DIRECTIVES = {"versionadded": "New in version {}.", "versionchanged": "Changed in version {}:",
                        "deprecated": "Deprecated since version {}:", "deprecated-removed": "Deprecated since version {}:",
                        "note": "Note:", "warning": "Warning:", "seealso": "See also:", "tip": "Tip:",
                        "important": "Important:", "hint": "Hint:", "caution": "Caution:", "attention": "Attention:",
                        "danger": "Danger:", "error": "Error:", "admonition": "{}:"}
_PARENS_ROLES = {"func", "meth", "cfunc"}
_PREFIX_ROLES = {"pep": "PEP {}", "rfc": "RFC {}"}


def _role(match: re.Match[str]) -> str:
    role, target = match.group(1), match.group(2).strip()
    title = re.match(r"^(.*?)\s*<[^>]*>$", target, flags=re.DOTALL)
    if title and title.group(1):
        return title.group(1)
    target = target.lstrip("!")
    if target.startswith("~"):
        target = target[1:].rsplit(".", 1)[-1]
    if role in _PREFIX_ROLES:
        return _PREFIX_ROLES[role].format(target.split("#")[0])
    if role in _PARENS_ROLES and not target.endswith(")"):
        return target + "()"
    return target


def rest_inline(text: str) -> str:
    """Inline reST markup → plain text: :func:`shutil.copy` → shutil.copy(), links → their titles."""
    text = _ROLE.sub(_role, text)
    text = _LITERAL.sub(lambda m: m.group(1), text)
    text = _LINK.sub(lambda m: m.group(1), text)
    text = _REF.sub(lambda m: m.group(1), text)
    text = _INTERPRETED.sub(lambda m: m.group(1), text)
    text = _STRONG.sub(lambda m: m.group(1), text)
    text = _EMPHASIS.sub(lambda m: m.group(1), text)
    text = _FOOTNOTE.sub("", text)
    return text.replace("\\*", "*").replace("\\_", "_")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block_end(lines: list[str], start: int, base_indent: int) -> int:
    """Index after the indented block that belongs to the directive on line ``start - 1``."""
    i = start
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base_indent):
        i += 1
    return i


def rest_to_text(text: str) -> str:
    """reST source → readable text: headings kept as lines, directives reduced, roles resolved."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        directive = _DIRECTIVE.match(line)
        if directive:
            indent, name, arg = len(directive.group(1)), directive.group(2).split(":")[-1], directive.group(3).strip()
            end = _block_end(lines, i + 1, indent)
            if name in _DROP_DIRECTIVES:
                i = end
                continue
            if name in _SIGNATURE_DIRECTIVES and arg:
                out.append(" " * indent + arg)
            elif name in _LABELLED_DIRECTIVES:
                out.append(" " * indent + _LABELLED_DIRECTIVES[name].format(arg.split()[0] if arg else "").strip())
                if name in ("versionchanged", "deprecated") and len(arg.split(None, 1)) > 1:
                    out[-1] += " " + arg.split(None, 1)[1]
            # option lines (":noindex:") right after the directive are not content; the body
            # is ordinary reST and goes through this same loop
            i += 1
            while i < end and _FIELD.match(lines[i]):
                i += 1
            continue
        if _TARGET_OR_COMMENT.match(line):  # ".. _label:" targets and ".." comments (with their block)
            i = _block_end(lines, i + 1, _indent(line))
            continue
        if _ADORNMENT.match(stripped) or (len(stripped) >= 3 and _TABLE_RULE.match(line)):  # headings, table rules
            i += 1
            continue
        if stripped == "::":
            i += 1
            continue
        if _FIELD.match(line) and "`" not in line:
            i += 1
            continue
        if stripped.startswith("|") and stripped.endswith("|") and len(stripped) > 2:
            line = re.sub(r"\s*\|\s*", "  ", stripped).strip()
        if line.endswith("::"):
            line = line[:-2].rstrip() + ("" if line[:-2].rstrip().endswith(":") else ":")
        out.append(line)
        i += 1
    return rest_inline("\n".join(out))


# --------------------------------------------------------------------------- HTML

_BLOCK_TAGS = {"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "pre", "blockquote",
               "h1", "h2", "h3", "h4", "h5", "h6", "dt", "dd", "hr", "header", "footer", "main", "figure"}
_SKIP_TAGS = {"script", "style", "noscript", "nav", "head", "template", "svg", "iframe", "button", "form"}


class _TextExtractor(HTMLParser):
    """Collect visible text; block tags become line breaks, headings optionally Markdown ``#`` lines."""

    def __init__(self, headings_as_markdown: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.pre = 0
        self.headings_as_markdown = headings_as_markdown

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self.skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n" if tag != "br" else "\n")
            if tag == "pre":
                self.pre += 1
            if self.headings_as_markdown and re.fullmatch(r"h[1-6]", tag):
                self.parts.append("#" * int(tag[1]) + " ")
            if tag == "li":
                self.parts.append("* ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self.skip = max(0, self.skip - 1)
        elif tag in _BLOCK_TAGS:
            if tag == "pre":
                self.pre = max(0, self.pre - 1)
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.pre:
            self.parts.append(data)
            return
        data = re.sub(r"\s+", " ", data)
        self.parts.append(data.lstrip() if not self.parts or self.parts[-1].endswith("\n") else data)


def html_to_text(text: str, headings_as_markdown: bool = False) -> str:
    """Visible text of an HTML page (scripts, styles and navigation dropped)."""
    parser = _TextExtractor(headings_as_markdown)
    parser.feed(text)
    parser.close()
    return "\n".join(line.rstrip() for line in "".join(parser.parts).split("\n"))


# --------------------------------------------------------------------------- Markdown

_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_MD_EMPHASIS = re.compile(r"(\*\*|__)(\S(?:.*?\S)?)\1")
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


def markdown_inline(text: str) -> str:
    """Inline Markdown → plain text (links keep their words, `code` its content)."""
    text = _MD_IMAGE.sub(lambda m: m.group(1), text)
    text = _MD_LINK.sub(lambda m: m.group(1), text)
    text = _MD_EMPHASIS.sub(lambda m: m.group(2), text)
    return re.sub(r"(?<!`)`([^`\n]+)`(?!`)", lambda m: m.group(1), text)


def markdown_to_text(text: str) -> str:
    """Markdown → text: headings as plain lines, fences removed (code kept), links reduced."""
    text = _HTML_COMMENT.sub("", text)
    out = []
    in_fence = False
    for line in text.split("\n"):
        if line.strip().startswith(("```", "~~~")):
            in_fence = not in_fence
            continue
        if in_fence:
            out.append(line)
            continue
        heading = _MD_HEADING.match(line)
        if heading:
            line = heading.group(1)
        elif re.fullmatch(r"\s*([-*_=])(\s*\1){2,}\s*", line):
            continue
        out.append(markdown_inline(line))
    return "\n".join(out)


# --------------------------------------------------------------------------- whole documents

def to_plain_text(text: str, kind: str) -> str:
    """A document of ``kind`` (txt|md|rst|html) as normalized plain text."""
    text = normalize_unicode(text)
    if kind == "rst":
        text = rest_to_text(text)
    elif kind == "md":
        text = markdown_to_text(text)
    elif kind == "html":
        text = html_to_text(text)
    text = normalize_whitespace(text)
    return unwrap_paragraphs(text) if kind in ("rst", "md") else text


_BOILERPLATE = re.compile(
    r"^(?:copyright\b|©|\(c\)\s*\d{4}|all rights reserved|skip to (?:main )?content|table of contents$|"
    r"previous topic$|next topic$|this page$|show source$|edit (?:this page|on github)|report a bug$|"
    r"(?:we use )?cookies?\b|privacy policy$|terms of (?:use|service)$|back to top$|navigation$)",
    re.IGNORECASE,
)


def repeated_lines(texts: list[str], min_docs: int = 3, min_share: float = 0.5) -> set[str]:
    """Lines found in at least ``min_docs`` documents and ``min_share`` of all: headers, footers, nav."""
    if len(texts) < min_docs:
        return set()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update({line.strip() for line in text.split("\n") if len(line.strip()) >= 8})
    return {line for line, n in counts.items() if n >= min_docs and n >= min_share * len(texts)}


def remove_boilerplate(text: str, repeated: set[str]) -> tuple[str, int]:
    """Drop boilerplate lines (site chrome, copyright, repeated headers); return (text, lines dropped)."""
    kept, dropped = [], 0
    for line in text.split("\n"):
        s = line.strip()
        if s and (s in repeated or (len(s) < 100 and _BOILERPLATE.match(s))):
            dropped += 1
            continue
        kept.append(line)
    return "\n".join(kept), dropped


def looks_like_text(piece: str, min_chars: int, min_alpha: float = 0.25) -> bool:
    """False for near-empty pieces: too short, or mostly symbols/digits (separators, tables of numbers)."""
    stripped = piece.strip()
    if len(stripped) < min_chars:
        return False
    letters = sum(ch.isalpha() for ch in stripped)
    return letters / len(stripped) >= min_alpha
