"""The L1 driver: knobs → L1 setup, L2 launch in a memory-limited cgroup, the seeded reclaim schedule, and the
collection of L2's console, vmstat samples and end-of-run state.  Every L1 command goes over SSH."""
from __future__ import annotations

import random
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from harness.config import Scenario
from harness.errors import InfraError
from harness.oracles import ledger as ledger_oracle
from harness.vm.ssh import L1Shell

VMSTAT_KEYS = ("pswpin", "pswpout", "pgmajfault", "swap_ra", "swap_ra_hit", "pgsteal_anon", "pgscan_anon",
               "workingset_refault_anon", "thp_fault_alloc", "pgfault")


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


def vmstat_delta(before: dict[str, int], after: dict[str, int], keys=VMSTAT_KEYS) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys if k in after or k in before}


def setup_env(s: Scenario) -> dict[str, str]:
    return {"SWAP_KIND": s.swap.kind, "SWAP_MB": str(s.swap.size_mb), "THP": s.thp,
            "MGLRU": "y" if s.mglru else "n", "TDP_MMU": "Y" if s.tdp_mmu else "N", "KSM": "1" if s.ksm else "0",
            "PAGE_CLUSTER": str(s.page_cluster), "SWAPPINESS": str(s.swappiness)}


def l2_append(s: Scenario) -> str:
    lg = s.ledger
    ledger = (f"pages:{s.ledger_pages},rounds:{lg.rounds},seed:{s.seed},write-frac:{lg.write_fraction},"
              f"window:{lg.window_s},batch:{lg.batch_pages},selftest:{lg.selftest_pages},trail:{lg.trail_batches}")
    if s.l2_kernel_node_mb:
        ledger += ",node:1"
    # L2 dies loudly: an oops panics, a panic powers off (QEMU -no-reboot exits).
    # loglevel=5: warnings and worse reach the console (the oracle needs them) but the boot chatter does not;
    # every console byte is a nested exit, which costs seconds under TCG.
    # L2 is only the guest: no side-channel mitigations (each costs exits under nested TCG), no zeroing on
    # allocation (the ledger writes every page itself), no 64 MiB bounce buffer (L2 has no DMA devices).
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


