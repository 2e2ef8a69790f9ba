"""SSH into L1 with paramiko: a key pair made per run, L1's host key pinned from its image build."""
from __future__ import annotations

import base64
import io
import socket
import time
from dataclasses import dataclass

import paramiko

from harness.errors import InfraError


def make_run_key() -> paramiko.ECDSAKey:
    return paramiko.ECDSAKey.generate(bits=256)


def key_cmdline_arg(key: paramiko.PKey) -> str:
    """The per-run public key as a kernel command-line word: harness.key=TYPE:BASE64."""
    return f"harness.key={key.get_name()}:{key.get_base64()}"


def pinned_host_key(pub: str) -> paramiko.PKey:
    kind, b64 = pub.split()[:2]
    return paramiko.ECDSAKey(data=base64.b64decode(b64)) if kind.startswith("ecdsa") else paramiko.PKey.from_type_string(kind, base64.b64decode(b64))


class PinnedHostKey(paramiko.MissingHostKeyPolicy):
    def __init__(self, expected: paramiko.PKey):
        self.expected = expected

    def missing_host_key(self, client, hostname, key):
        if key.get_base64() != self.expected.get_base64():
            raise paramiko.SSHException(f"L1 host key mismatch for {hostname}: got {key.get_fingerprint().hex()}")


@dataclass
class L1Shell:
    port: int
    key: paramiko.PKey
    host_key_pub: str
    client: paramiko.SSHClient | None = None

    def connect(self, timeout: float, alive=lambda: True) -> float:
        """Retry until L1's dropbear answers; return seconds waited."""
        t0 = time.monotonic()
        last = ""
        while time.monotonic() - t0 < timeout:
            if not alive():
                raise InfraError("L1 QEMU died while waiting for SSH")
            c = paramiko.SSHClient()
            c.set_missing_host_key_policy(PinnedHostKey(pinned_host_key(self.host_key_pub)))
            try:
                c.connect("127.0.0.1", port=self.port, username="root", pkey=self.key, timeout=5,
                          banner_timeout=10, auth_timeout=10, allow_agent=False, look_for_keys=False)
                c.get_transport().set_keepalive(5)
                self.client = c
                return time.monotonic() - t0
            except (paramiko.SSHException, OSError, EOFError) as e:
                last = str(e)
                c.close()
                time.sleep(0.5)
        raise InfraError(f"SSH to L1 did not come up within {timeout:.0f} s ({last})")

    def run(self, cmd: str, timeout: float = 60.0, check: bool = True, stdin: bytes | None = None) -> str:
        if self.client is None or not self.client.get_transport() or not self.client.get_transport().is_active():
            raise InfraError("SSH connection to L1 lost")
        try:
            chan = self.client.get_transport().open_session(timeout=10)
            chan.settimeout(timeout)
            chan.exec_command(cmd)
            if stdin is not None:
                chan.sendall(stdin)
                chan.shutdown_write()
            out, err = io.BytesIO(), io.BytesIO()
            while True:
                if chan.recv_ready():
                    out.write(chan.recv(65536))
                elif chan.recv_stderr_ready():
                    err.write(chan.recv_stderr(65536))
                elif chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                else:
                    time.sleep(0.01)
            rc = chan.recv_exit_status()
            chan.close()
        except (socket.timeout, TimeoutError):
            raise InfraError(f"L1 command timed out after {timeout:.0f} s: {cmd[:120]}")
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise InfraError(f"SSH connection to L1 lost during '{cmd[:80]}': {e}")
        text = out.getvalue().decode(errors="replace")
        if check and rc != 0:
            raise InfraError(f"L1 command failed (exit {rc}): {cmd[:120]}: {err.getvalue().decode(errors='replace').strip()[-300:]}")
        return text

    def stream(self, cmd: str) -> paramiko.Channel:
        """A channel whose stdout is consumed incrementally (L2 console, trace pipe)."""
        if self.client is None:
            raise InfraError("SSH connection to L1 lost")
        chan = self.client.get_transport().open_session(timeout=10)
        chan.exec_command(cmd)
        chan.settimeout(0.0)
        return chan

    def close(self) -> None:
        if self.client:
            self.client.close()
