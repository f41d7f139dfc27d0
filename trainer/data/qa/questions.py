"""Turn a section heading into the question a reader would ask of it.

Heading shapes, in order: API names ("shutil.copy()" → "What does shutil.copy() do?"),
"How to …" and verb-led headings ("Reading and Writing Files" → "How do I read and write
files?"), "X objects" / noun phrases ("Class Objects" → "What are class objects?").
Headings that make no question (Contents, Notes, See also, numbered-only, one short word
of chrome) give None. Rules only: a language model is the teacher's job (teacher.py).
"""

from __future__ import annotations

import re
from collections import Counter

# headings that name a part of a document, not a topic someone asks about
_NO_QUESTION = {
    "contents", "table of contents", "toc", "footnotes", "notes", "note", "see also", "index", "indices and tables",
    "references", "bibliography", "glossary", "changelog", "change log", "changes", "history", "release notes",
    "license", "licence", "copyright", "acknowledgements", "acknowledgments", "credits", "authors", "contributors",
    "summary", "introduction", "intro", "overview", "preface", "foreword", "abstract", "appendix", "examples",
    "example", "recipes", "misc", "miscellaneous", "other", "others", "todo", "to do", "related", "further reading",
    "module contents", "basic usage", "usage", "basic use", "details", "description", "discussion", "remarks",
    "random remarks", "odds and ends", "recap", "what now", "next steps", "conclusion", "contact", "support",
    "about", "about us", "faq", "api", "api reference", "reference", "methods", "functions", "classes", "attributes",
    "properties", "parameters", "arguments", "returns", "raises", "yields", "exceptions", "warnings", "deprecated",
    "deprecated functions and variables", "getting started", "quickstart", "quick start", "installation", "install",
    "requirements", "configuration", "setup", "features", "links", "resources", "citation", "community",
    "contributing", "development", "testing", "tests", "status", "roadmap", "news", "documentation", "docs",
    "common tasks", "general information", "general questions", "what's changed", "what's new", "contribute",
    "build", "building", "developing", "license information", "sponsors", "thanks", "acknowledgement", "highlights",
    "key features", "table of content", "citing", "cite", "how to cite", "maintainers", "team", "the team",
    "people", "users", "who uses it", "sponsors and backers",
}
# a heading made only of these words names no topic ("General Questions", "Other Notes")
_GENERIC = {"general", "information", "other", "common", "more", "misc", "basic", "advanced", "additional",
            "special", "tasks", "topics", "notes", "questions", "remarks", "things", "details", "and", "of", "the",
            "a", "an", "faq", "faqs", "miscellaneous", "further", "various", "some", "useful", "tips", "tricks"}
# "copytree example", "deque Recipes": code to read, not a topic to ask about
_EXAMPLE_WORDS = {"example", "examples", "recipe", "recipes", "demo", "demos", "sample", "samples", "tutorial"}
# singular nouns that read better with "the" ("What is the command line interface?")
_COUNT_NOUNS = {"type", "interface", "path", "object", "statement", "function", "method", "class", "module", "file",
                "limit", "loop", "operator", "value", "variable", "table", "directory", "command", "protocol",
                "server", "client", "key", "package", "field", "record", "parameter", "argument", "flag", "service",
                "tool", "library", "system", "process", "format", "api", "algorithm", "model", "pipeline"}
# imperative headings ("Deploy your app") ask "How do I deploy my app?"
_IMPERATIVES = {"install", "deploy", "run", "build", "use", "create", "configure", "set", "add", "get", "make", "write",
                "read", "report", "switch", "enable", "disable", "update", "upgrade", "import", "load", "save", "train",
                "define", "call", "start", "stop", "connect", "check", "choose", "convert", "compile", "download",
                "generate", "handle", "manage", "migrate", "monitor", "open", "register", "remove", "rename", "reset",
                "restore", "select", "send", "share", "sort", "store", "tune", "upload", "validate", "verify", "view",
                "customize", "extend", "debug", "profile", "serve", "export", "deactivate", "activate", "uninstall"}
