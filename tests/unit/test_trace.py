"""Trace oracle: SPTE decoding (both vendors), ftrace line parsing, rules R1-R3 on recorded real L1 snippets and on
synthetic violations made by editing them, the ledger join, the benchmark."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.oracles import trace as T
from harness.scenario.tracing import choose_ruleset

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "trace"
CLEAN = FIX / "clean-6.12-amd.txt"
ALL = {"kvm_tdp_mmu_spte_changed", "kvm_mmu_spte_requested", "kvm_unmap_hva_range", "mm_page_free",
       "mm_vmscan_write_folio", "dirty_pfn", "dirty_page"}


def lines(path=CLEAN) -> list[bytes]:
    return [ln for ln in path.read_bytes().split(b"\n") if ln and not ln.startswith(b"#")]


def run(ls, ruleset="zap-time", vendor="amd", available=ALL):
    return T.check_lines(ls, vendor, ruleset, available)


# ---- SPTE decoding ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("vendor,raw,level,want", [
    # AMD NPT, real values from L1: present(11) host-writable(9) D(6) A(5) W(1) P(0)
    ("amd", 0x107fa9e67, 1, dict(present=True, leaf=True, writable=True, dirty=True, accessed=True,
                                 host_writable=True, mmu_writable=True, pfn=0x107fa9)),
    ("amd", 0x10ad72e47, 1, dict(present=True, dirty=True, accessed=False, pfn=0x10ad72)),
    ("amd", 0x10ad72a25, 1, dict(present=True, writable=False, dirty=False, host_writable=True, mmu_writable=False)),
    ("amd", 0x8000000000000000, 1, dict(present=False, leaf=False, dirty=False)),  # SHADOW_NONPRESENT_VALUE
    ("amd", 0x80000000000005A0, 1, dict(present=False)),  # FROZEN_SPTE
    ("amd", 0x1234567, 2, dict(present=False)),
    ("amd", 0x200000ae7, 2, dict(present=True, leaf=True, dirty=True, pfn=0x200000)),  # 2M leaf (PS bit 7)
    ("amd", 0x10ab12a27, 2, dict(present=True, leaf=False)),  # a page-table pointer at level 2
    # Intel EPT: R(0) W(1) X(2), A(8) D(9), present(11), host-writable 57, MMU-writable 58
    ("intel", (1 << 57) | (1 << 58) | 0x123456000 | 0xB07, 1,
     dict(present=True, writable=True, dirty=True, accessed=True, host_writable=True, mmu_writable=True,
          pfn=0x123456)),
    ("intel", (1 << 57) | 0x123456000 | 0x907, 1, dict(dirty=False, accessed=True, writable=True)),
    # A/D disabled (bits 53:52 = 01): dirty means writable
    ("intel", (1 << 52) | (1 << 57) | 0x123456000 | 0x807, 1, dict(ad_disabled=True, dirty=True, accessed=False)),
    ("intel", (1 << 52) | 0x123456000 | 0x805, 1, dict(ad_disabled=True, dirty=False, writable=False)),
    # AMD bits read as Intel: bit 9 is D on EPT, host-writable on NPT
    ("intel", 0x107fa9e67, 1, dict(dirty=True, host_writable=False)),
])
def test_decode_spte(vendor, raw, level, want):
    s = T.decode_spte(raw, vendor, level)
    for k, v in want.items():
        assert getattr(s, k) == v, (k, s)


def test_pfn_bits_51_12_only():
    assert T.decode_spte((0x7FF << 52) | (0xFFFFFFFFFF << 12) | 0x800 | 0x7, "amd").pfn == 0xFFFFFFFFFF


# ---- parsing ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("line,name,pid,cpu,ts", [
    (" qemu-system-x86-323     [000]    384.110851: kvm_tdp_mmu_spte_changed: as id 0 gfn 3cf8 level 1 "
     "old_spte 107fa9e47 new_spte 8000000000000000", "kvm_tdp_mmu_spte_changed", 323, 0, "384.110851"),
    ("       CPU 0/KVM-324     [001] d..1.   50.1: kvm_mmu_spte_requested: gfn 3c41 pfn 10ad72 level 1",
     "kvm_mmu_spte_requested", 324, 1, "50.1"),
    (" qemu-system-x86-244     [000]     45.291635: dirty_pfn: (kvm_set_pfn_dirty+0x4/0x50 [kvm]) pfn=0x108391",
     "dirty_pfn", 244, 0, "45.291635"),
])
def test_parse_line(line, name, pid, cpu, ts):
    ev = T.parse_line(line)
    assert (ev.name, ev.pid, ev.cpu, ev.ts) == (name, pid, cpu, ts)


def test_dirty_page_pointer_to_pfn():
    body = b"(kvm_release_page_dirty+0x4/0x40 [kvm]) page=0xffffd8c7c4269c40 vmemmap=0xffffd8c7c0000000"
    assert T.dirty_pfn(b"dirty_page", body) == (0xffffd8c7c4269c40 - 0xffffd8c7c0000000) // 64
    assert T.dirty_pfn(b"dirty_page", b"(x) page=0xffffea0000040000") == 0x1000  # no KASLR: fixed base


@pytest.mark.parametrize("line,cuts", [
    (b" qemu-system-x86-323     [000]    384.110891: dirty_pfn: (kvm_set_pfn_dirty+ qemu-system-x86-323     [000]"
     b"    384.111058: mm_page_free: page=00000000 pfn=0x10c07a order=0", 1),
    (b" qemu-system-x86-323     [000]    384.1: mm_page_free: page=00000000 pfn=0x10c07a order=0", 0),
])
def test_uncut(line, cuts):
    rest, n = T.uncut(line)
    assert n == cuts and T.split_line(rest)[0] == b"mm_page_free"


def test_cut_lines_are_counted_not_misread():
    res = run(lines(FIX / "cut-lines-6.12-amd.txt"))
    assert res.cut_events >= 1
    assert res.rules["R1"].violations == 0  # the marks hidden by cuts/gaps are dropped, never failed
    assert res.rules["R1"].dropped_by_cut >= 1


# ---- rules on a recorded clean trace and on edited copies ------------------------------------------------------
def first_zap_with_mark(ls):
    for i, ln in enumerate(ls[:-1]):
        if not any(b"kvm_unmap_hva_range" in x for x in ls[max(0, i - 3):i]):
            continue  # R3 is about zaps by the MMU notifier
        if any(T.uncut(x)[1] or (T.split_line(x) or [0] * 6)[5] for x in ls[i:i + 70]):
            continue  # a cut line close after the zap makes its mark unknowable (dropped, by design)
        p = T.split_line(ln)
        if p and p[0] == T.SPTE_CHANGED and not p[5] and ln.count(b"] ") == 1:
            f = p[4].split()
            old, new = int(f[8], 16), int(f[10], 16)
            q = T.split_line(ls[i + 1])
            if old & T.PRESENT and not new & T.PRESENT and q and q[0] == b"dirty_pfn" and ls[i + 1].count(b"] ") == 1:
                pfn = (old & T.PFN_MASK) >> 12
                freed = any(b"mm_page_free" in x and b"pfn=%#x " % pfn in x for x in ls[i:])
                if freed:
                    return i, pfn
    raise AssertionError("fixture has no zap followed by its mark and a free")


def test_clean_trace_passes():
    res = run(lines())
    r1, r3 = res.rules["R1"], res.rules["R3"]
    assert r1.ran and r1.checked >= 30 and r1.violations == 0
    assert r3.ran and r3.checked >= 20 and r3.violations == 0
    assert not res.rules["R2"].ran and "zap-time" in res.rules["R2"].why


def test_r1_and_r3_catch_a_deleted_dirty_mark():
    ls = lines()
    i, pfn = first_zap_with_mark(ls)
    edited = ls[:i + 1] + ls[i + 2:]  # drop kvm_set_pfn_dirty after the zap
    edited = [x for x in edited if not (b"mm_vmscan_write_folio" in x and b"pfn=%#x " % pfn in x)]  # and writeback
    res = run(edited)
    assert res.rules["R1"].violations == 1 and res.rules["R1"].examples[0]["pfn"] == pfn
    assert res.rules["R3"].violations == 1 and res.rules["R3"].examples[0]["pfn"] == pfn
    f = T.findings(res, ledger_gfns=[res.rules["R3"].examples[0]["gfn"]])
    assert {x["kind"] for x in f} == {"R1-violation", "R3-violation"}
    assert all(x["oracle"] == "trace" for x in f)
    assert f[1]["ledger_gfns_matched"] == [res.rules["R3"].examples[0]["gfn"]]


def test_r3_needs_both_mark_and_writeback_missing():
    ls = lines()
    i, pfn = first_zap_with_mark(ls)
    res = run(ls[:i + 1] + ls[i + 2:])  # mark gone, but writeback (if any) kept
    had_wb = any(b"mm_vmscan_write_folio" in x and b"pfn=%#x " % pfn in x for x in ls)
    assert res.rules["R1"].violations == 1
    assert res.rules["R3"].violations == (0 if had_wb else 1)


def test_lost_marker_drops_pending_instead_of_failing():
    ls = lines()
    i, _ = first_zap_with_mark(ls)
    edited = ls[:i + 1] + [b"CPU:0 [LOST 123 EVENTS]"] + ls[i + 2:]
    res = run(edited)
    assert res.lost_events == 123 and res.rules["R1"].violations == 0 and res.rules["R1"].dropped_by_loss == 1
    rj = T.rules_json(res, ["123 events lost"])
    assert "cannot prove absence" in rj["R1"]["why"]


def test_missing_events_mean_not_run():
    res = run(lines(), available={"kvm_tdp_mmu_spte_changed", "dirty_pfn"})
    assert res.rules["R1"].ran
    assert not res.rules["R3"].ran and "mm_page_free" in res.rules["R3"].why
    res = run(lines(), available={"kvm_tdp_mmu_spte_changed"})
    assert not res.rules["R1"].ran and T.rules_json(res)["R1"]["ran"] is False


# ---- R2 (create-time): the same real faults, with dirty releases added after each install, then one removed ---
def with_releases(ls, skip_pfn=None):
    out, pfns = [], []
    for ln in ls:
        out.append(ln)
        ln, _ = T.uncut(ln)
        p = T.split_line(ln)
        if p and p[0] == T.SPTE_CHANGED:
            f = p[4].split()
            old, new, lvl = int(f[8], 16), int(f[10], 16), int(f[6])
            if new & T.PRESENT and (lvl == 1 or new & T.LARGE) and new & (1 << 9) and not old & T.PRESENT:
                pfn = (new & T.PFN_MASK) >> 12
                pfns.append(pfn)
                if pfn != skip_pfn:
                    head = b" qemu-system-x86-%s     [000]    %s" % (p[2], p[3])
                    page = 0xffffd8c7c0000000 + pfn * 64
                    out.append(head + b": dirty_page: (kvm_set_page_dirty+0x4/0x40 [kvm]) page=%#x "
                               b"vmemmap=0xffffd8c7c0000000" % page)
    return out, pfns


def test_r2_create_time():
    ls = lines()
    plain = run(ls, "create-time")
    assert plain.rules["R2"].checked > 0 and plain.rules["R2"].violations > 0  # no releases at all: all fail
    ok, pfns = with_releases(ls)
    res = run(ok, "create-time")
    assert res.rules["R2"].checked == len(pfns) > 5 and res.rules["R2"].violations == 0
    assert not res.rules["R1"].ran
    bad, _ = with_releases(ls, skip_pfn=pfns[3])
    res = run(bad, "create-time")
    assert res.rules["R2"].violations == 1 and res.rules["R2"].examples[0]["pfn"] == pfns[3]


# ---- ledger join ------------------------------------------------------------------------------------------------
def test_timeline_for_a_ledger_gfn():
    ls = lines()
    i, pfn = first_zap_with_mark(ls)
    gfn = int(T.split_line(ls[i])[4].split()[4], 16)
    fates: dict = {}
    tl = T.timelines(ls, [gfn], fates=fates)[gfn]
    text = "\n".join(tl)
    assert "spte zap" in text and f"dirty mark pfn {pfn:#x}" in text and f"free pfn {pfn:#x}" in text
    assert fates[gfn]["pfn"] == pfn and fates[gfn]["dirty_mark"] and fates[gfn]["freed"]
    res = run(ls)
    f = T.timeline_findings({gfn: tl}, res, ["3 events lost"], fates=fates)
    assert f[0]["timeline"] == tl and f[0]["gfn"] == gfn and "proves nothing" in f[0]["note"]
    assert f[0]["pfn"] == pfn and f"L1 pfn {pfn:#x}" in f[0]["title"] and "a dirty mark" in f[0]["title"]


def test_fate_of_a_lost_write_reads_as_one_line():
    f = {"pfn": 0x10ffd9, "t": "51.004510", "dirty_spte": True, "dirty_mark": False, "writeback": False,
         "freed": True}
    assert T.fate_text(f) == ("L1 pfn 0x10ffd9: writable dirty SPTE zapped at 51.004510 s, then no dirty mark, "
                              "no writeback, freed")


def test_ledger_gfns():
    class L:
        bad = [{"gfn": 5}, {"gfn": 5}, {"gfn": 9}, {"x": 1}]
    assert T.ledger_gfns(L()) == [5, 9]


# ---- ruleset choice, open_lines, bench --------------------------------------------------------------------------
@pytest.mark.parametrize("req,rel,syms,series,want", [
    ("auto", "6.12.117+deb12-amd64", {"kvm_set_pfn_dirty"}, False, "zap-time"),
    ("auto", "6.13.2", set(), False, "create-time"),
    ("auto", "6.12.117", {"kvm_release_page_dirty"}, False, "create-time"),
    ("auto", "6.12.117", {"kvm_set_pfn_dirty"}, True, "create-time"),
    ("zap-time", "6.14", set(), False, "zap-time"),
])
def test_choose_ruleset(req, rel, syms, series, want):
    assert choose_ruleset(req, rel, syms, series)[0] == want


def test_open_lines_gzip(tmp_path):
    import gzip
    p = tmp_path / "t.txt.gz"
    with gzip.open(p, "wb") as f:
        f.write(CLEAN.read_bytes())
    assert list(T.open_lines(p)) == CLEAN.read_bytes().rstrip(b"\n").split(b"\n")


def test_bench_small():
    b = T.bench_trace(2)
    assert b["size_mb"] >= 1.5 and b["lines"] > 10000 and b["rules"]["R1"]["violations"] == 0


def test_the_port_is_recognised_by_its_subjects_wherever_its_files_live():
    from harness.scenario.tracing import carries_create_time_series, choose_ruleset
    port = [{"file": "0001-KVM-x86-mmu-Funnel.patch", "subject": "KVM: x86/mmu: Funnel fault-path pfn release"},
            {"file": "0003-x.patch", "subject": "KVM: x86/mmu: Stop marking folios dirty when zapping or modifying SPTEs"}]
    assert carries_create_time_series(port)
    assert not carries_create_time_series([{"file": "series/0001-MUTANT.patch", "subject": "MUTANT: KVM: x"}])
    assert choose_ruleset("auto", "6.12.117", {"kvm_set_pfn_dirty"}, True)[0] == "create-time"
    assert choose_ruleset("auto", "6.12.117", {"kvm_set_pfn_dirty"}, False)[0] == "zap-time"


def test_r3_on_create_time_counts_the_release_at_install_as_the_mark():
    # Make a create-time trace from a recorded zap: the zap-time mark after it is dropped, and an install of the
    # same pfn (the zap line with old and new swapped) is put at the top, with or without its dirty release.
    ls = lines()
    i, pfn = first_zap_with_mark(ls)
    zap = ls[i]
    p = T.split_line(zap)
    f = p[4].split()
    install = zap.replace(b"old_spte " + f[8], b"old_spte 0x0").replace(b"new_spte " + f[10], b"new_spte " + f[8])
    install = install.replace(p[3], b"0.000001")
    body = ls[:i + 1] + ls[i + 2:]  # no mark after the zap
    body = [x for x in body if not (b"mm_vmscan_write_folio" in x and b"pfn=%#x " % pfn in x)]
    released, _ = with_releases([install])
    assert len(released) == 2  # the install and its dirty release
    ok = run(released + body, "create-time")
    assert ok.rules["R3"].checked >= 1 and not any(e["pfn"] == pfn for e in ok.rules["R3"].examples)
    lost = run([install] + body, "create-time")
    assert any(e["pfn"] == pfn for e in lost.rules["R3"].examples)
    # a pfn mapped before tracing began is not judged (its release is unknowable)
    assert run(body, "create-time").rules["R3"].dropped_install_untraced >= 1


# ---- R4: judged by the effect (reclaim drops the page clean), and the shadow MMU's zap probe ---------------------
ALL4 = ALL | {"reclaim_clean"}


def reclaim_clean(ts: bytes, pfn: int, vmemmap: int = 0xFFFFC2C540000000) -> bytes:
    """A reclaim_clean kprobe hit (kprobe on __remove_mapping, folio=%si) for pfn, in L1's line format."""
    return (b" qemu-system-x86-323     [000]    " + ts + b": reclaim_clean: (__remove_mapping+0x4/0x2d0) "
            + b"page=%#x vmemmap=%#x" % (vmemmap + pfn * T.STRUCT_PAGE, vmemmap))


