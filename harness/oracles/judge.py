"""The judge: a case's evidence and logs in, typed findings and the verdict out.  Pure: no L1, no clock, no I/O
(`load_logs` is the one reader, kept apart), so a stored run is judged again from its folder alone and the
rules are table-tested on recorded results folders (tests/fixtures/runs/).

Rules, in the order they apply:
1. the ledger (lost, zeroed, corrupt pages; the self-test's own check);
2. the consoles (L1 serial, L1 dmesg, L2 serial: oops, WARN, KASAN, panics…);
3. what the monitor saw (L2 boot timeout, L2 stall with L1 healthy, wall clock, L1 frozen or gone);
4. how L2 ended when the ledger did not finish: an OOM kill or a killed QEMU is the set-up's or the harness's
   fault; an L2 that crashed, stopped mid-round or whose ledger died is evidence; an L2 that powered off
   normally after all its rounds with the last result lines missing is a lost result tail (infra, retried);
5. L1's taint, the trace oracle's findings, facts that could not be collected (an oracle that cannot run is
   an infra finding, never a silent pass);
6. sensitivity: a pass counts only when L2's memory really went through swap.

The micro-guest (evidence.guest "micro") is judged by the same rules on its own files: its ledger lines come
from microvm's stdout (micro-out.log), rule 4 reads the VMM's exit status, a page missing from KVM's dirty log
is a finding, and its sensitivity is the choreography's host steps (pages out and back in, L1's pswpout).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.evidence import CaseEvidence, Finding, Judgement, MicroTotals, Verdict, infra
from harness.guest.contract import MICRO_RC_INFRA, MICRO_RC_USAGE
from harness.oracles import ledger as ledger_oracle
from harness.oracles import micro as micro_oracle

JUDGE_VERSION = "3"  # 2: a vacuous trace rule is not a pass; 3: an L1 int3 oops under TCG is infra
SIGKILL_RC = 128 + 9
_LEDGER_EXIT_RE = re.compile(r"HARNESS-L2: ledger-exit (\d+)")
# ledger.c's exit codes before it runs: 2 usage, 3 set-up (mmap/mbind/mlock) — the harness's fault
_LEDGER_SETUP_RC = {2: "bad arguments", 3: "could not set up its memory"}


@dataclass(frozen=True)
class CaseLogs:
    """The texts the judge reads ('' when a file was not recorded)."""
    l1_console: str = ""
    l1_dmesg: str = ""
    l2_console: str = ""
    l2_result: str = ""  # the lossless result channel (virtio-serial), when the run had one
    l2_qemu: str = ""
    micro_out: str = ""  # the micro-guest VMM's stdout (ledger and choreography lines)
    micro_err: str = ""  # its stderr (`microvm: ...` on a usage or infrastructure failure)


LOG_FILES = {"l1_console": "l1-console.log", "l1_dmesg": "l1-dmesg.log", "l2_console": "l2-console.log",
             "l2_result": "l2-result.log", "l2_qemu": "l2-qemu.log", "micro_out": "micro-out.log",
             "micro_err": "micro-err.log"}


def load_logs(case_dir: Path) -> CaseLogs:
    def text(name: str) -> str:
        p = Path(case_dir) / name
        return p.read_text(errors="replace") if p.exists() else ""
    return CaseLogs(**{field: text(name) for field, name in LOG_FILES.items()})


def ledger_stream(ev: CaseEvidence, logs: CaseLogs) -> str:
    """The result channel when it carried the ledger; the console otherwise (runs from before the channel).
    The micro-guest's is its stdout."""
    if ev.guest == "micro":
        return logs.micro_out
    if ev.l2.result_channel and ledger_oracle.PREFIX in logs.l2_result:
        return logs.l2_result
    return logs.l2_console


def ledger_exit(ev: CaseEvidence, logs: CaseLogs) -> int | None:
    m = _LEDGER_EXIT_RE.findall(logs.l2_result if ev.l2.result_channel else "") or _LEDGER_EXIT_RE.findall(
        logs.l2_console)
    return int(m[-1]) if m else None


def console_findings(logs: CaseLogs) -> list[Finding]:
    from harness.oracles.console import classify_all
    out, seen = [], set()
    for layer, name, text in (("L1", "l1-console.log", logs.l1_console), ("L1", "l1-dmesg.log", logs.l1_dmesg),
                              ("L2", "l2-console.log", logs.l2_console)):
        for rep in classify_all(text) if text else []:
            if rep.kind == "none" or (layer, rep.title) in seen:
                continue
            seen.add((layer, rep.title))
            out.append(Finding(oracle="infra" if rep.infra else "console", layer=layer, kind=rep.kind,
                               title=rep.title, source=name, excerpt="\n".join(rep.excerpt.splitlines()[:60])))
    return out


