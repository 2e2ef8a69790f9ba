"""A matrix → its cells, each cell's overrides and seeds, which cells this host can run, and the kernel each
cell's key resolves to."""
from __future__ import annotations

import json
from pathlib import Path

from harness.errors import InputError
from harness.fleet.matrix.model import Cell, KernelRef, Matrix, split_label
from harness.fleet.matrix.requires import (
    cell_skip_reason,
    knob_requirements,
    missing_requirements,
)


def expand(m: Matrix) -> list[Cell]:
    cells = [Cell(k, v, g.expect, g.why, seed=sd, budget=g.budget_runs, label=label,
                  requires=g.requires.model_dump(exclude_none=True))
             for g in m.groups for k in g.kernels for v, label in map(split_label, g.variants)
             for sd in (m.seeds if g.cell_per_seed else [None])]
    seen: dict[str, Cell] = {}
    for c in cells:  # the id names the cell in shards and merges: two cells with one id would be one cell
        if c.id in seen:
            raise InputError(f"matrix {m.name}: cell {c.name} appears twice (same kernel, variant and seed)")
        seen[c.id] = c
    return cells


def check_requirements(m: Matrix, cells: list[Cell], scenarios: dict) -> None:
    """Each cell's knobs need no more of the host than its group's `requires:` states (`scenarios`: cell id →
    its Scenario): else an input error now, not an infrastructure verdict at L1's set-up an hour in."""
    for c in cells:
        need = knob_requirements(scenarios[c.id].kvm_intel)
        missing = missing_requirements(c.requires, need)
        if missing:
            raise InputError(f"matrix {m.name}: cell {c.name} sets kvm_intel {scenarios[c.id].kvm_intel.params()}, "
                             f"which needs {need.text()} of the host; its group's requires: does not say "
                             f"{', '.join(missing)}")


def mark_skips(cells: list[Cell], caps) -> list[Cell]:
    """Set each cell's `skip` from its requirements and the host's capabilities (harness.vm.host.HostCaps);
    returns the cells to run."""
    for c in cells:
        c.skip = cell_skip_reason(c.requires, caps) if c.requires else None
    return [c for c in cells if not c.skip]


def seeds_of(m: Matrix, c: Cell) -> list[int]:
    """The seeds a cell may run, in order (a finding cell stops at its first finding)."""
    if c.seed is not None:
        return [c.seed]
    budget = c.budget or m.budget_runs
    return (m.seeds * budget)[:budget]


def cell_overrides(c: Cell) -> list[str]:
    """A cell's --set overrides besides the seed (a finding cell stops each run at the first lost write)."""
    return overrides_of(c.variant) + (["stop_on_first_finding=true"] if c.expect == "finding" else [])


def overrides_of(variant: dict) -> list[str]:
    """A variant's --set overrides (a `label:` is no scenario key: it is left out)."""
    return [f"{k}={json.dumps(v)}" for k, v in split_label(variant)[0].items()]


def resolve(ref: KernelRef, base: Path) -> dict:
    from harness.kernel.prebuilt import ensure_prebuilt_kernel, load_kernel_dir
    if ref.prebuilt:
        return load_kernel_dir(ensure_prebuilt_kernel())
    if ref.debian:
        from harness.kernel.debian import ensure_debian_kernel
        return load_kernel_dir(ensure_debian_kernel(ref.debian))
    if not ref.build:
        raise InputError("a matrix kernel needs one of prebuilt: true, debian: VERSION or build: KERNEL.yaml")
    from harness.kernel.build import build_kernel
    return load_kernel_dir(Path(build_kernel((base / ref.build).resolve(), upto=ref.upto)))
