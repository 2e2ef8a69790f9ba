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
    kvm_module: str | None = None
    nested: bool | None = None
    taint_before: int | None = None
    taint_after: int | None = None
    vmstat_delta: dict[str, int] = Field(default_factory=dict)
    memory_events: dict[str, str] = Field(default_factory=dict)
    swap_peak_frac: float = 0.0


class L2Facts(BaseModel):
    booted: bool = False  # L2's init announced itself
    qemu_rc: int | None = None  # L2's QEMU exit status in L1 (None: not seen end)
    ended_at_s: float | None = None  # when L0 saw L2's QEMU gone or hung
    stopped_early: bool = False  # the harness stopped it at the first finding (matrix cells)
    result_channel: bool = False  # l2-result.log (the lossless virtio-serial stream) was collected
    qemu_log_tail: str = ""


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
    # descriptive facts for run.json (accelerator, images, L1 set-up, timings): the judge does not read them
    info: dict[str, Any] = Field(default_factory=dict)

    def save(self, case_dir: Path) -> None:
        atomic_write(Path(case_dir) / "evidence.json", self.model_dump_json(indent=1) + "\n")

    @classmethod
    def load(cls, case_dir: Path) -> "CaseEvidence":
        return cls.model_validate(json.loads((Path(case_dir) / "evidence.json").read_text()))


class Judgement(BaseModel):
    verdict: Verdict
    findings: list[Finding]
    first_finding_s: float | None = None
    ledger: dict[str, Any] = Field(default_factory=dict)  # the ledger's totals, as run.json records them
    # set when the case should be run again before anything is concluded (TCG nested-paging emulation crash)
    retry: str | None = None
    infra_events: list[str] = Field(default_factory=list)
    judge_version: str
