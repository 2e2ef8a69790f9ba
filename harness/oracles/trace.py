"""Trace oracle (pure): decode L1's ftrace text and check the dirty-marking rules (DESIGN §6, docs/trace-oracle.md).

Input is `trace_pipe` text from L1 (irq-info off or on), fed line by line: nothing is loaded whole.

  R1 (zap-time kernels, <= 6.12): a present dirty leaf SPTE changed to non-present, clean or another pfn must
     be followed, in the same task, by a dirty mark for the old pfn before that task changes another SPTE
     (handle_changed_spte() emits the event, then calls kvm_set_pfn_dirty()).
  R2 (create-time kernels, >= 6.13 or an RFC-style port): a fault that installs a host-writable leaf SPTE must
     hit the dirty release for its pfn in the same task before that task's next fault (kvm_mmu_spte_requested).
  R3 (either): a dirty leaf SPTE zapped under the MMU notifier (kvm_unmap_hva_range), whose pfn is then freed
     (mm_page_free) with neither a writeback (mm_vmscan_write_folio) nor a dirty mark in between: a lost write.
     On create-time kernels the dirty release after the pfn's last install counts as its mark.
  R4 (either, any MMU): a dirty leaf SPTE zapped, then its pfn dropped by reclaim as a clean folio
     (`__remove_mapping`, kprobe reclaim_clean) and freed, with no writeback (mm_vmscan_write_folio) since the
     zap: the lost write judged by its effect, whatever the kernel called to mark it.  A mark that does not set
     the folio's dirty flag (or a kernel that marks through a function the trace does not know) cannot hide it.

The shadow MMU (kvm.tdp_mmu=N) has no SPTE-change tracepoint: kprobe shadow_zap on mmu_spte_clear_track_bits()
records the old SPTE (`+0(%si)`), and kvmmmu:kvm_mmu_set_spte (gfn, new SPTE) gives its pfn -> gfn map.

SPTE bits (v6.12 arch/x86/kvm/mmu/spte.h): present = bit 11 (SPTE_MMU_PRESENT_MASK); pfn = bits 51:12;
writable = bit 1 (both vendors); large = bit 7.  AMD NPT: accessed 5, dirty 6, host-writable 9, MMU-writable 10.
Intel EPT: accessed 8, dirty 9, host-writable 57, MMU-writable 58.  Bits 53:52 = 01 mark an A/D-disabled SPTE:
there "dirty" means writable (is_dirty_spte()).
"""
from __future__ import annotations

import gzip
import io
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

PFN_MASK = ((1 << 52) - 1) & ~0xFFF
PRESENT = 1 << 11
WRITABLE = 1 << 1
LARGE = 1 << 7
AD_MASK = 3 << 52
AD_DISABLED = 1 << 52
VENDOR_BITS = {  # accessed, dirty, host-writable, mmu-writable
    "amd": (1 << 5, 1 << 6, 1 << 9, 1 << 10),
    "intel": (1 << 8, 1 << 9, 1 << 57, 1 << 58),
}
VMEMMAP_DEFAULT = 0xFFFFEA0000000000  # x86-64 vmemmap base without KASLR of the memory layout
STRUCT_PAGE = 64  # sizeof(struct page) on x86-64
WINDOW = 4096  # lines: a pending check still unresolved this far on is late (preemption included)
GAP_S = 200e-6  # a task's next event this long after a zap: events may have vanished in between (see docs)
NOISE = 5e-5  # with cut lines in the trace, up to this fraction of checks may fail from silent loss (see docs)
MAX_EXAMPLES = 50
MAX_GFNS = 1 << 18  # a 1 GiB ledger's worth of 4 KiB pages


@dataclass(frozen=True)
class Spte:
    raw: int
    present: bool
    leaf: bool
    writable: bool
    accessed: bool
    dirty: bool
    host_writable: bool
    mmu_writable: bool
    ad_disabled: bool
    pfn: int

    def short(self) -> str:
        if not self.present:
            return "none" if self.raw in (0, 1 << 63) else f"np:{self.raw:#x}"
        flags = "".join(c if b else "-" for c, b in (("W", self.writable), ("D", self.dirty),
                                                      ("A", self.accessed), ("h", self.host_writable)))
        return f"pfn {self.pfn:#x} {flags}{'' if self.leaf else ' table'}"


def decode_spte(raw: int, vendor: str = "amd", level: int = 1) -> Spte:
    a, d, hw, mw = VENDOR_BITS[vendor]
    present = bool(raw & PRESENT)
    leaf = present and (level == 1 or bool(raw & LARGE))
    ad_off = (raw & AD_MASK) == AD_DISABLED
    writable = bool(raw & WRITABLE)
    dirty = present and (writable if ad_off else bool(raw & d))
    return Spte(raw, present, leaf, writable, present and not ad_off and bool(raw & a), dirty, bool(raw & hw),
                bool(raw & mw), ad_off, (raw & PFN_MASK) >> 12)


