"""Console oracle: find kernel crash reports in a guest console log.

A pure, table-driven classifier in the spirit of syzkaller's ``pkg/report``
(written from the kernel's own report formats, not copied from syzkaller).

How it works
------------
1. A few literal keywords (``_HOT_WORDS``) are located with ``str.find`` over the
   whole text; only the lines holding one are looked at further.  Each such
   line is matched against the
   ordered rule table ``_RULES`` (the first rule that matches wins).  Matching
   uses ``search`` so any console prefix is tolerated: ``[  272.3][   T12]``
   (printk caller id), ``[    1.23]`` (plain dmesg), ``<4>`` log levels,
   syslog headers, ``** N printk messages dropped **`` or none at all.
2. Hits ("triggers") are grouped into reports: a trigger within a few lines of
   the previous one belongs to the same report (e.g. ``BUG: unable to handle``
   followed by ``Oops: 0000 [#1]``), and the most specific trigger of a group
   (highest ``rank``) names it.  *Consequence* triggers -- ``Kernel panic - not
   syncing``, an unexpected reboot, SLUB trailer lines -- are folded into the
   preceding report when there is one, because they are its after-effect
   (panic_on_warn, panic_on_oops, hung_task_panic, panic=N reboot).
3. The title is built from the header plus the first interesting stack frame
   (``RIP:``/``pc :``/``PC is at`` or the call trace, skipping generic frames
   such as dump_stack, __warn, kasan_report, schedule, mutex_lock).  Addresses,
   offsets, PIDs and timestamps never enter a title, so the same bug gives the
   same title on every run.

Kinds
-----
panic, oops, bug, warning, kasan, kfence, kmsan, kcsan, ubsan, lockdep, hang,
leak, bad_page, refcount, oom, none.

OOM policy: an OOM kill ("Out of memory: Killed process", "Memory cgroup out of
memory: Killed process") is an *infrastructure* finding in our runs (the guest
was sized too small for the workload), never a kernel bug.  It is reported as
``Report(crash=False, kind="oom", ...)`` with ``Report.infra == True``.
``classify`` returns a real crash in preference to an OOM; an OOM is returned
only when the log has no crash.  A *panic* because of OOM ("Kernel panic - not
syncing: Out of memory ...") is still a crash (kind panic): the kernel died.

An unexpected reboot (a second firmware/decompressor/"Linux version" banner
after the kernel had already run) with no preceding report is reported as
kind ``panic`` with title "unexpected kernel reboot" (the guest reset, e.g.
a triple fault).

Known non-goals: userspace tool failures (syzkaller's SYZFAIL, Go runtime
errors) are not kernel reports and are not detected.
"""
from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

__all__ = [
    "Report", "classify", "classify_all", "cli_classify", "taint_flags",
    "TAINT_FLAGS", "bench_classify", "KINDS",
]

KINDS = ("panic", "oops", "bug", "warning", "kasan", "kfence", "kmsan", "kcsan",
         "ubsan", "lockdep", "hang", "leak", "bad_page", "refcount", "oom", "none")

EXCERPT_LINES = 60
_BODY_LINES = 150        # how far after a header we look for frames / details
_MERGE_WINDOW = 10       # triggers this close (in lines) form one report
_CONSEQUENCE_WINDOW = 400  # a panic/reboot this close after a report is its after-effect
_WEAK_RANK = 30          # triggers at or below this rank never name a report if a stronger one is near


@dataclass(frozen=True)
class Report:
    crash: bool
    kind: str
    title: str
    excerpt: str = ""
    start_line: int = 0          # 1-based line of the report's first line; 0 = none
    infra: bool = field(default=False)

    def as_dict(self) -> dict:
        return {"crash": self.crash, "kind": self.kind, "title": self.title,
                "start_line": self.start_line, "infra": self.infra}


NO_REPORT = Report(crash=False, kind="none", title="", excerpt="", start_line=0)

# --------------------------------------------------------------------------
# Taint flags (/proc/sys/kernel/tainted, Documentation/admin-guide/tainted-kernels.rst)
# --------------------------------------------------------------------------
TAINT_FLAGS: tuple[tuple[str, str], ...] = (
    ("P", "proprietary module loaded"),          # 0
    ("F", "module force loaded"),                # 1
    ("S", "out-of-spec system / SMP unsafe"),    # 2
    ("R", "module force unloaded"),              # 3
    ("M", "machine check exception"),            # 4
    ("B", "bad page referenced"),                # 5
    ("U", "taint requested by userspace"),       # 6
    ("D", "kernel died recently (OOPS or BUG)"), # 7
    ("A", "ACPI table overridden"),              # 8
    ("W", "kernel issued warning"),              # 9
    ("C", "staging driver loaded"),              # 10
    ("I", "firmware bug workaround"),            # 11
    ("O", "out-of-tree module loaded"),          # 12
    ("E", "unsigned module loaded"),             # 13
    ("L", "soft lockup occurred"),               # 14
    ("K", "kernel live patched"),                # 15
    ("X", "auxiliary taint"),                    # 16
    ("T", "built with struct randomization"),    # 17
    ("N", "in-kernel test run"),                 # 18
    ("J", "fwctl mutating command used"),        # 19
)


def taint_flags(value: int) -> list[str]:
    """Decode /proc/sys/kernel/tainted into its letters, lowest bit first.

    ``taint_flags(0) == []``; ``taint_flags(1 << 9 | 1 << 7) == ["D", "W"]``.
    Unknown high bits come out as ``"bit<N>"``.  The names are in TAINT_FLAGS.
    """
    value = int(value)
    if value < 0:
        raise ValueError(f"taint value must be >= 0, got {value}")
    out: list[str] = []
    bit = 0
    while value >> bit:
        if value >> bit & 1:
            out.append(TAINT_FLAGS[bit][0] if bit < len(TAINT_FLAGS) else f"bit{bit}")
        bit += 1
    return out


# --------------------------------------------------------------------------
# Stack frames
# --------------------------------------------------------------------------
# "func+0x1a/0x200", "[<ffffffff81234>] ? func+0x..", "func file.c:12 [inline]"
_FRAME_RE = re.compile(
    r"(?:^|[\s\]>(])(\?\s+)?([A-Za-z_][\w.$]*)\+0x[0-9a-fA-F]+/0x[0-9a-fA-F]+"
    r"|^\s*([A-Za-z_][\w.]*) \S+\.[chSs]:\d+ \[inline\]")
# Where the CPU was: x86 RIP/IP/EIP, arm64 "pc :", arm "PC is at", riscv "epc :".
_PC_RE = re.compile(
    r"(?:\bRIP: [0-9a-f]{4}:(?:\[<[0-9a-f]+>\] )?|\bE?IP: (?:\[<[0-9a-f]+>\] |[0-9a-f]{4}:)?"
    r"|\bpc : (?:\[<[0-9a-f]+>\] )?|\bPC is at |\bepc : |\bNIP \[[0-9a-f]+\] )"
    r"([A-Za-z_][\w.$]*)\+0x")
