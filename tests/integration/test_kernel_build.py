"""Real kernel build of linux-source-6.12 with the shipped fragments (~10 min at -j2 from an empty object tree;
seconds when the cache already holds it). Opt in with HARNESS_KERNEL_BUILD=1."""
import json
import os
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.kernelbuild,
    pytest.mark.skipif(os.environ.get("HARNESS_KERNEL_BUILD") != "1", reason="set HARNESS_KERNEL_BUILD=1"),
]

ROOT = Path(__file__).resolve().parents[2]


def _check_artifact(art: Path) -> dict:
    meta = json.loads((art / "meta.json").read_text())
    rel = meta["release"]
    assert rel.startswith("6.12.")
    assert meta["source"] == "build" and len(meta["config_sha256"]) == 64 and meta["key"] == art.name
    for f in ("bzImage", "vmlinux", "System.map", "config", "build.log"):
        assert (art / f).is_file() and (art / f).stat().st_size > 0, f
    mdir = art / "modules/lib/modules" / rel
    assert (mdir / "modules.dep").is_file()
    kos = {p.name for p in mdir.rglob("*.ko")}
    assert {"kvm.ko", "kvm-amd.ko", "kvm-intel.ko", "zram.ko"} <= kos
    assert not list(mdir.rglob("*.ko.xz")) and not list(mdir.rglob("*.ko.zst"))   # busybox modprobe
    assert not (mdir / "build").exists() and not (mdir / "source").exists()
    first = (art / "build.log").read_text().splitlines()[0]
    assert "make" in first and "bzImage" in first and "git checkout" in first
    cfg = (art / "config").read_text()
    assert "CONFIG_KVM=m" in cfg and "CONFIG_LRU_GEN_ENABLED=y" in cfg and "CONFIG_KPROBE_EVENTS=y" in cfg
    return meta


def test_build_cache_hit_and_incremental():
    from harness.kernel.build import build_kernel

    art = build_kernel(ROOT / "kernels/debian-6.12.yaml")
    meta = _check_artifact(art)
    assert meta["patches"] == []

    log_mtime = (art / "build.log").stat().st_mtime_ns
    assert build_kernel(ROOT / "kernels/debian-6.12.yaml") == art
    assert (art / "build.log").stat().st_mtime_ns == log_mtime, "a second build of the same inputs must be a cache hit"

    art2 = build_kernel(ROOT / "kernels/tdp-mmu-oneline.yaml")
    meta2 = _check_artifact(art2)
    assert art2 != art and meta2["config_sha256"] == meta["config_sha256"]
    assert [p["subject"] for p in meta2["patches"]] == \
        ["KVM: x86/mmu: add a comment to tdp_mmu.c (harness test fixture)"]
    assert meta2["objtree"]["path"] == meta["objtree"]["path"]        # same object tree, make decided
    if "make_s" in meta2["times"] and meta2["objtree"]["state"] == "reused":
        assert meta2["times"]["make_s"] < 120
