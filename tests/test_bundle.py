"""Bundles: manifest verification (tampered, truncated, missing), safe tar unpacking, Modelfile, CLI errors."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from slmforge.runtime.bundle.build import build_bundle
from slmforge.runtime.bundle.modelfile import render_modelfile
from slmforge.runtime.bundle.reader import open_bundle

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
    with pytest.raises(UserError, match="neither ChatML nor Gemma"):
        render_modelfile("m.gguf", "{{ bos_token }}[INST] {{ messages }}", "x", {})


def test_modelfile_reproduces_gemma_turns():
    from slmforge.trainer.base.gguf_tokenizer_repair import GEMMA_TURN_TEMPLATE

    text = render_modelfile("model-Q8_0.gguf", GEMMA_TURN_TEMPLATE, "Cite sources.", {"n_ctx": 2048})
    assert 'PARAMETER stop "<end_of_turn>"' in text and 'PARAMETER stop "<start_of_turn>"' in text
    assert "<|im_start|>" not in text
    # the system prompt opens the first user turn once (Gemma has no system role); the reply starts a model turn
    assert "{{ if $system }}{{ $system }}\n\n{{ $system = \"\" }}{{ end }}" in text
    assert text.count("<start_of_turn>model\n") == 2 and 'SYSTEM """Cite sources."""' in text


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


@pytest.mark.parametrize("content", [b"hello\n", b"x" * 2000])
def test_a_file_that_is_no_tar_is_one_line(tmp_path: Path, content: bytes):
    path = tmp_path / "bundle.tar"
    path.write_bytes(content)
    proc = run_cli("run", str(path), "hi", env={"SLMFORGE_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "not a readable tar bundle (not a tar archive" in proc.stderr


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

    from slmforge.runtime.index import sync as indexing
    from slmforge.runtime.index.store import RagIndex

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

    monkeypatch.setattr("slmforge.runtime.bundle.build.sync_documents", counting)
    second = build_bundle(export, [folder.parent / "docs"], tmp_path / "b2", progress=False,
                          index_from=folder).path
    assert embedded == []  # every document was already in the copied index
    with RagIndex(second / "rag.db", readonly=True) as a, RagIndex(folder / "rag.db", readonly=True) as b:
        assert a.count() == b.count() > 0


# -- hostile bundles (issue 19): link chains, bombs, manifest paths, format versions --------------------------


def _nothing_in(cache: Path) -> bool:
    """No file, link or folder (a temp folder included) under the cache's ``bundles/``."""
    return not cache.exists() or all(p == cache / "bundles" for p in cache.rglob("*"))


