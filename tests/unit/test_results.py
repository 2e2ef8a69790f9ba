import json
import xml.etree.ElementTree as ET

from harness.report.models import RunRecord
from harness.report.results import RunDir, atomic_write, junit_xml, summary_text
from harness.scenario.l1host import l2_append, parse_vmstat, setup_env, vmstat_delta
from harness.config import parse_scenario


def test_rundir_is_incomplete_until_finished(tmp_path):
    rd = RunDir(tmp_path, "r1")
    assert rd.path.name == "r1.incomplete"
    atomic_write(rd.case("c") / "x.txt", "hi")
    assert not list(rd.case("c").glob(".*.tmp"))
    rd.finish()
    assert (tmp_path / "r1/cases/c/x.txt").read_text() == "hi" and not (tmp_path / "r1.incomplete").exists()


def run_dict(verdict, findings):
    """run.json's content, read through its model (summary.txt and junit.xml are rendered from the model)."""
    return RunRecord.parse({"run_id": "r", "verdict": verdict, "findings": findings, "kernel": {"release": "6.12"},
                            "timings": {"total_s": 12.0}, "ledger": {"pages": 4},
                            "l1": {"vmstat_delta": {"pswpout": 5}}})


def test_junit_one_case_fails_on_finding():
    x = ET.fromstring(junit_xml(run_dict("finding", [{"oracle": "ledger", "layer": "L2", "kind": "stale", "title": "3 lost"}])))
    assert x.get("failures") == "1" and x.find("testcase/failure").text.endswith("3 lost")
    x = ET.fromstring(junit_xml(run_dict("pass", [])))
    assert x.get("failures") == "0" and x.find("testcase/failure") is None


def test_summary_shows_pages_and_verdict():
    s = summary_text(run_dict("finding", [{"oracle": "ledger", "layer": "L2", "kind": "stale", "title": "1 lost",
                                          "pages": [{"index": 3, "gfn": 0x1234, "expected": 2, "found": 1}]}]))
    assert "FINDING" in s and "gfn=0x1234" in s and "expected gen=2" in s


def test_vmstat_delta_and_cmdline():
    a = parse_vmstat("pswpout 10\npswpin 3\nnr_free_pages 9\n")
    b = parse_vmstat("pswpout 110\npswpin 4\n")
    d = vmstat_delta(a, b)
    assert d is not None and d["pswpout"] == 100 and d["pswpin"] == 1 and "nr_free_pages" not in d
    # a sample cut short as L1 was lost: a counter gone, or lower than at the start
    assert vmstat_delta(a, parse_vmstat("pswpout 110\n")) is None
    assert vmstat_delta(a, parse_vmstat("pswpout 9\npswpin 3\n")) is None
    s = parse_scenario("ledger: {size_mb: 48, rounds: 3}\nl2_fault: panic\ntdp_mmu: false\n", "x.yaml")
    app = l2_append(s)
    assert "harness.ledger=pages:12288,rounds:3" in app and "oops=panic" in app and "harness.fault=panic" in app
    # the ledger binds to the data DIMM, which L2 onlines as ZONE_MOVABLE on node 1
    assert ",node:1" in app and "movable_node" in app and "memhp_default_state=online_movable" in app
    flat = l2_append(parse_scenario("l2_kernel_node_mb: 0\nl2_memory_mb: 320\nmemory_max_mb: 128\n"
                                    "ledger: {size_mb: 192}\n", "x.yaml"))
    assert "node:" not in flat and "movable_node" not in flat
    assert setup_env(s)["TDP_MMU"] == "N" and setup_env(s)["SWAP_KIND"] == "disk"
    json.dumps(setup_env(s))


def test_pinned_host_key_rejects_another_key():
    import paramiko
    import pytest
    from harness.vm.ssh import PinnedHostKey, pinned_host_key
    good, bad = paramiko.ECDSAKey.generate(bits=256), paramiko.ECDSAKey.generate(bits=256)
    policy = PinnedHostKey(pinned_host_key(f"{good.get_name()} {good.get_base64()}"))
    policy.missing_host_key(None, "127.0.0.1", good)  # accepted
    with pytest.raises(paramiko.SSHException, match="host key mismatch"):
        policy.missing_host_key(None, "127.0.0.1", bad)


def test_l2_image_is_cached_by_its_inputs(tmp_path, monkeypatch):
    import shutil
    import pytest
    if not shutil.which("busybox") or not shutil.which("cpio"):
        pytest.skip("busybox-static/cpio not installed (make setup)")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    from harness.images.l2 import build_l2_image
    a = build_l2_image()
    mtime = a.initramfs.stat().st_mtime_ns
    b = build_l2_image()
    assert a == b and b.initramfs.stat().st_mtime_ns == mtime  # unchanged inputs rebuild nothing


def test_reproduce_script_carries_seed_overrides_and_kernel():
    from harness.report.reproduce import reproduce_sh
    run = {"run_id": "r", "verdict": "finding", "scenario": {"seed": 3}, "scenario_yaml": "seed: 1\n",
           "overrides": ["ledger.rounds=2", "seed=3"], "kernel": {"release": "6.12"}}
    sh = reproduce_sh(["--kernel", "/k"], run)
    assert "--seed 3" in sh and "--set ledger.rounds=2" in sh and "--kernel /k" in sh and "seed: 1" in sh
    assert "--set seed=3" not in sh




def test_a_rule_empty_by_design_on_the_micro_guest_is_not_called_vacuous():
    from harness.report.results import _trace_lines
    tr = {"events": 10, "lost_events": 0, "ruleset": "create-time",
          "rules": {"R1": {"ran": True, "events_checked": 5, "violations": 0},
                    "R4": {"ran": True, "events_checked": 0, "violations": 0, "why": "no dirty zap reached reclaim"}}}
    micro, linux = _trace_lines(tr, "micro"), _trace_lines(tr, "linux")
    assert "  R4     checked 0 events: none exist on the micro guest of a correct kernel (docs/microguest.md)" in micro
    assert "  R4     VACUOUS: checked 0 events (no dirty zap reached reclaim)" in linux
    assert "  R1     checked 5 events, 0 violations" in micro and "  R1     checked 5 events, 0 violations" in linux
