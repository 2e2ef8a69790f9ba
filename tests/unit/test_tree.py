"""A developer's own kernel (harness.kernel.tree, treebuild, change): the .config check, the change's identity,
the working-tree copy, module trees in any compression, and the options that go together."""
from __future__ import annotations

import argparse
import gzip
import json
import lzma
import subprocess
from pathlib import Path

import pytest

from tests.gitcmd import git
from harness.errors import InputError
from harness.kernel import change, kconfig, tree

BZ = b"\0" * 0x202 + b"HdrS" + b"\0" * 64        # the x86 boot protocol's magic, where a bzImage has it
GOOD_CONFIG = "CONFIG_VIRTUALIZATION=y\nCONFIG_KVM=m\nCONFIG_KVM_AMD=m\nCONFIG_KVM_INTEL=m\nCONFIG_MODULES=y\nCONFIG_SWAP=y" + "\n"


# ---------------------------------------------------------------------------------------------- .config check
@pytest.mark.parametrize("asked,got,ok", [
    ("y", "y", True), ("y", "m", True), ("y", None, False), ("y", "n", False),
    ("m", "m", True), ("m", "y", False), ("m", None, False),       # kvm is loaded with parameters: a module
    ('"abc"', '"abc"', True), ("42", "43", False),
])
def test_satisfied(asked, got, ok):
    assert tree.satisfied(asked, got) is ok


def test_required_requests_skip_not_set_and_speed_only():
    reqs = tree.required_requests([("f", "CONFIG_KVM=m\n# CONFIG_DRM is not set\nCONFIG_DEBUG_INFO_NONE=y\n")])
    assert [(r.symbol, r.value) for r in reqs] == [("CONFIG_KVM", "m")]


def test_config_gaps_one_line_per_symbol_with_the_fix():
    reqs = tree.required_requests([("kvm-host.config", "CONFIG_KVM=m\nCONFIG_SWAP=y\nCONFIG_ZRAM=m\n"),
                                   ("tracing.config", "CONFIG_KPROBES=y\n")])
    gaps = tree.config_gaps("CONFIG_KVM=y\nCONFIG_SWAP=y\n# CONFIG_KPROBES is not set\n", reqs, "/t/.config")
    assert gaps == [
        "CONFIG_KVM: needs m (kvm-host.config), .config has y; fix: scripts/config --file /t/.config --module KVM",
        ("CONFIG_ZRAM: needs m (kvm-host.config), .config has absent; fix: scripts/config --file /t/.config "
        "--module ZRAM"),
        ("CONFIG_KPROBES: needs y (tracing.config), .config has not set; fix: scripts/config --file /t/.config "
        "--enable KPROBES")]


def test_fix_command_for_a_value():
    r = kconfig.Request("CONFIG_NR_CPUS", "64", "f")
    assert tree.fix_command(".config", r) == "scripts/config --file .config --set-val NR_CPUS 64"


def test_check_config_against_the_real_fragments(tmp_path):
    cfg = tmp_path / ".config"
    cfg.write_text(GOOD_CONFIG)
    with pytest.raises(InputError) as e:
        tree.check_config(cfg)
    msg = str(e.value)
    assert "CONFIG_ZRAM: needs m" in msg and "CONFIG_KPROBE_EVENTS: needs y" in msg
    assert "CONFIG_KVM:" not in msg and "CONFIG_DRM" not in msg and "merge_config.sh" in msg
    reqs = tree.required_requests(tree.fragment_texts())
    cfg.write_text("".join(f"{r.symbol}={r.value}\n" for r in reqs))
    tree.check_config(cfg)                     # everything the harness needs: no error


# ---------------------------------------------------------------------------------------------- the change
def test_parse_log():
    text = "a" * 40 + "\x1fKVM: x86: fix\x1fDev <d@x>\x1e\n" + "b" * 40 + "\x1fsubject; with \x1fAnn <a@x>\x1e\n"
    assert change.parse_log(text) == [{"sha": "a" * 40, "subject": "KVM: x86: fix", "author": "Dev <d@x>"},
                                      {"sha": "b" * 40, "subject": "subject; with ", "author": "Ann <a@x>"}]


@pytest.mark.parametrize("ch,patches,want", [
    (None, [], "none (unpatched kernel)"),
    (None, [{"subject": "one"}], "one"),
    (None, [{"subject": "one"}, {"subject": "two"}], "2 patches: 1/2 one; 2/2 two"),
    ({"kind": "tree", "repo": "linux", "describe": "v7.2-3-gabc-dirty", "head": {"sha": "abc", "subject": "s"},
      "base": "v7.2", "commits": [{"sha": "1" * 40, "subject": "a"}, {"sha": "2" * 40, "subject": "b"}],
      "diff_sha256": "f" * 64, "diff_files": 2}, [],
     ("linux v7.2-3-gabc-dirty (s); 2 commits since v7.2: 111111111111 a; 222222222222 b; "
     "+ uncommitted diff sha256 ffffffffffffffff (2 file(s))")),
])
def test_change_label(ch, patches, want):
    assert change.change_label(ch, patches) == want


