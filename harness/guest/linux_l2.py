"""The first guest: a Linux L2 (Debian's prebuilt 6.12, the same for every kernel under test) running the ledger,
started by guest-images/l1/start-l2.sh in a memory-limited cgroup, its result lines on a virtio-serial channel."""
from __future__ import annotations

from pathlib import Path

from harness.guest.base import Guest
from harness.guest.contract import LINUX_L2_FILES, linux_l2_gfn_range
from harness.images.l1 import L1Image, build_l1_image
from harness.images.l2 import build_l2_image
from harness.kernel.prebuilt import ensure_prebuilt_kernel, load_kernel_dir
from harness.scenario import l1host


class LinuxL2(Guest):
    kind = "linux"
    files = LINUX_L2_FILES

    def l1_image(self, kernel_dir: Path, release: str) -> tuple[L1Image, dict]:
        # L2 is only the guest: it always runs Debian's prebuilt 6.12 (memory hotplug for its data node, NUMA),
        # so that every kernel under test (L1) faces the same guest.
        l2_kdir = ensure_prebuilt_kernel()
        l2img = build_l2_image(l2_kdir)
        l1img = build_l1_image(kernel_dir, release, l2img, l2_kdir / "bzImage")
        return l1img, {"l1": l1img.key, "l2": l2img.key, "l1_modules": l1img.modules,
                       "l2_kernel": load_kernel_dir(l2_kdir).get("release")}

    def start_command(self) -> str:
        return f"{l1host.env_prefix(l1host.start_l2_env(self.s))} /harness/start-l2.sh"

    def started_message(self) -> str:
        s = self.s
        return (f"L2 started: {s.l2_memory_mb} MiB RAM ({s.memory_backend}), cgroup memory.max={s.memory_max_mb} "
                f"MiB, ledger {s.ledger.size_mb} MiB x {s.ledger.rounds} rounds")

    def trace_gfn_range(self) -> tuple[int, int]:
        return linux_l2_gfn_range(self.s.l2_memory_mb, self.s.l2_kernel_node_mb)

    def evidence_knobs(self) -> dict:
        s = self.s
        return {"selftest_pages": s.ledger.selftest_pages, "min_pswpout": s.thresholds.min_pswpout,
                "min_swap_ra_hit": s.thresholds.min_swap_ra_hit, "dma_frac": s.ledger.dma_frac}
