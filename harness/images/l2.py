"""L2 initramfs: busybox + the ledger workload (static C) + init.  Cached by a hash of its inputs."""
from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InfraError
from harness.images.cpio import busybox_tree, copy_into, inputs_hash, pack
from harness.paths import REPO, cache_dir

GUEST = REPO / "guest-images"


@dataclass(frozen=True)
class L2Image:
    initramfs: Path
    key: str


def build_static(src: Path, out: Path) -> Path:
    """A guest-side C program, linked statically (the initramfs has no libc of its own)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", str(out), str(src)], capture_output=True, text=True)
    if p.returncode != 0:
        raise InfraError(f"building {src.name} failed: {p.stderr.strip()}")
    return out


def build_ledger(out: Path) -> Path:
    return build_static(GUEST / "ledger/ledger.c", out)


def build_l2_image() -> L2Image:
    inputs = [GUEST / "ledger/ledger.c", GUEST / "l2/init", Path("/bin/busybox")]
    key = inputs_hash(["l2-v1", *inputs])
    out = cache_dir() / "images" / f"l2-{key}.cpio"
    if out.exists():
        return L2Image(out, key)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".l2-") as tmp:
        root = Path(tmp) / "root"
        busybox_tree(root)
        build_ledger(root / "bin/ledger")
        copy_into(root, GUEST / "l2/init", "init", 0o755)
        pack(root, out)
    return L2Image(out, key)