def is_dirty(raw: int, dmask: int) -> bool:
    """is_dirty_spte() for a present SPTE."""
    if (raw & AD_MASK) == AD_DISABLED:
        return bool(raw & WRITABLE)
    return bool(raw & dmask)


# ---- line parsing --------------------------------------------------------------------------------------------

@dataclass
class Event:
    name: str
    cpu: int
    pid: int
    ts: str
    body: str


_COMM_WITH_SPACE = re.compile(rb"CPU \d+/KVM-\d+")  # QEMU's vCPU threads: the one task name here with a space
# ftrace prints "%16s-%-7d [%03d]": the CPU's "[" sits at column 25 unless a pid has more than 7 digits.  A "[" much
# further right means the text of a cut event precedes this header (even when that text is only blanks).
HEADER_COL = 25


def split_line(line: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes, bool] | None:
    """(name, cpu, pid, ts, body, cut_in_header) or None for headers/garbage.  A task name with a space other
    than QEMU's "CPU n/KVM" means the header itself was cut (the text of an older event precedes it)."""
    r = line.find(b"] ")
    if r < 0:
        return None
    lb = line.rfind(b"[", 0, r)
    k = line.find(b": ", r)
    if lb < 0 or k < 0:
        return None
    e = line.find(b": ", k + 2)
    if e < 0:
        e = len(line)
    head = line[:lb].strip()
    ts = line[r + 1:k]
    sp = ts.rfind(b" ")
    return line[k + 2:e], line[lb + 1:r], head[head.rfind(b"-") + 1:], ts[sp + 1:] if sp >= 0 else ts, line[e + 2:], \
        lb != HEADER_COL


def uncut(line: bytes) -> tuple[bytes, int]:
    """trace_pipe sometimes cuts an event's text short and the next event's header follows on the same line
    (seen on 6.12 when the reader keeps up with the writer).  Returns (the last intact event's text, cuts)."""
    cuts = 0
    while True:
        r = line.find(b"] ")
        if r < 0 or line.find(b"] ", r + 2) < 0:
            return line, cuts
        line = line[r + 2:]
        cuts += 1


def parse_line(line: str | bytes) -> Event | None:
    if isinstance(line, str):
        line = line.encode()
    p = split_line(line.rstrip(b"\n"))
    if not p:
        return None
    name, cpu, pid, ts, body, _cut = p
    try:
        return Event(name.decode(), int(cpu), int(pid) if pid.isdigit() else -1, ts.decode(), body.decode())
    except ValueError:
        return None


def _field(body: bytes, key: bytes) -> int:
    i = body.find(key)
    if i < 0:
        raise ValueError(key)
    i += len(key)
    j = body.find(b" ", i)
    return int(body[i:j] if j >= 0 else body[i:], 16)


def page_pfn(body: bytes) -> int:
    """pfn of a kprobe hit that recorded a struct page/folio pointer (page=) and the vmemmap base (vmemmap=)."""
    page = _field(body, b"page=")
    try:
        base = _field(body, b"vmemmap=")
    except ValueError:
        base = VMEMMAP_DEFAULT
    return (page - base) // STRUCT_PAGE


def dirty_pfn(name: bytes, body: bytes) -> int:
    """pfn of a dirty-mark kprobe hit: dirty_pfn has pfn=; dirty_page has page= (struct page *) and vmemmap=."""
    return _field(body, b"pfn=") if name == b"dirty_pfn" else page_pfn(body)


# ---- the streaming checker -----------------------------------------------------------------------------------

SPTE_CHANGED = b"kvm_tdp_mmu_spte_changed"
SPTE_REQUESTED = b"kvm_mmu_spte_requested"
SET_SPTE = b"kvm_mmu_set_spte"
UNMAP = b"kvm_unmap_hva_range"
AGE = b"kvm_age_hva"
WRITE_FOLIO = b"mm_vmscan_write_folio"
PAGE_FREE = b"mm_page_free"
DIRTY = (b"dirty_pfn", b"dirty_page")
SHADOW_ZAP = b"shadow_zap"  # kprobe on mmu_spte_clear_track_bits(kvm, sptep): spte=+0(%si), the old SPTE
RECLAIM_CLEAN = b"reclaim_clean"  # kprobe on __remove_mapping(mapping, folio, ...): reclaim drops a clean folio
RULES = ("R1", "R2", "R3", "R4")

ZAP_EVENTS = "kvm_tdp_mmu_spte_changed|shadow_zap"
RULE_NEEDS = {
    "R1": (ZAP_EVENTS, "dirty_pfn|dirty_page"),
    "R2": ("kvm_tdp_mmu_spte_changed", "kvm_mmu_spte_requested", "dirty_pfn|dirty_page"),
    "R3": (ZAP_EVENTS, "kvm_unmap_hva_range", "mm_page_free", "mm_vmscan_write_folio",
           "dirty_pfn|dirty_page"),
    "R4": (ZAP_EVENTS, "reclaim_clean", "mm_page_free", "mm_vmscan_write_folio"),
}
RULE_SET = {"zap-time": ("R1", "R3", "R4"), "create-time": ("R2", "R3", "R4")}


