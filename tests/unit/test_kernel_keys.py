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