_git = git


@pytest.fixture
def repo(tmp_path):
    r = tmp_path / "linux"
    r.mkdir()
    _git(r, "init", "-q")
    (r / ".gitignore").write_text("*.o\n.config\n")
    (r / "Makefile").write_text("VERSION = 7\nPATCHLEVEL = 2\n")
    (r / "a.c").write_text("int a;\n")
    _git(r, "add", "-A")
    _git(r, "commit", "-q", "-m", "base")
    _git(r, "tag", "v0")
    (r / "a.c").write_text("int a = 1;\n")
    _git(r, "commit", "-q", "-am", "KVM: one")
    (r / "b.c").write_text("int b;\n")
    _git(r, "add", "b.c")
    _git(r, "commit", "-q", "-m", "KVM: two")
    return r


def test_tree_change_clean_then_dirty_never_writes(repo):
    idx = (repo / ".git/index").read_bytes()
    c = change.tree_change(repo, "v0")
    assert c["repo"] == "linux" and c["head"]["subject"] == "KVM: two" and c["diff_sha256"] is None
    assert [x["subject"] for x in c["commits"]] == ["KVM: one", "KVM: two"]
    (repo / "a.c").write_text("int a = 2;\n")          # tracked change
    (repo / "new.c").write_text("int n;\n")            # untracked, not ignored: part of the build
    (repo / "x.o").write_text("obj")                   # ignored: not
    d = change.tree_change(repo)
    assert d["describe"].endswith("-dirty") and d["diff_files"] == 2
    assert "+int a = 2;" in d["diff"] and "new file mode" in d["diff"] and "x.o" not in d["diff"]
    assert d["diff_sha256"] == __import__("hashlib").sha256(d["diff"].encode()).hexdigest()
    assert (repo / ".git/index").read_bytes() == idx   # nothing written, not even the index
    # the embedded diff recreates the working tree on a checkout of HEAD
    clone = repo.parent / "clone"
    _git(repo.parent, "clone", "-q", str(repo), str(clone))
    (clone / "change.diff").write_text(d["diff"])
    _git(clone, "apply", "--binary", "change.diff")
    assert (clone / "a.c").read_text() == "int a = 2;\n" and (clone / "new.c").read_text() == "int n;\n"


def test_commits_between_bad_ref(repo):
    with pytest.raises(InputError, match="no commit 'nope'"):
        change.commits_between(repo, "nope")


# the working-tree copy (plan_sync, sync_tree, repo_key): tests/unit/test_treesync.py


# ---------------------------------------------------------------------------------------------- modules
@pytest.mark.parametrize("suffix,pack", [
    (".zst", lambda b: subprocess.run(["zstd", "-q", "-c"], input=b, capture_output=True, check=True).stdout),
    (".gz", gzip.compress), (".xz", lzma.compress), ("", lambda b: b)])
def test_normalize_modules_any_compression(tmp_path, suffix, pack):
    rel = "7.2.13"
    mdir = tmp_path / "lib/modules" / rel / "kernel/arch/x86/kvm"
    mdir.mkdir(parents=True)
    (mdir / f"kvm.ko{suffix}").write_bytes(pack(b"\x7fELF fake module"))
    n = tree.normalize_modules(tmp_path, rel)
    assert n == (1 if suffix else 0)
    assert (mdir / "kvm.ko").read_bytes() == b"\x7fELF fake module" and not (mdir / f"kvm.ko{suffix}").exists() \
        or not suffix
    assert (tmp_path / "lib/modules" / rel / "modules.dep").is_file()


def test_corrupt_compressed_module_is_input_error(tmp_path):
    mdir = tmp_path / "lib/modules/7.2/kernel"
    mdir.mkdir(parents=True)
    (mdir / "kvm.ko.gz").write_bytes(b"not gzip")
    with pytest.raises(InputError, match="cannot be decompressed"):
        tree.normalize_modules(tmp_path, "7.2")


FAKE_MAKEFILE = """\
modules_install:
\tmkdir -p $(INSTALL_MOD_PATH)/lib/modules/7.2.13/kernel/arch/x86/kvm
\tprintf 'fake' | zstd -q -c > $(INSTALL_MOD_PATH)/lib/modules/7.2.13/kernel/arch/x86/kvm/kvm.ko.zst
"""


def _built_tree(tmp_path: Path, config: str) -> Path:
    t = tmp_path / "linux"
    (t / "arch/x86/boot").mkdir(parents=True)
    (t / "include/config").mkdir(parents=True)
    (t / "Kconfig").write_text("")
    (t / "Makefile").write_text(FAKE_MAKEFILE)
    (t / "arch/x86/boot/bzImage").write_bytes(b"bz")
    (t / "include/config/kernel.release").write_text("7.2.13\n")
    (t / "modules.order").write_text("arch/x86/kvm/kvm.o\n")
    (t / ".config").write_text(config)
    return t


