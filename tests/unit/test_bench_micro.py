"""The micro-vs-l2 bench stages (harness.fleet.bench_micro): run.json / bisect.json → the bench record, the ratios,
skipped-with-reason, the stage's own verdict.  The fixtures are run.json and bisect.json files of real runs of this
bench (tests/fixtures/bench-micro/README.md says which); no QEMU here."""
import json
import sys
import time
from argparse import Namespace

import pytest

import harness.fleet.bench_micro as BM
from harness.report.models import BisectRecord, RunRecord
from tests.conftest import REPO

FIX = REPO / "tests/fixtures/bench-micro"
LOAD0 = {"loadavg": [6.5, 8.0, 9.0], "qemu_processes": 1, "mem_available_mib": 9000}
LOAD1 = {"loadavg": [7.0, 8.1, 9.0], "qemu_processes": 2, "mem_available_mib": 8000}


def recorded(name: str) -> tuple[RunRecord, dict]:
    raw = json.loads((FIX / f"{name}.run.json").read_text())
    return RunRecord.parse(raw, name), raw


def summary_of(name: str, wall_s: float = 40.0, rc: int = 0) -> dict:
    run, _ = recorded(name)
    return BM.run_summary(run, f"runs/{name}", wall_s, rc, LOAD0, LOAD1)


def test_clean_micro_run_gives_its_verdict_l1_boot_and_no_finding_time():
    _, raw = recorded("clean-micro")
    s = summary_of("clean-micro", wall_s=30.8)
    assert s["verdict"] == "pass" and s["first_finding_s"] is None and s["first_bad_after_workload_s"] is None
    assert s["l1_boot_s"] == raw["timings"]["l1_boot_s"] and s["total_s"] == raw["timings"]["total_s"]
    assert s["startup_s"] == round(30.8 - raw["timings"]["total_s"], 1)
    assert s["bad_pages"] == 0 and s["pages_verified"] == raw["ledger"]["pages_verified"] > 0
    assert s["load_at_start"] == LOAD0 and s["load_at_end"] == LOAD1


def test_mutant_runs_give_both_clocks_to_the_first_finding():
    for name in ("mutant-a-micro", "mutant-a-l2"):
        _, raw = recorded(name)
        s = summary_of(name, rc=1)
        assert s["verdict"] == "finding" and s["bad_pages"] > 0
        assert s["first_finding_s"] == raw["timings"]["first_finding_s"] > 0
        assert s["first_bad_after_workload_s"] == raw["ledger"]["first_bad_s"] > 0
        assert s["findings"], s
    l2 = summary_of("mutant-a-l2", rc=1)
    assert "stop_on_first_finding=true" in l2["overrides"] and l2["l2_boot_s"] > 5  # a Linux L2 booted


@pytest.mark.parametrize("l2,micro,want", [
    (30.0, 10.0, 3.0), (10.0, 30.0, 0.3), (None, 10.0, None), (30.0, None, None), (30.0, 0.0, None), (0.0, 5.0, 0.0)])
def test_ratio_is_l2_over_micro_or_none(l2, micro, want):
    assert BM.ratio(l2, micro) == want


def test_mutant_row_ratios_from_recorded_runs():
    micro, l2 = summary_of("mutant-a-micro", 20.0, 1), summary_of("mutant-a-l2", 60.0, 1)
    row = BM.mutant_row(micro, l2)
    assert row["ratio_first_finding"] == round(l2["first_finding_s"] / micro["first_finding_s"], 1)
    assert row["ratio_first_bad_after_workload"] == round(
        l2["first_bad_after_workload_s"] / micro["first_bad_after_workload_s"], 1)
    assert row["ratio_wall"] == 3.0
    # the Linux L2 skipped (--quick) or without a finding: no ratio, the micro figures kept
    row = BM.mutant_row(micro, BM.skipped("--quick"))
    assert row["ratio_first_finding"] is None and row["ratio_wall"] is None and row["micro"] is micro
    row = BM.mutant_row(micro, summary_of("clean-l2"))
    assert row["ratio_first_finding"] is None and row["ratio_wall"] is None


def _res(mutants: dict, clean_micro="pass", clean_l2="pass") -> dict:
    return {"clean": {"micro": {"verdict": clean_micro}, "l2": {"verdict": clean_l2}}, "mutants": mutants}


