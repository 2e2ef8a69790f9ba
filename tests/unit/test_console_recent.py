"""Console reports of current kernels (6.18+, read in the Debian 7.2.13 source), each line built exactly by the
printk format that prints it, with the format quoted next to the builder:

  kernel/panic.c __warn():         "WARNING: %s:%d at %pS, CPU#%d: %s/%d\\n"  (file, line, caller, cpu, comm, pid)
                                   "WARNING: at %pS, CPU#%d: %s/%d\\n"        (a WARN without file and line)
  lib/bug.c __report_bug():        CUT_HERE, then the bug entry's format with pr_warn("%s", fmt): on x86 with
                                   CONFIG_DEBUG_BUGVERBOSE_DETAILED the WARN_ON()'s condition (arch/x86/include/asm/
                                   bug.h WARN_CONDITION_STR), else a WARN()'s message; then __warn()
  include/asm-generic/bug.h:       CUT_HERE "------------[ cut here ]------------\\n"
  arch/x86/kernel/dumpstack.c:     __die_header() "Oops: %s: %04lx [#%d]%s%s%s%s\\n" (7.2; 6.12 adds " PREEMPT"
                                   first), show_ip() "%sRIP: %04x:%pS\\n", "%sCall Trace:\\n", die() panic("Fatal
                                   exception"); stack lines by printk_stack_address() "%s %s%pBb\\n"
  arch/x86/kernel/traps.c:         exc_divide_error() -> do_error_trap(regs, 0, "divide error", ...) -> die(); in
                                   user mode show_signal() pr_info("%s[%d] %s%s ip:%lx sp:%lx error:%lx") with
                                   pr_fmt "traps: "
  lib/dump_stack.c:                "%sCPU: %d UID: %u PID: %d Comm: %.20s %s%s %s %.*s %s %s ..."
  kernel/panic.c:                  print_oops_end_marker() "---[ end trace %016llx ]---\\n"

%pS prints "func+0x<off>/0x<size>" and " [module]" for a module symbol; %pBb adds the module's 40-hex build id.
A "[cond] " right after "WARNING: " is not what 7.2 prints (the condition has its own line) but is tolerated.
"""
from __future__ import annotations

import pytest

from harness.oracles.console import classify

CUT_HERE = "------------[ cut here ]------------"
BUILD_ID = "0123456789abcdef0123456789abcdef01234567"


def ps(func: str, off: int, size: int, mod: str | None = None) -> str:
    """%pS of a text address: "func+0x1a/0x200" (+ " [mod]" in a module)."""
    return f"{func}+{off:#x}/{size:#x}" + (f" [{mod}]" if mod else "")


def pbb(func: str, off: int, size: int, mod: str | None = None) -> str:
    """%pBb (stack traces): like %pS, a module's build id after its name."""
    return f"{func}+{off:#x}/{size:#x}" + (f" [{mod} {BUILD_ID}]" if mod else "")


def warn_line(file: str | None, line: int, caller: str, cpu: int, comm: str, pid: int) -> str:
    if file:
        return "WARNING: %s:%d at %s, CPU#%d: %s/%d" % (file, line, caller, cpu, comm, pid)
    return "WARNING: at %s, CPU#%d: %s/%d" % (caller, cpu, comm, pid)


def cpu_line(cpu: int, pid: int, comm: str, taint: str = "Not tainted") -> str:
    # "%sCPU: %d UID: %u PID: %d Comm: %.20s %s%s %s %.*s %s %s "  (kexec "", taint, release, version, preempt
    # model, LINUX_PACKAGE_ID; the build id is empty without CONFIG_STACKTRACE_BUILD_ID)
    return "CPU: %d UID: %u PID: %d Comm: %.20s %s%s %s %s %s %s " % (
        cpu, 0, pid, comm, "", taint, "7.2.13+deb14-amd64", "#1", "PREEMPT(lazy)", " Debian 7.2.13-1")