def with_clean_drop(ls, pfn, keep_mark=True, keep_writeback=False):
    """The recorded trace edited so that reclaim drops pfn clean just before its free."""
    out = []
    for x in ls:
        if not keep_writeback and b"mm_vmscan_write_folio" in x and b"pfn=%#x " % pfn in x:
            continue
        if b"mm_page_free" in x and b"pfn=%#x " % pfn in x:
            out.append(reclaim_clean(T.split_line(x)[3], pfn))
        out.append(x)
    i, _ = first_zap_with_mark(ls)
    if not keep_mark:
        out.remove(ls[i + 1])
    return out


def test_r4_clean_trace_passes_and_counts_reclaimed_pages():
    ls = lines()
    i, pfn = first_zap_with_mark(ls)
    res = run(with_clean_drop(ls, pfn, keep_writeback=True), available=ALL4)
    r4 = res.rules["R4"]
    assert r4.ran and r4.checked == 1 and r4.violations == 0


def test_r4_catches_a_mark_that_has_no_effect():
    # mutant c's shape: the zap-time mark is called (R1 and R3 are satisfied), but the folio stays clean, so
    # reclaim drops it with no writeback
    ls = lines()
    i, pfn = first_zap_with_mark(ls)
    res = run(with_clean_drop(ls, pfn), available=ALL4)
    assert res.rules["R1"].violations == 0 and res.rules["R3"].violations == 0
    r4 = res.rules["R4"]
    assert r4.violations == 1 and r4.examples[0]["pfn"] == pfn
    assert r4.examples[0]["gfn"] == int(T.split_line(ls[i])[4].split()[4], 16)
    assert "R4-violation" in {f["kind"] for f in T.findings(res)}


