"""`harness matrix --jobs N`: the scheduler of child runs, with a fake `harness run` child (no QEMU).

The fake writes a run.json the way `harness run` does (in <results>/<id>.incomplete, renamed when done), can
start a grandchild in a session of its own (as a run starts QEMU) and can be told to ignore SIGTERM."""
import argparse
import json
import os
import signal
import sys
import threading
import time

import psutil
import pytest

import harness.fleet.matrix.cli as MC
import harness.fleet.matrix.jobs as MJ

FAKE = r'''
import json, os, signal, subprocess, sys, time
a = sys.argv[1:]
assert a[0] == "run", a
val = lambda flag: a[a.index(flag) + 1]
sets = [a[i + 1] for i, x in enumerate(a) if x == "--set"]
name = json.loads(next(s for s in sets if s.startswith("name="))[5:])
seed = int(val("--seed"))
root = val("--results")
os.makedirs(root, exist_ok=True)
rid = f"{time.strftime('%H%M%S')}-{time.monotonic_ns()}-{name}-s{seed}"
inc, final = os.path.join(root, rid + ".incomplete"), os.path.join(root, rid)
os.mkdir(inc)
open(os.path.join(os.path.dirname(root), "..", "argv-" + rid), "w").write(json.dumps(a))
env = os.environ
qemu = None
if env.get("FAKE_GRANDCHILD"):  # stands in for QEMU: own session, its cmdline names the results folder
    qemu = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)  # fake-qemu", inc],
                            start_new_session=True)

def write(verdict, interrupted):
    finding = [{"oracle": "ledger", "layer": "L2", "kind": "stale", "title": "1 lost write", "patch": "p",
                "pages": [{"index": 1, "gfn": 4096, "expected": 2, "found": 1}]}] if verdict == "finding" else []
    run = {"schema": 1, "run_id": rid, "verdict": verdict, "interrupted": interrupted, "attempts": 1, "l1": {"tdp_mmu": True},
           "timings": {"total_s": 1.0, "first_finding_s": 0.5 if finding else None}, "findings": finding,
           "overrides": sets}
    open(os.path.join(inc, "run.json"), "w").write(json.dumps(run))

def on_term(*_):
    if qemu:
        qemu.kill()
    write("infra-error", True)
    sys.exit(3)

signal.signal(signal.SIGTERM, signal.SIG_IGN if env.get("FAKE_IGNORE_TERM") else on_term)
time.sleep(float(env.get("FAKE_SLEEP", "0.3")))
if qemu:
    qemu.kill()
verdict = "finding" if str(seed) in env.get("FAKE_FIND_SEEDS", "").split(",") else "pass"
write(verdict, False)
os.rename(inc, final)
print("verdict:", verdict)
sys.exit(1 if verdict == "finding" else 0)
'''

