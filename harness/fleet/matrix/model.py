"""`harness matrix`: kernels × knob variants × seeds, each cell with a declared expectation.

A cell expected to find (`expect: finding`) runs seed after seed until it finds or its budget ends (and stops
each run at the first lost write); a cell expected clean runs its whole budget.  Outputs in
results/matrix-<id>/: matrix.json, summary.txt, junit.xml (one test case per cell), heatmap.png (kernels ×
variants, named by each variant's `label:` or its knobs; green as expected, red mismatch, grey not run), runs/.
Mutation score = mutants caught / mutants that can run here; false positives = finding runs in clean cells.
A group's `requires:` (harness.matrix_requires) says what its cells need of the host (accel kvm, an Intel or AMD
L1, L0's EPT A/D bits); a cell this host cannot give that to is `skipped` with the reason, never run, never a
pass, never in the mutation score.
Each cell has a stable id (harness.matrix_shard: --list, --shard I/N); every run is a `harness run` child, up
to --jobs at once (harness.matrix_jobs); `harness merge` joins shard folders (harness.merge).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.config import load_scenario
from harness.errors import EXIT_FINDING, EXIT_INFRA, EXIT_PASS, InputError
from harness.matrix_requires import Requires, cell_skip_reason, knob_requirements, missing_requirements
from harness.paths import results_root
from harness.report.junit import matrix_junit
from harness.report.results import RunDir, atomic_write, write_json
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
    requires: dict = field(default_factory=dict)  # its group's `requires:` (harness.matrix_requires.Requires)
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


def run_entry(run: dict, run_dir: str, seed: int) -> dict:
    """A run's line in matrix.json, from its run.json."""
    t = run.get("timings", {})
    return {"run_dir": run_dir, "verdict": run["verdict"], "seed": seed,
            "first_finding_s": t.get("first_finding_s"), "total_s": t.get("total_s", 0),
            "titles": [f["title"] for f in run.get("findings", [])][:5],
            "attempts": run.get("attempts", 1), "tdp_mmu": (run.get("l1") or {}).get("tdp_mmu"),
            "evidence": evidence(run.get("findings", []))}


def overrides_of(variant: dict) -> list[str]:
    """A variant's --set overrides (a `label:` is no scenario key: it is left out)."""
    return [f"{k}={json.dumps(v)}" for k, v in split_label(variant)[0].items()]


def evidence(findings: list[dict]) -> list[str]:
    """The lines that convict a kernel: the first lost page (gfn), the trace's view of it (L1 pfn, rules), the
    trace rules violated, any L2 crash, and the patch.  Empty for a clean run."""
    out = []
    real = [f for f in findings if f.get("oracle") != "infra"]
    for f in real:
        if f["oracle"] == "ledger":
            p = (f.get("pages") or [{}])[0]
            out.append(f"ledger: {f['title']}; first gfn {p.get('gfn', 0):#x} (index {p.get('index')}, "
                       f"gen {p.get('found')} instead of {p.get('expected')})")
            break
    tl = next((f for f in real if f.get("kind") == "ledger-timeline" and f.get("pfn") is not None), None)
    if tl:
        out.append(f"trace: {tl['title']}")
    out += [f"trace: {f['title']}" for f in real if f["oracle"] == "trace" and f.get("kind", "").endswith("violation")]
    out += [f"console: {f['layer']} {f['kind']}: {f['title']}" for f in real if f["oracle"] == "console"][:2]
    if real:
        out.append(f"patch: {real[0].get('patch')}")
    return out


def resolve(ref: KernelRef, base: Path) -> dict:
    from harness.kernel.prebuilt import ensure_prebuilt_kernel, load_kernel_dir
    if ref.prebuilt:
        return load_kernel_dir(ensure_prebuilt_kernel())
    if ref.debian:
        from harness.kernel.debian import ensure_debian_kernel
        return load_kernel_dir(ensure_debian_kernel(ref.debian))
    from harness.kernel.build import build_kernel
    return load_kernel_dir(Path(build_kernel((base / ref.build).resolve(), upto=ref.upto)))


