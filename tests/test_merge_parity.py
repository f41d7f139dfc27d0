"""Parity with mergekit: the same recipe through mergekit and through `slmforge merge`, tensor by tensor.

mergekit (PyPI, a [dev] dependency) runs in-process here and is never imported by slmforge
itself. Deterministic methods must agree to 1e-5 (fp32) on every tensor. DARE draws random
masks: mergekit draws them from torch's global RNG in its task-graph order, we draw them
from a per-tensor generator (seed + tensor name) so the result does not depend on the order
tensors stream in. The masks therefore cannot be matched bit for bit, and DARE is compared
statistically: the share of kept entries, the L1-norm-preserving rescale, and agreement with
mergekit where the mask does not matter.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from slmforge.trainer.merge.engine import merge_from_config

from tests.tiny_checkpoint import build_tiny_checkpoint

pytest.importorskip("mergekit")


@pytest.fixture(scope="module")
def parents(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three tiny random Llamas that share architecture and tokenizer (independent inits)."""
    root = tmp_path_factory.mktemp("parents")
    return [build_tiny_checkpoint(root / f"m{seed}", seed=seed, num_layers=3) for seed in range(3)]


def run_both(recipe: dict, tmp_path: Path, seed: int | None = None) -> tuple[dict, dict]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    cfg_path = tmp_path / "recipe.yaml"
    cfg_path.write_text(yaml.safe_dump(recipe))
    merge_from_config(cfg_path, tmp_path / "ours", seed=seed or 0)
    run_merge(MergeConfiguration.model_validate(recipe), str(tmp_path / "theirs"),
              MergeOptions(quiet=True, write_model_card=False, random_seed=seed))
    return load_file(tmp_path / "ours" / "model.safetensors"), load_file(tmp_path / "theirs" / "model.safetensors")


def assert_same_tensors(ours: dict, theirs: dict, tol: float = 1e-5) -> None:
    assert set(ours) == set(theirs)
    for name, mine in ours.items():
        assert mine.shape == theirs[name].shape, name
        diff = (mine.float() - theirs[name].float()).abs().max().item()
        assert diff <= tol, f"{name}: max abs diff {diff}"


def _recipes(m: list[str]) -> dict[str, dict]:
    return {
        "linear": {"merge_method": "linear", "dtype": "float32", "models": [
            {"model": m[0], "parameters": {"weight": [1.0, 0.2]}},
            {"model": m[1], "parameters": {"weight": 0.5}},
            {"model": m[2], "parameters": {"weight": [0.1, 0.9]}}]},
        "linear_unnormalized": {"merge_method": "linear", "dtype": "float32", "parameters": {"normalize": False},
                                "models": [{"model": m[0], "parameters": {"weight": 0.7}},
                                           {"model": m[1], "parameters": {"weight": 0.6}}]},
        "slerp": {"merge_method": "slerp", "base_model": m[0], "dtype": "float32",
                  "models": [{"model": m[0]}, {"model": m[1]}],
                  "parameters": {"t": [{"filter": "self_attn", "value": [0.0, 0.5, 1.0]},
                                       {"filter": "mlp", "value": [1.0, 0.5, 0.0]},
                                       {"value": 0.35}]}},
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": m[0], "dtype": "float32",
                            "parameters": {"lambda": 0.8},
                            "models": [{"model": m[1], "parameters": {"weight": [0.3, 1.0]}},
                                       {"model": m[2], "parameters": {"weight": -0.4}}]},
        "ties": {"merge_method": "ties", "base_model": m[0], "dtype": "float32",
                 "models": [{"model": m[1], "parameters": {"weight": 0.6, "density": [0.2, 0.8]}},
                            {"model": m[2], "parameters": {"weight": 0.4, "density": 0.5}}]},
        "ties_unnormalized": {"merge_method": "ties", "base_model": m[0], "dtype": "float32",
                              "parameters": {"normalize": False},
                              "models": [{"model": m[1], "parameters": {"weight": 1.0, "density": 0.3}},
                                         {"model": m[2], "parameters": {"weight": 0.5, "density": 0.9}}]},
        "model_stock": {"merge_method": "model_stock", "base_model": m[0], "dtype": "float32",
                        "models": [{"model": m[1]}, {"model": m[2]}]},
    }


