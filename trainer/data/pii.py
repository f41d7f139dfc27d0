"""Redact personal data and secrets before text reaches a model that may repeat it.

Each finding becomes a typed placeholder (<EMAIL>, <PHONE>, <CARD>, ...) so the text stays
readable and the model learns the shape, not the value. Classes are chosen per run
(``--redact``); the default leaves ``ip`` out, since addresses in technical documents are
mostly content (a handbook's ``192.168.1.10``), not a person's. Patterns lean towards
precision on technical prose: slices like ``s[1::2]``, version numbers, dates, hex digests,
ISBNs, documentation addresses (RFC 5737 / 3849) and e-mail at the example domains
(RFC 2606) are left alone; card numbers must pass
the Luhn check and IBANs their mod-97 checksum. Recall and precision per class are measured
on tests/data/pii_sample.jsonl by ``python -m slmforge.bench.dev.pii_quality``.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable

from slmforge.errors import UserError

CLASSES = ("email", "phone", "ip", "secret", "card", "iban", "ssn", "address")
DEFAULT_CLASSES = frozenset({"email", "phone", "secret", "card", "iban", "ssn", "address"})
PLACEHOLDERS = {c.upper(): f"<{c.upper()}>" for c in CLASSES}

_KNOWN_KEYS = re.compile(
    r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}|hf_[A-Za-z0-9]{30,}"
    r"|glpat-[A-Za-z0-9_-]{20,}|sk_live_[A-Za-z0-9]{20,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})"
)
_ASSIGNED_SECRET = re.compile(
    r"(?i)\b((?:api[_-]?key|apikey|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|token|password|passwd|pwd)"
    r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',;()]{8,})"
)
# "the key Xy7...", "token Tr0ub4dor&3": a keyword, then a value mixing letters and digits
_NAMED_SECRET = re.compile(r"(?i)\b(?:key|token|password|passwd|secret)\s+(?:is\s+)?([^\s\"',;()<>]{8,})")
_LONG_TOKEN = re.compile(r"(?<![\w/+.:-])[A-Za-z0-9_+/-]{32,}={0,2}(?![\w/+=-])")  # not inside URLs/hosts
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w-]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|(?:\d{1,3}\.){3}\d{1,3})(?![\w:])")
# 13-19 digits, contiguous or in groups split by one kind of space or dash, starting like an issuer's
_CARD = re.compile(r"(?<![\w.,+-])(?:[2-6]\d{12,18}|[2-6]\d{3}(?P<sep>[ -])\d{4,6}(?:(?P=sep)\d{2,5}){1,3})(?![\w-]|[.,]\d)")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
_PHONE = re.compile(
    r"(?<![\w+.-])(?:"
    r"(?:\+|00)(?=[1-9])\d{1,3}(?:[ .-]?\(0?\d{0,4}\))?(?:[ .-]?\d{1,5}){1,5}"  # +44 20 7946 0958, +49 (0)30 1234567
    r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]\d{3,4}"  # (555) 123-4567
    r"|\d{3}([.-])\d{3,4}\1\d{4}"  # 555-123-4567, 555.123.4567 (one separator: not "1000 2000 3000")
    r"|0\d{1,4}(?:(?: ?/ ?|[ -])\d{2,8}){1,4}"  # national with trunk 0: 030-98765432, 07700 900123, 06 12 34 56 78
    r")(?![\w-]|[.,:]\d)"  # not followed by a time's ":30"
)
_STREET_TYPES = (r"Street|St\.?|Avenue|Ave\.?|Road|Rd\.?|Boulevard|Blvd\.?|Lane|Ln\.?|Drive|Dr\.?|Court|Ct\.?"
                 r"|Way|Place|Pl\.?|Terrace|Parkway|Pkwy\.?|Close|Crescent|Gardens|Square|Plaza|Highway|Hwy\.?|Loop|Row")
_ADDRESS = re.compile(
    r"\b(?:\d{1,5}[A-Za-z]?,? (?:[NSEW]\.? |North |South |East |West )?(?:[A-Z][a-z]+ ){1,3}(?:" + _STREET_TYPES +
    r")(?!\w| of\b)"  # 221B Baker Street, 1600 Pennsylvania Avenue (not "3 Little Pigs Way of ...")
    r"|\d{1,4},? (?:[Rr]ue|[Aa]venue|[Bb]oulevard|[Pp]lace|[Cc]hemin|[Aa]llée|[Qq]uai) (?:de la |de l'|du |des |de |d')?[A-ZÉ][\w-]+"  # 12 rue de la Paix
    r"|(?:[A-ZÄÖÜ][a-zäöüß]+(?:straße|strasse|str\.|weg|platz|allee|gasse|ring|damm|ufer)"
    r"|[A-ZÄÖÜ][a-zäöüß]+ (?:Straße|Str\.|Weg|Platz|Allee|Gasse|Ring|Damm)"
    r"|(?:Am|An der|Auf der|Auf dem|Zum|Zur) [A-ZÄÖÜ][a-zäöüß]+"  # Am Rosengarten 12
    r"|(?:Via|Viale|Piazza|Corso|Calle|Avenida|Rua) (?:[A-Z][a-z]+ ){0,2}[A-Z][a-z]+,?)"  # Via Roma 12
    r" \d{1,4}[a-z]?\b"  # Hauptstraße 5, Unter den Linden is beyond a pattern
    r")"
)
_EXAMPLE_DOMAINS = ("example.com", "example.org", "example.net")
_EXAMPLE_TLDS = ("example", "test", "invalid", "localhost")
_DOC_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]


def parse_classes(spec: str) -> frozenset[str]:
    """``--redact`` text → class names: a comma list of CLASSES, 'default', 'all' or 'none'."""
    chosen: set[str] = set()
    for name in (part.strip().lower() for part in spec.split(",")):
        if name == "default":
            chosen |= DEFAULT_CLASSES
        elif name == "all":
            chosen |= set(CLASSES)
        elif name in CLASSES:
            chosen.add(name)
        elif name not in ("none", ""):
            raise UserError(f"--redact: unknown class '{name}'; choose from {', '.join(CLASSES)}, "
                            "or default, all, none")
    return frozenset(chosen)


def _entropy(token: str) -> float:
    counts = Counter(token)
    return -sum(n / len(token) * math.log2(n / len(token)) for n in counts.values())


def _is_random_key(token: str) -> bool:
    """Mixed-case letters and digits with high entropy: how keys look and prose/digests/paths don't."""
    if token.startswith("/") or token.count("/") > 2:
        return False
    return (any(c.islower() for c in token) and any(c.isupper() for c in token) and any(c.isdigit() for c in token)
            and _entropy(token) >= 4.0)