@dataclass
class RuleState:
    ran: bool = True
    why: str = ""
    checked: int = 0
    violations: int = 0
    examples: list = field(default_factory=list)
    unresolved_at_end: int = 0
    dropped_by_loss: int = 0
    dropped_by_cut: int = 0
    dropped_by_gap: int = 0
    dropped_install_untraced: int = 0  # create-time R3: the pfn was mapped before tracing began
    gfns: set = field(default_factory=set)  # every gfn with a violation (bounded): the ledger join needs them all

    def violate(self, ex: dict) -> None:
        self.violations += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(ex)
        if ex.get("gfn") is not None and len(self.gfns) < MAX_GFNS:
            self.gfns.add(ex["gfn"])


@dataclass
class Result:
    vendor: str
    ruleset: str
    events: int = 0
    lines: int = 0
    lost_events: int = 0
    lost_markers: int = 0
    cut_events: int = 0  # events whose text trace_pipe cut short (seen in 6.12 under load; see docs)
    cut_marks: int = 0  # ... of which might have been a dirty mark
    truncated: bool = False
    counts: dict = field(default_factory=dict)
    rules: dict = field(default_factory=dict)
    first_ts: str | None = None
    last_ts: str | None = None


class Checker:
    """Feed trace_pipe lines (bytes) in order; `finish()` gives the Result.  Memory: O(distinct pfns zapped)."""

    def __init__(self, vendor: str = "amd", ruleset: str = "zap-time", available: Iterable[str] | None = None,
                 window: int = WINDOW):
        self.vendor = vendor
        self.ruleset = ruleset
        _, self.dmask, self.hwmask, _ = VENDOR_BITS[vendor]
        self.window = window
        self.res = Result(vendor, ruleset)
        self.counts: dict[bytes, int] = {}
        self.available = set(available) if available is not None else None
        self.rules = {r: RuleState() for r in RULES}
        self._decide_rules()
        self.r1_pend: dict[bytes, list] = {}  # pid -> [[pfn, gfn, line, ts, ts of the task's next event], ...]
        self.r2_pend: dict[bytes, list] = {}  # pid -> [[pfn, npages, gfn, line, ts], ...]
        self.notifier: dict[bytes, int] = {}  # pid -> line of its last kvm_unmap_hva_range
        self.zapped: dict[int, list] = {}  # pfn -> [gfn, line, ts, marked, written]
        self.unmarked: set[int] = set()  # zapped pfns whose dirty mark has not been seen yet
        # create-time kernels mark at install: pfns whose dirty release came after their last install (R3 counts
        # that as the mark; otherwise every migration or teardown free of a mapped page would look like a loss)
        self.released: set[int] = set()
        self.installed: set[int] = set()  # pfns whose install the trace saw
        # R4: pfn -> [gfn, line, ts, written back since the zap, dropped clean by reclaim]
        self.r4_zapped: dict[int, list] = {}
        self.pfn_gfn: dict[int, int] = {}  # shadow MMU: pfn -> gfn from kvm_mmu_set_spte (no gfn at the zap)
        self.n = 0
        self.next_sweep = window
        self.done = False

    def _decide_rules(self) -> None:
        active = RULE_SET.get(self.ruleset, ())
        for r, st in self.rules.items():
            if r not in active:
                st.ran = False
                st.why = (f"not applicable: {self.ruleset} kernel"
                          + (" (faults release pages clean by design; dirty marked at zap)" if r == "R2" else
                             " (zap no longer marks dirty; marked at SPTE creation)" if r == "R1" else ""))
                continue
            if self.available is not None:
                miss = [n for n in RULE_NEEDS[r] if not any(x in self.available for x in n.split("|"))]
                if miss:
                    st.ran = False
                    st.why = "not run: missing event(s) " + ", ".join(miss)
        self.r1 = self.rules["R1"].ran
        self.r2 = self.rules["R2"].ran
        self.r3 = self.rules["R3"].ran
        self.r4 = self.rules["R4"].ran

    def disable(self, rule: str, why: str) -> None:
        """Turn a rule off before feeding (the scenario makes it meaningless); it reports ran: false with why."""
        st = self.rules[rule]
        st.ran, st.why = False, why
        setattr(self, rule.lower(), False)

    def truncate(self) -> None:
        self.res.truncated = True
        self.done = True

    def feed(self, line: bytes, _nested: bool = False) -> None:
        if self.done:
            return
        self.n += 1
        n = self.n
        if line.startswith(b"CPU:") and b"LOST" in line:
            self._lost(line)
            return
        r = line.find(b"] ")
        if r >= 0 and line.find(b"] ", r + 2) >= 0:
            # a cut line: the text of this event stops short and another event's header follows
            self._cut()
            self.n -= 1
            self.feed(line[r + 2:], True)
            return
        p = split_line(line)
        if p is None:
            return
        name, _cpu, pid, ts, body, cut = p
        if cut and not _nested:
            self._cut()
        if pid in self.r1_pend:
            for q in self.r1_pend[pid]:
                if q[4] is None:
                    q[4] = ts
        c = self.counts
        c[name] = c.get(name, 0) + 1
        if n >= self.next_sweep:
            self._sweep(n)
        try:
            if name == SPTE_CHANGED:
                self._spte_changed(pid, ts, body, n)
            elif name in DIRTY:
                self._dirty(pid, dirty_pfn(name, body))
            elif name == PAGE_FREE:
                if self.zapped or self.r4_zapped:
                    pfn = _field(body, b"pfn=")
                    order = _field(body, b"order=")
                    z, z4 = self.zapped, self.r4_zapped
                    for q in range(pfn, pfn + (1 << order)):
                        if q in z:
                            self.unmarked.discard(q)
                            self._freed(q, z.pop(q), ts)
                        if q in z4:
                            self._r4_freed(q, z4.pop(q), ts)
            elif name == WRITE_FOLIO:
                if self.zapped or self.r4_zapped:
                    pfn = _field(body, b"pfn=")
                    ent = self.zapped.get(pfn)
                    if ent:
                        ent[4] = True
                    ent = self.r4_zapped.get(pfn)
                    if ent:
                        ent[3] = True
            elif name == RECLAIM_CLEAN:
                if self.r4_zapped:
                    ent = self.r4_zapped.get(page_pfn(body))
                    if ent:
                        ent[4] = True
            elif name == SHADOW_ZAP:
                self._shadow_zap(pid, ts, body, n)
            elif name == SET_SPTE:
                self._set_spte(body)
            elif name == SPTE_REQUESTED:
                if pid in self.r2_pend:
                    self._r2_close(pid, "its next fault started")
            elif name == UNMAP:
                self.notifier[pid] = n
            if self.res.first_ts is None:
                self.res.first_ts = ts.decode()
            self.res.last_ts = ts
        except ValueError:
            return

    def _cut(self) -> None:
        """An event whose text was cut short: unknown content."""
        self.res.cut_events += 1
        # Measured on 6.12: a cut also swallows the next few whole events (a few hundred bytes), whatever they
        # were.  So every pending check is now unknown: drop it (counted), neither pass nor violation.
        for r, pend in (("R1", self.r1_pend), ("R2", self.r2_pend)):
            self.rules[r].dropped_by_cut += sum(len(v) for v in pend.values())
            pend.clear()
        if self.unmarked:  # zapped just now, mark not yet seen: the mark may be among the swallowed events
            for q in list(self.unmarked):
                ent = self.zapped.get(q)
                if ent is None:
                    self.unmarked.discard(q)
                elif self.n - ent[1] < 64:  # marks follow their zap at once: only recent zaps are in doubt
                    del self.zapped[q]
                    self.unmarked.discard(q)
                    self.rules["R3"].dropped_by_cut += 1
        if self.r4_zapped:  # a writeback follows its zap at once (pageout right after try_to_unmap): recent ones
            z4 = self.r4_zapped
            for q in [q for q, e in z4.items() if not e[3] and self.n - e[1] < 64]:
                del z4[q]
                self.rules["R4"].dropped_by_cut += 1

    def _lost(self, line: bytes) -> None:
        words = line.split()
        num = next((int(w) for w in words if w.isdigit()), 0)
        self.res.lost_events += num
        self.res.lost_markers += 1
        # whatever was pending may have been resolved by a lost event: neither pass nor violation
        for r, pend in (("R1", self.r1_pend), ("R2", self.r2_pend)):
            self.rules[r].dropped_by_loss += sum(len(v) for v in pend.values())
            pend.clear()
        for ent in self.zapped.values():
            ent[3] = True  # unknown: a lost event may have been its dirty mark
        self.rules["R3"].dropped_by_loss += len(self.zapped)
        self.zapped.clear()
        self.unmarked.clear()
        self.rules["R4"].dropped_by_loss += len(self.r4_zapped)
        self.r4_zapped.clear()

    def _spte_changed(self, pid: bytes, ts: bytes, body: bytes, n: int) -> None:
        f = body.split()
        gfn = int(f[4], 16)
        level = int(f[6])
        old = int(f[8], 16)
        new = int(f[10], 16)
        if pid in self.r1_pend:
            self._r1_close(pid, "the same task changed another SPTE first")
        old_leaf = old & PRESENT and (level == 1 or old & LARGE)
        new_present = new & PRESENT
        opfn = (old & PFN_MASK) >> 12
        npfn = (new & PFN_MASK) >> 12
        if old_leaf and is_dirty(old, self.dmask) and (
                not new_present or not is_dirty(new, self.dmask) or opfn != npfn):
            self._dirty_leaf_changed(pid, ts, n, gfn, opfn, not new_present or opfn != npfn)
        if new_present and (level == 1 or new & LARGE):
            self._remapped(npfn)
            if not (old_leaf and opfn == npfn):
                self.released.discard(npfn)  # a new mapping of this pfn: its release is still to come
                self.installed.add(npfn)
            if self.r2 and new & self.hwmask and not (old_leaf and old & self.hwmask and opfn == npfn):
                self.rules["R2"].checked += 1
                self.r2_pend.setdefault(pid, []).append([npfn, 1 << (9 * (level - 1)), gfn, n, ts])

    def _dirty_leaf_changed(self, pid: bytes, ts: bytes, n: int, gfn: int | None, opfn: int, unmapped: bool) -> None:
        """A present dirty leaf SPTE of opfn became non-present, clean or another pfn (`unmapped`: non-present or
        another pfn, i.e. KVM no longer maps opfn there; only then can the page be reclaimed behind its back)."""
        if self.r1:
            self.rules["R1"].checked += 1
            self.r1_pend.setdefault(pid, []).append([opfn, gfn, n, ts, None])
        if not unmapped:
            return
        if self.r4:
            self.r4_zapped[opfn] = [gfn, n, ts, False, False]
        if self.r3:
            nl = self.notifier.get(pid)
            if nl is not None and n - nl < self.window:
                create = self.ruleset == "create-time"
                if create and opfn not in self.installed:
                    # mapped before tracing began: whether its release came is unknowable
                    self.rules["R3"].dropped_install_untraced += 1
                else:
                    marked = create and opfn in self.released
                    self.zapped[opfn] = [gfn, n, ts, marked, False]
                    if not marked:
                        self.unmarked.add(opfn)

    def _remapped(self, npfn: int) -> None:
        """A leaf SPTE maps npfn again: it is no longer a candidate for a silent free."""
        if self.zapped.pop(npfn, None) is not None:
            self.unmarked.discard(npfn)
        self.r4_zapped.pop(npfn, None)

    def _shadow_zap(self, pid: bytes, ts: bytes, body: bytes, n: int) -> None:
        """mmu_spte_clear_track_bits(): the shadow MMU clears a leaf SPTE (rmap SPTEs are leaves), then marks."""
        old = _field(body, b"spte=")
        if pid in self.r1_pend:
            self._r1_close(pid, "the same task cleared another SPTE first")
        if old & PRESENT and is_dirty(old, self.dmask):
            opfn = (old & PFN_MASK) >> 12
            self._dirty_leaf_changed(pid, ts, n, self.pfn_gfn.get(opfn), opfn, True)

    def _set_spte(self, body: bytes) -> None:
        """kvm_mmu_set_spte: "gfn G spte S (rwxu) level L" -- an install (either MMU)."""
        f = body.split()
        gfn, new = int(f[1], 16), int(f[3], 16)
        if new & PRESENT:
            pfn = (new & PFN_MASK) >> 12
            self.pfn_gfn[pfn] = gfn
            self._remapped(pfn)

    def _r4_freed(self, pfn: int, ent: list, ts: bytes) -> None:
        if not ent[4]:
            return  # freed some other way (migration, teardown): the candidacy ends, nothing to judge
        st = self.rules["R4"]
        st.checked += 1
        if not ent[3]:
            st.violate({"gfn": ent[0], "pfn": pfn, "zap_line": ent[1], "zap_ts": _s(ent[2]), "free_ts": _s(ts),
                        "what": "dirty SPTE zapped, then reclaim dropped the page as clean (no writeback) and "
                                "freed it: the dirty mark was missing or had no effect"})

    def _dirty(self, pid: bytes, pfn: int) -> None:
        pend = self.r1_pend.get(pid)
        if pend:
            for i, p in enumerate(pend):
                if p[0] == pfn:
                    del pend[i]
                    break
            if not pend:
                del self.r1_pend[pid]
        pend = self.r2_pend.get(pid)
        if pend:
            for i, p in enumerate(pend):
                if p[0] <= pfn < p[0] + p[1]:
                    del pend[i]
                    break
            if not pend:
                del self.r2_pend[pid]
        if self.ruleset == "create-time":
            self.released.add(pfn)
        ent = self.zapped.get(pfn)
        if ent:
            ent[3] = True
            self.unmarked.discard(pfn)

    def _freed(self, pfn: int, ent: list, ts: bytes) -> None:
        st = self.rules["R3"]
        st.checked += 1
        if not ent[3] and not ent[4]:
            st.violate({"gfn": ent[0], "pfn": pfn, "zap_line": ent[1], "zap_ts": _s(ent[2]), "free_ts": _s(ts),
                        "what": "dirty SPTE zapped by the notifier, pfn freed with no writeback and no dirty mark"})

    def _r1_close(self, pid: bytes, why: str) -> None:
        st = self.rules["R1"]
        for pfn, gfn, line, ts, nts in self.r1_pend.pop(pid):
            if nts is not None and float(nts) - float(ts) > GAP_S:
                st.dropped_by_gap += 1  # the mark may be among events trace_pipe lost silently
                continue
            st.violate({"gfn": gfn, "pfn": pfn, "line": line, "ts": _s(ts), "pid": _s(pid),
                        "what": f"dirty leaf SPTE zapped/cleaned without a dirty mark for its pfn ({why})"})

    def _r2_close(self, pid: bytes, why: str) -> None:
        st = self.rules["R2"]
        for pfn, npages, gfn, line, ts in self.r2_pend.pop(pid):
            st.violate({"gfn": gfn, "pfn": pfn, "line": line, "ts": _s(ts), "pid": _s(pid),
                        "what": f"host-writable SPTE installed without a dirty release of its pfn ({why})"})

    def _sweep(self, n: int) -> None:
        self.next_sweep = n + self.window
        for pend, close in ((self.r1_pend, self._r1_close), (self.r2_pend, self._r2_close)):
            late = [pid for pid, v in pend.items() if v and n - v[0][2 if pend is self.r1_pend else 3] > self.window]
            for pid in late:
                close(pid, f"no mark within {self.window} trace lines")

    def finish(self) -> Result:
        self.done = True
        res = self.res
        res.lines = self.n
        res.counts = {k.decode(): v for k, v in sorted(self.counts.items())}
        res.events = sum(self.counts.values())
        res.last_ts = _s(res.last_ts) if isinstance(res.last_ts, bytes) else res.last_ts
        self.rules["R1"].unresolved_at_end = sum(len(v) for v in self.r1_pend.values())
        self.rules["R2"].unresolved_at_end = sum(len(v) for v in self.r2_pend.values())
        self.rules["R3"].unresolved_at_end = len(self.zapped)
        self.rules["R4"].unresolved_at_end = sum(1 for e in self.r4_zapped.values() if e[4])
        for r, st in self.rules.items():
            if st.ran and not st.why:
                st.why = {"R1": "dirty leaf SPTE changes checked for a following dirty mark",
                          "R2": "host-writable SPTE installs checked for a dirty release before the next fault",
                          "R3": "notifier zaps of dirty SPTEs followed to the free of their pfn",
                          "R4": "zaps of dirty SPTEs followed to reclaim's clean drop and free of their pfn"}[r]
        res.rules = self.rules
        return res


