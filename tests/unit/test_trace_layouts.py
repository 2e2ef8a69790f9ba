"""SPTE layouts per kernel version and vendor: the kernels' own headers (excerpts in tests/fixtures/spte/, checked
verbatim against the unpacked trees when they are in the cache), the table for prebuilt kernels, decoding the
same value under both layouts, the checker and the capture choosing the layout."""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.oracles import trace as T
from harness.oracles import trace_spte as S

FIX = Path(__file__).resolve().parents[1] / "fixtures"
SPTE = FIX / "spte"
TRACES = sorted((FIX / "trace").glob("*-amd.txt"))
HEADER_FILES = {"spte.h": S.HEADERS[0], "mmu.h": S.HEADERS[1], "vmx.h": S.HEADERS[2]}
SRC = Path.home() / ".cache/kvm-dirty-harness/src"
TREES = {"6.12.117": "debian-6.12-*", "7.2.13": "debian-7.2-*"}


def header_layout(version: str, vendor: str) -> S.SpteLayout:
    d = SPTE / version
    return S.layout_from_headers((d / "spte.h").read_text(), vendor, (d / "mmu.h").read_text(),
                                 (d / "vmx.h").read_text(), name=f"{version}-{vendor}")


def bits(lay: S.SpteLayout) -> dict:
    return {k: v for k, v in lay.__dict__.items() if k not in ("name", "source")}


def lines(path: Path) -> list[bytes]:
    return [ln for ln in path.read_bytes().split(b"\n") if ln and not ln.startswith(b"#")]


# ---- the fixtures are the real headers' lines ---------------------------------------------------------------------
@pytest.mark.parametrize("version", sorted(TREES))
@pytest.mark.parametrize("name", sorted(HEADER_FILES))
def test_fixture_lines_are_verbatim_from_the_tree(version, name):
    trees = sorted(SRC.glob(TREES[version]))
    trees = [t for t in trees if t.is_dir() and ".tmp-" not in t.name]  # a tree being unpacked is not one
    if not trees:
        pytest.skip(f"no unpacked {version} source under {SRC}")
    real = (trees[0] / HEADER_FILES[name]).read_text().splitlines()
    mine = [ln for ln in (SPTE / version / name).read_text().splitlines()
            if not ln.startswith(("/* Excerpt", " * verbatim"))]
    it = iter(real)
    assert all(any(ln == r for r in it) for ln in mine), f"{name}: a fixture line is not in {trees[0]} (in order)"


# ---- the header parser --------------------------------------------------------------------------------------------
def test_parse_defines_and_evaluate():
    text = ("/* a comment */\n#define A\t\tBIT_ULL(11) // trailing\n#define B (3ULL << A_SHIFT)\n#define A_SHIFT 60\n"
            "#ifdef CONFIG_DYNAMIC_PHYSICAL_MASK\n#define M (physical_mask & ~(u64)(PAGE_SIZE-1))\n#else\n"
            "#define M (((1ULL << 52) - 1) & ~(u64)(PAGE_SIZE-1))\n#endif\n#define F(x) ((x) + 1)\n"
            "#define G GENMASK_ULL(51, \\\n 12)\n")
    d = S.parse_defines(text)
    assert "F" not in d and d["M"][0].startswith("(physical_mask")
    assert S.evaluate("A", d) == 1 << 11
    assert S.evaluate("B", d) == 3 << 60
    assert S.evaluate("M", d) == ((1 << 52) - 1) & ~0xFFF  # the #ifdef body names a variable: the #else one
    assert S.evaluate("G", d) == ((1 << 52) - 1) & ~0xFFF
    assert S.evaluate("nope", d) is None


def test_missing_define_is_an_error():
    with pytest.raises(ValueError, match="SPTE_TDP_AD_MASK"):
        S.layout_from_headers("#define SPTE_MMU_PRESENT_MASK BIT_ULL(11)\n", "intel")


