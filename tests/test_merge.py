"""`slmforge merge`: recipe checking, compatibility refusal, tied embeddings, vocab re-mapping, LoRA inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from slmforge.trainer.merge.config import Condition, evaluate, layer_position, load_merge_config
from slmforge.trainer.merge.engine import merge_from_config
from slmforge.trainer.merge.methods import Param

from slmforge.errors import UserError
from slmforge.manifest import read_manifest
from tests.conftest import run_cli
from tests.tiny_checkpoint import build_tiny_checkpoint


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pair")
    return build_tiny_checkpoint(root / "a", seed=0), build_tiny_checkpoint(root / "b", seed=1)


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(ckpt / "model.safetensors")


# ----------------------------------------------------------------------------- recipe


def test_gradients_and_filters_resolve_like_mergekit() -> None:
    weight = Param("weight", float, "input")
    assert layer_position("model.layers.0.mlp.up_proj.weight", 5) == 0.0
    assert layer_position("model.layers.4.mlp.up_proj.weight", 5) == 1.0
    assert layer_position("model.embed_tokens.weight", 5) == 0.0
    assert evaluate([0.0, 1.0], weight, "x", 0.25, "w") == pytest.approx(0.25)
    assert evaluate([0.0, 1.0, 0.0], weight, "x", 0.75, "w") == pytest.approx(0.5)
    conds = [Condition(filter="self_attn", value=[0.2, 0.4]), Condition(value=0.9)]
    assert evaluate(conds, weight, "model.layers.3.self_attn.q_proj.weight", 1.0, "w") == pytest.approx(0.4)
    assert evaluate(conds, weight, "model.layers.3.mlp.up_proj.weight", 1.0, "w") == pytest.approx(0.9)


def test_unknown_key_and_unknown_parameter_are_named(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    a, b = map(str, pair)
    bad_key = write_recipe(tmp_path / "k.yaml", {"merge_method": "linear", "modles": [],
                                                 "models": [{"model": a, "parameters": {"weight": 1}}]})
    with pytest.raises(UserError, match="modles"):
        load_merge_config(bad_key)
    bad_param = write_recipe(tmp_path / "p.yaml", {"merge_method": "ties", "base_model": a,
                                                   "models": [{"model": b, "parameters": {"weight": 1, "densty": 0.5}}]})
    with pytest.raises(UserError, match="densty"):
        load_merge_config(bad_param)
    bad_method = write_recipe(tmp_path / "m.yaml", {"merge_method": "frankenmerge", "models": [{"model": a}]})
    with pytest.raises(UserError, match="frankenmerge"):
        load_merge_config(bad_method)
    slerp_three = write_recipe(tmp_path / "s.yaml", {"merge_method": "slerp", "base_model": a, "parameters": {"t": 0.5},
                                                     "models": [{"model": a}, {"model": b}, {"model": a + "/"}]})
    with pytest.raises(UserError, match="exactly 2"):
        load_merge_config(slerp_three)


def test_missing_required_weight_is_a_user_error(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    a, b = map(str, pair)
    recipe = write_recipe(tmp_path / "r.yaml", {"merge_method": "linear", "models": [
        {"model": a, "parameters": {"weight": 1.0}}, {"model": b}]})
    with pytest.raises(UserError, match="weight.*required"):
        merge_from_config(recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- compatibility


def _cli_refusal(tmp_path: Path, recipe: dict) -> str:
    """As a user sees it: exit 2, one line on stderr, no output folder (one subprocess: slow under load)."""
    proc = run_cli("merge", str(write_recipe(tmp_path / "r.yaml", recipe)), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert not (tmp_path / "out").exists()
    return lines[0]


def _refusal(tmp_path: Path, recipe: dict) -> str:
    """The same refusal in-process: a one-line UserError (the CLI turns it into exit 2) and no output."""
    with pytest.raises(UserError) as info:
        merge_from_config(write_recipe(tmp_path / "r.yaml", recipe), tmp_path / "out")
    assert info.value.code == 2 and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    return str(info.value)


def test_mismatched_shapes_refused_naming_tensor_and_shapes(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    wide = build_tiny_checkpoint(tmp_path / "wide", seed=2, hidden_size=32)
    line = _cli_refusal(tmp_path, {"merge_method": "linear", "models": [
        {"model": str(pair[0]), "parameters": {"weight": 0.5}}, {"model": str(wide), "parameters": {"weight": 0.5}}]})
    assert "model.embed_tokens.weight" in line and "[384, 64]" in line and "[384, 32]" in line


def test_different_depth_and_architecture_refused(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    deep = build_tiny_checkpoint(tmp_path / "deep", seed=2, num_layers=3)
    line = _refusal(tmp_path, {"merge_method": "task_arithmetic", "base_model": str(pair[0]),
                                   "models": [{"model": str(deep), "parameters": {"weight": 1.0}}]})
    assert "model.layers.2." in line
    other = tmp_path / "mistral"
    shutil.copytree(pair[1], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["architectures"] = ["MistralForCausalLM"]
    (other / "config.json").write_text(json.dumps(cfg))
    line = _refusal(tmp_path, {"merge_method": "slerp", "base_model": str(pair[0]), "parameters": {"t": 0.5},
                                   "models": [{"model": str(pair[0])}, {"model": str(other)}]})
    assert "LlamaForCausalLM" in line and "MistralForCausalLM" in line


def _swap_tokens(src: Path, dst: Path, i: int, j: int) -> None:
    """A copy of ``src`` whose tokenizer gives tokens i and j each other's ids (embedding rows swapped too)."""
    shutil.copytree(src, dst)
    tok = json.loads((dst / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    by_id = {v: k for k, v in vocab.items()}
    vocab[by_id[i]], vocab[by_id[j]] = j, i
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    from safetensors.torch import save_file

    ts = tensors(dst)
    emb = ts["model.embed_tokens.weight"]
    emb[[i, j]] = emb[[j, i]]
    save_file(ts, dst / "model.safetensors", metadata={"format": "pt"})


def test_vocab_mismatch_needs_tokenizer_source_then_remaps_rows(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    a = pair[0]
    swapped = tmp_path / "swapped"
    _swap_tokens(a, swapped, 100, 200)
    recipe = {"merge_method": "linear", "models": [{"model": str(a), "parameters": {"weight": 0.5}},
                                                   {"model": str(swapped), "parameters": {"weight": 0.5}}]}
    line = _refusal(tmp_path, recipe)
    assert "vocabularies differ" in line and "tokenizer_source" in line
    # with a tokenizer source, rows are matched by token: both parents are the same model, so is the merge
    recipe["tokenizer_source"] = str(a)
    out = merge_from_config(write_recipe(tmp_path / "t.yaml", recipe), tmp_path / "merged").checkpoint
    merged, original = tensors(out), tensors(a)
    for name in original:
        assert torch.allclose(merged[name], original[name], atol=1e-7), name
    assert (out / "tokenizer.json").read_text() == (a / "tokenizer.json").read_text()


# ------------------------------------------------------------------ outputs and inputs


def test_self_merge_reproduces_the_model_and_records_lineage(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    a = pair[0]
    recipe = write_recipe(tmp_path / "self.yaml", {"merge_method": "linear", "models": [
        {"model": str(a), "parameters": {"weight": 1.0}}, {"model": f"{a}/", "parameters": {"weight": 1.0}}]})
    out = merge_from_config(recipe, tmp_path / "self").checkpoint
    merged, original = tensors(out), tensors(a)
    assert set(merged) == set(original)
    assert all(torch.equal(merged[k], original[k]) for k in original)
    for name in ("tokenizer.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (a / name).read_bytes(), name
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    manifest = read_manifest(out)
    assert manifest.stage == "merge" and manifest.parent == str(a.resolve())
    assert [i.role for i in manifest.inputs] == ["model", "model", "recipe"]
    assert all(len(i.sha256) == 64 for i in manifest.inputs)
    assert manifest.lineage and manifest.lineage[0]["stage"] == "tiny"
    assert manifest.params["merge_method"] == "linear"


def _untied_copy(src: Path, dst: Path) -> Path:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.02)
    model.save_pretrained(dst)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(src / f, dst / f)
    return dst


def test_tied_and_untied_parents_merge_into_an_untied_head(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    a = pair[0]
    untied = _untied_copy(pair[1], tmp_path / "untied")
    assert "lm_head.weight" in tensors(untied) and "lm_head.weight" not in tensors(a)
    recipe = write_recipe(tmp_path / "r.yaml", {"merge_method": "linear", "models": [
        {"model": str(a), "parameters": {"weight": 0.5}}, {"model": str(untied), "parameters": {"weight": 0.5}}]})
    out = merge_from_config(recipe, tmp_path / "out").checkpoint
    merged = tensors(out)
    expected = (tensors(a)["model.embed_tokens.weight"] + tensors(untied)["lm_head.weight"]) / 2
    assert torch.allclose(merged["lm_head.weight"], expected, atol=1e-7)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.allclose(model.lm_head.weight, expected, atol=1e-7)
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_lora_adapter_is_applied_before_merging(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    a = pair[0]
    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(a),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    expected = {k: v.detach().clone() for k, v in peft_model.merge_and_unload().state_dict().items()}
    recipe = write_recipe(tmp_path / "r.yaml", {"merge_method": "task_arithmetic", "base_model": str(a),
                                                "models": [{"model": f"{a}+{tmp_path / 'adapter'}",
                                                            "parameters": {"weight": 1.0}}]})
    out = merge_from_config(recipe, tmp_path / "out").checkpoint
    merged = tensors(out)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(expected[q], tensors(a)[q])  # the adapter changes q_proj
    assert torch.allclose(merged[q], expected[q], atol=1e-6)
    roles = [i.role for i in read_manifest(out).inputs]
    assert roles == ["model", "adapter", "base", "recipe"]
    assert not list(tmp_path.glob(".lora-merge-*"))  # scratch copy removed


def test_dtype_and_chat_template_options(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    a, b = pair
    template = "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}"
    recipe = write_recipe(tmp_path / "r.yaml", {"merge_method": "slerp", "base_model": str(a), "dtype": "bfloat16",
                                                "parameters": {"t": 0.3}, "chat_template": template,
                                                "models": [{"model": str(a)}, {"model": str(b)}]})
    out = merge_from_config(recipe, tmp_path / "out").checkpoint
    assert {t.dtype for t in tensors(out).values()} == {torch.bfloat16}
    assert (out / "chat_template.jinja").read_text() == template
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<<hi>>"


def test_chatml_option_renders_as_mergekits_chatml() -> None:
    """`chat_template: chatml` is the one ChatML template, the same text mergekit's `chatml` renders."""
    from importlib import resources

    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from slmforge.trainer.merge.engine import choose_chat_template

    pytest.importorskip("mergekit")
    theirs = (resources.files("mergekit._data.chat_templates") / "chatml.jinja").read_text()
    ours = choose_chat_template("chatml", [], None)  # the donor is not consulted for 'chatml'
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # as transformers renders
    for messages in ([{"role": "user", "content": "hi"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]):
        for prompt in (True, False):
            want = env.from_string(theirs).render(messages=messages, add_generation_prompt=prompt)
            assert env.from_string(ours).render(messages=messages, add_generation_prompt=prompt) == want


def test_output_over_an_input_is_refused(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    a, b = pair
    recipe = write_recipe(tmp_path / "r.yaml", {"merge_method": "slerp", "base_model": str(a), "parameters": {"t": 0.5},
                                                "models": [{"model": str(a)}, {"model": str(b)}]})
    before = (b / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="also an input"):
        merge_from_config(recipe, b)
    assert (b / "model.safetensors").read_bytes() == before