_USER_RIP_RE = re.compile(r"RIP: 0033:")
_FUNC_SUFFIX_RE = re.compile(r"(?:\.(?:isra|constprop|part|cold|llvm|lto_priv|localalias)(?:\.\d+)?)+$|\.\d+$")

# Frames that never name a bug: reporting machinery, sanitizer runtimes,
# locking/scheduling primitives, interrupt/syscall entry glue.
_SKIP_FRAME_RE = re.compile(r"""(?x)^(?:
    dump_stack\w*|show_stack\w*|show_regs\w*|__dump_stack|dump_backtrace\w*|sched_show_task|
    print_\w+|printk\w*|_printk|vprintk\w*|end_report|start_report|\w+_is_bad_report|\w+_report_error|
    report_\w+|panic|nmi_panic|
    __warn\w*|warn_\w+|warn_slowpath\w*|__warn_printk|handle_bug|exc_\w+|asm_exc_\w+|
    do_trap\w*|do_error_trap|do_invalid_op|invalid_op|do_undefinstr|bug_handler\w*|brk_handler|
    do_debug_exception|el1_\w+|el0_\w+|do_mem_abort|die|oops_\w+|__die\w*|
    kasan_\w+|__kasan_\w+|check_memory_region\w*|__asan_\w+|asan_\w+|kmsan_\w+|__msan_\w+|
    __kmsan_\w+|kcsan_\w+|__tsan_\w+|__kcsan_\w+|ubsan_\w+|__ubsan_\w+|kfence_\w+|__kfence_\w+|
    memcpy\w*|memset\w*|memmove\w*|__memcpy\w*|__memset\w*|memcmp|strlen|strcpy|strncpy|
    lock_acquire\w*|lock_release|__lock_acquire|lock_acquired|lock_contended|
    _raw_\w+|__raw_\w+|do_raw_\w+|queued_\w+|native_queued_\w+|spin_\w+|__spin_\w+|
    mutex_\w+|__mutex_\w+|rt_mutex\w*|__rt_mutex\w*|down|down_\w+|__down\w*|up_\w+|
    rwsem_\w+|__rwsem_\w+|percpu_down_\w+|percpu_rwsem_\w+|
    schedule|__schedule|schedule_\w+|io_schedule\w*|preempt_schedule\w*|context_switch|
    __switch_to\w*|finish_task_switch\w*|
    wait_for_completion\w*|__wait_for_common|wait_for_common\w*|do_wait_for_common|
    __wait_rcu_gp|wait_rcu_gp|
    __might_sleep|___might_sleep|__might_fault|might_fault|__might_resched|might_sleep|
    check_preemption_disabled|debug_smp_processor_id|__this_cpu_preempt_check|
    refcount_\w+|__refcount_\w+|
    __list_add_valid\w*|__list_del_entry_valid\w*|list_\w+_valid\w*|__list_\w+|
    usercopy_\w+|__check_object_size|check_object_size|__check_heap_object|check_heap_object|
    bad_page|free_page_is_bad\w*|free_pages_check\w*|check_free_page\w*|check_new_page\w*|
    free_pages_prepare|free_unref_\w+|free_the_page|__free_pages\w*|__folio_put|
    kmalloc\w*|__kmalloc\w*|kmem_cache_alloc\w*|kmem_cache_zalloc|kzalloc\w*|kcalloc|
    kvmalloc\w*|__kvmalloc\w*|kmalloc_trace\w*|slab_\w+|__slab_\w+|___slab_\w+|
    kmemleak_\w+|__alloc_pages\w*|alloc_pages\w*|__alloc_skb|__do_kmalloc\w*|krealloc\w*|
    kstrdup\w*|kmemdup\w*|__vmalloc\w*|vmalloc\w*|vzalloc|kvzalloc|
    rcu_\w+|__rcu_\w+|print_cpu_stall|print_other_cpu_stall|check_cpu_stall|
    irq_\w+|__irq_\w+|handle_irq\w*|do_IRQ|common_interrupt|ret_from_intr|
    \w*apic_timer_interrupt|sysvec_\w+|asm_sysvec_\w+|__sysvec_\w+|
    hrtimer_\w+|__hrtimer_\w+|tick_\w+|update_process_times|scheduler_tick|sched_tick|
    nmi_\w+|__nmi_\w+|default_do_nmi|do_nmi|arch_trigger_\w+|trigger_\w+_backtrace|
    watchdog_\w+|__watchdog_\w+|
    entry_SYSCALL\w*|do_syscall_\w+|do_fast_syscall\w*|syscall_\w+|ret_from_fork\w*|
    kthread|worker_thread|smpboot_thread_fn|
    native_safe_halt|native_\w+_msr\w*|native_irq_\w+|native_flush_\w+|arch_stack_walk|arch_local_\w+|
    arch_atomic\w*|arch_static_branch\w*|arch_cpu_idle\w*|pv_\w+|__x86_indirect\w*|__x86_return\w*|srso_\w+|
    lockdep_\w+|__lockdep_\w+|debug_check_\w+|register_lock_class|look_up_lock_class|
    check_\w+_usage|mark_lock\w*|validate_chain|check_noncircular|check_prev_add|
    __bfs|bfs|print_usage_bug|valid_state|mark_usage|
    __cfi_\w+|_RNv\w+|rust_helper_\w+|rust_begin_unwind|core::\S+|
    warn_alloc\w*|__warn_alloc\w*|should_fail\w*|fail_dump|
    dump_page|__dump_page|dump_header|out_of_memory|oom_kill_\w+|
    fixup_bug|__schedule_bug|skb_panic|skb_over_panic|skb_under_panic|fortify_panic|__fortify_panic|
    __stack_chk_fail|__phys_addr|__virt_to_phys|__do_kernel_fault|do_page_fault|__do_page_fault|
    do_user_addr_fault|do_kern_addr_fault|page_fault_oops|kernelmode_fixup_or_oops|__bad_area\w*|
    bad_area\w*|no_context|page_fault|asm_exc_page_fault|
    \w*sched_show_task|dump_cpu_task|debug_show_\w+|show_\w+_locks|__sanitizer_cov_\w+|
    write_comp_data|string|hex_string|pointer|vsnprintf|sprintf|snprintf|scnprintf|vscnprintf|
    kvasprintf\w*|format_decode|number|read_word_at_a_time|strnlen|strnstr|strcmp|strncmp|
    strscpy|strstr|hex_dump_to_buffer|__memmove|
    _copy_from_user|_copy_to_user|copy_\w+_user|__copy_\w+_user\w*|raw_copy_\w+|copy_user_\w+|
    _copy_to_iter|_copy_from_iter|copy_\w+_iter|__get_user_\w+|__put_user_\w+|
    kfree|__kfree\w*|kvfree|kfree_sensitive|kmem_cache_free\w*|__kmem_cache_\w+|slab_free\w*|
    __slab_free|qlist_\w+|quarantine_\w+|
    debug_object_\w+|__debug_object_\w+|debug_print_object|\w+_is_static_object|
    debug_check_no_obj_freed|debug_lockdep_\w+|reacquire_held_locks|lock_downgrade|
    hlock_class|lock_is_held\w*|__lock_release|trace_hardirqs_\w+|
    __flush_work|flush_work|__cancel_work\w*|cancel_work_sync|folio_wait_\w+|__folio_lock\w*|
    wait_on_page_bit\w*|__lock_page\w*|bit_wait\w*|out_of_line_wait_on_bit\w*|__wait_on_bit\w*|
    call_rwsem_down_\w+|synchronize_rcu_expedited|synchronize_sched|_synchronize_rcu\w*|
    handle_overflow|handle_null_ptr_deref|handle_object_size_mismatch|handle_misaligned_access|
    handle_shift_out_of_bounds|handle_out_of_bounds|handle_load_invalid_value|
    rb_\w+|__rb_\w+|ref_tracker_\w+|__alloc_frozen_pages\w*|alloc_frozen_pages\w*|
    preempt_count_\w+|get_taint|walk_stackframe|stack_trace_\w+|arch_stack_walk|unwind_\w+|
    __unwind_\w+|__read_once_word_nocheck|_atomic_dec_and_lock\w*|__wake_up\w*|
    __local_bh_enable_ip|local_bh_enable|__seqprop_assert|assertfail|__reiserfs_panic|
    kthread_stop\w*|queue_work_on|__queue_work
)$""")


