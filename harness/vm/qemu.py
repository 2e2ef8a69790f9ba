"""L1's QEMU: command line, serial console captured to a file from the first byte, QMP, lifetime.

Every QEMU we start is registered; `reap_all()` (called on exit, error and Ctrl-C) kills each one's whole
process tree with psutil, so no run leaves a QEMU behind.
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from harness.errors import InfraError
from harness.util import kill_procs, kill_tree  # noqa: F401 (callers import them from here too)

_LIVE: list["QemuVM"] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class VMSpec:
    kernel: Path
    initrd: Path
    append: str
    accel_args: tuple[str, ...]
    memory_mb: int = 4096
    cpus: int = 1
    swap_disk: Path | None = None
    extra: tuple[str, ...] = ()


def command_line(spec: VMSpec, console: Path, qmp_sock: Path, ssh_port: int) -> list[str]:
    """Pure: the exact QEMU command for L1 (logged at the top of the console file's sidecar)."""
    cmd = ["qemu-system-x86_64", *spec.accel_args, "-m", str(spec.memory_mb), "-smp", str(spec.cpus),
           "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none", "-no-reboot",
           "-chardev", f"file,id=con0,path={console}", "-serial", "chardev:con0",
           "-qmp", f"unix:{qmp_sock},server=on,wait=off",
           "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22", "-device", "virtio-net-pci,netdev=n0",
           "-kernel", str(spec.kernel), "-initrd", str(spec.initrd), "-append", spec.append]
    if spec.swap_disk:
        cmd += ["-drive", f"file={spec.swap_disk},if=virtio,format=raw,cache=unsafe,discard=unmap"]
    return cmd + list(spec.extra)


@dataclass
class QemuVM:
    spec: VMSpec
    workdir: Path
    console: Path = field(init=False)
    qmp_sock: Path = field(init=False)
    ssh_port: int = field(init=False)
    proc: subprocess.Popen | None = None
    cmd: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.console = self.workdir / "l1-console.log"
        # unix socket paths are limited to ~107 bytes: keep it short, outside results/
        self.qmp_sock = Path(f"/tmp/harness-qmp-{os.getpid()}-{id(self) & 0xffff}.sock")
        self.ssh_port = free_port()

    def start(self) -> None:
        self.cmd = command_line(self.spec, self.console, self.qmp_sock, self.ssh_port)
        self.stderr_path = self.workdir / "l1-qemu.stderr"
        self._stderr = open(self.stderr_path, "wb")
        # own process group: Ctrl-C on the terminal reaches us, and we decide how QEMU ends
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self._stderr,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        _LIVE.append(self)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_console(self, marker: str, timeout: float, fail_markers: tuple[str, ...] = ()) -> float:
        """Wait until `marker` is on the console; return seconds waited.  QEMU death or a fail marker → InfraError."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            text = self.console_text()
            if marker in text:
                return time.monotonic() - t0
            for fm in fail_markers:
                if fm in text:
                    raise InfraError(f"L1 console shows '{fm}' before '{marker}'")
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise InfraError(f"L1 QEMU exited (code {code}) before '{marker}': {self.stderr_tail()}")
            time.sleep(0.1)
        raise InfraError(f"L1 did not print '{marker}' within {timeout:.0f} s")

    def stderr_tail(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace").strip()[-300:]
        except (OSError, AttributeError):
            return ""

    def qmp_quit(self, timeout: float = 10.0) -> None:
        """Power L1 off through QMP; fall back to killing the process tree.  A stopped QEMU never answers QMP."""
        if not self.alive():
            return
        if process_state(self):
            self.kill()
            return
        try:
            from qemu.qmp.legacy import QEMUMonitorProtocol
            qmp = QEMUMonitorProtocol(str(self.qmp_sock))
            qmp.connect()
            qmp.cmd("quit")
            qmp.close()
            if self.proc:
                self.proc.wait(timeout=timeout)
        except Exception:
            pass
        self.kill()

    def kill(self) -> None:
        if self.proc is None:
            return
        kill_tree(self.proc.pid)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if self in _LIVE:
            _LIVE.remove(self)
        try:
            self._stderr.close()
            self.qmp_sock.unlink(missing_ok=True)
        except OSError:
            pass


def reap_all() -> None:
    for vm in list(_LIVE):
        vm.kill()


atexit.register(reap_all)


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP behave like Ctrl-C: unwind through the run's finally blocks, which reap QEMU."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)
    # A job started in the background by a non-interactive shell (nohup, CI wrappers) inherits SIGINT ignored,
    # and Python then never raises KeyboardInterrupt: an explicit `kill -INT` must still stop the run cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def process_state(vm: "QemuVM") -> str | None:
    """Why L1's QEMU cannot answer — exited or stopped (SIGSTOP, a debugger) — or None when it runs."""
    if vm.proc is None:
        return "L1's QEMU was never started"
    if vm.proc.poll() is not None:
        return f"L1's QEMU has exited (code {vm.proc.returncode})"
    try:
        if psutil.Process(vm.proc.pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
            return "L1's QEMU is stopped (SIGSTOP or a debugger): L1 cannot run"
    except psutil.NoSuchProcess:
        return "L1's QEMU has exited"
    return None
