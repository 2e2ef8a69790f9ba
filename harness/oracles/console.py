"""Console oracle: find kernel crash reports in a guest console log.

A pure, table-driven classifier in the spirit of syzkaller's ``pkg/report``.
This module is the engine; what reports look like and how they are titled is
the rule table in ``console_rules`` (stack-frame helpers: ``console_frames``).

How it works
------------
1. The hot words of the table (``console_rules.HOT_WORDS``, the union of every
   record's ``hot``) are located with ``str.find`` over the whole text; only the
   lines holding one are looked at further.  Each such line is matched against
   the ordered ``console_rules.RULES`` (the first rule that matches wins).
   Matching uses ``search`` so any console prefix is tolerated: ``[  272.3][   T12]``
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
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from harness.oracles.console_frames import BODY_LINES, SPACES_RE, strip_prefix
from harness.oracles.console_rules import HOT_WORDS, REBOOT, RULES, Rule

__all__ = [
    "Report", "classify", "classify_all", "cli_classify", "taint_flags", "TAINT_FLAGS", "KINDS",
]

KINDS = ("panic", "oops", "bug", "warning", "kasan", "kfence", "kmsan", "kcsan",
         "ubsan", "lockdep", "hang", "leak", "bad_page", "refcount", "oom", "none")

EXCERPT_LINES = 60
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

    def as_dict(self) -> dict[str, Any]:
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
# Candidate lines
# --------------------------------------------------------------------------
def _hot_lines(text: str) -> list[int]:
    """Sorted start offsets of lines holding a hot word."""
    starts: set[int] = set()
    find, rfind = text.find, text.rfind
    for hot in HOT_WORDS:
        w, word_start = hot.text, hot.word_start
        pos = find(w)
        while pos >= 0:
            if word_start and pos and (text[pos - 1].isalnum() or text[pos - 1] == "_"):
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

# Boot banners (REBOOT's hot words) must open their line,
# after nothing but console noise (escape sequences, punctuation, a "[0.000000]" stamp).
_BOOT_LEAD_RE = re.compile(r"^(?:\x1b\[[0-9;?]*[A-Za-z]|\x1bc|[^\w\n])*(?:\[\s*0\.000000\](?:\[\s*T0\])?)?$")


def _boot_banners(text: str) -> list[int]:
    out = []
    for w in (h.text for h in REBOOT.hot):
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
def _empty_match() -> re.Match[str]:
    m = re.match("", "")
    assert m is not None  # the empty pattern matches the empty string
    return m


_EMPTY_MATCH = _empty_match()  # a reboot trigger's: it has no header line of its own


@dataclass
class _Trigger:
    line_no: int        # 0-based
    line_start: int     # char offset
    rule: Rule
    match: re.Match[str]


def _scan(text: str) -> list[_Trigger]:
    triggers: list[_Trigger] = []
    line_no = 0
    counted_to = 0
    for ls in _hot_lines(text):
        le = text.find("\n", ls)
        if le < 0:
            le = len(text)
        line = text[ls:le]
        for rule in RULES:
            for hot in rule.hot:        # cheap guard: every header match holds one of its hot words
                if hot.text in line:
                    break
            else:
                continue
            m = rule.header.search(line)
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
        trigs.append(_Trigger(rb[0], rb[1], REBOOT, _EMPTY_MATCH))
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
                attached = False
                for gg in reversed(groups):
                    if gg[0].rule.crash:
                        if t.line_no - gg[-1].line_no <= _CONSEQUENCE_WINDOW:
                            gg.append(t)
                            attached = True
                        break
                if attached:
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
    body = _body(text, head.line_start, BODY_LINES)
    if next_start is not None and next_start > head.line_start:
        limit = text.count("\n", head.line_start, next_start)
        body = body[:max(limit, 1)] if head.line_no < first.line_no + _MERGE_WINDOW + 2 else body
    rule = head.rule
    try:
        title = rule.title(head.match, body)
    except Exception:  # a title must never kill the oracle
        title = rule.name
    kind = rule.kind_of(head.match)
    # walk back over lead-in lines ("cut here", "=====", page dump) for the excerpt
    start_line = first.line_no
    ls = first.line_start
    for _ in range(12):
        if ls == 0:
            break
        pls = text.rfind("\n", 0, ls - 1) + 1
        prev = strip_prefix(text[pls:ls - 1])
        if not prev or not _LEADIN_RE.search(prev):
            break
        if not prev.strip():
            break
        ls, start_line = pls, start_line - 1
    excerpt = "\n".join(_body(text, ls, EXCERPT_LINES))
    title = SPACES_RE.sub(" ", title).strip()
    return Report(crash=rule.crash, kind=kind, title=title, excerpt=excerpt,
                  start_line=start_line + 1, infra=(kind == "oom"))


_MAX_GROUPS = 500        # a report storm beyond this is summarised by its first reports


def _reports(text: str, groups: list[list[_Trigger]], idx: Iterable[int]) -> list[Report]:
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
# CLI
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


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(cli_classify(sys.argv[1], as_json="--json" in sys.argv))