@pytest.mark.parametrize("res,ok,words", [
    (_res({"mutant-a": {"micro": {"verdict": "finding"}, "l2": {"verdict": "finding"}},
           "mutant-7.2-a": BM.skipped("not in the kernel cache")}), True, []),
    (_res({"mutant-a": {"micro": {"verdict": "finding"}, "l2": {"skipped": "--quick"}}}), True, []),
    (_res({"mutant-a": {"micro": {"verdict": "finding"}, "l2": {"verdict": "pass"}}}), True, []),  # L2 missed it
    (_res({"mutant-a": {"micro": {"verdict": "pass"}, "l2": {"verdict": "finding"}}}), False,
     ["mutant-a", "pass", "the Linux L2 caught it"]),
    (_res({"mutant-c": {"micro": {"verdict": None, "error": "timeout after 1500 s"}, "l2": {"verdict": "pass"}}}),
     False, ["mutant-c", "timeout"]),
    (_res({}, clean_l2="infra-error"), False, ["clean l2", "infra-error"]),
    (_res({}, clean_micro="finding"), False, ["clean micro", "finding"]),
])
def test_the_stage_verdict(res, ok, words):
    got, problems = BM.verdict_ok(res)
    assert got is ok
    assert all(any(w in p for p in problems) for w in words), problems


def test_bisect_records_from_recorded_bisect_json():
    doc = BisectRecord.load(FIX / "bisect-micro.bisect.json")
    s = BM.bisect_summary(doc, 95.0, 1, LOAD0, LOAD1)
    assert s["status"] == "first-bad" and s["first_bad"]["index"] == 2
    assert s["first_bad"]["subject"].startswith("MUTANT: KVM: x86/mmu: drop the zap-time")
    assert [(st["upto"], st["verdict"]) for st in s["steps"]] == [(0, "good"), (2, "bad"), (1, "good")]
    # --repeats 1: one run a good step; the first bad step is run again (its reproduction rate)
    assert [len(st["runs_total_s"]) for st in s["steps"]] == [1, 2, 1]
    assert all(t > 0 for st in s["steps"] for t in st["runs_total_s"]) and s["reproduction_rate"] == 1.0
    other = dict(s, wall_s=380.0)
    pair = BM.bisect_pair(s, other)
    assert pair["ratio_wall"] == 4.0 and pair["same_first_bad"] is True
    lines = BM.bisect_lines(pair | {"l2_set": ["ledger.rounds=4"]})
    assert lines[0].startswith("micro-guest bisect: first-bad in 95.0 s, 3 steps, first bad patch 2: MUTANT")
    assert lines[2] == "ratio 4.0, same first bad patch: True"
    pair = BM.bisect_pair(s, BM.failed_run(10.0, 2, "no bisect.json", LOAD0, LOAD1))
    assert pair["ratio_wall"] is None and pair["same_first_bad"] is False


def test_a_kernel_that_is_not_built_is_a_reason_never_a_build(tmp_path):
    ky = tmp_path / "K.yaml"
    ky.write_text('base: {debian-source: "6.12"}\nseries: nowhere\ndefconfig: x86_64_defconfig\nfragments: []\n')
    why = BM.kernel_in_cache(str(ky))
    assert why and str(ky) in why
    (tmp_path / "nowhere").mkdir()
    (tmp_path / "nowhere" / "series").write_text("")
    ky.write_text('base: {debian-source: "6.12"}\nseries: nowhere\ndefconfig: tinyconfig\nfragments: []\n')
    assert "not in the kernel cache" in BM.kernel_in_cache(str(ky))


def test_the_two_patch_series_is_the_integration_tests(tmp_path):
    ky = BM.two_patch_series(tmp_path)
    names = (tmp_path / "series" / "series").read_text().split()
    assert names[0] == BM.ONELINE.name and names[1].startswith("0001-MUTANT-KVM-x86-mmu-drop-the-zap-time")
    assert all((tmp_path / "series" / n).is_file() for n in names) and "series: series" in ky.read_text()


def test_a_child_that_writes_no_run_json_is_recorded_with_its_exit(tmp_path, monkeypatch):
    monkeypatch.setattr(BM, "_child", lambda argv, log, timeout_s: (2, b'{"error": "unknown knob"}', None))
    monkeypatch.setattr(BM, "_load", lambda: LOAD0)
    r = BM.harness_run("x", "scenarios/micro.yaml", None, ["bogus=1"], tmp_path)
    assert r["verdict"] is None and r["rc"] == 2 and "no run.json" in r["error"] and r["load_at_start"] == LOAD0
    monkeypatch.setattr(BM, "_child", lambda argv, log, timeout_s: (-9, b"", None))
    assert "timeout" in BM.harness_run("x", "scenarios/micro.yaml", None, [], tmp_path)["error"]


