"""Trace rule R5 (pure): a pfn freed while a present leaf SPTE still maps it -- the use-after-free every race of the
mmu_notifier class ends in (docs/races.md).  Fed by the streaming checker (trace.py), which owns the line loop.

KVM holds no reference on a page its SPTEs map: the host may free a page only after an mmu_notifier invalidation
zapped every SPTE of it.  A fault that installs an SPTE for a pfn the host has just unmapped (race-7.2-a: the
re-check of `mmu_invalidate_seq` dropped) leaves an SPTE that no notifier will ever name again; reclaim later frees
the page while the guest still writes it.  So: track gfn -> pfn of every present leaf SPTE the trace shows
(installs, changes, zaps; a huge SPTE covers its whole pfn range), and judge each traced free (kmem:mm_page_free,
pfn and order) of a pfn that an SPTE maps at that instant.

  TDP MMU:    kvm_tdp_mmu_spte_changed (gfn, level, old and new SPTE) shows every install, change and zap.
  shadow MMU: kvm_mmu_set_spte (gfn, new SPTE, level) shows installs; the kprobe shadow_zap on
              mmu_spte_clear_track_bits() shows each leaf zap (its old SPTE: pfn, no gfn), so a zap removes every
              mapping of its pfn.
  zap-time captures (<= 6.12) keep only changes of a present SPTE (trace-start.sh's filter): installs are not
  in the trace, so an SPTE is known from its first traced change (aging, write-protect, zap) -- fewer SPTEs are
  followed there, and the "install" a violation names is that first change.

`checked` counts frees of pfns some SPTE had mapped: a pfn still mapped (judged), or one whose SPTE was zapped
and that is now freed (the correct order; counted once per zap), so a clean run checks many and violates none.

What the trace may hide, and what R5 does about it (never a violation from missing evidence):
  - lost events (a `LOST n EVENTS` marker) and cut lines may have held the zap of any SPTE followed so far: every
    mapping known before one is in doubt until an event of its gfn confirms it; a free of a mapping in doubt is
    counted in dropped_by_loss / dropped_by_cut, not judged;
  - order across CPUs: the per-CPU buffers are merged by timestamp.  An install on another CPU less than
    ORDER_S before the free (a free, reuse and install of the same pfn with clocks a little apart), or a zap on
    another CPU less than ORDER_S after it, is counted in dropped_by_order, not judged; a free is therefore judged
    only once the trace has moved ORDER_S past it;
  - a mapping installed before tracing began, a huge page split (its children get no event) or a free filtered
    out by the capture (order >= 4, the trace's own SSH tasks) is not seen: a missed violation, never a false one.

The first half of the race -- an SPTE installed for a gfn whose hva an in-progress invalidation covers -- is not
judged, because the events cannot show it honestly: kvm_unmap_hva_range marks only the start of an invalidation
(no event at invalidate_range_end, so "in progress" is unknown); no event marks the fault's snapshot of
mmu_invalidate_seq (kvm:kvm_page_fault fires before it, so an invalidation that starts and ends between the two
is legitimate and would look identical); and the notifier names host virtual addresses while the SPTE events
name gfns, with no event giving the memslot's hva <-> gfn map.  The end of that race -- the freed page still
mapped -- is what R5 judges.
"""
from __future__ import annotations

from typing import Any

from harness.oracles.trace_result import RuleState

ORDER_S = 100e-6  # cross-CPU timestamp slack: events of two CPUs closer than this may be out of order
LEVEL_PAGES = ((1, 1), (2, 512), (3, 512 * 512))  # SPTE level -> 4 KiB pages it maps

# a mapping: [spte line, spte ts, cpu, confirmed at doubt generation, what the line was, reported, pending free]
# (pending free: (ts as float, cpu, pfn, ts, line) of a free waiting ORDER_S for a late zap, or None)
LINE, TS, CPU, GEN, WHAT, REPORTED, PENDING = range(7)


def _s(v: Any) -> str:
    return v.decode("ascii", "replace") if isinstance(v, bytes) else str(v)


