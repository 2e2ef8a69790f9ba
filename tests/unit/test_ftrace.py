"""The ftrace decoder the trace oracle's checker and timelines share: real lines from tests/fixtures/trace/ (one of
each event the oracle reads, cut lines), the markers and odd lines trace_pipe can give."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.oracles import ftrace as F
from harness.oracles import trace as T
from harness.oracles import trace_findings
from harness.oracles.ftrace import (Cut, Event, Fault, Free, Install, Lost, OldSpte, Pfn, Range, SpteChange,
                                    decode)

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "trace"
QEMU = b" qemu-system-x86-323     [000]    "

# (fixture, line, Event without args, args)
REAL = [
    ("clean-6.12-amd.txt",
     QEMU + b"384.110780: kvm_tdp_mmu_spte_changed: as id 0 gfn 3cf0 level 1 old_spte 10c0b4e47 "
            b"new_spte 8000000000000000",
     Event("384.110780", 0, 323, "kvm_tdp_mmu_spte_changed",
           b"as id 0 gfn 3cf0 level 1 old_spte 10c0b4e47 new_spte 8000000000000000", 0),
     SpteChange(gfn=0x3cf0, level=1, old=0x10c0b4e47, new=0x8000000000000000)),
    ("clean-6.12-amd.txt", QEMU + b"384.118602: kvm_mmu_spte_requested: gfn 7969 pfn 108867 level 1",
     Event("384.118602", 0, 323, "kvm_mmu_spte_requested", b"gfn 7969 pfn 108867 level 1", 0),
     Fault(gfn=0x7969, pfn=0x108867)),
    ("clean-6.12-amd.txt", QEMU + b"384.118638: kvm_mmu_set_spte: gfn 7969 spte 108867e67 (rwxu) level 1 at 1074bdb48",
     Event("384.118638", 0, 323, "kvm_mmu_set_spte", b"gfn 7969 spte 108867e67 (rwxu) level 1 at 1074bdb48", 0),
     Install(gfn=0x7969, spte=0x108867e67)),
    ("clean-6.12-amd.txt",
     QEMU + b"384.110814: kvm_unmap_hva_range: mmu notifier unmap range: 0x007f5d55af1000 -- 0x007f5d55af2000",
     Event("384.110814", 0, 323, "kvm_unmap_hva_range",
           b"mmu notifier unmap range: 0x007f5d55af1000 -- 0x007f5d55af2000", 0),
     Range(b"0x007f5d55af1000 -- 0x007f5d55af2000")),
    ("clean-6.12-amd.txt",
     QEMU + b"384.110806: kvm_age_hva: mmu notifier age hva: 0x007f5d55af1000 -- 0x007f5d55af2000",
     Event("384.110806", 0, 323, "kvm_age_hva", b"mmu notifier age hva: 0x007f5d55af1000 -- 0x007f5d55af2000", 0),
     None),  # read by name only
    ("clean-6.12-amd.txt",
     QEMU + b"384.110799: mm_vmscan_write_folio: page=00000000cdc819c9 pfn=0x10c0b4 "
            b"flags=RECLAIM_WB_ANON|RECLAIM_WB_ASYNC",
     Event("384.110799", 0, 323, "mm_vmscan_write_folio",
           b"page=00000000cdc819c9 pfn=0x10c0b4 flags=RECLAIM_WB_ANON|RECLAIM_WB_ASYNC", 0),
     Pfn(0x10c0b4)),
    ("clean-6.12-amd.txt", QEMU + b"384.111059: mm_page_free: page=0000000001a3acfb pfn=0x10c079 order=0",
     Event("384.111059", 0, 323, "mm_page_free", b"page=0000000001a3acfb pfn=0x10c079 order=0", 0),
     Free(pfn=0x10c079, order=0)),
    ("clean-6.12-amd.txt", QEMU + b"384.110781: dirty_pfn: (kvm_set_pfn_dirty+0x4/0x50 [kvm]) pfn=0x10c0b4",
     Event("384.110781", 0, 323, "dirty_pfn", b"(kvm_set_pfn_dirty+0x4/0x50 [kvm]) pfn=0x10c0b4", 0),
     Pfn(0x10c0b4)),
    ("mutant-b-shadow-6.12-amd.txt",
     b"              sh-186     [000]     15.565532: shadow_zap: (mmu_spte_clear_track_bits+0x0/0x180 [kvm]) "
     b"spte=0x10e6f0e47",
     Event("15.565532", 0, 186, "shadow_zap", b"(mmu_spte_clear_track_bits+0x0/0x180 [kvm]) spte=0x10e6f0e47", 0),
     OldSpte(0x10e6f0e47)),
    ("clean-reclaim-6.12-amd.txt",
     b"              sh-212     [000]     38.678208: reclaim_clean: (__remove_mapping+0x0/0x210) "
     b"page=0xffe86dff843a1fc0 vmemmap=0xffe86dff80000000",
     Event("38.678208", 0, 212, "reclaim_clean",
           b"(__remove_mapping+0x0/0x210) page=0xffe86dff843a1fc0 vmemmap=0xffe86dff80000000", 0),
     Pfn((0xffe86dff843a1fc0 - 0xffe86dff80000000) // 64)),
    # cut lines: the text of one event stops short and the next event's header follows on the same line
    ("clean-6.12-amd.txt",
     QEMU + b"384.110891: dirty_pfn: (kvm_set_pfn_dirty+ qemu-system-x86-323     [000]    384.111058: mm_page_free: "
            b"page=000000008078d8b9 pfn=0x10c07a order=0",
     Event("384.111058", 0, 323, "mm_page_free", b"page=000000008078d8b9 pfn=0x10c07a order=0", 1),
     Free(pfn=0x10c07a, order=0)),
    ("clean-6.12-amd.txt",
     QEMU + b"384.1 qemu-system-x86-323     [000]    384.123535: kvm_mmu_spte_requested: gfn 797a pfn 10c07a level 1",
     Event("384.123535", 0, 323, "kvm_mmu_spte_requested", b"gfn 797a pfn 10c07a level 1", 1),
     Fault(gfn=0x797a, pfn=0x10c07a)),
    # ... and one cut inside the header: the CPU field's "[" is not at column 25
    ("cut-lines-6.12-amd.txt",
     b" qemu-syst qemu-system-x86-323     [000]    384.282693: mm_page_free: page=00000000c8fe730d "
     b"pfn=0x10c0ec order=0",
     Event("384.282693", 0, 323, "mm_page_free", b"page=00000000c8fe730d pfn=0x10c0ec order=0", 1),
     Free(pfn=0x10c0ec, order=0)),
]


@pytest.mark.parametrize("fixture,line,want,args", REAL,
                         ids=[f"{r[2].name}{'-cut' if r[2].cuts else ''}" for r in REAL])
def test_decode_real_lines(fixture, line, want, args):
    assert line in (FIX / fixture).read_bytes().split(b"\n")  # a recorded line, not a made-up one
    ev = decode(line)
    assert ev == want and type(ev) is Event
    assert ev.args == args and type(ev.args) is type(args)
    assert decode(line.decode()) == want  # str in, the same record


@pytest.mark.parametrize("line,want", [
    # ftrace's ring-buffer overrun marker (kernel/trace/trace.c); no fixture has one
    (b"CPU:0 [LOST 123 EVENTS]", Lost(123, "CPU:0 [LOST 123 EVENTS]", 0)),
    (b"CPU:3 [LOST 7 EVENTS]  ", Lost(7, "CPU:3 [LOST 7 EVENTS]", 0)),
    # only the remains of cut events: nothing intact to read
    (QEMU + b"384.110891: dirty_pfn: (kvm_set_pfn_dirty+ qemu-system-x86-323     [000] ", Cut(1)),
    # two cuts on one line
    (QEMU + b"1.1: dirty_pfn: (kvm" + QEMU + b"1.2: mm_page_free: pa" + QEMU + b"1.3: dirty_pfn: (x) pfn=0x5",
     Event("1.3", 0, 323, "dirty_pfn", b"(x) pfn=0x5", 2)),
    # irq-info on: flags before the timestamp; QEMU's vCPU threads have a space in their name
    (b"       CPU 0/KVM-324     [001] d..1.   50.1: kvm_mmu_spte_requested: gfn 3c41 pfn 10ad72 level 1",
     Event("50.1", 1, 324, "kvm_mmu_spte_requested", b"gfn 3c41 pfn 10ad72 level 1", 0)),
    # an event the oracle does not read: decoded, without args
    (QEMU + b"1.5: sched_switch: prev_comm=x", Event("1.5", 0, 323, "sched_switch", b"prev_comm=x", 0)),
    # headers, comments, blank and garbage lines
    (b"# tracer: nop", None),
    (b"#           TASK-PID     CPU#     TIMESTAMP  FUNCTION", None),
    (b"", None),
    (b"garbage", None),
    (b"a] b", None),
])
def test_decode_markers_and_odd_lines(line, want):
    assert decode(line) == want


@pytest.mark.parametrize("line", [
    QEMU + b"384.110780: kvm_tdp_mmu_spte_changed: as id 0 gfn 3cf0 level 1 old_sp",  # stream ended mid-line
    QEMU + b"384.110891: dirty_pfn: (kvm_set_pfn_dirty+ qemu-system-x86-323     [000]",  # cut, no header after
    QEMU + b"384.111059: mm_page_free: page=0000000001a3acfb",
    QEMU + b"384.118638: kvm_mmu_set_spte: gfn 7969",
    QEMU + b"1.0: shadow_zap: (mmu_spte_clear_track_bits+0x0/0x180 [kvm]) spte=0xzz",
])
def test_a_body_that_does_not_read_has_no_args(line):
    ev = decode(line)
    assert type(ev) is Event and ev.args is None


def test_page_free_cut_before_order_still_gives_its_pfn():
    ev = decode(QEMU + b"384.111059: mm_page_free: page=0000000001a3acfb pfn=0x10c079 ord")
    assert ev.args == Free(pfn=0x10c079, order=None)


def test_dirty_page_pointer_to_pfn():
    ev = decode(QEMU + b"45.2: dirty_page: (kvm_release_page_dirty+0x4/0x40 [kvm]) page=0xffffd8c7c4269c40 "
                       b"vmemmap=0xffffd8c7c0000000")
    assert ev.args == Pfn((0xffffd8c7c4269c40 - 0xffffd8c7c0000000) // 64)
    ev = decode(QEMU + b"45.2: dirty_page: (x) page=0xffffea0000040000")  # no KASLR: the fixed vmemmap base
    assert ev.args == Pfn(0x1000)


def test_every_fixture_line_decodes_as_split_line_reads_it():
    for p in sorted(FIX.glob("*.txt")):
        for ln in p.read_bytes().split(b"\n"):
            rec = decode(ln)
            rest, cuts = F.uncut(ln)
            raw = F.split_line(rest)
            if raw is None:
                assert rec is None or type(rec) is Cut, ln
                continue
            name, _cpu, pid, ts, body, hcut = raw
            assert (rec.name, rec.pid, rec.ts, rec.body) == (name.decode(), int(pid), ts.decode(), body), ln
            assert rec.cuts == (cuts or int(hcut)), ln


def test_checker_and_timelines_share_the_decoder():
    assert T.decode is F.decode and trace_findings.decode is F.decode
    for name in ("split_line", "uncut", "parse_line", "page_pfn", "dirty_pfn", "Event", "HEADER_COL"):
        assert getattr(T, name) is getattr(F, name)


def test_checker_counts_a_line_cut_at_the_end_of_the_stream_without_judging_it():
    ls = [x for x in (FIX / "clean-6.12-amd.txt").read_bytes().split(b"\n") if x and not x.startswith(b"#")]
    whole = T.check_lines(ls)
    res = T.check_lines(ls + [QEMU + b"999.0: kvm_tdp_mmu_spte_changed: as id 0 gfn 3cf0 level 1 old_sp"])
    assert res.counts["kvm_tdp_mmu_spte_changed"] == whole.counts["kvm_tdp_mmu_spte_changed"] + 1
    assert res.last_ts == whole.last_ts  # not judged: as any body that does not read
    assert {r: (s.checked, s.violations) for r, s in res.rules.items()} == \
        {r: (s.checked, s.violations) for r, s in whole.rules.items()}