_SYSCALL_RE = re.compile(r"^(?:__(?:x64|ia32|arm64|riscv|s390x?|se|do)_sys_|SyS_|compat_SyS_|__x64_compat_sys_)")


def _norm_func(name: str) -> str:
    """Strip compiler clone suffixes and arch syscall wrappers: __x64_sys_foo -> sys_foo."""
    name = _FUNC_SUFFIX_RE.sub("", name)
    return _SYSCALL_RE.sub("sys_", name)


def _first_frame(lines: list[str], start: int = 0, skip: Optional[re.Pattern] = None,
                 after: Optional[re.Pattern] = None, limit: int = _BODY_LINES) -> str:
    """First reliable, non-generic stack frame in lines[start:start+limit]."""
    skip = skip or _SKIP_FRAME_RE
    i = start
    end = min(len(lines), start + limit)
    if after is not None:
        while i < end and not after.search(lines[i]):
            i += 1
    for line in lines[i:end]:
        if "RIP: 0033" in line:
            continue
        for m in _FRAME_RE.finditer(line):
            if m.group(1):              # "? func+0x": unreliable frame
                continue
            name = m.group(2) or m.group(3)
            if name is None:
                continue
            name = _norm_func(name)
            if not skip.match(name) and not name.startswith(("0x", "_end")):
                return name
    return ""


def _pc_func(lines: list[str], start: int = 0, limit: int = 40) -> str:
    for line in lines[start:start + limit]:
        if _USER_RIP_RE.search(line):
            continue
        m = _PC_RE.search(line)
        if m:
            name = _norm_func(m.group(1))
            if not _SKIP_FRAME_RE.match(name):
                return name
    return ""


def _crash_site(lines: list[str]) -> str:
    """Function where the CPU was (RIP/pc), else the first interesting frame."""
    return _pc_func(lines) or _first_frame(lines)


def _in(prefix: str, func: str) -> str:
    return f"{prefix} in {func}" if func else prefix


_HEX_RE = re.compile(r"\b(?:0x)?[0-9a-fA-F]{6,}\b|\b0x[0-9a-fA-F]+\b")
_NUM_RE = re.compile(r"\b\d+\b")
_OFFSET_RE = re.compile(r"\+0x[0-9a-fA-F]+(?:/0x[0-9a-fA-F]+)?")
_SPACES_RE = re.compile(r"\s+")


def _clean(msg: str, limit: int = 100) -> str:
    """Make a free-text message title-stable: no offsets, addresses or numbers."""
    msg = _OFFSET_RE.sub("", msg)
    msg = _HEX_RE.sub("ADDR", msg)
    msg = _NUM_RE.sub("NUM", msg)
    msg = _SPACES_RE.sub(" ", msg).strip().rstrip(":,.")
    return msg[:limit].rstrip()


# --------------------------------------------------------------------------
# Title builders: (match, lines-from-header) -> title
# --------------------------------------------------------------------------
TitleFn = Callable[[re.Match, list], str]


def _t_const(title: str) -> TitleFn:
    return lambda m, body: title


def _t_site(prefix: str) -> TitleFn:
    return lambda m, body: _in(prefix, _crash_site(body))


def _t_stack(prefix: str, skip: Optional[re.Pattern] = None) -> TitleFn:
    return lambda m, body: _in(prefix, _first_frame(body, skip=skip))


_ACCESS_RE = re.compile(r"\b(Read|Write) (?:of size \d+|at addr)")


def _t_kasan(m: re.Match, body: list) -> str:
    bug = m.group(1)
    func = m.group(2) and _norm_func(m.group(2))
    if not func or _SKIP_FRAME_RE.match(func):
        func = _first_frame(body) or func
    access = ""
    for line in body[:6]:
        a = _ACCESS_RE.search(line)
        if a:
            access = " " + a.group(1)
            break
    return _in(f"KASAN: {bug}{access}", func)


def _t_named(prefix_fmt: str) -> TitleFn:
    """Header carries '<what> in <func>'."""
    def fn(m: re.Match, body: list) -> str:
        func = _norm_func(m.group(2)) if m.group(2) else ""
        if not func or _SKIP_FRAME_RE.match(func):
            func = _first_frame(body) or func
        return _in(prefix_fmt.format(m.group(1)), func)
    return fn


def _t_kcsan(m: re.Match, body: list) -> str:
    where = _OFFSET_RE.sub("", m.group(2)).strip()
    where = " / ".join(_norm_func(p.strip()) for p in where.split("/"))
    return f"KCSAN: {m.group(1)} in {where}"


def _t_ubsan(m: re.Match, body: list) -> str:
    bug = m.group(1).lower().replace(" ", "-")
    if bug == "undefined-behaviour":
        bug = "undefined-behaviour"
    func = _first_frame(body)
    if not func:
        func = re.sub(r":\d+(?::\d+)?$", "", m.group(2))
    return _in(f"UBSAN: {bug}", func)


_LOCK_AT_RE = re.compile(r", at: (?:\[<[0-9a-f]+>\] )?([A-Za-z_][\w.]*)\+0x")


