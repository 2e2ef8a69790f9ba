"""results.ktap, checked by the kernel's own KTAP parser (tools/testing/kunit/kunit.py parse from linux-source-6.12).

Only tools/testing/kunit/ is extracted from Debian's tarball, once, into the harness cache (kunit-tool/)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.paths import cache_dir
from harness.report.models import RunRecord
from harness.report.ktap import bisect_ktap, clean, matrix_ktap, run_ktap, write_matrix_ktap, write_run_ktap

TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")
MEMBER = "linux-source-6.12/tools/testing/kunit"
PASS_RUN = Path(__file__).resolve().parents[1] / "fixtures/timeline/pass-6.12/run.json"


@pytest.fixture(scope="module")
def kunit_py() -> Path:
    dest = cache_dir() / "kunit-tool"
    tool = dest / MEMBER / "kunit.py"
    if tool.exists():
        return tool
    if not TARBALL.exists():
        pytest.skip(f"{TARBALL} not installed (scripts/install-deps.sh --build installs linux-source-6.12)")
    tmp = dest.with_name(f"kunit-tool.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    subprocess.run(["tar", "-xJf", str(TARBALL), "-C", str(tmp), "--wildcards", f"{MEMBER}/*"], check=True,
                   timeout=300)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)  # whole or not at all: a killed extraction leaves no half tool behind
    return tool


def parse(kunit_py: Path, path: Path) -> tuple[int, str]:
    p = subprocess.run([sys.executable, str(kunit_py), "parse", str(path.resolve())], capture_output=True,
                       text=True, timeout=60)
    out = re.sub(r"^\[\d\d:\d\d:\d\d\] ", "", p.stdout, flags=re.M)  # the parser stamps every line
    assert "[ERROR]" not in out, out  # KTAP the parser had to complain about
    return p.returncode, out


def pass_run() -> dict:
    return json.loads(PASS_RUN.read_text())


LOST = {"oracle": "ledger", "layer": "L2", "kind": "stale", "title": "2 pages read back stale (lost writes) # 1",
        "pages": [{"index": 17, "gfn": 0x12345, "expected": 4, "found": 3}], "patch": "mutant-a"}
R1 = {"oracle": "trace", "layer": "L1", "kind": "R1-violation",
      "title": "trace rule R1: 136449 x dirty SPTE zapped without marking its page dirty"}
PANIC = {"oracle": "console", "layer": "L2", "kind": "panic",
         "title": "Kernel panic - not syncing: VFS: Unable to mount root fs"}  # kunit_parser's stop phrase
FROZEN = {"oracle": "infra", "layer": "L0", "kind": "error",
          "title": "L1's QEMU is stopped (SIGSTOP or a debugger): L1 cannot run"}


def test_a_pass_run_is_one_passing_test(kunit_py, tmp_path):
    path = write_run_ktap(pass_run(), tmp_path / "results.ktap")
    text = path.read_text()
    assert text.startswith("KTAP version 1\n1..1\n") and text.rstrip().endswith("\nok 1 default")
    rc, out = parse(kunit_py, path)
    assert rc == 0 and "[PASSED] default" in out
    assert "Testing complete. Ran 1 tests: passed: 1" in out


def test_a_finding_run_fails_with_its_findings_as_diagnostics(kunit_py, tmp_path):
    run = pass_run() | {"verdict": "finding", "findings": [LOST, R1, PANIC]}
    text = run_ktap(RunRecord.parse(run))
    lines = text.splitlines()
    assert lines[-1] == "not ok 1 default"
    diags = [ln for ln in lines if ln.startswith("# ")]
    assert any("[ledger/L2/stale] 2 pages read back stale (lost writes) %23 1" in d for d in diags)
    assert any("gfn 0x12345" in d for d in diags) and any("R1" in d for d in diags)
    assert all("#" not in ln[2:] for ln in diags)  # "#" only as the diagnostic prefix
    path = tmp_path / "finding.ktap"
    path.write_text(text)
    rc, out = parse(kunit_py, path)
    assert rc == 1 and "[FAILED] default" in out
    assert "VFS - Unable to mount root fs" in out  # the stop phrase was defused, the parser read on
    assert "Testing complete. Ran 1 tests: failed: 1" in out


def test_an_infra_run_fails_with_the_error_directive_not_skip(kunit_py, tmp_path):
    run = pass_run() | {"verdict": "infra-error", "findings": [FROZEN]}
    text = run_ktap(RunRecord.parse(run))
    assert "# infra-error: [infra/L0/error] L1's QEMU is stopped" in text
    assert text.rstrip().splitlines()[-1].startswith("not ok 1 default # ERROR infra-error: L1's QEMU")
    assert "SKIP" not in text
    path = tmp_path / "infra.ktap"
    path.write_text(text)
    rc, out = parse(kunit_py, path)
    assert rc == 1 and "[FAILED] default" in out and "Testing complete. Ran 1 tests: failed: 1" in out


def test_a_case_that_expects_a_finding_passes_on_one():
    run = pass_run() | {"cases": [{"name": "mutant", "verdict": "finding", "expect": "finding", "findings": [LOST]},
                                  {"name": "clean", "verdict": "pass"}]}
    lines = run_ktap(RunRecord.parse(run)).splitlines()
    assert lines[1] == "1..2" and "ok 1 mutant" in lines and "ok 2 clean" in lines


def matrix() -> dict:
    """matrix.json as harness.fleet.matrix.save() writes it (Cell.__dict__ + outcome/ok/retries)."""
    def cell(kernel, variant, expect, outcome, ok, runs):
        return {"kernel": kernel, "variant": variant, "expect": expect, "why": "", "runs": runs, "seed": None,
                "budget": None, "outcome": outcome, "ok": ok, "retries": 0}
    run = {"run_dir": "/r/matrix-x/runs/20261201-1-clean-s1", "verdict": "pass", "seed": 1, "first_finding_s": None,
           "total_s": 100.0, "titles": [], "attempts": 1, "tdp_mmu": True, "evidence": []}
    return {"name": "nightly", "score": {"mutants": ["mutant-a"], "runnable_mutants": ["mutant-a"],
                                         "caught": ["mutant-a"], "mutation_score": 1.0, "false_positives": 0,
                                         "cells_ok": 2, "cells": 3},
            "cells": [cell("clean", {}, "clean", "clean", True, [run]),
                      cell("mutant-a", {"swap": "zram"}, "finding", "clean", False, [run]),
                      cell("mutant-a", {"tdp_mmu": False}, "finding", "skipped", False, [])
                      | {"skip": "needs an Intel L1 (kvm_intel, EPT): L1 runs under TCG here", "skipped": True}]}


def test_a_matrix_is_one_parent_test_with_a_subtest_per_cell(kunit_py, tmp_path):
    m = matrix()
    path = write_matrix_ktap(m, tmp_path / "results.ktap")
    lines = path.read_text().splitlines()
    assert lines[:5] == ["KTAP version 1", "1..1", "  KTAP version 1", "  # Subtest: matrix-nightly", "  1..3"]
    assert "  ok 1 clean[default]" in lines and "  not ok 2 mutant-a[swap=zram]" in lines
    assert "  ok 3 mutant-a[tdp_mmu=False] # SKIP needs an Intel L1 (kvm_intel, EPT): L1 runs under TCG here" in lines
    assert lines[-1] == "not ok 1 matrix-nightly"
    rc, out = parse(kunit_py, path)
    assert rc == 1
    assert "matrix-nightly (3 subtests)" in out
    assert "[PASSED] clean[default]" in out and "[FAILED] mutant-a[swap=zram]" in out
    assert "[SKIPPED] mutant-a[tdp_mmu=False]" in out and "[FAILED] matrix-nightly" in out
    assert "Testing complete. Ran 3 tests: passed: 1, failed: 1, skipped: 1" in out


def test_a_matrix_where_every_cell_is_as_expected_passes(kunit_py, tmp_path):
    m = matrix()
    m["cells"][1] |= {"outcome": "finding", "ok": True}
    m["cells"][0]["runs"].append(m["cells"][0]["runs"][0] | {"seed": 2})
    path = tmp_path / "ok.ktap"
    path.write_text(matrix_ktap(m))
    rc, out = parse(kunit_py, path)
    assert rc == 0 and "Testing complete. Ran 3 tests: passed: 2, skipped: 1" in out


def test_an_infra_cell_is_an_error_not_a_skip():
    m = matrix()
    m["cells"][0] |= {"outcome": "infra", "ok": False}
    assert "  not ok 1 clean[default] # ERROR infra: expected clean, got infra" in matrix_ktap(m).splitlines()


def test_clean_makes_any_text_one_safe_line():
    assert clean("a #1\nb\tc") == "a %231 b c"
    assert clean("x" * 500, 10) == "x" * 9 + "…"
    assert clean("List of all partitions: sda") == "List of all partitions - sda"
    assert clean(None) == ""


# a bisection (bisect.json as harness.fleet.bisect writes it) -------------------------------------------------------

SUBJECTS = ["KVM: x86/mmu: Funnel fault-path pfn release", "KVM: x86/mmu: Mark folio dirty when creating",
            "KVM: x86/mmu: Stop marking folios dirty when zapping", "KVM: x86/mmu: Mark folios accessed only on zap",
            "MUTANT: KVM: x86/mmu: release the faultin pfn clean # in the port"]


def bisect_doc(recorded: dict, n: int = 5, repeats: int = 1) -> dict:
    """bisect.json from the real policy (harness.fleet.bisect.drive) on recorded verdicts per upto."""
    from harness.fleet.bisect import Bisect, bisect_json, drive
    from harness.kernel.series import Patch
    b = Bisect(Path("/k/mutant-d.yaml"), Path("/s/default.yaml"), ["stop_on_first_finding=true"], repeats, Path("/r"))
    b.patches = [Patch(Path(f"/p/{i}"), f"000{i}.patch", SUBJECTS[i - 1], f"{i}" * 64) for i in range(1, n + 1)]
    left = {u: list(v) for u, v in recorded.items()}

    def run_one(u):
        v = left[u].pop(0)
        return {"verdict": v, "run_dir": f"runs/upto-{u}/r{len(left[u])}", "total_s": 30.0,
                "first_finding_s": 17.2 if v == "finding" else None,
                "titles": [LOST["title"]] if v == "finding" else []} | (
                   {"error": "L1's QEMU is stopped"} if v == "infra-error" else {})
    runs, outcome = drive(n, repeats, run_one)
    return bisect_json(b, runs, outcome, 0.0)


def test_a_bisection_is_one_parent_test_with_a_subtest_per_step(kunit_py, tmp_path):
    from harness.report.ktap import write_bisect_ktap
    doc = bisect_doc({0: ["pass"], 5: ["finding", "finding"], 2: ["pass"], 3: ["pass"], 4: ["pass"]})
    path = write_bisect_ktap(doc, tmp_path / "results.ktap")
    lines = path.read_text().splitlines()
    assert lines[:5] == ["KTAP version 1", "1..1", "  KTAP version 1", "  # Subtest: bisect-mutant-d", "  1..5"]
    results = [ln for ln in lines if ln.lstrip().startswith(("ok ", "not ok "))]
    assert results == ["  ok 1 upto 0: base (no patch)",
                       "  not ok 2 upto 5: MUTANT: KVM: x86/mmu: release the faultin pfn clean %23 in the port",
                       "  ok 3 upto 2: KVM: x86/mmu: Mark folio dirty when creating",
                       "  ok 4 upto 3: KVM: x86/mmu: Stop marking folios dirty when zapping",
                       "  ok 5 upto 4: KVM: x86/mmu: Mark folios accessed only on zap",
                       "not ok 1 bisect-mutant-d"]
    assert "# first bad patch 5/5: MUTANT: KVM: x86/mmu: release the faultin pfn clean %23 in the port " \
           f"(0005.patch, sha256 {'5' * 64})" in lines
    assert any(ln.startswith("# reproduction rate 1.000") and "confidence 1.0000" in ln for ln in lines)
    assert "SKIP" not in path.read_text()
    rc, out = parse(kunit_py, path)
    assert rc == 1 and "bisect-mutant-d (5 subtests)" in out
    assert "[PASSED] upto 0: base (no patch)" in out and "[FAILED] upto 5: MUTANT: KVM" in out
    assert "[FAILED] bisect-mutant-d" in out and "# first bad patch 5/5: MUTANT" in out
    assert "Testing complete. Ran 5 tests: passed: 4, failed: 1" in out


def test_a_bisection_step_the_infrastructure_failed_is_an_error(kunit_py, tmp_path):
    doc = bisect_doc({0: ["pass"], 5: ["finding", "finding"], 2: ["infra-error", "infra-error"], 3: ["pass"], 4: ["pass"]})
    text = bisect_ktap(doc)
    assert "  not ok 3 upto 2: KVM: x86/mmu: Mark folio dirty when creating # ERROR infra: the infrastructure " \
           "failed twice in a row, the step says nothing about the kernel" in text.splitlines()
    assert "L1's QEMU is stopped" in text and "SKIP" not in text
    path = tmp_path / "infra.ktap"
    path.write_text(text)
    rc, out = parse(kunit_py, path)
    assert rc == 1 and "Testing complete. Ran 5 tests: passed: 3, failed: 2" in out


def test_an_inconclusive_bisection_is_an_error_naming_the_candidates():
    doc = bisect_doc({0: ["pass"], 4: ["finding"], 2: ["infra-error", "infra-error"], 1: ["pass"], 3: ["finding"]},
                     n=4)
    lines = bisect_ktap(doc).splitlines()
    assert "# bisect infra: no first bad patch named; candidates 2, 3" in lines
    assert lines[-1] == "not ok 1 bisect-mutant-d # ERROR infra: the bisection named no first bad patch"


def test_a_clean_series_passes(kunit_py, tmp_path):
    doc = bisect_doc({0: ["pass", "pass"], 5: ["pass", "pass"]}, repeats=2)
    path = tmp_path / "clean.ktap"
    path.write_text(bisect_ktap(doc))
    text = path.read_text()
    assert text.rstrip().endswith("# no bad patch: the whole series (5 patches) is good\n"
                                  "# confidence n/a: no bad step: the reproduction rate cannot be measured\n"
                                  "# kernel /k/mutant-d.yaml, scenario /s/default.yaml, repeats 2, 4 runs, "
                                  f"{doc['elapsed_s']} s\nok 1 bisect-mutant-d")
    rc, out = parse(kunit_py, path)
    assert rc == 0 and "Testing complete. Ran 2 tests: passed: 2" in out


def test_bisect_writes_results_ktap_next_to_bisect_json(tmp_path):
    from harness.fleet.bisect import write_outputs
    doc = bisect_doc({0: ["pass"], 5: ["finding", "finding"], 2: ["pass"], 3: ["pass"], 4: ["pass"]})
    write_outputs(tmp_path, doc)
    assert json.loads((tmp_path / "bisect.json").read_text())["first_bad"]["index"] == 5
    assert "FIRST BAD PATCH 5/5" in (tmp_path / "summary.txt").read_text()
    assert (tmp_path / "results.ktap").read_text() == bisect_ktap(doc)
