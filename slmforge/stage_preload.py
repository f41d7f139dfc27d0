"""Imported once by the stage server (slmforge/stage_process.py) before it forks any stage.

Only imports, no tensor work: a fork after torch's OpenMP pool has run can hang, and the
tokenizers library warns when its thread pool was used before a fork. Each import is optional:
a runtime-only install has no torch, and its stages never need it.
"""

from __future__ import annotations

import importlib

WARM = ("torch", "transformers", "transformers.modeling_utils", "transformers.trainer", "peft", "slmforge.cli")

for _name in WARM:
    try:
        importlib.import_module(_name)
    except ImportError:
        pass