def test_built_tree_with_zstd_modules_becomes_an_artifact(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    reqs = tree.required_requests(tree.fragment_texts())
    t = _built_tree(tmp_path, "".join(f"{r.symbol}={r.value}\n" for r in reqs) + "CONFIG_MODULE_COMPRESS_ZSTD=y\n")
    art = tree.tree_kernel(t, build=False)
    meta = json.loads((art / "meta.json").read_text())
    assert meta["source"] == "tree" and meta["release"] == "7.2.13" and meta["modules_decompressed"] == 1
    assert (art / "modules/lib/modules/7.2.13/kernel/arch/x86/kvm/kvm.ko").read_bytes() == b"fake"
    assert (art / "bzImage").read_bytes() == b"bz" and meta["change"]["repo"] == "linux"
    assert tree.tree_kernel(t, build=False) == art          # same tree, same artifact
    (t / "arch/x86/kvm").mkdir(parents=True)
    (t / "arch/x86/kvm/kvm.ko").write_bytes(b"rebuilt")      # a module rebuilt, the bzImage unchanged
    assert tree.tree_kernel(t, build=False) != art


def test_built_tree_missing_symbols_is_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    t = _built_tree(tmp_path, GOOD_CONFIG)
    with pytest.raises(InputError) as e:
        tree.tree_kernel(t, build=False)
    assert e.value.exit_code == 2 and "CONFIG_ZRAM: needs m" in str(e.value)


def test_external_bzimage_with_a_gzip_modules_tarball(tmp_path, monkeypatch):
    import tarfile
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    staging = tmp_path / "staging/lib/modules/7.2.13/kernel"
    staging.mkdir(parents=True)
    (staging / "kvm.ko.gz").write_bytes(gzip.compress(b"mod"))
    (staging.parent / "modules.order").write_text("kernel/kvm.ko\n")
    tb = tmp_path / "modules.tar.xz"
    with tarfile.open(tb, "w:xz") as tf:
        tf.add(tmp_path / "staging/lib", arcname="lib")
    bz = tmp_path / "out/bzImage"
    bz.parent.mkdir()
    bz.write_bytes(BZ)
    art = tree.external_kernel(bz, tb)
    assert (art / "modules/lib/modules/7.2.13/kernel/kvm.ko").read_bytes() == b"mod"
    with pytest.raises(InputError, match="--modules"):
        tree.external_kernel(bz, None)
    (tmp_path / "notes.txt").write_text("not a kernel")
    with pytest.raises(InputError, match="not a bzImage"):
        tree.external_kernel(tmp_path / "notes.txt", tb)


# ---------------------------------------------------------------------------------------------- options
def _run_args(**kw):
    base = {"cmd": "run", "scenario": None, "kernel": None, "build": None, "tree": None, "defconfig": None, "base": None,
                "modules": None, "upto": None}
    return argparse.Namespace(**(base | kw))


@pytest.mark.parametrize("kw,err", [
    ({"build": tree.TREE_BUILD}, "--build needs a KERNEL.yaml"),
    ({"tree": "/t", "kernel": "k"}, "give one"),
    ({"tree": "/t", "upto": 1}, "--upto N goes with --build KERNEL.yaml"),
    ({"defconfig": "x"}, "--defconfig goes with --tree"),
    ({"base": "v1"}, "--base goes with --tree"),
    ({"modules": "m"}, "--modules goes with --kernel BZIMAGE"),
    ({"tree": "/t", "build": "x.yaml", "scenario": "default"}, "takes no value"),
])
def test_fix_args_rejects(kw, err):
    with pytest.raises(InputError, match=err):
        tree.fix_args(_run_args(**kw))


def test_fix_args_tree_build_scenario_and_kernel_as_a_tree(tmp_path):
    a = _run_args(tree="/t", build="default")
    tree.fix_args(a)
    assert (a.scenario, a.build) == ("default", tree.TREE_BUILD)
    t = _built_tree(tmp_path, GOOD_CONFIG)
    (t / "arch/x86/Kconfig").write_text("")
    a = _run_args(kernel=str(t))
    tree.fix_args(a)
    assert (a.tree, a.kernel) == (str(t), None)
    a = _run_args(kernel=str(t / "arch/x86/boot/bzImage"))    # a bzImage inside a built tree: that tree
    tree.fix_args(a)
    assert a.tree == str(t)


def test_bisect_args():
    a = argparse.Namespace(cmd="bisect", git="/r", kernel_yaml="default", scenario=None, good="v1", bad=None,
                           defconfig=None)
    tree.fix_args(a)
    assert (a.scenario, a.kernel_yaml) == ("default", None)
    with pytest.raises(InputError, match="--good"):
        tree.fix_args(argparse.Namespace(cmd="bisect", git="/r", kernel_yaml=None, scenario=None, good=None))
    with pytest.raises(InputError, match="KERNEL.yaml"):
        tree.fix_args(argparse.Namespace(cmd="bisect", git=None, kernel_yaml=None, scenario=None, good=None))
