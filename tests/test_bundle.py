"""Bundles: manifest verification (tampered, truncated, missing), safe tar unpacking, Modelfile, CLI errors."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from slmforge.runtime.bundle import open_bundle
from slmforge.runtime.bundle_build import build_bundle
from slmforge.runtime.modelfile import render_modelfile

from slmforge.errors import UserError
from tests.conftest import run_cli
from tests.runtime_fixtures import build_tiny_embedder, fake_model_export, small_corpus


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> tuple[Path, Path]:
    """(bundle folder, bundle .tar) built once from the small corpus, tiny embedder and an opaque model file."""
    tmp = tmp_path_factory.mktemp("bundle")
    emb = build_tiny_embedder(tmp / "embedder", [corpus_dir])
    export = fake_model_export(tmp / "export", emb)
    docs = small_corpus(corpus_dir, tmp / "docs")
    folder = build_bundle(export, [docs], tmp / "b", progress=False).path
    tar = build_bundle(export, [docs], tmp / "b.tar", tar=True, progress=False).path
    return folder, tar


def copy_bundle(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_bundle_layout_and_manifest(built):
    folder, _ = built
    b = open_bundle(folder)
    m = b.manifest
    names = {f.path for f in m.files}
    assert {"model-Q4_1.gguf", "rag.db", "Modelfile", "embedder/model.onnx", "embedder/tokenizer.json",
            "embedder/embedder.json"} <= names
    assert all(len(f.sha256) == 64 and f.size > 0 for f in m.files)
    assert m.model["format"] == "gguf" and m.model["quant"] == "Q4_1"
    assert m.index["documents"] == 4 and m.index["chunks"] > 50 and m.index["settings"]["vector_mode"] == "bitscan+rescore"
    assert m.generation["n_ctx"] > 0 and m.system_prompt and m.lineage[-1]["stage"] == "export"
    assert {i["role"] for i in m.inputs} == {"export", "docs"}
    assert b.model_path.is_file() and b.rag_db.is_file() and b.embedder_dir.is_dir()


def test_modelfile_reproduces_chatml():
    text = render_modelfile("model-Q4_K_M.gguf", None, "Be brief.", {"temperature": 0.0, "n_ctx": 2048})
    assert "FROM ./model-Q4_K_M.gguf" in text
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|im_start|>"' in text
    assert "<|im_start|>{{ .Role }}" in text and text.count("<|im_start|>assistant") == 1
    assert 'SYSTEM """Be brief."""' in text and "PARAMETER num_ctx 2048" in text
    with pytest.raises(UserError, match="ChatML"):
        render_modelfile("m.gguf", "{{ bos_token }}[INST] {{ messages }}", "x", {})


@pytest.mark.parametrize("damage", ["tamper", "truncate", "delete"])
def test_damaged_file_is_named(built, tmp_path: Path, damage: str):
    bundle = copy_bundle(built[0], tmp_path / "b")
    target = bundle / ("embedder/tokenizer.json" if damage == "delete" else "model-Q4_1.gguf")
    if damage == "tamper":
        data = bytearray(target.read_bytes())
        data[100] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:1000])
    else:
        target.unlink()
    expected = {"tamper": "altered", "truncate": "truncated", "delete": "missing"}[damage]
    with pytest.raises(UserError, match=rf"'{target.relative_to(bundle)}' (is|was) {expected}"):
        open_bundle(bundle)
    if damage != "truncate":
        return
    proc = run_cli("run", str(bundle), "How do I copy a file?")  # the user sees one line and exit code 2
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(target.relative_to(bundle)) in lines[0] and expected in lines[0]


def test_tar_bundle_opens(built, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SLMFORGE_CACHE", str(tmp_path / "cache"))
    b = open_bundle(built[1])
    assert b.root.is_relative_to(tmp_path / "cache") and b.manifest.index["documents"] == 4


def _evil_tar(path: Path, kind: str) -> Path:
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes = b"x", **attrs) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            for key, value in attrs.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)

        add("bundle/manifest.json", json.dumps({}).encode())
        if kind == "dotdot":
            add("bundle/../x")
        elif kind == "absolute":
            add("/etc/evil")
        elif kind == "symlink":
            add("bundle/link", b"", type=tarfile.SYMTYPE, linkname="../../outside")
        elif kind == "device":
            add("bundle/dev", b"", type=tarfile.CHRTYPE)
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "device"])
def test_malicious_tar_is_refused(tmp_path: Path, monkeypatch, kind: str):
    monkeypatch.setenv("SLMFORGE_CACHE", str(tmp_path / "cache"))
    tar = _evil_tar(tmp_path / "evil.tar", kind)
    with pytest.raises(UserError, match="refusing"):
        open_bundle(tar)
    assert not (tmp_path / "x").exists() and not (tmp_path / "outside").exists()
    assert not any((tmp_path / "cache").rglob("*")) if (tmp_path / "cache").exists() else True


def test_index_status_and_remove_cli(built, tmp_path: Path):
    bundle = copy_bundle(built[0], tmp_path / "b")
    proc = run_cli("index", "status", str(bundle), "--json")
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)
    assert st["documents"] == 4 and st["manifest"] == "verified" and len(st["sources"]) == 4
    proc = run_cli("index", "remove", str(bundle), "docs/faq/", "--json")
    assert proc.returncode == 0, proc.stderr
    assert sorted(json.loads(proc.stdout)["removed"]) == ["docs/faq/library.rst", "docs/faq/programming.rst"]
    b = open_bundle(bundle)  # the manifest was refreshed: rag.db verifies again
    assert b.manifest.index["documents"] == 2
    proc = run_cli("index", "remove", str(bundle), "docs/nothing.rst")
    assert proc.returncode == 2 and "matches no indexed document" in proc.stderr


def test_bundle_cli_bad_export(tmp_path: Path, corpus_dir: Path):
    proc = run_cli("bundle", "--export", str(tmp_path), "--docs", str(corpus_dir), "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "export.json" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "b").exists()


def test_index_from_reuses_an_index_of_the_same_vectors(built, tmp_path: Path, corpus_dir: Path, monkeypatch):
    """A second profile's bundle copies the first one's index when only embedder.json's records differ."""
    import json
    import shutil

    from slmforge.runtime import indexing
    from slmforge.runtime.index import RagIndex

    folder, _ = built
    export = tmp_path / "export2"
    shutil.copytree(folder.parent / "export", export)
    config_path = export / "embedder" / "embedder.json"
    config = json.loads(config_path.read_text()) | {"duration_s": 123.4}  # another export run, same vectors
    config_path.write_text(json.dumps(config))
    embedded = []
    original = indexing.sync_documents

    def counting(index, embedder, *args, **kwargs):
        real_embed = embedder.embed
        embedder.embed = lambda texts: (embedded.extend(texts), real_embed(texts))[1]
        return original(index, embedder, *args, **kwargs)

    monkeypatch.setattr("slmforge.runtime.bundle_build.sync_documents", counting)
    second = build_bundle(export, [folder.parent / "docs"], tmp_path / "b2", progress=False,
                          index_from=folder).path
    assert embedded == []  # every document was already in the copied index
    with RagIndex(second / "rag.db", readonly=True) as a, RagIndex(folder / "rag.db", readonly=True) as b:
        assert a.count() == b.count() > 0
