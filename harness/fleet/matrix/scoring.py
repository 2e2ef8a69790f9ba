"""Scoring a matrix: a run's line in matrix.json (with the evidence that convicts a kernel), the mutation score,
false positives, time to catch and TCG retry rates.  Pure functions of the cells."""
from __future__ import annotations

from harness.fleet.matrix.model import Cell, Matrix
from harness.oracles.ledger import gfn_text


def run_entry(run: dict, run_dir: str, seed: int | None) -> dict:
    """A run's line in matrix.json, from its run.json."""
    t = run.get("timings", {})
    return {"run_dir": run_dir, "verdict": run["verdict"], "seed": seed,
            "first_finding_s": t.get("first_finding_s"), "total_s": t.get("total_s", 0),
            "titles": [f["title"] for f in run.get("findings", [])][:5],
            "attempts": run.get("attempts", 1), "tdp_mmu": (run.get("l1") or {}).get("tdp_mmu"),
            "evidence": evidence(run.get("findings", []))}


def evidence(findings: list[dict]) -> list[str]:
    """The lines that convict a kernel: the first lost page (gfn), the trace's view of it (L1 pfn, rules), the
    trace rules violated, any L2 crash, and the patch.  Empty for a clean run."""
    out = []
    real = [f for f in findings if f.get("oracle") != "infra"]
    for f in real:
        if f["oracle"] == "ledger":
            p = (f.get("pages") or [{}])[0]
            out.append(f"ledger: {f['title']}; first gfn {gfn_text(p.get('gfn'))} (index {p.get('index')}, "
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


def headline(sc: dict) -> str:
    """'20/20 cells as expected, 12 skipped on this host; mutation score …': skipped cells are neither."""
    ms = sc["mutation_score"]
    ms_text = "n/a" if ms is None else f"{100 * ms:.0f} %"
    skipped = sc.get("cells_skipped", 0)
    return (f"{sc['cells_ok']}/{sc['cells'] - skipped} cells as expected"
            + (f", {skipped} skipped on this host (requires:)" if skipped else "")
            + f"; mutation score {ms_text} ({len(sc['caught'])}/{len(sc['runnable_mutants'])}); "
              f"false positives {sc['false_positives']}")
