"""The second guest: the micro-guest VMM (guest-images/microvm/, static C) run directly in L1 by
guest-images/l1/start-micro.sh.  No guest kernel: the VMM stages each choreography page by page and prints the
ledger's lines and its own @@MICRO lines on stdout (docs/microguest.md)."""
from __future__ import annotations

import shlex
from pathlib import Path

from harness.guest.base import Guest
from harness.guest.contract import MICRO_DATA_FILE, MICRO_FILES, RACE_CHOREOGRAPHIES, data_gfn_range
from harness.images.l1 import L1Image, build_l1_image
from harness.images.microvm import build_microvm


def microvm_argv(s) -> list[str]:
    """microvm's command line for a scenario (the contract's options)."""
    m = s.micro
    argv = ["--pages", str(m.pages), "--rounds", str(m.rounds), "--seed", str(s.seed),
            "--backend", s.memory_backend, "--chor", ",".join(m.choreographies), "--vcpus", str(m.vcpus),
            "--batch", str(m.batch), "--selftest", str(m.selftest_pages)]
    if any(c in RACE_CHOREOGRAPHIES for c in m.choreographies):
        argv += ["--race-ms", str(m.race_ms)] + (["--race-split"] if m.race_split else [])
    if s.memory_backend == "file":
        argv += ["--file", MICRO_DATA_FILE]
    return argv


class MicroGuest(Guest):
    kind = "micro"
    files = MICRO_FILES
    arm_trace_before_start = True
    settle_s = 0.3
    sample_s = 2.0

    def l1_image(self, kernel_dir: Path, release: str) -> tuple[L1Image, dict]:
        vmm = build_microvm()
        l1img = build_l1_image(kernel_dir, release, None, None, microvm=vmm)
        return l1img, {"l1": l1img.key, "microvm": vmm.name, "l1_modules": l1img.modules}

    def start_command(self) -> str:
        return f"MICRO_ARGS={shlex.quote(' '.join(microvm_argv(self.s)))} /harness/start-micro.sh"

    def started_message(self) -> str:
        s, m = self.s, self.s.micro
        return (f"micro-guest started: {', '.join(m.choreographies)}; {m.pages} pages ({s.memory_backend}) x "
                f"{m.rounds} rounds, batch {m.batch}, {m.vcpus} vCPU(s)")

    def trace_gfn_range(self) -> tuple[int, int]:
        return data_gfn_range(self.s.micro.pages)

    def evidence_knobs(self) -> dict:
        s = self.s
        return {"selftest_pages": s.micro.selftest_pages, "min_pswpout": s.thresholds.micro_min_pswpout,
                "min_swap_ra_hit": 0, "dma_frac": 0.0}
