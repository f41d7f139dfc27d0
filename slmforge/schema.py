"""Loading YAML/JSON into typed models with one clear error line per problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from slmforge.errors import UserError

M = TypeVar("M", bound=BaseModel)


def describe_validation_error(path: Path | str, err: ValidationError) -> str:
    """Turn pydantic's multi-line report into one line naming file, field and problem."""
    first = err.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ())) or "(top level)"
    problem = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        problem = "unknown key (check the spelling against the documented fields)"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{path}: field '{field}': {problem}{more}"


def read_structured(path: str | Path) -> Any:
    """Parse a .yaml/.yml/.json file; a missing or unparsable file is a UserError."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: cannot read ({exc.__class__.__name__}: {exc})") from None
    try:
        if p.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" line {line + 1}" if line is not None else ""
        msg = str(exc).splitlines()[0]
        raise UserError(f"{p}:{where} not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {msg}") from None


def load_model(model: type[M], path: str | Path) -> M:
    """Read ``path`` and validate it as ``model``; errors name the file and field."""
    data = read_structured(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UserError(describe_validation_error(path, exc)) from None
