"""Merge methods: the tensor arithmetic of each mergekit method, one function per method.

Each method sees one tensor name at a time (the engine streams), with its parameters
already resolved for that tensor (gradients interpolated over layers, filters applied).
Semantics follow mergekit 0.1.5 so a recipe gives the same weights in both tools
(tests/test_merge_parity.py checks this tensor by tensor).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

REQUIRED = object()  # marker: a parameter without a default must be given in the config

Scope = Literal["shared", "input", "non_base"]


@dataclass(frozen=True)
class Param:
    """One parameter a method accepts: where it may be set and its default."""

    name: str
    kind: type
    scope: Scope
    default: Any = REQUIRED


@dataclass(frozen=True)
class TensorInputs:
    """The tensors of one name across the merge's inputs, in config order."""

    tensors: list[torch.Tensor]
    base_index: int | None
    shared: dict[str, Any]
    per_input: list[dict[str, Any]]  # parameters for each input (empty dict for the base when non_base)
    generator: torch.Generator | None = None

    @property
    def base(self) -> torch.Tensor:
        assert self.base_index is not None
        return self.tensors[self.base_index]

    def non_base(self) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        return [(t, p) for i, (t, p) in enumerate(zip(self.tensors, self.per_input)) if i != self.base_index]


@dataclass(frozen=True)
class MergeMethod:
    """A named method with its parameter schema and input contract."""

    name: str
    fn: Callable[[TensorInputs], torch.Tensor]
    params: tuple[Param, ...]
    base: Literal["required", "none"]
    min_inputs: int = 1
    max_inputs: int | None = None
    randomized: bool = False
    doc: str = ""
    param_names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "param_names", frozenset(p.name for p in self.params))


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------- linear


def linear(inp: TensorInputs) -> torch.Tensor:
    """Weighted average (normalized by the weights' sum unless normalize is false)."""
    dtype = _work_dtype(inp.tensors[0])
    weights = [float(p["weight"]) for p in inp.per_input]
    result = torch.zeros_like(inp.tensors[0], dtype=dtype)
    for tensor, w in zip(inp.tensors, weights):
        result.add_(tensor.to(dtype), alpha=w)
    if inp.shared["normalize"]:
        result.div_(sum(weights))
    return result


# ---------------------------------------------------------------------------- slerp


