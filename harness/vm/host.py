"""What this host (L0) is and can do, read from /proc, /sys and dpkg without booting anything.

The readers (`cpuinfo`, `sys_modules`, `module_param`, `dev_kvm`, `cgroup2`, `disk_free`, `installed_packages`,
`qemu_version`, `mem_total_mib`) are the only functions here that touch the host: tests replace them.
`read_host()` gathers them into `HostFacts`; `host_caps()` turns the facts (and, when it may, the KVM boot
probe of harness.vm.accel) into the `HostCaps` a matrix checks each cell's `requires:` against
(harness.fleet.matrix.requires.cell_skip_reason); `harness doctor` (harness.vm.doctor) judges the same facts.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from harness.paths import REPO

VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd", "HygonGenuine": "amd"}  # Hygon: SVM, kvm_amd
VENDOR_MODULE = {"intel": "kvm_intel", "amd": "kvm_amd"}
VENDOR_FLAG = {"intel": "vmx", "amd": "svm"}
VENDOR_TDP = {"intel": "EPT", "amd": "NPT"}
INSTALL_DEPS = REPO / "scripts/install-deps.sh"
# what a package gives, for a host without dpkg (not Debian): the command that shows it is there
PACKAGE_COMMANDS = {"qemu-system-x86": "qemu-system-x86_64", "qemu-utils": "qemu-img", "busybox-static": "busybox",
                    "dropbear-bin": "dropbear", "kmod": "depmod", "cpio": "cpio", "xz-utils": "xz", "gcc": "gcc",
                    "make": "make", "flex": "flex", "bison": "bison", "bc": "bc", "ccache": "ccache",
                    "rsync": "rsync", "dwarves": "pahole", "git": "git", "openssh-client": "ssh",
                    "openssh-server": "sshd"}


# ---- the readers ------------------------------------------------------------------------------------------------

def cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def sys_modules() -> list[str]:
    """The KVM modules the kernel has (loaded, or built in with parameters): kvm, kvm_intel, kvm_amd, kvm_pvm…"""
    try:
        return sorted(p.name for p in Path("/sys/module").iterdir() if p.name.startswith("kvm"))
    except OSError:
        return []


def module_param(module: str, name: str) -> str | None:
    try:
        return Path(f"/sys/module/{module}/parameters/{name}").read_text().strip()
    except OSError:
        return None


def dev_kvm() -> str:
    """'ok' (exists, readable and writable by this user), 'missing' or 'no access'."""
    if not os.path.exists("/dev/kvm"):
        return "missing"
    return "ok" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "no access"


def cgroup2() -> str | None:
    """The controllers of a cgroup v2 hierarchy at /sys/fs/cgroup, or None (v1 or none)."""
    try:
        return Path("/sys/fs/cgroup/cgroup.controllers").read_text().strip()
    except OSError:
        return None


def disk_free(path: Path) -> int:
    """Free bytes where `path` is (or would be: its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def installed_packages(names: list[str]) -> set[str] | None:
    """Which of `names` dpkg says are installed; None when there is no dpkg (not Debian): then the packages'
    commands are looked for instead."""
    if not shutil.which("dpkg-query"):
        return None
    p = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", *names],
                       capture_output=True, text=True)
    out = set()
    for line in p.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].startswith("ii"):
            out.add(parts[0].split(":")[0])
    return out


def qemu_version() -> str | None:
    if not shutil.which("qemu-system-x86_64"):
        return None
    out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else None


def mem_total_mib() -> int:
    try:
        m = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        return int(m.group(1)) >> 10 if m else 0
    except OSError:
        return 0


# ---- the facts ----------------------------------------------------------------------------------------------------

def required_packages(script: Path = INSTALL_DEPS) -> list[str]:
    """The Debian packages `scripts/install-deps.sh --build` installs (what `make test-on-hardware` sets up),
    read from the script itself so the doctor and the installer cannot disagree."""
    try:
        text = script.read_text()
    except OSError:
        return sorted(PACKAGE_COMMANDS)
    out: list[str] = []
    for m in re.finditer(r'\bpkgs="(?:\$pkgs )?([^"$]*)"', text):
        out += [w for w in m.group(1).split() if w not in out]
    return out


def vendor_of(cpuinfo_text: str) -> tuple[str, str, set[str]]:
    """(vendor_id, intel|amd|unknown, the virtualization flags vmx/svm the CPU shows) of /proc/cpuinfo."""
    vid = "unknown"
    flags: set[str] = set()
    for line in cpuinfo_text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and vid == "unknown":
            vid = val.strip()
        elif key == "flags" and not flags:
            flags = {f for f in val.split() if f in ("vmx", "svm")}
    return vid, VENDORS.get(vid, "unknown"), flags


@dataclass(frozen=True)
class HostFacts:
    vendor_id: str  # GenuineIntel, AuthenticAMD, …
    vendor: str  # intel | amd | unknown
    virt_flags: tuple[str, ...]  # vmx / svm as /proc/cpuinfo shows them (cleared when the firmware turns VT-x off)
    kvm_modules: tuple[str, ...]  # under /sys/module: kvm, kvm_intel, kvm_amd, kvm_pvm…
    nested: dict  # kvm_intel/kvm_amd → its `nested` parameter as read (Y, N, 1, 0)
    eptad: str | None  # L0's kvm_intel eptad (Y/N): L0 offers EPT A/D bits and PML to L1 only with Y
    dev_kvm: str  # ok | missing | no access
    cgroup2: str | None
    cache: str
    free_gib: float
    packages: tuple[str, ...]  # what scripts/install-deps.sh --build installs
    missing_packages: tuple[str, ...] | None  # None: no dpkg; see missing_commands
    missing_commands: tuple[str, ...] = ()
    qemu: str | None = None
    cpus: int = 0
    mem_mib: int = 0

    @property
    def vendor_module(self) -> str | None:
        """The vendor KVM module that is there (kvm_intel / kvm_amd), preferring the CPU's own."""
        mine = VENDOR_MODULE.get(self.vendor)
        if mine in self.kvm_modules:
            return mine
        return next((m for m in ("kvm_intel", "kvm_amd") if m in self.kvm_modules), None)

    @property
    def nested_on(self) -> bool | None:
        mod = self.vendor_module
        if mod is None:
            return None
        return self.nested.get(mod) in ("1", "Y", "y")