def _s(b) -> str:
    return b.decode(errors="replace") if isinstance(b, (bytes, bytearray)) else str(b)


def check_lines(lines: Iterable[bytes], vendor: str = "amd", ruleset: str = "zap-time",
                available: Iterable[str] | None = None) -> Result:
    chk = Checker(vendor, ruleset, available)
    for ln in lines:
        chk.feed(ln)
    return chk.finish()


def open_lines(path: str | Path) -> Iterator[bytes]:
    """Stream a trace file (plain or .gz) line by line, without the newline."""
    p = Path(path)
    raw = gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")
    with raw as f:
        for ln in io.BufferedReader(f, 1 << 20) if p.suffix == ".gz" else f:
            yield ln.rstrip(b"\n")


# ---- verdicts --------------------------------------------------------------------------------------------------

def noise_floor(res: Result, st: RuleState) -> int:
    """trace_pipe on 6.12 loses a few events silently next to its cut lines (docs/trace-oracle.md): when the trace
    has cut lines, this many violations are within the transport's noise and make no finding."""
    return int(st.checked * NOISE) if res.cut_events else 0


def rules_json(res: Result, incomplete: list[str] | None = None) -> dict:
    out = {}
    for r, st in res.rules.items():
        why = st.why
        if st.ran and incomplete and not st.violations:
            why += "; cannot prove absence: " + ", ".join(incomplete)
        if st.ran and st.checked == 0:
            why += "; nothing to check was observed (vacuous)"
        floor = noise_floor(res, st)
        if st.ran and 0 < st.violations <= floor:
            why += (f"; {st.violations} violation(s) within the noise floor ({floor}) of trace_pipe's silent losses "
                    f"next to {res.cut_events} cut lines: no finding")
        out[r] = {"ran": st.ran, "events_checked": st.checked, "violations": st.violations, "why": why,
                  "noise_floor": noise_floor(res, st),
                  "unresolved_at_end": st.unresolved_at_end, "dropped_by_lost_events": st.dropped_by_loss,
                  "dropped_by_cut_lines": st.dropped_by_cut, "dropped_by_time_gap": st.dropped_by_gap,
                  "dropped_install_untraced": st.dropped_install_untraced}
    return out


