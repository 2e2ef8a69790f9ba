"""Live progress of a run.  On a terminal: one updating status line (phase, round k/N, pages verified,
pswpout/s, findings so far) below the event log.  In a log (no tty): one plain line per event, never wrapped,
never a raw JSON blob."""
from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from harness.oracles.ledger import gfn_text


class RunProgress:
    def __init__(self, run_id: str, rounds: int, console: Console | None = None):
        # soft_wrap: a log line stays one line whatever its length
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.run_id, self.rounds = run_id, rounds
        self.phase_name, self.round, self.verified, self.findings = "start", 0, 0, 0
        self.pswpout_rate: float | None = None
        self._last_sample: tuple[float, int] | None = None
        self.live = Live(self._status(), console=self.console, transient=True, auto_refresh=False) \
            if self.console.is_terminal else None
        if self.live:
            self.live.start()

    def __call__(self, msg: str) -> None:
        """An event line (the log)."""
        self.console.print(f"{time.strftime('%H:%M:%S')} {msg}", markup=False)
        self._refresh()

    def phase(self, name: str) -> None:
        self.phase_name = name
        self._refresh()

    def ledger(self, ev: dict[str, Any]) -> None:
        kind = ev["ev"]
        if kind == "round":
            self.round = ev["round"]
            self.phase_name = "workload"
            self(f"ledger: round {ev['round']}/{self.rounds} written={ev.get('written')} bad={ev.get('bad', 0)} "
                 f"t={ev.get('t')} s")
        elif kind == "done":
            self.verified = ev.get("verified", 0)
            self(f"ledger: done, {ev.get('verified')} pages verified: stale={ev.get('stale')} zero={ev.get('zero')} "
                 f"corrupt={ev.get('corrupt')}")
        elif kind == "selftest":
            self(f"ledger: self-test tampered stale={ev.get('stale')} zero={ev.get('zero')} corrupt={ev.get('corrupt')}")
        elif kind == "bad":
            self.findings += 1
            if self.findings <= 3:
                self(f"ledger: BAD PAGE {ev.get('class')} index={ev.get('index')} gfn={gfn_text(ev.get('gfn'))} "
                     f"expected gen {ev.get('expected')} found {ev.get('found')} (round {ev.get('round')})")
        elif kind == "progress":
            self.verified = max(self.verified, ev.get("pages", 0))
            self._refresh()

    def sample(self, t: float, vmstat: dict[str, int]) -> None:
        """A vmstat sample (cumulative counters) → the pswpout rate since the last one."""
        out = vmstat.get("pswpout", 0)
        if self._last_sample and t > self._last_sample[0]:
            self.pswpout_rate = (out - self._last_sample[1]) / (t - self._last_sample[0])
        self._last_sample = (t, out)
        self._refresh()

    def _status(self) -> Text:
        rate = "-" if self.pswpout_rate is None else f"{self.pswpout_rate:,.0f}"
        return Text(f"{self.run_id} | {self.phase_name} | round {self.round}/{self.rounds} | verified "
                    f"{self.verified:,} | pswpout/s {rate} | findings {self.findings}", style="bold")

    def _refresh(self) -> None:
        if self.live:
            self.live.update(self._status(), refresh=True)

    def close(self) -> None:
        if self.live:
            self.live.stop()
            self.live = None
