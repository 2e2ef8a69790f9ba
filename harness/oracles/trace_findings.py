"""Trace oracle verdicts (pure): findings from the checker's Result, and the ledger join -- each ledger-bad gfn's
history in the trace (timelines) and what L1 did with its page after the last zap (fates).  See trace.py."""
from __future__ import annotations

from collections import deque
from typing import Any, Iterable

from harness.oracles import ftrace as ft
from harness.oracles.ftrace import Event, Fault, Free, Install, Lost, OldSpte, Pfn, Range, Record, SpteChange, decode
from harness.oracles.trace_result import Result, RuleState
from harness.oracles.trace_spte import SpteLayout, decode_spte, layout_of

NOISE = 5e-5  # with cut lines in the trace, up to this fraction of checks may fail from silent loss (see docs)


# ---- verdicts --------------------------------------------------------------------------------------------------

def noise_floor(res: Result, st: RuleState) -> int:
    """trace_pipe on 6.12 loses a few events silently next to its cut lines (docs/trace-oracle.md): when the trace
    has cut lines, this many violations are within the transport's noise and make no finding."""
    return int(st.checked * NOISE) if res.cut_events else 0


def rules_json(res: Result, incomplete: list[str] | None = None) -> dict[str, Any]:
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
                  "dropped_by_cpu_order": st.dropped_by_order,
                  "dropped_install_untraced": st.dropped_install_untraced}
    return out


def ledger_gfns(ledger: object) -> list[int]:
    """gfns of the pages the ledger found bad (L2 gfns: the same numbers as the SPTE events' gfn)."""
    bad = getattr(ledger, "bad", None) or []
    out = []
    for b in bad:
        g = b.get("gfn") if isinstance(b, dict) else None
        if isinstance(g, int) and g not in out:
            out.append(g)
    return out


def findings(res: Result, incomplete: list[str] | None = None, ledger_gfns: list[int] | None = None) -> list[dict[str, Any]]:
    lg = set(ledger_gfns or [])
    out = []
    titles = {"R1": "dirty SPTE zapped without marking its page dirty",
              "R2": "writable SPTE installed without marking its page dirty",
              "R3": "page freed after a notifier zap with no writeback and no dirty mark (lost write)",
              "R4": "page dropped clean by reclaim after a dirty SPTE zap, no writeback (lost write)",
              "R5": "page freed while a present SPTE still maps it (use-after-free)"}
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



# ---- the ledger join: timelines and fates ----------------------------------------------------------------------

def timelines(lines: Iterable[bytes], gfns: Iterable[int], vendor: str = "amd", limit: int = 40,
              fates: dict[int, dict[str, Any]] | None = None, layout: SpteLayout | None = None) -> dict[int, list[str]]:
    """For each gfn: its trace history (fault, SPTE changes, notifier, dirty marks, writeback, free of its pfns).
    With `fates`, also fills fates[gfn] with what happened after the gfn's last leaf-SPTE zap: the L1 pfn, whether
    the SPTE was writable+dirty, and whether a dirty mark, a writeback and a free of that pfn followed.  `layout`:
    the kernel's SPTE bits (default: v6.12's for `vendor`)."""
    tl = _Timelines(gfns, layout_of(layout, vendor), limit, {} if fates is None else fates)
    for ln in lines:
        rec = decode(ln)
        if rec is not None:
            tl.feed(rec)
    return {g: list(d) for g, d in tl.want.items()}