def die_header(what: str, n: int = 1, preempt: bool = False) -> str:
    # 7.2: "Oops: %s: %04lx [#%d]%s%s%s%s" (SMP, DEBUG_PAGEALLOC, KASAN, PTI); 6.12: PREEMPT before SMP
    return "Oops: %s: %04lx [#%d]%s%s%s%s" % (what, 0, n, " PREEMPT" if preempt else "", " SMP", "", " NOPTI")


def stack(*frames: str) -> list[str]:
    return ["Call Trace:", " <TASK>", *(" " + f for f in frames), " </TASK>"]


def log(*lines: str, prefix: str = "[  272.301130][   T812] ") -> str:
    return "".join(prefix + ln + "\n" for ln in lines)


KVM_WARN = [CUT_HERE, "!is_shadow_present_pte(old_spte)",  # x86: the bare WARN_ON() condition
            warn_line("arch/x86/kvm/mmu/tdp_mmu.c", 532, ps("handle_changed_spte", 0x8f1, 0x1a70, "kvm"), 3,
                      "qemu-system-x86", 812),
            "Modules linked in: kvm_amd kvm", cpu_line(3, 812, "qemu-system-x86"),
            "RIP: 0010:" + ps("handle_changed_spte", 0x8f1, 0x1a70, "kvm"),
            *stack(pbb("tdp_mmu_zap_leafs", 0x1b2, 0x2d0, "kvm"),
                   pbb("kvm_tdp_mmu_unmap_gfn_range", 0x91, 0x120, "kvm"),
                   pbb("kvm_mmu_notifier_invalidate_range_start", 0x1e5, 0x3a0, "kvm")),
            "---[ end trace %016x ]---" % 0]

CASES = [
    # (name, log, kind, title)
    ("warn_7_2_kvm", log(*KVM_WARN), "warning", "WARNING in handle_changed_spte"),
    ("warn_7_2_no_prefix", log(*KVM_WARN, prefix=""), "warning", "WARNING in handle_changed_spte"),
    ("warn_7_2_dmesg_prefix", log(*KVM_WARN, prefix="[    5.123456] "), "warning", "WARNING in handle_changed_spte"),
    ("warn_7_2_message", log(CUT_HERE, "kvm: MMU-writable SPTE is not Host-writable: 8000000000000000",
                             warn_line("arch/x86/kvm/mmu/spte.h", 489, ps("make_spte", 0x2a5, 0x3b0, "kvm"), 0,
                                       "CPU 0/KVM", 401)),
     "warning", "WARNING in make_spte"),
    ("warn_7_2_builtin", log(CUT_HERE, "folio_test_dirty(folio)",
                             warn_line("mm/vmscan.c", 1234, ps("shrink_folio_list", 0x12, 0x900), 0, "kswapd0", 45)),
     "warning", "WARNING in shrink_folio_list"),
    ("warn_7_2_no_file", log(CUT_HERE, warn_line(None, 0, ps("handle_changed_spte", 0x8f1, 0x1a70, "kvm"), 3,
                                                 "qemu-system-x86", 812)),
     "warning", "WARNING in handle_changed_spte"),
    ("warn_7_2_no_symbol", log(CUT_HERE, warn_line(None, 0, "0xffffffffc0a01234", 1, "qemu-system-x86", 812),
                               *stack(pbb("kvm_tdp_mmu_map", 0x3c1, 0x6b0, "kvm"))),
     "warning", "WARNING in kvm_tdp_mmu_map"),
    ("warn_7_2_refcount", log(CUT_HERE, "refcount_t: underflow; use-after-free.",
                              warn_line("lib/refcount.c", 28, ps("refcount_warn_saturate", 0x1a, 0x100), 0,
                                        "ledger", 42),
                              *stack(pbb("refcount_warn_saturate", 0x1a, 0x100), pbb("ledger_put", 0x33, 0x40))),
     "refcount", "WARNING: refcount bug in ledger_put"),
    ("warn_7_2_locking", log(CUT_HERE, "DEBUG_LOCKS_WARN_ON(1)",
                             warn_line("kernel/locking/lockdep.c", 232, ps("__lock_acquire", 0x10a3, 0x2130), 0,
                                       "ledger", 42),
                             *stack(pbb("lock_acquire", 0xd4, 0x2e0), pbb("ledger_lock", 0x21, 0x50))),
     "lockdep", "WARNING: locking bug in ledger_lock"),
    ("warn_inline_cond_tolerated", log("WARNING: [!ptr] " + warn_line("mm/vmscan.c", 1234,
                                       ps("shrink_folio_list", 0x12, 0x900), 0, "kswapd0", 45)[len("WARNING: "):]),
     "warning", "WARNING in shrink_folio_list"),
    ("divide_7_2", log(die_header("divide error"), "Modules linked in: ledger", cpu_line(0, 42, "ledger"),
                       "Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.3-debian-1.16.3-2 04/01/2014",
                       "RIP: 0010:" + ps("ledger_ratio", 0x1c, 0x80),
                       "Code: 48 89 f8 31 d2 <48> f7 f6 c3 cc cc cc cc",
                       *stack(pbb("ledger_round", 0x88, 0x140), pbb("ledger_main", 0x1f0, 0x300)),
                       "---[ end trace %016x ]---" % 0, "Kernel panic - not syncing: Fatal exception"),
     "oops", "divide error in ledger_ratio"),
    ("divide_7_2_module", log(die_header("divide error"), cpu_line(1, 812, "qemu-system-x86"),
                              "RIP: 0010:" + ps("kvm_calc_ratio", 0x2e, 0x60, "kvm"),
                              *stack(pbb("kvm_arch_vcpu_ioctl_run", 0x51e, 0x1a20, "kvm"))),
     "oops", "divide error in kvm_calc_ratio"),
    ("divide_7_2_rip_unknown", log(die_header("divide error"), cpu_line(0, 42, "ledger"), "RIP: 0010:0x0",
                                   *stack(pbb("ledger_round", 0x88, 0x140))),
     "oops", "divide error in ledger_round"),
    ("divide_6_12", log(die_header("divide error", preempt=True), "RIP: 0010:" + ps("ledger_ratio", 0x1c, 0x80)),
     "oops", "divide error in ledger_ratio"),
]


