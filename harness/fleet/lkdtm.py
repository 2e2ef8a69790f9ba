"""LKDTM on a real kernel: the console oracle's proof on real consoles.

One built kernel with kconfigs/lkdtm.config boots as L1 (the harness's QEMU, L1 image and SSH) with a command line
that does not panic on an oops or a WARN, so one boot records every crash type; over SSH,
guest-images/lkdtm/provoke.sh marks each type on the kernel log ("lkdtm-record: begin TYPE" ... "end TYPE") and
writes it to /sys/kernel/debug/provoke-crash/DIRECT.  The serial console is cut into one segment per type; each
segment is one real report, which the console oracle must classify as CRASH_TYPES says.

Used by scripts/record-lkdtm-consoles.py (fixtures under tests/fixtures/consoles-lkdtm/) and by
tests/integration/test_lkdtm.py (the same live).
"""
from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from harness.errors import InfraError
from harness.paths import REPO

PROVOKE = REPO / "guest-images/lkdtm/provoke.sh"
# L1 boot budget before the accelerator's scale: the LKDTM kernels are debug builds (kconfigs/lkdtm.config), slower
# to boot than the scenario default (harness.config.Timeouts.l1_boot_s)
L1_BOOT_S = 180
MARK_RE = re.compile(r"lkdtm-record: (begin|end) ([A-Z][A-Z0-9_]*)")


@dataclass(frozen=True)
class CrashType:
    """One LKDTM crash type and what the console oracle must call its report."""
    name: str
    kind: str
    title: str
    until: str = ""       # the writer never returns: wait for this on the console (a regex) instead
    why: str = ""


# Order matters.  The warnings first (they only taint W).  HUNG_TASK before any oops: khungtaskd stays silent once
# the kernel is tainted D ("all bets are off"), and the task stays in D state for good.  Then the oopses: the
# writer dies, the kernel lives on.  SOFTLOCKUP spins one of L1's two CPUs with preemption off: the last.
# drivers/misc/lkdtm of 6.12 and 7.2 has no divide-by-zero type (no "divide error" oops to provoke).
CRASH_TYPES: tuple[CrashType, ...] = (
    CrashType("WARNING", "warning", "WARNING in lkdtm_WARNING", why="WARN_ON(++warn_counter)"),
    CrashType("WARNING_MESSAGE", "warning", "WARNING in lkdtm_WARNING_MESSAGE", why="WARN(1, msg)"),
    CrashType("REFCOUNT_DEC_ZERO", "refcount", "WARNING: refcount bug in lkdtm_REFCOUNT_DEC_ZERO",
              why="refcount_dec() to 0: WARN in lib/refcount.c"),
    CrashType("HUNG_TASK", "hang", "INFO: task hung in lkdtm_HUNG_TASK", until=r"blocked for more than \d+ seconds",
              why="TASK_UNINTERRUPTIBLE, schedule() forever; hung_task_timeout_secs=2, one warning"),
    CrashType("BUG", "bug", "kernel BUG in lkdtm_BUG", why="BUG(): ud2, invalid opcode oops"),
    CrashType("EXCEPTION", "oops", "BUG: unable to handle kernel NULL pointer dereference in lkdtm_EXCEPTION",
              why="write to address 0"),
    CrashType("ACCESS_NULL", "oops", "BUG: unable to handle kernel NULL pointer dereference in lkdtm_ACCESS_NULL",
              why="read from address 0"),
    CrashType("EXEC_NULL", "oops", "BUG: unable to handle kernel NULL pointer dereference in execute_location",
              why="call to address 0: RIP 0, the caller names it"),
    CrashType("WRITE_KERN", "oops", "BUG: unable to handle kernel paging request in lkdtm_WRITE_KERN",
              why="memcpy() over read-only kernel text"),
    CrashType("SOFTLOCKUP", "hang", "BUG: soft lockup in lkdtm_SOFTLOCKUP", until=r"BUG: soft lockup - CPU#",
              why="preempt_disable(), spin forever; watchdog_thresh=1"),
)
# On the KASAN kernel (kconfigs/kasan.config; kasan_multi_shot, or KASAN reports only its first bug): each bad
# access is reported and the kernel goes on; the NULL write of EXCEPTION meets KASAN's inline shadow check first.
KASAN_TYPES: tuple[CrashType, ...] = (
    CrashType("SLAB_LINEAR_OVERFLOW", "kasan", "KASAN: slab-out-of-bounds Write in lkdtm_SLAB_LINEAR_OVERFLOW",
              why="write 4 bytes past a kmalloc(1020)"),
    CrashType("READ_AFTER_FREE", "kasan", "KASAN: slab-use-after-free Read in lkdtm_READ_AFTER_FREE",
              why="read a kfree()d object"),
    CrashType("WRITE_AFTER_FREE", "kasan", "KASAN: slab-use-after-free Write in lkdtm_WRITE_AFTER_FREE",
              why="write a kfree()d object"),
    # lkdtm_SLAB_FREE_DOUBLE's second kmem_cache_free() is a tail call: the bad free returns into lkdtm_do_action,
    # and KASAN's own header names that ("double-free in lkdtm_do_action+0x32/0x50"), as syzkaller's title would
    CrashType("SLAB_FREE_DOUBLE", "kasan", "KASAN: double-free in lkdtm_do_action",
              why="kmem_cache_free() twice, the second a tail call"),
    CrashType("READ_BUDDY_AFTER_FREE", "kasan", "KASAN: use-after-free Read in lkdtm_READ_BUDDY_AFTER_FREE",
              why="read a free_page()d page"),
    CrashType("EXCEPTION", "oops", "general protection fault in lkdtm_EXCEPTION",
              why="write to address 0: KASAN's shadow check of 0 faults first (non-canonical address)"),
)
# kernels/<name>.yaml -> the crash types recorded on it (fixtures: tests/fixtures/consoles-lkdtm/<name>/)
KERNELS: dict[str, tuple[CrashType, ...]] = {
    "debian-6.12-debug": CRASH_TYPES,
    "debian-7.2-debug": CRASH_TYPES,
    "debian-7.2-kasan": KASAN_TYPES,
}
EXTRA_CMDLINE = {"debian-7.2-kasan": "kasan_multi_shot"}
BY_NAME = {c.name: c for c in CRASH_TYPES + KASAN_TYPES}