def test_child_stamps_the_first_bad_page_line_and_keeps_stdout(tmp_path):
    code = ("import sys, time; print('L1 up', file=sys.stderr, flush=True); time.sleep(0.6); "
            "print('12:00:00 ledger: BAD PAGE stale index=0', file=sys.stderr, flush=True); "
            "print('12:00:00 ledger: BAD PAGE stale index=1', file=sys.stderr, flush=True); print('{}'); sys.exit(1)")
    rc, out, first = BM._child([sys.executable, "-c", code], tmp_path / "log", 30)
    assert rc == 1 and out.strip() == b"{}" and 0.5 <= first < 10
    assert (tmp_path / "log").read_bytes().count(b"BAD PAGE") == 2
    rc, out, first = BM._child([sys.executable, "-c", "print('x')"], tmp_path / "log", 30)
    assert rc == 0 and first is None


def test_child_over_its_time_is_killed_with_its_children(tmp_path):
    code = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    t0 = time.monotonic()
    rc, _, _ = BM._child([sys.executable, "-c", code], tmp_path / "log", 1)
    assert rc == -9 and time.monotonic() - t0 < 10


def test_quick_stage_runs_the_l2_on_one_mutant_and_skips_what_is_not_cached(tmp_path, monkeypatch):
    calls = []

    def fake_run(label, scenario, build, sets, out):
        calls.append((label, scenario, build, tuple(sets)))
        clean = build is None
        return {"verdict": "pass" if clean else "finding", "wall_s": 20.0 if "micro" in label else 60.0,
                "first_finding_s": None if clean else (8.0 if "micro" in label else 40.0),
                "first_bad_after_workload_s": None if clean else 0.5}
    monkeypatch.setattr(BM, "harness_run", fake_run)
    monkeypatch.setattr(BM, "_load", lambda: LOAD0)
    monkeypatch.setattr(BM, "kernel_in_cache", lambda ky, upto=None: "not in the kernel cache" if "7.2" in ky else None)
    res = BM.stage_micro_vs_l2(tmp_path, Namespace(quick=True, l2_set=None, mutant=None))
    l2_runs = [c for c in calls if c[0].endswith("-l2") and c[2]]
    assert l2_runs == [("mutant-a-l2", BM.L2_SCENARIO, "kernels/mutant-a.yaml",
                        ("ledger.rounds=4", "stop_on_first_finding=true"))]
    assert ("mutant-b-micro", BM.MICRO_SCENARIO, "kernels/mutant-b.yaml", ("tdp_mmu=false",)) in calls
    assert res["mutants"]["mutant-7.2-b"] == {"skipped": "not in the kernel cache"}
    assert res["mutants"]["mutant-c"]["l2"] == {"skipped": "--quick: the Linux L2 runs on the first mutant only"}
    assert res["mutants"]["mutant-a"]["ratio_first_finding"] == 5.0 and res["ok"] is True
    assert res["l2_set"] == ["ledger.rounds=4"] and res["clean"]["ratio_wall"] == 3.0
    assert any(line.startswith("mutant-7.2-a: skipped") for line in res["summary"])
    # every L2 override given is recorded and used
    calls.clear()
    res = BM.stage_micro_vs_l2(tmp_path, Namespace(quick=False, l2_set=["ledger.rounds=2"], mutant=None))
    assert res["l2_set"] == ["ledger.rounds=2"] and ("clean-l2", BM.L2_SCENARIO, None, ("ledger.rounds=2",)) in calls
    assert len([c for c in calls if c[0].endswith("-l2") and c[2]]) == 5


def test_mutants_carry_the_overrides_that_make_them_observable(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(BM, "harness_run", lambda label, scen, build, sets, out: calls.append((label, tuple(sets)))
                        or {"verdict": "pass" if build is None else "finding"})
    monkeypatch.setattr(BM, "_load", lambda: LOAD0)
    monkeypatch.setattr(BM, "kernel_in_cache", lambda ky, upto=None: None)
    res = BM.stage_micro_vs_l2(tmp_path, Namespace(quick=False, l2_set=None, mutant=["mutant-7.2-b", "mutant-b"]))
    assert list(res["mutants"]) == ["mutant-b", "mutant-7.2-b"]
    assert ("mutant-7.2-b-micro", ("tdp_mmu=false",)) in calls
    assert ("mutant-7.2-b-l2", ("ledger.rounds=4", "tdp_mmu=false", "ledger.dma_frac=0.25",
                                "stop_on_first_finding=true")) in calls
    assert ("mutant-b-l2", ("ledger.rounds=4", "tdp_mmu=false", "stop_on_first_finding=true")) in calls