@dataclass
class Monitor:
    """Follows L2's console from L1 (tail -F over SSH), saving it locally and folding ledger events."""
    sh: L1Shell
    scenario: Scenario
    console_path: Path
    vmstat_path: Path
    timeout_scale: float
    on_event: Callable[[dict], None] = lambda ev: None
    on_l2_up: Callable[[], None] | None = None  # called once, when L2's init announces itself
    ledger: ledger_oracle.LedgerResult = field(default_factory=ledger_oracle.LedgerResult)
    infra: list[dict] = field(default_factory=list)
    l2_findings: list[dict] = field(default_factory=list)
    l2_boot_s: float | None = None
    l2_rc: int | None = None
    reclaim_log: list[dict] = field(default_factory=list)
    first_bad_wall: float | None = None  # monotonic time the first bad page reached L0
    stopped_early: bool = False
    l2_end_wall: float | None = None  # when L0 saw L2's QEMU gone (a crash under a broken L1 is a finding)
    swap_peak_frac: float = 0.0  # swap more than half full drops the swap cache and hides the race

    def run(self, t_start_l2: float, deadline: float) -> None:
        s = self.scenario
        rng = reclaim_schedule(s.seed)
        chan = self.sh.stream("tail -n +1 -F /run/l2-console.log 2>/dev/null")
        buf = b""
        last_line_t = time.monotonic()
        last_vmstat = 0.0
        pending_reclaim: list[float] = []
        stall = s.timeouts.stall_s * self.timeout_scale
        boot_limit = s.timeouts.l2_boot_s * self.timeout_scale
        with open(self.console_path, "ab") as con, open(self.vmstat_path, "a") as vm:
            vm.write("t," + ",".join(VMSTAT_KEYS) + "\n")
            while True:
                now = time.monotonic()
                got = False
                try:
                    while chan.recv_ready():
                        data = chan.recv(65536)
                        if not data:
                            break
                        got = True
                        con.write(data)
                        buf += data
                except OSError as e:
                    raise InfraError(f"SSH connection to L1 lost while following L2's console: {e}")
                if got:
                    con.flush()
                    *lines, buf = buf.split(b"\n")
                    for raw in lines:
                        if self.l2_boot_s is None and b"HARNESS-L2: init" in raw:
                            self.l2_boot_s = now - t_start_l2  # L2's kernel is up and runs our init
                            if self.on_l2_up:
                                self.on_l2_up()
                            last_line_t = time.monotonic()
                        ev = ledger_oracle.parse_line(raw.decode(errors="replace"))
                        if not ev:
                            continue
                        last_line_t = now
                        ledger_oracle.feed(self.ledger, ev)
                        if ev["ev"] == "bad" and self.first_bad_wall is None:
                            self.first_bad_wall = now
                        self.on_event(ev)
                        if ev["ev"] == "window" and s.reclaim.writes_per_window:
                            # spread the memory.reclaim writes over the window
                            w = float(ev.get("seconds", 0))
                            n = s.reclaim.writes_per_window
                            pending_reclaim += [now + w * (i + 0.5) / n for i in range(n)]
                if (s.stop_on_first_finding and self.first_bad_wall is not None
                        and now - self.first_bad_wall > 2):  # a moment to collect the burst's other pages
                    self.stopped_early = True
                    return
                if pending_reclaim and now >= pending_reclaim[0]:
                    pending_reclaim.pop(0)
                    mb = rng.randint(s.reclaim.min_mb, s.reclaim.max_mb)
                    t0 = time.monotonic()
                    out = self.sh.run(f"echo {mb}M > /sys/fs/cgroup/l2/memory.reclaim 2>&1; echo rc=$?",
                                      timeout=120, check=False)
                    self.reclaim_log.append({"t": round(now - t_start_l2, 2), "mb": mb,
                                             "s": round(time.monotonic() - t0, 2), "out": out.strip()[-80:]})
                    continue
                if now - last_vmstat >= 5:
                    last_vmstat = now
                    st = parse_vmstat(self.sh.run("cat /proc/vmstat; grep -E '^Swap(Total|Free):' /proc/meminfo"
                                                  " | tr -d ':kB'", timeout=60))
                    if st.get("SwapTotal"):
                        used = 1 - st.get("SwapFree", 0) / st["SwapTotal"]
                        self.swap_peak_frac = max(self.swap_peak_frac, round(used, 3))
                    vm.write(f"{now - t_start_l2:.1f}," + ",".join(str(st.get(k, 0)) for k in VMSTAT_KEYS) + "\n")
                    vm.flush()
                    rc = self.sh.run("cat /run/l2.rc 2>/dev/null", timeout=30, check=False).strip()
                    if rc:
                        self.l2_end_wall = now
                        self.l2_rc = int(rc) if rc.lstrip("-").isdigit() else -1
                        self._drain(chan, con)
                        return
                if self.ledger.done and now - last_line_t > 3:
                    # ledger finished; L2 is powering off: give it a moment, then stop following
                    rc = self.sh.run("cat /run/l2.rc 2>/dev/null", timeout=30, check=False).strip()
                    if rc or now - last_line_t > 30:
                        self.l2_rc = int(rc) if rc.lstrip("-").isdigit() else None
                        self._drain(chan, con)
                        return
                if self.l2_boot_s is None and now - t_start_l2 > boot_limit:
                    self.l2_findings.append({"oracle": "infra", "layer": "L2", "kind": "boot-timeout",
                                             "title": f"L2 did not start the ledger within {boot_limit:.0f} s"})
                    return
                if self.l2_boot_s is not None and not self.ledger.done and now - last_line_t > stall:
                    # A stall under a kernel under test is evidence (L2 may hang on its own lost writes).
                    self.l2_findings.append({"oracle": "console", "layer": "L2", "kind": "hang",
                                             "title": f"L2 stalled: no ledger output for {stall:.0f} s"})
                    self.l2_end_wall = now  # the hang is known from now on
                    return
                if now > deadline:
                    self.infra.append({"oracle": "infra", "layer": "L0", "kind": "timeout",
                                       "title": "run exceeded its wall-clock limit"})
                    return
                if chan.exit_status_ready() and not chan.recv_ready():
                    raise InfraError("SSH stream of L2's console ended unexpectedly")
                if not got:
                    time.sleep(0.05)

    def _drain(self, chan, con) -> None:
        """Save the console's last bytes; the verdict re-reads the whole saved file, so no parsing here."""
        time.sleep(0.3)
        while chan.recv_ready():
            data = chan.recv(65536)
            if not data:
                break
            con.write(data)
        chan.close()
