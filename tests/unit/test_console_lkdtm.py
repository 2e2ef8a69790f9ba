"""Console oracle on real consoles of current kernels: LKDTM reports recorded on the debug builds of 6.12 and 7.2
and on a KASAN build of 7.2.

Each tests/fixtures/consoles-lkdtm/<kernel>/<TYPE>.log is the serial console of one L1 boot from the marker
"lkdtm-record: begin TYPE" to "lkdtm-record: end TYPE" (scripts/record-lkdtm-consoles.py; the same boots live:
tests/integration/test_lkdtm.py); expected.json names the kind and title the oracle must give each file (a golden
per real log, written from harness.fleet.lkdtm.KERNELS, not from the oracle's own answer); boot.log is the same boot
before the first marker, which must hold no report.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.fleet import lkdtm
from harness.oracles.console import classify, classify_all

FIX = Path(__file__).resolve().parents[1] / "fixtures/consoles-lkdtm"
KERNEL_DIRS = sorted(d for d in FIX.iterdir() if (d / "expected.json").is_file()) if FIX.is_dir() else []
CASES = [(d.name, name, want) for d in KERNEL_DIRS
         for name, want in json.loads((d / "expected.json").read_text()).items()]


@pytest.mark.parametrize("kernel,name,want", CASES, ids=[f"{k}/{n}" for k, n, _ in CASES])
def test_real_lkdtm_report(kernel, name, want):
    text = (FIX / kernel / name).read_text()
    rep = classify(text)
    assert (rep.crash, rep.kind, rep.title) == (True, want["kind"], want["title"]), rep.excerpt[:1200]
    assert rep.start_line > 1     # the report, not the marker line before it


@pytest.mark.parametrize("kernel,name,want", CASES, ids=[f"{k}/{n}" for k, n, _ in CASES])
def test_one_report_per_crash_type(kernel, name, want):
    """Nothing else in a type's segment is taken for a second, different kernel crash."""
    crashes = [r for r in classify_all((FIX / kernel / name).read_text()) if r.crash]
    assert [(r.kind, r.title) for r in crashes] == [(want["kind"], want["title"])]


@pytest.mark.parametrize("kernel", [d.name for d in KERNEL_DIRS])
def test_real_debug_kernel_boot_has_no_report(kernel):
    """The same boot up to the first marker: PROVE_LOCKING, DEBUG_VM, KASAN found nothing, nor may the oracle."""
    text = (FIX / kernel / "boot.log").read_text()
    assert "Linux version" in text and text.rstrip().endswith("HARNESS-L1: ready")
    assert classify_all(text) == []


def test_fixtures_cover_every_kernel_and_crash_type():
    assert [d.name for d in KERNEL_DIRS] == sorted(lkdtm.KERNELS)
    for d in KERNEL_DIRS:
        expected = json.loads((d / "expected.json").read_text())
        assert sorted(p.name for p in d.glob("*.log")) == sorted([*expected, "boot.log"]), d.name
        assert expected == {f"{c.name}.log": {"kind": c.kind, "title": c.title} for c in lkdtm.KERNELS[d.name]}
        rec = json.loads((d / "recorded.json").read_text())
        assert rec["kernel"] == f"kernels/{d.name}.yaml" and "oops=panic" not in rec["cmdline"]
        for c in lkdtm.KERNELS[d.name]:
            text = (d / f"{c.name}.log").read_text()
            assert f"lkdtm-record: begin {c.name}" in text.splitlines()[0], (d.name, c.name)


def test_recorded_releases_are_the_current_kernels():
    releases = {d.name: json.loads((d / "recorded.json").read_text())["release"] for d in KERNEL_DIRS}
    assert releases["debian-6.12-debug"].startswith("6.12.") and releases["debian-7.2-debug"].startswith("7.2.")
    assert releases["debian-7.2-kasan"] == releases["debian-7.2-debug"]


def test_segments_cut_the_console_at_the_markers():
    con = ("[    1.0] HARNESS-L1: ready\n"
           "[    2.0] lkdtm-record: begin WARNING\n[    2.1] WARNING: ...\n[    2.2] lkdtm-record: end WARNING\n"
           "[    3.0] noise between types\n"
           "[    4.0] lkdtm-record: begin BUG\n[    4.1] kernel BUG at x.c:1!\n"
           "[    5.0] lkdtm-record: begin SOFTLOCKUP\n[    7.0] watchdog: BUG: soft lockup - CPU#1 stuck\n")
    s = lkdtm.segments(con)
    assert list(s) == ["WARNING", "BUG", "SOFTLOCKUP"]
    assert s["WARNING"].splitlines() == ["[    2.0] lkdtm-record: begin WARNING", "[    2.1] WARNING: ...",
                                         "[    2.2] lkdtm-record: end WARNING"]
    assert s["BUG"].splitlines()[-1] == "[    4.1] kernel BUG at x.c:1!"      # no end marker: up to the next begin
    assert s["SOFTLOCKUP"].endswith("stuck\n")                                  # ... or to the end of the log


def test_crash_types_run_in_a_safe_order():
    names = [c.name for c in lkdtm.CRASH_TYPES]
    kinds = [c.kind for c in lkdtm.CRASH_TYPES]
    # khungtaskd is silent on a kernel tainted D: HUNG_TASK before the first oops; the CPU spinner last
    assert names.index("HUNG_TASK") < min(i for i, k in enumerate(kinds) if k in ("oops", "bug"))
    assert names[-1] == "SOFTLOCKUP"
    assert [c.name for c in lkdtm.CRASH_TYPES if c.until] == ["HUNG_TASK", "SOFTLOCKUP"]
    assert lkdtm.PROVOKE.is_file() and "oops=panic" not in lkdtm.CMDLINE and "panic_on_warn=0" in lkdtm.CMDLINE
    # KASAN kernel: the sanitizer reports first (the kernel is not tainted D yet), the oops last
    assert [c.kind for c in lkdtm.KASAN_TYPES][-1] == "oops"
    assert all(c.kind == "kasan" for c in lkdtm.KASAN_TYPES[:-1])
    assert "kasan_multi_shot" in lkdtm.EXTRA_CMDLINE["debian-7.2-kasan"]
