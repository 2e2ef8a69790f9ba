"""Trace capture in L1 (placeholder until the trace oracle lands): records that tracing did not run."""
from __future__ import annotations


class TraceCapture:
    def __init__(self, sh, scenario, case_dir, run):
        self.run = run

    def start(self) -> None:
        self.run["trace"] = {"enabled": False, "rules": {}, "why": "trace capture not implemented yet"}

    def stop(self) -> None:
        pass

    def judge(self, ledger) -> list[dict]:
        return []