class _Timelines:
    def __init__(self, gfns: Iterable[int], layout: SpteLayout, limit: int, fates: dict[int, dict[str, Any]]):
        self.want: dict[int, deque[str]] = {g: deque(maxlen=limit) for g in gfns}
        self.layout = layout
        self.vendor = layout.vendor
        self.fates = fates
        self.pfn_gfn: dict[int, int] = {}
        self.last_unmap: dict[int, str] = {}  # pid -> its last notifier range
        self.on = {ft.SPTE_CHANGED: self._spte_changed, ft.SET_SPTE: self._install, ft.SHADOW_ZAP: self._shadow_zap,
                   ft.RECLAIM_CLEAN: self._reclaim_clean, ft.SPTE_REQUESTED: self._fault, ft.DIRTY_PFN: self._dirty,
                   ft.DIRTY_PAGE: self._dirty, ft.WRITE_FOLIO: self._writeback, ft.PAGE_FREE: self._free,
                   ft.UNMAP: self._unmap, ft.AGE: self._age}

    def feed(self, rec: Record) -> None:
        if type(rec) is Lost:
            for d in self.want.values():
                d.append(rec.text)
        elif type(rec) is Event:
            on = self.on.get(rec.name)
            if on is not None:
                on(rec)

    def _spte_changed(self, ev: Event) -> None:
        a = ev.args
        if not isinstance(a, SpteChange) or a.gfn not in self.want:
            return
        g = a.gfn
        o = decode_spte(a.old, level=a.level, layout=self.layout)
        nw = decode_spte(a.new, level=a.level, layout=self.layout)
        d, t = self.want[g], ev.ts
        if ev.pid in self.last_unmap and not nw.present:
            d.append(f"{t} notifier {self.last_unmap[ev.pid]}")
        what = "zap" if o.present and not nw.present else "map" if nw.present and not o.present else "change"
        d.append(f"{t} pid {ev.pid} spte {what} L{a.level}: {o.short()} -> {nw.short()}")
        if what == "zap" and o.leaf:
            _new_fate(self.fates, g, o.pfn, t, o.writable and o.dirty)
        for s_ in (o, nw):
            if s_.present and s_.leaf:
                self.pfn_gfn[s_.pfn] = g

    def _install(self, ev: Event) -> None:  # the shadow MMU's only gfn <-> pfn evidence
        a = ev.args
        if not isinstance(a, Install):
            return
        g, new = a.gfn, a.spte
        if g in self.want and new & self.layout.present:
            s = decode_spte(new, layout=self.layout)
            self.pfn_gfn[s.pfn] = g
            self.want[g].append(f"{ev.ts} pid {ev.pid} spte map: {s.short()}")

    def _shadow_zap(self, ev: Event) -> None:
        a = ev.args
        if not isinstance(a, OldSpte):
            return
        o = decode_spte(a.spte, layout=self.layout)
        g = self.pfn_gfn.get(o.pfn) if o.present else None
        if g in self.want:
            if ev.pid in self.last_unmap:
                self.want[g].append(f"{ev.ts} notifier {self.last_unmap[ev.pid]}")
            self.want[g].append(f"{ev.ts} pid {ev.pid} shadow spte zap: {o.short()} -> none")
            _new_fate(self.fates, g, o.pfn, ev.ts, o.writable and o.dirty)

    def _fault(self, ev: Event) -> None:
        a = ev.args
        if not isinstance(a, Fault):
            return
        g, pfn = a.gfn, a.pfn
        if g in self.want:
            self.pfn_gfn[pfn] = g
            self.want[g].append(f"{ev.ts} pid {ev.pid} fault gfn {g:#x} -> pfn {pfn:#x}")

    def _pfn_event(self, ev: Event, text: str, fate: str) -> None:
        """An event naming a pfn (clean drop, dirty mark, writeback): on the timeline of the gfn it holds."""
        a = ev.args
        if not isinstance(a, Pfn):
            return
        g = self.pfn_gfn.get(a.pfn)
        if g is not None:
            self.want[g].append(f"{ev.ts} {text.format(pfn=a.pfn, pid=ev.pid, name=ev.name)}")
            _fate(self.fates, g, a.pfn, fate)

    def _reclaim_clean(self, ev: Event) -> None:
        self._pfn_event(ev, "reclaim drops pfn {pfn:#x} as clean", "dropped_clean")

    def _dirty(self, ev: Event) -> None:
        self._pfn_event(ev, "pid {pid} dirty mark pfn {pfn:#x} ({name})", "dirty_mark")

    def _writeback(self, ev: Event) -> None:
        self._pfn_event(ev, "writeback pfn {pfn:#x}", "writeback")

    def _free(self, ev: Event) -> None:
        a = ev.args
        if not isinstance(a, Free):
            return
        pfn = a.pfn
        if pfn in self.pfn_gfn:
            _fate(self.fates, self.pfn_gfn[pfn], pfn, "freed")
            self.want[self.pfn_gfn.pop(pfn)].append(f"{ev.ts} free pfn {pfn:#x}")

    def _unmap(self, ev: Event) -> None:
        # as text ("0x7f..--0x7f.."): a timeline line is for people, never a Python bytes repr (a Range always reads)
        a = ev.args
        if isinstance(a, Range):
            self.last_unmap[ev.pid] = a.text.replace(b" ", b"").decode("ascii", "replace")

    def _age(self, ev: Event) -> None:
        self.last_unmap.pop(ev.pid, None)


def _new_fate(fates: dict[int, dict[str, Any]], g: int, pfn: int, t: str, dirty_spte: bool) -> None:
    """A zap of gfn g's leaf SPTE starts a new cycle, unless an earlier cycle already ended in a lost write's
    shape: that one (the first loss) is what the finding reports, not the last cycle before the run ended."""
    f = fates.get(g)
    if f and f.get("lost"):
        return
    fates[g] = {"pfn": pfn, "t": t, "dirty_spte": dirty_spte, "dirty_mark": False, "writeback": False,
                "freed": False}


def _fate(fates: dict[int, dict[str, Any]], g: int, pfn: int, what: str) -> None:
    f = fates.get(g)
    if f and f["pfn"] == pfn and not f.get("lost"):
        f[what] = True
        if what == "freed" and f["dirty_spte"] and not f["writeback"] and f.get("dropped_clean"):
            f["lost"] = True  # a dirty SPTE's page dropped clean by reclaim and freed, no writeback since the zap


def fate_text(f: dict[str, Any]) -> str:
    """One line: what L1 did with the page after the gfn's last zap (the shape of a lost write, or not)."""
    return (f"L1 pfn {f['pfn']:#x}: {'writable dirty ' if f['dirty_spte'] else ''}SPTE zapped at {f['t']} s, then "
            + ", ".join(("a dirty mark" if f["dirty_mark"] else "no dirty mark",
                         "writeback" if f["writeback"] else "no writeback")
                        + (("dropped clean by reclaim",) if f.get("dropped_clean") else ())
                        + ("freed" if f["freed"] else "not freed",)))


def timeline_findings(tl: dict[int, list[str]], res: Result, incomplete: list[str] | None = None,
                      limit: int = 20, fates: dict[int, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
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


