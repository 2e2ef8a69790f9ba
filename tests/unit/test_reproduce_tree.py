"""reproduce.sh of a run on a developer's tree: the HEAD commit, the uncommitted diff and the .config are
embedded; from an empty folder the script clones the repository at that commit, applies the diff, rebuilds with
that .config (checked by sha256 like the series recipe) and reruns the case on that kernel."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from tests.gitcmd import git
from harness.kernel import change
from tests.unit.test_reproduce import a_run, sh


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))


_git = git


def tree_case(tmp_path) -> dict:
    """A repository with a commit and an uncommitted change, and the meta.json of a --tree --build of it."""
    repo = tmp_path / "linux"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "mmu.c").write_text("release(dirty);\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "KVM: x86/mmu: the change")
    (repo / "mmu.c").write_text("release(false);\n")          # the uncommitted mutant
    (repo / "new.h").write_text("#define NEW 1\n")
    ch = change.tree_change(repo)
    art = tmp_path / "art"
    art.mkdir()
    (art / "config").write_text("CONFIG_KVM=m\nCONFIG_SWAP=y\n")
    (art / "bzImage").write_bytes(b"kernel")
    meta = {"source": "tree-build", "release": "7.2.13", "key": "tree-linux-x", "change": ch, "patches": [],
            "config_sha256": hashlib.sha256((art / "config").read_bytes()).hexdigest(), "dir": str(art)}
    (art / "meta.json").write_text(json.dumps(meta))
    return meta


def write_script(tmp_path, meta) -> Path:
    from harness.report.reproduce import reproduce_script
    script = tmp_path / "reproduce.sh"
    script.write_text(reproduce_script(a_run(), meta))
    return script


def test_the_diff_and_config_are_embedded_and_recreated_from_an_empty_folder(tmp_path):
    meta = tree_case(tmp_path)
    script = write_script(tmp_path, meta)
    text = script.read_text()
    assert "release(false);" in text and meta["change"]["head"]["sha"] in text and "(olddefconfig only)" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    r = sh(script, "--check-only", cwd=empty, env={"HARNESS_REPO": "/nonexistent"})
    assert r.returncode == 0, r.stderr
    (work,) = empty.iterdir()
    diff = (work / "change.diff").read_bytes()
    assert hashlib.sha256(diff).hexdigest() == meta["change"]["diff_sha256"]
    assert (work / "tree.config").read_text() == "CONFIG_KVM=m\nCONFIG_SWAP=y\n"
    recipe = json.loads((work / "recipe.json").read_text())["kernel"]
    assert recipe["kind"] == "tree" and recipe["tree"]["commit"] == meta["change"]["head"]["sha"]


def fake_checkout(tmp_path, art: Path) -> tuple[Path, Path]:
    """A checkout whose python logs the rebuild (and what the source it was given holds), prints `art`, and
    logs `-m harness run` (exit 1: a finding); anything else runs the real interpreter."""
    repo = tmp_path / "checkout"
    (repo / "harness").mkdir(parents=True)
    (repo / ".venv/bin").mkdir(parents=True)
    log = tmp_path / "harness.log"
    py = repo / ".venv/bin/python"
    py.write_text(f"""#!/bin/sh
if [ "$1" = -m ] && [ "$2" = harness ]; then shift 2; echo "$*" >> {log}; exit 1; fi
case "$2" in *tree_kernel*) echo "rebuild $(cat "$3/mmu.c") $(cat "$3/new.h") config=$4" >> {log}; echo {art}; exit 0 ;; esac
exec {sys.executable} "$@"
""")
    py.chmod(0o755)
    return repo, log


def test_run_mode_rebuilds_commit_plus_diff_checks_and_reruns(tmp_path):
    meta = tree_case(tmp_path)
    script = write_script(tmp_path, meta)
    checkout, log = fake_checkout(tmp_path, Path(meta["dir"]))
    env = {"HARNESS_REPO": str(checkout), "HARNESS_REPRO_DIR": str(tmp_path / "w"), "HARNESS_RESULTS": ""}
    r = sh(script, cwd=tmp_path, env=env)
    assert r.returncode == 1, r.stderr
    rebuild, run = log.read_text().splitlines()
    assert rebuild == f"rebuild release(false); #define NEW 1 config={tmp_path}/w/tree.config"
    assert run.startswith(f"run {tmp_path}/w/scenario.yaml --kernel {meta['dir']} --seed 4")
    assert "commit, uncommitted diff and .config sha256 match" in r.stderr
    assert _git(Path(meta["change"]["path"]), "status", "--porcelain") == "M mmu.c\n?? new.h".strip()


def test_run_mode_refuses_a_config_that_differs(tmp_path):
    meta = tree_case(tmp_path)
    script = write_script(tmp_path, meta)
    (Path(meta["dir"]) / "config").write_text("CONFIG_KVM=y\n")      # what the rebuild "made"
    checkout, _ = fake_checkout(tmp_path, Path(meta["dir"]))
    r = sh(script, cwd=tmp_path, env={"HARNESS_REPO": str(checkout), "HARNESS_REPRO_DIR": str(tmp_path / "w")})
    assert r.returncode == 2 and "built .config sha256" in r.stderr


def test_run_mode_names_a_missing_commit(tmp_path):
    meta = tree_case(tmp_path)
    script = write_script(tmp_path, meta)
    other = tmp_path / "other"
    other.mkdir()
    _git(other, "init", "-q")
    checkout, _ = fake_checkout(tmp_path, Path(meta["dir"]))
    r = sh(script, cwd=tmp_path, env={"HARNESS_REPO": str(checkout), "HARNESS_REPRO_DIR": str(tmp_path / "w"),
                                      "HARNESS_TREE_GIT": str(other)})
    assert r.returncode == 2 and "is not in" in r.stderr and "HARNESS_TREE_GIT" in r.stderr