def score(m: Matrix, cells: list[Cell]) -> dict:
    mutants = {k for k, r in m.kernels.items() if r.mutant}
    # a mutant whose every finding cell was skipped here is not in the score: it could not be caught here
    runnable = {c.kernel for c in cells if c.kernel in mutants and c.expect == "finding" and not c.skipped}
    caught = {c.kernel for c in cells if c.kernel in runnable and c.expect == "finding" and c.outcome == "finding"}
    # a false positive convicts a correct kernel; a finding on a mutant in a cell declared hidden is a mismatch
    # (shown as such), not a false positive
    fp = sum(1 for c in cells if c.expect == "clean" and c.kernel not in mutants
             for r in c.runs if r["verdict"] == "finding")
    ttc = {}
    for k in sorted(runnable):
        times = sorted(r["first_finding_s"] for c in cells if c.kernel == k for r in c.runs
                       if r.get("first_finding_s") is not None)
        ttc[k] = {"runs_caught": len(times), "median_s": times[len(times) // 2] if times else None,
                  "min_s": times[0] if times else None}
    return {"mutants": sorted(mutants), "runnable_mutants": sorted(runnable), "caught": sorted(caught),
            "retries": retry_rates(cells),
            "mutation_score": (len(caught) / len(runnable)) if runnable else None, "false_positives": fp,
            "time_to_catch": ttc, "cells_ok": sum(c.ok for c in cells), "cells": len(cells),
            "cells_skipped": sum(c.skipped for c in cells)}


def retry_rates(cells: list[Cell]) -> dict:
    """TCG retries per kernel and MMU: retried attempts / runs, so a rising rate is seen, not absorbed."""
    out: dict[str, dict] = {}
    for c in cells:
        for r in c.runs:
            key = f"{c.kernel} tdp_mmu={'N' if r.get('tdp_mmu') is False else 'Y'}"
            e = out.setdefault(key, {"runs": 0, "retried": 0})
            e["runs"] += 1
            e["retried"] += r.get("attempts", 1) - 1
    for e in out.values():
        e["rate"] = round(e["retried"] / e["runs"], 3) if e["runs"] else 0.0
    return out


def summary(m: Matrix, cells: list[Cell], sc: dict) -> str:
    L = [f"matrix {m.name}: {headline(sc)}", ""]
    L.append(f"{'cell':58} {'expect':14} {'outcome':9} runs retried  first finding")
    for c in cells:
        ff = [r.get("first_finding_s") for r in c.runs if r.get("first_finding_s") is not None]
        tail = f"  # SKIP {c.skip}" if c.skipped else "" if c.ok else "  <-- MISMATCH"
        L.append(f"{c.name:58} {c.expect:14} {c.outcome:9} {len(c.runs):4} {c.retries:7}  "
                 f"{(str(ff[0]) + ' s') if ff else '-':>8} {tail}")
    L += ["", "TCG retries (an L2 crash with no lost write, run again) per kernel and MMU:"]
    L += [f"  {k:40} {e['retried']}/{e['runs']} runs ({100 * e['rate']:.0f} %)" for k, e in sc["retries"].items()]
    L += ["", "evidence (first catching run of each cell):"]
    for c in cells:
        r = next((r for r in c.runs if r.get("evidence")), None)
        if r:
            L.append(f"  {c.name} (seed {r['seed']}, {r['run_dir']})")
            L += [f"    {e}" for e in r["evidence"]]
    L += ["", "time to catch (from run start):"]
    for k, t in sc["time_to_catch"].items():
        L.append(f"  {k:20} median {t['median_s']} s, min {t['min_s']} s over {t['runs_caught']} catching runs")
    return "\n".join(L) + "\n"


def headline(sc: dict) -> str:
    """'20/20 cells as expected, 12 skipped on this host; mutation score …': skipped cells are neither."""
    ms = sc["mutation_score"]
    ms_text = "n/a" if ms is None else f"{100 * ms:.0f} %"
    skipped = sc.get("cells_skipped", 0)
    return (f"{sc['cells_ok']}/{sc['cells'] - skipped} cells as expected"
            + (f", {skipped} skipped on this host (requires:)" if skipped else "")
            + f"; mutation score {ms_text} ({len(sc['caught'])}/{len(sc['runnable_mutants'])}); "
              f"false positives {sc['false_positives']}")


def junit(m: Matrix, cells: list[Cell]) -> str:
    return matrix_junit(m.name, cells)


GREEN, RED, GREY = "green", "red", "grey"  # as expected / mismatch / not run (skipped, or no run recorded)
HEAT_RGB = {None: "#ffffff", GREEN: "#8fd18f", RED: "#e06666", GREY: "#cccccc"}


def _slot_colour(slot: list[Cell]) -> str:
    """green when every cell that ran is as expected (a hidden mutant that stayed clean, a mutant caught, a
    correct kernel clean), red when one is not, grey when none ran (skipped here, or not run)."""
    ran = [c for c in slot if c.outcome not in ("skipped", "not-run")]
    if not ran:
        return GREY
    return GREEN if all(c.ok for c in ran) else RED


def _slot_text(slot: list[Cell]) -> str:
    counts = Counter(c.outcome for c in slot)  # in first-seen order
    outcomes = [f"{o} ×{n}" if len(slot) > 1 else o for o, n in counts.items()]
    expects = "/".join(dict.fromkeys(c.expect for c in slot))
    return f"{', '.join(outcomes)}\nexpect {expects}"


def heatmap_grid(cells: list[Cell]) -> dict:
    """The heat map as data: rows (kernels), cols (variant labels), colours[row][col] (GREEN/RED/GREY, None
    where the kernel has no such cell) and texts (outcome and expectation).  One slot per kernel × variant;
    the seeds of a one-cell-per-seed group share their slot (its text counts the outcomes)."""
    kernels = list(dict.fromkeys(c.kernel for c in cells))
    keys = list(dict.fromkeys(json.dumps(c.variant, sort_keys=True) for c in cells))
    slots: dict[tuple[int, int], list[Cell]] = {}
    names: dict[int, list[str]] = {}
    for c in cells:
        j = keys.index(json.dumps(c.variant, sort_keys=True))
        slots.setdefault((kernels.index(c.kernel), j), []).append(c)
        names.setdefault(j, [])
        if c.shown_label not in names[j]:
            names[j].append(c.shown_label)
    named = [" / ".join(names[j]) for j in range(len(keys))]
    # two variants under one label: told apart by their knobs
    cols = [f"{n} ({variant_label(json.loads(keys[j]))})" if named.count(n) > 1 else n for j, n in enumerate(named)]
    colours = [[None] * len(keys) for _ in kernels]
    texts = [[""] * len(keys) for _ in kernels]
    for (i, j), slot in slots.items():
        colours[i][j], texts[i][j] = _slot_colour(slot), _slot_text(slot)
    return {"rows": kernels, "cols": cols, "colours": colours, "texts": texts}


def heatmap(cells: list[Cell], out: Path) -> dict:
    """heatmap.png: kernels × variants, each slot coloured by whether its outcome matched its expectation;
    returns heatmap_grid()."""
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb
    g = heatmap_grid(cells)
    rows, cols = g["rows"], g["cols"]
    fig, ax = plt.subplots(figsize=(2.5 + 1.5 * len(cols), 1.2 + 0.62 * len(rows)))
    ax.imshow([[to_rgb(HEAT_RGB[c]) for c in row] for row in g["colours"]], aspect="auto")
    ax.set_xticks(range(len(cols)), ["\n".join(textwrap.wrap(c, 18)) for c in cols], rotation=0, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xticks([x + 0.5 for x in range(len(cols) - 1)], minor=True)
    ax.set_yticks([y + 0.5 for y in range(len(rows) - 1)], minor=True)
    ax.grid(which="minor", color="white", linewidth=2)
    ax.tick_params(which="minor", length=0)
    for i, row in enumerate(g["texts"]):
        for j, text in enumerate(row):
            ax.text(j, i, text + (" !" if g["colours"][i][j] == RED else ""), ha="center", va="center",
                    fontsize=6.5)
    ax.set_title("green: as expected · red: mismatch · grey: skipped / not run", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return g


def save(mdir: Path, m: Matrix, cells: list[Cell], meta: dict | None = None) -> dict:
    """matrix.json; `meta` is the folder's identity (matrix id, harness commit, shard, cell ids, the matrix)."""
    sc = score(m, cells)
    write_json(mdir / "matrix.json", {"name": m.name, **(meta or {}), "score": sc,
                                      "cells": [{"id": c.id} | c.__dict__ |
                                                {"outcome": c.outcome, "ok": c.ok, "retries": c.retries,
                                                 "skipped": c.skipped}
                                                for c in cells]})
    return sc


def write_outputs(mdir: Path, m: Matrix, cells: list[Cell], meta: dict | None = None, note: str = "") -> str:
    """Everything a finished matrix folder holds besides runs/ (a run, a shard and a merge write the same)."""
    sc = save(mdir, m, cells, meta)
    text = note + summary(m, cells, sc)
    atomic_write(mdir / "summary.txt", text)
    atomic_write(mdir / "junit.xml", junit(m, cells))
    if cells:  # an empty shard (more shards than cells) has nothing to draw
        heatmap(cells, mdir / "heatmap.png")
        from harness.report.ktap import write_matrix_ktap
        from harness.report.plots import matrix_plots
        mj = json.loads((mdir / "matrix.json").read_text())
        write_matrix_ktap(mj, mdir / "results.ktap")
        matrix_plots(mj, mdir)
    return text


def cli_matrix(args) -> int:
    from harness import matrix_jobs as mj
    from harness import matrix_shard as sh
    from harness.scenario.run import check_free_space
    from harness.vm.qemu import install_signal_handlers
    mpath = Path(args.matrix_yaml)
    m = load_matrix(mpath)
    scen_path = mpath.parent / m.scenario
    base = load_scenario(scen_path)  # validated before anything runs
    cells = expand(m)
    # every variant must be a valid scenario: fail now, not an hour in
    scenarios = {c.id: load_scenario(scen_path, overrides_of(c.variant)) for c in cells}
    check_requirements(m, cells, scenarios)
    index, count = sh.parse_shard(getattr(args, "shard", None))
    mine = sh.shard_cells(cells, index, count)
    listing = getattr(args, "list", False)
    root = Path(args.results) if args.results else results_root()
    if not listing:
        check_free_space(root, base)
    caps = None
    if any(c.requires for c in mine):  # only then does the host matter (no probe for a matrix without requires:)
        from harness.vm.host import host_caps
        # --list boots nothing: static checks and a probe remembered from this host boot
        caps = host_caps(probe_kernel=None if listing else _probe_kernel)
        print(f"matrix: this host: {caps.describe()}", file=sys.stderr)
    runnable = mark_skips(mine, caps) if caps is not None else list(mine)
    if caps is not None:
        print(f"matrix: {len(mine) - len(runnable)} of {len(mine)} cells skipped on this host (their requires:)",
              file=sys.stderr)
    if listing:
        print(sh.list_text(mine), end="")
        return EXIT_PASS
    jobs = mj.job_count(getattr(args, "jobs", None), [scenarios[c.id] for c in runnable])
    install_signal_handlers()  # SIGTERM during a kernel build stops the matrix too
    meta = sh.identity(mpath, scen_path, m, index, count, mine)
    if caps is not None:
        meta["host"] = caps.to_json()
    # the same lifecycle as a run's folder: .incomplete until every cell has run
    shard_tag = f"-shard{index}of{count}" if count > 1 else ""
    rd = RunDir(root, f"matrix-{time.strftime('%Y%m%d-%H%M%S')}-{m.name}{shard_tag}")
    final, mdir = rd.final, rd.path
    (mdir / "runs").mkdir(parents=True)
    save(mdir, m, mine, meta)
    kernels: dict[str, dict] = {}
    for c in runnable:  # once per kernel key, in the parent: the children get the built folder
        if c.kernel not in kernels:
            kernels[c.kernel] = resolve(m.kernels[c.kernel], mpath.parent)
    ctx = mj.Context(m, scen_path.resolve(), kernels, mdir, final, jobs,
                     {c.id: scenarios[c.id].timeouts.total_s for c in runnable})
    # after every cell: a killed nightly still leaves what it measured
    if mj.run_cells(mine, ctx, on_cell_done=lambda c: save(mdir, m, mine, meta)):
        # Ctrl-C / SIGTERM stops the whole matrix; the folder stays .incomplete with what it measured
        save(mdir, m, mine, meta)
        print(f"matrix interrupted; partial results: {mdir}")
        return EXIT_INFRA
    note = f"shard {index}/{count} of matrix {meta['matrix_id']}\n" if count > 1 else ""
    text = write_outputs(mdir, m, mine, meta, note)
    rd.finish()
    print(text)
    print(f"matrix results: {final}")
    return EXIT_PASS if all(c.settled for c in mine) else EXIT_FINDING


def _probe_kernel() -> Path:
    """The kernel the host's KVM boot probe boots (as a run's own probe does): Debian's prebuilt, which every run
    needs anyway as L2's kernel."""
    from harness.kernel.prebuilt import ensure_prebuilt_kernel
    return ensure_prebuilt_kernel() / "bzImage"
