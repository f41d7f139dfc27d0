"""Depth pruning by measured block similarity, and logit distillation into the pruned student."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from slmforge.trainer.shrink.compress import block_similarity, compress, drop_blocks
from slmforge.trainer.shrink.distill import DistillOptions, distill, kd_loss

from slmforge.errors import UserError
from slmforge.manifest import read_manifest
from tests.conftest import CORPUS, run_cli
from tests.tiny_checkpoint import build_tiny_checkpoint

IDENTITY_BLOCK = 2


def _paragraphs(limit: int) -> list[str]:
    texts = []
    for f in sorted(CORPUS.rglob("*.rst")):
        texts += [p.strip() for p in f.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) > 200]
    return texts[:limit]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small dataset dir in `data prepare`'s layout, from the shipped Python docs."""
    root = tmp_path_factory.mktemp("data")
    texts = _paragraphs(60)
    for name, part in (("train.jsonl", texts[:48]), ("heldout.jsonl", texts[48:])):
        (root / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    return root


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-block tiny Llama whose block 2 is an exact identity (attention and MLP outputs zeroed)."""
    from safetensors.torch import load_file, save_file

    ckpt = build_tiny_checkpoint(tmp_path_factory.mktemp("teacher") / "ckpt", seed=3, num_layers=4)
    weights = load_file(ckpt / "model.safetensors")
    for name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
        weights[f"model.layers.{IDENTITY_BLOCK}.{name}"].zero_()
    save_file(weights, ckpt / "model.safetensors", metadata={"format": "pt"})
    return ckpt


def test_identity_block_scores_one_and_is_dropped_first(teacher: Path, dataset: Path, tmp_path: Path) -> None:
    result = compress(teacher, tmp_path / "pruned", keep_layers=3, data=dataset, seq_len=64, score_tokens=1024)
    assert len(result.scores) == 4
    assert result.scores[IDENTITY_BLOCK] == pytest.approx(1.0, abs=1e-5)
    assert all(s < 0.9999 for i, s in enumerate(result.scores) if i != IDENTITY_BLOCK)
    assert result.dropped == [IDENTITY_BLOCK]
    # removing an identity block changes nothing: same held-out perplexity, same logits
    assert result.metrics["heldout_ppl_after"] == pytest.approx(result.metrics["heldout_ppl_before"], rel=1e-4)
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(teacher)
    pruned = AutoModelForCausalLM.from_pretrained(result.checkpoint)
    assert pruned.config.num_hidden_layers == 3
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        assert torch.allclose(original(ids).logits, pruned(ids).logits, atol=1e-5)
    manifest = read_manifest(result.checkpoint)
    assert manifest.stage == "compress" and manifest.params["drop_layers"] == [IDENTITY_BLOCK]
    assert manifest.metrics["parameters_after"] < manifest.metrics["parameters_before"]
    assert manifest.lineage[-1]["stage"] == "tiny"


def test_block_similarity_matches_a_manual_forward(teacher: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(teacher)
    ids = [[3, 9, 27, 81, 243 % 380, 11, 13, 17]]
    scores = block_similarity(model, ids)
    with torch.no_grad():
        hidden = model(torch.tensor(ids), output_hidden_states=True).hidden_states
    # hidden_states[i] is block i's input; the last entry has the final norm applied, so check blocks 0..n-2
    for i in range(len(scores) - 1):
        cos = torch.nn.functional.cosine_similarity(hidden[i], hidden[i + 1], dim=-1).mean().item()
        assert scores[i] == pytest.approx(cos, abs=1e-5)


def test_drop_layers_keeps_generation_working(teacher: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(teacher)
    drop_blocks(model, [0, 3])
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    out = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False)  # KV cache per new index
    assert out.shape == (1, 7)


def test_bad_layer_choices_are_user_errors(teacher: Path, dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="block 9 does not exist"):
        compress(teacher, tmp_path / "x", drop_layers="1,9")
    with pytest.raises(UserError, match="exactly one"):
        compress(teacher, tmp_path / "x", drop_layers="1", keep_layers=2)
    with pytest.raises(UserError, match="--data"):
        compress(teacher, tmp_path / "x", keep_layers=2)
    with pytest.raises(UserError, match="keep between 1 and 4"):
        compress(teacher, tmp_path / "x", keep_layers=7, data=dataset, seq_len=64, score_tokens=256)
    assert not (tmp_path / "x").exists()


def test_kd_loss_is_forward_kl_scaled_by_t_squared() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    assert kd_loss(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    p_t = torch.softmax(t / 2, -1)
    manual = (p_t * (torch.log_softmax(t / 2, -1) - torch.log_softmax(s / 2, -1))).sum(-1).mean() * 4
    assert kd_loss(s, t, 2.0).item() == pytest.approx(manual.item(), rel=1e-5)


def test_distill_moves_the_student_toward_the_teacher(teacher: Path, dataset: Path, tmp_path: Path) -> None:
    pruned = compress(teacher, tmp_path / "pruned", drop_layers="0,1", data=dataset, seq_len=64,
                      score_tokens=512).checkpoint
    opts = DistillOptions(max_steps=40, lr=3e-3, batch_size=4, seq_len=64, warmup_steps=2, eval_tokens=2048,
                          alpha=1.0)
    result = distill(teacher, pruned, dataset, tmp_path / "distilled", opts)
    m = result.metrics
    assert m["student_blocks"] == 2 and m["teacher_blocks"] == 4
    assert abs(m["heldout_ppl_after"] - m["heldout_ppl_teacher"]) < abs(m["heldout_ppl_before"] - m["heldout_ppl_teacher"])
    history = json.loads((result.checkpoint / "distill_history.json").read_text())
    first, last = sum(h["kd"] for h in history[:5]) / 5, sum(h["kd"] for h in history[-5:]) / 5
    assert last < first * 0.8, (first, last)
    assert all(math.isfinite(h["loss"]) for h in history)
    assert (result.checkpoint / "distill.png").stat().st_size > 1000
    manifest = read_manifest(result.checkpoint)
    assert manifest.stage == "distill" and [i.role for i in manifest.inputs] == ["teacher", "student", "data"]
    assert [e["stage"] for e in manifest.lineage] == ["tiny", "compress"]


def test_distill_refuses_a_student_with_another_tokenizer(teacher: Path, dataset: Path, tmp_path: Path) -> None:
    other = build_tiny_checkpoint(tmp_path / "other", seed=1)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(tok))
    proc = run_cli("distill", "--teacher", str(teacher), "--student", str(other), "--data", str(dataset),
                   "--out", str(tmp_path / "out"), "--max-steps", "1")
    assert proc.returncode == 2, proc.stderr
    assert "different tokenizers" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