class FreedWhileMapped:
    """R5's state: present leaf SPTEs by (level, base pfn) -> {gfn: mapping}, pfns whose SPTE was zapped and that
    are not yet freed, frees waiting ORDER_S for a late zap.  Memory: O(pfns the traced SPTEs map)."""

    def __init__(self, st: RuleState, present: int, large: int, pfn_mask: int, installs_traced: bool = True):
        self.st = st
        self.present, self.large, self.pfn_mask = present, large, pfn_mask
        self.installs_traced = installs_traced
        self.maps: dict[int, dict[int, dict[int, list[Any]]]] = {lv: {} for lv, _ in LEVEL_PAGES}
        self.gone: dict[int, set[int]] = {lv: set() for lv, _ in LEVEL_PAGES}  # zapped, free not yet seen
        self.gen = 0  # doubt generation: +1 at each lost-events marker or cut line
        self.last_loss = -1  # the generation the last lost-events marker started
        self.pending: list[tuple[float, list[Any]]] = []  # (free ts, mapping) of frees judged ORDER_S later
        self.huge = False  # a huge SPTE was seen: frees must also look up the 2 MiB and 1 GiB ranges (slower)

    @property
    def busy(self) -> bool:
        """Is a free worth decoding? (any mapping or zapped pfn followed)"""
        return bool(self.pending or self.maps[1] or self.gone[1] or self.huge)

    # ---- SPTE events ---------------------------------------------------------------------------------------
    def changed(self, gfn: int, level: int, old: int, new: int, ts: str, cpu: int, n: int) -> None:
        """kvm_tdp_mmu_spte_changed: the old leaf's mapping ends (unless the new one maps the same pfn), the new
        leaf's begins."""
        present, large, mask = self.present, self.large, self.pfn_mask
        old_leaf = old & present and (level == 1 or old & large)
        new_leaf = new & present and (level == 1 or new & large)
        opfn = (old & mask) >> 12
        npfn = (new & mask) >> 12
        if old_leaf and not (new_leaf and npfn == opfn):
            self._unmap(level, opfn, gfn, ts, cpu)
        if new_leaf:
            known = old_leaf and opfn == npfn  # an SPTE mapped before tracing began, or on a zap-time capture
            self._map(level, npfn, gfn, ts, cpu, n, "first traced change" if known else "install")

    def installed(self, gfn: int, level: int, spte: int, ts: str, cpu: int, n: int) -> None:
        """kvm_mmu_set_spte (shadow MMU): a leaf SPTE now maps spte's pfn."""
        if spte & self.present:
            self._map(level, (spte & self.pfn_mask) >> 12, gfn, ts, cpu, n, "install")

    def shadow_zapped(self, old: int, ts: str, cpu: int) -> None:
        """mmu_spte_clear_track_bits (shadow MMU): the leaf SPTE of old's pfn is cleared; its gfn is not in the event,
        so every mapping of that pfn ends (a mapping missed, never one kept that is gone)."""
        if not old & self.present:
            return
        pfn = (old & self.pfn_mask) >> 12
        for lv, _ in LEVEL_PAGES:
            for gfn in list(self.maps[lv].get(pfn, ())):
                self._unmap(lv, pfn, gfn, ts, cpu)

    def _map(self, level: int, pfn: int, gfn: int, ts: str, cpu: int, n: int, what: str) -> None:
        if level > 1:
            self.huge = True
        by_gfn = self.maps[level].setdefault(pfn, {})
        m = by_gfn.get(gfn)
        if m is not None:
            m[GEN] = self.gen  # the same SPTE seen again: known to be there now
            return
        if not self.installs_traced:
            what = "first traced change"
        by_gfn[gfn] = [n, ts, cpu, self.gen, what, False, None]
        self.gone[level].discard(pfn)

    def _unmap(self, level: int, pfn: int, gfn: int, ts: str, cpu: int) -> None:
        by_gfn = self.maps[level].get(pfn)
        m = by_gfn.pop(gfn, None) if by_gfn is not None else None
        if by_gfn is not None and not by_gfn:
            del self.maps[level][pfn]
        if m is not None and m[PENDING] is not None:
            free_ts, free_cpu = m[PENDING][:2]
            if cpu != free_cpu and float(ts) - free_ts < ORDER_S:
                self.st.dropped_by_order += 1  # zapped on another CPU just "after" the free: the order is unknown
                m[PENDING] = None
            else:
                self._judge(gfn, level, pfn, m)  # the zap came after the free: the free was of a mapped pfn
        if m is None or not m[REPORTED]:
            self.gone[level].add(pfn)

    # ---- frees ---------------------------------------------------------------------------------------------
    def freed(self, pfn: int, order: int, ts: str, cpu: int, n: int) -> None:
        """kmem:mm_page_free of 2**order pages from pfn (the hot path: most frees are of order 0, 4 KiB SPTEs)."""
        if not order and not self.huge:
            if pfn in self.maps[1] or pfn in self.gone[1]:
                self._freed_at(1, pfn, pfn, ts, cpu, n)
            return
        for q in range(pfn, pfn + (1 << order)):
            self._freed_at(1, q, q, ts, cpu, n)
            if self.huge:
                for lv, pages in LEVEL_PAGES[1:]:
                    self._freed_at(lv, q & ~(pages - 1), q, ts, cpu, n)

    def _freed_at(self, lv: int, base: int, q: int, ts: str, cpu: int, n: int) -> None:
        by_gfn = self.maps[lv].get(base)
        if by_gfn:
            for gfn, m in by_gfn.items():
                self._mapped_free(gfn, lv, base, m, (float(ts), cpu, q, ts, n))
        elif base in self.gone[lv]:
            self.gone[lv].discard(base)
            self.st.checked += 1  # zapped, then freed: the order the kernel owes

    def _mapped_free(self, gfn: int, lv: int, base: int, m: list[Any], free: tuple[float, int, int, str, int]) -> None:
        st = self.st
        if m[REPORTED] or m[PENDING] is not None:
            return  # the same stale SPTE freed again: one use-after-free, reported once
        st.checked += 1
        if m[GEN] != self.gen:
            if self.last_loss > m[GEN]:
                st.dropped_by_loss += 1
            else:
                st.dropped_by_cut += 1
            return
        if m[CPU] != free[1] and free[0] - float(m[TS]) < ORDER_S:
            st.dropped_by_order += 1  # installed on another CPU just "before" the free: maybe after it
            return
        m[PENDING] = free
        self.pending.append((free[0], [gfn, lv, base, m]))

    def tick(self, ts: str) -> None:
        """The trace reached ts: judge the frees that no zap followed within ORDER_S."""
        if self.pending and float(ts) - self.pending[0][0] >= ORDER_S:
            now = float(ts)
            due = [p for p in self.pending if now - p[0] >= ORDER_S]
            self.pending = [p for p in self.pending if now - p[0] < ORDER_S]
            for _, (gfn, lv, base, m) in due:
                self._judge(gfn, lv, base, m)

    def _judge(self, gfn: int, lv: int, base: int, m: list[Any]) -> None:
        """A free of a pfn this mapping held, with no zap before it: the violation."""
        if m[PENDING] is None:
            return  # resolved already (its zap came within ORDER_S on another CPU)
        _, free_cpu, pfn, free_ts, free_line = m[PENDING]
        m[PENDING] = None
        m[REPORTED] = True
        self.st.violate({"gfn": gfn, "pfn": pfn, "level": lv, "spte_pfn": base, "spte_line": m[LINE],
                         "spte_ts": _s(m[TS]), "spte_cpu": m[CPU], "spte_event": m[WHAT], "free_line": free_line,
                         "free_ts": _s(free_ts), "free_cpu": free_cpu,
                         "what": "pfn freed while a present leaf SPTE still maps it (use-after-free: the guest's "
                                 "writes after this are lost or land in a page L1 reused)"})

    # ---- what the trace lost -------------------------------------------------------------------------------
    def doubt(self, kind: str) -> None:
        """Lost events ("loss") or a cut line ("cut"): any followed mapping's zap may have been among them."""
        self.gen += 1
        if kind == "loss":
            self.last_loss = self.gen

    def finish(self, truncated: bool) -> None:
        """End of the trace: frees still waiting are judged (nothing more can come), unless the trace was cut at
        max_mb (their zap may be in the part not read)."""
        if truncated:
            self.st.unresolved_at_end = len(self.pending)
        else:
            for _, (gfn, lv, base, m) in self.pending:
                self._judge(gfn, lv, base, m)
        self.pending = []