def _t_lockdep(label: str) -> TitleFn:
    def fn(m: re.Match, body: list) -> str:
        func = ""
        for line in body[1:60]:
            a = _LOCK_AT_RE.search(line)
            if a:
                func = _norm_func(a.group(1))
                if not _SKIP_FRAME_RE.match(func):
                    break
                func = ""
        return _in(label, func or _first_frame(body))
    return fn


_LOCKDEP_LABELS = (
    ("circular locking", "possible deadlock"),
    ("recursive locking", "possible deadlock"),
    ("lock inversion", "possible deadlock"),
    ("lock order detected", "possible deadlock"),
    ("inconsistent lock state", "inconsistent lock state"),
    ("bad unlock balance", "WARNING: bad unlock balance"),
    ("held lock freed", "WARNING: held lock freed"),
    ("returning to user space", "WARNING: lock held when returning to user space"),
    ("suspicious RCU usage", "WARNING: suspicious RCU usage"),
    ("nested lock was not taken", "WARNING: nested lock was not taken"),
    ("still has locks held", "WARNING: still has locks held"),
    ("lock held at task exit", "WARNING: lock held at task exit time"),
    ("Invalid wait context", "BUG: Invalid wait context"),
)


def _t_lockdep_header(m: re.Match, body: list) -> str:
    what = m.group(1)
    label = what
    for key, lab in _LOCKDEP_LABELS:
        if key.lower() in what.lower():
            label = lab
            break
    if label in ("possible deadlock", "inconsistent lock state", "WARNING: bad unlock balance",
                 "WARNING: held lock freed"):
        return _t_lockdep(label)(m, body)
    return _in(label, _first_frame(body))


# WARNING file -> (kind, title prefix, take function from call trace)
_WARN_FILES: tuple[tuple[re.Pattern, str, str], ...] = (
    (re.compile(r"^lib/refcount\.c$"), "refcount", "WARNING: refcount bug"),
    (re.compile(r"^kernel/locking/"), "lockdep", "WARNING: locking bug"),
    (re.compile(r"^lib/debugobjects\.c$"), "warning", "WARNING: ODEBUG bug"),
    (re.compile(r"^mm/usercopy\.c$"), "warning", "WARNING: bad usercopy"),
    (re.compile(r"^lib/kobject\.c$"), "warning", "WARNING: kobject bug"),
)


def _warn_class(path: str) -> Optional[tuple[str, str]]:
    path = path.lstrip("./")
    for rx, kind, prefix in _WARN_FILES:
        if rx.search(path):
            return kind, prefix
    return None


def _t_warning(m: re.Match, body: list) -> str:
    path = m.group("file") or ""
    func = _norm_func(m.group("func") or "")
    cls = _warn_class(path) if path else None
    if cls:
        skip = _SKIP_FRAME_RE
        if func:
            skip = re.compile(r"(?:%s|%s|kobject_\w+|refcount_\w+)$" % (re.escape(func), _SKIP_FRAME_RE.pattern.replace("(?x)", "")), re.X)
        return _in(cls[1], _first_frame(body, skip=skip))
    if not func or _SKIP_FRAME_RE.match(func):
        func = _first_frame(body) or func
    return _in("WARNING", func)


def _k_warning(m: re.Match) -> str:
    path = m.group("file") or ""
    cls = _warn_class(path) if path else None
    return cls[0] if cls else "warning"


def _t_kernel_bug(m: re.Match, body: list) -> str:
    return _in("kernel BUG", _crash_site(body) or m.group(1).lstrip("./"))


def _t_panic(m: re.Match, body: list) -> str:
    msg = m.group(1).strip()
    msg = re.split(r"\s+exitcode=|\s+-\s+not syncing", msg)[0]
    sp = re.search(r"stack-protector: Kernel stack is corrupted in: ([\w.]+)", msg)
    if sp:
        func = _norm_func(sp.group(1))
        if _SKIP_FRAME_RE.match(func) or re.fullmatch(r"[0-9a-f]+", func):
            func = _first_frame(body)
        return _in("kernel panic: stack is corrupted", func)
    if msg.startswith("corrupted stack end detected"):
        return _in("kernel panic: corrupted stack end", _first_frame(body))
    return "kernel panic: " + _clean(msg.rstrip(" ."))


def _t_die(label: str) -> TitleFn:
    return lambda m, body: _in(label, _crash_site(body))


_BACKTRACE_RE = re.compile(r"backtrace|Call Trace", re.I)


def _t_leak(m: re.Match, body: list) -> str:
    return _in("memory leak", _first_frame(body, after=_BACKTRACE_RE, limit=60))


_CALL_TRACE_RE = re.compile(r"Call [Tt]race:|Backtrace:|<IRQ>|<TASK>")


def _t_hang(prefix: str) -> TitleFn:
    return lambda m, body: _in(prefix, _first_frame(body, after=_CALL_TRACE_RE, limit=100))


def _t_soft_lockup(m: re.Match, body: list) -> str:
    return _in("BUG: soft lockup", _pc_func(body) or _first_frame(body, after=_CALL_TRACE_RE))


def _t_wq_leak(m: re.Match, body: list) -> str:
    for line in body[1:6]:
        a = re.search(r"last function: ([\w.]+)", line)
        if a:
            return f"BUG: workqueue leaked lock or atomic in {_norm_func(a.group(1))}"
    return "BUG: workqueue leaked lock or atomic"


def _t_rust_panic(m: re.Match, body: list) -> str:
    msg = ""
    rest = m.group(1).strip()
    if rest and not rest.endswith(":"):
        msg = rest
    else:
        for line in body[1:4]:
            text = _strip_prefix(line)
            if text:
                msg = text
                break
    return _in(_clean(msg) or "Rust panic", _first_frame(body))


def _t_oom(m: re.Match, body: list) -> str:
    return "Out of memory (OOM kill)" if m.group(1) is None else "Memory cgroup out of memory (OOM kill)"


def _t_bug_generic(m: re.Match, body: list) -> str:
    msg = _clean(m.group(1), 80)
    return _in(f"BUG: {msg}", _crash_site(body)) if len(msg) < 60 else f"BUG: {msg}"


def _t_slub(m: re.Match, body: list) -> str:
    return _in(f"BUG: {_clean(m.group(2), 60)}", "")


_PREFIX_RE = re.compile(
    r"^(?:\*\* \d+ printk messages dropped \*\*\s*)?(?:<\d+>)?"
    r"(?:\s*\[\s*\d+\.\d+\](?:\[\s*[TC]\d+\])?\s?)?")


def _strip_prefix(line: str) -> str:
    return _PREFIX_RE.sub("", line, count=1).strip()


# --------------------------------------------------------------------------
# The rule table
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Rule:
    name: str
    rx: re.Pattern
    kind: str | Callable[[re.Match], str]
    title: TitleFn
    rank: int
    consequence: bool = False     # fold into any preceding report
    crash: bool = True
    needles: tuple[str, ...] = ()  # the line must hold one of these before the regex runs


