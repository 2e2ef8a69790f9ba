"""Delays on (scenario `delays`, docs/races.md): the kvmdelay module is built against a harness-built kernel's
object tree, loaded in L1 before the micro-guest runs, its probes fire and delay, and the counts reach run.json;
a clean kernel stays clean with the delay on.  A function that cannot be probed fails the set-up as an
infrastructure error, not a finding."""
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
KERNEL = "kernels/debian-6.12.yaml"  # clean; any harness-built kernel has the object tree the module needs


def run(results, *sets):
    p = subprocess.run([sys.executable, "-m", "harness", "run", "micro", "--build", KERNEL, "--results",
                        str(results), *[a for s in sets for a in ("--set", s)]],
                       cwd=REPO, capture_output=True, text=True, timeout=3600)
    (path,) = list(results.iterdir())
    return p, json.loads((path / "run.json").read_text())


def test_delay_fires_in_l1_and_a_clean_kernel_stays_clean(results_dir):
    p, r = run(results_dir, "delays=[{func: kvm_tdp_mmu_unmap_gfn_range, us: 200, prob: 0.5},"
                            " {func: hva_to_pfn, ret: true, us: 100}]")  # both exist in 6.12 and 7.2
    assert p.returncode == 0, (r["findings"], p.stderr[-2000:])
    assert r["verdict"] == "pass"
    assert r["scenario"]["delays"][1] == {"func": "hva_to_pfn", "offset": 0, "ret": True, "us": 100,
                                          "prob": 1.0}
    assert r["l1"]["delays"].startswith("func=kvm_tdp_mmu_unmap_gfn_range,hva_to_pfn ")
    counts = r["l1"]["delay_counts"]
    assert counts["seen"][0] > 0 and 0 < counts["fired"][0] < counts["seen"][0]  # prob 0.5 of hundreds of zaps
    assert counts["seen"][1] > 0 and counts["fired"][1] == counts["seen"][1]     # prob 1


def test_a_function_that_cannot_be_probed_is_an_infrastructure_error(results_dir):
    p, r = run(results_dir, "delays=[{func: no_such_function_in_l1, us: 10}]")
    assert p.returncode not in (0, 1), p.stderr[-2000:]
    assert r["verdict"] not in ("pass", "finding")
    assert any("kvmdelay" in json.dumps(f) for f in r["findings"])
