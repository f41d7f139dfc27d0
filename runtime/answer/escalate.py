"""Send what the small model cannot handle to a larger OpenAI-compatible endpoint.

Used when retrieval confidence and answer support are both low, or when the question
does not fit the small model's context. The device stays useful offline: when the
endpoint cannot be reached the local answer is kept and the reply says so.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

DEFAULT_MIN_TOP1 = 0.35
DEFAULT_MIN_SUPPORT = 0.30
DEFAULT_TIMEOUT_S = 60.0


class EscalationError(Exception):
    """The endpoint could not be reached or gave no usable answer."""


@dataclass
class EscalationPolicy:
    """Escalate when retrieval top-1 AND answer support are below their thresholds."""

    min_top1: float = DEFAULT_MIN_TOP1
    min_support: float = DEFAULT_MIN_SUPPORT

    def reason(self, top1: float | None, support: float | None, context_overflow: bool = False) -> str | None:
        if context_overflow:
            return "the question does not fit the local model's context window"
        if top1 is None or support is None:
            return None
        if top1 < self.min_top1 and support < self.min_support:
            return (f"low confidence: retrieval top-1 {top1:.2f} < {self.min_top1} and "
                    f"answer support {support:.2f} < {self.min_support}")
        return None


@dataclass
class EscalationResult:
    text: str
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str


class Escalator:
    """A minimal OpenAI chat-completions client (stdlib only: the device side stays small)."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        base = url.rstrip("/")
        self.endpoint = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.api_key = api_key
        self.model = model
        self.timeout_s = timeout_s

    def complete(self, messages: list[dict[str, Any]], max_tokens: int, temperature: float = 0.0) -> EscalationResult:
        body: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        if self.model:
            body["model"] = self.model
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.endpoint, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                payload = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raise EscalationError(f"{self.endpoint} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise EscalationError(f"{self.endpoint} is unreachable ({reason})") from None
        except ValueError:
            raise EscalationError(f"{self.endpoint} did not answer JSON") from None
        try:
            choice = payload["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise EscalationError(f"{self.endpoint} answered without choices[0].message.content") from None
        usage = payload.get("usage") or {}
        return EscalationResult(
            text=text,
            model=str(payload.get("model") or self.model or "remote"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            finish_reason=str(choice.get("finish_reason") or "stop"),
        )


def context_messages(messages: list[dict[str, Any]], passages: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The user's messages with the retrieved passages ((label, text) pairs) in front as a system message."""
    if not passages:
        return list(messages)
    context = "\n\n".join(f"[{i}] {label}\n{text}" for i, (label, text) in enumerate(passages, 1))
    system = {"role": "system",
              "content": "Answer using these passages from the user's documents; cite them as [n].\n\n" + context}
    return [system, *[m for m in messages if m.get("role") != "system"]]
