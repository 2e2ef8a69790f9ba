"""Pick the accelerator once, by a real probe (kvm-unit-tests' arch-run.bash style).

/dev/kvm existing proves nothing (a paravirtual kvm_pvm cannot boot a normal kernel), so the probe boots the
kernel under test with -enable-kvm and no initramfs: reaching the "VFS: Unable to mount root" panic means KVM
runs a real kernel.  Anything else → TCG (-accel tcg,thread=multi -cpu max), with the reason recorded.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.util import write_json

QEMU = "qemu-system-x86_64"
PROBE_MARKERS = ("VFS: Unable to mount root", "Kernel panic - not syncing")


@dataclass(frozen=True)
class Accel:
    mode: str  # "kvm" | "tcg"
    reason: str
    cpu_vendor: str  # L0's vendor_id; L1's own is recorded by the scenario
    qemu_args: tuple[str, ...]
    timeout_scale: float  # TCG is slower: every guest timeout is multiplied by this

    def to_json(self) -> dict:
        d = asdict(self)
        d["qemu_args"] = list(self.qemu_args)
        return d


TCG = ("-accel", "tcg,thread=multi,tb-size=512", "-cpu", "max")
KVM = ("-enable-kvm", "-cpu", "host")


def host_cpu_vendor(cpuinfo: str | None = None) -> str:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return "unknown"
    for line in cpuinfo.splitlines():
        if line.startswith("vendor_id"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def host_tsc_khz(cpuinfo: str | None = None, sysfs_khz: str | None = None) -> int | None:
    """L0's TSC rate in kHz: the kernel's own tsc_freq_khz when it publishes it, else cpu0's "cpu MHz" (steady on
    a VM; a frequency-scaled bare-metal host does not run L1 under TCG).  None when neither is readable."""
    if sysfs_khz is None:
        try:
            sysfs_khz = Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz").read_text()
        except OSError:
            sysfs_khz = ""
    if sysfs_khz.strip().isdigit() and int(sysfs_khz) > 0:
        return int(sysfs_khz)
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        if line.startswith("cpu MHz"):
            try:
                return round(float(line.split(":", 1)[1]) * 1000) or None
            except ValueError:
                return None
    return None


def l1_clock_cmdline(mode: str, tsc_khz: int | None) -> str:
    """Pure: L1's clock words.  Under TCG L1's TSC is L0's (QEMU reads the host's counter), but L1 calibrates it
    against the PIT, whose loop the host starves under load: 2 of 23 boots with two L1 CPUs took 244 MHz or
    915 MHz for 2.6 GHz (docs/races.md), L1's clock then ran up to ten times fast (an RCU stall "found" on a
    clean kernel) and every udelay ran short.  tsc_early_khz= skips that calibration with the known rate."""
    return f"tsc_early_khz={tsc_khz}" if mode == "tcg" and tsc_khz else ""


def judge_probe(returncode: int | None, console: str) -> tuple[bool, str]:
    """Pure: did the KVM probe guest really run a kernel?"""
    if any(m in console for m in PROBE_MARKERS):
        return True, "KVM probe: a real kernel booted to its root-mount panic under -enable-kvm"
    last = next((ln for ln in reversed(console.strip().splitlines()) if ln.strip()), "")
    if returncode is None:
        return False, "KVM probe timed out before the kernel reached its root-mount panic"
    return False, f"KVM probe guest did not run a kernel (qemu exit {returncode}: {last[:160] or 'no output'})"


def probe_kvm(kernel: Path, timeout: float = 30.0) -> tuple[bool, str]:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    with tempfile.TemporaryDirectory(prefix="harness-kvm-probe-") as tmp:
        log = Path(tmp) / "console.log"
        cmd = [QEMU, *KVM, "-m", "256", "-nodefaults", "-display", "none", "-vga", "none", "-no-reboot",
               "-serial", f"file:{log}", "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent"]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            rc, err = p.returncode, p.stderr
        except subprocess.TimeoutExpired:
            rc, err = None, ""
        console = (log.read_text(errors="replace") if log.exists() else "") + "\n" + err
        return judge_probe(rc, console)


def host_identity() -> str:
    """What the probe's answer depends on: this boot of the host (its KVM) and the QEMU binary."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
    qemu = shutil.which(QEMU)
    return f"{boot} {qemu} {os.stat(qemu).st_mtime_ns if qemu else 0}"


def cached_failure(ident: str | None = None) -> str | None:
    """The reason of a probe that failed earlier in this host boot (accel-probe.json), or None: no boot, no
    QEMU (what `harness matrix --list` can say about KVM without probing)."""
    from harness.paths import cache_dir
    ident = host_identity() if ident is None else ident
    try:
        rec = json.loads((cache_dir() / "accel-probe.json").read_text())
        if ident and rec.get("host") == ident:
            return rec["reason"] + " (probed once this host boot)"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def cached_probe(kernel: Path) -> tuple[bool, str]:
    """Probe once per host boot: a KVM that hangs the probe costs its full timeout (30 s here) on every run
    otherwise.  A probe that passed is not cached (a kernel that boots under KVM proves it every time)."""
    from harness.paths import cache_dir
    ident = host_identity()
    path = cache_dir() / "accel-probe.json"
    failed = cached_failure(ident)
    if failed is not None:
        return False, failed
    ok, reason = probe_kvm(kernel)
    if not ok and ident:
        write_json(path, {"host": ident, "reason": reason})
    return ok, reason


def choose_accel(kernel: Path, force: str | None = None) -> Accel:
    vendor = host_cpu_vendor()
    force = force or os.environ.get("HARNESS_ACCEL")
    if force == "tcg":
        return Accel("tcg", "forced by HARNESS_ACCEL=tcg", vendor, TCG, 1.0)
    ok, reason = probe_kvm(kernel) if force == "probe" else cached_probe(kernel)
    if ok:
        return Accel("kvm", reason, vendor, KVM, 0.5)
    return Accel("tcg", reason + "; falling back to TCG", vendor, TCG, 1.0)