def R(name, pattern, kind, title, rank, consequence=False, crash=True):
    return _Rule(name, re.compile(pattern), kind, title, rank, consequence, crash, _NEEDLES[name])


_NEEDLES: dict[str, tuple[str, ...]] = {'oom': ('of memory',),
    'kasan': ('KASAN',),
    'kfence': ('KFENCE',),
    'kmsan': ('KMSAN',),
    'kcsan': ('KCSAN',),
    'ubsan': ('UBSAN',),
    'lockdep': ('WARNING: ', 'INFO: ', 'BUG: '),
    'lockdep_limit': ('MAX_',),
    'lockdep_key': ('non-static key',),
    'lockdep_key2': ('BUG: key',),
    'lockdep_subclass': ('invalid subclass',),
    'preempt': ('preemptible',),
    'spinlock': ('BUG: spinlock', 'BUG: rwlock'),
    'refcount': ('refcount_t',),
    'bad_page': ('Bad page',),
    'bad_rss': ('rss-counter',),
    'pgtables': ('pgtables_bytes',),
    'vm_bug_page': ('page dumped',),
    'leak': ('memory leak', 'unreferenced object'),
    'kmemleak': ('kmemleak',),
    'soft_lockup': ('soft lockup',),
    'hard_lockup': ('LOCKUP',),
    'rcu_stall': ('INFO: rcu_',),
    'rcu_stall_tasks': ('INFO: rcu_',),
    'hung_task': ('blocked',),
    'cant_die': ("can't die",),
    'wq_lockup': ('workqueue lockup',),
    'netdev_wait': ('unregister_netdevice',),
    'rust_panic': ('panicked at',),
    'usercopy': ('usercopy',),
    'list_corrupt': (' corruption', 'double add'),
    'atomic_sleep': ('sleeping function',),
    'sched_atomic': ('scheduling while atomic',),
    'wq_leak': ('workqueue leaked',),
    'stack_guard': ('stack guard page',),
    'dentry': ('BUG: Dentry',),
    'vfs_close': ('VFS: Close',),
    'kernel_bug': ('kernel BUG at',),
    'null_deref': ('BUG: ',),
    'paging': ('BUG: ',),
    'unable_other': ('BUG: ',),
    'arm_unable': ('Unable to handle',),
    'gpf': ('protection fault',),
    'divide': ('divide error',),
    'stack_segment': ('stack segment',),
    'double_fault': ('double fault',),
    'unhandled_fault': ('Unhandled fault',),
    'invalid_opcode': ('invalid opcode',),
    'internal_error': ('Internal error',),
    'oops': ('Oops',),
    'warning': ('WARNING: ',),
    'stack_warning': ('WARNING: kernel stack',),
    'slub': ('BUG ',),
    'slub_trailer': ('INFO: ',),
    'panic': ('Kernel panic',),
    'bug_generic': ('BUG: ',)}

_LOCKDEP_HEADERS = (
    r"possible circular locking dependency detected|possible recursive locking detected"
    r"|inconsistent lock state|possible irq lock inversion dependency detected"
    r"|(?:HARD|SOFT)IRQ-(?:safe|READ-safe) -> (?:HARD|SOFT)IRQ-(?:unsafe|READ-unsafe) lock order detected"
    r"|bad unlock balance detected|held lock freed|lock held when returning to user space"
    r"|suspicious RCU usage|[Nn]ested lock was not taken|still has locks held"
    r"|lock held at task exit time|possible deadlock|Invalid wait context")

