"""SPTE decoding for the trace oracle (pure), both vendors.

SPTE bits (v6.12 arch/x86/kvm/mmu/spte.h): present = bit 11 (SPTE_MMU_PRESENT_MASK); pfn = bits 51:12;
writable = bit 1 (both vendors); large = bit 7.  AMD NPT: accessed 5, dirty 6, host-writable 9, MMU-writable 10.
Intel EPT: accessed 8, dirty 9, host-writable 57, MMU-writable 58.  Bits 53:52 = 01 mark an A/D-disabled SPTE:
there "dirty" means writable (is_dirty_spte()).
"""
from __future__ import annotations

from dataclasses import dataclass

PFN_MASK = ((1 << 52) - 1) & ~0xFFF
PRESENT = 1 << 11
WRITABLE = 1 << 1
LARGE = 1 << 7
AD_MASK = 3 << 52
AD_DISABLED = 1 << 52
VENDOR_BITS = {  # accessed, dirty, host-writable, mmu-writable
    "amd": (1 << 5, 1 << 6, 1 << 9, 1 << 10),
    "intel": (1 << 8, 1 << 9, 1 << 57, 1 << 58),
}


@dataclass(frozen=True)
class Spte:
    raw: int
    present: bool
    leaf: bool
    writable: bool
    accessed: bool
    dirty: bool
    host_writable: bool
    mmu_writable: bool
    ad_disabled: bool
    pfn: int

    def short(self) -> str:
        if not self.present:
            return "none" if self.raw in (0, 1 << 63) else f"np:{self.raw:#x}"
        flags = "".join(c if b else "-" for c, b in (("W", self.writable), ("D", self.dirty),
                                                      ("A", self.accessed), ("h", self.host_writable)))
        return f"pfn {self.pfn:#x} {flags}{'' if self.leaf else ' table'}"


def decode_spte(raw: int, vendor: str = "amd", level: int = 1) -> Spte:
    a, d, hw, mw = VENDOR_BITS[vendor]
    present = bool(raw & PRESENT)
    leaf = present and (level == 1 or bool(raw & LARGE))
    ad_off = (raw & AD_MASK) == AD_DISABLED
    writable = bool(raw & WRITABLE)
    dirty = present and (writable if ad_off else bool(raw & d))
    return Spte(raw, present, leaf, writable, present and not ad_off and bool(raw & a), dirty, bool(raw & hw),
                bool(raw & mw), ad_off, (raw & PFN_MASK) >> 12)


def is_dirty(raw: int, dmask: int) -> bool:
    """is_dirty_spte() for a present SPTE."""
    if (raw & AD_MASK) == AD_DISABLED:
        return bool(raw & WRITABLE)
    return bool(raw & dmask)