def l2_ended_by_oom(l2_console: str, memory_events: dict[str, Any]) -> bool:
    """Did an OOM kill end L2: L2's own OOM killer (its console), or L1's cgroup killing L2's QEMU
    (memory.events oom_kill of the l2 cgroup)?"""
    try:
        cgroup_kills = int(memory_events.get("oom_kill", 0) or 0)
    except ValueError:
        cgroup_kills = 0
    return cgroup_kills > 0 or "Out of memory: Killed process" in l2_console


def monitor_findings(ev: CaseEvidence) -> list[Finding]:
    out = []
    for m in ev.monitor:
        if m.kind == "stall":  # L1 answered, L2 did not: evidence (L2 may hang on its own lost writes)
            out.append(Finding(oracle="console", layer="L2", kind="hang", title=f"L2 stalled: {m.detail}"))
        elif m.kind == "boot-timeout":
            who = "the micro-guest VMM did not start" if ev.guest == "micro" else "L2 did not start the ledger"
            out.append(infra("L2", "boot-timeout", f"{who}: {m.detail}"))
        elif m.kind == "wall-clock":
            out.append(infra("L0", "timeout", f"run exceeded its wall-clock limit: {m.detail}"))
        else:
            out.append(infra("L1", m.kind, m.detail))
    return out


def l2_end_finding(ev: CaseEvidence, logs: CaseLogs, res: ledger_oracle.LedgerResult, l2_crashed: bool, oom: bool,
                   already_explained: bool) -> tuple[Finding | None, bool]:
    """How L2 ended when the ledger did not finish.  Returns (finding or None, retry-worthy)."""
    if res.done or ev.l2.stopped_early or already_explained or l2_crashed:
        return None, False
    rc, lrc = ev.l2.qemu_rc, ledger_exit(ev, logs)
    rounds = f"{res.rounds_done}/{res.rounds} rounds"
    if not ev.l2.booted:
        return infra("L2", "no-start", f"L2's QEMU ended (exit {rc}) before L2 booted: "
                     + (ev.l2.qemu_log_tail or logs.l2_qemu.strip()[-200:])), False
    if oom:
        # in L2 (the ledger does not fit its RAM) or in L1 (the cgroup killed L2's QEMU): a set-up failure
        return infra("L2", "oom-ended-run", f"an OOM kill ended L2 before the ledger finished ({rounds}): the "
                     "scenario's memory sizes do not fit"), False
    if lrc in _LEDGER_SETUP_RC and not res.started:
        return infra("L2", "ledger-setup", f"the ledger {_LEDGER_SETUP_RC[lrc]} (exit {lrc})"), False
    if rc == SIGKILL_RC:
        # SIGKILL without an OOM kill comes from outside L2 and its kernel (an operator, a watchdog)
        return infra("L1", "l2-qemu-killed", f"L2's QEMU was killed (SIGKILL) in L1 after {rounds}"), False
    if lrc is not None:
        return Finding(oracle="console", layer="L2", kind="died",
                       title=f"L2's ledger exited {lrc} before it finished ({rounds})"), False
    if rc == 0 and res.rounds and res.rounds_done >= res.rounds:
        # init powered L2 off, so the ledger had ended; only its final lines are missing
        return infra("L2", "result-tail-lost", f"L2 powered off normally after all {rounds} but the ledger's "
                     "final lines never reached L0 (result stream tail lost)"), True
    return Finding(oracle="console", layer="L2", kind="died",
                   title=f"L2 ended before the ledger finished (QEMU exit {rc}, {rounds})"), False


def micro_end_finding(ev: CaseEvidence, logs: CaseLogs, res: ledger_oracle.LedgerResult, already_explained: bool) -> Finding | None:
    """How the micro-guest VMM ended, when that is not a finished run (exit 0 or 1 after its done line)."""
    rc = ev.l2.qemu_rc
    said = (logs.micro_err.strip().splitlines() or [""])[-1][:300]
    if ev.l2.stopped_early or already_explained:
        return None
    if rc == MICRO_RC_USAGE:
        return infra("L1", "micro-usage", f"the micro-guest VMM rejected its arguments: {said or 'exit 2'}")
    if rc == MICRO_RC_INFRA:
        return infra("L1", "micro-infra", f"the micro-guest VMM failed on the host side: {said or 'exit 3'}")
    if res.done and rc in (0, 1):
        return None
    rounds = f"{res.rounds_done}/{res.rounds} rounds"
    if not ev.l2.booted:
        return infra("L1", "no-start", f"the micro-guest VMM never started (exit {rc}): {said}")
    if rc == SIGKILL_RC:
        return infra("L1", "micro-killed", f"the micro-guest VMM was killed (SIGKILL) in L1 after {rounds}")
    # a VMM that crashes is evidence: its own memory goes through the same swap as the guest's
    return Finding(oracle="console", layer="L2", kind="died",
                   title=f"the micro-guest VMM ended (exit {rc}) before it finished ({rounds}){': ' + said if said else ''}")


