"""Kernel configuration: defconfig + kvm_guest.config + our fragments, merged with the tree's
``scripts/kconfig/merge_config.sh -m -O <dir>``, completed with ``make olddefconfig``, then VERIFIED: every value a
fragment asks for must hold in the final .config (Kconfig silently drops what it cannot set).

The parsing and the verification are pure functions (``parse_config``, ``fragment_requests``, ``verify_config``);
the Kconfig "depends on" lookup used to explain a mismatch is best effort.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InfraError, InputError

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set\s*$")

NOT_SET = "n"          # how "# CONFIG_X is not set" is represented
ABSENT = None          # the symbol does not appear in the .config at all


def parse_config(text: str) -> dict[str, str]:
    """A .config / fragment as {"CONFIG_X": value}; '# CONFIG_X is not set' -> 'n'. Later lines win."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.rstrip()
        m = _SET.match(line)
        if m:
            out[m.group(1)] = m.group(2)
            continue
        m = _UNSET.match(line)
        if m:
            out[m.group(1)] = NOT_SET
    return out


@dataclass(frozen=True)
class Request:
    symbol: str         # CONFIG_X
    value: str          # 'y', 'm', '"str"', '42', or 'n' for "is not set"
    fragment: str       # fragment file name (for the error message)


@dataclass(frozen=True)
class Mismatch:
    symbol: str
    fragment: str
    asked: str
    got: str | None     # None: the symbol is absent from the final .config
    hint: str = ""

    def line(self) -> str:
        got = "absent (symbol unknown or its dependencies are unmet)" if self.got is None else self.got
        s = f"{self.symbol}: {self.fragment} asks {self.asked}, final .config has {got}"
        return s + (f" ({self.hint})" if self.hint else "")


def fragment_requests(fragments: list[tuple[str, str]]) -> list[Request]:
    """[(name, text)] in merge order -> the effective requests (a later fragment overrides an earlier one)."""
    reqs: dict[str, Request] = {}
    for name, text in fragments:
        for sym, val in parse_config(text).items():
            reqs.pop(sym, None)
            reqs[sym] = Request(sym, val, name)
    return list(reqs.values())


def verify_config(requests: list[Request], final_text: str) -> list[Mismatch]:
    """Pure: which requests does the final .config not honour?
    'is not set' holds when the final file says so or does not mention the symbol (invisible == n)."""
    final = parse_config(final_text)
    bad = []
    for r in requests:
        got = final.get(r.symbol, ABSENT)
        if r.value == NOT_SET:
            ok = got in (NOT_SET, ABSENT)
        else:
            ok = got == r.value
        if not ok:
            bad.append(Mismatch(r.symbol, r.fragment, r.value, got))
    return bad


# ----------------------------------------------------------------------------------------------------------
# best-effort explanation from the Kconfig files
# ----------------------------------------------------------------------------------------------------------
_DEP_SYM = re.compile(r"\b([A-Z][A-Z0-9_]+)\b")


def kconfig_entry(kconfig_text: str, name: str) -> list[str] | None:
    """The lines of `config NAME` / `menuconfig NAME` in one Kconfig file's text, or None. Pure."""
    lines = kconfig_text.splitlines()
    start = None
    for i, ln in enumerate(lines):
        if re.match(rf"^\s*(menu)?config\s+{re.escape(name)}\s*$", ln):
            start = i
            break
    if start is None:
        return None
    body = []
    for ln in lines[start + 1:]:
        if re.match(r"^\s*(menu)?config\s|^\s*(choice|endchoice|menu|endmenu|if|endif|source|comment)\b", ln):
            break
        body.append(ln)
    return body


def explain(src: Path, symbol: str, final: dict[str, str]) -> str:
    """'depends on X && Y (X=n)' for a symbol, or 'no such symbol in this tree'. Best effort."""
    name = symbol.removeprefix("CONFIG_")
    r = subprocess.run(["git", "grep", "-l", "-E", rf"^\s*(menu)?config\s+{name}\s*$", "--", "*Kconfig*"],
                       cwd=src, capture_output=True, text=True)
    files = [f for f in r.stdout.splitlines() if f]
    if not files:
        return "no such symbol in this kernel's Kconfig files"
    deps = []
    for f in files:
        body = kconfig_entry((src / f).read_text(errors="replace"), name) or []
        for ln in body:
            m = re.match(r"^\s*depends on\s+(.*)$", ln)
            if m:
                deps.append(m.group(1).strip())
        if deps:
            break
    if not deps:
        return f"defined in {files[0]}; no direct 'depends on' (choice, select or an enclosing if/menu decides)"
    unmet = []
    for d in deps:
        for s in _DEP_SYM.findall(d):
            v = final.get("CONFIG_" + s)
            if v in (None, NOT_SET):
                unmet.append(f"{s}={'n' if v else 'absent'}")
    out = "depends on " + " && ".join(f"({d})" if len(deps) > 1 else d for d in deps)
    return out + (f"; unset: {', '.join(dict.fromkeys(unmet))}" if unmet else "")


# ----------------------------------------------------------------------------------------------------------
# running it
# ----------------------------------------------------------------------------------------------------------
def find_defconfig(src: Path, defconfig: str, resolve) -> Path:
    for cand in (src / "arch/x86/configs" / defconfig, src / "arch/x86_64/configs" / defconfig):
        if cand.is_file():
            return cand
    p = resolve(defconfig)
    if p.is_file():
        return p
    raise InputError(f"defconfig {defconfig!r} not found (arch/x86/configs/ of the base, or a path)")


def find_kvm_guest(src: Path) -> Path | None:
    for cand in (src / "arch/x86/configs/kvm_guest.config", src / "kernel/configs/kvm_guest.config"):
        if cand.is_file():
            return cand
    return None


def configure(src: Path, objdir: Path, defconfig: Path, fragments: list[Path], make_vars: list[str],
              log=print) -> tuple[str, list[str]]:
    """Write objdir/.config from defconfig + kvm_guest.config + fragments, run olddefconfig, verify.
    Returns (final .config text, the commands run). Raises InputError naming any unmet request."""
    objdir.mkdir(parents=True, exist_ok=True)
    for f in fragments:
        if not f.is_file():
            raise InputError(f"config fragment not found: {f}")
    kg = find_kvm_guest(src)
    merge = [str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(objdir), str(defconfig)]
    merge += ([str(kg)] if kg else []) + [str(f) for f in fragments]
    olddef = ["make", "-s", "-C", str(src), f"O={objdir}", *make_vars, "olddefconfig"]
    cmds = []
    for cmd in (merge, olddef):
        cmds.append(" ".join(_q(c) for c in cmd))
        r = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
        if r.returncode != 0:
            raise InfraError(f"{cmd[0].rsplit('/', 1)[-1]} failed: {(r.stderr or r.stdout).strip()[-800:]}")
    final_text = (objdir / ".config").read_text()
    reqs = fragment_requests([(f.name, f.read_text()) for f in fragments])
    bad = verify_config(reqs, final_text)
    if bad:
        final = parse_config(final_text)
        bad = [Mismatch(m.symbol, m.fragment, m.asked, m.got, explain(src, m.symbol, final)) for m in bad]
        raise InputError("config fragment request(s) not met: " + "; ".join(m.line() for m in bad))
    return final_text, cmds


def _q(s: str) -> str:
    return s if re.fullmatch(r"[A-Za-z0-9_./=:+,@%-]+", s) else "'" + s.replace("'", "'\\''") + "'"
