"""The change under test, named: a developer's git tree (HEAD, the commits since a base, the uncommitted diff)
or a patch series.  Every run.json, finding and reproducer names it the same way.

Reading a tree never writes to it: `git diff` and `git log` only, with optional locks off (no index refresh
written back), and untracked files diffed against /dev/null instead of being `git add`ed.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from harness.errors import InputError

# unit and record separators: subjects may hold any printable character
_LOG_FORMAT = "%H%x1f%s%x1f%an <%ae>%x1e"
DIFF_EMBED_MAX = 8 << 20       # an uncommitted diff bigger than this is named by hash only (run.json stays small)


def _git(path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    r = subprocess.run(["git", "-C", str(path), *args], check=False, capture_output=True, env=env)
    if check and r.returncode != 0:
        raise InputError(f"git {' '.join(args[:2])} in {path}: "
                         f"{r.stderr.decode(errors='replace').strip()[-300:] or 'failed'}")
    return r


# ----------------------------------------------------------------------------------------------------------
# pure
# ----------------------------------------------------------------------------------------------------------
def parse_log(text: str) -> list[dict]:
    """`git log --format=_LOG_FORMAT` output -> [{sha, subject, author}] in the order given."""
    out = []
    for rec in text.split("\x1e"):
        parts = rec.strip("\n").split("\x1f")
        if len(parts) == 3 and parts[0].strip():
            out.append({"sha": parts[0].strip(), "subject": parts[1], "author": parts[2]})
    return out


def change_label(change: dict | None, patches: list[dict] | None = None) -> str:
    """One line naming the change under test, for findings and summaries: every patch of a series (not only
    the last), or the tree's describe + HEAD subject + the commits since the base + the uncommitted diff."""
    patches = patches or []
    if change and change.get("kind") == "tree":
        head = change.get("head") or {}
        s = f"{change.get('repo')} {change.get('describe') or str(head.get('sha', ''))[:12]}"
        if head.get("subject"):
            s += f" ({head['subject']})"
        commits = change.get("commits") or []
        if len(commits) > 1:
            s += f"; {len(commits)} commits since {change.get('base')}: " + "; ".join(
                f"{c['sha'][:12]} {c['subject']}" for c in commits)
        elif commits:
            s += f"; 1 commit since {change.get('base')}"
        if change.get("diff_sha256"):
            s += f"; + uncommitted diff sha256 {change['diff_sha256'][:16]} ({change.get('diff_files', 0)} file(s))"
        return s
    if not patches:
        return "none (unpatched kernel)"
    if len(patches) == 1:
        return str(patches[0].get("subject"))
    return f"{len(patches)} patches: " + "; ".join(f"{i}/{len(patches)} {p.get('subject')}"
                                                   for i, p in enumerate(patches, 1))


def diff_files(diff: bytes) -> int:
    return sum(1 for ln in diff.splitlines() if ln.startswith(b"diff --git "))


# ----------------------------------------------------------------------------------------------------------
# reading a tree
# ----------------------------------------------------------------------------------------------------------
def is_git_tree(path: Path) -> bool:
    return _git(path, "rev-parse", "--is-inside-work-tree", check=False).returncode == 0


def uncommitted_diff(path: Path) -> tuple[bytes, bool]:
    """Tracked changes against HEAD plus every untracked, not ignored file (as a new-file diff): exactly what
    a build of the working tree sees beyond HEAD.  `git apply` recreates it on a checkout of HEAD.  Second:
    whether tracked files differ (what `git describe --dirty` calls dirty)."""
    out = _git(path, "diff", "--binary", "--no-color", "--no-ext-diff", "HEAD", "--").stdout
    dirty = bool(out)
    untracked = _git(path, "ls-files", "-z", "--others", "--exclude-standard").stdout.split(b"\0")
    for name in sorted(n for n in untracked if n):
        r = _git(path, "diff", "--binary", "--no-color", "--no-index", "--", "/dev/null", name.decode(),
                 check=False)
        if r.returncode not in (0, 1):
            raise InputError(f"cannot diff the untracked file {name.decode()} in {path}")
        out += r.stdout
    return out, dirty


def commits_between(path: Path, base: str, head: str = "HEAD") -> list[dict]:
    """Commits base..head, oldest first (first-parent: a developer's branch)."""
    for ref in (base, head):
        if _git(path, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False).returncode != 0:
            raise InputError(f"{path}: no commit {ref!r} (git rev-parse {ref})")
    r = _git(path, "log", "--reverse", "--first-parent", f"--format={_LOG_FORMAT}", f"{base}..{head}")
    return parse_log(r.stdout.decode(errors="replace"))


def commit_info(path: Path, ref: str) -> dict:
    r = _git(path, "log", "-1", f"--format={_LOG_FORMAT}", ref, "--")
    found = parse_log(r.stdout.decode(errors="replace"))
    if not found:
        raise InputError(f"{path}: no commit {ref!r}")
    return found[0]


def tree_change(path: Path, base: str | None = None) -> dict:
    """The identity of a git working tree: repo (basename), absolute path, `git describe --dirty --always`,
    HEAD {sha, subject, author}, the commits base..HEAD when a base is given, and the uncommitted diff (its
    sha256, its file count, and the diff itself unless it is huge).  Read-only: not even the index is written."""
    path = Path(path).resolve()
    if not is_git_tree(path):
        return {"kind": "tree", "repo": path.name, "path": str(path), "git": False, "describe": None,
                "head": None, "base": None, "commits": [], "diff_sha256": None, "diff": None}
    head = commit_info(path, "HEAD")
    # `git describe --dirty` itself would refresh and write the index: the same answer without writing
    describe = _git(path, "describe", "--always", "HEAD", check=False).stdout.decode().strip() or head["sha"][:12]
    diff, dirty = uncommitted_diff(path)
    describe += "-dirty" if dirty else ""
    text = diff.decode(errors="replace")
    embed = len(diff) <= DIFF_EMBED_MAX and text.encode() == diff
    return {"kind": "tree", "repo": path.name, "path": str(path), "git": True, "describe": describe, "head": head,
            "base": base, "commits": commits_between(path, base) if base else [],
            "diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None, "diff_files": diff_files(diff),
            "diff_bytes": len(diff), "diff": (text if embed else None) if diff else None}
