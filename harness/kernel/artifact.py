"""The cache artifact of a developer's kernel (the layout of harness.kernel.build: bzImage,
modules/lib/modules/<release>/, config, meta.json) and its module tree: any compression in, plain .ko out."""
from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import time
from pathlib import Path

from harness.errors import InputError
from harness.kernel.models import KernelMeta
from harness.paths import cache_dir
from harness.util import decompressed

HARNESS_FRAGMENTS = ("kvm-host.config", "tracing.config")
MINIMAL_FRAGMENT = "minimal-l1.config"


# ----------------------------------------------------------------------------------------------------------
# modules: any compression in, plain .ko out (busybox modprobe in L1 reads only plain modules)
# ----------------------------------------------------------------------------------------------------------
def module_bytes(path: Path) -> bytes:
    """A module file's plain ELF bytes, whatever its compression (.ko, .ko.xz, .ko.gz, .ko.zst)."""
    try:
        return decompressed(path)
    except ValueError as e:
        raise InputError(f"module {e}") from None


def _decompress(path: Path) -> Path:
    out = path.with_suffix("")                   # x.ko.zst -> x.ko
    out.write_bytes(module_bytes(path))
    path.unlink()
    return out


def normalize_modules(modroot: Path, release: str) -> int:
    """Decompress every .ko.{zst,gz,xz} under modroot/lib/modules/<release> and run depmod; returns how many
    were compressed.  A module that cannot be read is an input error (exit 2), never an infrastructure one."""
    from harness.kernel.debian import depmod
    mdir = modroot / "lib/modules" / release
    n = 0
    for f in sorted(mdir.rglob("*.ko.*")):
        if f.suffix in (".zst", ".gz", ".xz"):
            try:
                _decompress(f)
            except (OSError, lzma.LZMAError, EOFError) as e:
                raise InputError(f"module {f.name} cannot be decompressed: {e}") from None
            n += 1
    for link in ("build", "source"):
        if (mdir / link).is_symlink():
            (mdir / link).unlink()
    depmod(modroot, release)
    return n


# ----------------------------------------------------------------------------------------------------------
# artifacts
# ----------------------------------------------------------------------------------------------------------
def _kernels() -> Path:
    d = cache_dir() / "kernels"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _finish(tmp: Path, key: str, meta: dict) -> Path:
    """meta.json into tmp, tmp renamed to cache/kernels/<key> (an existing one with the same key wins)."""
    final = _kernels() / key
    meta = dict(meta, key=key, built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    KernelMeta.parse(meta, f"{tmp}/meta.json").write(tmp / "meta.json")
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "meta.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def slug(path: Path) -> str:
    path = Path(path).resolve()
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in path.name)[:40] or "tree"
    return f"tree-{name}-{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"


def is_bzimage(path: Path) -> bool:
    """An x86 boot image: the "HdrS" magic of the boot protocol at offset 0x202."""
    try:
        with open(path, "rb") as f:
            f.seek(0x202)
            return f.read(4) == b"HdrS"
    except OSError:
        return False
