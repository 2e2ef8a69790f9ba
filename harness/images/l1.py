"""L1 initramfs: busybox, dropbear (host key made at build and pinned by L0), the kernel's own modules (kvm,
kvm_amd/kvm_intel, zram, virtio) and the guest L1 runs: for the Linux L2, qemu-system-x86_64 with its libraries
and firmware and the L2 kernel + initramfs; for the micro-guest, only the static microvm binary (no QEMU, no L2:
a much smaller image, docs/microguest.md).  Cached by a hash of every input; unchanged inputs rebuild nothing."""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InfraError, InputError
from harness.images.cpio import busybox_tree, copy_into, inputs_hash, ldd_libs, module_files, pack, sha256_file
from harness.images.l2 import L2Image, build_static
from harness.paths import REPO, cache_dir
from harness.util import decompressed

GUEST = REPO / "guest-images"
L1_MODULES = ["kvm_amd", "kvm_intel", "zram", "virtio_net", "virtio_blk", "virtio_pci"]
QEMU = Path("/usr/bin/qemu-system-x86_64")
# Firmware the L2 QEMU needs with -nodefaults -vga none -kernel (bios-256k.bin lives in seabios on Debian).
FIRMWARE = ["bios-256k.bin", "linuxboot_dma.bin", "linuxboot.bin", "kvmvapic.bin", "multiboot_dma.bin"]
FIRMWARE_DIRS = [Path("/usr/share/qemu"), Path("/usr/share/seabios")]


@dataclass(frozen=True)
class L1Image:
    initramfs: Path
    host_key_pub: str  # "ecdsa-sha2-nistp256 AAAA..."
    key: str
    modules: list[str]


