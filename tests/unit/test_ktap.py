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
from harness.report.ktap import clean, matrix_ktap, run_ktap, write_matrix_ktap, write_run_ktap

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
    text = run_ktap(run)
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
    text = run_ktap(run)
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
    lines = run_ktap(run).splitlines()
    assert lines[1] == "1..2" and "ok 1 mutant" in lines and "ok 2 clean" in lines


def matrix() -> dict:
    """matrix.json as harness.matrix.save() writes it (Cell.__dict__ + outcome/ok/retries)."""
    def cell(kernel, variant, expect, outcome, ok, runs):
        return {"kernel": kernel, "variant": variant, "expect": expect, "why": "", "runs": runs, "seed": None,
                "budget": None, "outcome": outcome, "ok": ok, "retries": 0}
    run = {"run_dir": "/r/matrix-x/runs/20261201-1-clean-s1", "verdict": "pass", "seed": 1, "first_finding_s": None,
           "total_s": 100.0, "titles": [], "attempts": 1, "tdp_mmu": True, "evidence": []}
    caught = run | {"run_dir": "/r/matrix-x/runs/20261201-2-mutant-a-s1", "verdict": "finding",
                    "first_finding_s": 17.1, "titles": [LOST["title"]], "evidence": ["ledger: # lost", "patch: a"]}
    return {"name": "nightly", "score": {"mutants": ["mutant-a"], "runnable_mutants": ["mutant-a"],
                                         "caught": ["mutant-a"], "mutation_score": 1.0, "false_positives": 0,
                                         "cells_ok": 2, "cells": 3},
            "cells": [cell("clean", {}, "clean", "clean", True, [run]),
                      cell("mutant-a", {"swap": "zram"}, "finding", "clean", False, [run]),
                      cell("mutant-a", {"tdp_mmu": False}, "hardware-only", "skipped", True, [])]}


def test_a_matrix_is_one_parent_test_with_a_subtest_per_cell(kunit_py, tmp_path):
    m = matrix()
    path = write_matrix_ktap(m, tmp_path / "results.ktap")
    lines = path.read_text().splitlines()
    assert lines[:5] == ["KTAP version 1", "1..1", "  KTAP version 1", "  # Subtest: matrix-nightly", "  1..3"]
    assert "  ok 1 clean[default]" in lines and "  not ok 2 mutant-a[swap=zram]" in lines
    assert "  ok 3 mutant-a[tdp_mmu=False] # SKIP hardware-only" in lines
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
