"""JUnit XML for CI, written with junitparser: one test case per case of a run, one per cell of a matrix.

A finding where a pass was expected (or a miss where a finding was) is a <failure>; an infrastructure verdict
is an <error>, so CI tells "the kernel is broken" from "the harness could not tell".
"""
from __future__ import annotations

from typing import Iterable

from junitparser import Error, Failure, Skipped, TestCase, TestSuite

INFRA_VERDICTS = ("infra-error", "input-error")  # a run's verdicts that say nothing about the kernel
INFRA_OUTCOMES = ("infra", "not-run", "flaky")  # a matrix cell's (flaky: TCG retries, not a verdict on the kernel)


def _xml(name: str, cases: list[TestCase]) -> str:
    suite = TestSuite(name)
    suite.add_testcases(cases)  # sets tests/failures/errors/skipped/time
    return suite.tostring().decode() + "\n"


def _finding_lines(findings: Iterable[dict]) -> str:
    return "\n".join(f"[{f.get('oracle')}/{f.get('kind')}] {f.get('title')}" for f in findings)


def run_junit(run: dict) -> str:
    """A run's cases (or the run itself as one case): each passes when its verdict is the expected one."""
    cases = run.get("cases") or [{"name": run.get("scenario", {}).get("name", "default"),
                                  "verdict": run["verdict"], "findings": run.get("findings", []),
                                  "time": run.get("timings", {}).get("total_s", 0)}]
    out = []
    for c in cases:
        tc = TestCase(c["name"], classname=run["run_id"], time=round(float(c.get("time") or 0), 1))
        verdict, findings = c["verdict"], c.get("findings", [])
        if verdict != c.get("expect", "pass"):
            res = (Error if verdict in INFRA_VERDICTS else Failure)(
                f"verdict {verdict}" + (f": {findings[0].get('title')}" if findings else ""))
            res.text = _finding_lines(findings)
            tc.result = [res]
        out.append(tc)
    return _xml("kvm-dirty-harness", out)


def matrix_junit(name: str, cells: Iterable) -> str:
    """A matrix's cells (harness.fleet.matrix.Cell): each passes when its outcome is the one it declares."""
    out = []
    for c in cells:
        tc = TestCase(c.name, classname=name, time=round(float(sum(r.get("total_s") or 0 for r in c.runs)), 1))
        if c.outcome == "skipped":
            tc.result = [Skipped(c.skip or "skipped on this host")]
        elif not c.ok:
            res = (Error if c.outcome in INFRA_OUTCOMES else Failure)(f"expected {c.expect}, got {c.outcome}")
            res.text = "\n".join(f"{r['run_dir']}: {r['verdict']} {r.get('titles')}" for r in c.runs)
            tc.result = [res]
        out.append(tc)
    return _xml(f"matrix-{name}", out)