_RULES: tuple[_Rule, ...] = (
    # ---- infrastructure, never a kernel bug ----
    R("oom", r"(?:Out of memory(?: \(\w+\))?|(Memory cgroup) out of memory): Kill(?:ed)? process \d+",
      "oom", _t_oom, 1, crash=False),
    # ---- sanitizers ----
    R("kasan", r"BUG: KASAN: ([a-z][\w-]*(?: or [a-z][\w-]*)?)(?: in ([A-Za-z_][\w.]*))?", "kasan", _t_kasan, 90),
    R("kfence", r"BUG: KFENCE: ([a-z][\w -]*?) in ([A-Za-z_][\w.]*)", "kfence", _t_named("KFENCE: {}"), 90),
    R("kmsan", r"BUG: KMSAN: ([a-z][\w -]*?) in ([A-Za-z_][\w.]*)", "kmsan", _t_named("KMSAN: {}"), 90),
    R("kcsan", r"BUG: KCSAN: ([a-z][\w-]*(?:: [\w-]+)?) in (\S.*?)\s*$", "kcsan", _t_kcsan, 90),
    R("ubsan", r"UBSAN: ([a-z][\w-]+|Undefined behaviour) in (\S+)", "ubsan", _t_ubsan, 90),
    # ---- lockdep & locking debug ----
    R("lockdep", r"(?:WARNING|INFO|BUG): (?:\S+/\d+ )?(" + _LOCKDEP_HEADERS + r")", "lockdep", _t_lockdep_header, 80),
    R("lockdep_limit", r"BUG: (MAX_[A-Z_]+ too low!?)", "lockdep", lambda m, b: f"BUG: {m.group(1)}", 80),
    R("lockdep_key", r"INFO: trying to register non-static key", "lockdep",
      _t_stack("INFO: trying to register non-static key"), 80),
    R("lockdep_key2", r"BUG: key [0-9a-f]+ (?:has not been registered|not in \.data)", "lockdep",
      _t_stack("BUG: key not registered"), 80),
    R("lockdep_subclass", r"BUG: looking up invalid subclass", "lockdep",
      _t_stack("BUG: looking up invalid subclass"), 80),
    R("preempt", r"BUG: using ([\w.]+\(\)) in preemptible", "lockdep",
      lambda m, b: _in(f"BUG: using {m.group(1)} in preemptible code", _first_frame(b)), 80),
    R("spinlock", r"BUG: (spinlock|rwlock) (lockup suspected|already unlocked|recursion|bad magic"
      r"|wrong owner|wrong CPU|cpu recursion|lockup)", "lockdep",
      lambda m, b: _in(f"BUG: {m.group(1)} {m.group(2)}", _crash_site(b)), 80),
    # ---- refcount ----
    R("refcount", r"refcount_t: (?:underflow|overflow|saturated|addition on 0|decrement hit 0"
      r"|increment on 0|addition resulted)", "refcount",
      _t_stack("WARNING: refcount bug"), 85),
    # ---- bad page / mm accounting ----
    R("bad_page", r"BUG: Bad page (state|map|cache) in process", "bad_page",
      lambda m, b: _in(f"BUG: Bad page {m.group(1)}", _first_frame(b)), 80),
    R("bad_rss", r"BUG: Bad rss-counter state", "bad_page", _t_const("BUG: Bad rss-counter state"), 80),
    R("pgtables", r"BUG: non-zero pgtables_bytes on freeing mm", "bad_page",
      _t_const("BUG: non-zero pgtables_bytes on freeing mm"), 80),
    R("vm_bug_page", r"page dumped because: ((?:VM_BUG_ON|VM_WARN_ON)\w*)", "bug",
      lambda m, b: _in(f"{m.group(1)}", _crash_site(b)), 30),
    # ---- leaks ----
    R("leak", r"BUG: memory leak|unreferenced object 0x[0-9a-f]+ \(size \d+\)", "leak", _t_leak, 80),
    R("kmemleak", r"kmemleak: \d+ new suspected memory leaks", "leak", _t_const("memory leak"), 10,
      consequence=True),
    # ---- hangs ----
    R("soft_lockup", r"BUG: soft lockup - CPU#\d+ stuck for", "hang", _t_soft_lockup, 70),
    R("hard_lockup", r"(?:Watchdog detected hard LOCKUP on cpu|hard LOCKUP on cpu)", "hang",
      _t_site("BUG: hard lockup"), 70),
    R("rcu_stall", r"INFO: rcu_\w+ (?:self-)?detected (?:expedited )?stalls?", "hang",
      _t_hang("INFO: rcu detected stall"), 70),
    R("rcu_stall_tasks", r"INFO: rcu_tasks(?:_\w+)? detected stalls?", "hang",
      _t_hang("INFO: rcu detected stall"), 70),
    R("hung_task", r"(?:INFO: task .*?|\S:\d+ )blocked (?:in I/O wait )?for more than \d+ seconds", "hang",
      _t_hang("INFO: task hung"), 70),
    R("cant_die", r"INFO: task .+?:\d+ can't die for more than", "hang",
      _t_hang("INFO: task can't die"), 70),
    R("wq_lockup", r"BUG: workqueue lockup - pool", "hang", _t_const("BUG: workqueue lockup"), 70),
    R("netdev_wait", r"unregister_netdevice: waiting for \S+ to become free", "hang",
      _t_const("unregister_netdevice: waiting for DEV to become free"), 70),
    # ---- specific BUGs ----
    R("rust_panic", r"rust_kernel: panicked at(.*)$", "bug", _t_rust_panic, 65),
    R("usercopy", r"usercopy: Kernel memory (?:exposure|overwrite) attempt detected", "bug",
      _t_stack("BUG: bad usercopy"), 60),
    R("list_corrupt", r"\b(?:list_add|list_del|list_add_rcu|hlist_\w+|list_\w+) (?:corruption|double add)", "bug",
      _t_stack("BUG: corrupted list"), 60),
    R("atomic_sleep", r"BUG: sleeping function called from invalid context", "bug",
      _t_stack("BUG: sleeping function called from invalid context"), 60),
    R("sched_atomic", r"BUG: scheduling while atomic", "bug",
      _t_stack("BUG: scheduling while atomic"), 60),
    R("wq_leak", r"BUG: workqueue leaked lock or atomic", "bug", _t_wq_leak, 60),
    R("stack_guard", r"BUG: (?:\w+ )?stack guard page was hit", "bug", _t_site("BUG: stack guard page was hit"), 60),
    R("dentry", r"BUG: Dentry \S+\s+still in use", "bug", _t_const("BUG: Dentry still in use"), 60),
    R("vfs_close", r"VFS: Close: file count is 0", "bug",
      _t_const("VFS: Close: file count is zero (use-after-free)"), 60),
    R("kernel_bug", r"kernel BUG at (\S+?):\d+!?", "bug", _t_kernel_bug, 50),
    # ---- oopses ----
    R("null_deref", r"BUG: (?:unable to handle kernel NULL pointer dereference|kernel NULL pointer dereference, address)",
      "oops", _t_site("BUG: unable to handle kernel NULL pointer dereference"), 50),
    R("paging", r"BUG: (?:unable to handle kernel paging request|unable to handle page fault for address)",
      "oops", _t_site("BUG: unable to handle kernel paging request"), 50),
    R("unable_other", r"BUG: (?i:unable) to handle (?:kernel ?)?([a-z][\w -]*?)?(?: at | on | for |\s*$|\s*\[)", "oops",
      lambda m, b: _in(f"BUG: unable to handle kernel {m.group(1) or ''}".strip(), _crash_site(b)), 49),
    R("arm_unable", r"Unable to handle kernel ([\w -]+?)(?: without uaccess routines)? at virtual address",
      "oops", lambda m, b: _in(f"BUG: unable to handle kernel {m.group(1)}", _crash_site(b)), 50),
    R("gpf", r"general protection fault(?:,? [^:\n]*)?: [0-9a-f]{4} \[#\d+\]", "oops",
      _t_die("general protection fault"), 45),
    R("divide", r"divide error: [0-9a-f]{4} \[#\d+\]", "oops", _t_die("divide error"), 45),
    R("stack_segment", r"stack segment: [0-9a-f]{4} \[#\d+\]", "oops", _t_die("stack segment fault"), 45),
    R("double_fault", r"PANIC: double fault", "oops", _t_die("PANIC: double fault"), 45),
    R("unhandled_fault", r"Unhandled fault: .* at 0x[0-9a-f]+", "oops", _t_die("Unhandled fault"), 40),
    R("invalid_opcode", r"invalid opcode: [0-9a-f]{4} \[#\d+\]", "oops", _t_die("invalid opcode"), 15),
    R("internal_error", r"Internal error: [^\[]*\[#\d+\]", "oops", _t_die("Internal error"), 15),
    R("oops", r"\bOops\b[^\[\n]*\[#\d+\]", "oops", _t_die("Oops"), 14),
    # ---- warnings ----
    R("warning",
      r"WARNING: (?:CPU: \d+ PID: -?\d+ at (?:(?P<file>[\w./-]+\.[chS]):\d+ )?(?P<func>[A-Za-z_][\w.]*)?"
      r"|at (?P<file2>[\w./-]+\.[chS]):\d+ (?P<func2>[A-Za-z_][\w.]*)"
      r"|(?P<file3>[\w./-]+\.[chS]):\d+ at (?:(?P<func3>[A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+(?: \[[\w-]+\])?|\S+), CPU#\d+)",
      "warning", None, 40),  # title/kind filled in below
    R("stack_warning", r"WARNING: kernel stack (frame pointer|regs) at .*? in \S+ has bad",
      "warning", lambda m, b: "WARNING: kernel stack %s has bad value" % m.group(1), 40),
    # ---- slab debugging ----
    R("slub", r"\bBUG ([\w.:-]+) \((?:Not tainted|Tainted: [^)]*)\): (?!kasan)(.+)$", "bug", _t_slub, 25),
    R("slub_trailer", r"INFO: (?:Allocated|Freed) in [\w.]+\+0x[0-9a-f]+/0x[0-9a-f]+ age=\d+", "bug",
      lambda m, b: _clean(_strip_prefix(m.string[m.start():]).split(" age=")[0]), 5, consequence=True),
    # ---- panic: always a consequence when anything precedes it ----
    R("panic", r"Kernel panic - not syncing:? (.*)$", "panic", _t_panic, 3, consequence=True),
    # ---- catch-all BUG: ----
    R("bug_generic", r"\bBUG: ([A-Za-z].*)$", "bug", _t_bug_generic, 20),
)


