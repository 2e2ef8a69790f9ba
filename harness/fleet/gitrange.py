"""A developer's commit range: `harness bisect --git PATH --good REF --bad REF [SCENARIO]` and
`harness check --git PATH BASE..HEAD [SCENARIO]` (ktest.pl's patchcheck).

Their repository is never written: the commits are checked out in a clone under the cache
(`git clone --shared`: it borrows the repository's objects, so any commit of it is there without a fetch),
cache/src/git-<name>-<hash(path)>/.  Each step is synced from that clone into the repository's build copy and
built out of tree in its ONE object folder, cache/obj/<repo_key>/ (harness.kernel.treebuild), which every step,
`--tree PATH --build` and the reproducer share: only files whose content differs are rewritten, so make
rebuilds what the commit changed.

Each step is judged with the series bisect's flaky-aware policy (harness.fleet.bisect: one finding makes a
commit bad, `repeats` clean runs make it good, an infrastructure failure is retried once, the confidence from
the measured reproduction rate); a commit that does not build (a compiler error, a .config request its Kconfig
cannot meet) is skipped as `git bisect skip` does and reported, never blamed.  The bisection is mirrored into
the clone's own `git bisect` (--no-checkout), so `git bisect log` there shows the same decisions.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.errors import (
    EXIT_FINDING,
    EXIT_INFRA,
    EXIT_PASS,
    HarnessError,
    InfraError,
    InputError,
)
from harness.fleet.bisect import (
    BAD,
    INFRA,
    MORE,
    SKIP,
    STATUS_EXIT,
    confidence_lines,
    drive,
    step_state,
)
from harness.kernel import change as change_mod
from harness.paths import cache_dir
from harness.report.results import RunDir, atomic_write, write_json

_REF = re.compile(r"^[^\s~^:?*\[\\]+[~^0-9]*$")


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} harness git: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------
# pure
# ----------------------------------------------------------------------------------------------------------
def parse_range(text: str) -> tuple[str, str]:
    """'BASE..HEAD' -> (BASE, HEAD); 'BASE..' -> (BASE, 'HEAD').  A symmetric range (...), a single ref or an
    empty base is an input error: the commits after BASE up to HEAD, oldest first, are what is checked."""
    if "..." in text or text.count("..") != 1:
        raise InputError(f"range {text!r}: expected BASE..HEAD (the commits after BASE up to HEAD)")
    base, head = text.split("..")
    head = head or "HEAD"
    for ref in (base, head):
        if not ref or not _REF.match(ref):
            raise InputError(f"range {text!r}: {ref!r} is not a git ref")
    return base, head


def skipped_verdict(err: HarnessError) -> bool:
    """Does this failure belong to the commit (it does not build: skip it) rather than the machine?"""
    msg = str(err)
    return isinstance(err, InputError) or (msg.startswith("make ") and " failed (exit " in msg)


def check_rows(commits: list[dict], verdicts: dict[int, list[str]], repeats: int) -> list[dict]:
    """One row per commit (index 1..n): its state (good | bad | infra | skip | more) from its runs."""
    rows = []
    for i, c in enumerate(commits, 1):
        vs = verdicts.get(i, [])
        state = "skip" if SKIP in vs else step_state(vs, repeats) if vs else MORE
        rows.append({"index": i, "sha": c["sha"], "subject": c["subject"], "author": c["author"],
                     "state": state, "verdicts": vs})
    return rows


def check_status(rows: list[dict]) -> str:
    """findings when any commit is bad; infra when some could not be judged; else clean."""
    states = {r["state"] for r in rows}
    if BAD in states:
        return "findings"
    if states & {INFRA, "skip", MORE}:
        return "incomplete"
    return "clean"


CHECK_EXIT = {"findings": EXIT_FINDING, "clean": EXIT_PASS, "incomplete": EXIT_INFRA}


# ----------------------------------------------------------------------------------------------------------
# the clone and one step's kernel
# ----------------------------------------------------------------------------------------------------------
def _git(repo: Path, *args: str, check: bool = True) -> str:
    r = subprocess.run(["git", "-C", str(repo), *args], check=False, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise InputError(f"git {' '.join(args[:2])} in {repo}: {(r.stderr or r.stdout).strip()[-300:]}")
    return r.stdout.strip()


class Range:
    """The developer's repository, its clone in the cache and the object folder every step shares."""

    def __init__(self, repo: Path, defconfig: str | None, base: str):
        from harness.kernel.tree import slug
        self.repo = Path(repo).expanduser().resolve()
        if not change_mod.is_git_tree(self.repo):
            raise InputError(f"--git {self.repo}: not a git working tree")
        self.defconfig, self.base = defconfig, base
        name = "git-" + slug(self.repo).removeprefix("tree-")
        self.clone, self.name = cache_dir() / "src" / name, name      # borrows this repository's objects
        self.built: dict[str, Path | str] = {}          # sha -> artifact folder, or why it does not build

    def sha(self, ref: str) -> str:
        out = _git(self.repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
        if not out:
            raise InputError(f"--git {self.repo}: no commit {ref!r}")
        return out

    def ensure_clone(self) -> None:
        if not (self.clone / ".git").is_dir():
            self.clone.parent.mkdir(parents=True, exist_ok=True)
            _git(self.clone.parent, "clone", "-q", "--shared", "--no-checkout", str(self.repo), self.clone.name)
            _git(self.clone, "config", "feature.manyFiles", "true")

    def change_of(self, sha: str) -> dict:
        """The change under test at one commit of the range: named from the developer's repository (read-only:
        its tags and branches, not the clone's copies), the commits since the range's base."""
        return {"kind": "tree", "repo": self.repo.name, "path": str(self.repo), "git": True,
                "describe": _git(self.repo, "describe", "--always", sha, check=False) or sha[:12],
                "head": change_mod.commit_info(self.repo, sha), "base": self.base,
                "commits": change_mod.commits_between(self.repo, self.sha(self.base), sha),
                "diff_sha256": None, "diff": None}

    def artifact(self, sha: str) -> Path:
        """Build (or take from the cache) the kernel of one commit; InputError/InfraError as the build says."""
        from harness.kernel.treebuild import build_tree
        built = self.built.get(sha)
        if isinstance(built, Path):
            return built
        self.ensure_clone()
        _git(self.clone, "-c", "advice.detachedHead=false", "checkout", "-q", "-f", "--detach", sha)
        # built from the repository's shared copy (synced by content), in the object folder `--tree --build`
        # and the reproducer use too: one object folder per repository, never a second full build
        art = build_tree(self.clone, self.change_of(sha), self.defconfig, _log, config_tree=self.repo)
        self.built[sha] = art
        return art


def run_commit(rng: Range, sha: str, scen_path: Path, overrides: list[str], root: Path,
               scen_ref: str | None = None) -> dict:
    """One judged run of one commit: {verdict: pass|finding|infra-error|skip, ...}.  A commit that does not
    build is `skip` (once: it would not build the second time either); any other failure is infra."""
    from harness.config import load_scenario
    from harness.kernel.prebuilt import load_kernel_dir
    from harness.scenario.run import execute
    t0 = time.monotonic()
    try:
        if isinstance(rng.built.get(sha), str):
            return {"verdict": SKIP, "error": rng.built[sha], "run_dir": None}
        art = rng.artifact(sha)
    except HarnessError as e:
        if skipped_verdict(e):
            rng.built[sha] = str(e)
            _log(f"{sha[:12]}: does not build, skipped: {e}")
            return {"verdict": SKIP, "error": str(e), "run_dir": None}
        _log(f"{sha[:12]}: infrastructure failure while building: {e}")
        return {"verdict": "infra-error", "error": str(e), "run_dir": None}
    try:
        s = load_scenario(scen_path, overrides)
        meta = load_kernel_dir(art) | {"change": rng.change_of(sha)}   # this range's base, even on a cache hit
        run = execute(s, meta, root / sha[:12], scen_path.read_text(), ["--kernel", str(art)], overrides,
                      extra={"scenario_ref": scen_ref or str(scen_path)})   # a finding's next commands name it
    except InputError:
        raise
    except InfraError as e:
        return {"verdict": "infra-error", "error": str(e), "run_dir": None, "total_s": round(time.monotonic() - t0)}
    if run.get("interrupted"):
        raise KeyboardInterrupt("run interrupted")
    return {"verdict": run["verdict"], "run_dir": run.get("path"),
            "first_finding_s": (run.get("timings") or {}).get("first_finding_s"),
            "total_s": (run.get("timings") or {}).get("total_s"),
            "titles": [f.get("title") for f in run.get("findings") or []][:3]}


# ----------------------------------------------------------------------------------------------------------
# bisect --git
# ----------------------------------------------------------------------------------------------------------
def _commit_row(c: dict | None, i: int | None = None) -> dict | None:
    return None if c is None else {"index": i, "sha": c["sha"], "subject": c["subject"], "author": c["author"]}


def _steps(runs: list[dict], commits: list[dict], repeats: int) -> list[dict]:
    order = list(dict.fromkeys(r["upto"] for r in runs))
    out = []
    for i in order:
        rs = [{k: v for k, v in r.items() if k != "upto"} for r in runs if r["upto"] == i]
        vs = [r["verdict"] for r in rs]
        out.append({"index": i, "commit": _commit_row(commits[i - 1], i) if i else None,
                    "state": "skip" if SKIP in vs else step_state(vs, repeats), "runs": rs})
    return out


def bisect_doc(ctx: dict, runs: list[dict], outcome: dict | None, t0: float) -> dict:
    commits, repeats = ctx["commits"], ctx["repeats"]
    o = outcome or {}
    first = o.get("first_bad")
    steps = _steps(runs, commits, repeats)
    return {"schema": 1, "kind": "bisect-git", "repo": ctx["repo"], "path": ctx["path"], "good": ctx["good"],
            "bad": ctx["bad"], "scenario": ctx["scenario"], "overrides": ctx["overrides"], "repeats": repeats,
            "commits": [_commit_row(c, i) for i, c in enumerate(commits, 1)], "steps": steps,
            "status": o.get("status", "running"), "first_bad": _commit_row(commits[first - 1], first) if first else None,
            "candidates": [_commit_row(commits[c - 1], c) for c in o.get("candidates", []) if c],
            "skipped": [s["commit"] for s in steps if s["state"] == "skip"],
            "reproduction_rate": o.get("reproduction_rate"),
            "confidence": {k: o[k] for k in ("confidence", "confidence_lower_bound", "miss_chance",
                                             "catching_runs", "runs_at_bad_steps", "why") if k in o},
            "runs_total": len(runs), "elapsed_s": round(time.monotonic() - t0, 1)}


def _runs_text(runs: list[dict]) -> str:
    return " ".join(r["verdict"] + (f"@{r['first_finding_s']:.1f}s" if r.get("first_finding_s") else "")
                    for r in runs)


def bisect_summary(doc: dict) -> str:
    fb, st = doc.get("first_bad"), doc["status"]
    head = {"first-bad": f"FIRST BAD COMMIT {fb['sha'][:12]} {fb['subject']} ({fb['author']})" if fb else "",
            "clean": f"no finding at {doc['bad'][:12]}: the whole range ({len(doc['commits'])} commits) is good",
            "base-bad": f"the good commit {doc['good'][:12]} already has the finding: nothing to bisect",
            "infra": "inconclusive (unbuildable commits or infrastructure failures); the first bad commit is one "
                     "of: " + ", ".join(f"{c['sha'][:12]} {c['subject']}" for c in doc.get("candidates", []))
            }.get(st, st)
    L = [f"bisect: {head}",
         (f"repo {doc['repo']}  good {doc['good'][:12]}  bad {doc['bad'][:12]}  {len(doc['commits'])} commits  "
         f"scenario {doc['scenario']}  repeats {doc['repeats']}"),
         f"overrides {' '.join(doc['overrides']) or '-'}"]
    for s in doc["steps"]:
        c = s["commit"]
        what = f"{c['sha'][:12]} {c['subject']}" if c else f"{doc['good'][:12]} (the good commit)"
        L.append(f"  {s['index']:>3} {s['state']:<5} {what}   runs: {_runs_text(s['runs'])}")
    for c in doc.get("skipped") or []:
        L.append(f"skipped (does not build): {c['sha'][:12]} {c['subject']}")
    return "\n".join(L + confidence_lines(doc)) + "\n"


def _mirror_git_bisect(rng: Range, doc: dict) -> str:
    """Replay the decisions into the clone's `git bisect` (--no-checkout: no file is touched); its log."""
    marks = {"good": "good", "bad": "bad", "skip": "skip"}
    try:
        rng.ensure_clone()
        _git(rng.clone, "bisect", "reset", "HEAD", check=False)
        _git(rng.clone, "bisect", "start", "--no-checkout", doc["bad"], doc["good"])
        for s in doc["steps"]:
            if s["commit"] and s["state"] in marks:
                _git(rng.clone, "bisect", marks[s["state"]], s["commit"]["sha"], check=False)
        log = _git(rng.clone, "bisect", "log", check=False)
        _git(rng.clone, "bisect", "reset", "HEAD", check=False)
        return log + "\n"
    except HarnessError as e:
        return f"# git bisect could not be mirrored: {e}\n"


def _prepare(repo: str, defconfig: str | None, base: str, scen_path: Path, overrides: list[str],
             repeats: int) -> tuple[Range, list[str]]:
    from harness.config import load_scenario
    if repeats < 1:
        raise InputError(f"--repeats {repeats}: must be at least 1")
    if not any(o.split("=", 1)[0] == "stop_on_first_finding" for o in overrides):
        overrides = overrides + ["stop_on_first_finding=true"]
    load_scenario(scen_path, overrides)              # bad input fails here, before anything is built
    return Range(Path(repo), defconfig, base), overrides


def git_bisect(repo: str, good: str, bad: str | None, scen_path: Path, overrides: list[str], repeats: int,
               defconfig: str | None, root: Path, scen_ref: str | None = None) -> dict:
    rng, overrides = _prepare(repo, defconfig, good, scen_path, overrides, repeats)
    good_sha, bad_sha = rng.sha(good), rng.sha(bad or "HEAD")
    if subprocess.run(["git", "-C", str(rng.repo), "merge-base", "--is-ancestor", good_sha, bad_sha], check=False).returncode:
        raise InputError(f"--good {good} is not an ancestor of --bad {bad or 'HEAD'}")
    commits = change_mod.commits_between(rng.repo, good_sha, bad_sha)
    if not commits:
        raise InputError(f"--good {good} --bad {bad or 'HEAD'}: no commits between them")
    shas = [good_sha] + [c["sha"] for c in commits]
    ctx = {"repo": rng.repo.name, "path": str(rng.repo), "good": good_sha, "bad": bad_sha,
           "scenario": str(scen_path), "overrides": overrides, "repeats": repeats, "commits": commits}
    rd = RunDir(Path(root), f"bisect-git-{time.strftime('%Y%m%d-%H%M%S')}-{rng.repo.name}")
    t0 = time.monotonic()
    runs: list[dict[str, Any]] = []
    _log(f"{len(commits)} commit(s) {good_sha[:12]}..{bad_sha[:12]}, repeats {repeats}; results in {rd.path}")

    def save(_runs, outcome):
        doc = bisect_doc(ctx, runs, outcome, t0)
        write_json(rd.path / "bisect.json", doc)
        atomic_write(rd.path / "summary.txt", bisect_summary(doc))

    def run_one(i: int) -> dict:
        _log(f"step {i}/{len(commits)}: {shas[i][:12]}")
        rec = run_commit(rng, shas[i], scen_path, overrides, rd.path / "runs", scen_ref)
        runs.append(dict(rec, upto=i))
        _log(f"step {i}: {shas[i][:12]} {rec['verdict']}")
        return rec

    try:
        _, outcome = drive(len(commits), repeats, run_one, save)
    except BaseException as e:
        doc = bisect_doc(ctx, runs, None, t0) | {"status": "interrupted" if isinstance(e, KeyboardInterrupt)
                                                 else "error", "error": str(e)}
        write_json(rd.path / "bisect.json", doc)
        atomic_write(rd.path / "summary.txt", bisect_summary(doc))
        raise
    doc = bisect_doc(ctx, runs, outcome, t0)
    atomic_write(rd.path / "git-bisect.log", _mirror_git_bisect(rng, doc))
    return dict(doc, path=str(rd.finish()))


# ----------------------------------------------------------------------------------------------------------
# check --git
# ----------------------------------------------------------------------------------------------------------
def check_summary(doc: dict) -> str:
    marks = {"good": "ok  ", "bad": "BAD ", "infra": "INFRA", "skip": "SKIP", "more": "... "}
    head = {"findings": f"{sum(r['state'] == 'bad' for r in doc['rows'])} of {len(doc['rows'])} commits give a "
                        f"finding; first: " + next((f"{r['sha'][:12]} {r['subject']}" for r in doc["rows"]
                                                    if r["state"] == "bad"), ""),
            "clean": f"all {len(doc['rows'])} commits are good",
            "incomplete": "incomplete: some commits could not be judged (see SKIP/INFRA)"}.get(doc["status"],
                                                                                             doc["status"])
    L = [f"check: {head}", (f"repo {doc['repo']}  range {doc['range']}  scenario {doc['scenario']}  "
                           f"repeats {doc['repeats']}")]
    for r in doc["rows"]:
        L.append(f"  {marks.get(r['state'], r['state']):<5} {r['index']:>3} {r['sha'][:12]} {r['subject']} "
                 f"({r['author']})  runs: {' '.join(r['verdicts']) or '-'}")
    L.append(f"runs {doc['runs_total']}, elapsed {doc['elapsed_s']:.0f} s")
    return "\n".join(L) + "\n"


def git_check(repo: str, range_text: str, scen_path: Path, overrides: list[str], repeats: int,
              defconfig: str | None, root: Path, scen_ref: str | None = None) -> dict:
    base, head = parse_range(range_text)
    rng, overrides = _prepare(repo, defconfig, base, scen_path, overrides, repeats)
    commits = change_mod.commits_between(rng.repo, rng.sha(base), rng.sha(head))
    if not commits:
        raise InputError(f"range {range_text}: no commits")
    rd = RunDir(Path(root), f"check-git-{time.strftime('%Y%m%d-%H%M%S')}-{rng.repo.name}")
    t0 = time.monotonic()
    verdicts: dict[int, list[str]] = {}
    runs: list[dict[str, Any]] = []

    def doc() -> dict:
        rows = check_rows(commits, verdicts, repeats)
        return {"schema": 1, "kind": "check-git", "repo": rng.repo.name, "path": str(rng.repo),
                "range": range_text, "scenario": str(scen_path), "overrides": overrides, "repeats": repeats,
                "rows": rows, "runs": runs, "status": check_status(rows), "runs_total": len(runs),
                "elapsed_s": round(time.monotonic() - t0, 1)}

    for i, c in enumerate(commits, 1):
        vs = verdicts.setdefault(i, [])
        while not vs or (vs[-1] != SKIP and step_state(vs, repeats) == MORE):
            _log(f"commit {i}/{len(commits)}: {c['sha'][:12]} {c['subject']}")
            rec = run_commit(rng, c["sha"], scen_path, overrides, rd.path / "runs", scen_ref)
            vs.append(rec["verdict"])
            runs.append(dict(rec, index=i, sha=c["sha"]))
            d = doc()
            write_json(rd.path / "check.json", d)
            atomic_write(rd.path / "summary.txt", check_summary(d))
    return dict(doc(), path=str(rd.finish()))


def cli_git(args) -> int:
    from harness.paths import results_root
    scen = Path(args.scenario)
    overrides = list(args.set) + ([f"seed={args.seed}"] if args.seed is not None else [])
    root = Path(args.results) if args.results else results_root()
    ref = getattr(args, "scenario_ref", None)        # the scenario as the user named it (harness.catalog)
    if args.cmd == "check":
        d = git_check(args.git, args.range, scen, overrides, args.repeats, args.defconfig, root, ref)
        sys.stdout.write(check_summary(d))
        print(f"check: {d['status']}  results: {d['path']}")
        return CHECK_EXIT.get(d["status"], EXIT_INFRA)
    d = git_bisect(args.git, args.good, args.bad, scen, overrides, args.repeats, args.defconfig, root, ref)
    sys.stdout.write(bisect_summary(d))
    print(f"bisect: {d['status']}  results: {d['path']}")
    return STATUS_EXIT.get(d["status"], EXIT_INFRA)