MATRIX = """name: fake
scenario: s.yaml
seeds: [1, 2, 3]
budget_runs: 2
kernels: {a: {prebuilt: true}, b: {prebuilt: true, mutant: true}, c: {prebuilt: true}}
groups:
  - {kernels: [a, c], expect: clean}
  - {kernels: [b], expect: finding, cell_per_seed: true}
  - {kernels: [a], variants: [{thp: always}], expect: clean, budget_runs: 1}
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    script = tmp_path / "fake_harness.py"
    script.write_text(FAKE)
    monkeypatch.setattr(MJ, "HARNESS_ARGV", [sys.executable, str(script)])
    monkeypatch.setattr(MJ, "POLL_S", 0.05)
    monkeypatch.setattr(MJ, "warm_images", lambda kernels: None)
    monkeypatch.setattr(MC, "resolve", lambda ref, base: {"source": "debian-prebuilt", "release": "x"})
    for k in ("FAKE_GRANDCHILD", "FAKE_IGNORE_TERM", "FAKE_SLEEP", "FAKE_FIND_SEEDS"):
        monkeypatch.delenv(k, raising=False)
    (tmp_path / "s.yaml").write_text("seed: 1\n")
    (tmp_path / "m.yaml").write_text(MATRIX)
    # cli_matrix installs the run's handlers (SIGTERM → KeyboardInterrupt): put pytest's back afterwards
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    yield tmp_path
    for s, h in saved.items():
        signal.signal(s, h)


def matrix(tmp_path, results: str, **kw) -> tuple[int, dict, object]:
    ns = argparse.Namespace(matrix_yaml=str(tmp_path / "m.yaml"), results=str(tmp_path / results),
                            list=False, shard=kw.get("shard"), jobs=kw.get("jobs", "1"))
    rc = MC.cli_matrix(ns)
    (mdir,) = (tmp_path / results).iterdir()
    return rc, json.loads((mdir / "matrix.json").read_text()), mdir


def shape(js: dict) -> list:
    """What the outcome is made of, without paths and timings."""
    return [(c["id"], c["kernel"], c["outcome"], [(r["seed"], r["verdict"]) for r in c["runs"]]) for c in js["cells"]]


def test_jobs_2_gives_the_same_matrix_as_jobs_1(fake, monkeypatch):
    monkeypatch.setenv("FAKE_FIND_SEEDS", "2")
    rc1, j1, d1 = matrix(fake, "r1", jobs="1")
    rc2, j2, d2 = matrix(fake, "r2", jobs="2")
    assert shape(j1) == shape(j2) and rc1 == rc2
    outcomes = {c["kernel"] + str(c["variant"]) + str(c["seed"]): c["outcome"] for c in j2["cells"]}
    assert outcomes["a{}None"] == "finding"  # a clean cell's seeds 1, 2: seed 2 finds
    assert outcomes["b{}2"] == "finding" and outcomes["b{}1"] == "clean"
    # a finding cell stops at its first finding; a clean cell runs its whole budget
    a = next(c for c in j2["cells"] if c["kernel"] == "a" and not c["variant"])
    assert [r["seed"] for r in a["runs"]] == [1, 2]
    assert j2["cells"][0]["runs"][0]["run_dir"].startswith(str(d2))  # the final name, not .incomplete
    assert not d2.name.endswith(".incomplete") and (d2 / "summary.txt").exists() and (d2 / "junit.xml").exists()
    for c in j2["cells"]:  # each cell's runs in its own folder under runs/, one log per run with --jobs > 1
        assert (d2 / "runs" / c["id"]).is_dir()
        assert len(list((d2 / "runs" / c["id"]).glob("*.log"))) == len(c["runs"])
    assert not list((d1 / "runs").glob("*/*.log"))  # --jobs 1: the child writes to the terminal, as before


def test_the_child_gets_kernel_seed_overrides_and_its_results_folder(fake):
    rc, js, mdir = matrix(fake, "r", jobs="1")
    argvs = [json.loads(p.read_text()) for p in fake.glob("r/*/argv-*")]
    b1 = next(a for a in argvs if '"b"' in " ".join(a) and a[a.index("--seed") + 1] == "1")
    assert b1[1].endswith("s.yaml") and "--kernel" not in b1  # the prebuilt kernel: the child's default
    assert "stop_on_first_finding=true" in b1 and 'name="b"' in b1
    (bid,) = [c["id"] for c in js["cells"] if c["kernel"] == "b" and c["seed"] == 1]
    assert b1[b1.index("--results") + 1] == f"{mdir}.incomplete/runs/{bid}"  # renamed once complete
    thp = next(a for a in argvs if '"always"' in " ".join(a))
    assert "stop_on_first_finding=true" not in thp and 'thp="always"' in thp


def test_a_built_kernel_is_passed_as_kernel_dir(fake, monkeypatch, tmp_path):
    monkeypatch.setattr(MC, "resolve", lambda ref, base: {"source": "built", "release": "x", "dir": str(tmp_path)})
    matrix(fake, "r", jobs="2")
    argv = json.loads(next(fake.glob("r/*/argv-*")).read_text())
    assert argv[argv.index("--kernel") + 1] == str(tmp_path.resolve())


def test_an_interrupted_run_stops_the_whole_matrix(fake, monkeypatch):
    """A child whose run.json says interrupted (someone signalled it) stops the matrix: exit 3, .incomplete."""
    monkeypatch.setattr(MJ, "collect", lambda ctx, job, _c=MJ.collect: (_c(ctx, job)[0], True))
    rc, js, mdir = matrix(fake, "res", jobs="1")
    assert rc == 3 and mdir.name.endswith(".incomplete")
    assert sum(len(c["runs"]) for c in js["cells"]) == 1


def _qemus(path) -> list:
    return [p for p in psutil.process_iter(["cmdline"]) if str(path) in " ".join(p.info["cmdline"] or [])
            and "fake-qemu" in " ".join(p.info["cmdline"] or [])]


@pytest.mark.parametrize("ignore_term", [False, True])
def test_sigterm_stops_every_child_and_leaves_no_grandchild(fake, monkeypatch, ignore_term):
    monkeypatch.setenv("FAKE_SLEEP", "60")
    monkeypatch.setenv("FAKE_GRANDCHILD", "1")
    if ignore_term:  # a child that does not stop: SIGKILL after the grace, and its QEMU too
        monkeypatch.setenv("FAKE_IGNORE_TERM", "1")
        monkeypatch.setattr(MJ, "STOP_GRACE_S", 1.0)
    seen = []

    def term():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(_qemus(fake / "res")) < 2:
            time.sleep(0.1)
        seen.extend(_qemus(fake / "res"))
        os.kill(os.getpid(), signal.SIGTERM)
    t = threading.Thread(target=term)
    t.start()
    t0 = time.monotonic()
    rc, js, mdir = matrix(fake, "res", jobs="2")
    t.join()
    assert len(seen) == 2, "two cells should have been running"
    assert rc == 3 and mdir.name.endswith(".incomplete") and time.monotonic() - t0 < 30
    _, alive = psutil.wait_procs(seen, timeout=10)   # gone, or going: a killed fake QEMU is reaped by its parent
    assert alive == [] and _qemus(fake / "res") == []
    runs = [r for c in js["cells"] for r in c["runs"]]
    assert len(runs) == 2 and all(r["verdict"] == "infra-error" for r in runs)
    if not ignore_term:  # each child wrote its interrupted run.json
        assert all((mdir / "runs" / c["id"]).glob("*.incomplete/run.json") for c in js["cells"] if c["runs"])


def test_a_child_without_run_json_is_an_infra_run_and_the_matrix_goes_on(fake, monkeypatch):
    monkeypatch.setattr(MJ, "HARNESS_ARGV", [sys.executable, "-c", "import sys; sys.exit(3)"])
    rc, js, mdir = matrix(fake, "r", jobs="2")
    assert rc == 1 and not mdir.name.endswith(".incomplete")
    runs = [r for c in js["cells"] for r in c["runs"]]
    assert runs and all(r["verdict"] == "infra-error" and "exited with code 3" in r["titles"][0] for r in runs)
    assert all("output:" in r["titles"][0] for r in runs)


def test_a_run_past_its_deadline_is_stopped_and_recorded(fake, monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "60")
    monkeypatch.setattr(MJ, "DEADLINE_PAD_S", -899.0)  # s.yaml's total_s is 900: a 1 s deadline
    rc, js, mdir = matrix(fake, "r", jobs="2", shard="1/4")
    runs = [r for c in js["cells"] for r in c["runs"]]
    assert rc == 1 and runs and all("did not end within" in r["titles"][0] for r in runs)
    assert all(r["verdict"] == "infra-error" for r in runs)


def test_jobs_auto_is_bounded_by_cores_and_memory(monkeypatch):
    from harness.config import parse_scenario
    s = parse_scenario("l1: {memory_mb: 4096}\n")
    monkeypatch.setattr(MJ.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(MJ.psutil, "virtual_memory", lambda: argparse.Namespace(available=11 << 30))
    assert MJ.job_count("auto", [s]) == 2  # 11 GiB / (4 GiB + 1 GiB)
    monkeypatch.setattr(MJ.psutil, "virtual_memory", lambda: argparse.Namespace(available=64 << 30))
    assert MJ.job_count("auto", [s]) == 4
    monkeypatch.setattr(MJ.psutil, "virtual_memory", lambda: argparse.Namespace(available=1 << 30))
    assert MJ.job_count("auto", [s]) == 1
    assert MJ.job_count("3", [s]) == 3 and MJ.job_count(None, [s]) == 1


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_bad_jobs_is_an_input_error(bad):
    from harness.errors import InputError
    with pytest.raises(InputError, match="--jobs must be"):
        MJ.job_count(bad, [])
