"""Bases on tiny trees: tarball -> git work tree with a fixed base commit; local git tree at a ref."""
import subprocess
import tarfile

import pytest

from harness.errors import InputError
from harness.kernel import series
from harness.kernel.source import base_identity, load_kernel_yaml, makefile_version, prepare_source

MAKEFILE = "# SPDX\nVERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 117\nEXTRAVERSION = -rc1\nNAME = Baby Opossum\n"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))


def _tree(root):
    (root / "kernel").mkdir(parents=True)
    (root / "Makefile").write_text(MAKEFILE)
    (root / "kernel/a.c").write_text("int a;\n")
    (root / ".gitignore").write_text("*.o\n")
    (root / "kernel/keep.o").write_text("shipped on purpose\n")    # ignored by .gitignore, still part of the base


def test_makefile_version(tmp_path):
    (tmp_path / "Makefile").write_text(MAKEFILE)
    assert makefile_version(tmp_path) == "6.12.117-rc1"


def test_tarball_base(tmp_path):
    src = tmp_path / "linux-6.12"
    _tree(src)
    tb = tmp_path / "linux.tar.gz"
    with tarfile.open(tb, "w:gz") as t:
        t.add(src, arcname="linux-6.12")
    y = tmp_path / "K.yaml"
    y.write_text("base: {tarball: linux.tar.gz}\n")
    ki = load_kernel_yaml(y)
    ident = base_identity(ki)
    assert ident["kind"] == "tarball" and ident["id"].startswith("tarball-") and len(ident["sha256"]) == 64
    tree = prepare_source(ki, log=lambda m: None)
    assert (tree.path / "Makefile").read_text() == MAKEFILE
    assert (tree.path / "kernel/keep.o").is_file()
    assert tree.identity["version"] == "6.12.117-rc1"
    st = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=tree.path, capture_output=True,
                        text=True).stdout
    assert st == ""
    # the same tarball again: same tree, same base commit (fixed author/date)
    again = prepare_source(ki, log=lambda m: None)
    assert again.path == tree.path and again.base_commit == tree.base_commit
    assert series.apply_stack(tree.path, tree.base_commit, [], log=lambda m: None) == tree.base_commit


def test_local_git_base_at_ref(tmp_path):
    r = tmp_path / "linux"
    _tree(r)
    env = dict(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    import os
    run = lambda *a: subprocess.run(a, cwd=r, check=True, capture_output=True, text=True,  # noqa: E731
                                    env=dict(os.environ, **env)).stdout.strip()
    run("git", "init", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "v1")
    run("git", "tag", "v1")
    (r / "kernel/a.c").write_text("int a = 2;\n")
    run("git", "commit", "-q", "-am", "v2")
    y = tmp_path / "K.yaml"
    y.write_text("base: {git: linux, ref: v1}\n")
    ki = load_kernel_yaml(y)
    ident = base_identity(ki)
    assert ident["commit"] == run("git", "rev-parse", "v1^{commit}")
    tree = prepare_source(ki, log=lambda m: None)
    assert (tree.path / "kernel/a.c").read_text() == "int a;\n" and tree.base_commit == ident["commit"]
    y.write_text("base: {git: linux, ref: no-such-ref}\n")
    with pytest.raises(InputError, match="no-such-ref"):
        base_identity(load_kernel_yaml(y))
