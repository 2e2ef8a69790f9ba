"""What a matrix cell needs of the host, declared on its group, and whether this host has it (pure).

A group says `requires: {accel: kvm, vendor: intel, ept_ad: true}` (any subset).  Before a matrix runs, each
cell's requirements are checked against the host's capabilities (harness.vm.host.HostCaps) by
`cell_skip_reason()`; a cell this host cannot run is recorded as `skipped` with that reason (matrix.json,
summary.txt, JUnit <skipped>, KTAP `# SKIP`), never run, never counted as passing nor in the mutation score.

`requires:` is the one place a cell's needs are stated: a knob that needs something of the host (`kvm_intel:`
eptad/pml: an Intel L1, and for eptad=Y or pml=Y an L0 kvm_intel with eptad=Y) must be declared by its group —
`missing_requirements()` finds one that is not, and the matrix refuses to start (rather than end in an
infrastructure verdict at L1's set-up an hour in).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from harness.vm.host import VENDOR_MODULE, VENDOR_TDP, HostCaps

NAMES = {"intel": "Intel", "amd": "AMD", "unknown": "unknown-vendor"}


class Requires(BaseModel):
    """What the host must offer a cell (unset: anything will do)."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    accel: Literal["kvm"] | None = None  # L1 under KVM: bare metal (or a VM) with usable nested KVM, not TCG
    vendor: Literal["intel", "amd"] | None = None  # L1's virtualization: intel = VMX/EPT (kvm_intel, KVM only:
    #   QEMU's TCG emulates SVM, not VMX), amd = SVM/NPT (kvm_amd: an AMD host under KVM, or TCG)
    ept_ad: bool | None = None  # true: L0's kvm_intel has eptad=Y (L0 offers EPT A/D bits and PML to L1 only then)

    @model_validator(mode="after")
    def _ept_ad_is_intel(self):
        if self.ept_ad and self.vendor != "intel":
            raise ValueError("ept_ad: true is a kvm_intel parameter of L0: it needs vendor: intel")
        return self

    def needs_kvm(self) -> bool:
        return self.accel == "kvm" or self.vendor == "intel" or bool(self.ept_ad)

    def text(self) -> str:
        """As YAML would say it: {accel: kvm, vendor: intel}."""
        d = self.model_dump(exclude_none=True)
        return "{" + ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in d.items()) + "}"


def as_requires(req: Requires | dict | None) -> Requires:
    return req if isinstance(req, Requires) else Requires.model_validate(req or {})


def knob_requirements(kvm_intel) -> Requires:
    """What a scenario's `kvm_intel:` knobs (harness.config.KvmIntelKnobs) need of the host: any of them an
    Intel L1; eptad=Y or pml=Y (which needs eptad=Y) also an L0 kvm_intel with eptad=Y."""
    eptad, pml = getattr(kvm_intel, "eptad", None), getattr(kvm_intel, "pml", None)
    if eptad is None and pml is None:
        return Requires()
    return Requires(vendor="intel", ept_ad=True if (eptad or pml) else None)


def missing_requirements(declared: Requires | dict | None, needed: Requires) -> list[str]:
    """The keys of `needed` that `declared` does not state (empty: declared covers it)."""
    d = as_requires(declared)
    out = []
    if needed.accel == "kvm" and not d.needs_kvm():
        out.append("accel: kvm")
    if needed.vendor and d.vendor != needed.vendor:
        out.append(f"vendor: {needed.vendor}")
    if needed.ept_ad and not d.ept_ad:
        out.append("ept_ad: true")
    return out


def cell_skip_reason(requirements: Requires | dict | None, caps: HostCaps) -> str | None:
    """None when this host can run a cell with these requirements, else why not (one line)."""
    r = as_requires(requirements)
    if r.needs_kvm() and caps.accel != "kvm":
        if r.vendor == "intel":
            return (f"needs an Intel L1 (kvm_intel, EPT): L1 runs under TCG here, which emulates SVM, not VMX "
                    f"({caps.accel_why})")
        return f"needs accel kvm: L1 runs under TCG here ({caps.accel_why})"
    if r.needs_kvm() and caps.nested is False:
        mod = VENDOR_MODULE.get(caps.vendor, "kvm_intel/kvm_amd")
        virt = "VMX" if caps.vendor == "intel" else "SVM"
        return f"needs nested KVM: L0's {mod} has nested off, so L1 gets no {virt}"
    if r.vendor and r.vendor != caps.l1_vendor:
        want = f"an {NAMES[r.vendor]} L1 ({VENDOR_MODULE[r.vendor]}, {VENDOR_TDP[r.vendor]})"
        if caps.l1_vendor == "unknown":
            return f"needs {want}: this host's CPU vendor is unknown"
        have = f"{VENDOR_MODULE[caps.l1_vendor]}, {VENDOR_TDP[caps.l1_vendor]}"
        return f"needs {want}: this host is {NAMES[caps.vendor]} with KVM, and L1 gets L0's CPU ({have})"
    if r.ept_ad and caps.ept_ad is False:
        return ("needs L0's kvm_intel eptad=Y (L0 offers EPT A/D bits and PML to L1 only then): this host's "
                "kvm_intel has eptad=N")
    return None