def _fix_warning_rule(rules: tuple[_Rule, ...]) -> tuple[_Rule, ...]:
    out = []
    for r in rules:
        if r.name == "warning":
            def kind(m: re.Match) -> str:
                return _k_warning(_WarnMatch(m))

            def title(m: re.Match, body: list) -> str:
                return _t_warning(_WarnMatch(m), body)
            r = _Rule(r.name, r.rx, kind, title, r.rank, r.consequence, r.crash, r.needles)
        out.append(r)
    return tuple(out)


class _WarnMatch:
    """Unify the three WARNING header layouts (2.6 'at', 3.x-6.x 'CPU: PID: at', 6.18+ 'file:line at')."""

    def __init__(self, m: re.Match):
        self._m = m

    def group(self, name: str) -> Optional[str]:
        m = self._m
        return m.group(name) or m.group(name + "2") or m.group(name + "3")


_RULES = _fix_warning_rule(_RULES)

# Cheap prefilter: a line is examined only if it contains one of these literals
# (each is located with str.find, which is far faster than a regex alternation).
_HOT_WORDS: tuple[str, ...] = (
    "BUG", "WARNING:", "INFO: ", "UBSAN: ", "refcount_t: ", "Kernel panic", "panicked at",
    "[#", "nable to handle", "Unhandled fault", "Internal error", "double fault",
    "unreferenced object", "kmemleak: ", "unregister_netdevice: waiting", " corruption",
    "usercopy: ", "page dumped because", "VFS: Close", "of memory", "LOCKUP", "double add", "blocked for more", "blocked in I/O",
)

_BOUNDED = frozenset({"BUG", "WARNING:", "INFO: ", "LOCKUP", "Oops"})


def _hot_lines(text: str) -> list[int]:
    """Sorted start offsets of lines holding a hot word."""
    starts: set[int] = set()
    find, rfind = text.find, text.rfind
    for w in _HOT_WORDS:
        bounded = w in _BOUNDED
        pos = find(w)
        while pos >= 0:
            if bounded and pos and (text[pos - 1].isalnum() or text[pos - 1] == "_"):
                pos = find(w, pos + 1)      # "DEBUG:", "CAM_INFO: ": not ours
                continue
            ls = rfind("\n", 0, pos) + 1
            starts.add(ls)
            le = find("\n", pos)
            if le < 0:
                break
            pos = find(w, le)
    return sorted(starts)


# End-of-report markers; a trigger after one of these does not merge with the group before.
_END_RE = re.compile(r"---\[ end trace|Kernel Offset:|---\[ end Kernel panic")

# Boot banners (for unexpected reboots): the literal must open its line,
# after nothing but console noise (escape sequences, punctuation, a "[0.000000]" stamp).
_BOOT_WORDS = ("SeaBIOS (version", "Booting the kernel", "Decompressing Linux", "] Linux version ")
_BOOT_LEAD_RE = re.compile(r"^(?:\x1b\[[0-9;?]*[A-Za-z]|\x1bc|[^\w\n])*(?:\[\s*0\.000000\](?:\[\s*T0\])?)?$")


def _boot_banners(text: str) -> list[int]:
    out = []
    for w in _BOOT_WORDS:
        pos = text.find(w)
        while pos >= 0:
            ls = text.rfind("\n", 0, pos) + 1
            lead = text[ls:pos + (1 if w[0] == "]" else 0)]
            if _BOOT_LEAD_RE.match(lead) and (w[0] != "]" or "0.000000" in lead):
                out.append(ls)
            pos = text.find(w, pos + 1)
    return sorted(out)


_RAN_RE = re.compile(r"\[ *(?:[1-9]\d*\.\d+|0\.\d*[1-9]\d*)\]")


# --------------------------------------------------------------------------
# Scanner
# --------------------------------------------------------------------------
@dataclass
class _Trigger:
    line_no: int        # 0-based
    line_start: int     # char offset
    rule: _Rule
    match: re.Match


def _scan(text: str) -> list[_Trigger]:
    triggers: list[_Trigger] = []
    line_no = 0
    counted_to = 0
    for ls in _hot_lines(text):
        le = text.find("\n", ls)
        if le < 0:
            le = len(text)
        line = text[ls:le]
        for rule in _RULES:
            for n in rule.needles:
                if n in line:
                    break
            else:
                continue
            m = rule.rx.search(line)
            if m:
                if "---[ end " in line[:m.start()]:
                    break
                line_no += text.count("\n", counted_to, ls)
                counted_to = ls
                triggers.append(_Trigger(line_no, ls, rule, m))
                break
    return triggers


