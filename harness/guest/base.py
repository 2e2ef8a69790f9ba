"""The interface a case drives a guest through (harness/scenario/case.py knows no guest by name).

A guest is built into L1's image, started in L1 detached, followed through the files of the guest contract
(its output stream, result channel and exit status: `files`, which the L1 monitor reads), and collected at the
end.  What counts as its sensitivity evidence is fixed by what it puts in the case's evidence (`evidence_knobs`)
and judged by harness.oracles.judge from the recorded files alone."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from harness.guest.contract import GuestFiles
from harness.images.l1 import L1Image


class Guest(ABC):
    kind: str  # the scenario's `guest` value, recorded in the evidence
    files: GuestFiles
    # when the trace capture is armed: at the guest's up marker (a Linux L2 boots for seconds first and its
    # ledger touches nothing before), or before the guest starts (the micro-guest finds in a fraction of a second)
    arm_trace_before_start: bool = False
    settle_s: float = 3.0  # quiet after the done line before the exit status is read
    sample_s: float = 5.0  # the L1 vmstat heartbeat's period while the guest runs

    def __init__(self, scenario):
        self.s = scenario

    @abstractmethod
    def l1_image(self, kernel_dir: Path, release: str) -> tuple[L1Image, dict]:
        """L1's image with this guest packed in, and what run.json's "images" records of it."""

    @abstractmethod
    def start_command(self) -> str:
        """The L1 shell command that starts the guest detached (it returns at once)."""

    @abstractmethod
    def started_message(self) -> str:
        """One line for the run's log once the guest is started."""

    @abstractmethod
    def trace_gfn_range(self) -> tuple[int, int]:
        """[first, limit) of the gfns the trace oracle watches: the guest's data pages."""

    @abstractmethod
    def evidence_knobs(self) -> dict:
        """CaseEvidence fields the judge reads: selftest_pages, the sensitivity thresholds, dma_frac."""

    def collect_commands(self) -> dict[str, str]:
        """End-of-run files to fetch from L1: local name in the case folder -> L1 command printing it."""
        f = self.files
        out = {f.log_local: f"cat {f.log} 2>/dev/null"}
        if f.result and f.result_local:
            out[f.result_local] = f"cat {f.result} 2>/dev/null"
        return out

    def recorded_files(self) -> tuple[str, ...]:
        """The case-folder files this guest may leave (besides L1's)."""
        f = self.files
        return tuple(n for n in (f.stream_local, f.result_local, f.log_local) if n)
