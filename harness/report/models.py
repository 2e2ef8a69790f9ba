"""The result files as typed models: run.json (RunRecord), matrix.json (MatrixRecord) and bisect.json
(BisectRecord), each with its schema version (stored under the key "schema", as the files always had it).

Written and read through these models (`write`, `load`): a file of a newer schema, or one that lost a required
field, is an input error naming the file, not a KeyError three functions later.  Fields the harness adds over
time (a new timing, a new section) pass through untouched (extra="allow"), so a model is a floor, not a cage;
`to_json` gives back exactly the keys the file had (or was built with), in order.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.evidence import Finding, L1Facts, L2Facts, LedgerTotals
from harness.resultfile import ResultFile

RUN_SCHEMA = 1
MATRIX_SCHEMA = 1
BISECT_SCHEMA = 1

RunVerdict = Literal["pass", "finding", "infra-error", "input-error"]


# ---- run.json -------------------------------------------------------------------------------------------------

class RunTimings(BaseModel):
    model_config = ConfigDict(extra="allow")
    first_finding_s: float | None = None
    total_s: float | None = None


class RunRecord(ResultFile):
    """run.json: the inputs, the evidence's descriptive facts and the judge's verdict."""
    SCHEMA: ClassVar[int] = RUN_SCHEMA
    run_id: str
    verdict: RunVerdict
    findings: list[Finding] = Field(default_factory=list)
    timings: RunTimings = Field(default_factory=RunTimings)
    kernel: dict[str, Any] = Field(default_factory=dict)
    scenario: dict[str, Any] = Field(default_factory=dict)
    scenario_ref: str | None = None  # the scenario as the user named it (a file, or "default")
    overrides: list[str] = Field(default_factory=list)  # its --set overrides, in order
    accel: dict[str, Any] = Field(default_factory=dict)  # harness.vm.accel's choice and why
    ledger: LedgerTotals = Field(default_factory=LedgerTotals)  # the judge's (harness.evidence: one model)
    trace: dict[str, Any] = Field(default_factory=dict)
    l1: L1Facts = Field(default_factory=L1Facts)  # the scenario stage's facts about L1 (harness.evidence)
    l2: L2Facts = Field(default_factory=L2Facts)  # how L1's guest ran and ended (harness.evidence)
    infra_events: list[str] = Field(default_factory=list)
    attempts: int = 1
    interrupted: bool = False
    tree: dict[str, Any] | None = None     # where the kernel came from (a developer's tree), when it did
    change: dict[str, Any] | None = None   # what was under test (commit, commits since the base, the diff)


# ---- matrix.json ----------------------------------------------------------------------------------------------

class MatrixRun(BaseModel):
    """One run's line in matrix.json (harness.fleet.matrix.scoring.run_entry)."""
    model_config = ConfigDict(extra="allow")
    run_dir: str | None = None
    verdict: str
    seed: int | None = None
    first_finding_s: float | None = None
    total_s: float | None = 0
    titles: list[str] = Field(default_factory=list)
    attempts: int = 1
    tdp_mmu: bool | None = None
    evidence: list[str] = Field(default_factory=list)


class MatrixCell(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    kernel: str
    variant: dict[str, Any] = Field(default_factory=dict)
    expect: str
    runs: list[MatrixRun] = Field(default_factory=list)
    outcome: str | None = None
    ok: bool | None = None
    label: str | None = None
    skip: str | None = None


class MatrixRecord(ResultFile):
    """matrix.json: the folder's identity (matrix id, harness commit, shard, cell ids, the matrix), the score and
    every cell with its runs."""
    SCHEMA: ClassVar[int] = MATRIX_SCHEMA
    name: str
    score: dict[str, Any] = Field(default_factory=dict)
    cells: list[MatrixCell] = Field(default_factory=list)

    def mutant_kernels(self) -> list[str]:
        """The mutants the score counts, else (an older file) every kernel that has a finding cell."""
        listed = self.score.get("mutants")
        if isinstance(listed, list) and listed:
            return [str(k) for k in listed]
        return sorted({c.kernel for c in self.cells if c.expect == "finding"})


# ---- bisect.json ----------------------------------------------------------------------------------------------

class BisectStep(BaseModel):
    model_config = ConfigDict(extra="allow")
    upto: int
    patch: dict[str, Any] | None = None
    runs: list[dict[str, Any]] = Field(default_factory=list)
    verdict: str


class BisectRecord(ResultFile):
    """bisect.json: the series, every step with its runs, the outcome and its confidence."""
    SCHEMA: ClassVar[int] = BISECT_SCHEMA
    kind: str = "bisect"
    status: str
    steps: list[BisectStep] = Field(default_factory=list)
    series: list[dict[str, Any] | None] = Field(default_factory=list)
    first_bad: dict[str, Any] | None = None
    reproduction_rate: float | None = None
    confidence: dict[str, Any] = Field(default_factory=dict)
