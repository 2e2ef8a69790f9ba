"""`harness run --kernel debian:7.2`: Debian's newest prebuilt 7.2 (split linux-binary-unsigned + linux-modules +
linux-base packages from sid / trixie-backports, fetched once through the private apt state) boots as L1, runs L2
under its KVM with the create-time trace rules, and run.json names the package, version and sha256.
Needs the system's Debian mirror (the first run downloads ~125 MB; later runs use the cache)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, requires_qemu

pytestmark = [pytest.mark.integration, requires_qemu]
HARNESS = [sys.executable, "-m", "harness"]


def harness(*args, timeout=1500):
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_debian_7_2_prebuilt_boots_as_l1_with_create_time_rules(results_dir):
    p = harness("run", "tests/fixtures/scenarios/small.yaml", "--kernel", "debian:7.2", "--set", "trace.enabled=true",
                "--results", str(results_dir))
    (path,) = list(results_dir.iterdir())
    run = json.loads((path / "run.json").read_text())
    assert p.returncode == 0, (run["findings"], p.stderr[-2000:])
    k = run["kernel"]
    assert k["source"] == "debian-package" and k["release"].startswith("7.2.") and k["release"].endswith("-amd64")
    b = k["base"]
    assert b["kind"] == "debian-package" and b["package"].startswith("linux-binary-unsigned-7.2.")
    assert b["version"].startswith("7.2.") and len(b["sha256"]) == 64
    assert {x["package"].split("-7.2.")[0] for x in b["packages"]} == \
        {"linux-binary-unsigned", "linux-modules", "linux-base"}
    meta = json.loads((Path(k["dir"]) / "meta.json").read_text())
    assert (meta["package"], meta["version"], meta["sha256"]) == (b["package"], b["version"], b["sha256"])
    # the L1 image found the kernel's own modules in the split layout (depmod -b run into the artifact)
    assert {"kvm.ko", "kvm-amd.ko", "kvm-intel.ko", "virtio_blk.ko", "zram.ko"} <= set(run["images"]["l1_modules"])
    assert run["l1"]["nested"] and run["ledger"]["complete"]
    tr = run["trace"]
    assert tr["ruleset"] == "create-time" and "7.2" in tr["ruleset_why"], tr.get("ruleset_why")
    assert tr["lost_events"] == 0


@pytest.mark.parametrize("spec,needle", [
    ("debian:7.9", "debian:7.9: no prebuilt amd64 kernel of that version on "),
    ("debian:seven", "expected a Debian kernel version like 7.2, 7.2.13 or 7.2.13-1"),
])
def test_absent_debian_version_is_one_line_exit_2(results_dir, spec, needle):
    p = harness("run", "tests/fixtures/scenarios/small.yaml", "--kernel", spec, "--results", str(results_dir),
                timeout=300)
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    if spec == "debian:7.9":
        assert "offered: " in p.stderr and "7.2." in p.stderr
    assert list(results_dir.iterdir()) == []