# a heading that starts like this is a fragment ("With aiohttp", "For developers"), not a topic
_FRAGMENT_STARTS = {"with", "without", "for", "in", "on", "from", "about", "via", "by", "to", "at", "and", "or",
                    "citing", "cite", "when", "if", "under"}
_QUESTION_WORDS = {"how", "what", "why", "when", "where", "which", "who", "can", "is", "are", "do", "does",
                   "should", "will"}
# prefixes that add nothing to the question ("A First Look at Classes" asks about classes)
_LEAD_INS = re.compile(r"^(?:more on|more about|a first look at|a word about|a brief look at|a note on|notes on|"
                       r"introduction to|an introduction to|a quick tour of|overview of|brief tour of)\s+", re.IGNORECASE)
# words ending in -ing that are not verbs at the head of a heading
_NOT_GERUNDS = {"floating", "string", "strings", "thing", "things", "nothing", "something", "everything", "during",
                "morning", "evening", "ceiling", "spring", "ring", "king", "wing", "sibling", "padding", "heading",
                "headings", "setting", "settings", "meaning", "warning", "warnings", "according", "following",
                "existing", "pending", "missing", "remaining", "trailing", "leading", "timing", "logging",
                "threading", "multi-threading", "multithreading", "rounding", "hashing", "packaging", "templating",
                "pricing", "billing", "shipping", "thinking", "learning", "training", "wording", "coding",
                "swing", "bring", "sing", "ping", "offering", "opening", "closing", "mapping", "mappings",
                "encoding", "encodings", "building", "buildings", "listing", "listings", "booking", "bookings",
                "routing", "scheduling", "networking", "caching", "profiling", "versioning", "licensing", "operating",
                "whetting"}
# nouns that make "<gerund> <noun>" a noun phrase ("Looping Techniques", "Coding Style")
_META_NOUNS = {"techniques", "technique", "operations", "operation", "options", "option",
               "examples", "example", "modes", "mode", "rules", "rule", "tips", "tools", "tool", "style", "styles",
               "conventions", "errors", "error", "point", "system", "systems", "data", "parameters", "arguments",
               "methods", "behaviour", "behavior", "basics", "patterns", "guide", "reference", "environment"}
# -ing stems that need more than "drop -ing" to become the verb
_STEMS = {"us": "use", "writ": "write", "rewrit": "rewrite", "overwrit": "overwrite", "creat": "create",
          "rais": "raise", "caus": "cause", "pars": "parse", "revers": "reverse", "travers": "traverse",
          "releas": "release", "increas": "increase", "decreas": "decrease", "purchas": "purchase",
          "choos": "choose", "los": "lose", "leav": "leave", "stor": "store", "restor": "restore", "ignor": "ignore",
          "explor": "explore", "scor": "score", "requir": "require", "acquir": "acquire", "rout": "route",
          "add": "add", "develop": "develop", "scal": "scale", "enter": "enter", "render": "render",
          "install": "install", "tun": "tune", "debugg": "debug", "compil": "compile", "fil": "file", "styl": "style"}
_VOWELS = set("aeiou")
_ANAPHORA = {"this", "that", "these", "those", "above", "below", "earlier", "previous", "latter", "former", "it",
             "its", "them", "they", "such", "here", "there", "following"}
_API = re.compile(r"^[A-Za-z_][\w.]*(?:\(\))?$")
_CALL = re.compile(r"\b([A-Za-z_][\w.]*\(\))")
_WORD = re.compile(r"[A-Za-z][\w'-]*")


