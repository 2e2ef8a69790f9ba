"""The result files as typed models: run.json (RunRecord), matrix.json (MatrixRecord) and bisect.json
(BisectRecord), each with its schema version (stored under the key "schema", as the files always had it).

Written and read through these models (`write`, `load`): a file of a newer schema, or one that lost a required
field, is an input error naming the file, not a KeyError three functions later.  Fields the harness adds over
time (a new timing, a new section) pass through untouched (extra="allow"), so a model is a floor, not a cage;
`to_json` gives back exactly the keys the file had (or was built with), in order.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from harness.errors import InputError
from harness.evidence import Finding
from harness.util import atomic_write

RUN_SCHEMA = 1
MATRIX_SCHEMA = 1
BISECT_SCHEMA = 1

RunVerdict = Literal["pass", "finding", "infra-error", "input-error"]
M = TypeVar("M", bound="ResultFile")


class ResultFile(BaseModel):
    """A JSON result file: its schema version, loading with one clear error, writing atomically."""
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    SCHEMA: ClassVar[int] = 1  # the newest schema this harness reads (a subclass's own)
    schema_version: int = Field(1, alias="schema")
    _key_order: list[str] = PrivateAttr(default_factory=list)  # the file's own key order, kept on writing

    @classmethod
    def load(cls: type[M], path: Path) -> M:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{path}: cannot read ({e})") from None
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls: type[M], data: object, where: str = "result") -> M:
        if isinstance(data, dict) and isinstance(data.get("schema"), int) and data["schema"] > cls.SCHEMA:
            raise InputError(f"{where}: schema {data['schema']} is newer than this harness reads ({cls.SCHEMA})")
        try:
            record = cls.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            at = ".".join(str(x) for x in first["loc"])
            raise InputError(f"{where}: not a valid {cls.__name__} ({at}: {first['msg']})") from None
        record._key_order = list(data) if isinstance(data, dict) else []
        return record

    def to_json(self) -> dict[str, Any]:
        """The file's content: the keys it was read or built with (no defaults added), "schema" first."""
        d = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        order = ["schema"] + [k for k in self._key_order if k in d and k != "schema"]
        return {"schema": self.schema_version} | {k: d[k] for k in order[1:]} | {k: v for k, v in d.items()
                                                                                   if k not in order}

    def write(self, path: Path) -> None:
        atomic_write(Path(path), json.dumps(self.to_json(), indent=2, sort_keys=False, default=str) + "\n")


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
    ledger: dict[str, Any] = Field(default_factory=dict)
    trace: dict[str, Any] = Field(default_factory=dict)
    l1: dict[str, Any] = Field(default_factory=dict)
    l2: dict[str, Any] = Field(default_factory=dict)
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