@pytest.mark.parametrize("name,text,kind,title", CASES, ids=[c[0] for c in CASES])
def test_recent_report(name, text, kind, title):
    rep = classify(text)
    assert (rep.crash, rep.kind, rep.title) == (True, kind, title), rep
    assert rep.start_line >= 1 and rep.excerpt


def test_warning_title_is_stable_across_offsets_cpus_and_pids():
    a = log(CUT_HERE, warn_line("mm/vmscan.c", 1234, ps("shrink_folio_list", 0x12, 0x900), 0, "kswapd0", 45))
    b = log(CUT_HERE, warn_line("mm/vmscan.c", 1240, ps("shrink_folio_list", 0x3a, 0x910), 1, "kswapd1", 46),
            prefix="[ 9999.000001][    T1] ")
    assert classify(a).title == classify(b).title == "WARNING in shrink_folio_list"


NEGATIVES = [
    # traps.c show_signal() for a user-mode divide error: the process gets SIGFPE, the kernel is fine
    ("user_divide", log("traps: ledger[3615] trap divide error ip:401136 sp:7ffd2c8e4a10 error:0 in "
                        "ledger[401000+1000]")),
    # kernel/workqueue.c: a deprecation notice printed with pr_warn, not a WARN()
    ("workqueue_notice", log("WARNING: Flushing system-wide workqueues will be prohibited in near future.")),
    ("cut_here_alone", log(CUT_HERE)),
]


@pytest.mark.parametrize("name,text", NEGATIVES, ids=[n[0] for n in NEGATIVES])
def test_not_a_report(name, text):
    rep = classify(text)
    assert (rep.crash, rep.kind) == (False, "none"), rep
