"""The micro-guest VMM (guest-images/microvm/, static C): built once per change of its sources and cached by a
hash of them, as the L2 image is, by guest-images/microvm/build.sh OUT (one static gcc call, then a check that the
guest code references nothing outside its section)."""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from harness.errors import InfraError
from harness.images.cpio import inputs_hash
from harness.paths import REPO, cache_dir

MICROVM_SRC = REPO / "guest-images/microvm"
# what the build reads (objects or binaries a build left in the folder are not inputs)
SOURCE_SUFFIXES = (".c", ".h", ".S", ".s", ".sh", ".ld", ".lds")


def microvm_sources() -> list[Path]:
    if not MICROVM_SRC.is_dir():
        raise InfraError(f"no micro-guest VMM sources in {MICROVM_SRC.relative_to(REPO)}")
    return sorted(p for p in MICROVM_SRC.rglob("*")
                  if p.is_file() and (p.suffix in SOURCE_SUFFIXES or p.name == "Makefile"))


def microvm_key() -> str:
    return inputs_hash(["microvm-v1", *microvm_sources()])


def build_microvm() -> Path:
    """The static microvm binary (cached by the hash of its sources)."""
    out = cache_dir() / "images" / f"microvm-{microvm_key()}"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".microvm-") as tmp:
        tmp_out = Path(tmp) / "microvm"
        # build.sh: the one gcc call, then a check that the guest code is self-contained
        p = subprocess.run(["sh", str(MICROVM_SRC / "build.sh"), str(tmp_out)], capture_output=True, text=True)
        if p.returncode != 0 or not tmp_out.exists():
            raise InfraError(f"building microvm failed: {(p.stderr or p.stdout).strip()[-400:]}")
        os.chmod(tmp_out, 0o755)
        os.replace(tmp_out, out)  # atomic: a parallel build of the same sources gives the same file
    return out


def list_choreographies(binary: Path) -> str:
    """`microvm --list`: NAME<TAB>description per line."""
    p = subprocess.run([str(binary), "--list"], capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise InfraError(f"microvm --list exited {p.returncode}: {p.stderr.strip()}")
    return p.stdout
