"""junit.xml read back with junitparser: the counts CI shows for a run and for a matrix."""
import pytest
from junitparser import Error, Failure, JUnitXml, Skipped

from harness.fleet.matrix import Cell, junit
from harness.report.models import RunRecord
from harness.report.results import atomic_write, junit_xml


def _read(path):
    (suite,) = list(JUnitXml.fromfile(str(path)))
    return suite


def _run(verdict, findings):
    return RunRecord.parse({"run_id": "r1", "verdict": verdict, "findings": findings, "scenario": {"name": "default"},
                            "timings": {"total_s": 12.34}})


@pytest.mark.parametrize("verdict, findings, counts, result", [
    ("pass", [], (1, 0, 0), None),
    ("finding", [{"oracle": "ledger", "layer": "L2", "kind": "stale", "title": "3 lost writes"}], (1, 1, 0), Failure),
    ("infra-error", [{"oracle": "infra", "layer": "L0", "kind": "boot", "title": "L1 did not boot"}], (1, 0, 1), Error),
])
def test_run_junit_counts(tmp_path, verdict, findings, counts, result):
    atomic_write(tmp_path / "junit.xml", junit_xml(_run(verdict, findings)))
    suite = _read(tmp_path / "junit.xml")
    assert (suite.name, suite.tests, suite.failures, suite.errors) == ("kvm-dirty-harness", *counts)
    (case,) = list(suite)
    assert (case.classname, case.name, case.time) == ("r1", "default", 12.3)
    if result is None:
        assert case.is_passed
    else:
        (r,) = case.result
        assert isinstance(r, result) and r.message == f"verdict {verdict}: {findings[0]['title']}"
        assert r.text.endswith(findings[0]["title"])


def test_matrix_junit_counts(tmp_path):
    from types import SimpleNamespace
    run = lambda v: {"verdict": v, "run_dir": f"runs/{v}", "total_s": 5, "titles": ["t"] if v != "pass" else []}
    cells = [Cell("clean", {}, "clean", runs=[run("pass"), run("pass")]),            # as expected
             Cell("clean", {"thp": "always"}, "clean", runs=[run("finding")]),       # a false positive
             Cell("mutant-a", {}, "finding", runs=[run("infra-error")]),             # could not tell
             Cell("hw", {}, "clean", skip="needs accel kvm: L1 runs under TCG here")]  # skipped here
    atomic_write(tmp_path / "junit.xml", junit(SimpleNamespace(name="quick"), cells[:3]))
    suite = _read(tmp_path / "junit.xml")
    assert (suite.name, suite.tests, suite.failures, suite.errors, suite.skipped) == ("matrix-quick", 3, 1, 1, 0)
    cases = {c.name: c for c in suite}
    assert cases["clean[default]"].is_passed and cases["clean[default]"].time == 10.0
    assert cases["clean[thp=always]"].result[0].message == "expected clean, got finding"
    assert cases["mutant-a[default]"].is_error and "runs/infra-error: infra-error" in cases["mutant-a[default]"].result[0].text
    assert {c.classname for c in suite} == {"quick"}
    atomic_write(tmp_path / "junit.xml", junit(SimpleNamespace(name="quick"), cells))
    suite = _read(tmp_path / "junit.xml")
    hw = next(c for c in suite if c.name == "hw[default]").result[0]
    assert (suite.tests, suite.skipped) == (4, 1) and isinstance(hw, Skipped)
    assert hw.message == "needs accel kvm: L1 runs under TCG here"  # the reason, not a pass
