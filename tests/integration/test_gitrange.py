"""The developer loop on a real commit range: a git repository made from Debian's unpacked linux-source-7.2 with
a clean commit, then (mixed order) a harmless comment in x86.c, the 7.2 mutant a (the faulted-in page released
clean) and a harmless comment in tdp_mmu.c (tests/integration/gitrange_repo.py).

`harness bisect --git` must name the mutant's commit (sha, subject, author); `harness check --git` must mark
exactly the commits from the mutant on.  Every commit is built in ONE object folder (kconfigs/minimal-l1.config,
the quickest config): the first build is full (~20-40 min here), every later one incremental, and a second
pass is all cache hits.  The scenario is HARNESS_GITRANGE_SCENARIO (default: micro, the micro-guest: seconds a
run); the repository is never written (its status is unchanged)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, requires_qemu
from tests.integration.gitrange_repo import make_repo

pytestmark = [
    pytest.mark.integration, pytest.mark.kernelbuild, requires_qemu,
    pytest.mark.skipif(os.environ.get("HARNESS_KERNEL_BUILD") != "1", reason="set HARNESS_KERNEL_BUILD=1"),
]
SCENARIO = os.environ.get("HARNESS_GITRANGE_SCENARIO", "micro")


def harness(*args: str, results: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args, "--results", str(results)], cwd=REPO,
                          capture_output=True, text=True, timeout=4 * 3600)


@pytest.fixture(scope="module")
def repo():
    r = make_repo()
    r["status"] = subprocess.run(["git", "-C", str(r["path"]), "status", "--porcelain"], capture_output=True,
                                 text=True, check=True).stdout
    yield r
    after = subprocess.run(["git", "-C", str(r["path"]), "status", "--porcelain"], capture_output=True, text=True,
                           check=True).stdout
    assert after == r["status"]            # the developer's tree: never written


def test_check_marks_exactly_the_commits_from_the_mutant_on(repo, results_dir):
    r = harness("check", "--git", str(repo["path"]), "range-base..range-done", SCENARIO, "--defconfig", "minimal",
                results=results_dir)
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]
    doc = json.loads((Path(r.stdout.split("results: ")[-1].strip()) / "check.json").read_text())
    assert [row["state"] for row in doc["rows"]] == ["good", "bad", "bad"]
    assert [row["sha"] for row in doc["rows"]] == repo["commits"]
    assert doc["rows"][1]["subject"].startswith("MUTANT: KVM: x86/mmu: release the faulted-in page clean")
    assert "BAD " in r.stdout and doc["status"] == "findings"


def test_bisect_names_the_mutant_commit(repo, results_dir):
    r = harness("bisect", "--git", str(repo["path"]), "--good", "range-base", "--bad", "range-done", SCENARIO,
                "--repeats", "1", "--defconfig", "minimal", results=results_dir)
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]
    mutant = repo["commits"][1]
    assert f"FIRST BAD COMMIT {mutant[:12]} MUTANT: KVM: x86/mmu: release the faulted-in page clean" in r.stdout
    bdir = Path(r.stdout.split("results: ")[-1].strip())
    doc = json.loads((bdir / "bisect.json").read_text())
    assert doc["first_bad"]["sha"] == mutant and doc["first_bad"]["author"] == "kvm-dirty-harness <harness@example.org>"
    assert f"# first bad commit: [{mutant}]" in (bdir / "git-bisect.log").read_text()
    # the finding of the mutant's run names the commit range up to it
    run = next(json.loads(p.read_text()) for p in bdir.glob("runs/**/run.json")
               if json.loads(p.read_text())["verdict"] == "finding")
    assert run["change"]["head"]["sha"] in (mutant, repo["commits"][2])
    assert all(f["change"]["repo"] == "linux-7.2-range" for f in run["findings"])


def test_tree_build_of_a_clone_with_an_uncommitted_mutant(repo, results_dir, tmp_path):
    """`run --tree CLONE --build` on a second clone of the repository at the first harmless commit with the
    mutant as an uncommitted diff: built in the repository's shared object folder (the range's steps built it:
    incremental).  The run uses that kernel (a finding), names the dirty diff, and reproduce.sh recreates the
    diff and .config by sha256."""
    from harness.kernel.build import make_vars
    dev = tmp_path / "dev"
    subprocess.run(["git", "clone", "-q", "--shared", "--no-checkout", str(repo["path"]), str(dev)], check=True)
    subprocess.run(["git", "-C", str(dev), "checkout", "-q", "--detach", repo["commits"][0]], check=True)
    mutant = REPO / "patches/mutants-7.2/a-finish-page-fault-clean"
    subprocess.run(["git", "-C", str(dev), "apply", *sorted(str(p) for p in mutant.glob("0001-*.patch"))],
                   check=True)
    r = harness("run", SCENARIO, "--tree", str(dev), "--build", "--defconfig", "minimal", results=results_dir)
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]
    rdir = Path(r.stdout.split("results: ")[-1].strip())
    run = json.loads((rdir / "run.json").read_text())
    ch = run["change"]
    assert ch["describe"].endswith("-dirty") and ch["head"]["sha"] == repo["commits"][0]
    assert "r == RET_PF_RETRY, false);" in ch["diff"] and run["kernel"]["source"] == "tree-build"
    assert all(f["change"]["diff_sha256"] == ch["diff_sha256"] for f in run["findings"])
    empty = tmp_path / "empty"
    empty.mkdir()
    rep = subprocess.run(["sh", str(rdir / "reproduce.sh"), "--check-only"], cwd=empty, capture_output=True,
                         text=True)
    assert rep.returncode == 0, rep.stderr
    (work,) = empty.iterdir()
    import hashlib
    assert hashlib.sha256((work / "change.diff").read_bytes()).hexdigest() == ch["diff_sha256"]
    assert hashlib.sha256((work / "tree.config").read_bytes()).hexdigest() == run["kernel"]["config_sha256"]
    # the reproducer's rebuild configures with that .config as it is (olddefconfig only): the same .config hash
    from harness.kernel.treebuild import _olddefconfig
    text = _olddefconfig(dev, tmp_path / "staging", work / "tree.config", make_vars())
    assert hashlib.sha256(text.encode()).hexdigest() == run["kernel"]["config_sha256"]
