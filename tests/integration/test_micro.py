"""The micro-guest end to end: Debian's prebuilt 6.12 as L1 under TCG (or KVM where usable), the microvm VMM on
L1's KVM, one choreography, the judge.  A clean kernel passes with its host steps counted; the VMM's self-test
(pages restored to an old copy) is a finding with exactly the planted stale pages."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, requires_qemu

pytestmark = [pytest.mark.integration, requires_qemu]
MICRO = REPO / "scenarios/micro.yaml"


def harness(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def only_run(results: Path) -> tuple[Path, dict]:
    (path,) = list(results.iterdir())
    return path, json.loads((path / "run.json").read_text())


def test_clean_kernel_passes_with_the_host_steps_counted(results_dir):
    p = harness("run", str(MICRO), "--set", "trace.enabled=true", "--results", str(results_dir))
    path, run = only_run(results_dir)
    assert p.returncode == 0, (run["findings"], p.stderr[-2000:])
    assert run["verdict"] == "pass" and run["scenario"]["guest"] == "micro"
    lg = run["ledger"]
    assert (lg["stale"], lg["zero"], lg["corrupt"]) == (0, 0, 0) and lg["complete"]
    assert lg["pages_verified"] >= lg["pages"] * lg["rounds"]
    counters = lg["micro"]["counters"]
    assert counters["pages_out"] > 0 and counters["pages_in"] > 0
    assert run["l1"]["vmstat_delta"]["pswpout"] >= 64
    assert run["trace"]["rules"]["R1"]["events_checked"] > 0  # the trace oracle watched the same gfns
    case = path / "cases/default"
    steps = [json.loads(line) for line in (case / "micro-steps.jsonl").read_text().splitlines()]
    assert {"pageout", "guest-write"} <= {s.get("step") for s in steps}
    assert all(s["first_gfn"] >= 0x100000 for s in steps if s["ev"] == "step")
    for f in ("micro-out.log", "ledger.jsonl", "vmstat.csv", "l1-dmesg.log", "trace.txt.gz"):
        assert (case / f).exists(), f
    for f in ("summary.txt", "junit.xml", "results.ktap", "reproduce.sh"):
        assert (path / f).exists(), f
    assert "guest: micro" in (path / "reproduce.sh").read_text()
    assert run["images"]["l1_bytes"] < 30 << 20  # no L2 kernel, no L2 initramfs, no QEMU in L1


def test_selftest_loss_is_a_finding_with_exactly_the_planted_pages(results_dir):
    p = harness("run", str(MICRO), "--set", "micro.selftest_pages=12",
                "--results", str(results_dir))
    path, run = only_run(results_dir)
    assert p.returncode == 1, (run["findings"], p.stderr[-2000:])
    assert run["verdict"] == "finding"
    lg = run["ledger"]
    assert (lg["stale"], lg["zero"], lg["corrupt"]) == (12, 0, 0)
    assert lg["selftest"]["stale"] == 12
    (stale,) = [f for f in run["findings"] if f["oracle"] == "ledger"]
    assert stale["kind"] == "stale" and stale["count"] == 12
    assert all(pg["found"] < pg["expected"] and pg["gfn"] >= 0x100000 for pg in stale["pages"])
    assert not [f for f in run["findings"] if f["oracle"] == "infra"]
