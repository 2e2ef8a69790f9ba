"""The results folder: atomic writes, run.json, summary.txt, junit.xml, reproduce.sh.

A run works in results/<run-id>.incomplete/ and is renamed to results/<run-id>/ once run.json is written, so a
folder without the suffix is always complete; an interrupted run keeps the suffix (and says so in run.json).
"""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from harness.errors import EXIT_FINDING, EXIT_INFRA, EXIT_INPUT, EXIT_PASS
from harness.evidence import Finding
from harness.oracles.judge import VACUOUS_BY_DESIGN
from harness.report.finding_head import head_lines
from harness.report.junit import run_junit
from harness.report.ktap import write_run_ktap
from harness.report.models import RunRecord
from harness.report.plots import run_plots
from harness.util import atomic_write, write_json  # noqa: F401 (callers import them from here too)

SCHEMA = 1
VERDICT_EXIT = {"pass": EXIT_PASS, "finding": EXIT_FINDING, "infra-error": EXIT_INFRA, "input-error": EXIT_INPUT}


class RunDir:
    def __init__(self, root: Path, run_id: str):
        self.root = Path(root)
        self.run_id = run_id
        self.final = self.root / run_id
        self.path = self.root / f"{run_id}.incomplete"
        self.path.mkdir(parents=True)

    def case(self, name: str) -> Path:
        d = self.path / "cases" / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def finish(self) -> Path:
        os.replace(self.path, self.final)
        self.path = self.final
        return self.final


OLD_BYTES_REPR = re.compile(r"notifier b'([^']*)'")
TIMELINES_IN_FULL = 3  # lost pages whose trace history summary.txt shows; findings.json has every one recorded


def summary_text(run: RunRecord, run_dir: str | Path | None = None) -> str:
    """summary.txt: the head (harness.report.finding_head: verdict, what was lost, rule, change, next commands),
    then the details.  `run_dir`: the results folder (default results/<run id>)."""
    # the folder's name once complete (a matrix cell's run lives in the matrix's .incomplete folder until the end)
    rd = re.sub(r"\.incomplete(?=/|$)", "", str(run_dir or f"results/{run.run_id}"))
    L = head_lines(run, rd) + [""]
    k = run.kernel
    L.append(f"run {run.run_id}: {run.verdict.upper()}")
    base = k.get("base") or ""
    if isinstance(base, dict):
        base = " ".join(str(base[f]) for f in ("id", "base_commit", "commit") if base.get(f))
    L.append(f"kernel   {k.get('release')} ({k.get('source')}) {base}")
    for p in k.get("patches", []):
        L.append(f"  patch  {p.get('sha256', '')[:12]} {p.get('subject')}")
    a = run.accel
    L.append(f"accel    {a.get('mode')} — {a.get('reason')}")
    l1 = run.l1
    L.append(f"L1       {l1.kvm_module} nested={l1.nested} tdp={l1.tdp} tdp_mmu={l1.tdp_mmu} vendor={l1.cpu_vendor}")
    L.append("vmstat   " + " ".join(f"{k}={v}" for k, v in l1.vmstat_delta.items()))
    lg = run.ledger
    L.append(f"ledger   pages={lg.pages} rounds={lg.rounds_done}/{lg.rounds} verified={lg.pages_verified} "
             f"stale={lg.stale} zero={lg.zero} corrupt={lg.corrupt}")
    L += _trace_lines(run.trace, str(run.scenario.get("guest") or "linux"))
    t = run.timings.model_dump(exclude_unset=True)
    L.append("timings  " + " ".join(f"{k}={v:.1f}" for k, v in t.items() if isinstance(v, (int, float))))
    L += [f"infra    {ev}" for ev in run.infra_events]
    L.append(f"findings {len(run.findings)}")
    L += _finding_lines(run.findings, rd)
    return "\n".join(L) + "\n"


def _trace_lines(tr: dict[str, Any], guest: str = "linux") -> list[str]:
    """The trace's totals and each rule: how many events it checked, or why it did not run (or ran vacuously)."""
    if not tr.get("rules"):
        return []
    by_design = VACUOUS_BY_DESIGN.get(guest, ())
    out = [f"trace    events={tr.get('events')} lost={tr.get('lost_events')} ruleset={tr.get('ruleset')}"]
    for name, r in tr["rules"].items():
        empty = r.get("ran") and not r.get("events_checked")
        state = (f"checked 0 events: none exist on the {guest} guest of a correct kernel (docs/microguest.md)"
                 if empty and name in by_design else
                 f"VACUOUS: checked 0 events ({r.get('why', '')})" if empty
                 else f"checked {r.get('events_checked')} events, {r.get('violations')} violations"
                 if r.get("ran") else f"NOT RUN ({r.get('why', '')})")
        out.append(f"  {name}     {state}")
    return out


def _finding_lines(findings: list[Finding], rd: str) -> list[str]:
    """Every finding with its pages, trace timeline and excerpt; the first TIMELINES_IN_FULL lost pages'
    timelines only (findings.json has them all)."""
    out = []
    timelines = [f for f in findings if f.kind == "ledger-timeline"]
    for f in findings:
        if f.kind == "ledger-timeline" and timelines.index(f) >= TIMELINES_IN_FULL:
            continue
        out.append(f"  [{f.oracle}/{f.layer}/{f.kind}] {f.title}")
        for p in (getattr(f, "pages", None) or [])[:5]:
            out.append(f"      page index={p.get('index')} gfn={p.get('gfn'):#x} expected gen={p.get('expected')} "
                       f"found gen={p.get('found')}" if isinstance(p.get("gfn"), int) else f"      {p}")
        for line in getattr(f, "timeline", None) or []:  # runs recorded before the fix: "notifier b'0x..'", as text
            out.append("      " + OLD_BYTES_REPR.sub(r"notifier \1", line))
        for line in (f.excerpt or "").splitlines()[:8]:
            out.append(f"      | {line}")
    if len(timelines) > TIMELINES_IN_FULL:
        out.append(f"  ... and {len(timelines) - TIMELINES_IN_FULL} more lost pages' trace timelines: "
                   f"{rd}/cases/*/findings.json (kind ledger-timeline)")
    return out


def junit_xml(run: RunRecord) -> str:
    """One test case per case folder/run: it passes when the verdict is pass."""
    return run_junit(run)


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """run.json read through its model (harness.report.models.RunRecord): a file that is not a run is an input
    error naming it; the content as the file has it."""
    return load_run_record(run_dir).to_json()


def load_run_record(run_dir: str | Path) -> RunRecord:
    return RunRecord.load(Path(run_dir) / "run.json")


def write_run_json(path: Path, run: dict[str, Any]) -> None:
    """run.json, written through its model (a run that does not fit it fails here, not in a later reader)."""
    RunRecord.parse(run, str(path)).write(path)


def cli_report(run_dir: str) -> int:
    """Re-render summary.txt, junit.xml, results.ktap and plots/*.png from the folder's files alone."""
    run = load_run_record(run_dir)
    atomic_write(Path(run_dir) / "summary.txt", summary_text(run, run_dir))
    atomic_write(Path(run_dir) / "junit.xml", junit_xml(run))
    ktap = write_run_ktap(run, Path(run_dir) / "results.ktap")
    pngs = run_plots(run_dir)
    sys.stdout.write(summary_text(run, run_dir))
    sys.stdout.write("".join(f"wrote    {p}\n" for p in [ktap, *pngs]))
    return VERDICT_EXIT.get(run.verdict, EXIT_INFRA)


def now_id(name: str, seed: int) -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{name}-s{seed}"