def _cve_2025_4517_tar(path: Path, dest_len: int) -> Path:
    """CPython's own reproducer of CVE-2025-4517: symlinks whose expansion passes PATH_MAX, so the
    ``data`` filter's ``realpath`` check stops early, then a member written through the chain.
    ``dest_len`` is the length of the folder the tar is unpacked into (the components fill PATH_MAX)."""
    import os

    steps = "abcdefghijklmnop"
    component = "d" * ((os.pathconf("/", "PC_PATH_MAX") - dest_len) // (len(steps) + 1))
    with tarfile.open(path, "w") as tar:
        def add(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes = b"") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        add("manifest.json", data=b"{}")
        prefix = ""
        for step in steps:
            add(os.path.join(prefix, component), tarfile.DIRTYPE)
            add(os.path.join(prefix, step), tarfile.SYMTYPE, component)
            prefix = os.path.join(prefix, component)
        long_link = os.path.join(*steps, "l" * 254)
        add(long_link, tarfile.SYMTYPE, os.path.join(*[".."] * len(steps)))
        add("escape", tarfile.SYMTYPE, os.path.join(long_link, ".."))
        add("escape/newfile", data=b"written outside the bundle")
    return path


def test_tar_symlink_chain_past_path_max_is_refused_before_writing(tmp_path: Path, monkeypatch):
    """CVE-2025-4517: the chain resolves (in the archive, before extraction) to the cache's parent folder."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SLMFORGE_CACHE", str(cache))
    # the folder the tar was unpacked into before this check: <cache>/bundles/evil-<16 hex>.partial-<8 chars>
    dest_len = len(str(cache / "bundles")) + len("/evil-") + 16 + len(".partial-") + 8 + 1
    tar = _cve_2025_4517_tar(tmp_path / "evil.tar", dest_len)
    with pytest.raises(UserError, match=r"tar member 'escape' \(link to .*\) resolves outside the bundle; refusing"):
        open_bundle(tar)
    assert not (cache / "bundles" / "newfile").exists() and not (tmp_path / "newfile").exists()
    assert _nothing_in(cache)  # nothing written at all, not even a temp folder


@pytest.mark.parametrize("members", [
    [("b/up", ".."), ("b/up2", "up/.."), ("b/up2/evil", None)],  # each link looks inside on its own
    [("b/x", "y"), ("b/y", "x"), ("b/x/f", None)],  # a loop
    [("b/d", "."), ("b/d/d/d/../../../../out", None)],  # '..' in a member name
    [("b/l", "sub/../../.."), ("b/l/f", None)],
    [("b/l", "x/y/../../.."), ("b/x/y", ".")],  # inside when added; out once x/y turns into a link
    [("b/f", None), ("b/h1", "b/f", "hard"), ("b/h2", "b/h1", "hard"), ("b/h3", "/etc/passwd", "hard")],
])
def test_tar_link_chains_are_resolved_in_the_archive(tmp_path: Path, monkeypatch, members):
    monkeypatch.setenv("SLMFORGE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "chain.tar"
    with tarfile.open(path, "w") as tar:
        for name, link, *hard in [("b/manifest.json", None), *members]:
            info = tarfile.TarInfo(name)
            if link is None:
                info.size = 1
            else:
                info.type, info.linkname = tarfile.LNKTYPE if hard else tarfile.SYMTYPE, link
            tar.addfile(info, io.BytesIO(b"x") if link is None else None)
    with pytest.raises(UserError, match="refusing to unpack"):
        open_bundle(path)
    assert _nothing_in(tmp_path / "cache")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil").exists()


def test_links_inside_the_bundle_still_unpack(tmp_path: Path, monkeypatch):
    from slmforge.runtime.bundle.tar import unpack_bundle_tar

    path = tmp_path / "ok.tar"
    with tarfile.open(path, "w") as tar:
        for name, kind, link, data in [("b/manifest.json", tarfile.REGTYPE, "", b"{}"),
                                       ("b/sub/model.bin", tarfile.REGTYPE, "", b"weights"),
                                       ("b/alias", tarfile.SYMTYPE, "sub/model.bin", b""),
                                       ("b/dir-alias", tarfile.SYMTYPE, "sub", b""),
                                       ("b/copy.bin", tarfile.LNKTYPE, "b/dir-alias/model.bin", b"")]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    root = unpack_bundle_tar(path, tmp_path / "cache" / "ok", "manifest.json")
    assert root == tmp_path / "cache" / "ok" / "b"
    assert (root / "alias").is_symlink() and (root / "alias").read_bytes() == b"weights"
    assert not (root / "copy.bin").is_symlink() and (root / "copy.bin").read_bytes() == b"weights"


def test_tar_bomb_is_refused_and_leaves_nothing(tmp_path: Path, monkeypatch):
    """30 MB of zeros gzip to ~30 KB: past the expansion cap, refused from the headers, nothing unpacked."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SLMFORGE_CACHE", str(cache))
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tar:
        for name, size in [("b/manifest.json", 2), ("b/model.gguf", 30 * 1024 * 1024)]:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b"{}" if size == 2 else bytes(size)))
    assert bomb.stat().st_size < 100_000
    with pytest.raises(UserError, match=r"unpacks to more than [\d,]+ MB .*refusing"):
        open_bundle(bomb)
    assert _nothing_in(cache)


