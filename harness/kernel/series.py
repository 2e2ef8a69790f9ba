"""Patch series: read them (folder + optional `series` file, mbox, b4 message-id) and apply a stack with
``git am --3way`` onto a base commit of the cached work tree.

Each applied stack is remembered as ``refs/harness/stack/<stack hash>`` so switching back to a stack is a plain
``git checkout`` (files that do not differ keep their mtime: make rebuilds only what changed).
"""
from __future__ import annotations

import email.header
import hashlib
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.errors import InputError
from harness.kernel.source import B4Series, KernelInputs, git, sha256_file
from harness.paths import cache_dir


@dataclass(frozen=True)
class Patch:
    path: Path          # a file holding exactly one patch (mbox parts are split into the cache)
    name: str           # how the user knows it: file name, or "mbox#3"
    subject: str
    sha256: str

    def meta(self) -> dict:
        return {"file": self.name, "subject": self.subject, "sha256": self.sha256}


# ----------------------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------------------
def parse_series_file(text: str) -> list[str]:
    """Names from a quilt-style `series` file: one per line, '#' comments, options after the name ignored."""
    names = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line.split()[0])
    return names


_PREFIX = re.compile(r"^\s*(\[[^\]]*\]\s*)+")


def patch_subject(text: str) -> str:
    """The Subject header of a patch/mail (folded lines joined, MIME-decoded, '[PATCH n/m]' dropped);
    for a bare diff, its first line."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("diff --git") or line.startswith("---"):
            break
        if line.lower().startswith("subject:"):
            subj = line[8:].strip()
            for nxt in lines[i + 1:]:
                if nxt.startswith((" ", "\t")):
                    subj += " " + nxt.strip()
                else:
                    break
            try:
                subj = str(email.header.make_header(email.header.decode_header(subj)))
            except Exception:  # noqa: BLE001 - keep the raw text
                pass
            return _PREFIX.sub("", subj).strip() or subj
    return (lines[0].strip() if lines else "")[:100]


def _patch(path: Path, name: str) -> Patch:
    return Patch(path, name, patch_subject(path.read_text(errors="replace")), sha256_file(path))


def read_folder(folder: Path) -> list[Patch]:
    sf = folder / "series"
    if sf.is_file():
        names = parse_series_file(sf.read_text())
        out = []
        for n in names:
            p = folder / n
            if not p.is_file():
                raise InputError(f"series file {sf}: patch {n!r} does not exist in {folder}")
            out.append(_patch(p, n))
        return out
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".patch", ".diff", ".eml"))
    return [_patch(p, p.name) for p in files]


def split_mbox(mbox: Path, dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["git", "mailsplit", "-b", f"-o{dest}", str(mbox)], capture_output=True, text=True)
    if r.returncode != 0:
        raise InputError(f"cannot split mbox {mbox}: {r.stderr.strip()}")
    return sorted(dest.iterdir())


def read_mbox(mbox: Path) -> list[Patch]:
    data = mbox.read_bytes()
    h = hashlib.sha256(data).hexdigest()[:16]
    dest = cache_dir() / "series" / f"mbox-{h}"
    if not dest.is_dir():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
        try:
            split_mbox(mbox, tmp)
            tmp.rename(dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    parts = sorted(dest.iterdir())
    # a cover letter (0/N, no diff) is not a patch
    parts = [p for p in parts if re.search(r"^(diff --git|--- |Index: )", p.read_text(errors="replace"), re.M)]
    return [_patch(p, f"{mbox.name}#{i}") for i, p in enumerate(parts, 1)]


def read_b4(msgid: str) -> list[Patch]:
    msgid = msgid.strip().strip("<>")
    safe = re.sub(r"[^A-Za-z0-9._@-]", "_", msgid)
    dest = cache_dir() / "series" / f"b4-{safe}"
    if not (dest.is_dir() and any(dest.glob("*.mbx"))):
        if shutil.which("b4") is None:
            raise InputError(f"series {{b4: {msgid}}}: b4 is not installed (pip install b4), "
                             "or download the series as an mbox and point 'series' at it")
        dest.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["b4", "-q", "am", "-o", str(dest), msgid], capture_output=True, text=True)
        if r.returncode != 0 or not any(dest.glob("*.mbx")):
            shutil.rmtree(dest, ignore_errors=True)
            raise InputError(f"series {{b4: {msgid}}}: b4 am failed (offline, or no such message): "
                             f"{(r.stderr or r.stdout).strip()[-300:]}")
    mbx = sorted(dest.glob("*.mbx"))[0]
    return read_mbox(mbx)


def read_series(inputs: KernelInputs) -> list[Patch]:
    s = inputs.spec.series
    if s is None:
        return []
    if isinstance(s, B4Series):
        return read_b4(s.b4)
    p = inputs.resolve(s)
    if p.is_dir():
        return read_folder(p)
    if p.is_file():
        return read_mbox(p)
    raise InputError(f"series not found: {p} (series in {inputs.yaml_path})")


def select(patches: list[Patch], upto: int | None) -> list[Patch]:
    if upto is None:
        return patches
    if upto < 0 or upto > len(patches):
        raise InputError(f"upto {upto}: the series has {len(patches)} patch(es)")
    return patches[:upto]


def stack_hash(patches: list[Patch]) -> str:
    """Hash of an ordered patch stack (empty stack -> hash of nothing)."""
    h = hashlib.sha256()
    for p in patches:
        h.update(p.sha256.encode() + b"\n")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# applying
# ----------------------------------------------------------------------------------------------------------
def _git_dir(tree: Path) -> Path:
    return Path(git("rev-parse", "--absolute-git-dir", cwd=tree).stdout.strip())


def reset_tree(tree: Path, commit: str) -> None:
    """Abort a half-done `git am` and put the tree at `commit`, clean. Only files that differ are touched."""
    gd = _git_dir(tree)
    if (gd / "rebase-apply").exists():
        git("am", "--abort", cwd=tree, check=False)
        shutil.rmtree(gd / "rebase-apply", ignore_errors=True)
    # refresh stat info first: a file whose mtime changed but content did not must not be rewritten
    git("update-index", "-q", "--refresh", cwd=tree, check=False)
    git("checkout", "-q", "-f", "--detach", commit, cwd=tree)
    git("clean", "-q", "-f", "-d", "-x", cwd=tree)


_FAIL_PATTERNS = [
    re.compile(r"^error: patch failed: (\S+:\d+)", re.M),
    re.compile(r"^CONFLICT \([^)]*\): .*?in (\S+)", re.M),
    re.compile(r"^error: (\S+): (does not exist in index|patch does not apply|already exists in index)", re.M),
    re.compile(r"^error: (.*)$", re.M),
]


def first_failure(output: str) -> str:
    """The first failing file/hunk named in `git am` output."""
    for pat in _FAIL_PATTERNS:
        m = pat.search(output)
        if m:
            return m.group(0).removeprefix("error: ").strip()
    lines = [ln for ln in output.splitlines() if ln.strip()]
    return lines[0] if lines else "(no detail)"


def apply_stack(tree: Path, base_commit: str, patches: list[Patch], log=print) -> str:
    """Put `tree` at base + `patches` and return the resulting commit. Reuses a remembered stack ref.
    A patch that fails -> InputError (patch, subject, first failing hunk); the tree is reset to base."""
    ref = f"refs/harness/stack/{hashlib.sha256((base_commit + stack_hash(patches)).encode()).hexdigest()[:24]}"
    if not patches:
        reset_tree(tree, base_commit)
        return base_commit
    r = git("rev-parse", "--verify", "--quiet", ref, cwd=tree, check=False)
    if r.returncode == 0:
        commit = r.stdout.strip()
        reset_tree(tree, commit)
        return commit
    # longest remembered prefix would be nice; applying from base is cheap enough.
    reset_tree(tree, base_commit)
    for i, p in enumerate(patches, 1):
        r = git("am", "--3way", "--keep-cr", str(p.path), cwd=tree, check=False)
        if r.returncode != 0:
            out = (r.stdout or "") + "\n" + (r.stderr or "")
            detail = first_failure(out)
            # the 3-way fallback hides the hunk: ask `git apply` on the tree as it was before this patch
            git("reset", "-q", "--hard", "HEAD", cwd=tree, check=False)
            chk = git("apply", "--check", str(p.path), cwd=tree, check=False)
            hunk = first_failure(chk.stderr or "") if chk.returncode != 0 else ""
            if hunk and hunk not in detail:
                detail = f"{detail}; first failing hunk: {hunk}"
            reset_tree(tree, base_commit)
            raise InputError(f"patch {i}/{len(patches)} {p.name} ({p.subject!r}) does not apply: {detail}")
    commit = git("rev-parse", "HEAD", cwd=tree).stdout.strip()
    git("update-ref", ref, commit, cwd=tree)
    log(f"applied {len(patches)} patch(es) -> {commit[:12]}")
    return commit
