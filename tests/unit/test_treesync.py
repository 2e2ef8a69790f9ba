"""The working tree's copy in the cache (harness.kernel.treebuild): one copy per repository (repo_key), synced
by content so that make, in the object folder every clone shares, rebuilds only what differs."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.gitcmd import git
from harness.errors import InputError
from harness.kernel import treebuild


_git = git


@pytest.fixture
def repo(tmp_path):
    r = tmp_path / "linux"
    r.mkdir()
    _git(r, "init", "-q")
    (r / ".gitignore").write_text("*.o\n.config\n")
    (r / "Makefile").write_text("VERSION = 7\nPATCHLEVEL = 2\n")
    (r / "a.c").write_text("int a;\n")
    (r / "b.c").write_text("int b;\n")
    _git(r, "add", "-A")
    _git(r, "commit", "-q", "-m", "Linux-2.6.12-rc2")
    (r / "a.c").write_text("int a = 1;\n")
    _git(r, "commit", "-q", "-am", "KVM: one")
    return r


def _sync(src: Path, dest: Path) -> dict:
    dest.mkdir(exist_ok=True)
    return treebuild.sync_tree(src, dest, treebuild.tree_files(src))


def _backdate(p: Path, seconds: int = 1000) -> int:
    """Give p an old mtime (an object built after it would be newer); returns it."""
    t = time.time_ns() - seconds * 10**9
    os.utime(p, ns=(t, t), follow_symlinks=False)
    return t


# ---------------------------------------------------------------------------------------------- the key
@pytest.mark.parametrize("sha,subject,want", [
    ("1da177e4c3f41524e886b7f1b8a0c1fc7321cac2", "Linux-2.6.12-rc2", "tree-Linux-2.6.12-rc2-1da177e4c3f4"),
    ("acc29107fc6d48863ef356cab10822e338b5f40d", "base", "tree-base-acc29107fc6d"),
    ("ab" * 20, "KVM: x86/mmu: a long subject, longer than a name", "tree-KVM__x86_mmu__a_long_sub-abababababab"),
    ("cd" * 20, "  ...  ", "tree-repo-cdcdcdcdcdcd"),
])
def test_repo_key_name(sha, subject, want):
    assert treebuild.repo_key_name(sha, subject) == want


def test_repo_key_is_the_same_in_every_clone_and_branch(repo, tmp_path):
    key = treebuild.repo_key(repo)
    assert key.startswith("tree-Linux-2.6.12-rc2-")
    clone = tmp_path / "elsewhere" / "src"                    # as the reproducer names its clone
    clone.parent.mkdir()
    _git(tmp_path, "clone", "-q", "--shared", str(repo), str(clone))
    _git(clone, "checkout", "-q", "-b", "topic", "HEAD~1")
    (clone / "c.c").write_text("int c;\n")
    _git(clone, "add", "c.c")
    _git(clone, "commit", "-q", "-m", "KVM: topic")
    assert treebuild.repo_key(clone) == key
    other = tmp_path / "other"
    other.mkdir()
    _git(other, "init", "-q")
    (other / "x").write_text("x\n")
    _git(other, "add", "x")
    _git(other, "commit", "-q", "-m", "Linux-2.6.12-rc2")        # same subject, another history
    assert treebuild.repo_key(other) != key


def test_repo_key_without_a_commit_is_an_input_error(tmp_path):
    _git(tmp_path, "init", "-q")
    with pytest.raises(InputError, match="root commit"):
        treebuild.repo_key(tmp_path)


# ---------------------------------------------------------------------------------------------- plan_sync
F = ("file", 7, 100, 0o644)


@pytest.mark.parametrize("src,dst,seen,want", [
    ({"a": F}, {}, {}, (["a"], [], [])),                                              # new
    ({"a": F}, {"a": F}, {}, ([], [], [])),                        # a copy with the source's stat (copy2)
    ({"a": F}, {"a": ("file", 7, 555, 0o644)}, {"a": [list(F), ["file", 7, 555, 0o644]]}, ([], [], [])),
    ({"a": ("file", 7, 200, 0o644)}, {"a": ("file", 7, 555, 0o644)},                  # touched: content decides
     {"a": [list(F), ["file", 7, 555, 0o644]]}, ([], ["a"], [])),
    ({"a": F}, {"a": ("file", 7, 999, 0o644)},                                        # the copy changed since
     {"a": [list(F), ["file", 7, 555, 0o644]]}, ([], ["a"], [])),
    ({"a": ("file", 7, 100, 0o755)}, {"a": ("file", 7, 555, 0o644)}, {}, ([], ["a"], [])),   # mode only
    ({"a": ("file", 8, 200, 0o644)}, {"a": ("file", 7, 555, 0o644)}, {}, (["a"], [], [])),   # another size
    ({}, {"old": F}, {"old": [list(F), list(F)]}, ([], [], ["old"])),                 # deleted
    ({"l": ("link", "a")}, {"l": ("link", "a")}, {}, ([], [], [])),
    ({"l": ("link", "a")}, {"l": ("link", "b")}, {}, (["l"], [], [])),                # another target
    ({"l": ("link", "a")}, {"l": F}, {}, (["l"], [], [])),                            # a file became a link
    ({"l": F}, {"l": ("link", "a")}, {}, (["l"], [], [])),                            # and back
    ({"d": F}, {"d": ("dir", 7, 100, 0o755)}, {}, (["d"], [], [])),                  # a folder became a file
])
def test_plan_sync(src, dst, seen, want):
    assert treebuild.plan_sync(src, dst, seen) == want


# ---------------------------------------------------------------------------------------------- sync_tree
def test_sync_tree_by_content(repo, tmp_path):
    dest = tmp_path / "copy"
    st = _sync(repo, dest)
    assert (st["copied"], st["files"]) == (4, 4) and (dest / "b.c").read_text() == "int b;\n"
    old = {n: _backdate(dest / n) for n in ("a.c", "b.c", "Makefile")}     # as if objects were built since
    st = _sync(repo, dest)                 # the copy changed since the last sync: compared, not rewritten
    assert (st["copied"], st["compared"], st["identical"]) == (0, 3, 3)
    assert (dest / "b.c").stat().st_mtime_ns == old["b.c"]

    (repo / "b.c").write_text("int b;\n")                    # touched, same content: not rewritten
    (repo / "a.c").write_text("int a = 2;\n")                # same size, other content: rewritten, mtime now
    before = time.time_ns()
    st = _sync(repo, dest)
    assert (st["copied"], st["compared"], st["identical"]) == (1, 2, 1)
    assert (dest / "b.c").stat().st_mtime_ns == old["b.c"]
    assert (dest / "a.c").read_text() == "int a = 2;\n" and (dest / "a.c").stat().st_mtime_ns >= before

    (repo / "Makefile").write_text("VERSION = 7\nPATCHLEVEL = 3\nSUBLEVEL = 0\n")   # another size
    (repo / "b.c").unlink()
    _git(repo, "rm", "-q", "--cached", "b.c")
    st = _sync(repo, dest)
    assert (st["copied"], st["deleted"], st["compared"]) == (1, 1, 0) and not (dest / "b.c").exists()
    assert "SUBLEVEL" in (dest / "Makefile").read_text()
    assert (_sync(repo, dest)["copied"], _sync(repo, dest)["compared"]) == (0, 0)   # the manifest: no reads


def test_sync_tree_a_fresh_clone_rewrites_only_what_differs(repo, tmp_path):
    """The reproducer's case: a clone elsewhere, every mtime new; only the diff reaches the copy."""
    dest = tmp_path / "copy"
    _sync(repo, dest)
    old = {n: _backdate(dest / n) for n in ("a.c", "b.c", "Makefile", ".gitignore")}
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(repo), str(clone))
    (clone / "b.c").write_text("int b = 7;\n")               # the uncommitted diff
    st = _sync(clone, dest)
    assert (st["copied"], st["identical"], st["deleted"]) == (1, 3, 0)
    assert {n: (dest / n).stat().st_mtime_ns == t for n, t in old.items()} == {
        "a.c": True, "b.c": False, "Makefile": True, ".gitignore": True}


