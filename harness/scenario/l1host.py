"""The L1 driver: knobs → L1 setup, L2 launch in a memory-limited cgroup, the seeded reclaim schedule, and the
collection of the guest's output (L2's console, or the micro-guest VMM's stdout: the files of the guest contract,
harness.guest.contract.GuestFiles), vmstat samples and end-of-run state.  Every L1 command goes over SSH."""
from __future__ import annotations

import random
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from harness.config import DelayKnob, Scenario
from harness.errors import InfraError
from harness.evidence import MonitorEvent
from harness.guest.contract import LINUX_L2_FILES, GuestFiles
from harness.images.delay import L1_PATH as DELAY_KO_L1
from harness.oracles import ledger as ledger_oracle
from harness.vm.ssh import L1Shell

VMSTAT_KEYS = ("pswpin", "pswpout", "pgmajfault", "swap_ra", "swap_ra_hit", "pgsteal_anon", "pgscan_anon",
               "workingset_refault_anon", "thp_fault_alloc", "pgfault")
# vmstat.csv: the counters plus L2's cgroup memory.current (bytes), for the timeline plot
CSV_KEYS = VMSTAT_KEYS + ("memory_current",)


def parse_kv(text: str, sep: str = "=") -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if sep in line:
            k, v = line.split(sep, 1)
            out[k.strip()] = v.strip()
    return out


def parse_vmstat(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def vmstat_delta(before: dict[str, int], after: dict[str, int], keys=VMSTAT_KEYS) -> dict[str, int] | None:
    """The run's vmstat counters (after - before), or None when `after` is no whole sample of this boot: a
    counter missing from it or lower than at the start (a read cut short as L1 was lost, seen as pgfault=-3499
    beside nine zeros on a run that lost L1)."""
    delta = {k: after[k] - before.get(k, 0) for k in keys if k in after}
    if any(k in before and k not in after for k in keys) or any(v < 0 for v in delta.values()):
        return None
    return delta


def setup_env(s: Scenario) -> dict[str, str]:
    return {"SWAP_KIND": s.swap.kind, "SWAP_MB": str(s.swap.size_mb), "THP": s.thp,
            "MGLRU": "y" if s.mglru else "n", "TDP_MMU": "Y" if s.tdp_mmu else "N", "KSM": "1" if s.ksm else "0",
            "PAGE_CLUSTER": str(s.page_cluster), "SWAPPINESS": str(s.swappiness),
            "KVM_INTEL_PARAMS": s.kvm_intel.params(), **delay_env(s.delays)}


def delay_env(delays: list[DelayKnob]) -> dict[str, str]:
    """setup-host.sh's DELAY_KO / DELAY_PARAMS: kvmdelay's positional array parameters (none: no module)."""
    if not delays:
        return {}
    cols = {"func": [d.func for d in delays], "offset": [str(d.offset) for d in delays],
            "ret": ["1" if d.ret else "0" for d in delays], "us": [str(d.us) for d in delays],
            "ppm": [str(round(d.prob * 1_000_000)) for d in delays]}
    return {"DELAY_KO": DELAY_KO_L1, "DELAY_PARAMS": " ".join(f"{k}={','.join(v)}" for k, v in cols.items())}


def delay_counts(text: str, n: int) -> dict[str, list[int]] | None:
    """kvmdelay's /sys/module/kvmdelay/parameters/seen and fired (one comma-separated line each, the module's
    whole array) -> the first n entries of each: how often each probe was hit and how often it delayed.
    None when the text is not those two lines (module not loaded: cat's error)."""
    lines = text.split()
    if len(lines) != 2 or not all(re.fullmatch(r"\d+(,\d+)*", ln) for ln in lines):
        return None
    seen, fired = ([int(x) for x in ln.split(",")[:n]] for ln in lines)
    return {"seen": seen, "fired": fired}


# The ledger's DMA disk (ledger.dma_frac > 0): its offsets cycle, so a few MiB are enough.
DMA_DISK_MB = 4


def start_l2_env(s: Scenario) -> dict[str, str]:
    """The environment of guest-images/l1/start-l2.sh."""
    return {"L2_MEM_MB": str(s.l2_memory_mb), "L2_CPUS": str(s.l2_cpus), "MEMORY_MAX_MB": str(s.memory_max_mb),
            "BACKEND": s.memory_backend, "L2_APPEND": l2_append(s), "KERNEL_NODE_MB": str(s.l2_kernel_node_mb),
            "DMA_DISK_MB": str(DMA_DISK_MB if s.ledger.dma_frac > 0 else 0)}


def l2_append(s: Scenario) -> str:
    lg = s.ledger
    ledger = (f"pages:{s.ledger_pages},rounds:{lg.rounds},seed:{s.seed},write-frac:{lg.write_fraction},"
              f"window:{lg.window_s},batch:{lg.batch_pages},selftest:{lg.selftest_pages},trail:{lg.trail_batches}")
    if s.l2_kernel_node_mb:
        ledger += ",node:1"
    if lg.dma_frac > 0:  # L2's init finds the disk (start-l2.sh, DMA_DISK_MB) and adds --dma-dev
        ledger += f",dma-frac:{lg.dma_frac}"
    # L2 dies loudly: an oops panics, a panic powers off (QEMU -no-reboot exits).
    # loglevel=5: warnings and worse reach the console (the oracle needs them) but the boot chatter does not;
    # every console byte is a nested exit, which costs seconds under TCG.
    # L2 is only the guest: no side-channel mitigations (each costs exits under nested TCG), no zeroing on
    # allocation (the ledger writes every page itself), no 64 MiB bounce buffer (L2's virtio devices have no
    # VIRTIO_F_ACCESS_PLATFORM, so they bypass the DMA API: the DMA disk's QEMU reads the ledger's own pages).
    words = ["console=ttyS0", "loglevel=5", "oops=panic", "panic=-1", "softlockup_panic=1", "mitigations=off",
             "init_on_alloc=0", "swiotlb=noforce", f"harness.ledger={ledger}"]
    if s.l2_kernel_node_mb:
        # the data DIMM comes up as ZONE_MOVABLE on node 1; NUMA balancing would only add hinting faults
        words += ["movable_node", "memhp_default_state=online_movable", "numa_balancing=disable"]
    if s.l2_fault == "panic":
        words.append("harness.fault=panic:20")
    return " ".join(words)


def env_prefix(env: dict[str, str]) -> str:
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())