def verb_of(gerund: str) -> str:
    """'reading' → 'read', 'creating' → 'create', 'running' → 'run' (English -ing rules, small table)."""
    word = gerund.lower()
    stem = word[:-3]
    if stem in _STEMS:
        return _STEMS[stem]
    if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "lsfzaeiou":
        return stem[:-1]  # running → run, logging → log
    if stem.endswith(("v", "z", "u")) or (stem.endswith("c") and not stem.endswith("ck")):
        return stem + "e"  # save, size, continue, produce
    if len(stem) > 2 and stem[-1] == "l" and stem[-2] not in _VOWELS | {"l", "r", "w"}:
        return stem + "e"  # handle, enable
    if len(stem) > 2 and stem[-3] not in _VOWELS and stem[-2] in _VOWELS and stem[-1] in "tdkmbpsr" + "ngi":
        last2 = stem[-2:]
        if last2 in ("at", "ut", "od", "id", "ud", "ok", "ak", "ik", "am", "im", "um", "ib", "ob", "ub", "ap", "yp",
                     "os", "ar", "ur", "ir", "in", "ag", "ng"):
            return stem + "e"  # generate, execute, decode, provide, invoke, name, describe, escape, close, compare
    if stem.endswith(("ang", "rg")):
        return stem + "e"  # change, merge
    return stem


def _is_gerund(word: str) -> bool:
    return word.lower().endswith("ing") and len(word) > 4 and word.lower() not in _NOT_GERUNDS


def case_table(text: str) -> Counter[str]:
    """How each word is written mid-sentence in a document's body text (headings left out, they are title
    case): tells proper nouns (Python) from title-cased common words (Files)."""
    counts: Counter[str] = Counter()
    for sentence in re.split(r"[.!?:\n]\s+", text):
        words = _WORD.findall(sentence)
        counts.update(words[1:])
    return counts


def _lower_title_case(words: list[str], cases: Counter[str]) -> list[str]:
    """Lowercase title-case words unless the document writes them capitalized (names, acronyms, CamelCase)."""
    out = []
    for word in words:
        plain = word.strip(",;:()\"")
        parts = plain.split("-")
        if (all(p.isalpha() and (p.islower() or (p[:1].isupper() and p[1:].islower())) for p in parts)
                and not plain.islower() and cases[plain.lower()] >= cases[plain]):
            word = word.replace(plain, plain.lower())
        out.append(word)
    return out


def _normalize_heading(title: str) -> str:
    title = re.sub(r"^\s*(?:\d+(?:\.\d+)*\.?|[IVX]+\.|step \d+[:.]?|chapter \d+[:.]?|part \d+[:.]?)\s+", "", title,
                   flags=re.IGNORECASE)
    title = re.split(r"\s+(?:---|—|–)\s+", title)[0]
    if ":" in title.rstrip(":"):  # "Intermezzo: Coding Style" is about coding style, "Arithmetic: Issues" about arithmetic
        before, after = (part.strip() for part in title.split(":", 1))
        title = after if len(before.split()) == 1 else before
    title = re.sub(r"\s+\([^)]+\)\s*$", "", title)  # "Sequences (Tuples/Lists)"
    if re.match(r"^(?:an? )?(?:informal |brief |quick |short |gentle )?(?:introduction|tour|overview|guide) "
                r"(?:to|of)\s+", title.strip(), flags=re.IGNORECASE):
        return ""  # a whole document's title: its first paragraph introduces the document, not a topic
    return _LEAD_INS.sub("", title.strip().rstrip(":.").strip())


def question_words_ok(question: str, min_words: int = 4, max_words: int = 25) -> bool:
    """4–25 words, ends in '?', and asks about something on its own (no 'this'/'above' pointing elsewhere)."""
    words = question.rstrip("?").split()
    lowered = {w.lower().strip(",;:()") for w in words}
    return question.endswith("?") and min_words <= len(words) <= max_words and not (lowered & _ANAPHORA)