# No oops=panic, no panic_on_warn: the kernel lives on after each report.  panic=-1: a real panic still ends
# the boot at once (QEMU -no-reboot exits).  loglevel=7: every line of a report reaches the serial console (a hung
# task's stack is printed at KERN_INFO; the harness's runs keep loglevel=5 there and read L1's dmesg for the rest).
CMDLINE = ("console=ttyS0 loglevel=7 panic=-1 softlockup_panic=0 hung_task_panic=0 panic_on_warn=0 "
           "zswap.enabled=0")
SETTLE_S = 1.5            # after a report's first line, for its last lines to reach the console


@dataclass
class Recording:
    release: str
    cmdline: str
    accel: str
    console: str                                   # the whole serial console
    segments: dict[str, str] = field(default_factory=dict)   # type -> its marker segment
    writer: dict[str, str] = field(default_factory=dict)     # type -> provoke.sh's writer=... line
    offered: list[str] = field(default_factory=list)         # every type this kernel's LKDTM offers
    timings: dict[str, float] = field(default_factory=dict)  # boot_s, ssh_s, <TYPE>_s, record_s


def segments(console: str) -> dict[str, str]:
    """Each type's slice of the console: from its begin marker's line to its end marker's line (or to the next
    begin marker / the end of the log when the end marker is missing)."""
    lines = console.splitlines(keepends=True)
    out: dict[str, str] = {}
    cur, start = None, 0
    for i, line in enumerate(lines):
        m = MARK_RE.search(line)
        if not m:
            continue
        what, name = m.groups()
        if what == "begin":
            if cur is not None:
                out[cur] = "".join(lines[start:i])
            cur, start = name, i
        elif cur == name:
            out[cur] = "".join(lines[start:i + 1])
            cur = None
    if cur is not None:
        out[cur] = "".join(lines[start:])
    return out


def boot_part(console: str) -> str:
    """The console before the first begin marker: a real boot of the kernel, which must hold no report (the
    run's throwaway SSH public key on the command line echoes is blanked)."""
    m = re.search(r"^.*lkdtm-record: begin ", console, re.M)
    return re.sub(r"harness\.key=\S+", "harness.key=KEY", console[:m.start()] if m else console)


def _guest(sh, args: str, timeout: float, env: str = "") -> str:
    return sh.run(f"{env}sh -s -- {args}", timeout=timeout, stdin=PROVOKE.read_bytes())


def _wait_for(vm, pattern: re.Pattern, since: int, timeout: float) -> bool:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if pattern.search(vm.console_text(), since):
            return True
        if not vm.alive():
            raise InfraError(f"L1 QEMU exited while waiting for '{pattern.pattern}': {vm.stderr_tail()}")
        time.sleep(0.2)
    return False


