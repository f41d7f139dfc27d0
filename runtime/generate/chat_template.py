"""Render a model's Jinja chat template without transformers.

Both backends format prompts the same way, from the template that shipped with
the model (GGUF metadata, tokenizer_config.json, or the bundle manifest).
"""

from __future__ import annotations

import datetime as _dt
from functools import lru_cache
from typing import Any

from slmforge.chatml import CHATML_TEMPLATE  # used when a model carries no template at all
from slmforge.errors import UserError


def _raise(message: str) -> None:
    raise UserError(f"chat template: {message}")


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: _dt.datetime.now().strftime(fmt)
    return env.from_string(template)


def render_chat(
    template: str | None,
    messages: list[dict],
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for ``messages``, ending with the assistant's generation prompt."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or not isinstance(m.get("content"), str):
            raise UserError(f"message {i}: needs 'role' and a string 'content'")
    return _compile(template or CHATML_TEMPLATE).render(
        messages=messages,
        bos_token=bos_token,
        eos_token=eos_token,
        add_generation_prompt=add_generation_prompt,
    )
