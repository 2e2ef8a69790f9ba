"""Console oracle: table-driven over the shared real-log corpus, plus hand-written snippets."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest

from harness.fleet.bench import bench_console
from harness.oracles import console, console_golden, console_rules
from harness.oracles.console import Report, classify, classify_all, cli_classify, taint_flags
from harness.oracles.console_golden import parse_case

DATA = console_golden.CORPUS

# ONE mapping from the corpus' TYPE classes to our kinds.  Where a class is a
# grab-bag (DoS: "the kernel died somehow"; MEMORY_SAFETY_BUG: a bad access that
# oopsed or hit a BUG_ON) it may legitimately map to a small set.
# WARNING may be a lockdep splat (lockdep reports start "WARNING: possible circular ...").
# KASAN null-ptr-deref shows up either as a KASAN report or as the GPF it causes.
# An unexpected REBOOT is reported as kind panic (the guest died and reset).
# SYZ_FAILURE is syzkaller's own userspace executor failing: not a kernel report, out of scope.
TYPE_TO_KINDS: dict[str, frozenset[str]] = {
    "HANG": frozenset({"hang"}),
    "DoS": frozenset({"panic", "oops", "bug", "hang"}),
    "WARNING": frozenset({"warning", "lockdep"}),
    "LOCKDEP": frozenset({"lockdep"}),
    "MEMORY_SAFETY_BUG": frozenset({"oops", "bug"}),
    "NULL-POINTER-DEREFERENCE": frozenset({"oops"}),
    "BUG": frozenset({"bug"}),
    "ATOMIC_SLEEP": frozenset({"bug"}),
    "LEAK": frozenset({"leak"}),
    "REFCOUNT_WARNING": frozenset({"refcount"}),
    "UBSAN": frozenset({"ubsan"}),
    "MEMORY_SAFETY_UBSAN": frozenset({"ubsan"}),
    "REBOOT": frozenset({"panic"}),
    "SYZ_FAILURE": frozenset(),
    "KASAN-NULL-POINTER-DEREFERENCE-*": frozenset({"kasan", "oops"}),
    "KASAN-*": frozenset({"kasan"}),
    "KFENCE-*": frozenset({"kfence"}),
    "KMSAN-*": frozenset({"kmsan"}),
    "KCSAN-*": frozenset({"kcsan"}),
}


def expected_kinds(type_: str) -> frozenset[str] | None:
    if type_ in TYPE_TO_KINDS:
        return TYPE_TO_KINDS[type_]
    best = None
    for key, kinds in TYPE_TO_KINDS.items():      # longest matching prefix pattern wins
        if key.endswith("*") and type_.startswith(key[:-1]):
            if best is None or len(key) > len(best[0]):
                best = (key, kinds)
    return best[1] if best else None


CASES = sorted(DATA.glob("*.log"))


def test_the_vendored_corpus_is_whole():
    # the corpus tests below loop over CASES: without the corpus they would pass on nothing
    assert len(CASES) >= console_golden.CORPUS_MIN_LOGS, f"console corpus missing or cut short at {DATA}"
    assert (DATA / "LICENSE-syzkaller").is_file()


def test_corpus_metrics():
    positives = negatives = kinds_checked = 0
    misses, false_crashes, kind_bad, unmapped = [], [], [], []
    for path in CASES:
        labels, body = parse_case(path)
        rep = classify(body)
        if labels.get("TITLE"):
            positives += 1
            if not rep.crash:
                misses.append(f"{path.name}: want {labels['TITLE']!r} [{labels.get('TYPE', '-')}], got {rep.kind}")
                continue
            if "TYPE" in labels:
                want = expected_kinds(labels["TYPE"])
                if want is None:
                    unmapped.append(f"{path.name}: TYPE {labels['TYPE']}")
                    continue
                kinds_checked += 1
                if rep.kind not in want:
                    kind_bad.append(f"{path.name}: TYPE {labels['TYPE']} want {sorted(want)}, "
                                    f"got {rep.kind} ({rep.title!r}; corpus title {labels['TITLE']!r})")
        else:
            negatives += 1
            if rep.crash:
                false_crashes.append(f"{path.name}: {rep.kind} {rep.title!r} at line {rep.start_line}")
    recall = (positives - len(misses)) / positives
    specificity = (negatives - len(false_crashes)) / negatives if negatives else 1.0
    kind_acc = (kinds_checked - len(kind_bad)) / kinds_checked if kinds_checked else 1.0
    print(f"\nconsole oracle on {len(CASES)} logs: recall {recall:.4f} ({positives - len(misses)}/{positives}), "
          f"specificity {specificity:.4f} ({negatives - len(false_crashes)}/{negatives}), "
          f"kind agreement {kind_acc:.4f} ({kinds_checked - len(kind_bad)}/{kinds_checked})")
    for label, items in (("missed", misses), ("false crash", false_crashes), ("kind", kind_bad)):
        for item in items:
            print(f"  {label}: {item}")
    assert not unmapped, "TYPE classes without a mapping:\n" + "\n".join(unmapped)
    assert recall >= 0.99, "missed crashes:\n" + "\n".join(misses)
    assert not false_crashes, "crashes reported in negative logs:\n" + "\n".join(false_crashes)
    assert kind_acc >= 0.95, "kind disagreements:\n" + "\n".join(kind_bad)


def test_corpus_reports_are_well_formed():
    for path in CASES:
        _, body = parse_case(path)
        reps = classify_all(body)
        first = classify(body)
        if reps:
            assert reps[0] == first, path.name
        for r in reps:
            assert r.kind in console.KINDS, (path.name, r.kind)
            assert r.title and "\n" not in r.title and len(r.title) < 200, (path.name, r.title)
            assert not re.search(r"0x[0-9a-f]{4,}|\+0x", r.title), (path.name, r.title)
            assert r.start_line >= 1 and len(r.excerpt.splitlines()) <= console.EXCERPT_LINES, path.name


# ---------------------------------------------------------------------------
# hand-written snippets for the formats this project cares about
# ---------------------------------------------------------------------------
BAD_PAGE = """\
[  101.123456][ T2345] BUG: Bad page state in process ledger  pfn:1a2b3
[  101.123460][ T2345] page: refcount:0 mapcount:1 mapping:0000000000000000 index:0x7f00 pfn:0x1a2b3
[  101.123461][ T2345] flags: 0x200000000080014(uptodate|lru|swapbacked|node=0|zone=2)
[  101.123462][ T2345] page dumped because: nonzero mapcount
[  101.123463][ T2345] Modules linked in:
[  101.123464][ T2345] CPU: 1 PID: 2345 Comm: ledger Tainted: G    B              6.12.0 #1
[  101.123465][ T2345] Call Trace:
[  101.123466][ T2345]  <TASK>
[  101.123467][ T2345]  dump_stack_lvl+0x7d/0xa0
[  101.123468][ T2345]  bad_page+0xc5/0x190
[  101.123469][ T2345]  free_page_is_bad_report+0x8d/0xa0
[  101.123470][ T2345]  free_unref_folios+0x5a2/0x6b0
[  101.123471][ T2345]  shrink_folio_list+0x7c1/0x1180
[  101.123472][ T2345]  shrink_lruvec+0x5b9/0xbf0
[  101.123473][ T2345]  </TASK>
"""

VM_BUG_ON = """\
[   55.000001] page: refcount:3 mapcount:0 mapping:ffff888104f3a0d8 index:0x2 pfn:0x10b0c0
[   55.000002] flags: 0x200000000000029(locked|uptodate|lru|node=0|zone=2)
[   55.000003] page dumped because: VM_BUG_ON_FOLIO(!folio_test_swapcache(folio))
[   55.000004] ------------[ cut here ]------------
[   55.000005] kernel BUG at mm/swap_state.c:101!
[   55.000006] Oops: invalid opcode: 0000 [#1] PREEMPT SMP NOPTI
[   55.000007] CPU: 0 PID: 77 Comm: kswapd0 Not tainted 6.12.0 #1
[   55.000008] RIP: 0010:add_to_swap_cache+0x3f1/0x480
[   55.000009] Call Trace:
[   55.000010]  <TASK>
[   55.000011]  add_to_swap+0x90/0x110
[   55.000012]  shrink_folio_list+0x9a0/0x1180
[   55.000013]  </TASK>
"""

KVM_WARN = """\
[  272.301122][   T12] ------------[ cut here ]------------
[  272.301130][   T12] WARNING: CPU: 3 PID: 812 at arch/x86/kvm/mmu/tdp_mmu.c:532 handle_changed_spte+0x8f1/0x1a70 [kvm]
[  272.301200][   T12] Modules linked in: kvm_intel kvm irqbypass
[  272.301210][   T12] CPU: 3 PID: 812 Comm: qemu-system-x86 Not tainted 6.12.0 #1
[  272.301220][   T12] RIP: 0010:handle_changed_spte+0x8f1/0x1a70 [kvm]
[  272.301230][   T12] Call Trace:
[  272.301231][   T12]  <TASK>
[  272.301232][   T12]  tdp_mmu_zap_leafs+0x2d1/0x5b0 [kvm]
[  272.301233][   T12]  kvm_tdp_mmu_unmap_gfn_range+0x1a5/0x2c0 [kvm]
[  272.301234][   T12]  </TASK>
[  272.301235][   T12] ---[ end trace 0000000000000000 ]---
"""

SOFT_LOCKUP = """\
[  612.554433] watchdog: BUG: soft lockup - CPU#2 stuck for 26s! [kworker/2:1:123]
[  612.554440] Modules linked in:
[  612.554441] CPU: 2 PID: 123 Comm: kworker/2:1 Not tainted 6.12.0 #1
[  612.554450] RIP: 0010:shrink_slab+0x1c2/0x3f0
[  612.554460] Call Trace:
[  612.554461]  <IRQ>
[  612.554462]  </IRQ>
"""

RCU_STALL = """\
rcu: INFO: rcu_preempt self-detected stall on CPU
rcu: \t1-....: (2100 ticks this GP) idle=4fc/1/0x4000000000000000 softirq=1234/1234 fqs=1050
\t(t=2100 jiffies g=5677 q=123 ncpus=4)
NMI backtrace for cpu 1
CPU: 1 PID: 999 Comm: ledger Not tainted 6.12.0 #1
Call Trace:
 <IRQ>
 dump_stack_lvl+0x7d/0xa0
 nmi_cpu_backtrace+0x1b1/0x1f0
 rcu_dump_cpu_stacks+0x14f/0x1e0
 rcu_sched_clock_irq+0x3d1/0x9f0
 update_process_times+0xd3/0x110
 </IRQ>
 <TASK>
 kvm_mmu_page_fault+0x2b0/0x8a0 [kvm]
 vmx_handle_exit+0x12/0x40 [kvm_intel]
 </TASK>
"""

HUNG_TASK = """\
[  984.123001] INFO: task ledger:4242 blocked for more than 122 seconds.
[  984.123010]       Not tainted 6.12.0 #1
[  984.123011] "echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.
[  984.123012] task:ledger          state:D stack:0     pid:4242  tgid:4242  ppid:1      flags:0x00004002
[  984.123013] Call Trace:
[  984.123014]  <TASK>
[  984.123015]  __schedule+0x3b2/0x1600
[  984.123016]  schedule+0x27/0xf0
[  984.123017]  io_schedule+0x46/0x70
[  984.123018]  folio_wait_bit_common+0x13b/0x330
[  984.123019]  writeback_iter+0x1a5/0x2f0
[  984.123020]  </TASK>
"""

PANIC = """\
[    3.141592] VFS: Cannot open root device "vda1" or unknown-block(0,0): error -6
[    3.141600] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)
[    3.141601] CPU: 0 PID: 1 Comm: swapper/0 Not tainted 6.12.0 #1
[    3.141610] ---[ end Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0) ]---
"""

OOM = """\
[  700.000001] ledger invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0
[  700.000002] CPU: 1 PID: 4242 Comm: ledger Not tainted 6.12.0 #1
[  700.000100] Out of memory: Killed process 4242 (ledger) total-vm:2097152kB, anon-rss:1048576kB, file-rss:0kB
"""

SNIPPETS = [
    # (name, text, crash, kind, title regex)
    ("bad_page", BAD_PAGE, True, "bad_page", r"^BUG: Bad page state in shrink_folio_list$"),
    ("bad_rss", "[ 90.1] BUG: Bad rss-counter state mm:00000000deadbeef type:MM_ANONPAGES val:-1\n",
     True, "bad_page", r"^BUG: Bad rss-counter state$"),
    ("vm_bug_on", VM_BUG_ON, True, "bug", r"^kernel BUG in add_to_swap_cache$"),
    ("kvm_warning", KVM_WARN, True, "warning", r"^WARNING in handle_changed_spte$"),
    ("kvm_warning_618", "WARNING: arch/x86/kvm/mmu/tdp_mmu.c:532 at handle_changed_spte+0x8f1/0x1a70 [kvm], "
     "CPU#3: qemu-system-x86/812\n", True, "warning", r"^WARNING in handle_changed_spte$"),
    ("kernel_bug_no_rip", "kernel BUG at mm/filemap.c:1530!\n", True, "bug", r"^kernel BUG in mm/filemap\.c$"),
    ("soft_lockup", SOFT_LOCKUP, True, "hang", r"^BUG: soft lockup in shrink_slab$"),
    ("rcu_stall", RCU_STALL, True, "hang", r"^INFO: rcu detected stall in kvm_mmu_page_fault$"),
    ("hung_task", HUNG_TASK, True, "hang", r"^INFO: task hung in writeback_iter$"),
    ("panic", PANIC, True, "panic", r"^kernel panic: VFS: Unable to mount root fs on unknown-block\(NUM,NUM\)$"),
    ("oom", OOM, False, "oom", r"OOM"),
    ("gpf", "[  5.1] Oops: general protection fault, probably for non-canonical address 0xdffffc0000000001: "
     "0000 [#1] PREEMPT SMP KASAN NOPTI\n[  5.2] RIP: 0010:ledger_verify+0x1c/0x80\n",
     True, "oops", r"^general protection fault in ledger_verify$"),
    ("null_deref", "[ 5.1] BUG: kernel NULL pointer dereference, address: 0000000000000008\n"
     "[ 5.2] #PF: supervisor read access in kernel mode\n[ 5.3] Oops: 0000 [#1] SMP\n"
     "[ 5.4] RIP: 0010:folio_mapping+0x5/0x60\n", True, "oops",
     r"^BUG: unable to handle kernel NULL pointer dereference in folio_mapping$"),
    ("atomic_sleep", "BUG: sleeping function called from invalid context at mm/slab.h:123\n"
     "in_atomic(): 1, irqs_disabled(): 0, non_block: 0, pid: 5, name: kworker\nCall Trace:\n"
     " dump_stack_lvl+0x7d/0xa0\n __might_resched+0x1b0/0x2a0\n kmalloc_trace+0x30/0x90\n"
     " ledger_flush+0x40/0x90\n", True, "bug", r"^BUG: sleeping function called from invalid context in ledger_flush$"),
    ("kasan", "==================================================================\n"
     "BUG: KASAN: slab-use-after-free in kvm_mmu_free_page+0x1f/0x80 [kvm]\n"
     "Read of size 8 at addr ffff888100aa0000 by task qemu/812\n", True, "kasan",
     r"^KASAN: slab-use-after-free Read in kvm_mmu_free_page$"),
    ("lockdep", "======================================================\n"
     "WARNING: possible circular locking dependency detected\n6.12.0 #1 Not tainted\n"
     "------------------------------------------------------\nledger/42 is trying to acquire lock:\n"
     "ffff8881 (&mm->mmap_lock){++++}-{3:3}, at: ledger_fault+0x12/0x40\n", True, "lockdep",
     r"^possible deadlock in ledger_fault$"),
    ("refcount", "------------[ cut here ]------------\nrefcount_t: underflow; use-after-free.\n"
     "WARNING: CPU: 0 PID: 1 at lib/refcount.c:28 refcount_warn_saturate+0x1a/0x100\n"
     "Call Trace:\n refcount_warn_saturate+0x1a/0x100\n ledger_put+0x33/0x40\n", True, "refcount",
     r"^WARNING: refcount bug in ledger_put$"),
    ("leak", "BUG: memory leak\nunreferenced object 0xffff888100a0b000 (size 64):\n"
     "  comm \"ledger\", pid 42, jiffies 4294901234\n  backtrace (crc 0):\n"
     "    kmemleak_alloc+0x4b/0x80\n    __kmalloc+0x1a0/0x3d0\n    ledger_alloc+0x20/0x60\n",
     True, "leak", r"^memory leak in ledger_alloc$"),
    ("netdev", "unregister_netdevice: waiting for lo to become free. Usage count = 2\n", True, "hang",
     r"^unregister_netdevice: waiting for DEV to become free$"),
    ("sched_atomic", "BUG: scheduling while atomic: ledger/42/0x00000002\nCall Trace:\n dump_stack+0x1/0x2\n"
     " __schedule_bug+0x1/0x2\n __schedule+0x1/0x2\n schedule+0x1/0x2\n ledger_wait+0x1/0x2\n",
     True, "bug", r"^BUG: scheduling while atomic in ledger_wait$"),
    ("invalid_opcode_alone", "invalid opcode: 0000 [#1] SMP\nRIP: 0010:ledger_bug+0x1/0x2\n", True, "oops",
     r"^invalid opcode in ledger_bug$"),
    # negatives: benign lines that look scary
    ("user_segv", "[ 36.8] traps: ledger[3615] general protection fault ip:7feb96eb56a1 sp:20000fd0 error:0 "
     "in ledger[7feb96e75000+84000]\n", False, "none", r"^$"),
    ("benign_warning", "[ 1.2] Spectre V2 : WARNING: Unprivileged eBPF is enabled with eIBRS on\n"
     "[ 2.0] XFS (vda): WARNING: Reset corrupted AGFL on AG 0.\n[ 3.0] INFO: lockdep is turned off.\n"
     "[ 4.0] INFO: NMI handler (perf_event_nmi_handler) took too long to run: 1.356 msecs\n"
     "[ 5.0] Boot_DEBUG: start\n", False, "none", r"^$"),
    ("clean_boot", "SeaBIOS (version 1.16.3)\nBooting the kernel.\n[    0.000000] Linux version 6.12.0 (gcc) #1 SMP\n"
     "[    1.000000] Run /sbin/init as init process\n", False, "none", r"^$"),
    ("reboot", "[    0.000000] Linux version 6.12.0 (gcc) #1 SMP\n[   12.5] ledger: 100 pages written\n"
     "SeaBIOS (version 1.16.3)\nBooting the kernel.\n[    0.000000] Linux version 6.12.0 (gcc) #1 SMP\n",
     True, "panic", r"^unexpected kernel reboot$"),
]


@pytest.mark.parametrize("name,text,crash,kind,title_rx", SNIPPETS, ids=[s[0] for s in SNIPPETS])
def test_snippet(name, text, crash, kind, title_rx):
    rep = classify(text)
    assert (rep.crash, rep.kind) == (crash, kind), rep
    assert re.search(title_rx, rep.title), rep.title
    if crash:
        assert rep.start_line >= 1 and rep.excerpt


def test_oom_is_infra_not_crash():
    rep = classify(OOM)
    assert rep.infra and not rep.crash and rep.kind == "oom"
    assert not classify(KVM_WARN).infra
    # a real crash wins over an OOM, and both are listed
    both = OOM + KVM_WARN
    assert classify(both).kind == "warning"
    assert [r.kind for r in classify_all(both)] == ["warning", "oom"]


def test_panic_after_warning_is_one_report():
    text = KVM_WARN.replace("---[ end trace 0000000000000000 ]---",
                            "Kernel panic - not syncing: kernel: panic_on_warn set ...")
    reps = classify_all(text)
    assert [(r.kind, r.title) for r in reps] == [("warning", "WARNING in handle_changed_spte")]


def test_classify_all_lists_distinct_reports():
    reps = classify_all(BAD_PAGE + "\n" * 30 + KVM_WARN + "\n" * 30 + KVM_WARN + "\n" * 30 + HUNG_TASK)
    assert [r.kind for r in reps] == ["bad_page", "warning", "hang"]
    assert reps[1].start_line > reps[0].start_line


def test_start_line_and_excerpt():
    text = "noise\n" * 7 + KVM_WARN
    rep = classify(text)
    assert rep.start_line == 8                  # the "cut here" line opens the report
    assert rep.excerpt.splitlines()[1].endswith("handle_changed_spte+0x8f1/0x1a70 [kvm]")
    big = "x\n" * 3 + KVM_WARN.replace("  </TASK>\n", "  </TASK>\n" + " frame+0x1/0x2\n" * 200)
    assert len(classify(big).excerpt.splitlines()) <= console.EXCERPT_LINES


_TS = re.compile(r"\[\s*\d+\.\d+\](?:\[\s*[TC]\d+\])?")


@pytest.mark.parametrize("text", [BAD_PAGE, VM_BUG_ON, KVM_WARN, SOFT_LOCKUP, HUNG_TASK, PANIC])
def test_title_is_stable(text):
    """Same report, different addresses / offsets / pids / timestamps / prefixes -> same title."""
    base = classify(text)
    variants = [
        re.sub(r"0x[0-9a-f]+", lambda m: hex(int(m.group(), 16) ^ 0x5a5), text),
        re.sub(r"\b(PID:? ?|pid:|pfn:)\d+", r"\g<1>31337", text),
        _TS.sub("[  9999.000001][ T777]", text),
        _TS.sub("[ 1.5]", text),
        _TS.sub("", text),
        "\n".join("<4>" + line for line in text.splitlines()),
    ]
    for v in variants:
        rep = classify(v)
        assert (rep.crash, rep.kind, rep.title) == (base.crash, base.kind, base.title), v[:200]


def test_interleaved_lines():
    text = ("[  10.0][ T1] ledger: ok\n[  10.1][ T2] BUG: KASAN: use-after-free in ledger_read+0x1/0x2\n"
            "[  10.1][ T3] ledger: other cpu line\n[  10.2][ T2] Read of size 8 at addr ffff888000001000 by task x/1\n")
    rep = classify(text)
    assert (rep.kind, rep.title) == ("kasan", "KASAN: use-after-free Read in ledger_read")


def test_crlf_console():
    rep = classify(KVM_WARN.replace("\n", "\r\n"))
    assert (rep.kind, rep.title, rep.start_line) == ("warning", "WARNING in handle_changed_spte", 1)
    assert "\r" not in rep.excerpt


def test_oom_variants():
    for line in ("Out of memory (oom_kill_allocating_task): Killed process 77 (ledger)",
                 "Memory cgroup out of memory: Killed process 77 (ledger) total-vm:1kB",
                 "Out of memory: Kill process 77 (ledger) score 900 or sacrifice child"):
        rep = classify(f"[ 1.0] {line}\n")
        assert (rep.crash, rep.kind, rep.infra) == (False, "oom", True), line
    # the kernel dying of OOM is still a crash
    rep = classify(OOM + "[ 701.0] Kernel panic - not syncing: System is deadlocked on memory\n")
    assert (rep.crash, rep.kind) == (True, "panic")


def test_far_panic_is_its_own_report():
    text = KVM_WARN + "[ 1.0] ledger: tick\n" * 1000 + PANIC
    assert [r.kind for r in classify_all(text)] == ["warning", "panic"]


def test_empty_and_no_crash():
    assert classify("") == console.NO_REPORT
    assert classify_all("") == []
    assert classify("hello\nworld\n").kind == "none"


# ---------------------------------------------------------------------------
# CLI exit codes
# ---------------------------------------------------------------------------
def test_cli_exit_codes(tmp_path, capsys):
    crash = tmp_path / "crash.log"
    crash.write_text(KVM_WARN)
    clean = tmp_path / "clean.log"
    clean.write_text("[ 1.0] all good\n")
    oom = tmp_path / "oom.log"
    oom.write_text(OOM)

    assert cli_classify(str(crash), as_json=True) == 1
    out = json.loads(capsys.readouterr().out.strip())
    assert out == {"crash": True, "kind": "warning", "title": "WARNING in handle_changed_spte"}

    assert cli_classify(str(clean), as_json=True) == 0
    assert json.loads(capsys.readouterr().out) == {"crash": False, "kind": "none", "title": ""}

    assert cli_classify(str(oom), as_json=False) == 0
    assert "oom" in capsys.readouterr().out.lower()

    assert cli_classify(str(crash), as_json=False) == 1
    assert "WARNING in handle_changed_spte" in capsys.readouterr().out

    rc = cli_classify(str(tmp_path / "missing.log"), as_json=True)
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and "missing.log" in captured.err
    assert cli_classify(str(tmp_path), as_json=False) == 2          # a directory
    capsys.readouterr()

    binary = tmp_path / "bin.log"
    binary.write_bytes(b"\xff\xfe\x00" + KVM_WARN.encode())
    assert cli_classify(str(binary), as_json=True) == 1


# ---------------------------------------------------------------------------
# taint flags
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("value,letters", [
    (0, []),
    (1 << 9, ["W"]),
    (1 << 7 | 1 << 9, ["D", "W"]),
    (1 << 5 | 1 << 14, ["B", "L"]),
    (1, ["P"]),
    (1 << 12 | 1 << 13, ["O", "E"]),
    (1 << 30, ["bit30"]),
])
def test_taint_flags(value, letters):
    assert taint_flags(value) == letters


def test_taint_flags_rejects_negative():
    with pytest.raises(ValueError):
        taint_flags(-1)


def test_bench_small():
    res = bench_console(size_mb=1)
    assert res["size_mb"] >= 0.9 and res["seconds"] < 1.0
    assert res["kind"] == "warning"


def test_report_is_frozen():
    rep = classify(KVM_WARN)
    assert isinstance(rep, Report)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rep.kind = "x"  # type: ignore[misc]


def test_rule_table_is_well_formed():
    names = [r.name for r in console_rules.RULES]
    assert len(names) == len(set(names))
    for r in console_rules.RULES + (console_rules.REBOOT,):
        assert r.hot, f"{r.name}: no hot word locates it"
        assert all(w.text and w.text.isprintable() for w in r.hot), r.name
        if isinstance(r.kind, str):
            assert r.kind in console.KINDS, (r.name, r.kind)
    # the prefilter is exactly what the records declare
    assert set(console_rules.HOT_WORDS) == {w for r in console_rules.RULES for w in r.hot}
    assert not {w.text for w in console_rules.REBOOT.hot} & {w.text for w in console_rules.HOT_WORDS}


def test_every_header_match_holds_one_of_its_hot_words():
    """Lines are only looked at for their hot words, so a header matching without one of them would be missed."""
    bad = []
    texts = [parse_case(p)[1] for p in CASES] + [s[1] for s in SNIPPETS]
    for text in texts:
        for line in text.splitlines():
            for r in console_rules.RULES:
                if r.header.search(line) and not any(w.text in line for w in r.hot):
                    bad.append(f"{r.name}: {line[:120]!r}")
    assert not bad, "\n".join(bad[:20])