def test_sync_tree_symlinks_and_modes(repo, tmp_path):
    dest = tmp_path / "copy"
    os.symlink("a.c", repo / "l.c")                           # untracked, not ignored: part of the build
    (repo / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(repo / "run.sh", 0o755)
    st = _sync(repo, dest)
    assert st["copied"] == 6 and os.readlink(dest / "l.c") == "a.c" and os.access(dest / "run.sh", os.X_OK)
    t = _backdate(dest / "run.sh")
    os.chmod(repo / "run.sh", 0o644)                          # a mode change alone: mtime kept
    (repo / "l.c").unlink()
    os.symlink("b.c", repo / "l.c")                           # another target
    st = _sync(repo, dest)
    assert st["copied"] == 1 and os.readlink(dest / "l.c") == "b.c"
    assert not os.access(dest / "run.sh", os.X_OK) and (dest / "run.sh").stat().st_mtime_ns == t
    (repo / "l.c").unlink()
    (repo / "l.c").write_text("int l;\n")                     # the link became a file
    st = _sync(repo, dest)
    assert st["copied"] == 1 and not (dest / "l.c").is_symlink() and (dest / "l.c").read_text() == "int l;\n"
    (repo / "l.c").unlink()
    st = _sync(repo, dest)
    assert st["deleted"] == 1 and not os.path.lexists(dest / "l.c")
    (repo / "d").mkdir()                                      # a folder, then a file of that name
    (repo / "d/x.c").write_text("int x;\n")
    _sync(repo, dest)
    shutil.rmtree(repo / "d")
    (repo / "d").write_text("int d;\n")
    st = _sync(repo, dest)
    assert (st["copied"], st["deleted"]) == (1, 1) and (dest / "d").read_text() == "int d;\n"


def test_sync_tree_keeps_a_copy_made_by_the_first_version(repo, tmp_path):
    """A copy made with copy2 (the source's mtimes) and a names-only manifest: nothing is rewritten."""
    dest = tmp_path / "copy"
    names = treebuild.tree_files(repo)
    for n in names:
        (dest / n).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / n, dest / n)
    dest.with_name("copy.files.json").write_text(json.dumps(names))
    st = treebuild.sync_tree(repo, dest, names)
    assert (st["copied"], st["compared"], st["deleted"]) == (0, 0, 0)
    assert isinstance(json.loads(dest.with_name("copy.files.json").read_text()), dict)


