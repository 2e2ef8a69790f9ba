"""SPTE decoding for the trace oracle (pure), per kernel version and vendor (docs/trace-oracle.md, docs/hardware.md).

KVM's SPTE bit layout is not constant.  Read from the kernels' own headers (arch/x86/kvm/mmu/spte.h, mmu.h,
asm/vmx.h; excerpts in tests/fixtures/spte/):

  both vendors, all versions: present = bit 11 (SPTE_MMU_PRESENT_MASK); pfn = bits 51:12; writable = bit 1;
      large = bit 7.  AMD NPT: accessed 5, dirty 6, host-writable 9, MMU-writable 10.  EPT: accessed 8, dirty 9.
  <= 7.1 (v6.12 spte.h): the A/D type is bits 53:52 (01 = A/D disabled); EPT host-writable 57, MMU-writable 58.
  >= 7.2 (v7.2 spte.h, "KVM: x86/mmu: shuffle high bits of SPTEs in preparation for MBEC"): the A/D type is
      bits 61:60; EPT host-writable 53, MMU-writable 55 (52, 54 and 62 hold access tracking's saved R, X, XU).
  A/D-disabled SPTEs: up to 6.12 the A and D bits mean nothing there and "dirty" means writable
      (is_dirty_spte()); since 6.13 KVM keeps A and D in software even when the hardware's are off (make_spte()
      sets D with W), so such an SPTE is dirty when D or W is set.

A kernel the harness built has its source at hand: `layout_for_kernel()` parses the #defines of that tree at the
build's commit (`parse_defines`, `layout_from_headers`).  A prebuilt kernel gets the table entry for its release
(`layout_for_release`).  `decode_spte(raw, vendor, level)` without a layout keeps the v6.12 layout.
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

# v6.12's layout, kept as module constants (the checker's historical names)
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
MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class SpteLayout:
    name: str
    vendor: str  # amd (NPT) | intel (EPT)
    present: int
    writable: int
    large: int
    accessed: int
    dirty: int
    host_writable: int
    mmu_writable: int
    ad_mask: int  # the A/D type field (SPTE_TDP_AD_MASK)
    ad_disabled: int  # its value for "A/D disabled" (SPTE_TDP_AD_DISABLED)
    soft_ad: bool  # >= 6.13: A/D kept in software when the hardware's are disabled
    pfn_mask: int
    source: str  # where the bits came from: "table: ..." or "header: ..."

    def dirty_test(self) -> Callable[[int], bool]:
        """is_dirty_spte() for a present SPTE of this layout, as a closure (the checker's hot path)."""
        adm, add, d = self.ad_mask, self.ad_disabled, self.dirty
        off = (self.writable | self.dirty) if self.soft_ad else self.writable  # what "dirty" is, A/D disabled
        return lambda raw: bool(raw & (off if (raw & adm) == add else d))

    def bits(self) -> dict[str, str]:
        """The layout as bit numbers (run.json)."""
        def num(m: int) -> str:
            lo, hi = (m & -m).bit_length() - 1, m.bit_length() - 1
            return str(lo) if lo == hi else f"{hi}:{lo}"
        return {"present": num(self.present), "writable": num(self.writable), "large": num(self.large),
                "accessed": num(self.accessed), "dirty": num(self.dirty),
                "host_writable": num(self.host_writable), "mmu_writable": num(self.mmu_writable),
                "ad_type": num(self.ad_mask), "pfn": num(self.pfn_mask),
                "ad_disabled_dirty": "D or W" if self.soft_ad else "W"}


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


# ---- the table (prebuilt kernels) -----------------------------------------------------------------------------

# (first version, era, kernels it covers, A/D type shift, EPT host-writable bit, EPT MMU-writable bit, soft A/D)
# 6.13: "KVM: x86/mmu: Set shadow_dirty_mask for EPT even if A/D bits disabled" and "... Use Accessed bit even when
# _hardware_ A/D bits are disabled" (KVM's pull for the 6.13 merge window).  7.2: "KVM: x86/mmu: shuffle high bits
# of SPTEs in preparation for MBEC" (reached Linus' tree on 2026-06-19, after v7.1, before v7.2-rc1).
ERAS = (((0, 0), "6.12", "<= 6.12", 52, 57, 58, False),
        ((6, 13), "6.13", "6.13 ... 7.1", 52, 57, 58, True),
        ((7, 2), "7.2", ">= 7.2", 60, 53, 55, True))
AMD_BITS = (1 << 5, 1 << 6, 1 << 9, 1 << 10)  # accessed, dirty, host-writable, mmu-writable (NPT, any version)
EPT_AD = (1 << 8, 1 << 9)


def _vendor(vendor: str) -> str:
    if vendor not in ("amd", "intel"):
        raise ValueError(f"unknown vendor {vendor!r} (amd or intel)")
    return vendor


def table_layout(era: str, vendor: str) -> SpteLayout:
    row = next((e for e in ERAS if e[1] == era), None)
    if row is None:
        raise ValueError(f"no SPTE layout era {era!r}")
    _, name, span, ad_shift, ept_hw, ept_mw, soft = row
    a, d, hw, mw = AMD_BITS if _vendor(vendor) == "amd" else (*EPT_AD, 1 << ept_hw, 1 << ept_mw)
    return SpteLayout(f"{name}-{vendor}", vendor, PRESENT, WRITABLE, LARGE, a, d, hw, mw, 3 << ad_shift,
                      1 << ad_shift, soft, PFN_MASK, f"table: kernels {span}")


def kernel_version(release: str | None) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release or "")
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def layout_for_release(release: str | None, vendor: str) -> SpteLayout:
    """The table's layout for a kernel release (an unreadable release gets the oldest, v6.12's)."""
    ver = kernel_version(release)
    return table_layout([e[1] for e in ERAS if ver >= e[0]][-1], vendor)


