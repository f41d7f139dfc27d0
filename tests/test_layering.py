"""The layering of docs/ARCHITECTURE.md, enforced: every import of ours follows an arrow of its table.

Imports are read from the source (AST), so lazy imports inside functions, ``TYPE_CHECKING`` blocks and
``importlib.import_module("slmforge....")`` with a literal name count as much as the ones at the top.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"

# package -> the packages of ours it may import besides itself (docs/ARCHITECTURE.md, "Layering").
# A module belongs to the longest package here that is its name or a prefix of it.
LAYERS: dict[str, frozenset[str]] = {
    "slmforge": frozenset(),
    "slmforge.trainer": frozenset({"slmforge"}),
    "slmforge.runtime": frozenset({"slmforge"}),
    "slmforge.export": frozenset({"slmforge", "slmforge.runtime"}),
    "slmforge.bench": frozenset({"slmforge", "slmforge.runtime"}),
    "slmforge.bench.dev": frozenset(
        {"slmforge", "slmforge.trainer", "slmforge.runtime", "slmforge.export", "slmforge.bench"}
    ),
    "slmforge.device_profiles": frozenset(),
}


# Inside trainer/ and runtime/: sub-package -> the sibling sub-packages it may import (docs/ARCHITECTURE.md,
# "Sub-packages"). A module belongs to the sub-package of its first two name parts below `slmforge`
# (trainer/data/qa/ is part of trainer/data); the pipeline's flow runs down the trainer rows, and in the
# runtime the retrieval and generation layers reach only the bundle format, while nothing but the answer
# service reaches into serve.
SUB_PACKAGES: dict[str, frozenset[str]] = {
    "slmforge.trainer.base": frozenset(),
    "slmforge.trainer.data": frozenset(),
    "slmforge.trainer.train": frozenset({"slmforge.trainer.data"}),
    "slmforge.trainer.shrink": frozenset({"slmforge.trainer.train"}),
    "slmforge.trainer.merge": frozenset(),
    "slmforge.runtime.bundle": frozenset({"slmforge.runtime.index", "slmforge.runtime.answer"}),
    "slmforge.runtime.index": frozenset({"slmforge.runtime.bundle"}),
    "slmforge.runtime.generate": frozenset({"slmforge.runtime.bundle"}),
    "slmforge.runtime.answer": frozenset(
        {"slmforge.runtime.bundle", "slmforge.runtime.index", "slmforge.runtime.generate",
         "slmforge.runtime.telemetry", "slmforge.runtime.serve"}
    ),
    "slmforge.runtime.telemetry": frozenset(
        {"slmforge.runtime.bundle", "slmforge.runtime.index", "slmforge.runtime.answer"}
    ),
    "slmforge.runtime.serve": frozenset(
        {"slmforge.runtime.bundle", "slmforge.runtime.index", "slmforge.runtime.generate",
         "slmforge.runtime.answer", "slmforge.runtime.telemetry"}
    ),
}
SPLIT_PACKAGES = ("slmforge.trainer", "slmforge.runtime")  # hold sub-packages only, no flat modules


def layer_of(module: str, layers: dict[str, frozenset[str]]) -> str | None:
    """The table row a dotted name belongs to; None for modules that are not ours."""
    owners = [name for name in layers if module == name or module.startswith(name + ".")]
    return max(owners, key=len) if owners else None


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_names(module: str, source: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything ``module`` imports, wherever the import statement sits."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node)
            for alias in node.names:  # `from slmforge import trainer` imports slmforge.trainer
                yield node.lineno, base if alias.name == "*" else f"{base}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def modules_under(package: str, folder: Path) -> Iterator[tuple[str, Path, bool]]:
    """(dotted name, file, is_package) of every Python module in a package folder, sub-packages included."""
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        yield ".".join((package, *(parts[:-1] if is_package else parts))), path, is_package


def layer_violations(folders: dict[str, Path], layers: dict[str, frozenset[str]]) -> list[str]:
    """Every import in the given package folders that no arrow of ``layers`` allows."""
    found = []
    seen: set[str] = set()
    for package, folder in folders.items():
        for module, path, is_package in modules_under(package, folder):
            if module in seen:  # a sub-package folder is also walked as part of its parent
                continue
            seen.add(module)
            own = layer_of(module, layers)
            for line, name in imported_names(module, path.read_text(), is_package):
                target = layer_of(name, layers)
                if target is not None and target != own and target not in layers[own]:
                    found.append(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{line}: "
                                 f"{module} imports {name} ({own} -> {target} is not in the table)")
    return found


def package_folders() -> dict[str, Path]:
    """Each package of the table and its folder in this checkout (pyproject's package-dir: slmforge.X -> X/)."""
    folders = {}
    for package in LAYERS:
        parts = package.split(".")
        folders[package] = REPO.joinpath(*(parts if len(parts) == 1 else parts[1:]))
        assert (folders[package] / "__init__.py").is_file(), f"{package}: no {folders[package]}/__init__.py"
    return folders


def test_every_import_follows_the_layering_table():
    assert layer_violations(package_folders(), LAYERS) == []


def test_shipped_code_imports_nothing_of_the_test_suite():
    """tests/tiny_checkpoint.py builds the tests' random checkpoints; shipped code takes nothing from tests/."""
    users = [f"{module} imports {name}" for package, folder in package_folders().items()
             for module, path, is_package in modules_under(package, folder)
             for _, name in imported_names(module, path.read_text(), is_package)
             if name == "tests" or name.startswith("tests.")]
    assert users == []


def sub_package_of(module: str) -> str | None:
    """`slmforge.runtime.index.store` -> `slmforge.runtime.index`; None outside trainer/ and runtime/ sub-packages."""
    parts = module.split(".")
    return ".".join(parts[:3]) if len(parts) >= 4 and ".".join(parts[:2]) in SPLIT_PACKAGES else None


def sub_package_violations(folders: dict[str, Path]) -> list[str]:
    """Every import from one sub-package of trainer/ or runtime/ into a sibling that SUB_PACKAGES does not allow."""
    found = []
    for package in SPLIT_PACKAGES:
        for module, path, is_package in modules_under(package, folders[package]):
            own = sub_package_of(module if not is_package else module + ".__init__")
            if own is None:
                continue
            for line, name in imported_names(module, path.read_text(), is_package):
                target = sub_package_of(name + ".x") if name.count(".") == 2 else sub_package_of(name)
                if target and target != own and target not in SUB_PACKAGES.get(own, frozenset()):
                    found.append(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{line}: "
                                 f"{module} imports {name} ({own} -> {target} is not in the sub-package table)")
    return found


def test_every_import_between_sub_packages_follows_their_table():
    assert sub_package_violations(package_folders()) == []


def test_trainer_and_runtime_hold_sub_packages_only():
    """A new module goes into the sub-package of its job; every sub-package has a row in SUB_PACKAGES."""
    folders = package_folders()
    flat = [str(path.relative_to(REPO)) for package in SPLIT_PACKAGES for path in sorted(folders[package].glob("*.py"))
            if path.name != "__init__.py"]
    assert flat == []
    found = {f"{package}.{path.parent.name}" for package in SPLIT_PACKAGES
             for path in folders[package].glob("*/__init__.py")}
    assert found == set(SUB_PACKAGES)


def test_a_sibling_import_against_the_sub_package_table_fails(tmp_path: Path):
    """runtime/index reaching into runtime/serve (two ways) is caught; reaching into the bundle format is not."""
    runtime = tmp_path / "runtime"
    for sub in ("index", "serve", "bundle"):
        (runtime / sub).mkdir(parents=True)
        (runtime / sub / "__init__.py").write_text("")
    (runtime / "__init__.py").write_text("")
    (runtime / "index" / "store.py").write_text(
        "from slmforge.runtime.bundle.reader import resolve_inside\n"
        "from slmforge.runtime.serve.api import create_app\n"
        "def later():\n"
        "    from slmforge.runtime.serve import gate\n"
    )
    (tmp_path / "trainer").mkdir()
    found = sub_package_violations({"slmforge.trainer": tmp_path / "trainer", "slmforge.runtime": runtime})
    assert len(found) == 2, found
    assert all("slmforge.runtime.index -> slmforge.runtime.serve" in line for line in found)


def test_a_module_against_the_table_fails(tmp_path: Path):
    """A synthetic runtime module reaching into trainer and export, three ways, is caught three times."""
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "__init__.py").write_text("")
    (runtime / "fine.py").write_text("from slmforge.errors import UserError\nfrom . import fine\n")
    (runtime / "bad.py").write_text(
        "import importlib\n"
        "def lazily():\n"
        "    from slmforge.trainer.train.sft import build_examples\n"
        "    from ..export import run\n"
        "    return importlib.import_module('slmforge.export.quality')\n"
    )
    found = layer_violations({"slmforge.runtime": runtime}, LAYERS)
    assert len(found) == 3, found
    assert all("slmforge.runtime.bad imports" in line for line in found)
    assert "slmforge.runtime -> slmforge.trainer" in found[0]
    assert {"slmforge.export.run", "slmforge.export.quality"} <= {line.split(" imports ")[1].split()[0]
                                                                 for line in found}


