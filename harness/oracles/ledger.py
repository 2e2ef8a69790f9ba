"""Ledger oracle: parse the ledger's machine-readable lines (the Linux L2's ledger or the micro-guest VMM: the
same schema, harness.guest.contract) and judge them (pure)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from harness.evidence import LedgerTotals
from harness.guest.contract import LEDGER_PREFIX

PREFIX = LEDGER_PREFIX
# a bad page's fields a finding keeps (the micro-guest adds the choreography, its step and the page's L1 pfn)
EXAMPLE_KEYS = ("index", "gfn", "expected", "found", "round", "chor", "step", "pfn")
# A bad page's gfn is null when the ledger could not read it from pagemap; ledgers before that printed 2^64-1.
OLD_UNKNOWN_GFN = (1 << 64) - 1


def gfn_text(gfn: object) -> str:
    """A bad page's gfn for people: hex, or 'unknown' (null, or the old ledgers' 2^64-1)."""
    return f"{gfn:#x}" if isinstance(gfn, int) and gfn != OLD_UNKNOWN_GFN else "unknown"


@dataclass
class LedgerResult:
    started: bool = False
    done: bool = False
    pages: int = 0
    rounds: int = 0
    rounds_done: int = 0
    pages_verified: int = 0
    trail_verified: int = 0  # extra in-round checks (ledger.trail_batches)
    stale: int = 0
    zero: int = 0
    corrupt: int = 0
    bad: list[dict[str, Any]] = field(default_factory=list)  # the individually reported bad pages (bounded by the ledger)
    selftest: dict[str, Any] | None = None
    dma_pages: int | None = None  # pages written to the DMA disk (ledger.dma_frac), from the "dma" line
    first_bad_t: float | None = None  # seconds since the ledger started
    last_t: float = 0.0
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def bad_total(self) -> int:
        return self.stale + self.zero + self.corrupt

    def totals(self, **extra: Any) -> LedgerTotals:
        """The totals run.json records (`extra`: the judge's additions, the self-test's and the micro-guest's)."""
        dma = {"dma_pages": self.dma_pages} if self.dma_pages is not None else {}
        return LedgerTotals(pages=self.pages, rounds=self.rounds, rounds_done=self.rounds_done,
                            pages_verified=self.pages_verified, trail_verified=self.trail_verified, stale=self.stale,
                            zero=self.zero, corrupt=self.corrupt, complete=self.done, **dma,
                            first_bad_s=self.first_bad_t, **extra)


def parse_line(line: str) -> dict[str, Any] | None:
    i = line.find(PREFIX)
    if i < 0:
        return None
    try:
        ev = json.loads(line[i + len(PREFIX):].strip())
    except json.JSONDecodeError:
        return None  # a line cut by console interleaving; the totals in "done" still count it
    return ev if isinstance(ev, dict) and "ev" in ev else None


def feed(res: LedgerResult, ev: dict[str, Any]) -> None:
    """Fold one ledger event into the result (used while streaming and after the fact)."""
    res.events.append(ev)
    res.last_t = ev.get("t", res.last_t)
    kind = ev["ev"]
    if kind == "start":
        res.started, res.pages, res.rounds = True, ev["pages"], ev["rounds"]
    elif kind == "bad":
        res.bad.append(ev)
        if res.first_bad_t is None:
            res.first_bad_t = ev.get("t")
        if not res.done:  # running counts until "done" gives the exact totals
            setattr(res, ev["class"], getattr(res, ev["class"]) + 1)
    elif kind == "round":
        res.rounds_done = max(res.rounds_done, ev["round"])
    elif kind == "selftest":
        res.selftest = ev
    elif kind == "dma":
        res.dma_pages = ev.get("pages", 0)
    elif kind == "done":
        res.done = True
        res.pages_verified, res.stale, res.zero, res.corrupt = ev["verified"], ev["stale"], ev["zero"], ev["corrupt"]
        res.trail_verified = ev.get("trail_verified", 0)
        # the start line can be cut by a console message printed in the middle of it; "done" repeats the sizes
        res.pages = res.pages or ev.get("pages", 0)
        res.rounds = res.rounds or ev.get("rounds", 0)


def parse_console(text: str) -> LedgerResult:
    res = LedgerResult()
    for line in text.splitlines():
        ev = parse_line(line)
        if ev:
            feed(res, ev)
    return res


def findings(res: LedgerResult) -> list[dict[str, Any]]:
    """Ledger findings: one per class of bad page, with the first pages as examples (gfn, index, generations)."""
    out = []
    for cls, title in (("stale", "lost write: stale page (older generation, valid CRC)"),
                       ("zero", "lost page: zero-filled (dropped swap entry?)"),
                       ("corrupt", "corrupt page (bad CRC, wrong index or impossible generation)")):
        n = getattr(res, cls)
        if n:
            examples = [{k: b[k] for k in EXAMPLE_KEYS if k in b}
                        for b in res.bad if b["class"] == cls][:20]
            out.append({"oracle": "ledger", "layer": "L2", "kind": cls, "title": f"{n} {title}",
                        "count": n, "first_t": res.first_bad_t, "pages": examples})
    return out


def check_selftest(res: LedgerResult) -> list[str]:
    """With selftest on, the ledger must have caught exactly the pages it tampered with."""
    if not res.selftest:
        return ["self-test requested but the ledger reported no tampering"]
    problems = []
    for cls in ("stale", "zero", "corrupt"):
        want = res.selftest.get(cls, 0)
        if getattr(res, cls) < want:
            problems.append(f"self-test: expected {want} {cls} pages, the verifier found {getattr(res, cls)}")
    return problems
