"""Series reading and application on a tiny git repository (patches made with git format-patch)."""
import subprocess
from pathlib import Path

import pytest

from harness.errors import InputError
from harness.kernel import series
from harness.kernel.source import load_kernel_yaml

ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def sh(*args, cwd):
    import os
    return subprocess.run(list(args), cwd=cwd, check=True, capture_output=True, text=True,
                          env=dict(os.environ, **ENV)).stdout.strip()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def repo(tmp_path):
    """A 'kernel' with two files; returns (tree, base commit, patch folder with 3 patches)."""
    r = tmp_path / "upstream"
    (r / "arch/x86/kvm/mmu").mkdir(parents=True)
    (r / "arch/x86/kvm/mmu/tdp_mmu.c").write_text("".join(f"line {i}\n" for i in range(1, 21)))
    (r / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 117\nEXTRAVERSION =\n")
    sh("git", "init", "-q", cwd=r)
    sh("git", "add", ".", cwd=r)
    sh("git", "commit", "-q", "-m", "base", cwd=r)
    base = sh("git", "rev-parse", "HEAD", cwd=r)
    f = r / "arch/x86/kvm/mmu/tdp_mmu.c"
    for n, (old, new) in enumerate([("line 3\n", "line three\n"), ("line 10\n", "line ten\n"),
                                    ("line 17\n", "line seventeen\n")], 1):
        f.write_text(f.read_text().replace(old, new))
        (r / f"extra{n}.txt").write_text(f"{n}\n")
        sh("git", "add", ".", cwd=r)
        sh("git", "commit", "-q", "-m", f"KVM: x86/mmu: change number {n}", cwd=r)
    pdir = tmp_path / "patches"
    sh("git", "format-patch", "-q", "-o", str(pdir), base, cwd=r)
    # the tree the harness works on: a clone at base (like cache/src/<base>)
    tree = tmp_path / "tree"
    sh("git", "clone", "-q", str(r), str(tree), cwd=tmp_path)
    sh("git", "checkout", "-q", "--detach", base, cwd=tree)
    return tree, base, pdir


def test_parse_series_file():
    text = "# comment\n0001-a.patch\n\n  0002-b.patch -p1 # trailing\n#0003-c.patch\n"
    assert series.parse_series_file(text) == ["0001-a.patch", "0002-b.patch"]


def test_patch_subject():
    assert series.patch_subject("From: x\nSubject: [PATCH v2 3/7] KVM: x86/mmu: fix\n the thing\n\nbody\n") \
        == "KVM: x86/mmu: fix the thing"
    assert series.patch_subject("diff --git a/x b/x\n") == "diff --git a/x b/x"


def test_first_failure():
    out = "Applying: x\nerror: patch failed: arch/x86/kvm/mmu/tdp_mmu.c:42\nerror: arch/x86/kvm/mmu/tdp_mmu.c: " \
          "patch does not apply\nPatch failed at 0001 x\n"
    assert series.first_failure(out) == "patch failed: arch/x86/kvm/mmu/tdp_mmu.c:42"


def test_read_folder_sorted_and_by_series_file(repo):
    _, _, pdir = repo
    ps = series.read_folder(pdir)
    assert [p.subject for p in ps] == [f"KVM: x86/mmu: change number {n}" for n in (1, 2, 3)]
    assert all(len(p.sha256) == 64 for p in ps)
    names = sorted(x.name for x in pdir.glob("*.patch"))
    (pdir / "series").write_text(f"{names[1]}\n{names[0]}\n")
    assert [p.name for p in series.read_folder(pdir)] == [names[1], names[0]]


def test_series_file_names_a_missing_patch(repo):
    _, _, pdir = repo
    (pdir / "series").write_text("0001-does-not-exist.patch\n")
    with pytest.raises(InputError, match="0001-does-not-exist.patch"):
        series.read_folder(pdir)


def test_read_mbox(repo, tmp_path):
    _, _, pdir = repo
    mbox = tmp_path / "series.mbox"
    mbox.write_text("".join(p.read_text() for p in sorted(pdir.glob("*.patch"))))
    ps = series.read_mbox(mbox)
    assert [p.subject for p in ps] == [f"KVM: x86/mmu: change number {n}" for n in (1, 2, 3)]
    assert ps[0].name == "series.mbox#1"


def test_read_series_from_yaml(repo, tmp_path):
    _, _, pdir = repo
    y = tmp_path / "K.yaml"
    y.write_text("base: {debian-source: '6.12'}\nseries: patches\n")
    assert len(series.read_series(load_kernel_yaml(y))) == 3
    y.write_text("base: {debian-source: '6.12'}\nseries: nope\n")
    with pytest.raises(InputError, match="series not found"):
        series.read_series(load_kernel_yaml(y))


def test_b4_without_b4_or_network_is_a_clear_input_error(monkeypatch):
    monkeypatch.setattr(series.shutil, "which", lambda name: None)
    with pytest.raises(InputError, match="b4 is not installed"):
        series.read_b4("<20240101.1234-1-someone@example.org>")


def test_select_upto():
    ps = ["a", "b", "c"]
    assert series.select(ps, None) == ps and series.select(ps, 2) == ["a", "b"] and series.select(ps, 0) == []
    with pytest.raises(InputError, match="upto 4"):
        series.select(ps, 4)


def test_stack_hash_depends_on_order():
    a = series.Patch(Path("a"), "a", "s", "1" * 64)
    b = series.Patch(Path("b"), "b", "s", "2" * 64)
    assert series.stack_hash([a, b]) != series.stack_hash([b, a])
    assert series.stack_hash([a]) == series.stack_hash([a])


def test_apply_all_then_upto_then_back(repo):
    tree, base, pdir = repo
    ps = series.read_folder(pdir)
    c3 = series.apply_stack(tree, base, ps, log=lambda m: None)
    txt = (tree / "arch/x86/kvm/mmu/tdp_mmu.c").read_text()
    assert "line three" in txt and "line ten" in txt and "line seventeen" in txt
    c1 = series.apply_stack(tree, base, ps[:1], log=lambda m: None)
    txt = (tree / "arch/x86/kvm/mmu/tdp_mmu.c").read_text()
    assert "line three" in txt and "line ten" not in txt and not (tree / "extra2.txt").exists()
    assert series.apply_stack(tree, base, [], log=lambda m: None) == base
    assert "line three" not in (tree / "arch/x86/kvm/mmu/tdp_mmu.c").read_text()
    # a remembered stack comes back as the same commit
    assert series.apply_stack(tree, base, ps, log=lambda m: None) == c3
    assert series.apply_stack(tree, base, ps[:1], log=lambda m: None) == c1


def test_switching_stacks_keeps_mtime_of_untouched_files(repo):
    import os
    tree, base, pdir = repo
    ps = series.read_folder(pdir)
    series.apply_stack(tree, base, ps[:1], log=lambda m: None)
    mk = tree / "Makefile"
    os.utime(mk, (1_000_000, 1_000_000))
    series.apply_stack(tree, base, ps, log=lambda m: None)
    series.apply_stack(tree, base, ps[:1], log=lambda m: None)
    assert mk.stat().st_mtime == 1_000_000


def test_failing_patch_names_it_and_leaves_tree_clean(repo):
    tree, base, pdir = repo
    ps = series.read_folder(pdir)
    # conflict: base already changed the lines patch 2 touches
    f = tree / "arch/x86/kvm/mmu/tdp_mmu.c"
    f.write_text(f.read_text().replace("line 10\n", "line TEN (local)\n").replace("line 9\n", "line NINE\n"))
    sh("git", "commit", "-q", "-am", "local change", cwd=tree)
    newbase = sh("git", "rev-parse", "HEAD", cwd=tree)
    with pytest.raises(InputError) as e:
        series.apply_stack(tree, newbase, ps, log=lambda m: None)
    msg = str(e.value)
    assert ps[1].name in msg and "change number 2" in msg and "tdp_mmu.c" in msg and "2/3" in msg
    assert "\n" not in msg
    # clean, at base, no am in progress; the next attempt works
    assert sh("git", "status", "--porcelain", cwd=tree) == ""
    assert sh("git", "rev-parse", "HEAD", cwd=tree) == newbase
    assert not (Path(sh("git", "rev-parse", "--absolute-git-dir", cwd=tree)) / "rebase-apply").exists()
    assert series.apply_stack(tree, newbase, ps[:1], log=lambda m: None) != newbase


def test_garbage_left_in_tree_is_cleaned(repo):
    tree, base, pdir = repo
    (tree / "stray.o").write_text("x")
    (tree / "Makefile").write_text("edited\n")
    series.apply_stack(tree, base, [], log=lambda m: None)
    assert not (tree / "stray.o").exists() and "VERSION" in (tree / "Makefile").read_text()


def test_fixture_patch_reads():
    root = Path(__file__).resolve().parents[2]
    [p] = series.read_folder(root / "tests/fixtures/patches/tdp-oneline")
    assert "tdp_mmu.c" in p.path.read_text() and p.subject.startswith("KVM: x86/mmu:")