def test_r4_needs_the_free_and_ends_at_a_remap():
    ls = lines()
    i, pfn = first_zap_with_mark(ls)
    dropped = with_clean_drop(ls, pfn)
    no_free = [x for x in dropped if not (b"mm_page_free" in x and b"pfn=%#x " % pfn in x)]
    assert run(no_free, available=ALL4).rules["R4"].violations == 0  # __remove_mapping can fail: not freed
    zap = T.split_line(ls[i])[4].split()
    remap = ls[i].replace(b"old_spte " + zap[8], b"old_spte 8000000000000000").replace(
        b"new_spte " + zap[10], b"new_spte " + zap[8])
    j = next(k for k, x in enumerate(dropped) if b"reclaim_clean" in x)
    assert run(dropped[:j] + [remap] + dropped[j:], available=ALL4).rules["R4"].violations == 0


def test_r4_not_run_without_its_probe():
    res = run(lines(), available=ALL)
    assert not res.rules["R4"].ran and "reclaim_clean" in res.rules["R4"].why


SET_SPTE = b" qemu-system-x86-323     [000]    %s: kvm_mmu_set_spte: gfn %x spte %x (rwxu) level 1"
SHADOW_ZAP = b" qemu-system-x86-323     [000]    %s: shadow_zap: (mmu_spte_clear_track_bits+0x4/0x1b0 [kvm]) spte=%#x"
UNMAP = (b" qemu-system-x86-323     [000]    %s: kvm_unmap_hva_range: mmu notifier unmap range: "
         b"0x007f5d55af1000 -- 0x007f5d55af2000")
