"""What the streaming trace checker (harness.oracles.trace.Checker) hands to the verdicts
(harness.oracles.trace_findings): per-rule state and the run's counts.  Plain data, below both."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_EXAMPLES = 50
MAX_GFNS = 1 << 18  # a 1 GiB ledger's worth of 4 KiB pages


@dataclass
class RuleState:
    ran: bool = True
    why: str = ""
    checked: int = 0
    violations: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    unresolved_at_end: int = 0
    dropped_by_loss: int = 0
    dropped_by_cut: int = 0
    dropped_by_gap: int = 0
    dropped_by_order: int = 0  # R5: install/zap on another CPU too close to the free to know their order
    dropped_install_untraced: int = 0  # create-time R3: the pfn was mapped before tracing began
    gfns: set[int] = field(default_factory=set)  # every gfn with a violation (bounded): the ledger join needs them all

    def violate(self, ex: dict[str, Any]) -> None:
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
    counts: dict[str, int] = field(default_factory=dict)
    rules: dict[str, RuleState] = field(default_factory=dict)
    first_ts: str | None = None
    last_ts: str | None = None
