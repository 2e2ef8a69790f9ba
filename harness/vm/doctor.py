"""`harness doctor [--require-kvm] [--no-probe]`: what this host can do, and what to install or enable.

Every check reads the host alone (harness.vm.host: /proc/cpuinfo, /sys/module, /dev/kvm, dpkg, the cache's disk),
so it needs no kernel and no image: a fresh box gets its answer before anything is fetched or built.  With
`--require-kvm` (what `make test-on-hardware` and the CI/LAVA templates run first) every *required* check must
pass — KVM module, /dev/kvm, nested=1, the CPU's vendor and VT-x/AMD-V, the packages, free disk, QEMU — or it
exits 3 with one line per failed check.  The KVM boot probe (harness.vm.accel.probe_kvm: boot a kernel under
-enable-kvm to its root-mount panic) is the optional part: it runs only when a kernel is already cached (and not
with --no-probe); when it runs, a failure fails --require-kvm too; when it cannot, the output says so (each run
probes KVM itself before it uses it).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.errors import EXIT_INFRA
from harness.vm.host import VENDOR_FLAG, VENDOR_MODULE, VENDOR_TDP, HostFacts, read_host

MIN_FREE_GIB = 20  # docs/hardware.md: ~10 GiB measured for hardware.yaml's sources, object trees, kernels, images
MEM_PER_JOB_MIB = 5 * 1024  # L1's 4 GiB + ~1 GiB for QEMU, the child harness and the trace


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: informative, or not run
    value: str
    fix: str = ""
    required: bool = True  # --require-kvm fails when a required check is not ok


def _nested_fix(mod: str) -> str:
    return (f"echo 'options {mod} nested=1' | sudo tee /etc/modprobe.d/kvm-nested.conf; "
            f"sudo modprobe -r {mod}; sudo modprobe {mod}")


def host_checks(f: HostFacts) -> list[Check]:
    """Pure: the host's facts → one check each (the boot probe is added by `probe_check`)."""
    rows: list[Check] = []
    mod = f.vendor_module
    want = VENDOR_MODULE.get(f.vendor)
    flag = VENDOR_FLAG.get(f.vendor)
    # the CPU
    if f.vendor == "unknown":
        rows.append(Check("cpu vendor", False, f"{f.vendor_id}: neither Intel nor AMD", "an x86-64 Intel or AMD host"))
    else:
        has = flag in f.virt_flags
        skips = ("the Intel (EPT) cells can run here" if f.vendor == "intel"
                 else "cells with requires: {vendor: intel} are skipped here")
        value = (f"{f.vendor_id} with {flag}: under KVM L1 is {f.vendor} ({VENDOR_TDP[f.vendor]}); {skips}" if has else
                 f"{f.vendor_id} without {flag} in /proc/cpuinfo (virtualization off in the firmware, or a VM "
                 f"without nested {'VT-x' if f.vendor == 'intel' else 'AMD-V'})")
        rows.append(Check("cpu vendor", has, value,
                          f"enable {'VT-x' if f.vendor == 'intel' else 'AMD-V (SVM)'} in the firmware"))
    # KVM itself
    if mod:
        rows.append(Check("kvm module", True, f"{mod} loaded"))
    else:
        loaded = ", ".join(f.kvm_modules) or "none"
        rows.append(Check("kvm module", False, f"no kvm_intel or kvm_amd (KVM modules: {loaded})",
                          f"sudo modprobe {want or 'kvm_intel (Intel) or kvm_amd (AMD)'}; dmesg says why it refuses "
                          "(e.g. virtualization disabled in the firmware)"))
    dev_fix = ("load kvm_intel / kvm_amd (above)" if f.dev_kvm == "missing"
               else "run as root, or add the user to group kvm (sudo usermod -aG kvm $USER) and log in again")
    rows.append(Check("/dev/kvm", f.dev_kvm == "ok", {"ok": "readable and writable",
                                                       "missing": "missing"}.get(f.dev_kvm, "not readable and "
                                                                                             "writable by this user"),
                      dev_fix))
    if mod:
        val = f.nested.get(mod, "?")
        rows.append(Check("nested (L0)", bool(f.nested_on), f"{mod} nested={val}" + (
            "" if f.nested_on else f": L1 gets no {'VMX' if mod == 'kvm_intel' else 'SVM'}, L2 cannot run"),
            _nested_fix(mod)))
    else:
        rows.append(Check("nested (L0)", False, "no kvm_intel or kvm_amd to read nested from",
                          _nested_fix(want or "kvm_intel")))
    if mod == "kvm_intel":
        ad = f.eptad in ("Y", "y", "1")
        rows.append(Check("eptad (L0)", None, f"kvm_intel eptad={f.eptad or '?'}: " + (
            "EPT A/D bits and PML offered to L1: the eptad=Y / pml=Y cells run" if ad else
            "cells with requires: {ept_ad: true} (L1 eptad=Y or pml=Y) are skipped"), required=False))
    # what the harness installs and stores
    if f.missing_packages is None:
        miss = f.missing_commands
        rows.append(Check("packages", not miss, ("no dpkg: by command, missing " + ", ".join(miss)) if miss else
                          f"no dpkg: the commands of {len(f.packages)} packages present (libraries not checked)",
                          "install the Debian packages' equivalents (scripts/install-deps.sh lists them)"))
    else:
        miss = f.missing_packages
        rows.append(Check("packages", not miss, ("missing: " + " ".join(miss)) if miss else
                          f"all {len(f.packages)} of scripts/install-deps.sh --build installed",
                          "scripts/install-deps.sh --build (make setup-build)"))
    rows.append(Check("qemu", f.qemu is not None, f.qemu or "qemu-system-x86_64 missing",
                      "sudo apt-get install qemu-system-x86"))
    rows.append(Check("free disk (cache)", f.free_gib >= MIN_FREE_GIB,
                      f"{f.free_gib:g} GiB free at {f.cache} (needs {MIN_FREE_GIB})",
                      "free space there, or set HARNESS_CACHE to a disk with 20 GiB free (source trees 2.2 + "
                      "2.4 GiB, object trees, kernels and images: ~10 GiB for hardware.yaml)"))
    rows.append(Check("cgroup v2 (L0)", None, (f"unified: {f.cgroup2 or 'no controllers'}" if f.cgroup2 is not None
                                               else "not the unified hierarchy (v1 or hybrid)")
                      + "; not required: L2's memory-limited cgroup is L1's own cgroup2", required=False))
    jobs = max(1, min(f.cpus, f.mem_mib // MEM_PER_JOB_MIB)) if f.cpus else 0
    rows.append(Check("cpus, memory", None, f"{f.cpus} cpus, {f.mem_mib} MiB: --jobs auto gives about {jobs}",
                      required=False))
    return rows


def probe_check(f: HostFacts, kernel: Path | None, enabled: bool = True, probe=None) -> Check:
    """The optional boot probe: run only when /dev/kvm and the KVM module are there and a kernel is cached."""
    head = "KVM boot probe (optional)"
    later = "; each run probes KVM itself before it uses it"
    if not enabled:
        return Check(head, None, "not run (--no-probe)" + later, required=False)
    if f.dev_kvm != "ok" or f.vendor_module is None:
        return Check(head, None, "not run: /dev/kvm or the KVM module failed above" + later, required=False)
    if kernel is None:
        return Check(head, None, "not run: no kernel cached yet (`make run` fetches Debian's 6.12)" + later,
                     required=False)
    if probe is None:
        from harness.vm.accel import probe_kvm as probe
    ok, why = probe(kernel)
    return Check(head, ok, f"{why} ({kernel})", "a /dev/kvm that cannot boot a kernel (e.g. a paravirtual one) is "
                 "not usable: use bare metal, or a VM whose hypervisor offers nested VT-x/AMD-V")


def failures(rows: list[Check]) -> list[str]:
    """One line per failed required check."""
    return [f"{c.name}: {c.value}" + (f" -- fix: {c.fix}" if c.fix else "") for c in rows
            if c.required and c.ok is False]


def cli_doctor(require_kvm: bool = False, probe: bool = True, as_json: bool = False) -> int:
    from harness.kernel.prebuilt import find_existing
    f = read_host()
    k = find_existing() if probe else None
    rows = host_checks(f) + [probe_check(f, k / "bzImage" if k else None, enabled=probe)]
    failed = failures(rows)
    if as_json:
        json.dump(doctor_json(rows, require_kvm), sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif sys.stdout.isatty():
        _print_table(rows)
    else:
        sys.stdout.write(plain_text(rows))  # a log or a pipe: one line per check, never wrapped
    if not as_json:
        print("which matrix cells this host skips, and why: harness matrix scenarios/hardware.yaml --list")
    if require_kvm and failed:
        for line in failed:
            print(f"harness: doctor --require-kvm: {line}", file=sys.stderr)
        print(f"harness: error: {len(failed)} requirement(s) for nested KVM runs not met", file=sys.stderr)
        return EXIT_INFRA
    if require_kvm and not as_json:
        print("doctor --require-kvm: every required check passed")
    return 0


def _ok_word(c: Check) -> str:
    return "-" if c.ok is None else "yes" if c.ok else "NO" if c.required else "no"


def plain_text(rows: list[Check]) -> str:
    """One line per check ("name: ok -- value -- fix: ..."), whatever the width: for logs and pipes."""
    width = max(len(c.name) for c in rows)
    return "harness doctor (host checks; the boot probe is optional)\n" + "".join(
        f"{c.name:{width}}  {_ok_word(c):3}  {c.value}" + (f"  -- fix: {c.fix}" if c.ok is False and c.fix else "")
        + "\n" for c in rows)


def doctor_json(rows: list[Check], require_kvm: bool) -> dict:
    failed = failures(rows)
    return {"checks": [{"name": c.name, "ok": c.ok, "value": c.value, "fix": c.fix if c.ok is False else "",
                        "required": c.required} for c in rows],
            "failed": failed, "ok": not failed, "require_kvm": require_kvm}


def _print_table(rows: list[Check]) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title="harness doctor (host checks; the boot probe is optional)")
    for col in ("check", "ok", "value", "to fix"):
        t.add_column(col, overflow="fold")
    for c in rows:
        t.add_row(c.name, _ok_word(c), c.value, c.fix if c.ok is False else "")
    Console().print(t)