DEFAULT = {v: table_layout("6.12", v) for v in ("amd", "intel")}


def layout_of(layout: SpteLayout | None, vendor: str) -> SpteLayout:
    return layout if layout is not None else DEFAULT[_vendor(vendor)]


# ---- decoding --------------------------------------------------------------------------------------------------

def decode_spte(raw: int, vendor: str = "amd", level: int = 1, layout: SpteLayout | None = None) -> Spte:
    L = layout_of(layout, vendor)
    present = bool(raw & L.present)
    leaf = present and (level == 1 or bool(raw & L.large))
    ad_off = (raw & L.ad_mask) == L.ad_disabled
    writable = bool(raw & L.writable)
    dirty = present and bool(raw & ((L.writable | (L.dirty if L.soft_ad else 0)) if ad_off else L.dirty))
    accessed = present and bool(raw & L.accessed) and (L.soft_ad or not ad_off)
    return Spte(raw, present, leaf, writable, accessed, dirty, bool(raw & L.host_writable),
                bool(raw & L.mmu_writable), ad_off, (raw & L.pfn_mask) >> 12)


def is_dirty(raw: int, dmask: int) -> bool:
    """is_dirty_spte() for a present SPTE of the v6.12 layout."""
    if (raw & AD_MASK) == AD_DISABLED:
        return bool(raw & WRITABLE)
    return bool(raw & dmask)


# ---- the kernel's own headers ----------------------------------------------------------------------------------

HEADERS = ("arch/x86/kvm/mmu/spte.h", "arch/x86/kvm/mmu.h", "arch/x86/include/asm/vmx.h")
_DEFINE_RE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)[ \t]+(.+?)[ \t]*$", re.M)
_COMMENT_RE = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_SUFFIX_RE = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b")
_CAST_RE = re.compile(r"\(\s*(?:u64|u32|unsigned(?: long)*|long(?: long)?)\s*\)")
_BUILTINS = {"PAGE_SHIFT": 12, "PAGE_SIZE": 4096}
_OPS: dict[type[ast.operator], Callable[[int, int], int]] = {ast.LShift: lambda a, b: a << b, ast.RShift: lambda a, b: a >> b, ast.BitOr: lambda a, b: a | b,
        ast.BitAnd: lambda a, b: a & b, ast.BitXor: lambda a, b: a ^ b, ast.Add: lambda a, b: a + b,
        ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}