# ---- the bits, read from each version's header --------------------------------------------------------------------
@pytest.mark.parametrize("version,vendor,want", [
    ("6.12.117", "amd", dict(accessed="5", dirty="6", host_writable="9", mmu_writable="10", ad_type="53:52")),
    ("6.12.117", "intel", dict(accessed="8", dirty="9", host_writable="57", mmu_writable="58", ad_type="53:52")),
    ("7.2.13", "amd", dict(accessed="5", dirty="6", host_writable="9", mmu_writable="10", ad_type="61:60")),
    ("7.2.13", "intel", dict(accessed="8", dirty="9", host_writable="53", mmu_writable="55", ad_type="61:60")),
])
def test_header_bits(version, vendor, want):
    b = header_layout(version, vendor).bits()
    assert {k: b[k] for k in want} == want
    assert (b["present"], b["writable"], b["large"], b["pfn"]) == ("11", "1", "7", "51:12")
    assert b["ad_disabled_dirty"] == ("W" if version.startswith("6.12") else "D or W")


@pytest.mark.parametrize("version,era", [("6.12.117", "6.12"), ("7.2.13", "7.2")])
@pytest.mark.parametrize("vendor", ["amd", "intel"])
def test_table_matches_the_headers(version, era, vendor):
    assert bits(S.table_layout(era, vendor)) == bits(header_layout(version, vendor))
    assert bits(S.layout_for_release(version, vendor)) == bits(header_layout(version, vendor))


@pytest.mark.parametrize("release,name", [
    ("6.12.117+deb12-amd64", "6.12-intel"), ("6.1.0", "6.12-intel"), ("6.13.2", "6.13-intel"),
    ("7.1.9", "6.13-intel"), ("7.2.13+deb14-amd64", "7.2-intel"), ("8.0", "7.2-intel"), (None, "6.12-intel"),
    ("weird", "6.12-intel")])
def test_layout_for_release(release, name):
    lay = S.layout_for_release(release, "intel")
    assert lay.name == name and lay.source.startswith("table: kernels ")


def test_default_layout_is_v6_12():
    assert S.layout_of(None, "amd") == S.table_layout("6.12", "amd")
    assert bits(S.layout_of(None, "intel")) == bits(header_layout("6.12.117", "intel"))
    with pytest.raises(ValueError):
        S.layout_of(None, "arm")


# ---- the same value under both layouts ----------------------------------------------------------------------------
L612, L72 = header_layout("6.12.117", "intel"), header_layout("7.2.13", "intel")
PFN = 0x123456
# a writable, accessed, dirty 4K EPT leaf as 7.2's make_spte() builds it: R W X (2:0), A 8, D 9, present 11,
# host-writable 53, MMU-writable 55
EPT72_WD = (PFN << 12) | 0x7 | (1 << 8) | (1 << 9) | (1 << 11) | (1 << 53) | (1 << 55)
# the same SPTE as 6.12 builds it: host-writable 57, MMU-writable 58
EPT612_WD = (PFN << 12) | 0x7 | (1 << 8) | (1 << 9) | (1 << 11) | (1 << 57) | (1 << 58)


def test_writable_dirty_ept_spte_of_7_2():
    s = S.decode_spte(EPT72_WD, layout=L72)
    assert (s.present, s.leaf, s.writable, s.dirty, s.accessed, s.host_writable, s.mmu_writable, s.ad_disabled,
            s.pfn) == (True, True, True, True, True, True, True, False, PFN)
    # read with 6.12's bits: 53 is the high bit of the A/D type there (10 = write-protect only, not disabled), so
    # D still reads as dirty, but nothing says host- or MMU-writable: R2 would never see a writable install
    old = S.decode_spte(EPT72_WD, layout=L612)
    assert (old.dirty, old.host_writable, old.mmu_writable, old.ad_disabled) == (True, False, False, False)
    assert (EPT72_WD & L612.ad_mask) >> 52 == 0b10


def test_writable_dirty_ept_spte_of_6_12():
    s = S.decode_spte(EPT612_WD, layout=L612)
    assert (s.writable, s.dirty, s.host_writable, s.mmu_writable) == (True, True, True, True)
    assert S.decode_spte(EPT612_WD, "intel") == s  # the default layout is 6.12's
    new = S.decode_spte(EPT612_WD, layout=L72)  # 57/58 are unused in 7.2
    assert (new.dirty, new.host_writable, new.mmu_writable) == (True, False, False)


