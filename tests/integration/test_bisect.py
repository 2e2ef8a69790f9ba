"""`harness bisect` on a real 2-patch series: a harmless one-line comment (tests/fixtures/patches/tdp-oneline),
then mutant a (patches/mutants/a-*: the TDP MMU's zap-time dirty mark removed). The base and the first patch
must pass, the full stack must lose writes, and the bisection must name mutant a (on bisect's default scenario, the
micro-guest). Then the bad step's run is
reproduced from its one-file reproducer, in an empty folder: same kernel key, .config checked, a finding again.
Each stack is an incremental build on the cached object tree (base, +comment, +comment+mutant)."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, requires_qemu

pytestmark = [
    pytest.mark.integration, pytest.mark.kernelbuild, requires_qemu,
    pytest.mark.skipif(os.environ.get("HARNESS_KERNEL_BUILD") != "1", reason="set HARNESS_KERNEL_BUILD=1"),
]

MUTANT_A = next((REPO / "patches/mutants").glob("a-*/0001-*.patch"))


def test_bisect_names_mutant_a_and_its_step_reproduces_from_reproduce_sh(tmp_path, results_dir):
    from harness.kernel.prebuilt import load_kernel_dir
    from harness.kernel.series import patch_subject
    from harness.report.reproduce import reproduce_script

    from harness.fleet.bench_micro import two_patch_series  # the bench bisects the same series

    ky = two_patch_series(tmp_path)
    p = subprocess.run([sys.executable, "-m", "harness", "bisect", str(ky), "--repeats", "1",
                        "--results", str(results_dir)], cwd=REPO, capture_output=True, text=True, timeout=5400)
    (bdir,) = list(results_dir.iterdir())
    assert bdir.name.startswith("bisect-") and not bdir.name.endswith(".incomplete")
    doc = json.loads((bdir / "bisect.json").read_text())
    assert p.returncode == 1, (doc.get("steps"), p.stderr[-3000:])
    subject = patch_subject(MUTANT_A.read_text())
    assert doc["status"] == "first-bad" and doc["first_bad"]["index"] == 2
    assert doc["first_bad"]["subject"] == subject and subject.startswith("MUTANT: KVM: x86/mmu: drop the zap-time")
    assert [(s["upto"], s["verdict"]) for s in doc["steps"]] == [(0, "good"), (2, "bad"), (1, "good")]
    assert doc["reproduction_rate"] == 1.0 and doc["confidence"]["confidence"] == 1.0
    assert f"FIRST BAD PATCH 2/2: {subject}" in (bdir / "summary.txt").read_text()
    # one run a step with --repeats 1, and at the first bad step one confirmation run more: the rate comes from it
    assert [len(s["runs"]) for s in doc["steps"]] == [1, 2, 1]
    assert doc["confidence"]["runs_at_bad_steps"] == 1 and doc["confidence"]["catching_runs"] == 1
    for s in doc["steps"]:
        for r in s["runs"]:
            assert (bdir / r["run_dir"] / "run.json").is_file() and r["run_dir"].startswith(f"runs/upto-{s['upto']}/")
    bad = doc["steps"][1]["runs"][0]
    assert bad["verdict"] == "finding" and bad["first_finding_s"] > 0

    # the bad step's case, rerun from its one-file reproducer in an empty folder
    run_dir = bdir / bad["run_dir"]
    run = json.loads((run_dir / "run.json").read_text())
    meta = load_kernel_dir(run["kernel"]["dir"])
    script = tmp_path / "reproduce.sh"
    script.write_text(reproduce_script(run, meta))
    empty = tmp_path / "empty"
    empty.mkdir()
    env = dict(os.environ, HARNESS_REPO=str(REPO), HARNESS_RESULTS=str(tmp_path / "rerun"))
    r = subprocess.run(["sh", str(script)], cwd=empty, env=env, capture_output=True, text=True, timeout=3600)
    assert r.returncode == 1, r.stderr[-3000:]
    assert ".config sha256 matches" in r.stderr
    (rerun,) = list((tmp_path / "rerun").iterdir())
    again = json.loads((rerun / "run.json").read_text())
    assert again["verdict"] == "finding" and again["kernel"]["key"] == run["kernel"]["key"]
    assert again["scenario"] == run["scenario"]
