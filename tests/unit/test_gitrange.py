"""harness bisect --git / check --git (harness.fleet.gitrange): range parsing, the per-commit verdicts, the
series bisect's policy driven over commits (recorded verdict sequences), and both commands end to end on a tiny
git repository with the kernel build and the run replaced by a recorded verdict per commit."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.gitcmd import git
from harness.errors import InfraError, InputError
from harness.fleet import gitrange
from harness.fleet.bisect import SKIP, drive


@pytest.mark.parametrize("text,want", [
    ("v7.2..HEAD", ("v7.2", "HEAD")), ("abc123..", ("abc123", "HEAD")), ("origin/main..topic", ("origin/main", "topic")),
    ("HEAD~3..HEAD", ("HEAD~3", "HEAD")),
])
def test_parse_range(text, want):
    assert gitrange.parse_range(text) == want


@pytest.mark.parametrize("text", ["v7.2", "a...b", "..HEAD", "a..b..c", "a b..c"])
def test_parse_range_rejects(text):
    with pytest.raises(InputError):
        gitrange.parse_range(text)


@pytest.mark.parametrize("err,skip", [
    (InfraError("make bzImage modules failed (exit 2): mm/x.c:3:1: error: expected ';'"), True),
    (InputError("config fragment request(s) not met: CONFIG_KVM"), True),
    (InfraError("L1 did not boot in 300 s"), False),
    (InfraError("make modules_install failed: no space"), False),
])
def test_skipped_verdict(err, skip):
    assert gitrange.skipped_verdict(err) is skip


COMMITS = [{"sha": c * 40, "subject": f"s{c}", "author": "A <a@x>"} for c in "abcd"]


@pytest.mark.parametrize("verdicts,repeats,states,status", [
    ({1: ["pass"], 2: ["finding"], 3: ["finding"], 4: ["finding"]}, 1, ["good", "bad", "bad", "bad"], "findings"),
    ({1: ["pass"], 2: ["pass"], 3: ["pass"], 4: ["pass"]}, 1, ["good"] * 4, "clean"),
    ({1: ["pass", "pass"], 2: [SKIP], 3: ["infra-error", "infra-error"], 4: ["pass", "pass"]}, 2,
     ["good", "skip", "infra", "good"], "incomplete"),
    ({1: ["pass"], 2: ["infra-error", "pass"]}, 1, ["good", "good", "more", "more"], "incomplete"),
])
def test_check_rows_and_status(verdicts, repeats, states, status):
    rows = gitrange.check_rows(COMMITS, verdicts, repeats)
    assert [r["state"] for r in rows] == states and [r["index"] for r in rows] == [1, 2, 3, 4]
    assert gitrange.check_status(rows) == status


def _script(per_index: dict[int, list[str]]):
    """run_one(i) answering from recorded verdict sequences (each call pops the next one of that step)."""
    seq = {i: list(v) for i, v in per_index.items()}
    calls = []

    def run_one(i):
        calls.append(i)
        return {"verdict": seq[i].pop(0) if seq[i] else "pass"}
    return run_one, calls


@pytest.mark.parametrize("n,per_index,repeats,status,first_bad,candidates", [
    # 3 commits, the mutant is commit 2: good(0) pass, tip(3) finding, mid(2) finding, 1 pass
    (3, {0: ["pass"], 1: ["pass"], 2: ["finding"], 3: ["finding"]}, 1, "first-bad", 2, [2]),
    # flaky: commit 2 passes once then finds; repeats 2 keep it from being called good
    (3, {0: ["pass", "pass"], 1: ["pass", "pass"], 2: ["pass", "finding"], 3: ["finding"]}, 2, "first-bad", 2, [2]),
    # commit 2 does not build: skipped, not retried, the answer is the range 2..3 (as git bisect skip says)
    (3, {0: ["pass"], 1: ["pass"], 2: [SKIP], 3: ["finding"]}, 1, "infra", None, [2, 3]),
    # an infrastructure failure is retried once and never blamed
    (3, {0: ["pass"], 1: ["infra-error", "pass"], 2: ["finding"], 3: ["finding"]}, 1, "first-bad", 2, [2]),
    (3, {0: ["finding"]}, 1, "base-bad", None, []),
    (3, {0: ["pass"], 3: ["pass"]}, 1, "clean", None, []),
])
def test_bisect_policy_over_commits(n, per_index, repeats, status, first_bad, candidates):
    run_one, calls = _script(per_index)
    _runs, outcome = drive(n, repeats, run_one)
    assert outcome["status"] == status and outcome["first_bad"] == first_bad
    assert outcome["candidates"] == candidates
    if status == "infra" and SKIP in per_index.get(2, []):
        assert calls.count(2) == 1                  # an unbuildable commit is tried once


# ---------------------------------------------------------------------------------------------- end to end
def _git(repo: Path, *args: str) -> str:
    return git(repo, *args, name="Dev", email="dev@x")


@pytest.fixture
def mixed_repo(tmp_path):
    """clean, harmless, MUTANT, harmless, unbuildable-free: the integration test's shape, in miniature."""
    r = tmp_path / "linux"
    r.mkdir()
    _git(r, "init", "-q")
    (r / "mmu.c").write_text("ok\n")
    _git(r, "add", "-A")
    _git(r, "commit", "-q", "-m", "clean")
    _git(r, "tag", "base")
    for subject, text in (("harmless 1", "ok\n/* 1 */\n"), ("MUTANT: release clean", "MUTANT\n/* 1 */\n"),
                          ("harmless 2", "MUTANT\n/* 1 */\n/* 2 */\n")):
        (r / "mmu.c").write_text(text)
        _git(r, "commit", "-q", "-am", subject)
    (r / "mmu.c").write_text("dirty, uncommitted\n")      # the developer's working tree: never touched
    return r