def test_ad_disabled_type_field_moved():
    # 7.2: A/D disabled is 01 in bits 61:60; bit 52 holds access tracking's saved R bit instead
    ad_off_72 = (PFN << 12) | (1 << 11) | (1 << 60) | (1 << 53) | 0x7
    s = S.decode_spte(ad_off_72, layout=L72)
    assert (s.ad_disabled, s.dirty) == (True, True)  # A/D disabled: writable counts as dirty
    assert S.decode_spte(ad_off_72, layout=L612).ad_disabled is False  # 6.12 reads bits 53:52 = 10
    saved_r_72 = (PFN << 12) | (1 << 11) | (1 << 52) | (1 << 9)  # access-tracked, R saved in 52, D kept
    assert S.decode_spte(saved_r_72, layout=L72).ad_disabled is False
    assert S.decode_spte(saved_r_72, layout=L612).ad_disabled is True


def test_soft_ad_bits_since_6_13():
    # an A/D-disabled SPTE with D and without W (write-protected after it was writable)
    raw = (PFN << 12) | (1 << 11) | (1 << 52) | (1 << 9) | (1 << 8) | 0x5
    old = S.decode_spte(raw, layout=S.table_layout("6.12", "intel"))
    new = S.decode_spte(raw, layout=S.table_layout("6.13", "intel"))
    assert (old.dirty, old.accessed) == (False, False)  # <= 6.12: A/D mean nothing there, dirty = writable
    assert (new.dirty, new.accessed) == (True, True)  # >= 6.13: KVM keeps them in software


@pytest.mark.parametrize("layout", [L612, L72, S.table_layout("6.13", "intel"), header_layout("7.2.13", "amd")])
@pytest.mark.parametrize("raw", [EPT72_WD, EPT612_WD, 0x107fa9e67, 0x10ad72a25, (1 << 60) | 0x800 | 0x2,
                                 (1 << 52) | 0x800 | 0x200])
def test_checker_and_decoder_agree_on_dirty(layout, raw):
    assert layout.dirty_test()(raw) == S.decode_spte(raw, layout=layout).dirty


# ---- the checker takes the layout ---------------------------------------------------------------------------------
HEAD = b" qemu-system-x86-323     [000]    384.%06d: "


def ev(us: int, text: str) -> bytes:
    return HEAD % us + text.encode()


def install(new: int, us: int = 1) -> bytes:
    return ev(us, f"kvm_tdp_mmu_spte_changed: as id 0 gfn 3cf8 level 1 old_spte 8000000000000000 new_spte {new:x}")


@pytest.mark.parametrize("value,layout,checked", [(EPT72_WD, L72, 1), (EPT72_WD, L612, 0), (EPT612_WD, L612, 1),
                                                  (EPT612_WD, L72, 0)])
def test_r2_sees_a_writable_install_only_with_the_kernels_bits(value, layout, checked):
    fault = ev(9, "kvm_mmu_spte_requested: gfn 3cf9 pfn 123457 level 1")
    res = T.check_lines([install(value), fault], "intel", "create-time", None, layout=layout)
    assert (res.rules["R2"].checked, res.rules["R2"].violations) == (checked, checked)
    released = [install(value), ev(2, f"dirty_pfn: (kvm_set_pfn_dirty+0x4/0x50 [kvm]) pfn={PFN:#x}"), fault]
    res = T.check_lines(released, "intel", "create-time", None, layout=layout)
    assert (res.rules["R2"].checked, res.rules["R2"].violations) == (checked, 0)


def test_checker_default_and_v6_12_header_layout_are_identical_on_amd():
    """The recorded 6.12 AMD traces judge the same with no layout, v6.12's header layout and 7.2's (NPT's bits
    did not move)."""
    for path in TRACES:
        ls = lines(path)
        for ruleset in ("zap-time", "create-time"):
            want = T.check_lines(ls, "amd", ruleset)
            for lay in (header_layout("6.12.117", "amd"), S.layout_for_release("7.2.13", "amd")):
                got = T.check_lines(ls, "amd", ruleset, layout=lay)
                assert T.rules_json(got) == T.rules_json(want), (path.name, ruleset, lay.name)
                assert got.counts == want.counts and got.lines == want.lines
                assert {r: st.examples for r, st in got.rules.items()} == {r: st.examples for r, st in
                                                                             want.rules.items()}


