"""summary.txt opens with what a run found and what to do next (harness.report.finding_head), on recorded runs
(tests/fixtures/runs: real results folders); trace timelines carry no Python repr."""
import copy
import json
from pathlib import Path

import pytest

from harness.oracles import trace as T
from harness.report.finding_head import MAX_LINES, bisect_command, change_text, head_lines
from harness.report.models import RunRecord
from harness.report.results import TIMELINES_IN_FULL, summary_text
from tests.unit.test_trace import ALL4, run as run_checker, shadow_trace

RUNS = Path(__file__).resolve().parents[1] / "fixtures/runs"


def load(name: str) -> dict:
    return json.loads((RUNS / name / "run.json").read_text())


def R(run: dict) -> RunRecord:
    """run.json's content (possibly edited by the test) through its model, as the report renders it."""
    return RunRecord.parse(run)


def head(text: str) -> list[str]:
    return text.split("\n\n", 1)[0].splitlines()


def test_a_finding_opens_with_verdict_loss_rule_change_and_next_commands():
    run = load("mutant-a")
    text = summary_text(R(run), "results/R")
    top = head(text)
    assert len(top) <= MAX_LINES
    assert top[0].startswith("verdict  FINDING (exit 1): 116 lost write")
    lost = next(ln for ln in top if ln.startswith("lost "))
    assert "116 stale" in lost and "L2 gfn 0x100002" in lost and "L1 pfn 0x10ed85" in lost
    assert "no dirty mark, no writeback, dropped clean by reclaim, freed" in lost
    rule = next(ln for ln in top if ln.startswith("rule "))
    assert rule.startswith("rule     R1 dirty SPTE zapped without marking its page dirty (14814 x)")
    assert "R3 (5784 x)" in rule and "R4 (5784 x)" in rule
    assert ("change   patch 1/1 a983a26abf40 MUTANT: KVM: x86/mmu: drop the zap-time dirty mark in "
            "handle_changed_spte() on debian-6.12-585a4a074597") in top
    assert any(ln.startswith("next     harness reproduce results/R --tries 3") for ln in top)
    assert "bisect" not in text.split("\n\n", 1)[0]  # one patch: nothing to bisect


def test_only_three_timelines_in_full_the_rest_counted_with_the_file_that_has_them():
    run = load("mutant-a")
    text = summary_text(R(run), "results/R")
    shown = [ln for ln in text.splitlines() if "/ledger-timeline]" in ln]
    timelines = [f for f in run["findings"] if f["kind"] == "ledger-timeline"]
    assert len(shown) == TIMELINES_IN_FULL < len(timelines)
    for f in timelines[:TIMELINES_IN_FULL]:  # in full: every line of the page's history
        assert all(line.split(" b'")[0] in text for line in f["timeline"])
        assert len([ln for ln in text.splitlines() if ln.startswith("      ") and ln.split()[0] in
                    {x.split()[0] for x in f["timeline"]}]) >= len(f["timeline"])
    assert f"... and {len(timelines) - 3} more lost pages' trace timelines: results/R/cases/*/findings.json" in text
    assert len(text.splitlines()) < 100  # it was 284
    assert "b'" not in text and "notifier 0x007f2997c02000--0x007f2997c03000" in text  # recorded before the fix


def test_every_patch_is_named_and_bisect_is_filled_in_for_a_series():
    run = load("mutant-a")
    run["kernel"]["patches"] = [{"subject": f"KVM: step {i}", "sha256": f"{i}" * 64} for i in (1, 2, 3)]
    run["kernel"]["kernel_yaml"] = "kernels/port.yaml"
    run["scenario_ref"] = "default"
    run["overrides"] = ["tdp_mmu=false", "seed=2"]
    assert change_text(R(run)).endswith(": 1. KVM: step 1; 2. KVM: step 2; 3. KVM: step 3")
    assert bisect_command(R(run)) == ("harness bisect kernels/port.yaml --set tdp_mmu=false --set seed=2"
                                   "   # the first bad patch of the series")
    assert any("harness bisect kernels/port.yaml" in ln for ln in head(summary_text(R(run), "results/R")))


def tree_change(**kw) -> dict:
    """run.json's `change` as harness.kernel.change.tree_change records it."""
    head = {"sha": "abc1234" + "0" * 33, "subject": "KVM: x86/mmu: my change", "author": "Dev <d@x>"}
    return {"kind": "tree", "repo": "linux", "path": "/home/dev/linux", "git": True,
            "describe": "v7.2-3-gabc1234-dirty", "head": head, "base": "v7.2",
            "commits": [{"sha": "a" * 40}, {"sha": "b" * 40}, head], "diff_sha256": "d" * 64, "diff_files": 1} | kw