def read_host(cache: Path | None = None) -> HostFacts:
    from harness.paths import cache_dir
    cache = Path(cache) if cache is not None else cache_dir()
    vid, vendor, flags = vendor_of(cpuinfo())
    mods = sys_modules()
    nested = {m: v for m in ("kvm_intel", "kvm_amd") if m in mods
              for v in [module_param(m, "nested")] if v is not None}
    eptad = module_param("kvm_intel", "eptad") if "kvm_intel" in mods else None
    pkgs = required_packages()
    have = installed_packages(pkgs)
    missing_cmds: tuple[str, ...] = ()
    if have is None:
        missing_cmds = tuple(f"{p} ({c})" for p, c in PACKAGE_COMMANDS.items() if p in pkgs
                             and not shutil.which(c) and not Path(f"/usr/sbin/{c}").exists())
    return HostFacts(vid, vendor, tuple(sorted(flags)), tuple(mods), nested, eptad, dev_kvm(), cgroup2(), str(cache),
                     round(disk_free(cache) / 2**30, 1), tuple(pkgs),
                     None if have is None else tuple(p for p in pkgs if p not in have), missing_cmds,
                     qemu_version(), os.cpu_count() or 0, mem_total_mib())


# ---- the capabilities a matrix cell can require -------------------------------------------------------------------

@dataclass(frozen=True)
class HostCaps:
    """What a matrix cell can need of this host (harness.fleet.matrix.requires.Requires)."""
    accel: str  # kvm | tcg: what the runs here will use for L1
    accel_why: str
    vendor: str  # L0's CPU: intel | amd | unknown
    nested: bool | None = None  # L0's kvm_intel/kvm_amd nested=1 (None: no such module)
    ept_ad: bool | None = None  # L0's kvm_intel eptad=Y (None: not an Intel KVM host)
    probed: bool = False  # accel decided by a real boot probe (False: static checks and a remembered probe only)

    @property
    def l1_vendor(self) -> str:
        """Whose virtualization L1 has: L0's CPU under KVM (-cpu host); AMD's SVM under TCG (QEMU's TCG emulates
        SVM, not VMX, whatever the host's CPU)."""
        return self.vendor if self.accel == "kvm" else "amd"

    def describe(self) -> str:
        tdp = VENDOR_TDP.get(self.l1_vendor, "?")
        s = f"accel {self.accel} ({self.accel_why}); L0 CPU {self.vendor}; L1 is {self.l1_vendor} ({tdp})"
        if self.accel == "kvm":
            s += f"; nested={'?' if self.nested is None else 'Y' if self.nested else 'N'}"
            if self.vendor == "intel":
                s += f"; L0 eptad={'?' if self.ept_ad is None else 'Y' if self.ept_ad else 'N'}"
        return s

    def to_json(self) -> dict:
        return asdict(self) | {"l1_vendor": self.l1_vendor}


def _yn(v: str | None) -> bool | None:
    return None if v is None else v in ("1", "Y", "y")


def host_caps(facts: HostFacts | None = None, probe_kernel: Callable[[], Path | None] | None = None) -> HostCaps:
    """This host's capabilities.  The accelerator: TCG when HARNESS_ACCEL=tcg, when /dev/kvm is not usable by
    this user, when no kvm_intel/kvm_amd is loaded (a paravirtual /dev/kvm such as kvm_pvm cannot boot a normal
    kernel) or when the KVM boot probe failed earlier this host boot; else the probe decides (harness.vm.accel
    .cached_probe, as every run does), booting `probe_kernel()` — unless `probe_kernel` is None (`--list`):
    then KVM is assumed from the static checks, and `probed` says so."""
    from harness.vm import accel as A
    f = facts if facts is not None else read_host()
    ept_ad = _yn(f.eptad) if f.vendor_module == "kvm_intel" else None

    def caps(accel: str, why: str, probed: bool = False) -> HostCaps:
        return HostCaps(accel, why, vendor=f.vendor, nested=f.nested_on, ept_ad=ept_ad, probed=probed)

    force = os.environ.get("HARNESS_ACCEL")
    if force == "tcg":
        return caps("tcg", "forced by HARNESS_ACCEL=tcg")
    if f.dev_kvm != "ok":
        return caps("tcg", f"/dev/kvm is {'missing' if f.dev_kvm == 'missing' else 'not readable and writable'}")
    if f.vendor_module is None:
        return caps("tcg", f"no kvm_intel or kvm_amd loaded; KVM modules: {', '.join(f.kvm_modules) or 'none'}")
    if force != "probe":
        failed = A.cached_failure()
        if failed is not None:
            return caps("tcg", failed, probed=True)
    kernel = probe_kernel() if probe_kernel is not None else None
    if kernel is None:
        return caps("kvm", f"/dev/kvm usable and {f.vendor_module} loaded; not boot-probed here (each run "
                           "probes before it uses KVM)", probed=False)
    ok, why = A.probe_kvm(kernel) if force == "probe" else A.cached_probe(kernel)
    return caps("kvm" if ok else "tcg", why, probed=True)
