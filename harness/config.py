"""Scenario YAML → typed, validated objects.  Errors name the file, the key and its line."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.guest.contract import CHOREOGRAPHIES, DEFAULT_CHOREOGRAPHIES, unknown_choreographies
from harness.yamlload import load_model, parse_model


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class L1Knobs(Strict):
    memory_mb: int = Field(4096, ge=1024)
    # 1, as in the setup that exposed lost writes.  -smp 2 crashes a few % of boots under QEMU 7.2 TCG (int3 in
    # sched_clock_cpu; the driver retries that once) and once saw L2 reset mid-run on a clean kernel.
    cpus: int = Field(1, ge=1, le=8)
    cmdline: str = ""


class SwapKnobs(Strict):
    kind: Literal["disk", "zram"] = "disk"  # zram (synchronous swap) hides the race: disk by default
    size_mb: int = Field(2048, ge=64)


class ReclaimKnobs(Strict):
    """memory.reclaim writes in each ledger reclaim window; amounts drawn from the seeded RNG."""
    min_mb: int = Field(32, ge=0)
    max_mb: int = Field(128, ge=0)
    writes_per_window: int = Field(2, ge=0, le=20)

    @model_validator(mode="after")
    def _order(self):
        if self.min_mb > self.max_mb:
            raise ValueError("min_mb must be <= max_mb")
        return self


class LedgerKnobs(Strict):
    size_mb: int = Field(32, ge=1)
    rounds: int = Field(12, ge=1, le=1000)
    write_fraction: float = Field(0.5, gt=0, le=1)
    window_s: float = Field(2.0, ge=0)
    batch_pages: int = Field(256, ge=1)
    selftest_pages: int = Field(0, ge=0)  # >0: simulate lost writes in L2 (proves the verifier)
    # >0: also re-verify the batch rewritten this many batches ago, so a loss shows within the round
    trail_batches: int = Field(24, ge=0)
    # >0: host-side reads of guest pages (virtio DMA).  Before each batch is read in rounds >= 1, the ledger
    # writes this fraction of its pages (whole aligned 8-gfn groups, seeded) to a small virtio disk with O_DIRECT,
    # so L1's QEMU reads them: swapped in writable but clean with no SPTE, the pages the shadow MMU's prefetch
    # (tdp_mmu: false) maps.  Exposes a kernel that releases prefetched pages clean (docs/detection.md).
    dma_frac: float = Field(0.0, ge=0, le=1)


class KvmIntelKnobs(Strict):
    """kvm_intel parameters of L1's KVM, the host under test (None: the module's default).  They need an Intel L1
    (KVM on an Intel host: QEMU's TCG emulates SVM only): setup-host.sh refuses them on an AMD L1 and checks that
    each one took (a CPU without EPT A/D bits reads eptad=N whatever was asked)."""
    eptad: bool | None = None  # EPT accessed/dirty bits; N: A/D-disabled SPTEs, whose "dirty" is their W or D bit
    pml: bool | None = None  # page-modification logging (vmx.c's enable_pml); Y needs eptad=Y

    def params(self) -> str:
        """modprobe's words, e.g. "eptad=Y pml=N" ("" when nothing is set)."""
        return " ".join(f"{k}={'Y' if v else 'N'}" for k, v in self.model_dump().items() if v is not None)


class TraceKnobs(Strict):
    enabled: bool = True
    rules: Literal["auto", "zap-time", "create-time"] = "auto"
    max_mb: int = Field(512, ge=1)


class Thresholds(Strict):
    """A pass counts only if the run could have failed (DESIGN §6 sensitivity)."""
    min_pswpout: int = Field(10000, ge=0)
    min_swap_ra_hit: int = Field(10000, ge=0)
    # guest: micro pages out exactly the pages in play (no readahead, no background pressure): its gate is the
    # VMM's own counters (pages out and back in) plus this much of L1's pswpout (capped at micro.pages)
    micro_min_pswpout: int = Field(64, ge=0)


class MicroKnobs(Strict):
    """The micro-guest (guest: micro): a VMM of our own in L1 stages the race page by page (docs/microguest.md).
    Its backend is the scenario's memory_backend (plus "thp", micro only)."""
    # the defaults are scenarios/micro.yaml's: every choreography that needs no THP backend or KSM, 2 MiB, once
    choreographies: list[str] = Field(default_factory=lambda: list(DEFAULT_CHOREOGRAPHIES), min_length=1)
    pages: int = Field(512, ge=1, le=1 << 20)
    rounds: int = Field(1, ge=1, le=10000)
    vcpus: int = Field(1, ge=1, le=8)
    batch: int = Field(256, ge=1)
    selftest_pages: int = Field(0, ge=0)  # >0: the VMM restores this many pages to an old copy (proves the oracle)
    # race-pageout: how long, per batch, the pager pages out and reclaims while the vCPU spins (milliseconds)
    race_ms: int = Field(1000, ge=1, le=600000)
    # race-pageout: reclaim (with MGLRU's aging of KVM's SPTEs) in a thread of its own, on another L1 CPU than
    # the pager's zaps (the window of a lockless aging store against a zap)
    race_split: bool = False

    @model_validator(mode="after")
    def _names(self):
        bad = unknown_choreographies(self.choreographies)
        if bad:
            raise ValueError(f"unknown choreography {', '.join(map(repr, bad))} (valid: {', '.join(CHOREOGRAPHIES)})")
        if self.selftest_pages > self.pages:
            raise ValueError("selftest_pages must not exceed pages")
        return self


class DelayKnob(Strict):
    """One delay injected into L1's kernel to widen a race window (guest-images/delay/kvmdelay.c, docs/races.md):
    a busy-wait of `us` microseconds with probability `prob` at func+offset, or when func returns (ret)."""
    # a kallsyms name, or alternatives a|b: the first this kernel has is probed (names differ across versions)
    func: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*(\|[A-Za-z_][A-Za-z0-9_.]*)*$", max_length=240)
    offset: int = Field(0, ge=0, le=1 << 16)
    ret: bool = False
    us: int = Field(ge=1, le=20000)
    prob: float = Field(1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _where(self):
        if self.ret and self.offset:
            raise ValueError("a delay is at func+offset or at func's return (ret: true), not both")
        return self


class Timeouts(Strict):
    """Seconds under TCG; scaled down when KVM is usable."""
    l1_boot_s: float = 90
    l2_boot_s: float = 120
    stall_s: float = 240  # no ledger line for this long → L2 hang (or, when L1 does not answer, L1 frozen)
    total_s: float = 900  # the wall clock: it ends the run whatever the run is waiting on
    l1_cmd_s: float = Field(60, gt=0)  # every L1 command's deadline (capped by what is left of total_s)


class Scenario(Strict):
    name: str = "default"
    seed: int = Field(1, ge=0)
    # the guest L1's KVM runs: linux (L2 = Debian's kernel + the ledger, realistic, pressure finds the pages by
    # chance) or micro (a VMM of our own stages each window page by page; a verdict in seconds)
    guest: Literal["linux", "micro"] = "linux"
    micro: MicroKnobs = MicroKnobs()
    l1: L1Knobs = L1Knobs()
    l2_memory_mb: int = Field(256, ge=64)
    l2_cpus: int = Field(1, ge=1, le=8)
    memory_max_mb: int = Field(16, ge=8)
    memory_backend: Literal["anon", "memfd", "file", "thp"] = "anon"  # thp: guest micro only
    # L2's kernel gets its own NUMA node of this size, outside memory.max (see guest-images/l1/start-l2.sh);
    # the ledger binds to the other node.  0: one node, L2's kernel shares the pressure (and a broken L1's
    # lost writes kill L2 before the ledger can name a page).
    l2_kernel_node_mb: int = Field(128, ge=0)
    swap: SwapKnobs = SwapKnobs()
    thp: Literal["never", "always", "madvise"] = "never"
    mglru: bool = True
    ksm: bool = False
    tdp_mmu: bool = True
    kvm_intel: KvmIntelKnobs = KvmIntelKnobs()
    page_cluster: int = Field(3, ge=0, le=10)
    swappiness: int = Field(60, ge=0, le=200)
    reclaim: ReclaimKnobs = ReclaimKnobs()
    ledger: LedgerKnobs = LedgerKnobs()
    trace: TraceKnobs = TraceKnobs()
    thresholds: Thresholds = Thresholds()
    timeouts: Timeouts = Timeouts()
    l2_fault: Literal["none", "panic"] = "none"  # panic: L2 writes 'c' to /proc/sysrq-trigger mid-workload
    # Faults of the machinery, injected by the harness itself once the ledger reports round `inject_round`
    # (the fault-injection tests): each must end in a named infrastructure verdict, never a finding or a hang.
    inject: Literal["none", "kill-l2-qemu", "kill-l1-sshd"] = "none"
    inject_round: int = Field(1, ge=0)
    # Delays injected into L1's kernel (a kprobe module built against the kernel under test), loaded by the L1
    # set-up before the workload.  Empty: no module, behaviour unchanged.
    delays: list[DelayKnob] = Field(default_factory=list, max_length=8)
    # Matrix cells expected to find stop at the first lost write (time to catch is what they measure).
    stop_on_first_finding: bool = False

    @model_validator(mode="after")
    def _fit(self):
        if self.memory_backend == "thp" and self.guest != "micro":
            raise ValueError("memory_backend thp is the micro-guest's (guest: micro); L2's RAM is anon, memfd or "
                             "file, with the thp knob")
        if self.guest == "micro":
            self._micro_fit()
        if self.l2_kernel_node_mb:
            if self.l2_kernel_node_mb < 96:
                raise ValueError("l2_kernel_node_mb must be 0 (one node) or at least 96 (L2's kernel lives there)")
            data = self.l2_memory_mb - self.l2_kernel_node_mb
            if data <= 0 or data % 128:
                raise ValueError(f"l2_memory_mb - l2_kernel_node_mb (the data DIMM, {data} MiB) must be a positive "
                                 "multiple of 128 MiB (L2 onlines memory in 128 MiB blocks)")
            if self.ledger.size_mb > data - 8:
                raise ValueError(f"ledger.size_mb must leave 8 MiB of the data DIMM ({data} MiB) free")
            if self.memory_max_mb >= self.ledger.size_mb:
                raise ValueError("memory_max_mb must be below ledger.size_mb, or the ledger never swaps")
        else:
            if self.memory_max_mb >= self.l2_memory_mb:
                raise ValueError("memory_max_mb must be below l2_memory_mb, or L2 never swaps")
            if self.ledger.size_mb > self.l2_memory_mb - 96:
                raise ValueError(f"ledger.size_mb must leave ~96 MiB of l2_memory_mb ({self.l2_memory_mb}) for L2's kernel")
        if self.l2_memory_mb * 2 > self.swap.size_mb:
            raise ValueError("swap.size_mb must be at least twice l2_memory_mb: swap more than half full hides the race")
        return self

    def _micro_fit(self) -> None:
        """Choreographies that need a backend or a knob say so before L1 boots, not as microvm's exit 2 after."""
        chors = self.micro.choreographies
        thp = [c for c in chors if c.startswith("thp-")]
        if thp and self.memory_backend != "thp":
            raise ValueError(f"micro choreography {thp[0]} needs memory_backend: thp")
        if self.memory_backend == "thp" and self.thp == "never":
            raise ValueError("memory_backend thp needs thp: madvise or always in L1")
        if "ksm-then-write" in chors and not self.ksm:
            raise ValueError("micro choreography ksm-then-write needs ksm: true")

    @property
    def ledger_pages(self) -> int:
        return self.ledger.size_mb * 256

    @property
    def workload_rounds(self) -> int:
        """The rounds the guest's workload reports (progress)."""
        return self.micro.rounds if self.guest == "micro" else self.ledger.rounds


def parse_scenario(text: str, source: str = "<scenario>", overrides: list[str] | None = None) -> Scenario:
    return parse_model(text, source, Scenario, overrides or ())


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    return load_model(path, Scenario, overrides or (), what="scenario")