def heading_question(title: str, cases: Counter[str] | None = None) -> str | None:
    """The natural question for a section titled ``title`` (inline markup already resolved), or None."""
    cases = cases if cases is not None else Counter()
    raw = " ".join(title.split())
    if not raw or raw.endswith("?"):
        return None  # a question heading is the FAQ's (faq.py), not a generated pair
    if (raw.split()[0].lower() in _QUESTION_WORDS and len(raw.split()) >= 4
            and not re.match(r"how to\s", raw, re.IGNORECASE)):  # a question without its '?'
        asked = re.sub(r"^(Why|How|When|Where) you (should|can|must) ", r"\1 \2 I ", raw.split("?")[0].strip())
        return asked + "?" if "?" in raw or not raw.endswith(".") else None
    if raw.endswith(".") or raw.split()[0] in ("I", "My", "We"):
        return None  # a sentence ("My class defines __del__ but …"), not a topic
    parts = re.split(r"\s+(?:---|—|–)\s+", raw, maxsplit=1)
    if len(parts) == 2 and _API.match(parts[0]):  # "shutil --- High-level file operations": a module page
        return f"What is the {parts[0]} module for?"
    title = _normalize_heading(raw)
    words = title.split()
    if (not words or title.lower() in _NO_QUESTION or {w.lower() for w in words} & _EXAMPLE_WORDS or sum(ch.isalpha() for ch in title) < 4
            or not any(ch.isalpha() for ch in words[0]) or {w.lower() for w in words} <= _GENERIC
            or words[-1].lower() in ("faq", "faqs", "questions")):
        return None
    if len(words) == 1 and _API.match(title) and ("." in title or "_" in title or title.endswith("()")):
        return f"What does {title} do?" if title.endswith("()") else f"What is {title}?"
    call = _CALL.search(title)
    if call and len(words) <= 4:
        return f"What does {call.group(1)} do?"
    if words[0].lower() in _FRAGMENT_STARTS:
        return None
    if words[0].lower() in _IMPERATIVES and len(words) > 1:
        rest = " ".join(_lower_title_case(words[1:], cases))
        return _you_to_me(f"How do I {words[0].lower()} {rest}?")
    if re.match(r"how to\s", title, re.IGNORECASE):
        rest = " ".join(_lower_title_case(words[2:], cases))
        return _you_to_me(f"How do I {rest}?")
    verb = verb_of(words[0]) if _is_gerund(words[0]) else ""
    if (verb and len(words) > 1 and not (len(words) == 2 and words[1].lower() in _META_NOUNS)
            and (not cases or cases[verb] > 0)):  # a verb the document itself uses ("define"; not "bookkeep")
        out = []
        for n, word in enumerate(words):
            after_join = n > 0 and words[n - 1].lower() in ("and", "or", "&", "and/or")
            out.append(verb_of(word) if (n == 0 or after_join) and _is_gerund(word) else word)
        rest = _lower_title_case(out, cases)
        return _you_to_me(f"How do I {' '.join(rest)}?")
    lowered = _lower_title_case(words, cases)
    if len(words) == 1 and len(title) < 5:
        return None
    phrase = " ".join(lowered)
    head_words = re.split(r"\s+(?:of|for|with|within|without|between|in|into|on|over|under|to|from|by|as|at|about|via|per)\s+", phrase, maxsplit=1)[0].split()
    head = head_words[-1].lower().strip(",") if head_words else words[-1].lower()
    plural = head.endswith("s") and not head.endswith(("ss", "us", "is", "ics", "ness"))
    if len(words) >= 2 and words[-1].lower() in ("work", "works"):
        return None
    if not plural and len(words) >= 2 and head in _COUNT_NOUNS and lowered[0].lower() not in ("the", "a", "an"):
        phrase = "the " + phrase
    return f"What {'are' if plural else 'is'} {phrase}?"


def _you_to_me(question: str) -> str:
    """'How do I whet your appetite?' → '… my appetite?' (the asker is 'I')."""
    return re.sub(r"\byour\b", "my", re.sub(r"\byourself\b", "myself", question))