def ledger_gfns(ledger) -> list[int]:
    """gfns of the pages the ledger found bad (L2 gfns: the same numbers as the SPTE events' gfn)."""
    bad = getattr(ledger, "bad", None) or []
    out = []
    for b in bad:
        g = b.get("gfn") if isinstance(b, dict) else None
        if isinstance(g, int) and g not in out:
            out.append(g)
    return out


def findings(res: Result, incomplete: list[str] | None = None, ledger_gfns: list[int] | None = None) -> list[dict]:
    lg = set(ledger_gfns or [])
    out = []
    titles = {"R1": "dirty SPTE zapped without marking its page dirty",
              "R2": "writable SPTE installed without marking its page dirty",
              "R3": "page freed after a notifier zap with no writeback and no dirty mark (lost write)",
              "R4": "page dropped clean by reclaim after a dirty SPTE zap, no writeback (lost write)"}
    for r, st in res.rules.items():
        if not st.ran or st.violations <= noise_floor(res, st):
            continue
        ex = st.examples[:20]
        for e in ex:
            e["ledger_bad"] = e.get("gfn") in lg
        f = {"oracle": "trace", "layer": "L1", "kind": f"{r}-violation",
             "title": f"trace rule {r}: {st.violations} x {titles[r]}", "rule": r, "count": st.violations,
             "checked": st.checked, "examples": ex,
             "ledger_gfns_matched": sorted(st.gfns & lg)[:50], "ledger_gfns_matched_count": len(st.gfns & lg)}
        if incomplete:
            f["note"] = "trace incomplete (" + ", ".join(incomplete) + "): counts are lower bounds"
        out.append(f)
    return out