DIRTY = b" qemu-system-x86-323     [000]    %s: dirty_pfn: (kvm_set_pfn_dirty+0x4/0x50 [kvm]) pfn=%#x"
FREE = b" qemu-system-x86-323     [000]    %s: mm_page_free: page=00000000cdc819c9 pfn=%#x order=0"


def shadow_trace(mark: bool, writeback: bool):
    gfn, spte = 0x103cf0, 0x10c0b4e67  # a writable dirty NPT leaf (pfn 0x10c0b4)
    pfn = spte >> 12
    ls = [SET_SPTE % (b"10.000001", gfn, spte), UNMAP % b"10.000100", SHADOW_ZAP % (b"10.000101", spte)]
    if mark:
        ls.append(DIRTY % (b"10.000102", pfn))
    if writeback:
        ls.append(b" qemu-system-x86-323     [000]    10.000110: mm_vmscan_write_folio: page=00000000cdc819c9 "
                  b"pfn=%#x flags=RECLAIM_WB_ANON|RECLAIM_WB_ASYNC" % pfn)
    ls += [reclaim_clean(b"10.000200", pfn), FREE % (b"10.000201", pfn),
           SHADOW_ZAP % (b"10.000300", 0x8000000000000000)]  # the task's next clear: closes R1
    return ls, gfn, pfn