def test_the_shipped_bench_may_not_import_its_developer_scripts():
    assert layer_of("slmforge.bench.dev.merge_quality", LAYERS) == "slmforge.bench.dev"
    assert "slmforge.bench.dev" not in LAYERS["slmforge.bench"]
    assert layer_of("slmforge.benchmark", LAYERS) == "slmforge"  # prefixes match whole names only


def test_arrows_point_one_way():
    def reaches(start: str, goal: str, path: tuple[str, ...] = ()) -> bool:
        return any(nxt == goal or (nxt not in path and reaches(nxt, goal, (*path, nxt))) for nxt in LAYERS[start])

    assert [package for package in LAYERS if reaches(package, package)] == []


def _documented_table() -> dict[str, frozenset[str]]:
    text = ARCHITECTURE.read_text()
    section = text.split("\n## Layering", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    table = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        table[re.findall(r"`([^`]+)`", cells[0])[0]] = frozenset(re.findall(r"`([^`]+)`", cells[1]))
    return table


def test_architecture_doc_states_the_same_table():
    assert _documented_table() == LAYERS


def test_architecture_doc_states_the_same_sub_package_table():
    text = ARCHITECTURE.read_text()
    section = text.split("\n## Sub-packages", 1)[1].split("\n## ", 1)[0]
    table = {}
    for row in (line for line in section.splitlines() if line.startswith("| `")):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        table[re.findall(r"`([^`]+)`", cells[0])[0]] = frozenset(re.findall(r"`([^`]+)`", cells[1]))
    assert table == SUB_PACKAGES


def test_pyproject_lists_every_sub_package():
    """A sub-package missing from [tool.setuptools] packages would be left out of the wheel."""
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {module for package, folder in package_folders().items()
             for module, _, is_package in modules_under(package, folder) if is_package}
    assert found - listed == set()