def timelines(lines: Iterable[bytes], gfns: Iterable[int], vendor: str = "amd", limit: int = 40,
              fates: dict[int, dict] | None = None) -> dict[int, list[str]]:
    """For each gfn: its trace history (fault, SPTE changes, notifier, dirty marks, writeback, free of its pfns).
    With `fates`, also fills fates[gfn] with what happened after the gfn's last leaf-SPTE zap: the L1 pfn, whether
    the SPTE was writable+dirty, and whether a dirty mark, a writeback and a free of that pfn followed."""
    want = {g: deque(maxlen=limit) for g in gfns}
    fates = {} if fates is None else fates
    pfn_gfn: dict[int, int] = {}
    last_unmap: dict[bytes, bytes] = {}
    for ln0 in lines:
        ln, _ = uncut(ln0)
        p = split_line(ln)
        if not p:
            if ln.startswith(b"CPU:") and b"LOST" in ln:
                for d in want.values():
                    d.append(_s(ln.strip()))
            continue
        name, cpu, pid, ts, body, _cut = p
        t = _s(ts)
        try:
            if name == SPTE_CHANGED:
                f = body.split()
                g = int(f[4], 16)
                if g in want:
                    lvl = int(f[6])
                    o = decode_spte(int(f[8], 16), vendor, lvl)
                    nw = decode_spte(int(f[10], 16), vendor, lvl)
                    if pid in last_unmap and not nw.present:
                        want[g].append(f"{t} notifier {last_unmap[pid]}")
                    what = "zap" if o.present and not nw.present else "map" if nw.present and not o.present else "change"
                    want[g].append(f"{t} pid {_s(pid)} spte {what} L{lvl}: {o.short()} -> {nw.short()}")
                    if what == "zap" and o.leaf:
                        _new_fate(fates, g, o.pfn, t, o.writable and o.dirty)
                    for s_ in (o, nw):
                        if s_.present and s_.leaf:
                            pfn_gfn[s_.pfn] = g
            elif name == SET_SPTE:  # an install: the shadow MMU's only gfn <-> pfn evidence
                f = body.split()
                g, new = int(f[1], 16), int(f[3], 16)
                if g in want and new & PRESENT:
                    pfn = (new & PFN_MASK) >> 12
                    pfn_gfn[pfn] = g
                    want[g].append(f"{t} pid {_s(pid)} spte map: {decode_spte(new, vendor).short()}")
            elif name == SHADOW_ZAP:
                o = decode_spte(_field(body, b"spte="), vendor)
                g = pfn_gfn.get(o.pfn) if o.present else None
                if g in want:
                    if pid in last_unmap:
                        want[g].append(f"{t} notifier {last_unmap[pid]}")
                    want[g].append(f"{t} pid {_s(pid)} shadow spte zap: {o.short()} -> none")
                    _new_fate(fates, g, o.pfn, t, o.writable and o.dirty)
            elif name == RECLAIM_CLEAN:
                pfn = page_pfn(body)
                if pfn in pfn_gfn:
                    want[pfn_gfn[pfn]].append(f"{t} reclaim drops pfn {pfn:#x} as clean")
                    _fate(fates, pfn_gfn[pfn], pfn, "dropped_clean")
            elif name == SPTE_REQUESTED:
                f = body.split()
                g = int(f[1], 16)
                if g in want:
                    pfn = int(f[3], 16)
                    pfn_gfn[pfn] = g
                    want[g].append(f"{t} pid {_s(pid)} fault gfn {g:#x} -> pfn {pfn:#x}")
            elif name in DIRTY:
                pfn = dirty_pfn(name, body)
                if pfn in pfn_gfn:
                    want[pfn_gfn[pfn]].append(f"{t} pid {_s(pid)} dirty mark pfn {pfn:#x} ({_s(name)})")
                    _fate(fates, pfn_gfn[pfn], pfn, "dirty_mark")
            elif name == WRITE_FOLIO:
                pfn = _field(body, b"pfn=")
                if pfn in pfn_gfn:
                    want[pfn_gfn[pfn]].append(f"{t} writeback pfn {pfn:#x}")
                    _fate(fates, pfn_gfn[pfn], pfn, "writeback")
            elif name == PAGE_FREE:
                pfn = _field(body, b"pfn=")
                if pfn in pfn_gfn:
                    _fate(fates, pfn_gfn[pfn], pfn, "freed")
                    want[pfn_gfn.pop(pfn)].append(f"{t} free pfn {pfn:#x}")
            elif name == UNMAP:
                last_unmap[pid] = body.split(b": ", 1)[-1].replace(b" ", b"")
            elif name == AGE:
                last_unmap.pop(pid, None)
        except (ValueError, IndexError):
            continue
    return {g: list(d) for g, d in want.items()}


