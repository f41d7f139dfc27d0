"""Integration on the real SmolLM2-135M: a self-merge is exact, a real pruned model loads and runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from slmforge.trainer.merge.safetensors_stream import checkpoint_tensors, read_tensor

pytestmark = pytest.mark.integration


def test_real_model_merged_with_itself_at_weight_one_is_identical(real_base: Path, tmp_path: Path) -> None:
    """linear, weight 1.0 on the model and on itself (a second path to the same folder): bit-identical."""
    from slmforge.trainer.merge.engine import merge_from_config

    recipe = tmp_path / "self.yaml"
    recipe.write_text(yaml.safe_dump({"merge_method": "linear", "dtype": "float32", "models": [
        {"model": str(real_base), "parameters": {"weight": 1.0}},
        {"model": f"{real_base}/.", "parameters": {"weight": 1.0}}]}))
    out = merge_from_config(recipe, tmp_path / "self").checkpoint
    ours, original = checkpoint_tensors(out), checkpoint_tensors(real_base)
    assert set(ours) == set(original) and len(ours) == 272
    for name in original:
        assert torch.equal(read_tensor(ours[name]), read_tensor(original[name])), name
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (real_base / name).read_bytes(), name
    cfg, base_cfg = json.loads((out / "config.json").read_text()), json.loads((real_base / "config.json").read_text())
    assert cfg == {**base_cfg, "dtype": "float32"}


def test_real_model_pruned_to_twenty_blocks_loads_and_answers(real_base: Path, corpus_dir: Path, tmp_path: Path) -> None:
    """Scores on real domain text (one short window: the CPU is shared), drop 10 blocks, generate."""
    from slmforge.trainer.shrink.compress import compress
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = (corpus_dir / "faq" / "programming.rst")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"text": text.read_text(encoding="utf-8")[:4000]}) + "\n")
    result = compress(real_base, tmp_path / "pruned", keep_layers=20, data=data, seq_len=128, score_tokens=128,
                      eval_tokens=0)
    assert len(result.scores) == 30 and len(result.dropped) == 10
    assert all(-1 <= s <= 1 for s in result.scores)
    # the most redundant blocks by cosine are the ones dropped
    assert min(result.scores[i] for i in result.dropped) >= max(
        s for i, s in enumerate(result.scores) if i not in result.dropped)
    model = AutoModelForCausalLM.from_pretrained(result.checkpoint)
    tok = AutoTokenizer.from_pretrained(result.checkpoint)
    assert model.config.num_hidden_layers == 20
    assert result.metrics["parameters_after"] < 0.8 * result.metrics["parameters_before"]
    ids = tok.apply_chat_template([{"role": "user", "content": "How do I copy a file?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4
