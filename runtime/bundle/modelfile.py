"""An Ollama Modelfile for a bundle's GGUF that keeps the model's chat format.

Ollama cannot run a GGUF's Jinja template; when it cannot match it, it falls back
to a bare prompt and the model rambles past its turn. We write the ChatML (or Gemma) turns as
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

# Gemma's turns: no system role (the system prompt opens the first user turn), 'model' for the assistant.
GEMMA_GO_TEMPLATE = (
    "{{ $system := .System }}"
    "{{ range .Messages }}"
    "{{ if eq .Role \"user\" }}<start_of_turn>user\n"
    "{{ if $system }}{{ $system }}\n\n{{ $system = \"\" }}{{ end }}{{ .Content }}<end_of_turn>\n"
    "{{ else if eq .Role \"assistant\" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ end }}"
    "{{ end }}<start_of_turn>model\n"
)
GEMMA_STOPS = ("<end_of_turn>", "<start_of_turn>")


def is_chatml(chat_template: str | None) -> bool:
    return chat_template is None or ("<|im_start|>" in chat_template and "<|im_end|>" in chat_template)


def is_gemma_turns(chat_template: str | None) -> bool:
    return chat_template is not None and "<start_of_turn>" in chat_template and "<end_of_turn>" in chat_template


def ollama_template(chat_template: str | None) -> tuple[str, tuple[str, ...]]:
    """The Go TEMPLATE and stop strings for the chat formats we translate (ChatML, Gemma turns)."""
    if is_chatml(chat_template):
        return CHATML_GO_TEMPLATE, CHATML_STOPS
    if is_gemma_turns(chat_template):
        return GEMMA_GO_TEMPLATE, GEMMA_STOPS
    raise UserError("the model's chat template is neither ChatML nor Gemma's turns, the formats translated to an "
                    "Ollama TEMPLATE so far; use a model with one of them")


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
    template, stops = ollama_template(chat_template)
    lines = [
        "# Ollama: ollama create NAME -f Modelfile   (run from the bundle folder)",
        f"FROM ./{model_file}",
        f"TEMPLATE {_quote(template)}",
        f"SYSTEM {_quote(system_prompt)}",
    ]
    for stop in stops:
        lines.append(f'PARAMETER stop "{stop}"')
    mapping = {"temperature": "temperature", "top_p": "top_p", "n_ctx": "num_ctx", "max_tokens": "num_predict",
               "seed": "seed"}
    for key, name in mapping.items():
        if generation.get(key) is not None:
            lines.append(f"PARAMETER {name} {generation[key]}")
    return "\n".join(lines) + "\n"
