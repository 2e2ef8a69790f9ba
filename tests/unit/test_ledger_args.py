"""The ledger binary's input checks (a bad option: one line, exit 2) and its unknown gfns (null, never 2^64-1)."""
import os
import shutil
import subprocess

import pytest

from harness.images.l2 import build_ledger
from harness.oracles import ledger
from harness.oracles.ledger import gfn_text


@pytest.fixture(scope="module")
def ledger_bin(tmp_path_factory):
    d = tmp_path_factory.mktemp("ledger")
    os.chmod(d, 0o755)  # another user (nobody, below) must be able to run it
    return build_ledger(d / "ledger")


def run(binary, *args, user=None):
    pre = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user is not None else []
    return subprocess.run([*pre, str(binary), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, message", [
    (["--batch", "0"], "--batch must be at least 1"),        # once: an endless loop
    (["--pages", "0"], "--pages must be at least 1"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--pages", "12abc"], "--pages: not a whole number >= 0: '12abc'"),
    (["--pages", "-4"], "--pages: not a whole number >= 0: '-4'"),
    (["--seed", ""], "--seed: not a whole number"),
    (["--window", "soon"], "--window: not a number: 'soon'"),
    (["--write-frac", "1.5"], "--write-frac must be in [0, 1]"),
    (["--write-frac", "nan"], "--write-frac: not a number: 'nan'"),
    (["--node", "64"], "--node must be -1 (no binding) or a NUMA node number below 64"),
    (["--pages", "8", "--trail", "9"], "--trail must not exceed --pages"),
    (["--pages", "8", "--selftest", "9"], "--selftest must not exceed --pages"),
    (["--dma-frac", "0.5"], "needs --dma-dev"),
    (["--pages", "8", "leftover"], "unexpected argument 'leftover'"),
])
def test_a_bad_option_is_one_line_and_exit_2(ledger_bin, args, message):
    r = run(ledger_bin, "--window", "0", *args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "@@LEDGER" not in r.stdout  # nothing ran


def test_good_options_still_run(ledger_bin):
    r = run(ledger_bin, "--pages", "0x40", "--rounds", "1", "--window", "0", "--node", "-1", "--no-mlock")
    res = ledger.parse_console(r.stdout)
    assert r.returncode == 0 and res.done and res.pages == 64, r.stderr


def test_gfns_are_numbers_for_root_and_null_when_pagemap_hides_them(ledger_bin):
    args = ("--pages", "256", "--rounds", "2", "--window", "0", "--selftest", "4")
    if os.geteuid() == 0:  # root reads pagemap: a real gfn on every bad page
        res = ledger.parse_console(run(ledger_bin, *args).stdout)
        assert res.bad and all(isinstance(b["gfn"], int) and b["gfn"] != ledger.OLD_UNKNOWN_GFN for b in res.bad)
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the ledger as a user pagemap hides PFNs from")
    r = run(ledger_bin, *args, "--no-mlock", user=65534)
    res = ledger.parse_console(r.stdout)
    assert r.returncode == 1 and res.bad, r.stderr  # the self-test's lost writes, found
    assert all(b["gfn"] is None for b in res.bad)  # unknown, said so: not 2^64-1, not 0
    assert '"gfn":null' in r.stdout and str(ledger.OLD_UNKNOWN_GFN) not in r.stdout
    assert [gfn_text(b["gfn"]) for b in res.bad[:1]] == ["unknown"]


@pytest.mark.parametrize("gfn, text", [(0x100a3, "0x100a3"), (None, "unknown"), ((1 << 64) - 1, "unknown")])
def test_gfn_text(gfn, text):
    assert gfn_text(gfn) == text
