"""Stage a folder tree and pack it as an uncompressed newc cpio (uncompressed: L1 boots faster under TCG)."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from harness.errors import InfraError
from harness.util import sha256_file  # noqa: F401 (images.l1 imports it from here)


def inputs_hash(parts: list[str | Path]) -> str:
    """Content hash of the image inputs: strings as they are, files by content (in the given order)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path):
            h.update(p.name.encode())
            sha256_file(p, h)
        else:
            h.update(str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def copy_into(root: Path, src: Path, dest: str | None = None, mode: int | None = None) -> Path:
    """Copy a file (symlinks resolved) to root/dest (dest defaults to src's absolute path)."""
    target = root / (dest or str(src)).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(src), target)
    if mode is not None:
        target.chmod(mode)
    return target


def ldd_libs(binary: Path) -> list[Path]:
    """Shared libraries (and the loader) a dynamic binary needs, from ldd."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            libs.append(Path(parts[2]))
        elif parts and parts[0].startswith("/"):
            libs.append(Path(parts[0]))
    return libs


def pack(root: Path, out: Path) -> None:
    """root → out (newc cpio, owned by root), written atomically."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # per process: parallel shards may pack the same image
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    p = subprocess.run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet", "-O", str(tmp)],
                       input="\n".join(["."] + files) + "\n", cwd=root, text=True, capture_output=True)
    if p.returncode != 0:
        raise InfraError(f"cpio failed: {p.stderr.strip()}")
    tmp.rename(out)


def busybox_tree(root: Path) -> None:
    """A minimal root: busybox-static with its applet links."""
    bb = Path("/bin/busybox")
    if not bb.exists():
        raise InfraError("busybox not found: apt-get install busybox-static")
    copy_into(root, bb, "bin/busybox", 0o755)
    applets = subprocess.run([str(bb), "--list-full"], capture_output=True, text=True).stdout.split()
    for a in applets:
        link = root / a
        if a.endswith("busybox") or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(root / "bin/busybox", link.parent))
    for d in ("proc", "sys", "dev", "tmp", "run", "root", "etc"):
        (root / d).mkdir(exist_ok=True)


def module_files(modroot: Path, release: str, names: list[str]) -> list[Path]:
    """Module files (with dependencies, in load order) for `names`; built-ins and absent modules skipped."""
    if not (modroot / "lib/modules" / release / "modules.dep").exists():
        p = subprocess.run(["depmod", "-b", str(modroot), release], capture_output=True, text=True)
        if p.returncode != 0:
            raise InfraError(f"depmod -b {modroot} {release}: {p.stderr.strip()}")
    files: list[Path] = []
    for name in names:
        p = subprocess.run(["modprobe", "-d", str(modroot), "-S", release, "--show-depends", name],
                           capture_output=True, text=True)
        for line in p.stdout.splitlines():
            parts = line.split()
            if parts[:1] == ["insmod"] and Path(parts[1]) not in files:
                files.append(Path(parts[1]))
    return files
