"""Stack frames and title-stable text for the console oracle's titles.

Addresses, offsets, PIDs and timestamps never enter a title, so the same bug
gives the same title on every run; generic frames (reporting machinery,
sanitizer runtimes, locking, scheduling, entry glue) never name a bug.
"""
from __future__ import annotations

import re
from typing import Optional

BODY_LINES = 150        # how far after a header we look for frames / details

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
SKIP_FRAME_RE = re.compile(r"""(?x)^(?:
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


def norm_func(name: str) -> str:
    """Strip compiler clone suffixes and arch syscall wrappers: __x64_sys_foo -> sys_foo."""
    name = _FUNC_SUFFIX_RE.sub("", name)
    return _SYSCALL_RE.sub("sys_", name)


def first_frame(lines: list[str], start: int = 0, skip: Optional[re.Pattern[str]] = None,
                 after: Optional[re.Pattern[str]] = None, limit: int = BODY_LINES) -> str:
    """First reliable, non-generic stack frame in lines[start:start+limit]."""
    skip = skip or SKIP_FRAME_RE
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
            name = norm_func(name)
            if not skip.match(name) and not name.startswith(("0x", "_end")):
                return name
    return ""


def pc_func(lines: list[str], start: int = 0, limit: int = 40) -> str:
    """Function the CPU was in (RIP/pc/PC is at), skipping user-mode RIPs and generic frames."""
    for line in lines[start:start + limit]:
        if _USER_RIP_RE.search(line):
            continue
        m = _PC_RE.search(line)
        if m:
            name = norm_func(m.group(1))
            if not SKIP_FRAME_RE.match(name):
                return name
    return ""


def crash_site(lines: list[str]) -> str:
    """Function where the CPU was (RIP/pc), else the first interesting frame."""
    return pc_func(lines) or first_frame(lines)


def in_func(prefix: str, func: str) -> str:
    """"<prefix> in <func>", or just the prefix when no frame was found."""
    return f"{prefix} in {func}" if func else prefix


_HEX_RE = re.compile(r"\b(?:0x)?[0-9a-fA-F]{6,}\b|\b0x[0-9a-fA-F]+\b")
_NUM_RE = re.compile(r"\b\d+\b")
OFFSET_RE = re.compile(r"\+0x[0-9a-fA-F]+(?:/0x[0-9a-fA-F]+)?")
SPACES_RE = re.compile(r"\s+")


def clean(msg: str, limit: int = 100) -> str:
    """Make a free-text message title-stable: no offsets, addresses or numbers."""
    msg = OFFSET_RE.sub("", msg)
    msg = _HEX_RE.sub("ADDR", msg)
    msg = _NUM_RE.sub("NUM", msg)
    msg = SPACES_RE.sub(" ", msg).strip().rstrip(":,.")
    return msg[:limit].rstrip()


# Console line prefixes: dropped-message notes, <N> log levels, [time][Tpid] stamps.
_PREFIX_RE = re.compile(
    r"^(?:\*\* \d+ printk messages dropped \*\*\s*)?(?:<\d+>)?"
    r"(?:\s*\[\s*\d+\.\d+\](?:\[\s*[TC]\d+\])?\s?)?")


def strip_prefix(line: str) -> str:
    return _PREFIX_RE.sub("", line, count=1).strip()