def _fake_runs(monkeypatch, unbuildable: str | None = None):
    """run_commit judged by the commit's content (a finding when it carries the mutant)."""
    seen = []

    def fake(rng, sha, scen, overrides, root, scen_ref=None):
        seen.append(sha)
        text = subprocess.run(["git", "-C", str(rng.repo), "show", f"{sha}:mmu.c"], check=False, capture_output=True,
                              text=True).stdout
        subject = _git(rng.repo, "log", "-1", "--format=%s", sha)
        if subject == unbuildable:
            return {"verdict": SKIP, "error": "make bzImage modules failed (exit 2): x.c:1: error: y", "run_dir": None}
        return {"verdict": "finding" if "MUTANT" in text else "pass", "run_dir": None, "first_finding_s": 9.5}
    monkeypatch.setattr(gitrange, "run_commit", fake)
    return seen


def test_git_bisect_names_the_mutant_commit(mixed_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    _fake_runs(monkeypatch)
    scen = Path(__file__).resolve().parents[2] / "scenarios/default.yaml"
    doc = gitrange.git_bisect(str(mixed_repo), "base", None, scen, [], 1, None, tmp_path / "results")
    assert doc["status"] == "first-bad" and doc["first_bad"]["subject"] == "MUTANT: release clean"
    assert doc["first_bad"]["author"] == "Dev <dev@x>" and doc["first_bad"]["index"] == 2
    text = (Path(doc["path"]) / "summary.txt").read_text()
    assert text.startswith("bisect: FIRST BAD COMMIT ") and "MUTANT: release clean (Dev <dev@x>)" in text
    log = (Path(doc["path"]) / "git-bisect.log").read_text()
    assert "first bad commit" in log and doc["first_bad"]["sha"] in log       # git's own bisect agrees
    assert (mixed_repo / "mmu.c").read_text() == "dirty, uncommitted\n"       # their tree untouched
    assert _git(mixed_repo, "status", "--porcelain") == "M mmu.c"


def test_git_bisect_skips_an_unbuildable_commit(mixed_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    _fake_runs(monkeypatch, unbuildable="MUTANT: release clean")
    scen = Path(__file__).resolve().parents[2] / "scenarios/default.yaml"
    doc = gitrange.git_bisect(str(mixed_repo), "base", "HEAD", scen, [], 1, None, tmp_path / "results")
    assert doc["status"] == "infra" and [c["subject"] for c in doc["skipped"]] == ["MUTANT: release clean"]
    assert [c["subject"] for c in doc["candidates"]] == ["MUTANT: release clean", "harmless 2"]
    assert "skipped (does not build)" in gitrange.bisect_summary(doc)


def test_git_check_marks_the_commits_from_the_mutant_on(mixed_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    seen = _fake_runs(monkeypatch)
    scen = Path(__file__).resolve().parents[2] / "scenarios/default.yaml"
    doc = gitrange.git_check(str(mixed_repo), "base..HEAD", scen, [], 1, None, tmp_path / "results")
    assert [(r["subject"], r["state"]) for r in doc["rows"]] == [
        ("harmless 1", "good"), ("MUTANT: release clean", "bad"), ("harmless 2", "bad")]
    assert doc["status"] == "findings" and len(seen) == 3
    assert "BAD     2" in gitrange.check_summary(doc)


def test_git_bisect_bad_input(mixed_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    scen = Path(__file__).resolve().parents[2] / "scenarios/default.yaml"
    with pytest.raises(InputError, match="no commit 'nope'"):
        gitrange.git_bisect(str(mixed_repo), "nope", None, scen, [], 1, None, tmp_path)
    with pytest.raises(InputError, match="not an ancestor"):
        gitrange.git_bisect(str(mixed_repo), "HEAD", "base", scen, [], 1, None, tmp_path)
    with pytest.raises(InputError, match="not a git working tree"):
        gitrange.git_bisect(str(tmp_path), "a", None, scen, [], 1, None, tmp_path)


def test_range_steps_and_tree_builds_share_one_copy_and_object_folder(mixed_repo, tmp_path, monkeypatch):
    """A step syncs its commit from the range's clone into the repository's copy (only what differs) and builds
    in the repository's object folder, the one `--tree --build` of any clone of it uses; the .config comes from
    the developer's repository, not the clone."""
    from harness.kernel import treebuild
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    (mixed_repo / ".gitignore").write_text(".config\n")
    (mixed_repo / ".config").write_text("CONFIG_KVM=m\n")
    builds = []

    def fake_build(src, objdir, start, desc, frags, kdigest, change, key_prefix, log):
        builds.append({"src": src, "objdir": objdir, "start": start, "prefix": key_prefix,
                       "mmu": (src / "mmu.c").read_text(), "describe": change["describe"]})
        return tmp_path / f"art{len(builds)}"
    monkeypatch.setattr(treebuild, "build_source", fake_build)
    status = _git(mixed_repo, "status", "--porcelain")
    rng = gitrange.Range(mixed_repo, None, "base")
    shas = _git(mixed_repo, "rev-list", "--reverse", "base..HEAD").split()
    rng.artifact(shas[0])
    rng.artifact(shas[1])
    key = treebuild.repo_key(mixed_repo)
    cache = (tmp_path / "cache").resolve()
    assert [(b["src"], b["objdir"], b["prefix"]) for b in builds] == [(cache / "src" / key, cache / "obj" / key, key)] * 2
    assert [b["mmu"] for b in builds] == ["ok\n/* 1 */\n", "MUTANT\n/* 1 */\n"]
    assert all(b["start"] == mixed_repo / ".config" for b in builds)
    assert rng.clone != cache / "src" / key                         # the clone stays the range's own
    other = tmp_path / "other-clone"                                # a second clone of the repository
    _git(tmp_path, "clone", "-q", str(mixed_repo), str(other))
    (other / "mmu.c").write_text("dirty in the other clone\n")
    (other / ".config").write_text("CONFIG_KVM=m\n")
    treebuild.build_tree(other, {"describe": "x-dirty"}, None, lambda m: None)
    assert (builds[-1]["src"], builds[-1]["objdir"], builds[-1]["mmu"]) == (
        cache / "src" / key, cache / "obj" / key, "dirty in the other clone\n")
    assert builds[-1]["start"] == other / ".config"
    assert _git(mixed_repo, "status", "--porcelain") == status       # the developer's tree: never written