def test_shadow_mmu_zap_without_mark_names_gfn_and_pfn():
    ls, gfn, pfn = shadow_trace(mark=False, writeback=False)
    res = run(ls, available=ALL4 | {"shadow_zap", "kvm_mmu_set_spte"})
    for r in ("R1", "R3", "R4"):
        st = res.rules[r]
        assert st.checked == 1 and st.violations == 1, r
        assert st.examples[0]["gfn"] == gfn and st.examples[0]["pfn"] == pfn, r
    fates: dict = {}
    tl = T.timelines(ls, [gfn], fates=fates)[gfn]
    assert any("shadow spte zap" in x for x in tl) and any("reclaim drops" in x for x in tl)
    assert T.fate_text(fates[gfn]).endswith("no dirty mark, no writeback, dropped clean by reclaim, freed")


def test_shadow_mmu_zap_with_mark_and_writeback_passes():
    ls, _, _ = shadow_trace(mark=True, writeback=True)
    res = run(ls, available=ALL4 | {"shadow_zap", "kvm_mmu_set_spte"})
    assert all(res.rules[r].violations == 0 for r in ("R1", "R3", "R4"))
    assert res.rules["R1"].checked == 1 and res.rules["R4"].checked == 1


def test_a_disabled_rule_reports_why_and_checks_nothing():
    ls = lines()
    i, pfn = first_zap_with_mark(ls)
    chk = T.Checker("amd", "zap-time", ALL4)
    chk.disable("R4", "not run: shared-file guest RAM")
    for ln in with_clean_drop(ls, pfn):
        chk.feed(ln)
    r4 = chk.finish().rules["R4"]
    assert not r4.ran and r4.checked == 0 and r4.violations == 0 and "shared-file" in r4.why


