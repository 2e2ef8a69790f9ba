"""The real nested pipeline under TCG (or KVM where a probe proves it usable): L1 → L2 → ledger → verdict.

These boot real QEMU with Debian's prebuilt 6.12 kernel (downloaded once into the cache)."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, requires_qemu

pytestmark = [pytest.mark.integration, requires_qemu]
HARNESS = [sys.executable, "-m", "harness"]
SMALL = REPO / "tests/fixtures/scenarios/small.yaml"


def harness(*args, timeout=1200):
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def only_run(results: Path) -> tuple[Path, dict]:
    runs = [p for p in results.iterdir()]
    assert len(runs) == 1, runs
    return runs[0], json.loads((runs[0] / "run.json").read_text())


def qemus_under(path: Path) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        if "qemu-system" in (p.info["name"] or "") and str(path) in " ".join(p.info["cmdline"] or []):
            out.append(p)
    return out


@pytest.mark.parametrize("args,needle", [
    (["run", "tests/fixtures/scenarios/absent.yaml"], "absent.yaml: no such file"),
    (["run", "--set", "ledger.colour=red"], "unknown key 'ledger.colour'"),
    (["run", "--set", "swap.kind=floppy"], "key 'swap.kind'"),
    (["run", "--kernel", "/nonexistent/kernel"], "does not exist"),
])
def test_bad_input_is_one_line_exit_2_and_no_results(results_dir, args, needle):
    p = harness(*args, "--results", str(results_dir), timeout=120)
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert list(results_dir.iterdir()) == []


def test_malformed_yaml(results_dir, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ledger: {size_mb: 8\nseed: [\n")
    p = harness("run", str(bad), "--results", str(results_dir), timeout=120)
    assert p.returncode == 2 and "malformed YAML" in p.stderr and list(results_dir.iterdir()) == []


def test_kernel_folder_without_bzimage(results_dir, tmp_path):
    p = harness("run", "--kernel", str(tmp_path), "--results", str(results_dir), timeout=120)
    assert p.returncode == 2 and "has no bzImage" in p.stderr and list(results_dir.iterdir()) == []


def test_selftest_lost_writes_are_caught_inside_a_real_l2(results_dir):
    """The ledger restores old copies of pages in a real L2: the run must be a finding with them classified."""
    p = harness("run", str(SMALL), "--set", "ledger.selftest_pages=12", "--results", str(results_dir))
    assert p.returncode == 1, p.stdout + p.stderr
    path, run = only_run(results_dir)
    assert run["verdict"] == "finding" and not path.name.endswith(".incomplete")
    assert run["l1"]["nested"] and run["l1"]["kvm_module"] in ("kvm_amd", "kvm_intel")
    lg = run["ledger"]
    assert (lg["stale"], lg["zero"], lg["corrupt"]) == (10, 1, 1) and lg["complete"]
    kinds = {f["kind"]: f for f in run["findings"] if f["oracle"] == "ledger"}
    assert kinds["stale"]["count"] == 10 and all(pg["found"] < pg["expected"] for pg in kinds["stale"]["pages"])
    for f in ("l1-console.log", "l2-console.log", "ledger.jsonl", "vmstat.csv", "findings.json", "l1-dmesg.log"):
        assert (path / "cases/default" / f).exists(), f
    for f in ("summary.txt", "junit.xml", "reproduce.sh"):
        assert (path / f).exists(), f
    assert "10 lost write" in (path / "summary.txt").read_text()
    assert qemus_under(results_dir) == []


def test_l2_panic_is_a_console_finding_and_leaves_no_qemu(results_dir):
    p = harness("run", str(SMALL), "--set", "l2_fault=panic", "--set", "ledger.rounds=20",
                "--results", str(results_dir))
    assert p.returncode == 1, p.stdout + p.stderr
    path, run = only_run(results_dir)
    l2 = [f for f in run["findings"] if f["layer"] == "L2" and f["oracle"] == "console"]
    assert any(f["kind"] == "panic" for f in l2), run["findings"]
    assert not run["ledger"]["complete"]
    assert qemus_under(results_dir) == []


def test_interrupt_kills_qemu_and_marks_the_folder_incomplete(results_dir):
    proc = subprocess.Popen([*HARNESS, "run", str(SMALL), "--results", str(results_dir)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        if "L2 started" in line or time.monotonic() > deadline:
            break
    running = qemus_under(results_dir)
    assert running, "L1 QEMU should be running by now"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    _, alive = psutil.wait_procs(running, timeout=10)   # gone, or going: a killed QEMU is reaped by its parent
    assert alive == [] and qemus_under(results_dir) == []
    (path,) = list(results_dir.iterdir())
    assert path.name.endswith(".incomplete")
    run = json.loads((path / "run.json").read_text())
    assert run["interrupted"] and any(f["kind"] == "interrupted" for f in run["findings"])


def test_default_scenario_passes_on_the_distro_kernel_with_real_swap(results_dir):
    """`make run`: the default scenario on Debian's 6.12: nested KVM, tens of thousands of pages through swap,
    every ledger page verified, no finding."""
    p = harness("run", "--results", str(results_dir), timeout=1500)
    path, run = only_run(results_dir)
    assert p.returncode == 0, (run["findings"], p.stderr[-2000:])
    assert run["verdict"] == "pass" and run["kernel"]["source"] == "debian-prebuilt"
    assert run["l1"]["nested"] and run["l1"]["tdp"]
    vd = run["l1"]["vmstat_delta"]
    assert vd["pswpout"] >= 10000 and vd["pswpin"] >= 10000 and vd["swap_ra_hit"] >= 10000
    lg = run["ledger"]
    assert lg["complete"] and lg["pages_verified"] == lg["pages"] * (lg["rounds"] + 1)
    assert (lg["stale"], lg["zero"], lg["corrupt"]) == (0, 0, 0)
    assert run["accel"]["mode"] in ("kvm", "tcg") and run["accel"]["reason"]
    # the trace oracle judged the same run: a whole stream, every zap-time rule run on real events, none violated
    tr = run["trace"]
    assert tr["ruleset"] == "zap-time" and tr["lost_events"] == 0 and tr["cut_events"] == 0
    for r in ("R1", "R3", "R4"):
        assert tr["rules"][r]["ran"] and tr["rules"][r]["events_checked"] >= 10000, (r, tr["rules"][r])
        assert tr["rules"][r]["violations"] == 0, (r, tr["rules"][r])