def _provoke(sh, vm, ct: CrashType, scale: float, last: bool, log) -> str:
    """Fire one type and wait until its report is whole on the console and the end marker follows it; the
    writer's fate (provoke.sh's writer=... line)."""
    since = len(vm.console_text())
    # a writer that never returns: do not let provoke.sh wait the default 20 s on it
    out = _guest(sh, f"fire {shlex.quote(ct.name)}", 60 * scale, env="WAIT_S=1 " if ct.until else "")
    writer = out.strip().splitlines()[-1] if out.strip() else ""
    if ct.until:
        if not _wait_for(vm, re.compile(ct.until), since, 90 * scale):
            raise InfraError(f"{ct.name}: no '{ct.until}' on L1's console within {90 * scale:.0f} s")
    elif not writer.startswith("writer=exited"):
        raise InfraError(f"{ct.name}: the writer did not end ({writer or 'no answer'})")
    time.sleep(SETTLE_S)
    try:
        _guest(sh, f"end {shlex.quote(ct.name)}", 20 * scale)
        _wait_for(vm, re.compile(rf"lkdtm-record: end {ct.name}\b"), since, 20 * scale)
    except InfraError as e:      # a spinning CPU may leave L1 unable to answer: the segment ends with the log
        log(f"{ct.name}: no end marker ({e})")
        if not last:
            raise
    return writer


def record(kdir: Path, workdir: Path, types: tuple[CrashType, ...] = CRASH_TYPES, cpus: int = 2,
           extra_cmdline: str = "", log: Callable[[str], None] = lambda s: None) -> Recording:
    """Boot `kdir` (a kernel artifact folder) as L1, provoke each type in order, return the console cut up.
    Raises InfraError when L1 does not come up or a type's report does not appear."""
    from harness.images.l1 import build_l1_image
    from harness.images.l2 import build_l2_image
    from harness.kernel.prebuilt import ensure_prebuilt_kernel, load_kernel_dir
    from harness.vm import qemu
    from harness.vm.accel import choose_accel
    from harness.vm.l1boot import boot_l1
    from harness.vm.ssh import L1Shell, key_cmdline_arg, make_run_key

    meta = load_kernel_dir(kdir)
    workdir.mkdir(parents=True, exist_ok=True)
    accel = choose_accel(kdir / "bzImage")
    scale = accel.timeout_scale
    t = time.monotonic()
    # the L1 image carries an L2 kernel and image it never boots here: the harness's one L1 image, cached
    l1img = build_l1_image(kdir, meta["release"], build_l2_image(), ensure_prebuilt_kernel() / "bzImage")
    images_s = round(time.monotonic() - t, 2)
    key = make_run_key()
    cmdline = " ".join(w for w in (CMDLINE, extra_cmdline, key_cmdline_arg(key)) if w)
    spec = qemu.VMSpec(kdir / "bzImage", l1img.initramfs, cmdline, accel.qemu_args, 1024, cpus)
    t0 = time.monotonic()
    vm, boot_s = boot_l1(spec, workdir, accel, L1_BOOT_S * scale, on_retry=log)
    rec = Recording(meta["release"], cmdline.split(" harness.key=")[0], accel.mode, "")
    rec.timings.update(images_s=images_s, boot_s=round(boot_s, 2))
    sh = L1Shell(vm.ssh_port, key, l1img.host_key_pub, default_timeout=60 * scale)
    try:
        rec.timings["ssh_s"] = round(sh.connect(60 * scale, vm.alive), 2)
        rec.offered = _guest(sh, "types", 30 * scale).split()
        missing = [c.name for c in types if c.name not in rec.offered]
        if missing:
            raise InfraError(f"{meta['release']}: LKDTM offers no {', '.join(missing)}")
        for ct in types:
            t1 = time.monotonic()
            rec.writer[ct.name] = _provoke(sh, vm, ct, scale, ct is types[-1], log)
            rec.timings[f"{ct.name}_s"] = round(time.monotonic() - t1, 2)
            log(f"{ct.name}: {rec.writer[ct.name]} in {rec.timings[f'{ct.name}_s']} s")
    finally:
        sh.close()
        vm.qmp_quit()
    rec.timings["record_s"] = round(time.monotonic() - t0, 2)   # QEMU start to QEMU gone
    rec.console = vm.console_text()
    rec.segments = segments(rec.console)
    return rec


def record_kernel(name: str, kdir: Path, workdir: Path, types: tuple[CrashType, ...] | None = None,
                  log: Callable[[str], None] = lambda s: None) -> Recording:
    """record() with the crash types and command line KERNELS / EXTRA_CMDLINE give kernels/<name>.yaml."""
    return record(kdir, workdir, types or KERNELS[name], extra_cmdline=EXTRA_CMDLINE.get(name, ""), log=log)


def cached_kernel(name: str) -> Path | None:
    """The artifact folder of kernels/<name>.yaml if it is built and cached, else None (never builds)."""
    from harness.errors import HarnessError
    from harness.kernel import build, source
    yml = REPO / "kernels" / f"{name}.yaml"
    try:
        base = source.load_kernel_yaml(yml).spec.base
        if isinstance(base, source.DebianBase):
            source.debian_tarball(base.debian_source, install=False)
        return build.lookup(build.plan(yml))
    except HarnessError:
        return None
