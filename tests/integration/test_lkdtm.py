"""LKDTM live: each kernel of harness.fleet.lkdtm.KERNELS (kernels/debian-6.12-debug.yaml and debian-7.2-debug.yaml with
kconfigs/lkdtm.config; kernels/debian-7.2-kasan.yaml with kasan.config too) boots as L1 under the harness's QEMU
without oops=panic, LKDTM provokes each of its crash types in one boot, and the console oracle must give each
type's report its kind and title.

Runs when the kernel is already in the build cache (`make test`: well under a minute per kernel, no build); with
HARNESS_LKDTM=1 (`make nightly`) a kernel that is not cached is built first (~12-15 min each on 2 cores).  The
same reports, recorded once, are the fixtures of tests/unit/test_console_lkdtm.py
(scripts/record-lkdtm-consoles.py)."""
import os

import pytest

from harness.fleet import lkdtm
from harness.oracles.console import classify
from tests.conftest import REPO, requires_qemu

pytestmark = [pytest.mark.integration, requires_qemu]
LIVE = os.environ.get("HARNESS_LKDTM") == "1"
BOOT_RECORD_LIMIT_S = 180     # measured well under a minute per kernel under TCG on 2 cores (docs/detection.md)
CASES = [(name, ct) for name, types in lkdtm.KERNELS.items() for ct in types]


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    return {}       # kernel name -> Recording: one boot per kernel for all of its types


def recording(name: str, cache: dict, tmp_path_factory) -> lkdtm.Recording:
    if name not in cache:
        kdir = lkdtm.cached_kernel(name)
        if kdir is None:
            if not LIVE:
                cache[name] = f"kernels/{name}.yaml is not in the build cache (`harness build kernels/{name}.yaml`,"\
                              f" or HARNESS_LKDTM=1 to build it here, as `make nightly` does)"
            else:
                from harness.kernel.build import build_kernel
                kdir = build_kernel(REPO / "kernels" / f"{name}.yaml")
        if kdir is not None:
            work = tmp_path_factory.mktemp(f"lkdtm-{name}")
            try:
                cache[name] = lkdtm.record_kernel(name, kdir, work)
            except Exception as e:          # every type of this kernel fails with the cause, no second boot
                cache[name] = e
            (work / "console.log").write_text(getattr(cache[name], "console", ""))
    got = cache[name]
    if isinstance(got, str):
        pytest.skip(got)
    if isinstance(got, Exception):
        raise got
    return got


@pytest.mark.parametrize("name,ct", CASES, ids=[f"{n}-{c.name}" for n, c in CASES])
def test_lkdtm_report_kind_and_title(name, ct, recordings, tmp_path_factory):
    rec = recording(name, recordings, tmp_path_factory)
    seg = rec.segments.get(ct.name, "")
    assert seg, f"{ct.name}: no marker segment on L1's console ({rec.release})"
    rep = classify(seg)
    assert (rep.crash, rep.kind, rep.title) == (True, ct.kind, ct.title), (rec.release, rep.excerpt[:1500])


@pytest.mark.parametrize("name", list(lkdtm.KERNELS))
def test_lkdtm_boot_and_record_time(name, recordings, tmp_path_factory):
    rec = recording(name, recordings, tmp_path_factory)
    assert rec.timings["record_s"] < BOOT_RECORD_LIMIT_S, rec.timings
    # the kernel lived through every report before the last: each had its end marker
    types = lkdtm.KERNELS[name]
    assert all(f"lkdtm-record: end {c.name}" in rec.segments[c.name] for c in types[:-1]), rec.writer