def test_build_tree_takes_a_cached_artifact_without_sync_or_make(repo, tmp_path, monkeypatch):
    """Same commit, diff and configured .config as an artifact in the cache: returned before any sync or make
    (a git-range step or a reproducer of something built); another diff: synced and built."""
    from harness.kernel.build import compiler_version, make_vars
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    (repo / ".config").write_text("CONFIG_KVM=m\n")                # ignored: the developer's own .config
    names = treebuild.tree_files(repo)
    start, _, frags = treebuild.base_config(repo, repo, None)
    mv = make_vars()
    cfg = treebuild.config_cache_path(start, frags, treebuild.kconfig_digest(repo, names), mv, compiler_version())
    cfg.parent.mkdir(parents=True)
    cfg.write_text("CONFIG_KVM=m\nCONFIG_SWAP=y\n")                # as configure() left it
    change = {"head": {"sha": "a" * 40}, "diff_sha256": None}
    art = tmp_path / "cache/kernels" / treebuild.artifact_key(treebuild.repo_key(repo), change, cfg.read_text(), mv)
    art.mkdir(parents=True)
    (art / "meta.json").write_text("{}")
    built = []

    def no_sync(*a):
        raise AssertionError("synced although the artifact is in the cache")
    monkeypatch.setattr(treebuild, "sync_tree", no_sync)
    monkeypatch.setattr(treebuild, "build_source", lambda *a: built.append(a) or tmp_path / "new")
    assert treebuild.build_tree(repo, change, None, lambda m: None) == art and not built
    monkeypatch.undo()
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(treebuild, "build_source", lambda *a: built.append(a) or tmp_path / "new")
    dirty = dict(change, diff_sha256="d" * 64)
    assert treebuild.build_tree(repo, dirty, None, lambda m: None) == tmp_path / "new" and len(built) == 1
    assert (tmp_path / "cache/src" / treebuild.repo_key(repo) / "a.c").is_file()       # synced this time
