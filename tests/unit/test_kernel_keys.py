"""Cache keys: stable, and sensitive to exactly the inputs they should be."""
from harness.kernel.build import artifact_key, input_key, objtree_key

P = ["a" * 64, "b" * 64]


def test_artifact_key_stable_and_readable():
    k = artifact_key("debian-6.12-585a4a074597", P, "c" * 64)
    assert k == artifact_key("debian-6.12-585a4a074597", list(P), "c" * 64)
    assert k.startswith("debian-6.12-585a4a074597-p2-")


def test_artifact_key_changes_with_each_input():
    k = artifact_key("base", P, "c" * 64)
    assert k != artifact_key("base2", P, "c" * 64)
    assert k != artifact_key("base", P[::-1], "c" * 64)       # order matters
    assert k != artifact_key("base", P[:1], "c" * 64)         # upto
    assert k != artifact_key("base", P, "d" * 64)             # config


def test_objtree_key_ignores_patches():
    assert objtree_key("base", "c" * 64) == objtree_key("base", "c" * 64)
    assert objtree_key("base", "c" * 64) != objtree_key("base", "d" * 64)


def test_input_key():
    args = ("base", P, "x86_64_defconfig", [("kvm-host.config", "CONFIG_KVM=m\n")], ["CC=ccache gcc"], "gcc 12")
    k = input_key(*args)
    assert k == input_key(*args)
    assert k != input_key("base", P, "x86_64_defconfig", [("kvm-host.config", "CONFIG_KVM=y\n")],
                          ["CC=ccache gcc"], "gcc 12")
    assert k != input_key("base", P, "x86_64_defconfig", args[3], [], "gcc 12")
    assert k != input_key("base", P, "x86_64_defconfig", args[3], args[4], "gcc 13")


def test_bench_patch_applies(tmp_path, monkeypatch):
    """The bench's generated one-line tdp_mmu.c patch applies with git am on a base tree."""
    import os
    import subprocess

    from harness.kernel import series
    from harness.kernel.build import BENCH_FILE, _oneline_patch
    from harness.kernel.source import SourceTree

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    t = tmp_path / "tree"
    f = t / BENCH_FILE
    f.parent.mkdir(parents=True)
    f.write_text("// SPDX\n#define pr_fmt(fmt) fmt\n\n#include \"mmu.h\"\n#include \"x.h\"\n\nint x;\n")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "base"]):
        subprocess.run(cmd, cwd=t, check=True, env=env, capture_output=True)
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=t, capture_output=True, text=True).stdout.strip()
    p = tmp_path / "bench.patch"
    p.write_text(_oneline_patch(SourceTree(t, base, {"id": "x"}), "M1"))
    patch = series._patch(p, p.name)
    assert patch.subject == "KVM: x86/mmu: bench marker M1"
    series.apply_stack(t, base, [patch], log=lambda m: None)
    assert "/* harness bench marker M1 */\n#include \"mmu.h\"" in f.read_text()
