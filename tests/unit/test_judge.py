"""The judge (harness/oracles/judge.py): table tests on evidence, and re-judging recorded results folders."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.evidence import CaseEvidence, Finding, L1Facts, L2Facts, MonitorEvent, infra
from harness.oracles.judge import (CaseLogs, judge, l2_ended_by_oom, tcg_l2_crash_without_evidence,
                                    tcg_text_patch_flakes)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures/runs"


def ledger_lines(rounds_done: int, rounds: int = 12, done: bool = True, stale: int = 0, exit_line: bool = True,
                 ledger_rc: int | None = None) -> str:
    out = [f'@@LEDGER {{"ev":"start","pages":8192,"rounds":{rounds},"seed":1}}']
    out += [f'@@LEDGER {{"ev":"round","round":{r},"written":4096,"t":{r}.0}}' for r in range(rounds_done + 1)]
    out += [f'@@LEDGER {{"ev":"bad","class":"stale","round":1,"index":{i},"gfn":{0x100000 + i},"expected":3,'
            f'"found":2,"t":3.5}}' for i in range(stale)]
    if done:
        out.append(f'@@LEDGER {{"ev":"done","pages":8192,"rounds":{rounds},"verified":{8192 * (rounds + 1)},'
                   f'"stale":{stale},"zero":0,"corrupt":0,"t":50.0}}')
    if exit_line:
        out.append(f"HARNESS-L2: ledger-exit {ledger_rc if ledger_rc is not None else (1 if stale else 0)}")
    return "\n".join(out) + "\n"


PRESSURED = L1Facts(taint_before=0, taint_after=0, vmstat_delta={"pswpout": 140000, "swap_ra_hit": 80000})


def evidence(**kw) -> CaseEvidence:
    base = dict(accel_mode="tcg", min_pswpout=10000, min_swap_ra_hit=10000, patch_under_test="none (unpatched kernel)",
                l1=PRESSURED, l2=L2Facts(booted=True, qemu_rc=0, result_channel=True, ended_at_s=90.0))
    return CaseEvidence(**(base | kw))


OOPS_L2 = ("[   30.1] BUG: kernel NULL pointer dereference, address: 0000000000000008\n"
           "[   30.1] Oops: 0000 [#1] PREEMPT SMP NOPTI\n[   30.1] RIP: 0010:update_curr+0x1a/0x1e0\n")

CASES = {
    # name: (evidence kwargs, logs, verdict, {kind, ...}, retry?)
    "pass": ({}, CaseLogs(l2_result=ledger_lines(12)), "pass", set(), False),
    "pressure failed": ({"l1": L1Facts(taint_before=0, taint_after=0, vmstat_delta={"pswpout": 5})},
                        CaseLogs(l2_result=ledger_lines(12)), "infra-error", {"insufficient-pressure"}, False),
    "stale pages": ({}, CaseLogs(l2_result=ledger_lines(12, stale=3)), "finding", {"stale"}, False),
    # ledger.dma_frac asked L1's QEMU to read guest pages: a pass needs the ledger's "dma" line to show it did
    "dma exposure ran": ({"dma_frac": 0.25}, CaseLogs(l2_result=ledger_lines(12).replace(
        "@@LEDGER {\"ev\":\"done\"", '@@LEDGER {"ev":"dma","pages":24528,"writes":405}\n@@LEDGER {"ev":"done"')),
        "pass", set(), False),
    "dma exposure wrote nothing": ({"dma_frac": 0.25}, CaseLogs(l2_result=ledger_lines(12)), "infra-error",
                                   {"insufficient-pressure"}, False),
    # the false alarm of 2026-12-01: all rounds, QEMU exit 0, the result stream's tail missing
    "result tail lost": ({}, CaseLogs(l2_console=ledger_lines(12, done=False, exit_line=False)), "infra-error",
                         {"result-tail-lost"}, True),
    "ledger died mid-round": ({}, CaseLogs(l2_result=ledger_lines(5, done=False, ledger_rc=139)), "finding",
                              {"died"}, False),
    # a silent L2 reset (QEMU exit 0 mid-run, no crash text, the ledger did not exit): under TCG retried once
    # (seen on a clean 7.2 with two L1 CPUs and two L2 vCPUs), on KVM a finding as it stands
    "stopped mid-round, silent": ({"l2": L2Facts(booted=True, qemu_rc=0, result_channel=True)},
                                  CaseLogs(l2_result=ledger_lines(5, done=False, exit_line=False)), "finding",
                                  {"died"}, True),
    "stopped mid-round, silent, KVM": ({"l2": L2Facts(booted=True, qemu_rc=0, result_channel=True),
                                        "accel_mode": "kvm"},
                                       CaseLogs(l2_result=ledger_lines(5, done=False, exit_line=False)), "finding",
                                       {"died"}, False),
    "L2 QEMU killed": ({"l2": L2Facts(booted=True, qemu_rc=137, result_channel=True)},
                       CaseLogs(l2_result=ledger_lines(5, done=False, exit_line=False)), "infra-error",
                       {"l2-qemu-killed"}, False),
    "cgroup OOM": ({"l1": L1Facts(taint_before=0, taint_after=0, memory_events={"oom_kill": "1"}),
                    "l2": L2Facts(booted=True, qemu_rc=137)},
                   CaseLogs(l2_console=ledger_lines(3, done=False, exit_line=False)), "infra-error",
                   {"oom-ended-run"}, False),
    "no start": ({"l2": L2Facts(booted=False, qemu_rc=1, qemu_log_tail="qemu: could not open /dev/kvm")},
                 CaseLogs(), "infra-error", {"no-start"}, False),
    "L2 crash under TCG": ({"l2": L2Facts(booted=True, qemu_rc=0, result_channel=True)},
                           CaseLogs(l2_console=OOPS_L2, l2_result=ledger_lines(4, done=False, exit_line=False)),
                           "finding", {"oops"}, True),
    "L2 crash under KVM": ({"accel_mode": "kvm"}, CaseLogs(l2_console=OOPS_L2,
                                                           l2_result=ledger_lines(4, done=False, exit_line=False)),
                           "finding", {"oops"}, False),
    "injected L2 panic": ({"l2_fault": "panic"}, CaseLogs(l2_console=OOPS_L2,
                                                          l2_result=ledger_lines(4, done=False, exit_line=False)),
                          "finding", {"oops"}, False),
    "L2 stall, L1 healthy": ({"monitor": [MonitorEvent(kind="stall", at_s=80, detail="no ledger output for 240 s")]},
                             CaseLogs(l2_result=ledger_lines(4, done=False, exit_line=False)), "finding", {"hang"},
                             False),
    "L1 frozen": ({"monitor": [MonitorEvent(kind="l1-qemu-stopped", at_s=80, detail="L1's QEMU is stopped")]},
                  CaseLogs(l2_result=ledger_lines(4, done=False, exit_line=False)), "infra-error",
                  {"l1-qemu-stopped"}, False),
    "L1 lost mid-run": ({"error": infra("L0", "error", "SSH connection to L1 lost")},
                        CaseLogs(l2_console=ledger_lines(4, done=False, exit_line=False)), "infra-error", {"error"},
                        False),
    "a catch survives a later infra error": ({"error": infra("L0", "error", "SSH connection to L1 lost")},
                                             CaseLogs(l2_console=ledger_lines(4, done=False, stale=2, exit_line=False)),
                                             "finding", {"error", "stale"}, False),
    "oracle could not run": ({"unavailable": ["not collected from L1: dmesg"]}, CaseLogs(l2_result=ledger_lines(12)),
                             "infra-error", {"oracle-not-run"}, False),
    "taint changed": ({"l1": L1Facts(taint_before=0, taint_after=512, vmstat_delta=PRESSURED.vmstat_delta)},
                      CaseLogs(l2_result=ledger_lines(12)), "finding", {"taint"}, False),
    "trace violation": ({"trace_findings": [Finding(oracle="trace", layer="L1", kind="R1-violation",
                                                    title="R1: 12 zaps of dirty SPTEs without a dirty mark")]},
                        CaseLogs(l2_result=ledger_lines(12)), "finding", {"R1-violation"}, False),
    "L1 oops on its console": ({}, CaseLogs(l1_console=OOPS_L2, l2_result=ledger_lines(12)), "finding", {"oops"},
                               False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_judge_table(name):
    kw, logs, verdict, kinds, retry = CASES[name]
    j = judge(evidence(**kw), logs)
    assert j.verdict == verdict, [f.title for f in j.findings]
    assert {f.kind for f in j.findings} == kinds, [f.title for f in j.findings]
    assert bool(j.retry) == retry, j.retry
    assert all(f.patch for f in j.findings if f.real)


def test_the_lossless_channel_wins_over_a_console_that_lost_its_tail():
    logs = CaseLogs(l2_console=ledger_lines(12, done=False, exit_line=False), l2_result=ledger_lines(12))
    j = judge(evidence(), logs)
    assert j.verdict == "pass" and j.ledger.complete and j.ledger.pages_verified == 8192 * 13


def test_first_finding_time_is_the_first_bad_page_else_the_death():
    j = judge(evidence(first_bad_s=17.5), CaseLogs(l2_result=ledger_lines(12, stale=1)))
    assert j.first_finding_s == 17.5
    j = judge(evidence(), CaseLogs(l2_result=ledger_lines(5, done=False, ledger_rc=139)))
    assert j.first_finding_s == 90.0
    assert judge(evidence(), CaseLogs(l2_result=ledger_lines(12))).first_finding_s is None


def F(oracle, layer, kind, title="t"):
    return Finding(oracle=oracle, layer=layer, kind=kind, title=title)


CRASH = F("console", "L2", "bug", "BUG: stack guard page was hit in error_entry")
DIED = F("console", "L2", "died")


def test_retry_policy_never_hides_evidence_of_a_lost_write():
    assert tcg_l2_crash_without_evidence("tcg", "none", [DIED, CRASH]) == CRASH.title
    assert tcg_l2_crash_without_evidence("kvm", "none", [DIED, CRASH]) is None
    assert tcg_l2_crash_without_evidence("tcg", "panic", [CRASH]) is None
    for other in (F("ledger", "L2", "stale"), F("trace", "L1", "R1-violation"), F("console", "L1", "oops")):
        assert tcg_l2_crash_without_evidence("tcg", "none", [DIED, CRASH, other]) is None
    hang = F("console", "L2", "hang")
    assert tcg_l2_crash_without_evidence("tcg", "none", [DIED]) is None
    assert tcg_l2_crash_without_evidence("tcg", "none", [hang]) is None
    # a silent reset (QEMU exit 0 mid-run, no crash text) is retried too; with evidence of a loss it is not
    assert tcg_l2_crash_without_evidence("tcg", "none", [DIED], l2_reset=True) == "t: a silent reset"
    assert tcg_l2_crash_without_evidence("kvm", "none", [DIED], l2_reset=True) is None
    assert tcg_l2_crash_without_evidence("tcg", "none", [DIED, F("ledger", "L2", "stale")], l2_reset=True) is None


def test_an_oom_kill_ending_l2_is_recognised():
    assert l2_ended_by_oom("", {"max": "11030", "oom": "3", "oom_kill": "1"})
    assert l2_ended_by_oom("[ 43.2] Out of memory: Killed process 60 (ledger) total-vm:197656kB", {})
    assert not l2_ended_by_oom("[ 81.7] BUG: kernel NULL pointer dereference", {"oom_kill": "0"})
    assert not l2_ended_by_oom("", {"oom_kill": "x"})


# -- recorded results folders (tests/fixtures/runs/<name>/: run.json + cases/default/ evidence and logs) --------
RECORDED = sorted(p.name for p in FIXTURES.iterdir() if (p / "run.json").exists()) if FIXTURES.exists() else []


@pytest.mark.parametrize("name", RECORDED)
def test_a_recorded_run_is_judged_again_to_the_same_verdict_and_findings(name):
    from harness.report.rejudge import rejudge
    out = rejudge(FIXTURES / name)
    expect = json.loads((FIXTURES / name / "expect.json").read_text())
    assert out["agree"], (out["only_recorded"], out["only_rejudged"])
    assert out["rejudged"]["verdict"] == expect["verdict"]
    assert sorted({f["kind"] for f in out["findings"]}) == sorted(expect["kinds"])
    assert bool(out["rejudged"]["retry"]) == expect.get("retry", False), out["rejudged"]


def test_the_recorded_fixtures_cover_every_kind_of_outcome():
    want = {"pass", "selftest-stale", "l2-panic", "oom", "insufficient-pressure", "l1-frozen", "l2-qemu-killed",
            "retried-l2-crash"}
    assert want <= set(RECORDED), want - set(RECORDED)


def test_a_rule_that_applies_but_checked_nothing_is_not_a_pass():
    rules = {"R1": {"ran": False, "events_checked": 0}, "R2": {"ran": True, "events_checked": 0},
             "R4": {"ran": True, "events_checked": 120000}}
    j = judge(evidence(trace={"enabled": True, "rules": rules}), CaseLogs(l2_result=ledger_lines(12)))
    assert j.verdict == "infra-error" and [f.kind for f in j.findings] == ["rule-vacuous"]
    assert "R2" in j.findings[0].title and "R1" not in j.findings[0].title
    rules["R2"]["events_checked"] = 5
    assert judge(evidence(trace={"enabled": True, "rules": rules}), CaseLogs(l2_result=ledger_lines(12))).verdict == "pass"


# -- the QEMU TCG text-patching flake in L1 (docs/races.md) ------------------------------------------------------
INT3_CONSOLE = Path(__file__).parent.parent / "fixtures/tcg-int3/l1-console-after-ready.log"


def test_an_l1_int3_oops_under_tcg_is_infra_and_retried():
    """A real L1 console (clean 6.12, two CPUs, tracing enabled after L1 was ready): the mm_page_free tracepoint's
    jump label in free_unref_page was being patched while the other vCPU ran it."""
    logs = CaseLogs(l2_result=ledger_lines(12), l1_console=INT3_CONSOLE.read_text())
    j = judge(evidence(), logs)
    assert j.verdict == "infra-error" and j.retry and "text-patching flake (Oops: int3 at free_unref_page+0x81" in j.retry
    assert [f.kind for f in j.findings if f.layer == "L1"] == ["tcg-int3"]
    assert not any(f.real for f in j.findings)


def test_tcg_text_patch_flakes_table():
    oops = Finding(oracle="console", layer="L1", kind="oops", title="Oops in tlb_finish_mmu",
                   excerpt="[    7.75] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI")
    other = Finding(oracle="console", layer="L1", kind="bug", title="BUG: KASAN: use-after-free in x",
                    excerpt="BUG: KASAN")
    l2 = Finding(oracle="console", layer="L2", kind="oops", title="Oops", excerpt="Oops: int3")
    assert tcg_text_patch_flakes("kvm", [oops]) == ([oops], None)  # only the emulator has the flake
    rest, why = tcg_text_patch_flakes("tcg", [oops, other, l2])
    assert why and "Oops: int3 at Oops in tlb_finish_mmu" in why  # no RIP line in the excerpt: the title
    assert rest[:2] == [other, l2] and rest[2].kind == "tcg-int3" and not rest[2].real
    assert tcg_text_patch_flakes("tcg", [other]) == ([other], None)
