"""Config verification is a pure function over .config text."""
from harness.kernel.kconfig import (Mismatch, fragment_requests, kconfig_entry, parse_config, verify_config)

FINAL = """\
#
# Automatically generated file; DO NOT EDIT.
CONFIG_KVM=m
CONFIG_SWAP=y
# CONFIG_DRM is not set
CONFIG_LOCALVERSION=""
CONFIG_NR_CPUS=64
"""


def test_parse_config():
    c = parse_config(FINAL)
    assert c == {"CONFIG_KVM": "m", "CONFIG_SWAP": "y", "CONFIG_DRM": "n", "CONFIG_LOCALVERSION": '""',
                 "CONFIG_NR_CPUS": "64"}


def test_all_met():
    reqs = fragment_requests([("a.config", "CONFIG_KVM=m\nCONFIG_SWAP=y\n# CONFIG_DRM is not set\nCONFIG_NR_CPUS=64\n"
                                           "CONFIG_LOCALVERSION=\"\"\n# CONFIG_SOUND is not set\n")])
    assert verify_config(reqs, FINAL) == []          # SOUND absent counts as not set


def test_value_mismatch_names_symbol_fragment_and_values():
    reqs = fragment_requests([("kvm-host.config", "CONFIG_KVM=y\n")])
    [m] = verify_config(reqs, FINAL)
    assert m == Mismatch("CONFIG_KVM", "kvm-host.config", "y", "m")
    assert "CONFIG_KVM" in m.line() and "kvm-host.config" in m.line() and "asks y" in m.line()


def test_absent_symbol_is_a_mismatch():
    [m] = verify_config(fragment_requests([("t.config", "CONFIG_NO_SUCH_THING=y")]), FINAL)
    assert m.got is None and "absent" in m.line()


def test_not_set_request_fails_when_set():
    [m] = verify_config(fragment_requests([("x.config", "# CONFIG_SWAP is not set")]), FINAL)
    assert (m.asked, m.got) == ("n", "y")


def test_later_fragment_overrides_earlier():
    reqs = fragment_requests([("a.config", "CONFIG_KVM=y\n"), ("b.config", "CONFIG_KVM=m\n")])
    assert [(r.symbol, r.value, r.fragment) for r in reqs] == [("CONFIG_KVM", "m", "b.config")]
    assert verify_config(reqs, FINAL) == []


def test_comments_and_blank_lines_ignored():
    assert fragment_requests([("a", "# just a comment\n\n  \n# CONFIG_X is set to something\n")]) == []


def test_shipped_fragments_parse():
    from pathlib import Path
    root = Path(__file__).resolve().parents[2] / "kconfigs"
    for name in ("kvm-host.config", "tracing.config", "debug-vm.config", "kasan.config"):
        reqs = fragment_requests([(name, (root / name).read_text())])
        assert reqs, name
    kv = {r.symbol: r.value for r in fragment_requests([("k", (root / "kvm-host.config").read_text())])}
    assert kv["CONFIG_KVM"] == "m" and kv["CONFIG_LRU_GEN_ENABLED"] == "y" and kv["CONFIG_MODULE_SIG"] == "n"


KCONFIG = """\
config KASAN_GENERIC
\tbool "Generic KASAN"
\tdepends on HAVE_ARCH_KASAN && CC_HAS_KASAN_GENERIC
\tselect SLUB_DEBUG
\thelp
\t  text

config KASAN_SW_TAGS
\tbool "tags"
\tdepends on ARM64
"""


def test_kconfig_entry():
    body = kconfig_entry(KCONFIG, "KASAN_GENERIC")
    assert any("depends on HAVE_ARCH_KASAN" in ln for ln in body)
    assert not any("ARM64" in ln for ln in body)
    assert kconfig_entry(KCONFIG, "KASAN") is None
