"""Start L1's QEMU and wait for its init, once more on the QEMU TCG int3 boot flake.

One boot path for every caller that brings L1 up (a scenario case, the LKDTM recorder), so the flake's signature,
the retry policy and the console file of the failed attempt are the same everywhere.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from harness.errors import InfraError
from harness.vm import qemu
from harness.vm.accel import Accel

# QEMU 7.2 multi-threaded TCG: a rare L1 boot crash while the kernel patches its own text (feasibility notes): a
# CPU runs into the int3 that text_poke_bp() leaves at the site for a moment.  The site varies with what is being
# patched (sched_clock_cpu, sched_clock_idle_wakeup_event were seen with -smp 2: docs/races.md), so the marker is
# the int3 oops itself, before L1 is ready: nothing of the kernel under test's KVM has run by then.
TCG_BOOT_FLAKE = ("Oops: int3",)
L1_READY = "HARNESS-L1: ready"   # printed by the L1 image's init once SSH listens
FIRST_ATTEMPT_CONSOLE = "l1-console.attempt1.log"


def is_tcg_boot_flake(console: str) -> bool:
    """Pure: does a failed boot's console carry the TCG int3 flake's signature?"""
    return all(m in console for m in TCG_BOOT_FLAKE)


def boot_l1(spec: qemu.VMSpec, workdir: Path, accel: Accel, timeout_s: float,
            on_start: Callable[[qemu.QemuVM], None] = lambda vm: None,
            on_retry: Callable[[str], None] = lambda msg: None) -> tuple[qemu.QemuVM, float]:
    """Start L1 and wait up to `timeout_s` (already scaled for the accelerator) for its init: (the VM, seconds).

    Under TCG a first attempt that died of the int3 flake is retried once, its console kept as
    l1-console.attempt1.log; any other failure (or a second flake) raises InfraError with the VM killed."""
    for attempt in (1, 2):
        vm = qemu.QemuVM(spec, workdir)
        vm.start()
        on_start(vm)
        try:
            return vm, vm.wait_console(L1_READY, timeout_s, fail_markers=("Kernel panic",))
        except InfraError:
            text = vm.console_text()
            vm.kill()
            if attempt == 1 and accel.mode == "tcg" and is_tcg_boot_flake(text):
                on_retry("L1 boot hit the QEMU 7.2 TCG int3 flake; retried")
                os.replace(vm.console, workdir / FIRST_ATTEMPT_CONSOLE)
                continue
            raise
    raise AssertionError("unreachable")
