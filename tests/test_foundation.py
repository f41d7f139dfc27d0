"""Foundation: packaging, CLI, shared types, device profiles, atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slmforge.errors import UserError
from slmforge.fileio import atomic_dir, sha256_path
from slmforge.manifest import ArtifactManifest, read_manifest
from slmforge.profiles import DeviceProfile, detect_host_profile, list_profiles, load_profile, profile_paths
from tests.conftest import run_cli


def test_runtime_imports_without_torch():
    """The device side must import in an environment where torch/transformers cannot be imported."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'peft', 'trl'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import slmforge.runtime, slmforge.cli, slmforge.profiles, slmforge.manifest\n"
        "import pkgutil, importlib\n"
        "for m in pkgutil.iter_modules(slmforge.runtime.__path__):\n"
        "    importlib.import_module('slmforge.runtime.' + m.name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')]\n"
        "print('LOADED', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_bare_top_level_modules_installed():
    import slmforge.export
    import slmforge.runtime
    import slmforge.trainer

    for mod in (slmforge.runtime, slmforge.export, slmforge.trainer):
        assert mod.__name__.startswith("slmforge.")
    for bare in ("runtime", "export", "trainer"):
        proc = subprocess.run([sys.executable, "-c", f"import {bare}"], capture_output=True, text=True, cwd="/", check=False)
        assert proc.returncode != 0, f"a bare '{bare}' module is importable"


def test_version_and_help():
    proc = run_cli("--version")
    assert proc.returncode == 0 and "slmforge" in proc.stdout
    proc = run_cli("--help")
    assert proc.returncode == 0
    for verb in ("base", "profiles", "export", "bundle", "run", "serve", "bench", "pipeline", "demo"):
        assert verb in proc.stdout


def test_every_registered_command_has_help():
    from slmforge.cli import COMMANDS

    for name in COMMANDS:
        proc = run_cli(name, "--help")
        assert proc.returncode == 0, f"slmforge {name} --help failed: {proc.stderr}"
        assert "Usage:" in proc.stdout


def test_profiles_list_json_has_at_least_eight():
    proc = run_cli("profiles", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    items = json.loads(proc.stdout)
    names = {p["name"] for p in items}
    assert len(items) >= 8
    assert {"raspberry-pi-5-8gb", "raspberry-pi-zero-2w", "host"} <= names


@pytest.mark.parametrize("name", sorted(profile_paths()))
def test_every_shipped_profile_loads(name):
    profile = load_profile(name)
    assert isinstance(profile, DeviceProfile)
    assert profile.app_memory_gb <= profile.ram_gb
    assert profile.sources


def test_host_profile_is_measured():
    host = detect_host_profile()
    assert host.detected and host.cpu.cores >= 1 and host.memory_bandwidth_gbs > 0.1


def test_malformed_profile_is_one_clear_line(tmp_path):
    good = yaml.safe_load(profile_paths()["raspberry-pi-5-8gb"].read_text())
    bad = dict(good, ram_gb="lots")
    path = tmp_path / "raspberry-pi-5-8gb.yaml"
    path.write_text(yaml.safe_dump(bad))
    proc = run_cli("profiles", "show", str(path))
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "ram_gb" in lines[0] and str(path) in lines[0]
    assert "Traceback" not in proc.stderr

    extra = dict(good, ram_gbs=8)
    path.write_text(yaml.safe_dump(extra))
    with pytest.raises(UserError, match="ram_gbs.*unknown key"):
        load_profile(str(path))


def test_unknown_profile_names_the_known_ones():
    proc = run_cli("profiles", "show", "nokia-3310")
    assert proc.returncode == 2 and "raspberry-pi-5-8gb" in proc.stderr


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "artifact"
    with pytest.raises(RuntimeError), atomic_dir(out) as d:
        (d / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(out) as d:
        (d / "whole.bin").write_bytes(b"y")
    assert (out / "whole.bin").read_bytes() == b"y"


def test_manifest_round_trip_and_dir_hash(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    h1 = sha256_path(tmp_path)
    ArtifactManifest(kind="checkpoint", stage="test", seed=3, metrics={"ppl": 1.5}).write(tmp_path)
    assert sha256_path(tmp_path) == h1, "the manifest must not change the content hash"
    m = read_manifest(tmp_path)
    assert m.stage == "test" and m.seed == 3 and m.metrics["ppl"] == 1.5
    (tmp_path / "a.txt").write_text("hello!")
    assert sha256_path(tmp_path) != h1


def test_read_manifest_missing_is_user_error(tmp_path):
    with pytest.raises(UserError, match="no slmforge.json"):
        read_manifest(tmp_path)


def test_every_profile_in_list_profiles_validates():
    for p in list_profiles(include_host=False):
        DeviceProfile.model_validate(p.model_dump())


def test_tiny_checkpoint_builds_and_generates(tiny_checkpoint: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    assert model.config.num_hidden_layers == 2
    assert tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "How do I copy a file?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(ids)
    assert out.logits.shape == (1, ids.shape[1], len(tok))
