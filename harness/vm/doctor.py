"""`harness doctor`: what this host can do, and what to install or enable for each missing piece."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness.errors import EXIT_INFRA
from harness.paths import cache_dir
from harness.vm.accel import host_cpu_vendor, probe_kvm


def _qemu_version() -> str | None:
    if not shutil.which("qemu-system-x86_64"):
        return None
    out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else None


def _nested() -> str | None:
    for mod in ("kvm_amd", "kvm_intel"):
        p = Path(f"/sys/module/{mod}/parameters/nested")
        if p.exists():
            return f"{mod} nested={p.read_text().strip()}"
    return None


def checks(probe_kernel: Path | None) -> list[tuple[str, bool, str, str]]:
    """(name, ok, value, what to do if not ok)"""
    rows = []
    qv = _qemu_version()
    rows.append(("qemu", qv is not None, qv or "missing", "apt-get install qemu-system-x86"))
    for tool, pkg in (("busybox", "busybox-static"), ("dropbear", "dropbear-bin"), ("cpio", "cpio"),
                      ("depmod", "kmod"), ("gcc", "gcc libc6-dev")):
        ok = shutil.which(tool) is not None or Path(f"/usr/sbin/{tool}").exists()
        rows.append((tool, ok, "present" if ok else "missing", f"apt-get install {pkg}"))
    kvm_ok, why = (probe_kvm(probe_kernel) if probe_kernel else (False, "no kernel to probe with yet"))
    rows.append(("accel kvm", kvm_ok, why, "use bare metal with VT-x/AMD-V enabled in firmware and kvm_intel/"
                 "kvm_amd loaded; the harness falls back to TCG (slower) otherwise"))
    n = _nested()
    rows.append(("nested (L0)", bool(n) and n.endswith(("=1", "=Y")), n or "no kvm module loaded",
                 "modprobe kvm_amd nested=1 (or kvm_intel nested=1); only matters with KVM"))
    cg = Path("/sys/fs/cgroup/cgroup.controllers")
    rows.append(("cgroup v2 (L0)", cg.exists(), cg.read_text().strip() if cg.exists() else "not mounted",
                 "L1 mounts its own cgroup2; on L0 only informative"))
    free = shutil.disk_usage(cache_dir()).free >> 30
    rows.append(("free disk (cache)", free >= 20, f"{free} GiB at {cache_dir()}",
                 "a kernel object tree needs ~6 GiB, each L1 image ~80 MB, swap images are sparse"))
    rows.append(("cpu vendor", True, host_cpu_vendor(), ""))
    rows.append(("cpus", True, str(os.cpu_count()), ""))
    return rows


def cli_doctor(require_kvm: bool = False) -> int:
    from harness.kernel.prebuilt import find_existing
    k = find_existing()
    rows = checks(k / "bzImage" if k else None)
    t = Table(title="harness doctor")
    for col in ("check", "ok", "value", "to fix"):
        t.add_column(col, overflow="fold")
    for name, ok, value, fix in rows:
        t.add_row(name, "yes" if ok else "NO", value, "" if ok else fix)
    Console().print(t)
    if require_kvm and not next(ok for name, ok, *_ in rows if name == "accel kvm"):
        print("harness: error: usable KVM is required here (test-on-hardware) but the probe failed")
        return EXIT_INFRA
    return 0
