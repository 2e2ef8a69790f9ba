"""harness remote through a real OpenSSH server on 127.0.0.1 (its own host key, a per-test client key): the
remote is this machine, its checkout this repo.  Host keys are checked, a kernel is pushed by hash, a real
small case runs over SSH and its results folder comes back whole, with no key material in it."""
import getpass
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from harness.fleet import remote
from tests.conftest import REPO, requires_qemu
from tests.integration.test_pipeline import SMALL, qemus_under

pytestmark = [pytest.mark.integration, requires_qemu]
SSHD = Path("/usr/sbin/sshd")


@dataclass
class Server:
    port: int
    dir: Path
    client_key: Path
    host_pub: str

    @property
    def target(self) -> str:
        return f"{getpass.getuser()}@127.0.0.1:{self.port}"

    def known_hosts_line(self) -> str:
        kind, b64 = self.host_pub.split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {b64}\n"


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sshd(tmp_path):
    if not SSHD.exists():
        pytest.skip("openssh-server not installed (scripts/install-deps.sh --build)")
    if os.geteuid() != 0:
        pytest.skip("the test sshd runs as root (privilege separation)")
    d = tmp_path / "sshd"
    d.mkdir()
    keygen(d / "host_ed25519")
    keygen(d / "client_ed25519")
    shutil.copy(d / "client_ed25519.pub", d / "authorized_keys")
    (d / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nAuthorizedKeysFile {d}/authorized_keys\n"
        f"PidFile {d}/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege-separation folder, normally made by the init script
    port = free_port()
    log = open(d / "sshd.log", "w")
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(d / "sshd_config"), "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while "Server listening" not in (d / "sshd.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (d / "sshd.log").read_text()
            time.sleep(0.05)
        yield Server(port, d, d / "client_ed25519", (d / "host_ed25519.pub").read_text())
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def harness_remote(srv: Server, tmp_path: Path, *args, known_hosts: Path, timeout=1500, popen=False):
    (tmp_path / "ssh_config").touch()  # hermetic: not the user's ~/.ssh/config
    argv = [sys.executable, "-m", "harness", "remote", srv.target, *args, "--identity", str(srv.client_key),
            "--known-hosts", str(known_hosts), "-F", str(tmp_path / "ssh_config"), "--remote-repo", str(REPO)]
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    if popen:
        return subprocess.Popen(argv, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def remote_tmps(text: str) -> set[str]:
    return set(re.findall(r"(/\S*/harness-remote\.\w+)/", text))


def test_unknown_host_is_refused_in_one_line(sshd, tmp_path, results_dir):
    kh = tmp_path / "known_hosts"
    kh.touch()
    p = harness_remote(sshd, tmp_path, "run", str(SMALL), "--results", str(results_dir), known_hosts=kh,
                       timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "unknown host [127.0.0.1]:" in p.stderr and "--accept-new-host-key" in p.stderr
    fp = subprocess.run(["ssh-keygen", "-lf", str(sshd.dir / "host_ed25519.pub")], capture_output=True,
                        text=True).stdout.split()[1]
    assert fp in p.stderr  # the fingerprint to verify
    assert kh.read_text() == "" and list(results_dir.iterdir()) == []


def test_accept_new_records_the_key_and_a_kernel_is_pushed_once(sshd, tmp_path, results_dir):
    """accept-new writes the key into known_hosts; a kernel folder lands in the remote cache by hash and is
    not sent again; the remote's exit code (2: a bad knob) is the local one."""
    kh = tmp_path / "known_hosts"
    k = tmp_path / "kernel"
    (k / "modules/lib/modules/6.0-fake").mkdir(parents=True)
    (k / "bzImage").write_bytes(os.urandom(1 << 20))
    (k / "modules/lib/modules/6.0-fake/fake.ko").write_bytes(b"module")
    h = remote.artifact_hash(remote.manifest(k))
    cached = Path.home() / remote.REMOTE_KERNELS / h
    try:
        args = ["run", str(SMALL), "--kernel", str(k), "--set", "ledger.colour=red", "--results", str(results_dir)]
        p = harness_remote(sshd, tmp_path, *args, "--accept-new-host-key", known_hosts=kh, timeout=120)
        assert p.returncode == 2 and "unknown key 'ledger.colour'" in p.stderr, p.stdout + p.stderr
        assert kh.read_text() == sshd.known_hosts_line()
        assert f"kernel {h}: 2 file(s) pushed, 0 already there" in p.stderr
        assert remote.manifest(cached) == remote.manifest(k)
        q = harness_remote(sshd, tmp_path, *args, known_hosts=kh, timeout=120)
        assert q.returncode == 2 and f"kernel {h}: 0 file(s) pushed, 2 already there" in q.stderr, q.stderr
        assert kh.read_text() == sshd.known_hosts_line()
        tmps = remote_tmps(p.stderr + q.stderr)
        assert len(tmps) == 2 and not any(Path(t).exists() for t in tmps)
        assert list(results_dir.iterdir()) == []
    finally:
        shutil.rmtree(cached, ignore_errors=True)


def test_a_matrix_shard_is_the_same_shard_over_ssh(sshd, tmp_path, results_dir):
    """The matrix and its scenario are pushed byte for byte into a symlink copy of the remote checkout (so
    ../kernels/ resolves there): `--shard 1/3 --list` over SSH lists what it lists here."""
    kh = tmp_path / "known_hosts"
    kh.write_text(sshd.known_hosts_line())
    nightly = REPO / "scenarios/nightly.yaml"
    p = harness_remote(sshd, tmp_path, "matrix", str(nightly), "--shard", "1/3", "--list",
                       "--results", str(results_dir), known_hosts=kh, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    here = subprocess.run([sys.executable, "-m", "harness", "matrix", str(nightly), "--shard", "1/3", "--list"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert here.returncode == 0 and here.stdout.strip() and p.stdout == here.stdout
    assert "/tree/scenarios/nightly.yaml --shard 1/3 --list" in p.stderr
    assert not any(Path(t).exists() for t in remote_tmps(p.stderr)) and list(results_dir.iterdir()) == []


def test_a_small_case_runs_over_ssh_and_its_results_come_back_whole(sshd, tmp_path, results_dir):
    kh = tmp_path / "known_hosts"
    kh.write_text(sshd.known_hosts_line())
    t0 = time.monotonic()
    proc = harness_remote(sshd, tmp_path, "run", str(SMALL), "--results", str(results_dir), known_hosts=kh,
                          popen=True)
    lines = [(time.monotonic(), line) for line in proc.stdout]
    proc.wait(60)
    out = "".join(line for _, line in lines)
    assert proc.returncode == 0, out[-3000:]
    # streamed as it came: the remote's first log line arrived long before the end
    first = next(t for t, line in lines if re.search(r"run \S+: kernel", line))
    assert lines[-1][0] - first > 10, out[-2000:]
    (path,) = list(results_dir.iterdir())
    assert not path.name.endswith(".incomplete")
    run = json.loads((path / "run.json").read_text())
    assert run["verdict"] == "pass" and run["ledger"]["complete"]
    for f in ("summary.txt", "junit.xml", "cases/default/l1-console.log", "cases/default/ledger.jsonl"):
        assert (path / f).is_file(), f
    info = json.loads((path / "remote.json").read_text())
    assert info["remote_repo"] == str(REPO.resolve()) and info["exit_code"] == 0
    assert info["remote_commit"] == info["local_commit"] and info["commits_match"]
    assert info["host"] == sshd.target
    # the remote's temp folder is gone and no QEMU of it is left
    (tmp,) = remote_tmps(out)
    assert not Path(tmp).exists() and qemus_under(Path(tmp)) == []
    # no private key material anywhere in the pulled folder
    secrets = remote.key_material([sshd.client_key, sshd.dir / "host_ed25519"])
    assert len(secrets) >= 6 and remote.secret_hits(path, secrets) == []
    assert not any(".remote-pull-" in p.name for p in results_dir.iterdir())
    print(f"remote case took {time.monotonic() - t0:.1f} s")


def test_interrupt_here_stops_the_remote_run_and_pulls_its_partial_folder(sshd, tmp_path, results_dir):
    """Ctrl-C on the laptop = SIGINT to the remote harness: it reaps its QEMUs, its folder stays .incomplete
    and is still pulled back; exit 3."""
    kh = tmp_path / "known_hosts"
    kh.write_text(sshd.known_hosts_line())
    proc = harness_remote(sshd, tmp_path, "run", str(SMALL), "--results", str(results_dir), known_hosts=kh,
                          popen=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "L2 started" in line:
            break
    tmps = remote_tmps("".join(seen))
    running = qemus_under(Path(next(iter(tmps)))) if tmps else []
    assert running, "".join(seen)
    proc.send_signal(2)
    out = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 3, out[-2000:]
    (path,) = list(results_dir.iterdir())
    assert path.name.endswith(".incomplete") and (path / "remote.json").is_file()
    assert json.loads((path / "run.json").read_text())["interrupted"]
    (tmp,) = tmps
    _, alive = psutil.wait_procs(running, timeout=10)   # gone, or going: a killed QEMU is reaped by its parent
    assert alive == [] and qemus_under(Path(tmp)) == [] and not Path(tmp).exists()