@pytest.mark.parametrize("name", ["linear", "linear_unnormalized", "slerp", "task_arithmetic", "ties",
                                  "ties_unnormalized", "model_stock"])
def test_deterministic_methods_match_mergekit(parents: list[Path], tmp_path: Path, name: str) -> None:
    recipe = _recipes([str(p) for p in parents])[name]
    ours, theirs = run_both(recipe, tmp_path)
    assert_same_tensors(ours, theirs)
    # the merge really mixed something: it differs from every parent on the layer weights
    q = "model.layers.1.self_attn.q_proj.weight"
    for p in parents:
        assert not torch.equal(ours[q], load_file(p / "model.safetensors")[q])


def _kept_share(merged: torch.Tensor, base: torch.Tensor) -> float:
    return ((merged - base) != 0).float().mean().item()


def test_dare_linear_matches_mergekit_statistically(parents: list[Path], tmp_path: Path) -> None:
    """One model, weight 1, density 0.3: about 30% of the task vector survives, rescaled to keep its L1 norm."""
    m = [str(p) for p in parents]
    recipe = {"merge_method": "dare_linear", "base_model": m[0], "dtype": "float32",
              "models": [{"model": m[1], "parameters": {"weight": 1.0, "density": 0.3}}]}
    ours, theirs = run_both(recipe, tmp_path, seed=7)
    base, other = load_file(parents[0] / "model.safetensors"), load_file(parents[1] / "model.safetensors")
    checked = 0
    for name, b in base.items():
        delta = other[name] - b
        n = delta.numel()
        if n < 2000 or delta.abs().sum() == 0:
            continue
        sigma = (0.3 * 0.7 / n) ** 0.5
        for merged in (ours[name], theirs[name]):
            assert abs(_kept_share(merged, b) - 0.3) < 6 * sigma, name
            l1_in, l1_out = delta.abs().sum().item(), (merged - b).abs().sum().item()
            assert l1_out == pytest.approx(l1_in, rel=1e-4), name
        kept = (ours[name] - b) != 0
        ratio = (ours[name] - b)[kept] / delta[kept]  # one rescale factor per tensor: 1/(kept L1 share)
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-3), name
        assert ratio[0].item() == pytest.approx(1 / 0.3, rel=0.1), name
        checked += 1
    assert checked >= 10
    # where no task vector exists (norm weights are all ones in every parent) both leave the base
    assert_same_tensors({k: ours[k] for k in ours if "norm" in k}, {k: theirs[k] for k in theirs if "norm" in k})


def test_dare_ties_matches_mergekit_statistically(parents: list[Path], tmp_path: Path) -> None:
    m = [str(p) for p in parents]
    recipe = {"merge_method": "dare_ties", "base_model": m[0], "dtype": "float32",
              "models": [{"model": m[1], "parameters": {"weight": 0.7, "density": 0.5}},
                         {"model": m[2], "parameters": {"weight": 0.5, "density": 0.5}}]}
    ours, theirs = run_both(recipe, tmp_path, seed=3)
    base = load_file(parents[0] / "model.safetensors")
    for name in ("model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight",
                 "model.layers.2.self_attn.q_proj.weight"):
        b = base[name]
        d_ours, d_theirs = ours[name] - b, theirs[name] - b
        assert _kept_share(ours[name], b) == pytest.approx(_kept_share(theirs[name], b), abs=0.02), name
        assert d_ours.abs().mean().item() == pytest.approx(d_theirs.abs().mean().item(), rel=0.05), name
        assert d_ours.std().item() == pytest.approx(d_theirs.std().item(), rel=0.05), name


def test_dare_is_reproducible_by_seed(parents: list[Path], tmp_path: Path) -> None:
    m = [str(p) for p in parents]
    recipe = {"merge_method": "dare_linear", "base_model": m[0],
              "models": [{"model": m[1], "parameters": {"weight": 1.0, "density": 0.5}}]}
    cfg = tmp_path / "r.yaml"
    cfg.write_text(yaml.safe_dump(recipe))
    runs = {}
    for label, seed in (("a", 1), ("b", 1), ("c", 2)):
        merge_from_config(cfg, tmp_path / label, seed=seed)
        runs[label] = load_file(tmp_path / label / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(runs["a"][name], runs["b"][name])
    assert not torch.equal(runs["a"][name], runs["c"][name])
