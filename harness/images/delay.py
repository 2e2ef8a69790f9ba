"""The delay-injection module (guest-images/delay/kvmdelay.c): built against the kernel under test's object tree,
shipped to L1 and loaded by guest-images/l1/setup-host.sh after kvm, before the workload (scenario knob `delays`,
docs/races.md).  Cached by a hash of its sources, the kernel release and the kernel's .config."""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.errors import InfraError, InputError
from harness.images.cpio import inputs_hash
from harness.paths import REPO, cache_dir
from harness.util import file_lock

SOURCES = [REPO / "guest-images/delay/kvmdelay.c", REPO / "guest-images/delay/Kbuild"]
L1_PATH = "/run/kvmdelay.ko"  # where L0 writes the module in L1 (setup-host.sh's DELAY_KO)


def objtree_of(meta: dict) -> Path:
    """The object tree the kernel was built in (its meta.json): the harness's (KERNEL.yaml, --tree --build) or
    the developer's own built tree (--tree); prebuilt kernels (Debian's, --kernel BZIMAGE) have none."""
    source = meta.get("source")
    obj = (meta.get("objtree") or {}).get("path") if source in ("build", "tree-build") else \
        meta.get("tree") if source == "tree" else None
    if not obj:
        raise InputError("delays need a kernel with its object tree (harness build, --tree, --tree --build) to build "
                         f"the delay module against; this kernel is {source or 'unknown'!r} (Debian's prebuilt "
                         "kernels would need their linux-headers package: not supported yet)")
    return Path(obj)


def tree_lock(objdir: Path, source: str) -> Path:
    """The lock the kernel build holds while it makes in this object tree: build.py's cache/src/<tree id>.lock
    (its object tree is <tree id>-<config hash>), treebuild.py's cache/src/<repository key>.lock for --tree
    --build (its object tree is named by the key itself)."""
    name = objdir.name if source == "tree-build" else objdir.name.rsplit("-", 1)[0]
    return cache_dir() / "src" / f"{name}.lock"


def build_delay_module(kernel_dir: Path) -> Path:
    """kvmdelay.ko for the kernel in `kernel_dir` (cached); an InfraError names make's last lines on failure."""
    meta = json.loads((kernel_dir / "meta.json").read_text())
    objdir = objtree_of(meta)
    key = inputs_hash(["kvmdelay-v1", meta.get("release", ""), meta.get("config_sha256", ""), *SOURCES])
    out = cache_dir() / "modules" / f"kvmdelay-{key}.ko"
    if out.exists():
        return out
    if not (objdir / "Module.symvers").exists():
        raise InfraError(f"object tree {objdir} has no Module.symvers: rebuild the kernel (harness build)")
    out.parent.mkdir(parents=True, exist_ok=True)
    # the harness's shared object trees are rebuilt by other runs: hold the build's lock (a developer's tree: theirs)
    source = meta.get("source", "")
    lock = tree_lock(objdir, source) if source in ("build", "tree-build") else out.with_suffix(".lock")
    with tempfile.TemporaryDirectory(prefix="kvmdelay-", dir=out.parent) as tmp, file_lock(lock):
        for src in SOURCES:
            shutil.copy2(src, Path(tmp) / src.name)
        p = subprocess.run(["make", "-s", "-C", str(objdir), f"M={tmp}", "modules"], capture_output=True,
                           text=True, check=False)
        ko = Path(tmp) / "kvmdelay.ko"
        if p.returncode != 0 or not ko.exists():
            raise InfraError(f"building the delay module against {objdir} failed: "
                             f"{(p.stderr or p.stdout).strip()[-600:]}")
        shutil.copy2(ko, out.with_suffix(".tmp"))
        out.with_suffix(".tmp").rename(out)
    return out
