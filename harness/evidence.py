"""The typed hand-over between the stages: what a case recorded (`CaseEvidence`, written by the scenario stage)
and what the judge made of it (`Finding`, `Judgement`).

The evidence holds facts only — files recorded, numbers read from L1, what the monitor saw and when — never a
verdict, so a stored run can be judged again from its folder alone (`harness report RUN --rejudge`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.util import atomic_write

EVIDENCE_SCHEMA = 1
Oracle = Literal["ledger", "trace", "console", "infra"]
Verdict = Literal["pass", "finding", "infra-error"]  # a case's; a run adds "input-error" (bad input, nothing ran)


class Finding(BaseModel):
    """One finding.  Oracles attach their own evidence (pages, timeline, rule counts…) as extra fields."""
    model_config = ConfigDict(extra="allow")
    oracle: Oracle
    layer: str
    kind: str
    title: str
    source: str | None = None
    excerpt: str | None = None
    patch: str | None = None

    @property
    def real(self) -> bool:
        """Evidence against the kernel (as opposed to a failure of the harness or the set-up)."""
        return self.oracle != "infra"

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def infra(layer: str, kind: str, title: str, **extra: Any) -> Finding:
    return Finding(oracle="infra", layer=layer, kind=kind, title=title, **extra)


class MonitorEvent(BaseModel):
    """Something the L0 monitor saw while L2 ran: it ended following L2 for this reason."""
    kind: Literal["boot-timeout", "stall", "wall-clock", "l1-unresponsive", "l1-qemu-stopped", "l1-qemu-gone"]
    at_s: float  # seconds since the run started
    detail: str = ""


class L1Facts(BaseModel):
    """What L1 was and what happened to it: the scenario stage fills it (harness.scenario.case), the judge reads
    the taint, vmstat and memory.events, and run.json's "l1" is this model (harness.report.models.RunRecord).
    None: not measured (L1 never came up far enough, or a run recorded before the field existed)."""
    model_config = ConfigDict(extra="allow")  # a field a later harness adds passes through an older one
    qemu_cmd: list[str] | None = None  # L1's QEMU command line, as started
    cmdline: str | None = None  # L1's /proc/cmdline
    # setup-host.sh's facts
    cpu_vendor: str | None = None
    kvm_module: str | None = None
    nested: bool | None = None
    tdp: bool | None = None
    tdp_mmu: bool | None = None
    clocksource: str | None = None
    thp: str | None = None
    mglru: str | None = None
    zswap: str | None = None
    swap: str | None = None
    kvm_params: str | None = None
    taint_before: int | None = None
    delays: str | None = None
    delay_counts: dict[str, list[int]] | None = None  # per delay probe ("seen", "fired"): hits and delays
    # the end of the run (the order is run.json's, as the runs recorded so far have it)
    vmstat_delta: dict[str, int] = Field(default_factory=dict)
    taint_after: int | None = None
    memory_events: dict[str, str] = Field(default_factory=dict)
    swaps: str | None = None  # /proc/swaps
    swap_peak_frac: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """run.json's "l1": the facts that were measured (set), in the model's order."""
        return self.model_dump(mode="json", exclude_unset=True)


class L2Facts(BaseModel):
    """How L1's guest (the Linux L2, or the micro-guest VMM) ran and ended: the scenario stage fills it, the judge
    reads it, and run.json's "l2" is this model (harness.report.models.RunRecord)."""
    model_config = ConfigDict(extra="allow")  # a field a later harness adds passes through an older one
    # the order is run.json's, as the runs recorded so far have it
    qemu_rc: int | None = None  # L2's QEMU exit status in L1 (None: not seen end)
    reclaim_writes: list[dict[str, Any]] = Field(default_factory=list)  # the monitor's memory.reclaim writes
    stopped_early: bool = False  # the harness stopped it at the first finding (matrix cells)
    injected: str | None = None  # the fault the scenario injected into L1 while L2 ran (scenario `inject`), if it did
    result_channel: bool = False  # l2-result.log (the lossless virtio-serial stream) was collected
    booted: bool = False  # L2's init announced itself
    ended_at_s: float | None = None  # when L0 saw L2's QEMU gone or hung
    qemu_log_tail: str = ""

    def to_json(self) -> dict[str, Any]:
        """run.json's "l2": every fact (a default is a fact here: not booted, no end seen)."""
        return self.model_dump(mode="json")


