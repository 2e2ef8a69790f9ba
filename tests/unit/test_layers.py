"""The import graph of harness/: no cycles, and the layers of docs/architecture.md (pyproject.toml's
[tool.importlinter]) hold — and the check does fail when a lower layer imports from a higher one."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.paths import REPO

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def import_graph(root: Path, package: str = "harness") -> dict[str, set[str]]:
    """Module → the package's modules it imports, at module level or inside a function (a function-level import
    hides a cycle, it does not remove it); TYPE_CHECKING imports count too."""
    paths = {module_name(root, p): p for p in sorted((root / package).rglob("*.py"))}

    def known(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in paths}
    for mod, path in paths.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names]
            else:
                continue
            for t in targets:
                dep = known(t) if t == package or t.startswith(package + ".") else None
                if dep and dep != mod:
                    graph[mod].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_harness_has_no_import_cycle():
    assert cycles(import_graph(REPO)) == []


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_cycle_check_sees_a_cycle_hidden_in_a_function(tmp_path):
    root = _package(tmp_path, {"harness/__init__.py": "", "harness/a.py": "from harness.b import x\ny = 1\n",
                               "harness/b.py": "x = 1\ndef f():\n    from harness.a import y\n    return y\n",
                               "harness/c.py": "from . import a\n"})
    assert cycles(import_graph(root)) == [["harness.a", "harness.b"]]
    assert import_graph(root)["harness.c"] == {"harness.a"}


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH first: the copy's harness package, not the installed one, is the graph's root
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd), "HOME": str(cwd)})


def test_the_layer_contract_holds():
    r = _lint(REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 kept, 0 broken" in r.stdout


@pytest.fixture
def repo_copy(tmp_path):
    shutil.copytree(REPO / "harness", tmp_path / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize("module, bad_import, broken", [
    ("harness/oracles/judge.py", "from harness.scenario import run as _upward", "harness layers"),
    ("harness/kernel/build.py", "from harness.fleet.matrix import model as _upward", "harness layers"),
    ("harness/util.py", "from harness import paths as _not_a_leaf", "harness.util imports nothing"),
])
def test_the_layer_contract_fails_a_deliberate_violation(repo_copy, module, bad_import, broken):
    assert _lint(repo_copy).returncode == 0  # the copy as it is: kept
    path = repo_copy / module
    path.write_text(path.read_text() + f"\n\ndef _injected():\n    {bad_import}\n")
    r = _lint(repo_copy)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{broken}" in r.stdout and "BROKEN" in r.stdout
    assert module.removesuffix(".py").replace("/", ".") in r.stdout  # names the offending importer
