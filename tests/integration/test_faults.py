"""Fault injection on the real pipeline: each fault of the machinery ends within a bounded time in a named
infrastructure verdict (exit 3), the logs recorded so far kept, and no QEMU or make process left behind."""
import json
import os
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
LONG = ["--set", "ledger.rounds=30"]  # long enough that the fault lands mid-workload


def qemus_under(path: Path) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["name", "cmdline"])
            if "qemu-system" in (p.info["name"] or "") and str(path) in " ".join(p.info["cmdline"] or [])]


def start(results: Path, *args) -> subprocess.Popen:
    return subprocess.Popen([*HARNESS, "run", str(SMALL), "--results", str(results), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(proc: subprocess.Popen, needle: str, limit: float = 300) -> str:
    out, deadline = [], time.monotonic() + limit
    for line in proc.stdout:
        out.append(line)
        if needle in line or time.monotonic() > deadline:
            break
    return "".join(out)


def finish(proc: subprocess.Popen, limit: float) -> tuple[int, float, str]:
    t = time.monotonic()
    out, _ = proc.communicate(timeout=limit)
    return proc.returncode, time.monotonic() - t, out


def only_run(results: Path) -> tuple[Path, dict]:
    (path,) = list(results.iterdir())
    return path, json.loads((path / "run.json").read_text())


def infra_titles(run: dict) -> list[str]:
    assert run["verdict"] == "infra-error", run["findings"]
    assert all(f["oracle"] == "infra" for f in run["findings"]), run["findings"]
    return [f["title"] for f in run["findings"]]


@pytest.mark.parametrize("sig,needle", [(signal.SIGKILL, "exited"), (signal.SIGSTOP, "stopped")])
def test_l1_qemu_killed_or_frozen_mid_workload_is_infra_within_two_minutes(results_dir, sig, needle):
    proc = start(results_dir, *LONG, "--set", "timeouts.stall_s=30")
    wait_for(proc, "ledger: round 1/")
    (l1,) = qemus_under(results_dir)
    l1.send_signal(sig)
    rc, took, out = finish(proc, 150)
    assert rc == 3 and took < 120, (rc, took, out[-2000:])
    path, run = only_run(results_dir)
    assert any(needle in t for t in infra_titles(run)), run["findings"]
    assert "HARNESS-L1: ready" in (path / "cases/default/l1-console.log").read_text()  # the log so far is kept
    assert (path / "cases/default/evidence.json").exists()
    assert qemus_under(results_dir) == []


@pytest.mark.parametrize("fault,kind", [("kill-l2-qemu", "l2-qemu-killed"), ("kill-l1-sshd", "error")])
def test_injected_machinery_faults_are_named_infra(results_dir, fault, kind):
    proc = start(results_dir, *LONG, "--set", f"inject={fault}", "--set", "timeouts.stall_s=60")
    rc, took, out = finish(proc, 400)
    assert rc == 3, out[-2000:]
    path, run = only_run(results_dir)
    infra_titles(run)
    assert any(f["kind"] == kind for f in run["findings"]), run["findings"]
    assert run["l2"]["injected"] == fault
    assert not path.name.endswith(".incomplete") and qemus_under(results_dir) == []


@pytest.fixture
def full_tmpfs(tmp_path):
    mnt = tmp_path / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        with open(mnt / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_a_results_root_on_a_full_filesystem_is_one_line_and_exit_3(full_tmpfs):
    p = subprocess.run([*HARNESS, "run", str(SMALL), "--results", str(full_tmpfs / "results")], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 3, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "no space" in lines[0] and "Traceback" not in p.stderr, p.stderr
    assert qemus_under(full_tmpfs) == []


def makes_under(pid: int) -> list[psutil.Process]:
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [k for k in kids if k.name() == "make"]


@pytest.mark.kernelbuild
@pytest.mark.skipif(os.environ.get("HARNESS_KERNEL_BUILD") != "1", reason="kernel builds only with HARNESS_KERNEL_BUILD=1")
def test_sigterm_during_a_kernel_build_stops_make(tmp_path):
    env = os.environ | {"HARNESS_CACHE": str(tmp_path / "cache")}  # an empty cache: make runs for minutes
    proc = subprocess.Popen([*HARNESS, "build", "kernels/debian-6.12.yaml"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not makes_under(proc.pid) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1)
    makes = makes_under(proc.pid)
    assert makes, "make never started"
    time.sleep(5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    psutil.wait_procs(makes, timeout=30)
    assert not [m for m in makes if m.is_running() and m.status() != psutil.STATUS_ZOMBIE]
