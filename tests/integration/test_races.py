"""Races (docs/races.md): the micro-guest's concurrent choreography race-pageout on real kernels.  A race mutant
(the fault path's mmu_notifier re-checks dropped) is caught within three seeds (measured 9 in 10 runs); a clean
kernel passes with the race really staged: vCPU and pager on two L1 CPUs, page-outs during guest sweeps, faults
while the guest ran (the judge's gate, recorded in run.json)."""
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


def run_races(results, kernel: str, seed: int):
    p = subprocess.run([sys.executable, "-m", "harness", "run", "races", "--build", kernel, "--seed", str(seed),
                        "--results", str(results)], cwd=REPO, capture_output=True, text=True, timeout=1800)
    path = max(results.iterdir(), key=lambda d: d.stat().st_mtime)
    return p, json.loads((path / "run.json").read_text())


def test_a_clean_kernel_passes_with_the_race_staged(results_dir):
    p, r = run_races(results_dir, "kernels/debian-6.12.yaml", 1)
    assert p.returncode == 0 and r["verdict"] == "pass", (r["findings"], p.stderr[-2000:])
    race = r["ledger"]["micro"]["race"]
    assert race["batches"] == 4 and race["overlapped"] > 0 and race["faults"] > 0 and race["sweeps"] > 0
    assert all(vcpu != pager for vcpu, pager in race["cpus"])  # two L1 CPUs, pinned apart
    assert r["l1"]["delays"].startswith("func=kvm_faultin_pfn ")  # 6.12's name of the alternatives


def test_the_race_mutant_loses_writes(results_dir):
    for seed in (1, 2, 3):
        p, r = run_races(results_dir, "kernels/race-6.12-a.yaml", seed)
        if r["verdict"] == "finding":
            break
    assert p.returncode == 1 and r["verdict"] == "finding", [f["title"] for f in r["findings"]]
    lost = [f for f in r["findings"] if f["oracle"] == "ledger"]
    assert lost and lost[0]["kind"] in ("stale", "corrupt")
    assert "race-pageout" in json.dumps(lost[0])
