"""A matrix file's model: kernels, groups of kernels × knob variants with a declared expectation, and the cell
(one kernel × variant (× seed)) with its runs and outcome.

Pure data and loading: no runs, no outputs (expansion.py makes the cells, scoring.py scores them)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.errors import InputError
from harness.fleet.matrix.requires import Requires
from harness.yamlload import load_model

Expect = Literal["clean", "finding"]


class KernelRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    prebuilt: bool = False
    debian: str | None = None  # a Debian prebuilt by version ("7.2": the newest of that series; "7.2.13-1")
    build: str | None = None  # KERNEL.yaml, relative to the matrix file
    upto: int | None = None
    mutant: bool = False  # counts toward the mutation score


class Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kernels: list[str]
    variants: list[dict] = [{}]  # --set overrides; an optional `label:` names the variant (heat map) only
    expect: Expect
    why: str = ""
    requires: Requires = Field(default_factory=Requires)  # what the host must offer (else: skipped, with why)
    # one cell per seed (instead of seeds as repeats of one cell): a time-to-catch distribution per mutant
    cell_per_seed: bool = False
    budget_runs: int | None = Field(None, ge=1)  # overrides the matrix's budget for this group's cells

    @field_validator("variants")
    @classmethod
    def _labels_are_text(cls, variants: list[dict]) -> list[dict]:
        for v in variants:
            if "label" in v and (not isinstance(v["label"], str) or not v["label"].strip()):
                raise ValueError(f"a variant's label must be a non-empty string (got {v['label']!r})")
        return variants


class Matrix(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    scenario: str = "default.yaml"
    seeds: list[int] = Field(default_factory=lambda: [1])
    budget_runs: int = Field(2, ge=1)  # per cell
    kernels: dict[str, KernelRef]
    groups: list[Group]


@dataclass


class Cell:
    kernel: str
    variant: dict
    expect: str
    why: str = ""
    runs: list[dict] = field(default_factory=list)
    seed: int | None = None  # set: this cell runs only this seed
    budget: int | None = None
    label: str | None = None  # the variant's `label:` (a name for people: heat map; never an override)
    requires: dict = field(default_factory=dict)  # its group's `requires:` (harness.fleet.matrix.requires.Requires)
    skip: str | None = None  # set when this host cannot meet `requires`: why (the cell is then never run)

    @property
    def id(self) -> str:
        """Stable across runs and machines: a hash of what the cell runs (kernel, variant, seed), not its place
        (nor its label: naming a variant does not make it another cell)."""
        key = json.dumps({"kernel": self.kernel, "variant": self.variant, "seed": self.seed}, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:10]

    @property
    def name(self) -> str:
        knobs = ",".join(f"{k}={v}" for k, v in self.variant.items()) or "default"
        return f"{self.kernel}[{knobs}]" + (f"@seed{self.seed}" if self.seed is not None else "")

    @property
    def shown_label(self) -> str:
        """The variant's short name: its `label:`, else one derived from its knobs."""
        return self.label or variant_label(self.variant)

    @property
    def retries(self) -> int:
        """Attempts retried under TCG (an L2 crash with no evidence of a lost write): counted, never hidden."""
        return sum(r.get("attempts", 1) - 1 for r in self.runs)

    @property
    def outcome(self) -> str:
        if self.skip and not self.runs:
            return "skipped"
        verdicts = [r["verdict"] for r in self.runs]
        if "finding" in verdicts:
            return "finding"
        if self.retries > 1:
            return "flaky"  # retried more than once: something to look at, not a pass
        if verdicts and all(v == "pass" for v in verdicts):
            return "clean"
        return "infra" if verdicts else "not-run"

    @property
    def ok(self) -> bool:
        """Ran, and as expected.  A skipped cell is not ok (it proved nothing) and not a mismatch: `settled`."""
        return self.outcome == self.expect

    @property
    def skipped(self) -> bool:
        return self.outcome == "skipped"

    @property
    def settled(self) -> bool:
        """Nothing to fix here: as expected, or skipped because the host cannot run it."""
        return self.ok or self.skipped


def load_matrix(path: Path) -> Matrix:
    m = load_model(path, Matrix, what="matrix")
    for g in m.groups:
        for k in g.kernels:
            if k not in m.kernels:
                raise InputError(f"{path}: group names kernel '{k}' that is not under kernels:")
    return m


def split_label(variant: dict) -> tuple[dict, str | None]:
    """A matrix variant → (its overrides, its label): `label:` names the variant and never reaches the scenario."""
    v = dict(variant)
    label = v.pop("label", None)
    return v, (label.strip() if isinstance(label, str) and label.strip() else None)


def variant_label(variant: dict) -> str:
    """A short name for a variant without a label: its knobs as key=value (nested keys dotted), or 'default'."""
    def flat(d: dict, pre: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            if isinstance(v, dict) and v:
                out += flat(v, f"{pre}{k}.")
            else:
                out.append(f"{pre}{k}={json.dumps(v) if not isinstance(v, str) else v}")
        return out
    return ", ".join(flat(split_label(variant)[0])) or "default"