def test_timelines_take_the_layout():
    gfn = 0x3cf8
    zap = ev(5, f"kvm_tdp_mmu_spte_changed: as id 0 gfn 3cf8 level 1 old_spte {EPT72_WD:x} "
                "new_spte 8000000000000000")
    new = T.timelines([install(EPT72_WD), zap], [gfn], vendor="intel", layout=L72)[gfn]
    old = T.timelines([install(EPT72_WD), zap], [gfn], vendor="intel")[gfn]
    assert any("pfn 0x123456 WDAh" in t for t in new), new
    assert any("pfn 0x123456 WDA-" in t for t in old), old


# ---- choosing the layout for a run's kernel -----------------------------------------------------------------------
def fake_tree(root: Path, version: str, base_id: str = "debian-7.2-abc") -> Path:
    tree = root / "src" / base_id
    for name, rel in HEADER_FILES.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text((SPTE / version / name).read_text())
    return tree


def test_layout_for_a_built_kernel_comes_from_its_tree(tmp_path):
    fake_tree(tmp_path, "7.2.13")
    art = tmp_path / "kernels" / "k"
    art.mkdir(parents=True)
    (art / "meta.json").write_text(json.dumps({"source": "build", "release": "7.2.13",
                                               "base": {"id": "debian-7.2-abc"}}))
    kernel = {"source": "build", "release": "7.2.13", "dir": str(art)}
    lay = S.layout_for_kernel(kernel, "intel", src_root=tmp_path / "src")
    assert lay.name == "7.2.13-intel/spte.h" and lay.source.startswith("header: arch/x86/kvm/mmu/spte.h of ")
    assert bits(lay) == bits(L72)
    # a commit the tree does not have (not a git tree here): the work tree's files, and the source says so
    (art / "meta.json").write_text(json.dumps({"base": {"id": "debian-7.2-abc"}, "commit": "0" * 40}))
    lay = S.layout_for_kernel(kernel, "intel", src_root=tmp_path / "src")
    assert "(work tree)" in lay.source and bits(lay) == bits(L72)


def test_layout_for_a_kernel_without_headers_falls_back_to_the_table(tmp_path):
    lay = S.layout_for_kernel({"source": "build", "release": "7.2.13", "dir": str(tmp_path / "gone"),
                               "base": {"id": "nope"}}, "intel", src_root=tmp_path)
    assert lay.name == "7.2-intel" and "could not be read" in lay.source and bits(lay) == bits(L72)
    pre = S.layout_for_kernel({"source": "debian-prebuilt", "release": "6.12.117+deb12-amd64"}, "amd")
    assert pre == S.table_layout("6.12", "amd")


class FakeShell:
    """Just enough of L1Shell for TraceCapture.start(): trace-start.sh's facts and an empty stream."""
    broken = False

    def __init__(self, facts: str):
        self.facts = facts

    def run(self, cmd, timeout=None, check=True):
        return self.facts if "trace-start.sh" in cmd else ""

    def stream(self, cmd):
        return SimpleNamespace(read_ready=lambda: b"", ended=lambda: True, close=lambda: None)


@pytest.mark.parametrize("release,module,name", [("7.2.13+deb14-amd64", "kvm_intel", "7.2-intel"),
                                                 ("6.12.117+deb12-amd64", "kvm_amd", "6.12-amd"),
                                                 ("6.12.117+deb12-amd64", "kvm_intel", "6.12-intel")])
def test_capture_records_the_layout(tmp_path, release, module, name):
    from harness.config import Scenario
    from harness.scenario.tracing import TraceCapture
    facts = "event=kvmmmu:kvm_tdp_mmu_spte_changed\nevent=kvmmmu:kvm_mmu_spte_requested\nkprobe=dirty_page:x\n"
    run = {"kernel": {"source": "debian-package", "release": release}, "l1": {"kvm_module": module}}
    cap = TraceCapture(FakeShell(facts), Scenario(), tmp_path, run)
    cap.start()
    cap.thread.join(5)
    tr = run["trace"]
    assert (tr["spte_layout"], tr["vendor"]) == (name, "intel" if module == "kvm_intel" else "amd")
    assert tr["spte_layout_source"].startswith("table: ") and re.match(r"\d+:\d+$", tr["spte_bits"]["ad_type"])
    assert cap.checker.layout.name == name
