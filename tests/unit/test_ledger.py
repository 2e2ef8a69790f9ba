"""The ledger workload (real C binary, run natively) and its oracle (pure), on real and generated output."""
import subprocess

import pytest

from harness.images.l2 import build_ledger
from harness.oracles import ledger
from tests.conftest import REPO


@pytest.fixture(scope="module")
def ledger_bin(tmp_path_factory):
    return build_ledger(tmp_path_factory.mktemp("ledger") / "ledger")


def run_ledger(binary, *args):
    p = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=120)
    return p.returncode, ledger.parse_console(p.stdout)


def test_clean_run_verifies_every_page_every_round(ledger_bin):
    rc, res = run_ledger(ledger_bin, "--pages", "2048", "--rounds", "3", "--window", "0", "--seed", "5")
    assert rc == 0 and res.done
    assert res.pages_verified == 2048 * 4  # rounds 1..3 read-first + the final verify-all
    assert res.bad_total == 0 and ledger.findings(res) == []


def test_selftest_lost_writes_are_classified_stale_zero_corrupt(ledger_bin):
    rc, res = run_ledger(ledger_bin, "--pages", "2048", "--rounds", "2", "--window", "0", "--selftest", "10")
    assert rc == 1 and res.done
    assert (res.stale, res.zero, res.corrupt) == (8, 1, 1)
    assert ledger.check_selftest(res) == []
    stale = [b for b in res.bad if b["class"] == "stale"]
    # the restored copies hold generation 1 where round 1 wrote generation 2: exactly a lost write
    assert all(b["found"] == 1 and b["expected"] == 2 for b in stale)
    kinds = {f["kind"]: f for f in ledger.findings(res)}
    assert set(kinds) == {"stale", "zero", "corrupt"} and kinds["stale"]["count"] == 8
    assert all("gfn" in p for p in kinds["stale"]["pages"])


def test_expected_generation_is_derived_from_the_seed_not_stored(ledger_bin):
    # Same seed → same writes per round; a different seed → a different subset.
    w = {}
    for seed in ("1", "1", "2"):
        _, res = run_ledger(ledger_bin, "--pages", "1024", "--rounds", "2", "--window", "0", "--seed", seed)
        w.setdefault(seed, []).append([e["written"] for e in res.events if e["ev"] == "round"])
    assert w["1"][0] == w["1"][1] and w["1"][0] != w["2"][0]


def test_oracle_on_a_recorded_real_l2_console():
    text = (REPO / "tests/fixtures/ledger/l2-console-pass-6.12.117.log").read_text()
    res = ledger.parse_console(text)
    assert res.done and res.pages == 49152 and res.rounds == 4
    assert res.pages_verified == 49152 * 5 and res.bad_total == 0


def test_oracle_tolerates_cut_lines_and_counts_bad_pages_before_done():
    text = "\n".join([
        '@@LEDGER {"ev":"start","pages":4,"rounds":1}',
        '@@LEDGER {"ev":"bad","class":"stale","round":1,"index":2,"gfn":4660,"expected":2,"found":1,"t":3.5}',
        '@@LEDGER {"ev":"bad","cla',  # cut by a console interleave
        "random kernel noise",
    ])
    res = ledger.parse_console(text)
    assert not res.done and res.stale == 1 and res.first_bad_t == 3.5
    f = ledger.findings(res)[0]
    assert f["oracle"] == "ledger" and f["pages"][0] == {"index": 2, "gfn": 4660, "expected": 2, "found": 1, "round": 1}
    assert ledger.check_selftest(res)  # no selftest line → the check complains


def test_trailing_checks_catch_losses_within_the_round_and_count_once(ledger_bin):
    rc, res = run_ledger(ledger_bin, "--pages", "2048", "--rounds", "2", "--window", "0", "--selftest", "10",
                         "--trail", "2")
    assert rc == 1 and res.done and res.trail_verified > 0
    assert (res.stale, res.zero, res.corrupt) == (8, 1, 1)  # repaired when found: never counted twice
    assert all(b["round"] == 1 for b in res.bad)  # found in the round that lost them, not the next


def test_a_start_line_cut_by_a_console_message_still_gives_the_sizes():
    from harness.oracles.ledger import parse_console
    text = ('@@LEDGER {"ev": "start", "pages": 8192, "ro[   12.3] random: crng init done\n'
            'unds": 12}\n'
            '@@LEDGER {"ev": "round", "round": 12, "written": 4031, "bad": 0, "t": 67.7}\n'
            '@@LEDGER {"ev": "done", "pages": 8192, "rounds": 12, "verified": 106496, "stale": 0, "zero": 0, '
            '"corrupt": 0, "t": 72.2}\n')
    res = parse_console(text)
    assert not res.started and res.done
    assert (res.pages, res.rounds, res.rounds_done, res.pages_verified) == (8192, 12, 12, 106496)
