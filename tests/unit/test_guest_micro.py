"""The guest contract (harness/guest/contract.py), the guest knob (harness/config.py), the micro-guest's
@@MICRO lines (harness/oracles/micro.py) and how the judge reads a micro-guest run: table tests."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.config import parse_scenario
from harness.errors import InputError
from harness.evidence import CaseEvidence, L1Facts, L2Facts
from harness.guest import guest_for
from harness.guest.contract import (CHOREOGRAPHIES, DATA_GFN_BASE, LINUX_L2_FILES, MICRO_FILES, MICRO_STEPS,
                                    data_gfn_range,
                                    linux_l2_gfn_range, parse_list_output)
from harness.guest.micro import microvm_argv
from harness.oracles import micro as micro_oracle
from harness.oracles.judge import CaseLogs, judge

WPRW = "write-pageout-read-write"


def L(prefix: str, **ev) -> str:
    return prefix + json.dumps(ev, separators=(",", ":"))


def micro_out(stale: int = 0, pages_out: int = 512, pages_in: int = 512, done: bool = True, missing: int = 0,
              selftest: int = 0, rounds: int = 2, pages: int = 256) -> str:
    """A micro-guest run's stdout in the contract's format."""
    out = ["HARNESS-MICRO: start --pages 256",
           L("@@LEDGER ", ev="start", pages=pages, rounds=rounds, seed=1, batch=256, selftest=selftest,
             guest="micro", backend="anon", vcpus=1, chors=[WPRW])]
    for r in range(rounds):
        out += [L("@@MICRO ", ev="step", chor=WPRW, round=r, step=st, first_gfn=DATA_GFN_BASE, npages=pages,
                  pfns=[4660 + i for i in range(8)], swapped=pages if st == "pageout" else 0, t=0.01 * (r + 1))
                for st in ("guest-write", "pageout", "guest-read", "guest-write", "pageout", "guest-verify")]
        if missing:
            out.append(L("@@MICRO ", ev="dirtylog", chor="dirty-log", round=r, written=pages, logged=pages - missing,
                         missing=missing, first_missing_gfn=DATA_GFN_BASE + 3, t=0.02 * (r + 1)))
        out.append(L("@@LEDGER ", ev="round", round=r, written=pages, bad=stale if r == 0 else 0, t=0.03 * (r + 1)))
    out += [L("@@LEDGER ", ev="bad", **{"class": "stale"}, round=0, index=i, gfn=DATA_GFN_BASE + i, expected=2,
              found=1, hdr_gfn=DATA_GFN_BASE + i, t=0.011, chor=WPRW, step="verify-after-pageout", pfn=4660 + i)
            for i in range(stale)]
    if selftest:
        out.append(L("@@LEDGER ", ev="selftest", stale=selftest, zero=0, corrupt=0))
    if done:
        out.append(L("@@MICRO ", ev="counters", pageouts=2 * rounds, pages_out=pages_out, pages_in=pages_in,
                     guest_faults=-1, dirty_log_missing=missing * rounds, t=0.1))
        out.append(L("@@LEDGER ", ev="done", pages=pages, rounds=rounds, verified=pages * rounds * 2, trail_verified=0,
                     stale=stale, zero=0, corrupt=0, t=0.1))
        out.append(f"HARNESS-MICRO: exit {1 if stale or missing else 0}")
    return "\n".join(out) + "\n"


# -- the contract --------------------------------------------------------------------------------------------
def test_data_region_is_the_linux_l2_dimm_range():
    assert data_gfn_range(256) == (0x100000, 0x100100)
    # the default scenario: a 256 MiB L2 with a 128 MiB kernel node: the 128 MiB DIMM at 4 GiB
    assert linux_l2_gfn_range(256, 128) == (0x100000, 0x100000 + 128 * 256)
    assert linux_l2_gfn_range(256, 0) == (0, 256 * 256 + 0x100)


def test_guest_files_do_not_collide():
    assert LINUX_L2_FILES.rc != MICRO_FILES.rc and LINUX_L2_FILES.stream_local != MICRO_FILES.stream_local
    assert MICRO_FILES.exit_marker and LINUX_L2_FILES.exit_marker is None


def test_list_output_parses():
    assert parse_list_output(f"{WPRW}\tthe RFC race\ndirty-log\tlog\n\n") == {WPRW: "the RFC race", "dirty-log": "log"}


# -- the scenario knob ---------------------------------------------------------------------------------------
def test_default_guest_is_linux_and_micro_knobs_validate():
    assert parse_scenario("").guest == "linux"
    s = parse_scenario("guest: micro\nmicro: {choreographies: [write-pageout-read-write, dirty-log], pages: 512}")
    assert s.guest == "micro" and s.micro.choreographies == [WPRW, "dirty-log"] and s.workload_rounds == 1
    d = parse_scenario("guest: micro").micro
    assert (d.pages, d.rounds, len(d.choreographies)) == (512, 1, 4)
    assert set(d.choreographies) <= set(CHOREOGRAPHIES)


@pytest.mark.parametrize("text,overrides,needle", [
    ("guest: micro\nmicro: {choreographies: [write-read]}", [], "unknown choreography 'write-read' (valid: "),
    ("guest: micro", ["micro.choreographies=[nope]"], "unknown choreography 'nope'"),
    ("guest: micro", ["micro.batch=0"], "micro.batch"),
    ("guest: micro", ["micro.choreographies=[]"], "micro.choreographies"),
    ("", ["guest=vmware"], "guest"),
    ("", ["memory_backend=thp"], "memory_backend thp is the micro-guest's"),
    ("guest: micro", ["micro.selftest_pages=5000"], "selftest_pages must not exceed pages"),
    ("guest: micro", ["micro.choreographies=[thp-split]"], "thp-split needs memory_backend: thp"),
    ("guest: micro\nmemory_backend: thp", [], "memory_backend thp needs thp: madvise or always"),
    ("guest: micro", ["micro.choreographies=[ksm-then-write]"], "ksm-then-write needs ksm: true"),
])
def test_bad_micro_input_is_one_line(text, overrides, needle):
    with pytest.raises(InputError) as e:
        parse_scenario(text, overrides=overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_microvm_argv_follows_the_contract():
    s = parse_scenario("guest: micro\nseed: 3\nmemory_backend: file\n"
                       "micro: {choreographies: [write-pageout-read-write, dirty-log], pages: 64, rounds: 2, "
                       "vcpus: 2, batch: 32, selftest_pages: 4}")
    assert microvm_argv(s) == ["--pages", "64", "--rounds", "2", "--seed", "3", "--backend", "file", "--chor",
                               f"{WPRW},dirty-log", "--vcpus", "2", "--batch", "32", "--selftest", "4",
                               "--file", "/run/microvm.data"]
    g = guest_for(s)
    assert g.kind == "micro" and g.trace_gfn_range() == (0x100000, 0x100040)
    assert g.evidence_knobs()["selftest_pages"] == 4 and g.evidence_knobs()["min_swap_ra_hit"] == 0
    assert guest_for(parse_scenario("")).kind == "linux"


# -- @@MICRO lines -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("line,kind", [
    ('@@MICRO {"ev":"step","chor":"x","round":0,"step":"pageout","first_gfn":1048576,"npages":8,"t":0.1}', "step"),
    ('noise @@MICRO {"ev":"counters","pageouts":2,"pages_out":8,"pages_in":8,"t":0.2}', "counters"),
    ('@@MICRO {"ev":"dirtylog","chor":"dirty-log","round":1,"written":8,"logged":8,"missing":0}', "dirtylog"),
    ('@@MICRO {"ev":"step","chor":"x","round":0', None),  # cut
    ('@@MICRO {"ev":"step","chor":"x"}', None),  # fields missing
    ('@@MICRO {"ev":"weather"}', None),
    ('@@LEDGER {"ev":"round","round":0}', None),
])
def test_micro_line_parsing(line, kind):
    ev = micro_oracle.parse_line(line)
    assert (ev or {}).get("ev") == kind


def test_parse_output_orders_and_counts():
    log = micro_oracle.parse_output(micro_out(missing=2) + '@@MICRO {"ev":"step"\n')
    assert len(log.steps) == 12 and log.dirty_missing == 4 and log.malformed == 1
    assert log.counters["pages_out"] == 512
    ts = [e.get("t", 0) for e in log.events()]
    assert ts == sorted(ts)


# -- the judge on micro-guest runs ---------------------------------------------------------------------------
def micro_ev(**kw) -> CaseEvidence:
    base = dict(guest="micro", accel_mode="tcg", min_pswpout=64, min_swap_ra_hit=0,
                patch_under_test="none (unpatched kernel)",
                l1=L1Facts(taint_before=0, taint_after=0, vmstat_delta={"pswpout": 600, "pswpin": 300}),
                l2=L2Facts(booted=True, qemu_rc=0, result_channel=True, ended_at_s=9.0))
    return CaseEvidence(**(base | kw))


def rc(n: int) -> L2Facts:
    return L2Facts(booted=True, qemu_rc=n, result_channel=True, ended_at_s=9.0)


MICRO_CASES = {
    # name: (evidence kwargs, logs, verdict, finding kinds)
    "clean pass": ({}, CaseLogs(micro_out=micro_out()), "pass", set()),
    "stale pages": ({"l2": rc(1)}, CaseLogs(micro_out=micro_out(stale=8)), "finding", {"stale"}),
    "dirty log missed pages": ({"l2": rc(1)}, CaseLogs(micro_out=micro_out(missing=3)), "finding",
                               {"dirty-log-missing"}),
    "nothing paged out": ({}, CaseLogs(micro_out=micro_out(pages_out=0)), "infra-error", {"host-steps-missing"}),
    "nothing came back": ({}, CaseLogs(micro_out=micro_out(pages_in=0)), "infra-error", {"host-steps-missing"}),
    "L1 swapped nothing": ({"l1": L1Facts(taint_before=0, taint_after=0, vmstat_delta={"pswpout": 3})},
                           CaseLogs(micro_out=micro_out()), "infra-error", {"host-steps-missing"}),
    # the Linux L2's thresholds (swap readahead) do not apply to the micro-guest
    "no readahead is fine": ({"min_swap_ra_hit": 0}, CaseLogs(micro_out=micro_out()), "pass", set()),
    "usage error": ({"l2": rc(2)}, CaseLogs(micro_out="HARNESS-MICRO: start\nHARNESS-MICRO: exit 2\n",
                                           micro_err="microvm: --batch 0: must be at least 1\n"),
                    "infra-error", {"micro-usage"}),
    "kvm failure": ({"l2": rc(3)}, CaseLogs(micro_out=micro_out(done=False),
                                           micro_err="microvm: infra: KVM_RUN: exit reason 8\n"),
                    "infra-error", {"micro-infra"}),
    "VMM crashed mid-run": ({"l2": rc(139)}, CaseLogs(micro_out=micro_out(done=False)), "finding", {"died"}),
    "VMM killed": ({"l2": rc(137)}, CaseLogs(micro_out=micro_out(done=False)), "infra-error", {"micro-killed"}),
    "selftest caught": ({"l2": rc(1), "selftest_pages": 5}, CaseLogs(micro_out=micro_out(stale=5, selftest=5)),
                        "finding", {"stale"}),
    "selftest missed": ({"selftest_pages": 5}, CaseLogs(micro_out=micro_out(selftest=5)), "infra-error",
                        {"selftest-failed"}),
}


@pytest.mark.parametrize("name", MICRO_CASES)
def test_judge_micro(name):
    kw, logs, verdict, kinds = MICRO_CASES[name]
    j = judge(micro_ev(**kw), logs)
    assert j.verdict == verdict, [f.title for f in j.findings]
    assert {f.kind for f in j.findings} == kinds


def test_micro_finding_names_page_gfn_pfn_and_step():
    j = judge(micro_ev(l2=rc(1)), CaseLogs(micro_out=micro_out(stale=3)))
    (f,) = [f for f in j.findings if f.kind == "stale"]
    page = f.pages[0]
    assert page["gfn"] == DATA_GFN_BASE and page["pfn"] == 4660 and page["chor"] == WPRW
    assert page["step"] == "verify-after-pageout" and f.count == 3
    assert j.ledger.micro and j.ledger.micro.counters and j.ledger.micro.counters["pages_in"] == 512


def test_linux_run_ignores_micro_files():
    """The Linux L2's judge reads none of the micro-guest's files (a Linux run never has them anyway)."""
    ev = micro_ev(guest="linux", min_swap_ra_hit=0, min_pswpout=0)
    j = judge(ev, CaseLogs(micro_out=micro_out(stale=4)))
    assert "stale" not in {f.kind for f in j.findings}


def test_contract_choreographies_match_microvm_list():
    """The contract's table is the VMM's own list (`microvm --list`), built from guest-images/microvm."""
    from harness.images.microvm import build_microvm, list_choreographies
    assert parse_list_output(list_choreographies(build_microvm())) == CHOREOGRAPHIES


def trace_rules(**checked) -> dict:
    return {"enabled": True, "rules": {r: {"ran": True, "events_checked": n, "violations": 0}
                                       for r, n in checked.items()}}


@pytest.mark.parametrize("guest,checked,verdict", [
    ("micro", {"R1": 5120, "R3": 1024, "R4": 0}, "pass"),  # R4 has nothing to follow on a clean kernel
    ("micro", {"R1": 0, "R3": 1024, "R4": 0}, "infra-error"),  # R1 must still check events
    ("linux", {"R1": 5120, "R3": 1024, "R4": 0}, "infra-error"),
])
def test_vacuous_trace_rules_per_guest(guest, checked, verdict):
    kw = {"trace": trace_rules(**checked)}
    if guest == "linux":
        kw |= {"guest": "linux", "l1": L1Facts(taint_before=0, taint_after=0,
                                               vmstat_delta={"pswpout": 9, "swap_ra_hit": 9}), "min_pswpout": 0}
        logs = CaseLogs(l2_result=micro_out().replace("HARNESS-MICRO: exit 0", "HARNESS-L2: ledger-exit 0"))
    else:
        logs = CaseLogs(micro_out=micro_out())
    assert judge(micro_ev(**kw), logs).verdict == verdict


def test_steps_line_up_with_the_trace_clock():
    lines = [b"  sshd-200 [000] .....  41.000100: kvm_unmap_hva_range: x",
             b"  sh-241 [000] .....  41.250000: tracing_mark_write: HARNESS-MICRO: start",
             b"  microvm-242 [000] .....  41.300000: kvm_tdp_mmu_spte_changed: gfn 100000"]
    t0 = micro_oracle.trace_start_ts(lines)
    assert t0 == 41.25
    evs = micro_oracle.parse_output(micro_out()).events(trace_t0=t0)
    assert evs[0]["trace_ts"] == round(41.25 + evs[0]["t"], 6)
    assert micro_oracle.trace_start_ts(lines[:1]) is None


# -- recorded real lines (tests/fixtures/micro/: microvm's stdout from runs of scenarios/micro.yaml under TCG) --
RECORDED = Path(__file__).resolve().parents[1] / "fixtures/micro"
SWAPPED = L1Facts(taint_before=0, taint_after=0, vmstat_delta={"pswpout": 4096, "pswpin": 0})


@pytest.mark.parametrize("name,rc_,selftest,verdict,stale", [
    ("clean-6.12-four-choreographies.out", 0, 0, "pass", 0),
    ("clean-7.2-four-choreographies.out", 0, 0, "pass", 0),
    ("selftest-8-6.12.out", 1, 8, "finding", 8),
])
def test_judge_on_recorded_micro_output(name, rc_, selftest, verdict, stale):
    text = (RECORDED / name).read_text()
    j = judge(micro_ev(l1=SWAPPED, l2=rc(rc_), selftest_pages=selftest), CaseLogs(micro_out=text))
    assert j.verdict == verdict, [f.title for f in j.findings]
    assert j.ledger.stale == stale and j.ledger.complete
    log = micro_oracle.parse_output(text)
    assert log.malformed == 0 and log.counters["pages_out"] > 0 and log.counters["pages_in"] > 0
    # the four choreographies, then the VMM's final pass over every page ("final")
    assert {s["chor"] for s in log.steps} == {"write-pageout-read-write", "host-read-prefetch", "dirty-log",
                                             "readonly-then-write", "final"}
    assert all(d["missing"] == 0 for d in log.dirtylog) and len(log.dirtylog) > 0
    assert all(s["step"] in MICRO_STEPS for s in log.steps)


def test_recorded_run_without_swap_is_not_a_pass():
    text = (RECORDED / "clean-6.12-four-choreographies.out").read_text()
    l1 = L1Facts(taint_before=0, taint_after=0, vmstat_delta={"pswpout": 0})
    j = judge(micro_ev(l1=l1), CaseLogs(micro_out=text))
    assert j.verdict == "infra-error" and {f.kind for f in j.findings} == {"host-steps-missing"}
    assert "L1 pswpout=0 < 64" in j.findings[0].title


# -- the concurrent choreography (race-pageout) ----------------------------------------------------------------
def race_line(**kw) -> dict:
    ev = dict(ev="race", chor="race-pageout", round=1, first_gfn=DATA_GFN_BASE, npages=16, sweeps=40,
              pageouts=900, overlapped=35, reclaims=220, faults=610, vcpu_cpu=0, pager_cpu=1, cpus=2, t=1.5)
    return ev | kw


def test_race_line_parses_into_races():
    log = micro_oracle.parse_output(L("@@MICRO ", **race_line()) + "\n" + L("@@MICRO ", ev="race", chor="x") + "\n")
    assert len(log.races) == 1 and log.malformed == 1
    assert log.races[0]["overlapped"] == 35 and log.events()[0]["ev"] == "race"


@pytest.mark.parametrize("races,weak", [
    ([], False),  # no concurrent choreography in the run: nothing to stage
    ([race_line()], False),
    ([race_line(pager_cpu=0)], True),  # one L1 CPU: the pager ran only while the vCPU was off the CPU
    ([race_line(overlapped=0)], True),  # no page-out while the guest completed a sweep
    ([race_line(faults=0)], True),  # the vCPU never faulted a paged-out page back in while it ran
    ([race_line(vcpu_cpu=-1, pager_cpu=-1)], True),  # pinning failed
    ([race_line(pager_cpu=0), race_line()], False),  # one batch that raced is enough
])
def test_race_steps_weak(races, weak):
    out = micro_oracle.race_steps_weak(races)
    assert bool(out) is weak
    if weak:
        assert "race-pageout staged no race" in out[0]


def test_race_totals_sum_the_batches():
    t = micro_oracle.race_totals([race_line(), race_line(pager_cpu=0, overlapped=0)])
    assert (t["batches"], t["sweeps"], t["overlapped"], t["pageouts"]) == (2, 80, 35, 1800)
    assert t["cpus"] == [(0, 0), (0, 1)]


def test_microvm_argv_carries_race_ms_only_for_a_race_choreography():
    s = parse_scenario("guest: micro\nmicro: {choreographies: [race-pageout], pages: 32, batch: 16, race_ms: 700}")
    argv = microvm_argv(s)
    assert argv[argv.index("--chor") + 1] == "race-pageout" and argv[-2:] == ["--race-ms", "700"]
    assert "--race-ms" not in microvm_argv(parse_scenario("guest: micro"))
    split = microvm_argv(parse_scenario("guest: micro\nmicro: {choreographies: [race-pageout], race_split: true}"))
    assert split[-3:] == ["--race-ms", "1000", "--race-split"]