_CALLS: dict[str, Callable[..., int]] = {"BIT_ULL": lambda n: 1 << n, "BIT": lambda n: 1 << n,
          "GENMASK_ULL": lambda h, l: ((1 << (h - l + 1)) - 1) << l}


def parse_defines(text: str) -> dict[str, list[str]]:
    """Object-like #defines of a C header: name -> its bodies in order (a name defined in #ifdef and #else
    branches has several).  Function-like macros are skipped; comments and line continuations are removed."""
    text = _COMMENT_RE.sub(" ", text.replace("\\\n", " "))
    out: dict[str, list[str]] = {}
    for m in _DEFINE_RE.finditer(text):
        out.setdefault(m.group(1), []).append(m.group(2))
    return out


def evaluate(name: str, defines: dict[str, list[str]], _depth: int = 0) -> int | None:
    """The integer value of a #define, or None when no body of it is a constant expression (e.g. one naming
    a run-time variable such as physical_mask): the first body that evaluates wins."""
    if name in _BUILTINS:
        return _BUILTINS[name]
    if _depth > 16:
        return None
    for body in defines.get(name, ()):
        expr = _SUFFIX_RE.sub(r"\1", _CAST_RE.sub("", body))
        try:
            return _eval(ast.parse(expr.strip(), mode="eval").body, defines, _depth) & MASK64
        except (SyntaxError, ValueError, TypeError, KeyError):
            continue
    return None


def _eval(node: ast.AST, defines: dict[str, list[str]], depth: int) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left, defines, depth), _eval(node.right, defines, depth))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Invert, ast.USub)):
        v = _eval(node.operand, defines, depth)
        return (~v if isinstance(node.op, ast.Invert) else -v) & MASK64
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS:
        return _CALLS[node.func.id](*(_eval(a, defines, depth) for a in node.args))
    if isinstance(node, ast.Name):
        known = evaluate(node.id, defines, depth + 1)
        if known is None:
            raise ValueError(node.id)
        return known
    raise ValueError(ast.dump(node))


def _first(defines: dict[str, list[str]], *names: str) -> int | None:
    """The value of the first of several names a define has had across versions."""
    for n in names:
        v = evaluate(n, defines)
        if v is not None:
            return v
    return None