def test_fate_reports_the_first_lost_cycle_not_the_last():
    ls, gfn, pfn = shadow_trace(mark=False, writeback=False)
    spte2 = 0x10d0b4e67  # the gfn mapped again later, to another pfn, and zapped with a proper mark
    pfn2 = spte2 >> 12
    later = [SET_SPTE % (b"20.000001", gfn, spte2), UNMAP % b"20.000100", SHADOW_ZAP % (b"20.000101", spte2),
             DIRTY % (b"20.000102", pfn2), FREE % (b"20.000201", pfn2)]
    fates: dict = {}
    T.timelines(ls + later, [gfn], fates=fates)
    assert fates[gfn]["pfn"] == pfn and fates[gfn]["lost"] and fates[gfn]["t"] == "10.000101"


# ---- R4 and the shadow MMU on recorded real traces (trace-reader, no cut lines) ---------------------------------
SHADOW = ALL4 | {"shadow_zap", "kvm_mmu_set_spte"}


def test_recorded_clean_trace_with_reclaim_probe_passes_r4():
    res = run(lines(FIX / "clean-reclaim-6.12-amd.txt"), available=ALL4)
    assert res.cut_events == 0 and res.counts.get("reclaim_clean", 0) > 100
    for r in ("R1", "R3", "R4"):
        assert res.rules[r].checked >= 30 and res.rules[r].violations == 0, r


