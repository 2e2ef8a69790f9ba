"""JUnit XML for CI, written with junitparser: one test case per case of a run, one per cell of a matrix.

A finding where a pass was expected (or a miss where a finding was) is a <failure>; an infrastructure verdict
is an <error>, so CI tells "the kernel is broken" from "the harness could not tell".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from junitparser import Error, Failure, Skipped, TestCase, TestSuite

from harness.evidence import Finding
from harness.report.models import RunRecord

INFRA_VERDICTS = ("infra-error", "input-error")  # a run's verdicts that say nothing about the kernel
INFRA_OUTCOMES = ("infra", "not-run", "flaky")  # a matrix cell's (flaky: TCG retries, not a verdict on the kernel)


def _xml(name: str, cases: list[TestCase]) -> str:
    suite = TestSuite(name)
    suite.add_testcases(cases)  # sets tests/failures/errors/skipped/time
    return str(suite.tostring().decode()) + "\n"  # type: ignore[no-untyped-call]  # junitparser is untyped


def _finding_lines(findings: Iterable[Finding]) -> str:
    return "\n".join(f"[{f.oracle}/{f.kind}] {f.title}" for f in findings)


@dataclass
class _Case:
    name: str
    verdict: str
    findings: list[Finding]
    time: float
    expect: str = "pass"


def _cases(run: RunRecord) -> list[_Case]:
    """The run's cases: run.json's "cases" when it lists several, else the run itself as one case."""
    listed = getattr(run, "cases", None)
    if not listed:
        return [_Case(str(run.scenario.get("name", "default")), run.verdict, list(run.findings),
                      run.timings.total_s or 0)]
    return [_Case(str(c["name"]), str(c["verdict"]), [Finding.model_validate(f) for f in c.get("findings") or []],
                  float(c.get("time") or 0), str(c.get("expect", "pass"))) for c in listed]


def run_junit(run: RunRecord) -> str:
    """A run's cases (or the run itself as one case): each passes when its verdict is the expected one."""
    out = []
    for c in _cases(run):
        tc = TestCase(c.name, classname=run.run_id, time=round(c.time, 1))
        if c.verdict != c.expect:
            res = (Error if c.verdict in INFRA_VERDICTS else Failure)(
                f"verdict {c.verdict}" + (f": {c.findings[0].title}" if c.findings else ""))
            res.text = _finding_lines(c.findings)
            tc.result = [res]
        out.append(tc)
    return _xml("kvm-dirty-harness", out)


def matrix_junit(name: str, cells: Iterable[Any]) -> str:
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
