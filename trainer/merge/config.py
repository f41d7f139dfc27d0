"""The merge recipe: a typed subset of mergekit's YAML, so mergekit recipes run unchanged.

Supported: ``merge_method``, ``base_model``, ``models[].model`` (``path`` or
``path+adapter`` for a LoRA adapter applied before merging), ``models[].parameters``,
top-level ``parameters``, ``dtype``, ``out_dtype``, ``tokenizer_source`` /
``tokenizer.source``, ``chat_template``. A parameter is a scalar, a gradient (a list
interpolated over the layers, as in mergekit) or a list of ``{filter, value}``
conditions matched against tensor names. Unknown keys are errors naming the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator
from slmforge.trainer.merge.methods import METHODS, REQUIRED, MergeMethod, Param

from slmforge.errors import UserError
from slmforge.schema import load_model

Scalar = bool | int | float | str
ScalarOrGradient = Scalar | list[Scalar]


class Condition(BaseModel):
    """A value that applies to tensors whose name contains ``filter`` (None or '*' = all)."""

    model_config = ConfigDict(extra="forbid")
    filter: str | None = None
    value: ScalarOrGradient


Setting = ScalarOrGradient | Condition | list[Condition]


class TokenizerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: dict[str, Setting] | None = None


DTypeName = Literal["float32", "float16", "bfloat16", "float64"]


class MergeConfig(BaseModel):
    """A merge recipe, validated; paths are still as written (see :func:`resolve_model_path`)."""

    model_config = ConfigDict(extra="forbid")
    merge_method: str
    base_model: str | None = None
    models: list[ModelEntry]
    parameters: dict[str, Setting] | None = None
    dtype: DTypeName | None = None
    out_dtype: DTypeName | None = None
    tokenizer_source: str | None = None
    tokenizer: TokenizerSpec | None = None
    chat_template: str | None = None

    @model_validator(mode="after")
    def _one_tokenizer_source(self) -> MergeConfig:
        if self.tokenizer_source and self.tokenizer:
            raise ValueError("give either tokenizer_source or tokenizer.source, not both")
        return self

    @property
    def method(self) -> MergeMethod:
        return METHODS[self.merge_method]

    @property
    def tokenizer_from(self) -> str | None:
        return self.tokenizer.source if self.tokenizer else self.tokenizer_source

    def input_models(self) -> list[str]:
        """Every model the merge reads, in config order; the base is appended if not listed."""
        names = [m.model for m in self.models]
        if self.base_model and self.base_model not in names:
            names.append(self.base_model)
        return names

    def model_parameters(self, name: str) -> dict[str, Setting]:
        for entry in self.models:
            if entry.model == name:
                return entry.parameters or {}
        return {}


def load_merge_config(path: str | Path) -> MergeConfig:
    """Read and check a recipe: method known, parameters known to it, inputs countable."""
    cfg = load_model(MergeConfig, path)
    if cfg.merge_method not in METHODS:
        raise UserError(f"{path}: merge_method '{cfg.merge_method}' is not supported; "
                        f"use one of: {', '.join(METHODS)}")
    method = cfg.method
    _check_parameter_names(path, method, cfg)
    if method.base == "required" and not cfg.base_model:
        raise UserError(f"{path}: merge_method '{method.name}' needs base_model")
    if method.base == "none" and cfg.base_model and cfg.base_model not in [m.model for m in cfg.models]:
        raise UserError(f"{path}: merge_method '{method.name}' averages the listed models; list base_model "
                        "under models with a weight, or drop base_model")
    n = len(cfg.input_models())
    if n < method.min_inputs or (method.max_inputs is not None and n > method.max_inputs):
        want = (f"exactly {method.min_inputs}" if method.min_inputs == method.max_inputs
                else f"at least {method.min_inputs}")
        raise UserError(f"{path}: merge_method '{method.name}' takes {want} models (base included), got {n}")
    if len({m.model for m in cfg.models}) != len(cfg.models):
        raise UserError(f"{path}: a model is listed twice under models")
    return cfg


def _check_parameter_names(path: str | Path, method: MergeMethod, cfg: MergeConfig) -> None:
    per_model = {p.name for p in method.params if p.scope != "shared"}
    for key in cfg.parameters or {}:
        if key not in method.param_names:
            raise UserError(f"{path}: parameters.{key}: '{method.name}' has no parameter '{key}' "
                            f"(it takes: {', '.join(sorted(method.param_names))})")
    for i, entry in enumerate(cfg.models):
        for key in entry.parameters or {}:
            if key not in per_model:
                raise UserError(f"{path}: models[{i}].parameters.{key}: '{method.name}' has no per-model "
                                f"parameter '{key}' (per-model: {', '.join(sorted(per_model)) or 'none'})")


# ----------------------------------------------------------------- parameter values

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_position(tensor_name: str, num_layers: int) -> float:
    """Where a tensor sits for gradients: layer i of n → i/(n-1); non-layer tensors → 0 (as mergekit)."""
    match = _LAYER.search(tensor_name)
    if not match:
        return 0.0
    if num_layers <= 1:
        return 1.0
    return int(match.group(1)) / (num_layers - 1)


def _coerce(param: Param, value: Any, where: str) -> Any:
    try:
        if param.kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false"):
                    raise ValueError(value)
                return value.lower() == "true"
            return bool(value)
        return param.kind(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: parameter '{param.name}' must be {param.kind.__name__}, got {value!r}") from None


def evaluate(setting: Setting, param: Param, tensor_name: str, t: float, where: str) -> Any:
    """One setting's value for one tensor: scalars as is, gradients interpolated, filters matched."""
    if isinstance(setting, Condition):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return _coerce(param, setting, where)
    if isinstance(setting, list) and setting and all(isinstance(c, Condition) for c in setting):
        for cond in setting:
            if cond.filter in (None, "*") or cond.filter in tensor_name:
                return evaluate(cond.value, param, tensor_name, t, where)
        return None
    if isinstance(setting, list) and setting:
        values = [_coerce(param, v, where) for v in setting]
        if param.kind is bool:
            return values[int(t * (len(values) - 1))]
        scaled = t * (len(values) - 1)
        i0 = int(scaled)
        i1 = min(len(values) - 1, i0 + 1)
        frac = scaled - i0
        return param.kind((1 - frac) * values[i0] + frac * values[i1])
    return None


def resolve(param: Param, sources: list[dict[str, Setting]], tensor_name: str, t: float, where: str) -> Any:
    """First source (highest precedence first) that sets ``param`` for this tensor, else the default."""
    for source in sources:
        if param.name in source:
            value = evaluate(source[param.name], param, tensor_name, t, where)
            if value is not None:
                return value
    if param.default is REQUIRED:
        raise UserError(f"{where}: parameter '{param.name}' is required for {tensor_name} "
                        "(set it under parameters or the model's parameters)")
    return param.default
