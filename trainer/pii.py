"""Redact personal data and secrets before text reaches a model that may repeat it.

Each finding becomes a typed placeholder (<EMAIL>, <PHONE>, <IP>, <SECRET>) so the
text stays readable and the model learns the shape, not the value. Patterns lean
towards precision on technical prose: slices like ``s[1::2]``, version numbers,
hex digests and loopback addresses are not personal data and are left alone.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable

PLACEHOLDERS = {"SECRET": "<SECRET>", "EMAIL": "<EMAIL>", "IP": "<IP>", "PHONE": "<PHONE>"}

_KNOWN_KEYS = re.compile(
    r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}|hf_[A-Za-z0-9]{30,}"
    r"|glpat-[A-Za-z0-9_-]{20,}|sk_live_[A-Za-z0-9]{20,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})"
)
_ASSIGNED_SECRET = re.compile(
    r"(?i)\b((?:api[_-]?key|apikey|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|token|password|passwd|pwd)"
    r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',;()]{8,})"
)
_LONG_TOKEN = re.compile(r"(?<![\w/+.:-])[A-Za-z0-9_+/-]{32,}={0,2}(?![\w/+=-])")  # not inside URLs/hosts
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|(?:\d{1,3}\.){3}\d{1,3})(?![\w:])")
_PHONE = re.compile(
    r"(?<![\w+.-])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?|\d{1,4}[ .-])\d{3,4}[ .-]\d{3,4}"  # +44 20 7946 0958
    r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]\d{3,4}"  # (555) 123-4567
    r"|\d{3}([.-])\d{3,4}\1\d{4})"  # 555-123-4567, 555.123.4567 (one separator: not "1000 2000 3000")
    r"(?![\w-]|\.\d)"
)


def _entropy(token: str) -> float:
    counts = Counter(token)
    return -sum(n / len(token) * math.log2(n / len(token)) for n in counts.values())


def _is_random_key(token: str) -> bool:
    """Mixed-case letters and digits with high entropy: how keys look and prose/digests/paths don't."""
    if token.startswith("/") or token.count("/") > 2:
        return False
    return (any(c.islower() for c in token) and any(c.isupper() for c in token) and any(c.isdigit() for c in token)
            and _entropy(token) >= 4.0)


def _is_personal_ip(text: str) -> bool:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified)


def _is_ipv4(text: str) -> bool:
    # four single-digit parts are a version or a section number ("novas 3.1.1.3", "C99 6.4.4.2")
    return any(len(part) > 1 for part in text.split(".")) and _is_personal_ip(text)


def _is_ipv6(text: str) -> bool:
    groups = [g for g in text.split(":") if g]
    # "1::2" in ``s[1::2]`` is a valid address but a slice: ask for a real-looking one
    return (any(len(g) >= 3 for g in groups) or len(groups) >= 4) and _is_personal_ip(text)


def _phone_digits_ok(match: str) -> bool:
    digits = sum(c.isdigit() for c in match)
    return 7 <= digits <= 15


# (type, pattern, which group holds the value, accept the value?) in the order they run:
# secrets first (a key may contain an @), then e-mails, addresses, phone numbers.
_RULES: list[tuple[str, re.Pattern[str], int, Callable[[str], bool]]] = [
    ("SECRET", _KNOWN_KEYS, 0, lambda s: True),
    # a digit tells a value ("hunter2") from code ("password = getpass.getpass()")
    ("SECRET", _ASSIGNED_SECRET, 2, lambda s: not s.startswith("<") and any(c.isdigit() for c in s)),
    ("SECRET", _LONG_TOKEN, 0, _is_random_key),
    ("EMAIL", _EMAIL, 0, lambda s: True),
    ("IP", _IPV6, 0, _is_ipv6),
    ("IP", _IPV4, 0, _is_ipv4),
    ("PHONE", _PHONE, 0, _phone_digits_ok),
]


def redact(text: str) -> tuple[str, Counter[str]]:
    """Replace PII and secrets in ``text`` with typed placeholders; return (text, counts by type)."""
    counts: Counter[str] = Counter()
    for kind, pattern, group, accept in _RULES:
        def replace(m: re.Match[str], kind: str = kind, group: int = group, accept=accept) -> str:
            value = m.group(group)
            if not accept(value):
                return m.group(0)
            counts[kind] += 1
            start, end = m.start(group) - m.start(0), m.end(group) - m.start(0)
            whole = m.group(0)
            return whole[:start] + PLACEHOLDERS[kind] + whole[end:]

        text = pattern.sub(replace, text)
    return text, counts