def layout_from_headers(spte_h: str, vendor: str, mmu_h: str = "", vmx_h: str = "", name: str = "",
                        source: str = "header") -> SpteLayout:
    """A layout from the text of the kernel's spte.h (and, when given, mmu.h and asm/vmx.h: the
    architectural A/D, writable and large bits, which no kernel moves).  ValueError names a missing define."""
    d = parse_defines(spte_h)
    d_arch = {**parse_defines(mmu_h), **parse_defines(vmx_h)}
    need = {"present": ("SPTE_MMU_PRESENT_MASK",), "ad_mask": ("SPTE_TDP_AD_MASK",),
            "ad_disabled": ("SPTE_TDP_AD_DISABLED", "SPTE_TDP_AD_DISABLED_MASK"),
            "pfn_mask": ("SPTE_BASE_ADDR_MASK", "PT64_BASE_ADDR_MASK")}
    if _vendor(vendor) == "amd":
        need.update(host_writable=("DEFAULT_SPTE_HOST_WRITABLE", "DEFAULT_SPTE_HOST_WRITEABLE"),
                    mmu_writable=("DEFAULT_SPTE_MMU_WRITABLE", "DEFAULT_SPTE_MMU_WRITEABLE"))
        arch = {"accessed": ("PT_ACCESSED_MASK", 1 << 5), "dirty": ("PT_DIRTY_MASK", 1 << 6)}
    else:
        need.update(host_writable=("EPT_SPTE_HOST_WRITABLE",), mmu_writable=("EPT_SPTE_MMU_WRITABLE",))
        arch = {"accessed": ("VMX_EPT_ACCESS_BIT", 1 << 8), "dirty": ("VMX_EPT_DIRTY_BIT", 1 << 9)}
    arch.update(writable=("PT_WRITABLE_MASK", WRITABLE), large=("PT_PAGE_SIZE_MASK", LARGE))
    vals: dict[str, int] = {}
    for field, names in need.items():
        v = _first(d, *names)
        if v is None:
            raise ValueError(f"spte.h defines none of {', '.join(names)} as a constant")
        vals[field] = v
    for field, (nm, default) in arch.items():
        v = evaluate(nm, d_arch)
        vals[field] = default if v is None else v
    # up to 6.12 spte_shadow_dirty_mask() zeroes the dirty mask of an A/D-disabled SPTE (dirty = writable);
    # 6.13 removed it: A/D are kept in software whatever the hardware does
    soft = not re.search(r"\bspte_shadow_dirty_mask\s*\(\s*u64\b", spte_h)
    return SpteLayout(name or f"header-{vendor}", vendor, soft_ad=soft, source=source, **vals)


def layout_from_tree(tree: Path, vendor: str, commit: str | None = None, name: str = "") -> SpteLayout:
    """Parse the headers of a kernel source tree: at `commit` (git show: what the build compiled, whatever
    stack the work tree holds now), else the work tree's files.  OSError/ValueError when spte.h cannot be read
    or lacks a define; a missing mmu.h/vmx.h only means the architectural bits."""
    texts, where = [], f"{tree}" + (f" at {commit[:12]}" if commit else " (work tree)")
    for rel in HEADERS:
        text = _git_show(tree, commit, rel) if commit else None
        if text is None:
            if commit:
                where = f"{tree} (work tree)"
            p = tree / rel
            text = p.read_text(errors="replace") if rel == HEADERS[0] or p.is_file() else ""
        texts.append(text)
    return layout_from_headers(texts[0], vendor, texts[1], texts[2], name=name,
                               source=f"header: {HEADERS[0]} of {where}")


def _git_show(tree: Path, commit: str, rel: str) -> str | None:
    """A file as committed (read-only `git show`), or None."""
    try:
        r = subprocess.run(["git", "-C", str(tree), "show", f"{commit}:{rel}"], capture_output=True, text=True,
                           timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def layout_for_kernel(kernel: dict[str, Any], vendor: str, release: str | None = None,
                      src_root: Path | None = None) -> SpteLayout:
    """The layout of the kernel a run boots as L1 (`kernel`: run.json's kernel section): from its own headers
    when the harness built it (its meta.json names the source tree and the commit compiled), else the table
    entry for its release.  Never raises for a kernel it cannot read: the table's answer says why."""
    release = release or kernel.get("release")
    why = ""
    if kernel.get("source") == "build":
        try:
            meta = kernel
            mf = Path(kernel["dir"]) / "meta.json" if kernel.get("dir") else None
            if mf is not None and mf.is_file():
                meta = json.loads(mf.read_text())
            if src_root is None:
                from harness.paths import cache_dir
                src_root = cache_dir() / "src"
            base_id = (meta.get("base") or {}).get("id") if isinstance(meta.get("base"), dict) else None
            if not base_id:
                raise ValueError("its meta.json names no source tree (base.id)")
            tree = src_root / str(base_id)
            return layout_from_tree(tree, vendor, meta.get("commit"), name=f"{release}-{vendor}/spte.h")
        except (OSError, KeyError, TypeError, ValueError) as e:
            why = f"; the build's own headers could not be read ({type(e).__name__}: {e})"
    lay = layout_for_release(release, vendor)
    return replace(lay, source=lay.source + why) if why else lay