def _new_fate(fates: dict[int, dict], g: int, pfn: int, t: str, dirty_spte: bool) -> None:
    """A zap of gfn g's leaf SPTE starts a new cycle, unless an earlier cycle already ended in a lost write's
    shape: that one (the first loss) is what the finding reports, not the last cycle before the run ended."""
    f = fates.get(g)
    if f and f.get("lost"):
        return
    fates[g] = {"pfn": pfn, "t": t, "dirty_spte": dirty_spte, "dirty_mark": False, "writeback": False,
                "freed": False}


def _fate(fates: dict[int, dict], g: int, pfn: int, what: str) -> None:
    f = fates.get(g)
    if f and f["pfn"] == pfn and not f.get("lost"):
        f[what] = True
        if what == "freed" and f["dirty_spte"] and not f["writeback"] and f.get("dropped_clean"):
            f["lost"] = True  # a dirty SPTE's page dropped clean by reclaim and freed, no writeback since the zap


def fate_text(f: dict) -> str:
    """One line: what L1 did with the page after the gfn's last zap (the shape of a lost write, or not)."""
    return (f"L1 pfn {f['pfn']:#x}: {'writable dirty ' if f['dirty_spte'] else ''}SPTE zapped at {f['t']} s, then "
            + ", ".join(("a dirty mark" if f["dirty_mark"] else "no dirty mark",
                         "writeback" if f["writeback"] else "no writeback")
                        + (("dropped clean by reclaim",) if f.get("dropped_clean") else ())
                        + ("freed" if f["freed"] else "not freed",)))


