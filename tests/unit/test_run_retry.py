"""The TCG retry policy for an L2 crash that leaves no evidence of a lost write (harness/scenario/run.py)."""
from harness.scenario.run import tcg_l2_crash_without_evidence as flake

TCG = {"accel": {"mode": "tcg"}}
CRASH = {"oracle": "console", "layer": "L2", "kind": "bug", "title": "BUG: stack guard page was hit in error_entry"}
DIED = {"oracle": "console", "layer": "L2", "kind": "died", "title": "L2 ended before the ledger finished"}


def test_an_l2_crash_with_no_other_evidence_under_tcg_is_retried():
    assert flake(TCG, [DIED, CRASH]) == CRASH["title"]


def test_never_on_kvm():
    assert flake({"accel": {"mode": "kvm"}}, [DIED, CRASH]) is None


def test_any_evidence_of_a_lost_write_makes_it_a_finding():
    stale = {"oracle": "ledger", "layer": "L2", "kind": "stale", "title": "3 lost write"}
    r1 = {"oracle": "trace", "layer": "L1", "kind": "R1-violation", "title": "trace rule R1"}
    l1_oops = {"oracle": "console", "layer": "L1", "kind": "oops", "title": "Oops in L1"}
    for other in (stale, r1, l1_oops):
        assert flake(TCG, [DIED, CRASH, other]) is None


def test_a_death_or_a_hang_without_a_crash_report_is_not_retried():
    hang = {"oracle": "console", "layer": "L2", "kind": "hang", "title": "no ledger output for 240 s"}
    assert flake(TCG, [DIED]) is None and flake(TCG, [hang]) is None and flake(TCG, []) is None