def micro_sensitivity_finding(ev: CaseEvidence, mlog: micro_oracle.MicroLog, pages: int) -> Finding | None:
    """A micro pass counts only if the choreography's host steps really happened: pages paged out and back in
    (the VMM's counters, from pagemap) and L1's pswpout (at least thresholds.micro_min_pswpout, capped at the
    guest's page count)."""
    weak = micro_oracle.host_steps_weak(mlog, ev.l1.vmstat_delta.get("pswpout", 0), min(ev.min_pswpout, pages))
    if not weak:
        return None
    return infra("L1", "host-steps-missing", "the choreography's host steps did not happen, so this run could not "
                 "have caught a lost write: " + ", ".join(weak))


def sensitivity_finding(ev: CaseEvidence, dma_pages: int | None = None) -> Finding | None:
    """A pass counts only if L2's memory really went through swap and the exposed path ran (with ledger.dma_frac:
    L1's QEMU really read guest pages for L2's disk writes)."""
    vd = ev.l1.vmstat_delta
    weak = [f"{k}={vd.get(k, 0)} < {need}" for k, need in (("pswpout", ev.min_pswpout),
                                                            ("swap_ra_hit", ev.min_swap_ra_hit))
            if vd.get(k, 0) < need]
    if ev.l1.swap_peak_frac > 0.5:
        weak.append(f"swap peaked {ev.l1.swap_peak_frac:.0%} full (> 50 % drops the swap cache and hides the race)")
    if ev.dma_frac > 0 and not dma_pages:
        weak.append(f"ledger.dma_frac={ev.dma_frac} but {dma_pages or 0} pages were DMA-written")
    if not weak:
        return None
    return infra("L1", "insufficient-pressure",
                 "the pressure failed, so this run could not have caught a lost write: " + ", ".join(weak))


# Trace rules that check nothing on a clean kernel by design, per guest.  The micro-guest's page-outs write its
# dirty folios back and leave them in the swap cache: on a clean kernel reclaim drops none of them clean within
# the run, so R4 (a dirty zap followed to a clean drop) sees no event; on a kernel that loses the dirty mark the
# next page-out drops the clean folio at once and R4 has its events.  R1 and R3 still must check events.
VACUOUS_BY_DESIGN = {"linux": (), "micro": ("R4",)}


def vacuous_rule_finding(trace: dict[str, Any], exempt: tuple[str, ...] = ()) -> Finding | None:
    """A trace rule that applies but checked no event cannot support a pass (it could not have failed)."""
    empty = [r for r, st in (trace.get("rules") or {}).items()
             if st.get("ran") and not st.get("events_checked") and r not in exempt]
    if not trace.get("enabled") or not empty:
        return None
    return infra("L1", "rule-vacuous", f"trace rule(s) {', '.join(empty)} applied but checked 0 events: the trace "
                 "could not have caught a lost write")


def tcg_l2_crash_without_evidence(accel_mode: str | None, l2_fault: str, findings: list[Finding],
                                  l2_reset: bool = False) -> str | None:
    """Under TCG, L2 crashed while nothing says a write was lost: no ledger finding, no trace rule violated, L1
    healthy.  Seen on clean kernels (L2 page-faulted on the first instruction of its timer interrupt entry, then
    recursively in exc_page_fault, up to the entry stack's guard page): QEMU's nested-paging emulation, not the
    L1 kernel's dirty tracking.  `l2_reset`: L2's QEMU exited 0 in mid-run with no crash text at all (a reset
    under -no-reboot: a triple fault), seen on a clean 7.2 with two L1 CPUs and two L2 vCPUs (docs/races.md).
    Never on KVM, never for an injected fault.  Returns the crash's title."""
    if accel_mode != "tcg" or l2_fault != "none":
        return None
    if any(f.oracle in ("ledger", "trace") or (f.oracle == "console" and f.layer != "L2") for f in findings):
        return None
    crash = [f for f in findings if f.oracle == "console" and f.layer == "L2" and f.kind not in ("died", "hang")]
    if crash:
        return crash[0].title
    died = [f for f in findings if f.oracle == "console" and f.layer == "L2" and f.kind == "died"]
    return died[0].title + ": a silent reset" if l2_reset and died else None


TCG_INT3 = "Oops: int3"