def timeline_findings(tl: dict[int, list[str]], res: Result, incomplete: list[str] | None = None,
                      limit: int = 20, fates: dict[int, dict] | None = None) -> list[dict]:
    """One finding per ledger-bad gfn: gfn (L2), pfn (L1), the trace rules that flagged it, and its history."""
    out = []
    fates = fates or {}
    for g, lines in list(tl.items())[:limit]:
        rules = sorted(r for r, st in res.rules.items() if g in st.gfns)
        fate = fates.get(g)
        f = {"oracle": "trace", "layer": "L1", "kind": "ledger-timeline",
             "title": f"ledger-bad gfn {g:#x}: "
                      + (fate_text(fate) if fate else "no zap of this gfn in the trace" if lines
                         else "no trace event for this gfn")
                      + (f" (rules {', '.join(rules)})" if rules else ""),
             "gfn": g, "pfn": fate["pfn"] if fate else None, "rules": rules, "timeline": lines}
        if incomplete:
            f["note"] = "trace incomplete (" + ", ".join(incomplete) + "): a missing event proves nothing"
        out.append(f)
    return out


# ---- benchmark ---------------------------------------------------------------------------------------------------

def bench_trace(size_mb: int = 1024, snippet: str | Path | None = None, vendor: str = "amd") -> dict:
    """Synthesize a trace of ~size_mb by repeating a recorded snippet (timestamps left as recorded) and time the
    streaming check on one core.  The trace is generated on the fly, never held whole in memory."""
    from harness.paths import REPO
    snip = Path(snippet) if snippet else REPO / "tests/fixtures/trace/clean-reclaim-6.12-amd.txt"
    block = [ln for ln in snip.read_bytes().split(b"\n") if ln and not ln.startswith(b"#")]
    block_bytes = sum(len(x) + 1 for x in block)
    reps = max(1, (size_mb << 20) // block_bytes)
    chk = Checker(vendor, "zap-time")
    t0 = time.perf_counter()
    for _ in range(reps):
        for ln in block:
            chk.feed(ln)
    res = chk.finish()
    dt = time.perf_counter() - t0
    total = reps * block_bytes
    return {"size_mb": round(total / (1 << 20), 1), "lines": res.lines, "seconds": round(dt, 2),
            "mb_per_s": round(total / (1 << 20) / dt, 1), "lines_per_s": int(res.lines / dt),
            "rules": {r: {"checked": st.checked, "violations": st.violations} for r, st in res.rules.items()},
            "target_s_per_gb": 60, "ok": dt * (1024 / max(1e-9, total / (1 << 20))) <= 60}