def slerp_tensors(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995,
                  eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of whole tensors (as flat vectors); linear where they are near-collinear."""
    dtype = _work_dtype(v0)
    a = v0.reshape(-1).to(dtype)
    b = v1.reshape(-1).to(dtype)
    norm_a = torch.linalg.vector_norm(a)
    norm_b = torch.linalg.vector_norm(b)
    norm_a = torch.where(norm_a > eps, norm_a, 1)
    norm_b = torch.where(norm_b > eps, norm_b, 1)
    dot = ((a / norm_a) * (b / norm_b)).sum().clamp(-1, 1)
    near_linear = dot.abs() > dot_threshold
    theta = torch.acos(torch.where(near_linear, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(near_linear, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
    coef_b = torch.where(near_linear, t, torch.sin(t * theta) / sin_theta)
    return (coef_a * a + coef_b * b).reshape(v0.shape)


def slerp(inp: TensorInputs) -> torch.Tensor:
    """t=0 gives the base model, t=1 the other one."""
    base = inp.base
    (other, _), = inp.non_base()
    return slerp_tensors(float(inp.shared["t"]), base, other)


# ---------------------------------------------------------------- task-vector family


def _l1_rescaled(delta: torch.Tensor, masked: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Scale the kept entries so the task vector keeps its L1 norm (mergekit's DARE rescale)."""
    before, after = delta.abs().sum(), masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def magnitude_prune(delta: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    """Keep the ``density`` share of entries with the largest magnitude (TIES 'trim')."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=delta.dtype)
    mask[torch.argsort(delta.abs().reshape(-1).float(), descending=True)[:k]] = 1
    masked = delta * mask.reshape(delta.shape)
    return _l1_rescaled(delta, masked) if rescale else masked


def random_prune(delta: torch.Tensor, density: float, rescale: bool,
                 generator: torch.Generator | None) -> torch.Tensor:
    """Drop entries at random, keeping each with probability ``density`` (DARE)."""
    if density >= 1:
        return delta
    mask = torch.bernoulli(torch.full_like(delta, density, dtype=torch.float32), generator=generator)
    masked = delta * mask.to(delta.dtype)
    return _l1_rescaled(delta, masked) if rescale else masked


def _task_vectors(sparsify: str | None, consensus: bool) -> Callable[[TensorInputs], torch.Tensor]:
    def merge(inp: TensorInputs) -> torch.Tensor:
        dtype = _work_dtype(inp.base)
        base = inp.base.to(dtype)
        entries = inp.non_base()
        if not entries:
            return base
        deltas = []
        for tensor, params in entries:
            delta = tensor.to(dtype) - base
            density = float(params["density"])
            if sparsify == "magnitude":
                delta = magnitude_prune(delta, density, inp.shared["rescale"])
            elif sparsify == "random":
                delta = random_prune(delta, density, inp.shared["rescale"], inp.generator)
            deltas.append(delta)
        stacked = torch.stack(deltas)
        weights = torch.tensor([float(p["weight"]) for _, p in entries], dtype=dtype)
        weights = weights.reshape(-1, *([1] * base.dim()))
        stacked.mul_(weights)
        if consensus:
            majority = (stacked.sum(dim=0) >= 0).to(dtype) * 2 - 1  # TIES 'elect sign' by total mass
            mask = (stacked.sign() == majority).to(dtype)
            mixed = (stacked * mask).sum(dim=0)
            divisor = (weights * mask).sum(dim=0)
            divisor[divisor == 0] = 1
        else:
            mixed = stacked.sum(dim=0)
            divisor = weights.sum(dim=0)
            divisor[divisor.abs() < 1e-8] = 1
        if inp.shared["normalize"]:
            mixed = mixed / divisor
        lam = float(inp.shared["lambda"])
        if lam != 1:
            mixed = mixed * lam
        return base + mixed

    return merge


def _task_params(normalize: bool, rescale: bool) -> tuple[Param, ...]:
    return (
        Param("weight", float, "non_base"),
        Param("density", float, "non_base", 1.0),
        Param("normalize", bool, "shared", normalize),
        Param("rescale", bool, "shared", rescale),
        Param("lambda", float, "shared", 1.0),
        Param("int8_mask", bool, "shared", False),  # mergekit memory option; no effect on the result
    )


# ---------------------------------------------------------------------- model stock


def model_stock(inp: TensorInputs) -> torch.Tensor:
    """Interpolate between the base and the models' average by their task vectors' mean angle."""
    dtype = _work_dtype(inp.base)
    w0 = inp.base.to(dtype)
    ws = [t.to(dtype) for t, _ in inp.non_base()]
    shape = w0.shape
    if inp.shared["filter_wise"]:
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6  # opposing updates: keep the base rather than amplify
    t = torch.where(singular, torch.zeros_like(cos), n * cos / torch.where(singular, 1, denominator))
    average = sum(ws) / n
    return (t * average + (1 - t) * w0).reshape(shape)


# ------------------------------------------------------------------------- registry

METHODS: dict[str, MergeMethod] = {
    m.name: m
    for m in (
        MergeMethod("linear", linear, (Param("weight", float, "input"), Param("normalize", bool, "shared", True)),
                    base="none", doc="weighted average of all models"),
        MergeMethod("slerp", slerp, (Param("t", float, "shared"),), base="required", min_inputs=2, max_inputs=2,
                    doc="spherical interpolation from base_model (t=0) to the other model (t=1)"),
        MergeMethod("task_arithmetic", _task_vectors(None, consensus=False), _task_params(False, False),
                    base="required", doc="base + weighted sum of task vectors"),
        MergeMethod("ties", _task_vectors("magnitude", consensus=True), _task_params(True, False),
                    base="required", doc="trim by magnitude, elect sign, disjoint mean"),
        MergeMethod("dare_ties", _task_vectors("random", consensus=True), _task_params(False, True),
                    base="required", randomized=True, doc="random drop + rescale, then TIES sign election"),
        MergeMethod("dare_linear", _task_vectors("random", consensus=False), _task_params(False, True),
                    base="required", randomized=True, doc="random drop + rescale, then task arithmetic"),
        MergeMethod("model_stock", model_stock, (Param("filter_wise", bool, "shared", False),),
                    base="required", min_inputs=3, doc="base/average interpolation by task-vector angle"),
    )
}
