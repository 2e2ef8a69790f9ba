"""The micro-guest's own oracle lines (pure): the `@@MICRO` choreography log (steps, the dirty-log check, the
VMM's counters) parsed from microvm's stdout, the dirty-log finding, and the sensitivity gate's facts (did the
choreography's host steps really happen: pages paged out and back in).  The `@@LEDGER` lines of the same output
are the ledger oracle's (harness/oracles/ledger.py)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from harness.guest.contract import MICRO_EVENTS, MICRO_PREFIX, MICRO_TRACE_MARK

_TRACE_TS = re.compile(rb"\s(\d+\.\d+):\s")  # an ftrace line's timestamp


@dataclass
class MicroLog:
    steps: list[dict[str, Any]] = field(default_factory=list)
    dirtylog: list[dict[str, Any]] = field(default_factory=list)
    races: list[dict[str, Any]] = field(default_factory=list)  # one per batch of a concurrent choreography
    counters: dict[str, Any] | None = None  # the last "counters" line
    malformed: int = 0  # marked lines that were not valid JSON with the schema's fields

    @property
    def dirty_missing(self) -> int:
        return sum(int(d.get("missing", 0) or 0) for d in self.dirtylog)

    def events(self, trace_t0: float | None = None) -> list[dict[str, Any]]:
        """Every @@MICRO event in order of time (micro-steps.jsonl); with `trace_t0` (the VMM's start on the
        trace's clock) each also gets "trace_ts", its time on the trace's clock."""
        evs = self.steps + self.dirtylog + self.races + ([self.counters] if self.counters else [])
        evs = sorted(evs, key=lambda e: e.get("t", 0))
        if trace_t0 is None:
            return evs
        return [e | {"trace_ts": round(trace_t0 + float(e.get("t", 0)), 6)} for e in evs]


def parse_line(line: str) -> dict[str, Any] | None:
    """One @@MICRO event, or None (no marker, cut JSON, unknown event, a required field missing)."""
    i = line.find(MICRO_PREFIX)
    if i < 0:
        return None
    try:
        ev = json.loads(line[i + len(MICRO_PREFIX):].strip())
    except json.JSONDecodeError:
        return None
    if not isinstance(ev, dict) or ev.get("ev") not in MICRO_EVENTS:
        return None
    return ev if all(k in ev for k in MICRO_EVENTS[ev["ev"]]) else None


def parse_output(text: str) -> MicroLog:
    log = MicroLog()
    for line in text.splitlines():
        if MICRO_PREFIX not in line:
            continue
        ev = parse_line(line)
        if ev is None:
            log.malformed += 1
        elif ev["ev"] == "step":
            log.steps.append(ev)
        elif ev["ev"] == "dirtylog":
            log.dirtylog.append(ev)
        elif ev["ev"] == "race":
            log.races.append(ev)
        else:
            log.counters = ev
    return log


def trace_start_ts(lines: Iterable[bytes]) -> float | None:
    """The trace's timestamp of the VMM's start: the trace_marker line start-micro.sh writes just before it."""
    for line in lines:
        if MICRO_TRACE_MARK in line:
            m = _TRACE_TS.search(line)
            return float(m.group(1)) if m else None
    return None


def dirtylog_findings(log: MicroLog) -> list[dict[str, Any]]:
    """A page the guest wrote that KVM_GET_DIRTY_LOG did not report: live migration would lose that write."""
    bad = [d for d in log.dirtylog if int(d.get("missing", 0) or 0) > 0]
    if not bad:
        return []
    n = log.dirty_missing
    examples = [{k: d[k] for k in ("chor", "round", "written", "logged", "missing", "first_missing_gfn", "t")
                 if k in d} for d in bad[:20]]
    return [{"oracle": "ledger", "layer": "L2", "kind": "dirty-log-missing",
             "title": f"{n} written pages missing from KVM's dirty log (a migration would lose them)",
             "count": n, "first_t": bad[0].get("t"), "harvests": examples}]


def host_steps_weak(log: MicroLog, pswpout: int, min_pswpout: int) -> list[str]:
    """Why the choreography's host steps did not (all) happen: [] when pages went out to swap and came back in,
    counted by the VMM itself (pagemap) and by L1 (vmstat pswpout)."""
    c = log.counters
    if c is None:
        return ["the VMM printed no counters line"]
    weak = [f"{k}={c.get(k, 0)}" for k in ("pages_out", "pages_in") if int(c.get(k, 0) or 0) <= 0]
    if pswpout < min_pswpout:
        weak.append(f"L1 pswpout={pswpout} < {min_pswpout}")
    return weak + race_steps_weak(log.races)


def race_steps_weak(races: list[dict[str, Any]]) -> list[str]:
    """Why a concurrent choreography staged no race: [] when, in some batch, the vCPU and the pager ran on two
    different L1 CPUs, a page-out overlapped a guest sweep, and the vCPU faulted pages back in while it ran.
    With one L1 CPU (pager_cpu == vcpu_cpu) the pager runs only while the vCPU is off the CPU: no race."""
    if not races:
        return []
    staged = [r for r in races if r.get("vcpu_cpu") != r.get("pager_cpu") and int(r.get("vcpu_cpu", -1)) >= 0
              and int(r.get("overlapped", 0) or 0) > 0 and int(r.get("faults", 0) or 0) > 0]
    if staged:
        return []
    r = races[0]
    return [f"race-pageout staged no race in {len(races)} batch(es) (vcpu_cpu={r.get('vcpu_cpu')}, "
            f"pager_cpu={r.get('pager_cpu')}, overlapped={r.get('overlapped')}, faults={r.get('faults')})"]


def race_totals(races: list[dict[str, Any]]) -> dict[str, Any]:
    """The concurrent choreography's exposure, summed over its batches (run.json's ledger.micro.race)."""
    keys = ("sweeps", "pageouts", "overlapped", "reclaims", "faults", "exits", "irq_exits")
    out: dict[str, Any] = {k: sum(int(r.get(k, 0) or 0) for r in races) for k in keys}
    out["batches"] = len(races)
    out["cpus"] = sorted({(r.get("vcpu_cpu"), r.get("pager_cpu")) for r in races})
    return out