def _looks_like_password(value: str) -> bool:
    """Letters and digits, not an identifier or a file name (``token_count2``, ``key1.txt``, ``hash256sum``)."""
    letters, digits = sum(c.isalpha() for c in value), sum(c.isdigit() for c in value)
    mixed = any(c.isupper() for c in value) and any(c.islower() for c in value)
    return letters >= 2 and digits >= 1 and (mixed or not value.replace("_", "").isalnum()) and "." not in value[1:-1]


def _is_personal_email(address: str) -> bool:
    """Addresses at the reserved example domains (RFC 2606: example.com, *.example, *.test) are examples."""
    domain = address.rsplit("@", 1)[1].lower()
    return not (domain.split(".")[-1] in _EXAMPLE_TLDS or any(domain == d or domain.endswith("." + d)
                                                              for d in _EXAMPLE_DOMAINS))


def _is_personal_ip(text: str) -> bool:
    """Loopback, unspecified and documentation addresses (RFC 5737, RFC 3849) are examples, not someone's."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified or any(ip in net for net in _DOC_NETS if net.version == ip.version))


def _is_ipv4(text: str) -> bool:
    # four single-digit parts are a version or a section number ("novas 3.1.1.3", "C99 6.4.4.2")
    return any(len(part) > 1 for part in text.split(".")) and _is_personal_ip(text)


def _is_ipv6(text: str) -> bool:
    groups = [g for g in text.split(":") if g]
    # "1::2" in ``s[1::2]`` is a valid address but a slice: ask for a real-looking one
    return (any(len(g) >= 3 for g in groups) or len(groups) >= 4) and _is_personal_ip(text)


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def luhn_ok(number: str) -> bool:
    """The Luhn checksum every payment card number carries."""
    total = 0
    for i, c in enumerate(reversed(number)):
        d = int(c) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _is_card(text: str) -> bool:
    number = _digits(text)
    return 13 <= len(number) <= 19 and luhn_ok(number)


def iban_ok(text: str) -> bool:
    """ISO 13616: country, check digits, account; valid when the rearranged number mod 97 is 1."""
    iban = text.replace(" ", "")
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


_DATE_START = re.compile(r"0\d[ /-][0-3]\d[ /-](?:19|20)\d\d\b")  # 05/17/2024 10, 01 02 2023 12 00


def _is_phone(text: str) -> bool:
    digits = _digits(text)
    if text.startswith("+") or re.match(r"00[1-9]", text):
        return 8 <= len(digits) <= 15
    if text.startswith("0"):  # national: an ISBN ends in a one-digit group, a phone does not; nor is it a date
        return (9 <= len(digits) <= 12 and len(re.split(r"[ /-]+", text)[-1]) >= 2
                and not _DATE_START.match(text))
    return 10 <= len(digits) <= 11


def _accept_all(_: str) -> bool:
    return True


# (class, pattern, which group holds the value, accept the value?) in the order they run:
# secrets first (a key may contain an @), then e-mails, IBANs and cards (long digit runs a phone
# pattern would half-match), SSNs, addresses, phone numbers.
_RULES: list[tuple[str, re.Pattern[str], int, Callable[[str], bool]]] = [
    ("secret", _KNOWN_KEYS, 0, _accept_all),
    # a digit tells a value ("hunter2") from code ("password = getpass.getpass()")
    ("secret", _ASSIGNED_SECRET, 2, lambda s: not s.startswith("<") and any(c.isdigit() for c in s)),
    ("secret", _NAMED_SECRET, 1, _looks_like_password),
    ("secret", _LONG_TOKEN, 0, _is_random_key),
    ("email", _EMAIL, 0, _is_personal_email),
    ("iban", _IBAN, 0, iban_ok),
    ("card", _CARD, 0, _is_card),
    ("ssn", _SSN, 0, _accept_all),
    ("ip", _IPV6, 0, _is_ipv6),
    ("ip", _IPV4, 0, _is_ipv4),
    ("address", _ADDRESS, 0, _accept_all),
    ("phone", _PHONE, 0, _is_phone),
]


def redact(text: str, classes: Iterable[str] = DEFAULT_CLASSES) -> tuple[str, Counter[str]]:
    """Replace PII and secrets of ``classes`` in ``text`` with typed placeholders; return (text, counts by type)."""
    enabled = set(classes)
    counts: Counter[str] = Counter()
    shielded: list[str] = []  # IBAN-shaped text left as it is, so no later rule takes its digits for a phone

    def shield(m: re.Match[str]) -> str:
        shielded.append(m.group(0))
        return f"\ue000{len(shielded) - 1}\ue000"

    for cls, pattern, group, accept in _RULES:
        if cls not in enabled:
            if cls == "iban":
                text = pattern.sub(shield, text)
            continue
        kind = cls.upper()

        def replace(m: re.Match[str], kind: str = kind, group: int = group,
                    accept: Callable[[str], bool] = accept) -> str:
            value = m.group(group)
            if not accept(value):
                return shield(m) if kind == "IBAN" else m.group(0)
            counts[kind] += 1
            start, end = m.start(group) - m.start(0), m.end(group) - m.start(0)
            whole = m.group(0)
            return whole[:start] + PLACEHOLDERS[kind] + whole[end:]

        text = pattern.sub(replace, text)
    if shielded:
        text = re.sub("\ue000(\\d+)\ue000", lambda m: shielded[int(m.group(1))], text)
    return text, counts
