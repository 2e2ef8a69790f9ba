"""The point of the harness: a kernel that loses dirty data is convicted by the ledger, with the page named.

Mutant a (patches/mutants/a-tdp-handle-changed-spte: the zap-time dirty mark in the TDP MMU removed) is an
incremental build on the cached object tree.  On the default scenario the ledger in L2 reads back stale pages
(an older generation with a valid CRC) on L2's data DIMM, and the trace oracle ties a lost page to the L1 pfn
that was zapped dirty without a dirty mark (rule R1) and freed without writeback (R3).  Mutant c (the mark itself
emptied) fools the mark probe, and R4 convicts it by the effect: reclaim dropped the page clean."""
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


def run_to_first_finding(kernel_yaml: str, results_dir) -> dict:
    """`harness run --build KERNEL.yaml` stopped at the first lost write; asserts it was found, returns run.json."""
    p = subprocess.run([sys.executable, "-m", "harness", "run", "--build", kernel_yaml,
                        "--set", "stop_on_first_finding=true", "--results", str(results_dir)],
                       cwd=REPO, capture_output=True, text=True, timeout=3600)
    (path,) = list(results_dir.iterdir())
    run = json.loads((path / "run.json").read_text())
    assert p.returncode == 1 and run["verdict"] == "finding", (run["findings"], p.stderr[-2000:])
    return run


def test_mutant_a_loses_writes_and_the_finding_names_gfn_pfn_rule_and_patch(results_dir):
    run = run_to_first_finding("kernels/mutant-a.yaml", results_dir)
    stale = [f for f in run["findings"] if f["oracle"] == "ledger" and f["kind"] == "stale"]
    assert stale and stale[0]["count"] >= 1, run["findings"]
    page = stale[0]["pages"][0]
    assert page["found"] < page["expected"] and page["gfn"] >= 0x100000  # on the data DIMM, above 4 GiB
    assert stale[0]["patch"].startswith("MUTANT: KVM: x86/mmu: drop the zap-time dirty mark")
    # the trace oracle: rule R1 flagged zaps without a dirty mark, and a ledger-bad gfn got its L1 pfn
    assert any(f.get("kind") == "R1-violation" for f in run["findings"]), [f["title"] for f in run["findings"]]
    named = [f for f in run["findings"] if f.get("kind") == "ledger-timeline" and f.get("pfn") is not None]
    assert named and "no dirty mark" in " ".join(f["title"] for f in named)
    # L2's kernel lives outside the pressure: the loss is reported by the ledger, not by L2 dying
    assert not any(f["oracle"] == "console" and f["layer"] == "L2" for f in run["findings"])
    assert run["timings"]["first_finding_s"] < run["timings"]["total_s"]


def test_mutant_c_fools_the_mark_probe_but_r4_convicts_it_by_the_effect(results_dir):
    """Mutant c empties kvm_set_page_dirty() under the probed kvm_set_pfn_dirty(): the trace sees every mark
    called (R1 and R3 pass), but reclaim then drops the pages as clean with no writeback: R4, with gfn and pfn."""
    run = run_to_first_finding("kernels/mutant-c.yaml", results_dir)
    rules = run["trace"]["rules"]
    assert rules["R1"]["events_checked"] > 1000 and rules["R1"]["violations"] == 0, rules["R1"]
    assert rules["R3"]["violations"] == 0 and rules["R4"]["violations"] > 0, rules
    assert run["trace"]["cut_events"] == 0 and run["trace"]["lost_events"] == 0  # trace-reader: a whole stream
    r4 = next(f for f in run["findings"] if f.get("kind") == "R4-violation")
    assert all(e["pfn"] and e["gfn"] >= 0x100000 for e in r4["examples"])
    named = [f for f in run["findings"] if f.get("kind") == "ledger-timeline" and "R4" in f.get("rules", [])]
    assert named and all(f["pfn"] is not None for f in named), [f["title"] for f in run["findings"]]
    assert "dropped clean by reclaim" in " ".join(f["title"] for f in named)