def test_tar_member_declaring_a_huge_size_is_refused_from_its_header(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SLMFORGE_CACHE", str(tmp_path / "cache"))
    import gzip

    header = tarfile.TarInfo("b/model.gguf")
    header.size = 50 * 1024**3
    bomb = tmp_path / "huge.tar.gz"
    bomb.write_bytes(gzip.compress(header.tobuf(tarfile.PAX_FORMAT) + bytes(64 * 1024)))
    with pytest.raises(UserError, match="unpacks to more than"):
        open_bundle(bomb)
    assert _nothing_in(tmp_path / "cache")


def test_unpacking_stops_at_the_budget_while_writing():
    """The header check can be wrong (sparse members); the copy itself counts bytes too."""
    from slmforge.runtime.bundle.tar import copy_capped

    out = io.BytesIO()
    with pytest.raises(UserError, match="unpacks past the size limit"):
        copy_capped(io.BytesIO(bytes(3 << 20)), out, 2 << 20, "x.tar", "big")
    assert len(out.getvalue()) <= 2 << 20


def _edit_manifest(bundle: Path, **changes) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            manifest[section][key] = value
        else:
            manifest[section] = value
    path.write_text(json.dumps(manifest))


def test_index_path_to_another_bundle_is_refused(built, tmp_path: Path):
    from slmforge.fileio import sha256_file

    mine, other = copy_bundle(built[0], tmp_path / "mine"), copy_bundle(built[0], tmp_path / "other")
    before = sha256_file(other / "rag.db")
    _edit_manifest(mine, index__path="../other/rag.db")
    new_doc = tmp_path / "new"
    new_doc.mkdir()
    (new_doc / "note.md").write_text("# Note\n\nA new document about copying folders with shutil.copytree.\n")
    proc = run_cli("index", "add", str(mine), str(new_doc))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "'index.path'" in proc.stderr and "outside the bundle" in proc.stderr
    assert sha256_file(other / "rag.db") == before


def test_linked_rag_db_leading_outside_is_refused(built, tmp_path: Path):
    mine, other = copy_bundle(built[0], tmp_path / "mine"), copy_bundle(built[0], tmp_path / "other")
    (mine / "rag.db").unlink()
    (mine / "rag.db").symlink_to(other / "rag.db")
    with pytest.raises(UserError, match="outside the bundle"):
        open_bundle(mine, skip_verify=("rag.db",))


def test_model_path_outside_the_bundle_is_never_loaded(built, tmp_path: Path):
    mine = copy_bundle(built[0], tmp_path / "mine")
    (tmp_path / "outside.gguf").write_bytes((mine / "model-Q4_1.gguf").read_bytes())
    _edit_manifest(mine, model__path="../outside.gguf")
    proc = run_cli("run", str(mine), "How do I copy a file?")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'model.path'" in lines[0] and "outside the bundle" in lines[0], lines


@pytest.mark.parametrize("version", [99, 0, "1", True])
def test_unknown_format_version_is_refused(built, tmp_path: Path, version):
    mine = copy_bundle(built[0], tmp_path / "mine")
    _edit_manifest(mine, format_version=version)
    with pytest.raises(UserError, match=r"format_version .* is not one this slmforge reads \(1\)"):
        open_bundle(mine)


_KILLED_WRITER = """
import os, signal, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA cache_size=1")  # spill changed pages into rag.db before the commit that never comes
conn.execute("BEGIN")
conn.execute("UPDATE chunks SET text = text || ' (half-written)'")
conn.execute("DELETE FROM documents")
os.kill(os.getpid(), signal.SIGKILL)
"""


def _kill_a_writer_mid_transaction(rag_db: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(rag_db)], check=False)
    assert proc.returncode < 0  # killed by the signal, inside the transaction
    assert Path(f"{rag_db}-journal").stat().st_size > 0  # the hot journal a killed 'index add' leaves


def test_read_only_opens_roll_back_a_hot_journal(built, tmp_path: Path):
    bundle = copy_bundle(built[0], tmp_path / "b")
    _kill_a_writer_mid_transaction(bundle / "rag.db")
    proc = run_cli("telemetry", "report", str(bundle))  # reads the index first, then finds no telemetry
    assert "readonly" not in proc.stderr and "no telemetry yet" in proc.stderr, proc.stderr
    _kill_a_writer_mid_transaction(bundle / "rag.db")
    proc = run_cli("index", "status", str(bundle), "--json")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["documents"] == 4 and status["manifest"] == "verified"  # the half-done transaction is gone
    assert not Path(f"{bundle / 'rag.db'}-journal").exists()


def test_hot_journal_in_a_read_only_folder_says_how_to_recover(built, tmp_path: Path, monkeypatch):
    from slmforge.runtime.index import sqlite
    from slmforge.runtime.index.store import RagIndex

    bundle = copy_bundle(built[0], tmp_path / "b")
    _kill_a_writer_mid_transaction(bundle / "rag.db")
    monkeypatch.setattr(sqlite, "_may_write", lambda path: False)  # as a user without write access sees it
    with pytest.raises(UserError, match=r"interrupted write left rag.db-journal .* re-run 'slmforge index add"):
        RagIndex(bundle / "rag.db", readonly=True)


def test_embedder_model_file_outside_its_folder_is_refused(built, tmp_path: Path):
    from slmforge.runtime.index.embedder import Embedder

    mine = copy_bundle(built[0], tmp_path / "mine")
    config = mine / "embedder" / "embedder.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"model_file": "../../outside.onnx"}))
    with pytest.raises(UserError, match="embedder.json's model_file names '../../outside.onnx', outside"):
        Embedder(mine / "embedder")


def test_genai_config_file_names_outside_the_model_folder_are_refused(tmp_path: Path):
    pytest.importorskip("onnxruntime_genai")
    from slmforge.runtime.generate.onnx_genai import OnnxGenaiBackend

    folder = tmp_path / "onnx-int4"
    folder.mkdir()
    (folder / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"filename": "../../etc/model.onnx"}}}))
    with pytest.raises(UserError, match="genai_config.json's 'filename' names '../../etc/model.onnx', outside"):
        OnnxGenaiBackend(folder)
