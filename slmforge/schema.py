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


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first given on line {first + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_structured(path: str | Path) -> Any:
    """Parse a .yaml/.yml/.json file; a missing or unparsable file is a UserError.

    Duplicate keys and nesting too deep for the parser are refused in one line.
    """
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
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except RecursionError:
        raise UserError(f"{p}: nested too deeply to read; a {'JSON' if p.suffix == '.json' else 'YAML'} "
                        "file here holds a few levels of mappings and lists") from None
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
