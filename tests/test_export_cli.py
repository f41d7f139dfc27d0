"""`slmforge export` on the tiny model: export.json, profile refusals, quality gate exit 3."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from slmforge.cli import main
from slmforge.errors import UserError
from slmforge.fileio import sha256_path
from slmforge.manifest import ExportManifest
from slmforge.profiles import load_profile


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", *args])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def _profile_yaml(tmp_path: Path, name: str, **changes) -> Path:
    data = load_profile("raspberry-pi-5-8gb").model_dump(mode="json") | {"name": name} | changes
    data.pop("detected", None)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _error_line(err: str) -> str:
    """The one line the user is told (progress bars may come before it on stderr)."""
    assert err.count("error:") == 1, err
    return err.strip().splitlines()[-1]


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if "partial" in p.name or p.name.startswith(".f16-")]


def test_export_writes_fitting_gguf_and_manifest(tiny_checkpoint: Path, tmp_path: Path, capsys):
    out = tmp_path / "export"
    code, stdout, _ = _cli(capsys, "--model", str(tiny_checkpoint), "--profile", "raspberry-pi-5-8gb",
                           "--out", str(out), "--no-embedder", "--eval-tokens", "256", "--threads", "1", "--json")
    assert code == 0
    manifest = ExportManifest.model_validate(json.loads(stdout))
    on_disk = ExportManifest.model_validate_json((out / "export.json").read_text())
    assert on_disk.artifacts == manifest.artifacts
    (art,) = manifest.artifacts
    assert art.format == "gguf" and art.quant == "Q8_0"  # the top of the ladder fits a Pi 5 easily
    assert art.sha256 == sha256_path(out / art.path) and art.size_bytes == (out / art.path).stat().st_size
    assert art.gate == "pass" and art.ppl_ratio <= 1.02 and art.top1_agreement > 0.9
    assert art.est_memory_bytes <= load_profile("raspberry-pi-5-8gb").app_memory_bytes
    assert "highest quality that fits" in art.reason
    assert manifest.eos_token == "<|im_end|>" and "<|im_start|>" in manifest.chat_template
    assert manifest.source.sha256 == sha256_path(tiny_checkpoint)
    assert {"gguf", "llama_cpp_python"} <= set(manifest.tool_versions)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model-Q8_0.gguf"]
    assert _leftovers(tmp_path) == []


def test_reuse_links_the_same_quant_and_applies_this_profiles_bound(tiny_checkpoint: Path, tmp_path: Path,
                                                                     capsys, monkeypatch):
    """A second profile picking the same quant links the file and its gate figures; nothing is rebuilt."""
    from slmforge.export import quality, quantize

    args = ["--model", str(tiny_checkpoint), "--no-embedder", "--eval-tokens", "256", "--threads", "1", "--json"]
    first = tmp_path / "pi5"
    assert _cli(capsys, *args, "--profile", "raspberry-pi-5-8gb", "--out", str(first))[0] == 0
    built = ExportManifest.model_validate_json((first / "export.json").read_text()).artifacts[0]

    def refuse(*_a, **_k):
        raise AssertionError("rebuilt or re-measured although an identical export was given")

    monkeypatch.setattr(quantize, "quantize_gguf", refuse)
    monkeypatch.setattr(quality, "source_reference", refuse)
    bound = 1.0005
    strict = _profile_yaml(tmp_path, "strict", quality_gate={"max_ppl_ratio_low_bit": bound,
                                                             "max_ppl_ratio_mid_bit": bound, "max_ppl_ratio_8bit": bound})
    second = tmp_path / "strict-export"
    code, _, err = _cli(capsys, *args, "--profile", str(strict), "--out", str(second), "--reuse", str(first))
    assert (second / "export.json").is_file(), err
    art = ExportManifest.model_validate_json((second / "export.json").read_text()).artifacts[0]
    assert (art.quant, art.sha256, art.ppl_ratio, art.kl_mean) == (built.quant, built.sha256, built.ppl_ratio,
                                                                   built.kl_mean)
    assert art.reused_from == str(first.resolve())
    assert (second / art.path).stat().st_ino == (first / built.path).stat().st_ino  # linked, not copied
    # the figures are shared, the verdict is this profile's
    assert f" {bound} and mean KL " in art.reason and "quants of profile 'strict')" in art.reason
    passes = built.ppl_ratio <= bound and built.kl_mean <= math.log(bound)  # quality.kl_bound: ln of the same bound
    assert (art.gate, code) == (("pass", 0) if passes else ("fail", 3)), err

    monkeypatch.undo()  # another held-out budget: nothing reusable, so the export measures again
    third = tmp_path / "other-budget"
    assert _cli(capsys, "--model", str(tiny_checkpoint), "--no-embedder", "--eval-tokens", "128", "--threads", "1",
                "--profile", "raspberry-pi-5-8gb", "--out", str(third), "--reuse", str(first))[0] == 0
    again = ExportManifest.model_validate_json((third / "export.json").read_text()).artifacts[0]
    assert getattr(again, "reused_from", None) is None and again.sha256 == built.sha256


def test_nothing_fits_is_one_line_exit_2(tiny_checkpoint: Path, tmp_path: Path, capsys):
    tight = _profile_yaml(tmp_path, "tight", app_memory_gb=0.01)
    code, _, err = _cli(capsys, "--model", str(tiny_checkpoint), "--profile", str(tight), "--out",
                        str(tmp_path / "export"), "--no-embedder", "--eval-tokens", "64")
    assert code == 2
    assert "no GGUF quantization of this model fits profile 'tight'" in _error_line(err)
    assert not (tmp_path / "export").exists() and _leftovers(tmp_path) == []


def test_unknown_quant_is_one_line_exit_2(tiny_checkpoint: Path, tmp_path: Path, capsys):
    code, _, err = _cli(capsys, "--model", str(tiny_checkpoint), "--profile", "raspberry-pi-5-8gb", "--out",
                        str(tmp_path / "export"), "--quant", "Q7_Z", "--no-embedder", "--eval-tokens", "64")
    assert code == 2 and _error_line(err).startswith("error: unknown GGUF quant 'Q7_Z'")
    assert not (tmp_path / "export").exists() and _leftovers(tmp_path) == []


def test_quality_gate_failure_keeps_artifact_marked_fail(tiny_checkpoint: Path, tmp_path: Path, capsys):
    strict = _profile_yaml(tmp_path, "strict", quality_gate={"max_ppl_ratio_low_bit": 1.0005,
                                                             "max_ppl_ratio_mid_bit": 1.0005,
                                                             "max_ppl_ratio_8bit": 1.0005})
    out = tmp_path / "export"
    code, _, err = _cli(capsys, "--model", str(tiny_checkpoint), "--profile", str(strict), "--out", str(out),
                        "--quant", "Q2_K", "--no-embedder", "--eval-tokens", "256", "--threads", "1")
    assert code == 3, err
    assert "quality gate failed" in err
    manifest = ExportManifest.model_validate_json((out / "export.json").read_text())
    (art,) = manifest.artifacts
    assert art.gate == "fail" and art.ppl_ratio > 1.0005
    assert (out / art.path).is_file()


def test_unknown_architecture_exit_2(tiny_checkpoint: Path, tmp_path: Path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for item in tiny_checkpoint.iterdir():
        (bad / item.name).write_bytes(item.read_bytes())
    config = json.loads((bad / "config.json").read_text()) | {"architectures": ["GPTBigCodeForCausalLM"]}
    (bad / "config.json").write_text(json.dumps(config))
    code, _, err = _cli(capsys, "--model", str(bad), "--profile", "raspberry-pi-5-8gb", "--out",
                        str(tmp_path / "export"), "--no-embedder")
    assert code == 2 and "GPTBigCodeForCausalLM" in _error_line(err)
    assert not (tmp_path / "export").exists()


def test_broken_onnx_folder_is_refused(tmp_path: Path):
    from slmforge.export.onnx_genai import check_onnx_folder
    from slmforge.export.quality import artifact_logits

    folder = tmp_path / "onnx-int4"
    folder.mkdir()
    with pytest.raises(UserError, match="genai_config.json missing"):
        check_onnx_folder(folder)
    (folder / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"filename": "model.onnx"}}}))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.onnx").write_bytes(b"\x08\x07truncated")
    check_onnx_folder(folder)  # present and non-empty ...
    with pytest.raises(UserError, match="onnxruntime-genai cannot load"):  # ... but not loadable
        list(artifact_logits(folder, [[1, 2, 3]], progress=False))
