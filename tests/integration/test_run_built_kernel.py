"""`harness run --build KERNEL.yaml`: a patched kernel built from linux-source-6.12 (cached after the first
build) boots as L1 with its own modules, runs L2 under its KVM, and run.json names the patch."""
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


def test_built_kernel_boots_as_l1_and_run_json_names_the_patch(results_dir):
    p = subprocess.run([sys.executable, "-m", "harness", "run", "tests/fixtures/scenarios/small.yaml",
                        "--build", "kernels/tdp-mmu-oneline.yaml", "--results", str(results_dir)],
                       cwd=REPO, capture_output=True, text=True, timeout=3600)
    (path,) = list(results_dir.iterdir())
    run = json.loads((path / "run.json").read_text())
    assert p.returncode == 0, (run["findings"], p.stderr[-2000:])
    k = run["kernel"]
    assert k["source"] == "build" and k["release"].startswith("6.12.")
    assert [x["subject"] for x in k["patches"]] == ["KVM: x86/mmu: add a comment to tdp_mmu.c (harness test fixture)"]
    assert len(k["patches"][0]["sha256"]) == 64 and len(k["config_sha256"]) == 64
    assert run["l1"]["nested"] and run["ledger"]["complete"]
    # the one-file reproducer embeds the patch and checks it: recreated alone in an empty folder, hashes match
    script = (path / "reproduce.sh").read_text()
    assert k["patches"][0]["sha256"] in script and k["config_sha256"] in script
    empty = results_dir.parent / "elsewhere"
    empty.mkdir()
    chk = subprocess.run(["sh", str(path / "reproduce.sh"), "--check-only"], cwd=empty, capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, HARNESS_REPO=str(REPO)))
    assert chk.returncode == 0, chk.stdout + chk.stderr
