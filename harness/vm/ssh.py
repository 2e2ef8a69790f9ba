"""SSH into L1 with paramiko: a key pair made per run, L1's host key pinned from its image build.

Every command and every stream has a deadline: a frozen L1 (QEMU stopped, a `memory.reclaim` write that never
returns, a stuck `cat`) ends in an InfraError naming the command, never in a hang.  Once one deadline passes or
the connection drops, the shell is marked broken and every later call fails at once, so the rest of a run's
teardown does not wait a full timeout per command on an L1 that is already known gone.
"""
from __future__ import annotations

import base64
import io
import socket
import time
from dataclasses import dataclass, field
from typing import Iterator

import paramiko

from harness.errors import InfraError

POLL_S = 0.02


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


class Stream:
    """An L1 command's stdout consumed as it comes, never blocking: `read_ready()` for bytes (the trace's gzip
    stream), `lines(deadline)` for complete lines (L2's console), each byte also copied to `sink` if given."""

    def __init__(self, chan: paramiko.Channel, what: str, sink=None):
        self.chan = chan
        self.what = what
        self.sink = sink
        self._partial = b""

    def read_ready(self) -> bytes:
        """Whatever is buffered now (b'' when nothing is); raises InfraError when the channel broke."""
        out = b""
        try:
            while self.chan.recv_ready():
                data = self.chan.recv(1 << 18)
                if not data:
                    break
                out += data
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise InfraError(f"SSH stream '{self.what}' from L1 broke: {e}") from None
        if out and self.sink:
            self.sink.write(out)
            self.sink.flush()
        return out

    def ended(self) -> bool:
        return self.chan.closed or (self.chan.exit_status_ready() and not self.chan.recv_ready())

    def lines(self, deadline: float) -> Iterator[bytes]:
        """Complete lines until the stream ends or the deadline (monotonic) passes; a partial line waits for
        its end in the next call, except when the stream has ended."""
        while True:
            data = self.read_ready()
            if data:
                *whole, self._partial = (self._partial + data).split(b"\n")
                yield from whole
            elif self.ended():
                if self._partial:
                    yield self._partial
                    self._partial = b""
                return
            if time.monotonic() >= deadline:
                return
            if not data:
                time.sleep(POLL_S)

    def close(self) -> None:
        try:
            self.chan.close()
        except Exception:  # closing a channel of a dead transport
            pass


@dataclass
class L1Shell:
    port: int
    key: paramiko.PKey
    host_key_pub: str
    client: paramiko.SSHClient | None = None
    default_timeout: float = 60.0
    broken: str | None = None  # why the shell is unusable (first deadline or connection loss)
    streams: list[Stream] = field(default_factory=list)

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
                transport = c.get_transport()
                assert transport is not None  # connect() returned: the transport is up
                transport.set_keepalive(5)
                self.client = c
                return time.monotonic() - t0
            except (paramiko.SSHException, OSError, EOFError) as e:
                last = str(e)
                c.close()
                time.sleep(0.5)
        raise InfraError(f"SSH to L1 did not come up within {timeout:.0f} s ({last})")

    def _transport(self, what: str) -> paramiko.Transport:
        if self.broken:
            raise InfraError(f"L1 unusable ({self.broken}); not running '{what[:80]}'")
        t = self.client.get_transport() if self.client else None
        if t is None or not t.is_active():
            self.broken = "SSH connection to L1 lost"
            raise InfraError(f"SSH connection to L1 lost before '{what[:80]}'")
        return t

    def _open(self, what: str, timeout: float) -> paramiko.Channel:
        try:
            return self._transport(what).open_session(timeout=min(10.0, max(timeout, 1.0)))
        except (paramiko.SSHException, OSError, EOFError) as e:
            self.broken = f"no new SSH channel: {e}"
            raise InfraError(f"L1 did not open an SSH channel for '{what[:80]}': {e}") from None

    def run(self, cmd: str, timeout: float | None = None, check: bool = True, stdin: bytes | None = None) -> str:
        """Run `cmd` in L1; InfraError when it has not ended `timeout` seconds after it was sent."""
        timeout = self.default_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        chan = self._open(cmd, timeout)
        out, err = io.BytesIO(), io.BytesIO()
        try:
            chan.settimeout(max(0.1, timeout))
            chan.exec_command(cmd)
            if stdin is not None:
                chan.sendall(stdin)
                chan.shutdown_write()
            while True:
                if chan.recv_ready():
                    out.write(chan.recv(65536))
                elif chan.recv_stderr_ready():
                    err.write(chan.recv_stderr(65536))
                elif chan.exit_status_ready():
                    break
                elif time.monotonic() > deadline:
                    raise socket.timeout
                else:
                    time.sleep(POLL_S)
            rc = chan.recv_exit_status()
        except (socket.timeout, TimeoutError):
            self.broken = f"'{cmd[:60]}' did not end within {timeout:.0f} s"
            raise InfraError(f"L1 command timed out after {timeout:.0f} s: {cmd[:120]}") from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            self.broken = f"SSH connection lost: {e}"
            raise InfraError(f"SSH connection to L1 lost during '{cmd[:80]}': {e}") from None
        finally:
            chan.close()
        text = out.getvalue().decode(errors="replace")
        if check and rc != 0:
            raise InfraError(f"L1 command failed (exit {rc}): {cmd[:120]}: {err.getvalue().decode(errors='replace').strip()[-300:]}")
        return text

    def try_run(self, cmd: str, timeout: float | None = None) -> tuple[str | None, str | None]:
        """(output, None), or (None, why) when L1 could not answer: for facts a run records but can live without."""
        try:
            return self.run(cmd, timeout=timeout, check=False), None
        except InfraError as e:
            return None, str(e)

    def responsive(self, timeout: float = 10.0) -> str | None:
        """None when L1 answers a trivial command within `timeout`; else why not."""
        try:
            self.run("true", timeout=timeout)
            return None
        except InfraError as e:
            return str(e)

    def stream(self, cmd: str, sink=None) -> Stream:
        """A command whose stdout is consumed incrementally (L2 console, trace pipe)."""
        chan = self._open(cmd, 10)
        chan.exec_command(cmd)
        chan.settimeout(0.0)
        s = Stream(chan, cmd[:60], sink)
        self.streams.append(s)
        return s

    def close(self) -> None:
        for s in self.streams:
            s.close()
        if self.client:
            self.client.close()
