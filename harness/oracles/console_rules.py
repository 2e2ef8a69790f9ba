"""The console oracle's rule table: one record per kernel report type.

Each record says how the report's first line looks (``header``, searched in a
console line so any prefix is tolerated), which literal(s) locate that line
(``hot``: every header match contains one of them; the engine finds candidate
lines with ``str.find`` on the union of all hot words, ``HOT_WORDS``), its
``kind``, how it is titled, its ``rank`` (the most specific of several nearby
triggers names the report), whether it is a ``consequence`` of a preceding
report (a panic after a WARNING with panic_on_warn) and whether it is a
kernel ``crash`` at all (an OOM kill is an infrastructure finding).

Order matters: a line is claimed by the first record whose header matches.
Titles are built from the header plus the first interesting stack frame, in
the spirit of syzkaller's ``pkg/report`` (written from the kernel's own
report formats, not copied from syzkaller).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Union

from harness.oracles.console_frames import (
    OFFSET_RE, SKIP_FRAME_RE, clean, crash_site, first_frame, in_func, norm_func, pc_func, strip_prefix)

TitleFn = Callable[[re.Match[str], list[str]], str]   # (header match, lines from the header on) -> title
KindFn = Callable[[re.Match[str]], str]


class HotWord(NamedTuple):
    text: str
    word_start: bool = False    # must not be glued to a preceding letter/digit/_ ("DEBUG:", "CAM_INFO: ")


# Hot words shared by many records; they must start a word.
BUG = HotWord("BUG", word_start=True)
WARNING = HotWord("WARNING:", word_start=True)
INFO = HotWord("INFO: ", word_start=True)
LOCKUP = HotWord("LOCKUP", word_start=True)


@dataclass(frozen=True)
class Rule:
    name: str
    header: re.Pattern[str]
    kind: Union[str, KindFn]
    title: TitleFn
    rank: int
    hot: tuple[HotWord, ...]
    consequence: bool = False     # an after-effect: fold into a preceding report
    crash: bool = True            # False: an infrastructure finding, not a kernel bug

    def kind_of(self, m: re.Match[str]) -> str:
        return self.kind(m) if callable(self.kind) else self.kind


def rule(name: str, header: str, kind: Union[str, KindFn], title: TitleFn, rank: int, *,
         hot: Union[str, HotWord, tuple[Union[str, HotWord], ...]], consequence: bool = False,
         crash: bool = True) -> Rule:
    """A record; ``hot`` is one hot word or a tuple of them (a plain string may occur anywhere in the line)."""
    given = hot if isinstance(hot, tuple) and not isinstance(hot, HotWord) else (hot,)
    words = tuple(w if isinstance(w, HotWord) else HotWord(w) for w in given)
    return Rule(name, re.compile(header), kind, title, rank, words, consequence, crash)


# --------------------------------------------------------------------------
# Title builders
# --------------------------------------------------------------------------
def _t_const(title: str) -> TitleFn:
    return lambda m, body: title


def _t_site(prefix: str) -> TitleFn:
    return lambda m, body: in_func(prefix, crash_site(body))


def _t_stack(prefix: str, skip: Optional[re.Pattern[str]] = None) -> TitleFn:
    return lambda m, body: in_func(prefix, first_frame(body, skip=skip))


_ACCESS_RE = re.compile(r"\b(Read|Write) (?:of size \d+|at addr)")


def _t_kasan(m: re.Match[str], body: list[str]) -> str:
    bug = m.group(1)
    func = m.group(2) and norm_func(m.group(2))
    if not func or SKIP_FRAME_RE.match(func):
        func = first_frame(body) or func
    access = ""
    for line in body[:6]:
        a = _ACCESS_RE.search(line)
        if a:
            access = " " + a.group(1)
            break
    return in_func(f"KASAN: {bug}{access}", func)


def _t_named(prefix_fmt: str) -> TitleFn:
    """Header carries '<what> in <func>'."""
    def fn(m: re.Match[str], body: list[str]) -> str:
        func = norm_func(m.group(2)) if m.group(2) else ""
        if not func or SKIP_FRAME_RE.match(func):
            func = first_frame(body) or func
        return in_func(prefix_fmt.format(m.group(1)), func)
    return fn


def _t_kcsan(m: re.Match[str], body: list[str]) -> str:
    where = OFFSET_RE.sub("", m.group(2)).strip()
    where = " / ".join(norm_func(p.strip()) for p in where.split("/"))
    return f"KCSAN: {m.group(1)} in {where}"


def _t_ubsan(m: re.Match[str], body: list[str]) -> str:
    bug = m.group(1).lower().replace(" ", "-")
    func = first_frame(body)
    if not func:
        func = re.sub(r":\d+(?::\d+)?$", "", m.group(2))
    return in_func(f"UBSAN: {bug}", func)


_LOCK_AT_RE = re.compile(r", at: (?:\[<[0-9a-f]+>\] )?([A-Za-z_][\w.]*)\+0x")


def _t_lockdep(label: str) -> TitleFn:
    def fn(m: re.Match[str], body: list[str]) -> str:
        func = ""
        for line in body[1:60]:
            a = _LOCK_AT_RE.search(line)
            if a:
                func = norm_func(a.group(1))
                if not SKIP_FRAME_RE.match(func):
                    break
                func = ""
        return in_func(label, func or first_frame(body))
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


def _t_lockdep_header(m: re.Match[str], body: list[str]) -> str:
    what = m.group(1)
    label = what
    for key, lab in _LOCKDEP_LABELS:
        if key.lower() in what.lower():
            label = lab
            break
    if label in ("possible deadlock", "inconsistent lock state", "WARNING: bad unlock balance",
                 "WARNING: held lock freed"):
        return _t_lockdep(label)(m, body)
    return in_func(label, first_frame(body))


# WARNING raised in a checker's own file -> (kind, title prefix); the title names the checker's caller
_WARN_FILES: tuple[tuple[re.Pattern[str], str, str], ...] = (
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


def _warn_field(m: re.Match[str], name: str) -> Optional[str]:
    """Each WARNING header layout names its groups <name>, <name>2, <name>3 (<name>4: func only)."""
    keys = (name, name + "2", name + "3", name + "4")
    return next((m.group(k) for k in keys if k in m.re.groupindex and m.group(k)), None)


def _t_warning(m: re.Match[str], body: list[str]) -> str:
    path = _warn_field(m, "file") or ""
    func = norm_func(_warn_field(m, "func") or "")
    cls = _warn_class(path) if path else None
    if cls:
        skip = SKIP_FRAME_RE
        if func:    # the warning site is in the checker itself: name its caller
            skip = re.compile(r"(?:%s|%s|kobject_\w+|refcount_\w+)$"
                              % (re.escape(func), SKIP_FRAME_RE.pattern.replace("(?x)", "")), re.X)
        return in_func(cls[1], first_frame(body, skip=skip))
    if not func or SKIP_FRAME_RE.match(func):
        func = first_frame(body) or func
    return in_func("WARNING", func)


def _k_warning(m: re.Match[str]) -> str:
    path = _warn_field(m, "file") or ""
    cls = _warn_class(path) if path else None
    return cls[0] if cls else "warning"


def _t_kernel_bug(m: re.Match[str], body: list[str]) -> str:
    return in_func("kernel BUG", crash_site(body) or m.group(1).lstrip("./"))


def _t_panic(m: re.Match[str], body: list[str]) -> str:
    msg = m.group(1).strip()
    msg = re.split(r"\s+exitcode=|\s+-\s+not syncing", msg)[0]
    sp = re.search(r"stack-protector: Kernel stack is corrupted in: ([\w.]+)", msg)
    if sp:
        func = norm_func(sp.group(1))
        if SKIP_FRAME_RE.match(func) or re.fullmatch(r"[0-9a-f]+", func):
            func = first_frame(body)
        return in_func("kernel panic: stack is corrupted", func)
    if msg.startswith("corrupted stack end detected"):
        return in_func("kernel panic: corrupted stack end", first_frame(body))
    return "kernel panic: " + clean(msg.rstrip(" ."))


_BACKTRACE_RE = re.compile(r"backtrace|Call Trace", re.I)


def _t_leak(m: re.Match[str], body: list[str]) -> str:
    return in_func("memory leak", first_frame(body, after=_BACKTRACE_RE, limit=60))


_CALL_TRACE_RE = re.compile(r"Call [Tt]race:|Backtrace:|<IRQ>|<TASK>")


def _t_hang(prefix: str) -> TitleFn:
    return lambda m, body: in_func(prefix, first_frame(body, after=_CALL_TRACE_RE, limit=100))


def _t_soft_lockup(m: re.Match[str], body: list[str]) -> str:
    return in_func("BUG: soft lockup", pc_func(body) or first_frame(body, after=_CALL_TRACE_RE))


def _t_wq_leak(m: re.Match[str], body: list[str]) -> str:
    for line in body[1:6]:
        a = re.search(r"last function: ([\w.]+)", line)
        if a:
            return f"BUG: workqueue leaked lock or atomic in {norm_func(a.group(1))}"
    return "BUG: workqueue leaked lock or atomic"


def _t_rust_panic(m: re.Match[str], body: list[str]) -> str:
    msg = ""
    rest = m.group(1).strip()
    if rest and not rest.endswith(":"):
        msg = rest
    else:
        for line in body[1:4]:
            text = strip_prefix(line)
            if text:
                msg = text
                break
    return in_func(clean(msg) or "Rust panic", first_frame(body))


def _t_oom(m: re.Match[str], body: list[str]) -> str:
    return "Out of memory (OOM kill)" if m.group(1) is None else "Memory cgroup out of memory (OOM kill)"


def _t_bug_generic(m: re.Match[str], body: list[str]) -> str:
    msg = clean(m.group(1), 80)
    return in_func(f"BUG: {msg}", crash_site(body)) if len(msg) < 60 else f"BUG: {msg}"


def _t_slub(m: re.Match[str], body: list[str]) -> str:
    return in_func(f"BUG: {clean(m.group(2), 60)}", "")


# --------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------
_LOCKDEP_HEADERS = (
    r"possible circular locking dependency detected|possible recursive locking detected"
    r"|inconsistent lock state|possible irq lock inversion dependency detected"
    r"|(?:HARD|SOFT)IRQ-(?:safe|READ-safe) -> (?:HARD|SOFT)IRQ-(?:unsafe|READ-unsafe) lock order detected"
    r"|bad unlock balance detected|held lock freed|lock held when returning to user space"
    r"|suspicious RCU usage|[Nn]ested lock was not taken|still has locks held"
    r"|lock held at task exit time|possible deadlock|Invalid wait context")

# WARNING layouts: 2.6 "WARNING: at file:line func", 3.x-6.x "WARNING: CPU: N PID: N at file:line func",
# 6.18+ (__warn() in kernel/panic.c, e.g. 7.2) "WARNING: %s:%d at %pS, CPU#%d: %s/%d" and, for a WARN without file
# and line, "WARNING: at %pS, CPU#%d: %s/%d".  %pS is "func+0x../0x.." with " [mod]" or " [mod buildid]" for a
# module, or a bare address.  7.2 prints a WARN_ON()'s condition (CONFIG_DEBUG_BUGVERBOSE_DETAILED) on its own
# line before the header; a "[cond] " inside the header, after "WARNING: ", is tolerated too.
_PS_MOD = r"(?: \[[\w-]+(?: [0-9a-f]+)?\])?"
_WARNING_HEADER = (
    r"WARNING: (?:CPU: \d+ PID: -?\d+ at (?:(?P<file>[\w./-]+\.[chS]):\d+ )?(?P<func>[A-Za-z_][\w.]*)?"
    r"|at (?P<file2>[\w./-]+\.[chS]):\d+ (?P<func2>[A-Za-z_][\w.]*)"
    r"|(?:\[[^\]\n]*\] )?(?P<file3>[\w./-]+\.[chS]):\d+ at "
    r"(?:(?P<func3>[A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+" + _PS_MOD + r"|\S+), CPU#\d+"
    r"|(?:\[[^\]\n]*\] )?at (?:(?P<func4>[A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+" + _PS_MOD + r"|\S+), CPU#\d+)")

#     name, header regex, kind, title, rank, hot words[, consequence, crash]
RULES: tuple[Rule, ...] = (
    # ---- infrastructure, never a kernel bug ----
    rule("oom", r"(?:Out of memory(?: \(\w+\))?|(Memory cgroup) out of memory): Kill(?:ed)? process \d+",
         "oom", _t_oom, 1, hot="of memory", crash=False),
    # ---- sanitizers ----
    rule("kasan", r"BUG: KASAN: ([a-z][\w-]*(?: or [a-z][\w-]*)?)(?: in ([A-Za-z_][\w.]*))?",
         "kasan", _t_kasan, 90, hot=BUG),
    rule("kfence", r"BUG: KFENCE: ([a-z][\w -]*?) in ([A-Za-z_][\w.]*)",
         "kfence", _t_named("KFENCE: {}"), 90, hot=BUG),
    rule("kmsan", r"BUG: KMSAN: ([a-z][\w -]*?) in ([A-Za-z_][\w.]*)",
         "kmsan", _t_named("KMSAN: {}"), 90, hot=BUG),
    rule("kcsan", r"BUG: KCSAN: ([a-z][\w-]*(?:: [\w-]+)?) in (\S.*?)\s*$", "kcsan", _t_kcsan, 90, hot=BUG),
    rule("ubsan", r"UBSAN: ([a-z][\w-]+|Undefined behaviour) in (\S+)", "ubsan", _t_ubsan, 90, hot="UBSAN: "),
    # ---- lockdep & locking debug ----
    rule("lockdep", r"(?:WARNING|INFO|BUG): (?:\S+/\d+ )?(" + _LOCKDEP_HEADERS + r")",
         "lockdep", _t_lockdep_header, 80, hot=(WARNING, INFO, BUG)),
    rule("lockdep_limit", r"BUG: (MAX_[A-Z_]+ too low!?)",
         "lockdep", lambda m, b: f"BUG: {m.group(1)}", 80, hot=BUG),
    rule("lockdep_key", r"INFO: trying to register non-static key",
         "lockdep", _t_stack("INFO: trying to register non-static key"), 80, hot=INFO),
    rule("lockdep_key2", r"BUG: key [0-9a-f]+ (?:has not been registered|not in \.data)",
         "lockdep", _t_stack("BUG: key not registered"), 80, hot=BUG),
    rule("lockdep_subclass", r"BUG: looking up invalid subclass",
         "lockdep", _t_stack("BUG: looking up invalid subclass"), 80, hot=BUG),
    rule("preempt", r"BUG: using ([\w.]+\(\)) in preemptible",
         "lockdep", lambda m, b: in_func(f"BUG: using {m.group(1)} in preemptible code", first_frame(b)), 80,
         hot=BUG),
    rule("spinlock", r"BUG: (spinlock|rwlock) (lockup suspected|already unlocked|recursion|bad magic"
         r"|wrong owner|wrong CPU|cpu recursion|lockup)",
         "lockdep", lambda m, b: in_func(f"BUG: {m.group(1)} {m.group(2)}", crash_site(b)), 80, hot=BUG),
    # ---- refcount ----
    rule("refcount", r"refcount_t: (?:underflow|overflow|saturated|addition on 0|decrement hit 0"
         r"|increment on 0|addition resulted)",
         "refcount", _t_stack("WARNING: refcount bug"), 85, hot="refcount_t: "),
    # ---- bad page / mm accounting ----
    rule("bad_page", r"BUG: Bad page (state|map|cache) in process",
         "bad_page", lambda m, b: in_func(f"BUG: Bad page {m.group(1)}", first_frame(b)), 80, hot=BUG),
    rule("bad_rss", r"BUG: Bad rss-counter state",
         "bad_page", _t_const("BUG: Bad rss-counter state"), 80, hot=BUG),
    rule("pgtables", r"BUG: non-zero pgtables_bytes on freeing mm",
         "bad_page", _t_const("BUG: non-zero pgtables_bytes on freeing mm"), 80, hot=BUG),
    rule("vm_bug_page", r"page dumped because: ((?:VM_BUG_ON|VM_WARN_ON)\w*)",
         "bug", lambda m, b: in_func(f"{m.group(1)}", crash_site(b)), 30, hot="page dumped because"),
    # ---- leaks ----
    rule("leak", r"BUG: memory leak|unreferenced object 0x[0-9a-f]+ \(size \d+\)",
         "leak", _t_leak, 80, hot=(BUG, "unreferenced object")),
    rule("kmemleak", r"kmemleak: \d+ new suspected memory leaks",
         "leak", _t_const("memory leak"), 10, hot="kmemleak: ", consequence=True),
    # ---- hangs ----
    rule("soft_lockup", r"BUG: soft lockup - CPU#\d+ stuck for", "hang", _t_soft_lockup, 70, hot=BUG),
    rule("hard_lockup", r"(?:Watchdog detected hard LOCKUP on cpu|hard LOCKUP on cpu)",
         "hang", _t_site("BUG: hard lockup"), 70, hot=LOCKUP),
    rule("rcu_stall", r"INFO: rcu_\w+ (?:self-)?detected (?:expedited )?stalls?",
         "hang", _t_hang("INFO: rcu detected stall"), 70, hot=INFO),
    rule("rcu_stall_tasks", r"INFO: rcu_tasks(?:_\w+)? detected stalls?",
         "hang", _t_hang("INFO: rcu detected stall"), 70, hot=INFO),
    rule("hung_task", r"(?:INFO: task .*?|\S:\d+ )blocked (?:in I/O wait )?for more than \d+ seconds",
         "hang", _t_hang("INFO: task hung"), 70, hot=("blocked for more", "blocked in I/O")),
    rule("cant_die", r"INFO: task .+?:\d+ can't die for more than",
         "hang", _t_hang("INFO: task can't die"), 70, hot=INFO),
    rule("wq_lockup", r"BUG: workqueue lockup - pool", "hang", _t_const("BUG: workqueue lockup"), 70, hot=BUG),
    rule("netdev_wait", r"unregister_netdevice: waiting for \S+ to become free",
         "hang", _t_const("unregister_netdevice: waiting for DEV to become free"), 70,
         hot="unregister_netdevice: waiting"),
    # ---- specific BUGs ----
    rule("rust_panic", r"rust_kernel: panicked at(.*)$", "bug", _t_rust_panic, 65, hot="panicked at"),
    rule("usercopy", r"usercopy: Kernel memory (?:exposure|overwrite) attempt detected",
         "bug", _t_stack("BUG: bad usercopy"), 60, hot="usercopy: "),
    rule("list_corrupt", r"\b(?:list_add|list_del|list_add_rcu|hlist_\w+|list_\w+) (?:corruption|double add)",
         "bug", _t_stack("BUG: corrupted list"), 60, hot=(" corruption", "double add")),
    rule("atomic_sleep", r"BUG: sleeping function called from invalid context",
         "bug", _t_stack("BUG: sleeping function called from invalid context"), 60, hot=BUG),
    rule("sched_atomic", r"BUG: scheduling while atomic",
         "bug", _t_stack("BUG: scheduling while atomic"), 60, hot=BUG),
    rule("wq_leak", r"BUG: workqueue leaked lock or atomic", "bug", _t_wq_leak, 60, hot=BUG),
    rule("stack_guard", r"BUG: (?:\w+ )?stack guard page was hit",
         "bug", _t_site("BUG: stack guard page was hit"), 60, hot=BUG),
    rule("dentry", r"BUG: Dentry \S+\s+still in use", "bug", _t_const("BUG: Dentry still in use"), 60, hot=BUG),
    rule("vfs_close", r"VFS: Close: file count is 0",
         "bug", _t_const("VFS: Close: file count is zero (use-after-free)"), 60, hot="VFS: Close"),
    rule("kernel_bug", r"kernel BUG at (\S+?):\d+!?", "bug", _t_kernel_bug, 50, hot=BUG),
    # ---- oopses ----
    rule("null_deref",
         r"BUG: (?:unable to handle kernel NULL pointer dereference|kernel NULL pointer dereference, address)",
         "oops", _t_site("BUG: unable to handle kernel NULL pointer dereference"), 50, hot=BUG),
    rule("paging", r"BUG: (?:unable to handle kernel paging request|unable to handle page fault for address)",
         "oops", _t_site("BUG: unable to handle kernel paging request"), 50, hot=BUG),
    rule("unable_other", r"BUG: (?i:unable) to handle (?:kernel ?)?([a-z][\w -]*?)?(?: at | on | for |\s*$|\s*\[)",
         "oops", lambda m, b: in_func(f"BUG: unable to handle kernel {m.group(1) or ''}".strip(), crash_site(b)),
         49, hot=BUG),
    rule("arm_unable", r"Unable to handle kernel ([\w -]+?)(?: without uaccess routines)? at virtual address",
         "oops", lambda m, b: in_func(f"BUG: unable to handle kernel {m.group(1)}", crash_site(b)), 50,
         hot="nable to handle"),
    rule("gpf", r"general protection fault(?:,? [^:\n]*)?: [0-9a-f]{4} \[#\d+\]",
         "oops", _t_site("general protection fault"), 45, hot="[#"),
    rule("divide", r"divide error: [0-9a-f]{4} \[#\d+\]", "oops", _t_site("divide error"), 45, hot="[#"),
    rule("stack_segment", r"stack segment: [0-9a-f]{4} \[#\d+\]",
         "oops", _t_site("stack segment fault"), 45, hot="[#"),
    rule("double_fault", r"PANIC: double fault", "oops", _t_site("PANIC: double fault"), 45, hot="double fault"),
    rule("unhandled_fault", r"Unhandled fault: .* at 0x[0-9a-f]+",
         "oops", _t_site("Unhandled fault"), 40, hot="Unhandled fault"),
    rule("invalid_opcode", r"invalid opcode: [0-9a-f]{4} \[#\d+\]", "oops", _t_site("invalid opcode"), 15, hot="[#"),
    rule("internal_error", r"Internal error: [^\[]*\[#\d+\]",
         "oops", _t_site("Internal error"), 15, hot=("Internal error", "[#")),
    rule("oops", r"\bOops\b[^\[\n]*\[#\d+\]", "oops", _t_site("Oops"), 14, hot="[#"),
    # ---- warnings ----
    rule("warning", _WARNING_HEADER, _k_warning, _t_warning, 40, hot=WARNING),
    rule("stack_warning", r"WARNING: kernel stack (frame pointer|regs) at .*? in \S+ has bad",
         "warning", lambda m, b: "WARNING: kernel stack %s has bad value" % m.group(1), 40, hot=WARNING),
    # ---- slab debugging ----
    rule("slub", r"\bBUG ([\w.:-]+) \((?:Not tainted|Tainted: [^)]*)\): (?!kasan)(.+)$",
         "bug", _t_slub, 25, hot=BUG),
    rule("slub_trailer", r"INFO: (?:Allocated|Freed) in [\w.]+\+0x[0-9a-f]+/0x[0-9a-f]+ age=\d+",
         "bug", lambda m, b: clean(strip_prefix(m.string[m.start():]).split(" age=")[0]), 5,
         hot=INFO, consequence=True),
    # ---- panic: always a consequence when anything precedes it ----
    rule("panic", r"Kernel panic - not syncing:? (.*)$", "panic", _t_panic, 3, hot="Kernel panic", consequence=True),
    # ---- catch-all BUG: ----
    rule("bug_generic", r"\bBUG: ([A-Za-z].*)$", "bug", _t_bug_generic, 20, hot=BUG),
)

# An unexpected reboot has no header line: it is a boot banner opening a line after the kernel
# had already run (the engine finds those); its hot words are the banners.
REBOOT = rule("reboot", "", "panic", _t_const("unexpected kernel reboot"), 2,
              hot=("SeaBIOS (version", "Booting the kernel", "Decompressing Linux", "] Linux version "),
              consequence=True)


def _hot_words(rules: tuple[Rule, ...]) -> tuple[HotWord, ...]:
    words: dict[HotWord, None] = {}
    for r in rules:
        words.update(dict.fromkeys(r.hot))
    texts = [w.text for w in words]
    if len(texts) != len(set(texts)):
        raise ValueError("a hot word is declared both with and without word_start")
    return tuple(words)


HOT_WORDS = _hot_words(RULES)