def test_a_tree_change_names_the_commits_and_the_diff_and_bisects_the_range():
    run = load("mutant-a")
    run["change"] = tree_change()
    run["scenario_ref"] = "scenarios-of-mine/x.yaml"
    text = change_text(R(run))
    assert "tree /home/dev/linux at v7.2-3-gabc1234-dirty (abc123400000 KVM: x86/mmu: my change)" in text
    assert "3 commit(s) since v7.2" in text and "uncommitted diff sha256 dddddddddddd" in text
    assert bisect_command(R(run)).startswith("harness bisect --git /home/dev/linux --good v7.2 --bad abc1234"
                                          + "0" * 33 + " scenarios-of-mine/x.yaml")
    run["change"] = tree_change(base=None, commits=[])  # no base given: the good end is for the user to name
    assert "--good REF --bad abc1234" in bisect_command(R(run))
    run["change"] = tree_change(commits=[{"sha": "a" * 40}])  # one commit: nothing to bisect
    assert bisect_command(R(run)) is None


@pytest.mark.parametrize("name,first", [
    ("pass", "verdict  PASS (exit 0): no lost write: 24,576 page checks over 2/2 rounds"),
    ("l1-frozen", "verdict  INFRA-ERROR (exit 3): the harness could not judge this kernel: L1's QEMU is stopped"),
    ("l2-panic", "verdict  FINDING (exit 1): kernel panic: sysrq triggered crash"),
])
def test_every_verdict_has_a_short_head(name, first):
    top = head(summary_text(R(load(name)), "results/R"))
    assert top[0].startswith(first) and len(top) <= MAX_LINES
    assert any(ln.startswith("change   none: kernel 6.12.117") for ln in top)
    if name == "l2-panic":
        assert any(ln.startswith("details  below; the consoles:") for ln in top)
        assert not any("ledger alone" in ln for ln in top)  # the console convicts here, not the ledger


def test_head_is_at_most_ten_lines_whatever_the_findings():
    run = load("mutant-a")
    run["findings"] = run["findings"] + [copy.deepcopy(f) for f in run["findings"]] * 3
    assert len(head_lines(R(run), "R")) <= MAX_LINES


def test_timeline_notifier_ranges_read_as_text_not_a_bytes_repr():
    ls, gfn, _ = shadow_trace(mark=False, writeback=False)
    run_checker(ls, available=ALL4 | {"shadow_zap", "kvm_mmu_set_spte"})
    tl = T.timelines(ls, [gfn])[gfn]
    notifier = [x for x in tl if " notifier " in x]
    assert notifier == ["10.000101 notifier 0x007f5d55af1000--0x007f5d55af2000"]
    assert not any("b'" in x for x in tl)


def test_next_commands_name_the_folder_as_it_will_be_once_complete():
    top = head(summary_text(R(load("mutant-a")), "/r/matrix-1-nightly.incomplete/runs/ab12/20261201-154455-a-s1"))
    assert any(ln.startswith("next     harness reproduce /r/matrix-1-nightly/runs/ab12/20261201-154455-a-s1 ")
               for ln in top)


def test_a_micro_guest_dirty_log_finding_says_what_was_lost():
    run = load("mutant-a")
    run["findings"] = [{"oracle": "ledger", "layer": "L2", "kind": "dirty-log-missing", "count": 3,
                        "title": "3 written pages missing from KVM's dirty log (a migration would lose them)",
                        "harvests": [{"chor": "write-pageout-read-write", "round": 2, "first_missing_gfn": 0x1234}]}]
    top = head(summary_text(R(run), "results/R"))
    assert ("lost     3 written page(s) missing from KVM's dirty log; first: gfn 0x1234 (write-pageout-read-write, "
            "round 2)") in top
    assert "details  below; every step of the VMM: results/R/cases/*/micro-steps.jsonl" in top


def test_a_micro_guest_lost_page_names_its_l1_pfn_choreography_and_step_without_a_trace():
    run = load("mutant-a")
    page = {"index": 0, "gfn": 0x100000, "expected": 2, "found": 1, "round": 1, "chor": "write-pageout-read-write",
            "step": "verify-after-pageout", "pfn": 0x67f3f}
    run["findings"] = [{"oracle": "ledger", "layer": "L2", "kind": "stale", "count": 2560,
                        "title": "2560 lost write: stale page (older generation, valid CRC)", "pages": [page]}]
    top = head(summary_text(R(run), "results/R"))
    assert ("lost     2560 stale page(s); first: gfn 0x100000 (ledger index 0, generation 1 read back, 2 written) "
            "in L1 pfn 0x67f3f, write-pageout-read-write step verify-after-pageout") in top