def _reboot_trigger(text: str) -> Optional[tuple[int, int]]:
    """(line_no, offset) of a boot banner that follows a running kernel / other output."""
    prev = None
    for ls in _boot_banners(text):
        if prev is None:
            before = text[:ls]
            if re.search(r"[A-Za-z0-9]", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1bc", "", before)):
                return text.count("\n", 0, ls), ls
        elif _RAN_RE.search(text, prev, ls):
            return text.count("\n", 0, ls), ls
        prev = ls
    return None


_REBOOT_RULE = _Rule("reboot", re.compile(""), "panic",
                     _t_const("unexpected kernel reboot"), 2, consequence=True)

# Lines just before a header that belong to the report.
_LEADIN_RE = re.compile(
    r"-{5,}\[ cut here \]-{5,}|^={10,}$|^\s*$|^(?:page:|flags:|raw:|head:|memcg:|anon |"
    r"page_type:|page_owner|folio|aops:|mapping:|pfn:|page last )")


def _body(text: str, start: int, nlines: int) -> list[str]:
    end = start
    for _ in range(nlines):
        nxt = text.find("\n", end)
        if nxt < 0:
            end = len(text)
            break
        end = nxt + 1
    lines = text[start:end].split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _groups(text: str) -> list[list[_Trigger]]:
    trigs = _scan(text)
    rb = _reboot_trigger(text)
    if rb is not None:
        trigs.append(_Trigger(rb[0], rb[1], _REBOOT_RULE, re.match("", "")))
        trigs.sort(key=lambda t: t.line_start)
    groups: list[list[_Trigger]] = []
    any_crash = False
    for t in trigs:
        if not t.rule.crash:
            groups.append([t])
            continue
        if groups:
            g = groups[-1]
            last = g[-1]
            if (last.rule.crash and t.line_no - last.line_no <= _MERGE_WINDOW
                    and not _END_RE.search(text, last.line_start, t.line_start)):
                g.append(t)
                continue
            if t.rule.consequence and any_crash:
                # attach to the latest crash group, if it is recent enough to be the cause
                for gg in reversed(groups):
                    if gg[0].rule.crash:
                        if t.line_no - gg[-1].line_no <= _CONSEQUENCE_WINDOW:
                            gg.append(t)
                            t = None
                        break
                if t is None:
                    continue
        groups.append([t])
        any_crash = True
    return groups


def _report(text: str, group: list[_Trigger], next_start: Optional[int]) -> Report:
    first = group[0]
    # The first trigger names the report, unless it is a weak lead-in (an
    # "Oops: ... [#1]" line, a page dump, a panic) for a more specific header.
    head = first
    if first.rule.rank <= _WEAK_RANK:
        head = max(group, key=lambda t: (t.rule.rank, -t.line_no))
    body = _body(text, head.line_start, _BODY_LINES)
    if next_start is not None and next_start > head.line_start:
        limit = text.count("\n", head.line_start, next_start)
        body = body[:max(limit, 1)] if head.line_no < first.line_no + _MERGE_WINDOW + 2 else body
    rule = head.rule
    try:
        title = rule.title(head.match, body)
    except Exception:  # a title must never kill the oracle
        title = rule.name
    kind = rule.kind(head.match) if callable(rule.kind) else rule.kind
    # walk back over lead-in lines ("cut here", "=====", page dump) for the excerpt
    start_line = first.line_no
    ls = first.line_start
    for _ in range(12):
        if ls == 0:
            break
        pls = text.rfind("\n", 0, ls - 1) + 1
        prev = _strip_prefix(text[pls:ls - 1])
        if not prev or not _LEADIN_RE.search(prev):
            break
        if not prev.strip():
            break
        ls, start_line = pls, start_line - 1
    excerpt = "\n".join(_body(text, ls, EXCERPT_LINES))
    title = _SPACES_RE.sub(" ", title).strip()
    return Report(crash=rule.crash, kind=kind, title=title, excerpt=excerpt,
                  start_line=start_line + 1, infra=(kind == "oom"))


_MAX_GROUPS = 500        # a report storm beyond this is summarised by its first reports


def _reports(text: str, groups: list[list[_Trigger]], idx) -> list[Report]:
    out = []
    for i in idx:
        nxt = groups[i + 1][0].line_start if i + 1 < len(groups) else None
        out.append(_report(text, groups[i], nxt))
    return out


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n") if "\r" in text else text


def classify_all(text: str) -> list[Report]:
    """Every distinct report in the log, deduplicated by (kind, title).

    Crashes first, in log order (so ``classify_all(t)[0] == classify(t)``), then
    infrastructure findings (OOM, crash=False).  At most the first 500 report
    groups of a log are examined.
    """
    text = _normalise(text)
    groups = _groups(text)
    out: list[Report] = []
    seen: set[tuple[str, str]] = set()
    for r in _reports(text, groups, range(min(len(groups), _MAX_GROUPS))):
        key = (r.kind, r.title)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return [r for r in out if r.crash] + [r for r in out if not r.crash]


def classify(text: str) -> Report:
    """The first kernel crash in ``text``; else the first OOM finding; else a 'none' report."""
    text = _normalise(text)
    groups = _groups(text)
    for want_crash in (True, False):
        for i, g in enumerate(groups):
            if g[0].rule.crash == want_crash:
                return _reports(text, groups, [i])[0]
    return NO_REPORT


# --------------------------------------------------------------------------
# CLI and bench
# --------------------------------------------------------------------------
def cli_classify(path: str, as_json: bool = False) -> int:
    """`harness console classify FILE [--json]`: 0 no crash, 1 crash, 2 unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        print(f"harness: error: cannot read console log {path}: {e.strerror or e}", file=sys.stderr)
        return 2
    rep = classify(data.decode("utf-8", errors="replace"))
    if as_json:
        print(json.dumps({"crash": rep.crash, "kind": rep.kind, "title": rep.title}))
    elif rep.crash:
        print(f"crash: {rep.title} (kind {rep.kind}, line {rep.start_line})")
    elif rep.infra:
        print(f"no kernel crash; infrastructure finding: {rep.title} (line {rep.start_line})")
    else:
        print("no crash")
    return 1 if rep.crash else 0


_NOISE = (
    "[{t:12.6f}][ T{p}] EXT4-fs (sda1): re-mounted. Opts: errors=remount-ro\n",
    "[{t:12.6f}][ T{p}] audit: type=1400 audit({t:.3f}:{p}): avc:  denied  {{ read }} for pid={p} comm=\"ledger\"\n",
    "[{t:12.6f}][ T{p}] kvm: vcpu{p} unhandled rdmsr: 0x{p:x} data 0x0\n",
    "[{t:12.6f}][ T{p}] ledger[{p}]: wrote page {p} generation {p} checksum 0x{p:08x}\n",
    "[{t:12.6f}][ T{p}] systemd[1]: Started Session {p} of User root.\n",
    "[{t:12.6f}][ T{p}] virtio_net virtio0 eth0: error: queue {p} reset (-11)\n",
)

_BENCH_REPORT = """\
[ 9999.000001][ T4242] ------------[ cut here ]------------
[ 9999.000002][ T4242] WARNING: CPU: 1 PID: 4242 at arch/x86/kvm/mmu/tdp_mmu.c:532 handle_changed_spte+0x8f1/0x1a70 [kvm]
[ 9999.000003][ T4242] Modules linked in: kvm_intel kvm
[ 9999.000004][ T4242] RIP: 0010:handle_changed_spte+0x8f1/0x1a70 [kvm]
[ 9999.000005][ T4242] Call Trace:
[ 9999.000006][ T4242]  <TASK>
[ 9999.000007][ T4242]  tdp_mmu_zap_leafs+0x2d1/0x5b0 [kvm]
[ 9999.000008][ T4242]  kvm_tdp_mmu_unmap_gfn_range+0x1a5/0x2c0 [kvm]
[ 9999.000009][ T4242]  </TASK>
[ 9999.000010][ T4242] ---[ end trace 0000000000000000 ]---
"""


def bench_classify(size_mb: float = 10) -> dict:
    """Time classify() on a ~size_mb MB synthetic log (noise + one WARNING at the end)."""
    target = int(size_mb * 1024 * 1024)
    parts: list[str] = []
    n = 0
    i = 0
    while n < target:
        s = _NOISE[i % len(_NOISE)].format(t=i * 0.001, p=1000 + i % 50000)
        parts.append(s)
        n += len(s)
        i += 1
    text = "".join(parts) + _BENCH_REPORT
    t0 = time.perf_counter()
    rep = classify(text)
    dt = time.perf_counter() - t0
    return {"size_mb": round(len(text) / (1024 * 1024), 2), "seconds": round(dt, 4),
            "crash": rep.crash, "kind": rep.kind, "title": rep.title}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(cli_classify(sys.argv[1], as_json="--json" in sys.argv))
