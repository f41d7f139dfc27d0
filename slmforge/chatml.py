"""The one ChatML chat template: plain turns, no system turn added (mergekit's ``chatml``).

The runtime renders it when a model carries no template of its own, and ``merge`` writes it for
``chat_template: chatml``; trainer and runtime may not import each other, so it lives here.
"""

from __future__ import annotations

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
