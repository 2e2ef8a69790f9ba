"""Shared helpers at the bottom of the import graph: atomic writes, file hashes, a file lock, the harness's own
change identity, process reaping.

A leaf: imports nothing of the project (tests/unit/test_layers.py holds it to that), so any stage may use it
without an import cycle.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
UNKNOWN_COMMIT = "?"


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write `path` whole or not at all: a reader never sees half a file, even with two writers at once (each
    writes its own temporary file in the same folder, then renames it over `path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: object) -> None:
    """`obj` as indented JSON, atomically (values JSON cannot hold, such as paths, as their text)."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def sha256_file(path: Path, h: "hashlib._Hash | None" = None) -> str:
    """The file's sha256 hex digest, read in 1 MiB chunks; given `h`, feeds the file into it and returns ''."""
    own = h is None
    digest = hashlib.sha256() if h is None else h
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() if own else ""


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held for the `with` block (flock on `path`, created if missing): processes that
    share a cache entry take turns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _git(repo: Path, *args: str) -> str | None:
    try:
        # --no-optional-locks: reading the identity never refreshes (or waits on) another process's index
        p = subprocess.run(["git", "--no-optional-locks", "-C", str(repo), *args], capture_output=True, text=True)
    except OSError:
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def change_identity(repo: Path = REPO, short: bool = False) -> str:
    """The commit a tree's code is, as `git describe --always --dirty` would say it: HEAD's hash, with '-dirty'
    when a tracked file differs from it (so a result never names a clean commit for a modified tree); '?' outside
    a git checkout.  Untracked files are not counted (results/, caches)."""
    rev = _git(repo, "rev-parse", *(["--short"] if short else []), "HEAD")
    if not rev:
        return UNKNOWN_COMMIT
    dirty = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return rev + ("-dirty" if dirty else "")


def commit_of(identity: str) -> str:
    """The commit part of a change identity ('abc123-dirty' → 'abc123')."""
    return identity.removesuffix("-dirty")


def kill_procs(procs: Iterable[psutil.Process], wait_s: float = 5) -> list[psutil.Process]:
    """SIGKILL each process (ones already gone are fine) and wait up to `wait_s` for them; returns the ones still
    alive after that (none, unless a process sits in uninterruptible sleep)."""
    procs = list(procs)
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=wait_s)
    return alive


def kill_tree(pid: int, wait_s: float = 5) -> list[psutil.Process]:
    """Kill a process and everything it started (children first found, then the process)."""
    try:
        parent = psutil.Process(pid)
        procs = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return []
    return kill_procs(procs, wait_s)


def reap_descendants(wait_s: float = 10) -> list[psutil.Process]:
    """Kill every process this one started, however deep (a make, a tar, a QEMU), and wait for them."""
    return kill_procs(psutil.Process().children(recursive=True), wait_s)


def decompressed(path: Path) -> bytes:
    """A file's bytes with its .xz / .gz / .zst compression undone (kernel modules: busybox modprobe in L1 reads
    only plain .ko files); ValueError when they cannot be read."""
    import gzip
    import lzma
    try:
        if path.suffix == ".xz":
            return lzma.decompress(path.read_bytes())
        if path.suffix == ".gz":
            return gzip.decompress(path.read_bytes())
    except (lzma.LZMAError, OSError, EOFError) as e:
        raise ValueError(f"{path.name} cannot be decompressed: {e}") from None
    if path.suffix == ".zst":
        r = subprocess.run(["zstd", "-q", "-d", "-c", str(path)], check=False, capture_output=True)
        if r.returncode != 0:
            raise ValueError(f"{path.name} cannot be decompressed (zstd: "
                             f"{r.stderr.decode(errors='replace').strip() or 'not installed?'})")
        return r.stdout
    return path.read_bytes()


def host_load() -> dict[str, object]:
    """What else the machine is doing: a figure measured next to other QEMUs is slower, and says so."""
    import psutil
    qemus = sum(1 for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("qemu-system"))
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "qemu_processes": qemus,
            "mem_available_mib": psutil.virtual_memory().available >> 20}