def test_recorded_mutant_c_fools_r1_and_r3_but_not_r4():
    res = run(lines(FIX / "mutant-c-6.12-amd.txt"), available=ALL4)
    assert res.rules["R1"].checked > 0 and res.rules["R1"].violations == 0  # the emptied mark is still called
    assert res.rules["R3"].violations == 0
    r4 = res.rules["R4"]
    assert r4.checked > 0 and r4.violations == r4.checked
    assert all(e["gfn"] >= 0x100000 and e["pfn"] for e in r4.examples)  # the ledger's DIMM gfns, L1 pfns


def test_recorded_mutant_b_on_the_shadow_mmu_names_gfn_pfn_and_rules():
    ls = lines(FIX / "mutant-b-shadow-6.12-amd.txt")
    res = run(ls, available=SHADOW)
    assert res.counts.get("kvm_tdp_mmu_spte_changed", 0) == 0 and res.counts["shadow_zap"] > 0
    r1, r4 = res.rules["R1"], res.rules["R4"]
    assert r1.violations >= r1.checked - 1 > 20  # the rmap zap never marks
    assert r4.violations > 20 and res.rules["R3"].violations > 20
    named = [e for e in r4.examples if e["gfn"] is not None]  # gfn from the pfn's kvm_mmu_set_spte, if recorded
    assert len(named) > 10 and all(e["gfn"] >= 0x100000 for e in named)
    ex = named[0]
    fates: dict = {}
    T.timelines(ls, [ex["gfn"]], fates=fates)
    f = fates[ex["gfn"]]
    assert f["pfn"] == ex["pfn"] and f["lost"] and not f["dirty_mark"]
    assert "no dirty mark, no writeback, dropped clean by reclaim, freed" in T.fate_text(f)