def _run(cmd: list[str], **kw) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise InfraError(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return p.stdout


def _install_modules(root: Path, modroot: Path, release: str) -> list[str]:
    modroot = modroot.resolve()
    src_base = modroot / "lib/modules" / release
    dst_base = root / "lib/modules" / release
    loaded = []
    for f in module_files(modroot, release, L1_MODULES):
        rel = f.relative_to(src_base)
        dst = dst_base / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if f.suffix in (".xz", ".gz", ".zst"):  # busybox modprobe cannot read compressed modules
            dst = dst.with_suffix("")
            try:
                dst.write_bytes(decompressed(f))
            except ValueError as e:
                raise InputError(f"kernel module {e}") from None
        else:
            shutil.copy2(f, dst)
        loaded.append(dst.name)
    for extra in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (src_base / extra).exists():
            shutil.copy2(src_base / extra, dst_base / extra)
    _run(["depmod", "-b", str(root), release])
    return loaded


def _firmware(name: str) -> Path:
    for d in FIRMWARE_DIRS:
        if (d / name).exists():
            return d / name
    raise InfraError(f"QEMU firmware {name} not found (apt-get install qemu-system-x86 seabios)")


def build_l1_image(kernel_dir: Path, release: str, l2: L2Image | None, l2_kernel: Path | None,
                   microvm: Path | None = None) -> L1Image:
    """L1's image with the Linux L2 (`l2` and `l2_kernel`, and QEMU to run it) or with the micro-guest VMM
    (`microvm`, l2 None)."""
    if (l2 is None) == (microvm is None):
        raise ValueError("an L1 image carries either the Linux L2 or the micro-guest")
    scripts = sorted(p for p in (GUEST / "l1").iterdir() if p.is_file())
    kernel_id = (kernel_dir / "meta.json").read_text() if (kernel_dir / "meta.json").exists() else ""
    inputs: list[str | Path]
    if l2 is not None and l2_kernel is not None:
        inputs = ["l1-v1", release, kernel_id, sha256_file(kernel_dir / "bzImage"), l2.key,
                  sha256_file(l2_kernel), QEMU, Path("/usr/sbin/dropbear"), Path("/bin/busybox"), *scripts,
                  ",".join(L1_MODULES)]
    elif microvm is not None:
        inputs = ["l1-micro-v1", release, kernel_id, sha256_file(kernel_dir / "bzImage"), microvm,
                  Path("/usr/sbin/dropbear"), Path("/bin/busybox"), *scripts, ",".join(L1_MODULES)]
    else:
        raise ValueError("an L1 image with the Linux L2 needs L2's kernel (l2_kernel)")
    key = inputs_hash(inputs)
    out_dir = cache_dir() / "images" / f"l1-{key}"
    if (out_dir / "manifest.json").exists():
        m = json.loads((out_dir / "manifest.json").read_text())
        return L1Image(out_dir / "initramfs.cpio", m["host_key_pub"], key, m["modules"])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".l1-") as tmp:
        t = Path(tmp)
        art = t / "out"
        art.mkdir()
        root = t / "root"
        busybox_tree(root)
        copy_into(root, GUEST / "l1/init", "init", 0o755)
        for s in scripts:
            if s.suffix == ".c":  # guest-side helpers in C (trace-reader.c -> /harness/trace-reader)
                build_static(s, root / "harness" / s.stem)
            elif s.name != "init":
                copy_into(root, s, f"harness/{s.name}", 0o755)
        modules = _install_modules(root, kernel_dir / "modules", release)
        # SSH: dropbear with a host key made here and pinned by L0.
        _install_binary(root, Path("/usr/sbin/dropbear"))
        (root / "etc/dropbear").mkdir(parents=True)
        _run(["dropbearkey", "-t", "ecdsa", "-s", "256", "-f", str(root / "etc/dropbear/dropbear_ecdsa_host_key")])
        pub = next(line for line in _run(["dropbearkey", "-y", "-f",
                                           str(root / "etc/dropbear/dropbear_ecdsa_host_key")]).splitlines()
                   if line.startswith("ecdsa-"))
        pub = " ".join(pub.split()[:2])
        (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        (root / "etc/group").write_text("root:x:0:\n")
        (root / "etc/shells").write_text("/bin/sh\n")
        guest = _install_guest(root, l2, l2_kernel, microvm)
        pack(root, art / "initramfs.cpio")
        manifest = {"key": key, "release": release, "host_key_pub": pub, "modules": modules, **guest,
                    "bytes": (art / "initramfs.cpio").stat().st_size}
        (art / "manifest.json").write_text(json.dumps(manifest, indent=2))
        try:
            art.rename(out_dir)
        except OSError:
            # another run (a parallel shard) finished the same image first: use its image, host key included
            if not (out_dir / "manifest.json").exists():
                raise
            m = json.loads((out_dir / "manifest.json").read_text())
            return L1Image(out_dir / "initramfs.cpio", m["host_key_pub"], key, m["modules"])
    prune_l1_images(keep=12)
    return L1Image(out_dir / "initramfs.cpio", pub, key, modules)


def _install_binary(root: Path, binary: Path) -> None:
    """A dynamic binary with its libraries and loader."""
    copy_into(root, binary, mode=0o755)
    for lib in ldd_libs(binary):
        copy_into(root, lib)


def _install_guest(root: Path, l2: L2Image | None, l2_kernel: Path | None, microvm: Path | None) -> dict:
    """The guest's part of L1's image; returns what the manifest records of it."""
    if l2 is not None and l2_kernel is not None:
        _install_binary(root, QEMU)
        for fw in FIRMWARE:
            copy_into(root, _firmware(fw), f"usr/share/qemu/{fw}")
        copy_into(root, l2_kernel, "l2/bzImage")
        copy_into(root, l2.initramfs, "l2/initramfs.cpio")
        return {"guest": "linux", "l2_key": l2.key, "qemu": _run([str(QEMU), "--version"]).splitlines()[0]}
    if microvm is None:
        raise ValueError("an L1 image needs a guest")
    copy_into(root, microvm, "harness/microvm", 0o755)  # static: no libraries, no QEMU, no L2
    return {"guest": "micro", "microvm": microvm.name}


def prune_l1_images(keep: int) -> None:
    """Each L1 image is ~75 MB and a new one appears whenever a kernel or a guest script changes: keep the
    most recently used few (a cache hit touches nothing, so mtime = creation time)."""
    imgs = sorted((p for p in (cache_dir() / "images").glob("l1-*") if (p / "manifest.json").exists()),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for old in imgs[keep:]:
        shutil.rmtree(old, ignore_errors=True)
