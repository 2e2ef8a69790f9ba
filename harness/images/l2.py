"""L2 initramfs: busybox + the ledger workload (static C) + init, and L2's kernel's virtio_blk module (for the
ledger's DMA disk, ledger.dma_frac; Debian builds it as a module).  Cached by a hash of its inputs."""
from __future__ import annotations

import lzma
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InfraError
from harness.images.cpio import busybox_tree, copy_into, inputs_hash, module_files, pack
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


# L2's kernel modules in the initramfs, loaded by L2's init only when they are needed
L2_MODULES = ["virtio_blk"]


def l2_module_files(l2_kernel_dir: Path) -> list[Path]:
    """L2_MODULES of the kernel L2 boots (with their dependencies, in load order; built-ins are skipped)."""
    rel = next((l2_kernel_dir / "modules/lib/modules").iterdir()).name
    return module_files(l2_kernel_dir / "modules", rel, L2_MODULES)


def build_l2_image(l2_kernel_dir: Path | None = None) -> L2Image:
    """`l2_kernel_dir`: the kernel L2 will boot, whose modules go in (None: no modules, no DMA disk)."""
    mods = l2_module_files(l2_kernel_dir) if l2_kernel_dir else []
    inputs = [GUEST / "ledger/ledger.c", GUEST / "l2/init", Path("/bin/busybox"), *mods]
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
        _install_modules(root, mods)
        pack(root, out)
    return L2Image(out, key)


def _install_modules(root: Path, mods: list[Path]) -> None:
    """Modules as /lib/modules/NAME.ko (busybox insmod reads no compressed module), their load order in
    /lib/modules/order."""
    if not mods:
        return
    d = root / "lib/modules"
    d.mkdir(parents=True, exist_ok=True)
    names = []
    for f in mods:
        name = f.name.removesuffix(".xz")
        if f.suffix == ".xz":
            (d / name).write_bytes(lzma.decompress(f.read_bytes()))
        elif f.suffix == ".ko":
            (d / name).write_bytes(f.read_bytes())
        else:
            raise InfraError(f"unsupported module compression: {f}")
        names.append(name)
    (d / "order").write_text("".join(n + "\n" for n in names))