class CaseEvidence(BaseModel):
    """Everything a case recorded that the judge needs, and nothing it decided."""
    schema_version: int = EVIDENCE_SCHEMA
    case: str = "default"
    # the guest L1's KVM ran (scenario `guest`): "linux" (L2 + ledger) or "micro" (the micro-guest VMM; its
    # facts go in `l2` too: it is L1's guest, its "QEMU rc" the VMM's exit status)
    guest: Literal["linux", "micro"] = "linux"
    accel_mode: str | None = None
    # what the scenario asked for that changes how the facts read
    l2_fault: str = "none"  # an injected L2 panic is meant to crash: never retried
    selftest_pages: int = 0
    min_pswpout: int = 0
    min_swap_ra_hit: int = 0
    dma_frac: float = 0.0  # ledger.dma_frac: the run asked L1's QEMU to read guest pages (virtio DMA exposure)
    patch_under_test: str | None = None  # the top patch of the series: every real finding names it
    files: dict[str, str] = Field(default_factory=dict)  # role -> path relative to the case folder
    l1: L1Facts = Field(default_factory=L1Facts)
    l2: L2Facts = Field(default_factory=L2Facts)
    monitor: list[MonitorEvent] = Field(default_factory=list)
    first_bad_s: float | None = None  # when L0 first saw a bad page, seconds since run start
    trace: dict[str, Any] = Field(default_factory=dict)  # the trace section of run.json (stats, rules)
    trace_findings: list[Finding] = Field(default_factory=list)  # the streaming trace oracle's output
    # facts that could not be collected, and the error that ended the case early (each an infra finding)
    unavailable: list[str] = Field(default_factory=list)
    error: Finding | None = None
    # descriptive facts for run.json (accelerator, images, timings, the kernel's identity): the judge does not read
    # them (the facts both read are `l1` and `l2`, typed, one copy)
    info: dict[str, Any] = Field(default_factory=dict)

    def save(self, case_dir: Path) -> None:
        atomic_write(Path(case_dir) / "evidence.json", self.model_dump_json(indent=1) + "\n")

    @classmethod
    def load(cls, case_dir: Path) -> "CaseEvidence":
        return cls.model_validate(json.loads((Path(case_dir) / "evidence.json").read_text()))


class MicroTotals(BaseModel):
    """The micro-guest VMM's share of the ledger totals (harness.oracles.micro)."""
    model_config = ConfigDict(extra="allow")
    counters: dict[str, Any] | None = None  # the VMM's last "counters" line
    steps: int = 0
    dirty_log_missing: int = 0
    race: dict[str, Any] | None = None  # the concurrent choreography's exposure (harness.oracles.micro.race_totals)


class LedgerTotals(BaseModel):
    """The ledger's totals, as the judge made them (`Judgement.ledger`) and run.json records them ("ledger").
    None: not in the record (a run.json older than the field)."""
    model_config = ConfigDict(extra="allow")
    pages: int | None = None
    rounds: int | None = None
    rounds_done: int | None = None
    pages_verified: int | None = None
    trail_verified: int | None = None  # extra in-round checks (ledger.trail_batches)
    stale: int | None = None
    zero: int | None = None
    corrupt: int | None = None
    complete: bool | None = None  # the ledger printed its "done" line
    dma_pages: int | None = None  # pages written to the DMA disk (ledger.dma_frac); only when that ran
    first_bad_s: float | None = None  # seconds since the ledger started
    selftest: dict[str, Any] | None = None  # what the self-test tampered with (selftest_pages > 0)
    micro: MicroTotals | None = None  # the micro-guest's counters (guest "micro")

    @property
    def bad(self) -> int:
        return (self.stale or 0) + (self.zero or 0) + (self.corrupt or 0)

    def to_json(self) -> dict[str, Any]:
        """The keys it was built or read with, nothing added."""
        return self.model_dump(mode="json", exclude_unset=True)


class Judgement(BaseModel):
    verdict: Verdict
    findings: list[Finding]
    first_finding_s: float | None = None
    ledger: LedgerTotals = Field(default_factory=LedgerTotals)  # as run.json records them
    # set when the case should be run again before anything is concluded (TCG nested-paging emulation crash)
    retry: str | None = None
    infra_events: list[str] = Field(default_factory=list)
    judge_version: str
