"""A case's facts about L1 and its guest are typed models, one copy each (harness.evidence.L1Facts, L2Facts): the
scenario stage fills them (L1's from setup-host.sh's lines), the judge reads them, and run.json's "l1" and "l2" are
them (and "ledger" is the judge's LedgerTotals), so what the judge saw and what the report shows cannot drift."""
import time

import pytest

from harness.config import Scenario
from harness.errors import InfraError
from harness.evidence import CaseEvidence, Judgement, L1Facts, L2Facts, LedgerTotals
from harness.oracles.ledger import parse_console
from harness.report.models import RunRecord
from harness.scenario.case import _setup_l1, new_evidence
from harness.scenario.run import record

# what guest-images/l1/setup-host.sh prints on an AMD L1 (names as in the script, values as on the TCG L1)
SETUP_OUT = """cpu_vendor=AuthenticAMD
kvm_module=kvm_amd
nested=1
tdp=1
kvm_params=npt=Y
tdp_mmu=Y
clocksource=tsc
thp=always [madvise] never
mglru=0x0007
zswap=N
swap=/dev/vda:2097148
taint=0
"""


class FakeShell:
    """L1 over SSH as _setup_l1 uses it: setup-host.sh's lines, then /proc/cmdline."""

    def __init__(self, setup_out: str):
        self.setup_out = setup_out

    def run(self, cmd: str, timeout=None) -> str:
        return self.setup_out if "setup-host.sh" in cmd else "console=ttyS0 loglevel=5\n"


class Log:
    def __call__(self, msg: str) -> None:
        self.last = msg

    def phase(self, name: str) -> None:
        pass


def test_setup_host_lines_become_typed_l1_facts():
    ev = new_evidence(Scenario(), "default", None)
    _setup_l1(Scenario(), ev, FakeShell(SETUP_OUT), 1.0, Log())
    l1 = ev.l1
    assert (l1.cpu_vendor, l1.kvm_module, l1.nested, l1.tdp, l1.tdp_mmu) == ("AuthenticAMD", "kvm_amd", True, True, True)
    assert (l1.taint_before, l1.swap, l1.cmdline) == (0, "/dev/vda:2097148", "console=ttyS0 loglevel=5")
    assert "l1" not in ev.info  # one copy of the facts, not two
    assert ev.info["accel"]["l1_cpu_vendor"] == "AuthenticAMD"
    # run.json's "l1": what was measured, nothing unmeasured added
    assert set(l1.to_json()) == {"cmdline", "cpu_vendor", "kvm_module", "nested", "tdp", "tdp_mmu", "clocksource",
                                 "thp", "mglru", "zswap", "swap", "kvm_params", "delays", "taint_before"}
    assert l1.to_json()["delays"] is None  # setup-host.sh printed no delays line: not loaded


def test_an_l1_without_nested_kvm_is_an_infrastructure_error_naming_the_module():
    ev = new_evidence(Scenario(), "default", None)
    with pytest.raises(InfraError, match="kvm_amd loaded without nested support"):
        _setup_l1(Scenario(), ev, FakeShell(SETUP_OUT.replace("nested=1", "nested=0")), 1.0, Log())
    assert ev.l1.nested is False


def _ledger_lines(pages: int, stale: int) -> str:
    return (f'@@LEDGER {{"ev":"start","pages":{pages},"rounds":2}}\n'
            f'@@LEDGER {{"ev":"done","verified":{pages * 2},"stale":{stale},"zero":0,"corrupt":0}}\n')


def test_run_json_l1_and_ledger_are_the_evidence_and_the_judgement_models():
    s = Scenario()
    ev: CaseEvidence = new_evidence(s, "default", None)
    ev.l1 = L1Facts(kvm_module="kvm_intel", nested=True, taint_before=0, taint_after=0,
                    vmstat_delta={"pswpout": 900}, swap_peak_frac=0.4)
    totals = parse_console(_ledger_lines(4096, 0)).totals()
    verdict = Judgement(verdict="pass", findings=[], ledger=totals, judge_version="t")
    run = record("r1", s, "", [], {"release": "6.12"}, ev, verdict, [], False, time.monotonic())
    assert run["l1"] == ev.l1.to_json() and run["l1"]["vmstat_delta"] == {"pswpout": 900}
    assert run["ledger"] == {"pages": 4096, "rounds": 2, "rounds_done": 0, "pages_verified": 8192, "trail_verified": 0,
                             "stale": 0, "zero": 0, "corrupt": 0, "complete": True, "first_bad_s": None}
    # L2: every fact, defaults included (not booted, no end seen are facts too)
    assert run["l2"] == {"qemu_rc": None, "reclaim_writes": [], "stopped_early": False, "injected": None,
                         "result_channel": False, "booted": False, "ended_at_s": None, "qemu_log_tail": ""}
    back = RunRecord.parse(run)  # and the report reads them back as the same models
    assert isinstance(back.l1, L1Facts) and back.l1 == ev.l1
    assert isinstance(back.l2, L2Facts) and back.l2 == ev.l2
    assert isinstance(back.ledger, LedgerTotals) and back.ledger.pages_verified == 8192 and back.ledger.bad == 0


@pytest.mark.parametrize("recorded, bad", [({}, 0), ({"stale": 3, "zero": 1}, 4), ({"corrupt": 2, "zero": None}, 2)])
def test_ledger_totals_of_an_older_run_count_what_it_recorded(recorded, bad):
    lg = LedgerTotals.model_validate(recorded)
    assert lg.bad == bad and lg.to_json() == recorded


def test_l2_facts_of_a_run_that_reclaimed_and_injected_reach_run_json():
    s = Scenario()
    ev = new_evidence(s, "default", None)
    ev.l2 = L2Facts(qemu_rc=0, booted=True, ended_at_s=61.5, result_channel=True, injected="kill-l2-qemu",
                    reclaim_writes=[{"t": 12.0, "mb": 256, "s": 30.1}])
    verdict = Judgement(verdict="pass", findings=[], judge_version="t")
    run = record("r1", s, "", [], {"release": "6.12"}, ev, verdict, [], False, time.monotonic())
    assert run["l2"]["reclaim_writes"] == [{"t": 12.0, "mb": 256, "s": 30.1}] and run["l2"]["injected"] == "kill-l2-qemu"
    assert "l2" not in ev.info and RunRecord.parse(run).l2.reclaim_writes[0]["mb"] == 256