def reclaim_schedule(seed: int) -> random.Random:
    return random.Random(f"reclaim-{seed}")


# by /proc/*/comm: L1's busybox has no pkill
_KILL_COMM = "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = {comm} ] && kill -9 ${{p#/proc/}}; done; true"
INJECT_CMDS = {"kill-l2-qemu": _KILL_COMM.format(comm="qemu-system-x86"),
               "kill-l1-sshd": f"(sleep 0.2; {_KILL_COMM.format(comm='dropbear')}) >/dev/null 2>&1 &"}
_RC_RE = re.compile(r"^-?\d+$")


@dataclass
class Monitor:
    """Follows L2's console from L1 (tail -F over SSH), saving it locally and folding ledger events; drives the
    seeded reclaim schedule; samples vmstat (the L1 heartbeat); ends on L2's end, a stall, a frozen L1 or the
    wall clock.  It records what it saw (MonitorEvent), never a verdict: the judge decides."""
    sh: L1Shell
    scenario: Scenario
    console_path: Path
    vmstat_path: Path
    timeout_scale: float
    t_run: float  # the run's start (monotonic): event times are seconds since then
    on_event: Callable[[dict], None] = lambda ev: None
    on_l2_up: Callable[[], None] | None = None  # called once, when L2's init announces itself
    l1_state: Callable[[], str | None] = lambda: None  # why L1's QEMU cannot answer (stopped, gone), or None
    on_sample: Callable[[float, dict], None] = lambda t, st: None  # each vmstat sample (live progress)
    files: GuestFiles = LINUX_L2_FILES  # where the guest's output, exit status and cgroup are in L1
    settle_s: float = 3.0  # after the ledger's done line, quiet for this long before the exit status is read
    sample_s: float = 5.0  # the vmstat heartbeat's period
    ledger: ledger_oracle.LedgerResult = field(default_factory=ledger_oracle.LedgerResult)
    events: list[MonitorEvent] = field(default_factory=list)
    l2_boot_s: float | None = None
    l2_rc: int | None = None
    reclaim_log: list[dict] = field(default_factory=list)
    first_bad_wall: float | None = None  # monotonic time the first bad page reached L0
    stopped_early: bool = False
    l2_end_wall: float | None = None  # when L0 saw L2's QEMU gone or hung
    swap_peak_frac: float = 0.0  # swap more than half full drops the swap cache and hides the race
    injected: bool = False

    def run(self, t_start_l2: float, deadline: float) -> None:
        s = self.scenario
        self._rng = reclaim_schedule(s.seed)
        self._t_l2 = t_start_l2
        self._deadline = deadline
        self._pending_reclaim: list[float] = []
        self._last_line = self._last_vmstat = time.monotonic()
        self._last_vmstat = 0.0
        with open(self.console_path, "ab") as con, open(self.vmstat_path, "a") as vm:
            stream = self.sh.stream(f"tail -n +1 -F {self.files.stream} 2>/dev/null", sink=con)
            vm.write("t," + ",".join(CSV_KEYS) + "\n")
            while not self._step(stream, vm):
                pass
            self._drain(stream)

    def cmd_timeout(self) -> float:
        """An L1 command's deadline: the scenario's, never past the wall clock, never longer than a stall."""
        t = self.scenario.timeouts
        left = self._deadline - time.monotonic()
        return max(1.0, min(t.l1_cmd_s * self.timeout_scale, t.stall_s * self.timeout_scale, left))

    def _event(self, kind: str, detail: str) -> bool:
        self.events.append(MonitorEvent(kind=kind, at_s=round(time.monotonic() - self.t_run, 2), detail=detail))
        return True

    def _step(self, stream, vm) -> bool:
        """One poll (L2's console lines for up to 50 ms, then the schedule); True when following L2 is over."""
        now = time.monotonic()
        ended = False
        for raw in stream.lines(deadline=now + 0.05):
            ended |= self._on_line(raw, now)
        if ended and self._ended(now):
            return True
        s = self.scenario
        if s.stop_on_first_finding and self.first_bad_wall is not None and now - self.first_bad_wall > 2:
            self.stopped_early = True  # a moment to collect the burst's other pages, then stop
            return True
        if self._pending_reclaim and now >= self._pending_reclaim[0]:
            self._reclaim(now)
            return False
        if now - self._last_vmstat >= self.sample_s:
            self._last_vmstat = now
            if self._sample(now, vm):
                return True
        if self._check_end(now):
            return True
        if stream.ended():
            raise InfraError("SSH stream of L2's console ended unexpectedly")
        return False

    def _on_line(self, raw: bytes, now: float) -> bool:
        """Fold one line of the guest's output; True when it says the guest has ended."""
        if self.l2_boot_s is None and self.files.up_marker in raw:
            self.l2_boot_s = now - self._t_l2  # L2's kernel is up and runs our init (micro: the VMM starts)
            if self.on_l2_up:
                self.on_l2_up()
            self._last_line = time.monotonic()
        if self.files.exit_marker is not None and self.files.exit_marker in raw:
            return True
        ev = ledger_oracle.parse_line(raw.decode(errors="replace"))
        if not ev:
            return False
        self._last_line = now
        ledger_oracle.feed(self.ledger, ev)
        if ev["ev"] == "bad" and self.first_bad_wall is None:
            self.first_bad_wall = now
        self.on_event(ev)
        s = self.scenario
        if ev["ev"] == "window" and s.reclaim.writes_per_window:
            w, n = float(ev.get("seconds", 0)), s.reclaim.writes_per_window
            self._pending_reclaim += [now + w * (i + 0.5) / n for i in range(n)]  # spread over the window
        if ev["ev"] == "round" and s.inject != "none" and not self.injected and ev["round"] >= s.inject_round:
            self.injected = True
            self.sh.run(INJECT_CMDS[s.inject], timeout=self.cmd_timeout(), check=False)
        return False

    def _ended(self, now: float) -> bool:
        """The guest said it ended: read its exit status now (no need to wait for the heartbeat)."""
        rc = self._l2_rc()
        if rc is None:
            return False
        self.l2_end_wall, self.l2_rc = now, rc
        return True

    def _reclaim(self, now: float) -> None:
        self._pending_reclaim.pop(0)
        mb = self._rng.randint(self.scenario.reclaim.min_mb, self.scenario.reclaim.max_mb)
        t0 = time.monotonic()
        out = self.sh.run(f"echo {mb}M > {self.files.cgroup}/memory.reclaim 2>&1; echo rc=$?",
                          timeout=self.cmd_timeout(), check=False)
        self.reclaim_log.append({"t": round(now - self._t_l2, 2), "mb": mb, "s": round(time.monotonic() - t0, 2),
                                 "out": out.strip()[-80:]})

    def _sample(self, now: float, vm) -> bool:
        """The heartbeat: vmstat and swap fill, and whether L2's QEMU has ended.  True when it has."""
        st = parse_vmstat(self.sh.run("cat /proc/vmstat; grep -E '^Swap(Total|Free):' /proc/meminfo | tr -d ':kB';"
                                      f" echo memory_current $(cat {self.files.cgroup}/memory.current)",
                                      timeout=self.cmd_timeout()))
        if st.get("SwapTotal"):
            self.swap_peak_frac = max(self.swap_peak_frac, round(1 - st.get("SwapFree", 0) / st["SwapTotal"], 3))
        vm.write(f"{now - self._t_l2:.1f}," + ",".join(str(st.get(k, 0)) for k in CSV_KEYS) + "\n")
        vm.flush()
        self.on_sample(now - self._t_l2, st)
        rc = self._l2_rc()
        if rc is None:
            return False
        self.l2_end_wall, self.l2_rc = now, rc
        return True

    def _l2_rc(self) -> int | None:
        rc = self.sh.run(f"cat {self.files.rc} 2>/dev/null", timeout=self.cmd_timeout(), check=False).strip()
        return (int(rc) if _RC_RE.match(rc) else -1) if rc else None

    def _check_end(self, now: float) -> bool:
        t = self.scenario.timeouts
        if self.ledger.done and now - self._last_line > self.settle_s:
            # the ledger finished; L2 is powering off: give it a moment, then stop following
            rc = self._l2_rc()
            if rc is not None or now - self._last_line > 30:
                self.l2_rc = rc
                return True
        boot_limit = t.l2_boot_s * self.timeout_scale
        if self.l2_boot_s is None and now - self._t_l2 > boot_limit:
            return self._l1_unwell() or self._event(
                "boot-timeout", f"no '{self.files.up_marker.decode()}' line within {boot_limit:.0f} s")
        stall = t.stall_s * self.timeout_scale
        if self.l2_boot_s is not None and not self.ledger.done and now - self._last_line > stall:
            if self._l1_unwell():
                return True
            self.l2_end_wall = now  # the hang is known from now on
            return self._event("stall", f"no ledger output for {stall:.0f} s while L1 answered")
        if now > self._deadline:
            return self._event("wall-clock", f"timeouts.total_s={t.total_s:.0f} s passed while L2 ran")
        return False

    def _l1_unwell(self) -> bool:
        """Before blaming L2 for silence: is L1 itself stopped, gone or deaf?  Records why and returns True."""
        why = self.l1_state()
        if why:
            return self._event("l1-qemu-stopped" if "stopped" in why else "l1-qemu-gone", why)
        deaf = self.sh.responsive(timeout=min(10.0, self.cmd_timeout()))
        return self._event("l1-unresponsive", f"L1 does not answer over SSH: {deaf}") if deaf else False

    def _drain(self, stream) -> None:
        """Save the console's last bytes (the sink keeps them); the judge re-reads the whole saved file."""
        if not self.sh.broken:
            time.sleep(0.3)
            try:
                stream.read_ready()
            except InfraError:
                pass
        stream.close()
