"""The integration tests' git repository: Debian's unpacked linux-source-7.2 as a clean commit, then two
harmless commits and one carrying the 7.2 mutant a, in mixed order (harmless, mutant, harmless).  Made once in
the cache (fixed author and dates, so the same commits every time) and reused: its object folder stays warm."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from harness.paths import REPO, cache_dir

MUTANT = REPO / "patches/mutants-7.2/a-finish-page-fault-clean/0001-MUTANT-KVM-x86-mmu-release-the-faulted-in-page-clean.patch"
ENV = {"GIT_AUTHOR_NAME": "Dev One", "GIT_AUTHOR_EMAIL": "dev1@example.org", "GIT_COMMITTER_NAME": "Dev One",
       "GIT_COMMITTER_EMAIL": "dev1@example.org", "GIT_AUTHOR_DATE": "2026-12-01T10:00:00+0000",
       "GIT_COMMITTER_DATE": "2026-12-01T10:00:00+0000"}
# (file, comment line after its first #include): a comment compiles to the same code
HARMLESS = [("arch/x86/kvm/x86.c", "harmless 1: a comment in x86.c"),
            ("arch/x86/kvm/mmu/tdp_mmu.c", "harmless 2: a comment in tdp_mmu.c")]


def _git(repo: Path, *args: str) -> str:
    r = subprocess.run(["git", "-C", str(repo), *args], check=False, capture_output=True, text=True, env=dict(os.environ, **ENV))
    if r.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {r.stderr}")
    return r.stdout.strip()


def _comment_commit(repo: Path, rel: str, text: str) -> None:
    f = repo / rel
    lines = f.read_text().splitlines(keepends=True)
    at = next(i for i, ln in enumerate(lines) if ln.startswith("#include"))
    lines.insert(at, f"/* {text} */\n")
    f.write_text("".join(lines))
    _git(repo, "commit", "-q", "-a", "-m", f"KVM: x86: {text}")


def make_repo(dest: Path | None = None) -> dict:
    """The repository (made once) -> {path, base, commits: [harmless1, mutant, harmless2] shas}."""
    from harness.kernel import debian
    from harness.kernel.source import _unpack_tarball
    dest = dest or cache_dir() / "test-trees" / "linux-7.2-range"
    if not (dest / ".git").is_dir() or _git(dest, "tag", "-l", "range-done") != "range-done":
        if dest.exists():
            subprocess.run(["rm", "-rf", str(dest)], check=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        _unpack_tarball(Path(debian.source_tarball("7.2")["tarball"]), dest, log=lambda m: None)
        _git(dest, "tag", "range-base")
        _comment_commit(dest, *HARMLESS[0])
        _git(dest, "am", "-q", "--committer-date-is-author-date", str(MUTANT))
        _comment_commit(dest, *HARMLESS[1])
        _git(dest, "tag", "range-done")
    shas = _git(dest, "rev-list", "--reverse", "range-base..range-done").split()
    return {"path": dest, "base": _git(dest, "rev-parse", "range-base"), "commits": shas}


if __name__ == "__main__":
    print(make_repo())