def tcg_text_patch_flakes(accel_mode: str | None, consoles: list[Finding]) -> tuple[list[Finding], str | None]:
    """Pure: under TCG, an L1 `Oops: int3` is QEMU 7.2's multi-threaded TCG running a stale translation of a
    site the kernel was patching (a jump label flipped by enabling a tracepoint or loading a module, with two
    vCPUs; seen at free_unref_page and tlb_finish_mmu after L1 was ready, at sched_clock_cpu during its boot:
    docs/races.md), not the kernel under test: such reports become infrastructure findings, and the second
    value says why the run is retried.  A KVM change cannot put an int3 in kernel text (it is read-only)."""
    if accel_mode != "tcg":
        return consoles, None
    flakes = [f for f in consoles if f.layer == "L1" and TCG_INT3 in (f.excerpt or "") + f.title]
    if not flakes:
        return consoles, None
    rip = re.search(r"RIP: 0010:(\S+)", flakes[0].excerpt or "")
    why = f"L1 hit the QEMU TCG text-patching flake ({TCG_INT3} at {rip.group(1) if rip else flakes[0].title})"
    rest = [f for f in consoles if f not in flakes]
    return rest + [infra("L1", "tcg-int3", f"{why}: an emulator fault, not judged")], why


def verdict_of(findings: list[Finding]) -> Verdict:
    """A real finding (ledger, trace, console crash) beats an infrastructure failure: both are reported."""
    if any(f.real for f in findings):
        return "finding"
    return "infra-error" if findings else "pass"


def judge(ev: CaseEvidence, logs: CaseLogs) -> Judgement:
    res = ledger_oracle.parse_console(ledger_stream(ev, logs))
    findings = [Finding(**f) for f in ledger_oracle.findings(res)]
    if ev.selftest_pages:
        findings += [infra("L2", "selftest-failed", p) for p in ledger_oracle.check_selftest(res)]
    if ev.error:
        findings.append(ev.error)
    micro = ev.guest == "micro"
    mlog = micro_oracle.parse_output(logs.micro_out) if micro else None
    if mlog:
        findings += [Finding(**f) for f in micro_oracle.dirtylog_findings(mlog)]
    findings += monitor_findings(ev)
    consoles, int3 = tcg_text_patch_flakes(ev.accel_mode, console_findings(logs))
    l2_crashed = any(f.layer == "L2" and f.real for f in consoles)
    oom = l2_ended_by_oom(logs.l2_console, ev.l1.memory_events)
    if micro:
        end, tail_lost = micro_end_finding(ev, logs, res, already_explained=bool(ev.error or ev.monitor)), False
    else:
        end, tail_lost = l2_end_finding(ev, logs, res, l2_crashed, oom,
                                        already_explained=bool(ev.error or ev.monitor))
    findings += [end] if end else []
    t = ev.l1
    if t.taint_before is not None and t.taint_after is not None and t.taint_after != t.taint_before:
        findings.append(Finding(oracle="console", layer="L1", kind="taint",
                                title=f"L1 kernel taint changed {t.taint_before} -> {t.taint_after} during the run"))
    findings += ev.trace_findings
    findings += [infra("L0", "oracle-not-run", u) for u in ev.unavailable]
    findings += consoles
    first = ev.first_bad_s
    if first is None and not res.done and not oom and any(f.real for f in findings):
        first = ev.l2.ended_at_s  # L2 died or hung: its end is the first finding
    if res.done and not findings:
        weak = [micro_sensitivity_finding(ev, mlog, res.pages) if mlog else sensitivity_finding(ev, res.dma_pages),
                vacuous_rule_finding(ev.trace, VACUOUS_BY_DESIGN[ev.guest])]
        findings += [w for w in weak if w]
    for f in findings:
        if f.real and ev.patch_under_test:
            f.patch = f.patch or ev.patch_under_test
    l2_reset = (ev.guest == "linux" and ev.l2.qemu_rc == 0 and not res.done and not l2_crashed
                and ledger_exit(ev, logs) is None)  # the ledger did not exit: L2 itself went away
    crash = tcg_l2_crash_without_evidence(ev.accel_mode, ev.l2_fault, findings, l2_reset)
    retry = (f"L2 crashed under TCG with no lost write and no trace violation ({crash})" if crash
             else int3 if int3 and not any(f.real for f in findings) else end.title if tail_lost and end else None)
    extra: dict[str, Any] = {"selftest": res.selftest} if ev.selftest_pages else {}
    if mlog:
        extra["micro"] = MicroTotals(counters=mlog.counters, steps=len(mlog.steps),
                                     dirty_log_missing=mlog.dirty_missing,
                                     race=micro_oracle.race_totals(mlog.races) if mlog.races else None)
    ledger = res.totals(**extra)
    return Judgement(verdict=verdict_of(findings), findings=findings, first_finding_s=first, ledger=ledger,
                     retry=retry, judge_version=JUDGE_VERSION)
