"""An Ollama Modelfile for a bundle's GGUF that keeps the model's chat format.

Ollama cannot run a GGUF's Jinja template; when it cannot match it, it falls back
to a bare prompt and the model rambles past its turn. We write the ChatML turns as
an Ollama (Go) TEMPLATE plus the stop strings, so `ollama create` gets it right.
"""

from __future__ import annotations

from slmforge.errors import UserError

CHATML_GO_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}"
    "{{- if ne .Role \"system\" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "{{- end }}<|im_start|>assistant\n"
)
CHATML_STOPS = ("<|im_end|>", "<|im_start|>")


def is_chatml(chat_template: str | None) -> bool:
    return chat_template is None or ("<|im_start|>" in chat_template and "<|im_end|>" in chat_template)


def _quote(text: str) -> str:
    """A Modelfile triple-quoted string (Ollama has no escape for three quotes inside)."""
    if '"""' in text:
        raise UserError('the system prompt contains """, which an Ollama Modelfile cannot hold; remove it')
    return f'"""{text}"""'


def render_modelfile(
    model_file: str,
    chat_template: str | None,
    system_prompt: str,
    generation: dict,
) -> str:
    """Modelfile text for ``model_file`` (relative to the bundle): FROM, TEMPLATE, SYSTEM, PARAMETERs."""
    if not is_chatml(chat_template):
        raise UserError(
            "the model's chat template is not ChatML, and only ChatML is translated to an Ollama TEMPLATE so far; "
            "bundle without the Modelfile (--no-modelfile) or use a ChatML model"
        )
    lines = [
        "# Ollama: ollama create NAME -f Modelfile   (run from the bundle folder)",
        f"FROM ./{model_file}",
        f"TEMPLATE {_quote(CHATML_GO_TEMPLATE)}",
        f"SYSTEM {_quote(system_prompt)}",
    ]
    for stop in CHATML_STOPS:
        lines.append(f'PARAMETER stop "{stop}"')
    mapping = {"temperature": "temperature", "top_p": "top_p", "n_ctx": "num_ctx", "max_tokens": "num_predict",
               "seed": "seed"}
    for key, name in mapping.items():
        if generation.get(key) is not None:
            lines.append(f"PARAMETER {name} {generation[key]}")
    return "\n".join(lines) + "\n"
