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
  R5 (either, both MMUs): a pfn freed (mm_page_free) while a present leaf SPTE still maps it: the use-after-free
     every race of the mmu_notifier class ends in (trace_freed_mapped.py says what the events allow).

The shadow MMU (kvm.tdp_mmu=N) has no SPTE-change tracepoint: kprobe shadow_zap on mmu_spte_clear_track_bits()
records the old SPTE (`+0(%si)`), and kvmmmu:kvm_mmu_set_spte (gfn, new SPTE) gives its pfn -> gfn map.

Modules: ftrace.py decodes the lines (one typed decoder for the checker and the timelines), trace_spte.py the SPTEs,
this one applies the rules as the trace streams (R5's state lives in trace_freed_mapped.py), trace_findings.py makes
the findings and the ledger join.  The public names of ftrace, trace_spte and trace_findings stay importable from here.
"""
from __future__ import annotations

import gzip
import io
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from harness.oracles import ftrace as ft
from harness.oracles.ftrace import Free, Install, OldSpte, Pfn, SpteChange  # each handler's typed arguments
from harness.oracles.trace_freed_mapped import FreedWhileMapped

# re-exported: the oracle's public names, wherever they now live
from harness.oracles.ftrace import (HEADER_COL, STRUCT_PAGE, VMEMMAP_DEFAULT, Cut, Event, Lost, _field,  # noqa: F401
                                    _s, decode, dirty_pfn, page_pfn, parse_line, split_line, uncut)
from harness.oracles.trace_findings import (NOISE, fate_text, findings, ledger_gfns, noise_floor,  # noqa: F401
                                            rules_json, timeline_findings, timelines)
from harness.oracles.trace_result import MAX_EXAMPLES, MAX_GFNS, Result, RuleState  # noqa: F401
from harness.oracles.trace_spte import (AD_DISABLED, AD_MASK, LARGE, PFN_MASK, PRESENT, VENDOR_BITS,  # noqa: F401
                                        WRITABLE, Spte, SpteLayout, decode_spte, is_dirty, layout_of)

WINDOW = 4096  # lines: a pending check still unresolved this far on is late (preemption included)
GAP_S = 200e-6  # a task's next event this long after a zap: events may have vanished in between (see docs)

# Raw event names as split_line() gives them (bytes); decode() names events by the str constants in ftrace.
SPTE_CHANGED = ft.SPTE_CHANGED.encode()
SPTE_REQUESTED = ft.SPTE_REQUESTED.encode()
SET_SPTE = ft.SET_SPTE.encode()
UNMAP = ft.UNMAP.encode()
AGE = ft.AGE.encode()
WRITE_FOLIO = ft.WRITE_FOLIO.encode()
PAGE_FREE = ft.PAGE_FREE.encode()
DIRTY = tuple(d.encode() for d in ft.DIRTY)
SHADOW_ZAP = ft.SHADOW_ZAP.encode()
RECLAIM_CLEAN = ft.RECLAIM_CLEAN.encode()

# ---- the streaming checker -----------------------------------------------------------------------------------

RULES = ("R1", "R2", "R3", "R4", "R5")

ZAP_EVENTS = "kvm_tdp_mmu_spte_changed|shadow_zap"
RULE_NEEDS = {
    "R1": (ZAP_EVENTS, "dirty_pfn|dirty_page"),
    "R2": ("kvm_tdp_mmu_spte_changed", "kvm_mmu_spte_requested", "dirty_pfn|dirty_page"),
    "R3": (ZAP_EVENTS, "kvm_unmap_hva_range", "mm_page_free", "mm_vmscan_write_folio",
           "dirty_pfn|dirty_page"),
    "R4": (ZAP_EVENTS, "reclaim_clean", "mm_page_free", "mm_vmscan_write_folio"),
    "R5": ("kvm_tdp_mmu_spte_changed|kvm_mmu_set_spte", "mm_page_free"),
}
RULE_SET = {"zap-time": ("R1", "R3", "R4", "R5"), "create-time": ("R2", "R3", "R4", "R5")}


class Checker:
    """Feed trace_pipe lines (bytes) in order; `finish()` gives the Result.  Memory: O(distinct pfns zapped).
    `layout`: the SPTE bits of the kernel under test (trace_spte; default: v6.12's for `vendor`).
    `installs_traced`: does the capture keep SPTE installs (default: not on zap-time kernels, whose capture filters
    kvm_tdp_mmu_spte_changed to present old SPTEs unless harness.scenario.tracing widened it)."""

    def __init__(self, vendor: str = "amd", ruleset: str = "zap-time", available: Iterable[str] | None = None,
                 window: int = WINDOW, layout: SpteLayout | None = None, installs_traced: bool | None = None):
        self.vendor = vendor
        self.ruleset = ruleset
        self.layout = lay = layout_of(layout, vendor)
        self.dmask, self.hwmask = lay.dirty, lay.host_writable
        self._is_dirty = lay.dirty_test()
        self._bits = (lay.present, lay.large, lay.pfn_mask)
        self.window = window
        self.res = Result(vendor, ruleset)
        self.counts: dict[str, int] = {}
        self.available = set(available) if available is not None else None
        self.rules = {r: RuleState() for r in RULES}
        self._decide_rules()
        self.r1_pend: dict[int, list[list[Any]]] = {}  # pid -> [[pfn, gfn, line, ts, ts of the task's next event], ...]
        self.r2_pend: dict[int, list[list[Any]]] = {}  # pid -> [[pfn, npages, gfn, line, ts], ...]
        self.notifier: dict[int, int] = {}  # pid -> line of its last kvm_unmap_hva_range
        self.zapped: dict[int, list[Any]] = {}  # pfn -> [gfn, line, ts, marked, written]
        self.unmarked: set[int] = set()  # zapped pfns whose dirty mark has not been seen yet
        # create-time kernels mark at install: pfns whose dirty release came after their last install (R3 counts
        # that as the mark; otherwise every migration or teardown free of a mapped page would look like a loss)
        self.released: set[int] = set()
        self.installed: set[int] = set()  # pfns whose install the trace saw
        # R4: pfn -> [gfn, line, ts, written back since the zap, dropped clean by reclaim]
        self.r4_zapped: dict[int, list[Any]] = {}
        self.pfn_gfn: dict[int, int] = {}  # shadow MMU: pfn -> gfn from kvm_mmu_set_spte (no gfn at the zap)
        self.installs_traced = ruleset != "zap-time" if installs_traced is None else installs_traced
        self.uaf = FreedWhileMapped(self.rules["R5"], lay.present, lay.large, lay.pfn_mask, self.installs_traced)
        self.n = 0
        self.next_sweep = window
        self.done = False
        self._on = {ft.SPTE_CHANGED: self._on_spte_changed, ft.DIRTY_PFN: self._on_dirty,
                    ft.DIRTY_PAGE: self._on_dirty, ft.PAGE_FREE: self._on_page_free,
                    ft.WRITE_FOLIO: self._on_write_folio, ft.RECLAIM_CLEAN: self._on_reclaim_clean,
                    ft.SHADOW_ZAP: self._on_shadow_zap, ft.SET_SPTE: self._on_set_spte,
                    ft.SPTE_REQUESTED: self._on_fault, ft.UNMAP: self._on_unmap}

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
                if r == "R5" and "kvm_mmu_set_spte" in self.available and "shadow_zap" not in self.available:
                    miss.append("shadow_zap")  # the shadow MMU's installs without its zaps: every free would look mapped
                if miss:
                    st.ran = False
                    st.why = "not run: missing event(s) " + ", ".join(miss)
        self.r1 = self.rules["R1"].ran
        self.r2 = self.rules["R2"].ran
        self.r3 = self.rules["R3"].ran
        self.r4 = self.rules["R4"].ran
        self.r5 = self.rules["R5"].ran

    def disable(self, rule: str, why: str) -> None:
        """Turn a rule off before feeding (the scenario makes it meaningless); it reports ran: false with why."""
        st = self.rules[rule]
        st.ran, st.why = False, why
        setattr(self, rule.lower(), False)

    def truncate(self) -> None:
        self.res.truncated = True
        self.done = True

    def feed(self, line: bytes) -> None:
        if self.done:
            return
        self.n += 1
        n = self.n
        rec = decode(line)
        if rec is None:
            return
        if rec.cuts:
            for _ in range(rec.cuts):
                self._cut()
        if type(rec) is not Event:
            if type(rec) is Lost:
                self._lost(rec.count)
            return
        ts, _cpu, pid, name, _body, _cuts = rec
        pend = self.r1_pend.get(pid)
        if pend:
            for q in pend:
                if q[4] is None:
                    q[4] = ts
        c = self.counts
        c[name] = c.get(name, 0) + 1
        if n >= self.next_sweep:
            self._sweep(n)
        on = self._on.get(name)
        if on is not None:
            try:
                if on(pid, ts, rec, n) is False:
                    return  # its body did not read: counted, not judged, not in first/last ts
            except ValueError:  # R1's gap check on a timestamp that is not a number: the same
                return
        if self.res.first_ts is None:
            self.res.first_ts = ts
        self.res.last_ts = ts

    # Event handlers: (pid, ts, event, line) -> False when the check needs args the body does not give.  Each reads
    # ev.args only when it needs them, as the checker always did: most frees, writebacks and clean drops are of
    # pfns no check follows.

    def _on_dirty(self, pid: int, ts: str, ev: Event, n: int) -> bool | None:
        a = ev.args
        if not isinstance(a, Pfn):
            return False
        self._dirty(pid, a.pfn)
        return None

    def _on_page_free(self, pid: int, ts: str, ev: Event, n: int) -> bool | None:
        uaf = self.r5 and self.uaf.busy
        if not (self.zapped or self.r4_zapped or uaf):
            return None
        a = ev.args
        if not isinstance(a, Free) or a.order is None:
            return False
        pfn, order = a.pfn, a.order
        if uaf:
            if self.uaf.pending:
                self.uaf.tick(ts)
            self.uaf.freed(pfn, order, ts, ev.cpu, n)
        if not (self.zapped or self.r4_zapped):
            return None
        z, z4 = self.zapped, self.r4_zapped
        for q in range(pfn, pfn + (1 << order)):
            if q in z:
                self.unmarked.discard(q)
                self._freed(q, z.pop(q), ts)
            if q in z4:
                self._r4_freed(q, z4.pop(q), ts)
        return None

    def _on_write_folio(self, pid: int, ts: str, ev: Event, n: int) -> bool | None:
        if not (self.zapped or self.r4_zapped):
            return None
        a = ev.args
        if not isinstance(a, Pfn):
            return False
        ent = self.zapped.get(a.pfn)
        if ent:
            ent[4] = True
        ent = self.r4_zapped.get(a.pfn)
        if ent:
            ent[3] = True
        return None

    def _on_reclaim_clean(self, pid: int, ts: str, ev: Event, n: int) -> bool | None:
        if not self.r4_zapped:
            return None
        a = ev.args
        if not isinstance(a, Pfn):
            return False
        ent = self.r4_zapped.get(a.pfn)
        if ent:
            ent[4] = True
        return None

    def _on_fault(self, pid: int, ts: str, ev: Event, n: int) -> None:
        if pid in self.r2_pend:
            self._r2_close(pid, "its next fault started")

    def _on_unmap(self, pid: int, ts: str, ev: Event, n: int) -> None:
        self.notifier[pid] = n

    def _cut(self) -> None:
        """An event whose text was cut short: unknown content."""
        self.res.cut_events += 1
        self.uaf.doubt("cut")  # the swallowed events may have held any SPTE's zap
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

    def _lost(self, num: int) -> None:
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
        self.uaf.doubt("loss")

    def _on_spte_changed(self, pid: int, ts: str, ev: Event, n: int) -> bool | None:
        a = ev.args
        if not isinstance(a, SpteChange):
            return False
        gfn, level, old, new = a.gfn, a.level, a.old, a.new
        if self.r5:
            if self.uaf.pending:
                self.uaf.tick(ts)
            self.uaf.changed(gfn, level, old, new, ts, ev.cpu, n)
        if pid in self.r1_pend:
            self._r1_close(pid, "the same task changed another SPTE first")
        present, large, pfn_mask = self._bits
        is_dirty_ = self._is_dirty
        old_leaf = old & present and (level == 1 or old & large)
        new_present = new & present
        opfn = (old & pfn_mask) >> 12
        npfn = (new & pfn_mask) >> 12
        if old_leaf and is_dirty_(old) and (not new_present or not is_dirty_(new) or opfn != npfn):
            self._dirty_leaf_changed(pid, ts, n, gfn, opfn, not new_present or opfn != npfn)
        if new_present and (level == 1 or new & large):
            self._remapped(npfn)
            if not (old_leaf and opfn == npfn):
                self.released.discard(npfn)  # a new mapping of this pfn: its release is still to come
                self.installed.add(npfn)
            if self.r2 and new & self.hwmask and not (old_leaf and old & self.hwmask and opfn == npfn):
                self.rules["R2"].checked += 1
                self.r2_pend.setdefault(pid, []).append([npfn, 1 << (9 * (level - 1)), gfn, n, ts])
        return None

    def _dirty_leaf_changed(self, pid: int, ts: str, n: int, gfn: int | None, opfn: int, unmapped: bool) -> None:
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

    def _on_shadow_zap(self, pid: int, ts: str, ev: Event, n: int) -> bool | None:
        """mmu_spte_clear_track_bits(): the shadow MMU clears a leaf SPTE (rmap SPTEs are leaves), then marks."""
        a = ev.args
        if not isinstance(a, OldSpte):
            return False
        old = a.spte
        if self.r5:
            self.uaf.tick(ts)
            self.uaf.shadow_zapped(old, ts, ev.cpu)
        if pid in self.r1_pend:
            self._r1_close(pid, "the same task cleared another SPTE first")
        present, _, pfn_mask = self._bits
        if old & present and self._is_dirty(old):
            opfn = (old & pfn_mask) >> 12
            self._dirty_leaf_changed(pid, ts, n, self.pfn_gfn.get(opfn), opfn, True)
        return None

    def _on_set_spte(self, pid: int, ts: str, ev: Event, n: int) -> bool | None:
        """kvm_mmu_set_spte: an install (either MMU)."""
        a = ev.args
        if not isinstance(a, Install):
            return False
        gfn, new = a.gfn, a.spte
        present, _, pfn_mask = self._bits
        if self.r5:
            self.uaf.tick(ts)
            self.uaf.installed(gfn, set_spte_level(ev.body), new, ts, ev.cpu, n)
        if new & present:
            pfn = (new & pfn_mask) >> 12
            self.pfn_gfn[pfn] = gfn
            self._remapped(pfn)
        return None

    def _r4_freed(self, pfn: int, ent: list[Any], ts: str) -> None:
        if not ent[4]:
            return  # freed some other way (migration, teardown): the candidacy ends, nothing to judge
        st = self.rules["R4"]
        st.checked += 1
        if not ent[3]:
            st.violate({"gfn": ent[0], "pfn": pfn, "zap_line": ent[1], "zap_ts": _s(ent[2]), "free_ts": _s(ts),
                        "what": "dirty SPTE zapped, then reclaim dropped the page as clean (no writeback) and "
                                "freed it: the dirty mark was missing or had no effect"})

    def _dirty(self, pid: int, pfn: int) -> None:
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

    def _freed(self, pfn: int, ent: list[Any], ts: str) -> None:
        st = self.rules["R3"]
        st.checked += 1
        if not ent[3] and not ent[4]:
            st.violate({"gfn": ent[0], "pfn": pfn, "zap_line": ent[1], "zap_ts": _s(ent[2]), "free_ts": _s(ts),
                        "what": "dirty SPTE zapped by the notifier, pfn freed with no writeback and no dirty mark"})

    def _r1_close(self, pid: int, why: str) -> None:
        st = self.rules["R1"]
        for pfn, gfn, line, ts, nts in self.r1_pend.pop(pid):
            if nts is not None and float(nts) - float(ts) > GAP_S:
                st.dropped_by_gap += 1  # the mark may be among events trace_pipe lost silently
                continue
            st.violate({"gfn": gfn, "pfn": pfn, "line": line, "ts": _s(ts), "pid": _s(pid),
                        "what": f"dirty leaf SPTE zapped/cleaned without a dirty mark for its pfn ({why})"})

    def _r2_close(self, pid: int, why: str) -> None:
        st = self.rules["R2"]
        for pfn, _npages, gfn, line, ts in self.r2_pend.pop(pid):
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
        res.counts = dict(sorted(self.counts.items()))
        res.events = sum(self.counts.values())
        self.rules["R1"].unresolved_at_end = sum(len(v) for v in self.r1_pend.values())
        self.rules["R2"].unresolved_at_end = sum(len(v) for v in self.r2_pend.values())
        self.rules["R3"].unresolved_at_end = len(self.zapped)
        self.rules["R4"].unresolved_at_end = sum(1 for e in self.r4_zapped.values() if e[4])
        self.uaf.finish(res.truncated)
        for r, st in self.rules.items():
            if st.ran and not st.why:
                st.why = {"R1": "dirty leaf SPTE changes checked for a following dirty mark",
                          "R2": "host-writable SPTE installs checked for a dirty release before the next fault",
                          "R3": "notifier zaps of dirty SPTEs followed to the free of their pfn",
                          "R4": "zaps of dirty SPTEs followed to reclaim's clean drop and free of their pfn",
                          "R5": "frees of pfns that a traced present leaf SPTE had mapped checked for an SPTE "
                                "still mapping them" + ("" if self.installs_traced else
                                                        " (zap-time capture: installs are filtered out, an SPTE "
                                                        "is known from its first traced change)")}[r]
        res.rules = self.rules
        return res


def set_spte_level(body: bytes) -> int:
    """The level of a kvm_mmu_set_spte event ("gfn G spte S (rwxu) level L"; 1 if it does not read)."""
    i = body.rfind(b"level ")
    tail = body[i + 6:].split(b" ", 1)[0] if i >= 0 else b""
    return int(tail) if tail.isdigit() and 1 <= int(tail) <= 3 else 1


def check_lines(lines: Iterable[bytes], vendor: str = "amd", ruleset: str = "zap-time",
                available: Iterable[str] | None = None, layout: SpteLayout | None = None,
                installs_traced: bool | None = None) -> Result:
    chk = Checker(vendor, ruleset, available, layout=layout, installs_traced=installs_traced)
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


# ---- benchmark ---------------------------------------------------------------------------------------------------

def bench_trace(size_mb: int = 1024, snippet: str | Path | None = None, vendor: str = "amd") -> dict[str, Any]:
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
            "note": "speed only: the default snippet keeps the later lines of the pfns its 300 lines zap, not the zaps "
                    "of the SPTEs that only aging touched there, so R5 counts those pages' frees as violations",
            "target_s_per_gb": 60, "ok": dt * (1024 / max(1e-9, total / (1 << 20))) <= 60}
