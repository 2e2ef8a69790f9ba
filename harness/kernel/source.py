"""Kernel sources: KERNEL.yaml schema and the cached git work tree of a base.

A base is one of
  {debian-source: "7.2"}           Debian's linux-source-7.2 (/usr/src if installed, else fetched through a
                                   private apt state: harness.kernel.debian); "7.2.13-1" pins a version
  {tarball: PATH}                  any kernel tarball (one top-level folder is stripped)
  {git: PATH_OR_URL, ref: REF}     a local git tree or a URL, at REF

Every base becomes ONE git work tree in the cache (``cache/src/<slug>/``) with a fixed base commit, so patch
stacks are applied with ``git am`` and switching stacks is a ``git checkout`` (which only touches files that
differ, so make only rebuilds what changed).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.errors import InfraError, InputError
from harness.paths import cache_dir
from harness.util import atomic_write, file_lock, sha256_file  # noqa: F401 (callers import them from here too)
from harness.yamlload import load_model, parse_model

# Fixed identity for the synthetic base commit: the same tree always gives the same commit id.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "harness",
    "GIT_AUTHOR_EMAIL": "harness@localhost",
    "GIT_COMMITTER_NAME": "harness",
    "GIT_COMMITTER_EMAIL": "harness@localhost",
    "GIT_TERMINAL_PROMPT": "0",
}
FIXED_DATE = "2000-01-01T00:00:00+0000"


# ----------------------------------------------------------------------------------------------------------
# KERNEL.yaml
# ----------------------------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DebianBase(_Strict):
    debian_source: str = Field(alias="debian-source")


class TarballBase(_Strict):
    tarball: str


class GitBase(_Strict):
    git: str
    ref: str = "HEAD"


class B4Series(_Strict):
    b4: str


class KernelSpec(_Strict):
    base: Union[DebianBase, TarballBase, GitBase]
    series: Union[str, B4Series, None] = None
    upto: int | None = Field(default=None, ge=0)
    defconfig: str = "x86_64_defconfig"
    fragments: list[str] = []

    @field_validator("base", mode="before")
    @classmethod
    def _one_base(cls, v):
        if isinstance(v, dict):
            kinds = [k for k in ("debian-source", "debian_source", "tarball", "git") if k in v]
            if len(kinds) != 1:
                raise ValueError("base needs exactly one of debian-source, tarball, git "
                                 f"(got keys: {', '.join(map(str, v)) or 'none'})")
            if kinds[0] != "git" and "ref" in v:
                raise ValueError(f"'ref' only goes with 'git' (base is {kinds[0]})")
            extra = set(v) - {kinds[0], "ref"}
            if extra:
                raise ValueError(f"unknown key(s) in base: {', '.join(sorted(map(str, extra)))}")
            if kinds[0] == "debian-source" and not isinstance(v["debian-source"], str):
                v = dict(v, **{"debian-source": str(v["debian-source"])})  # 6.12 parses as a float
        return v


@dataclass
class KernelInputs:
    """A loaded KERNEL.yaml: the spec plus the folder its relative paths are relative to."""
    spec: KernelSpec
    yaml_path: Path

    @property
    def root(self) -> Path:
        return self.yaml_path.parent

    def resolve(self, p: str) -> Path:
        q = Path(os.path.expanduser(p))
        return q if q.is_absolute() else (self.root / q).resolve()


def parse_kernel_yaml(text: str, where: str = "KERNEL.yaml") -> KernelSpec:
    return parse_model(text, where, KernelSpec)


def load_kernel_yaml(path: Path) -> KernelInputs:
    path = Path(path)
    return KernelInputs(load_model(path, KernelSpec, what="kernel spec"), path.resolve())


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------
def git(*args: str, cwd: Path | None = None, check: bool = True, env: dict | None = None,
        capture: bool = True) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **GIT_ENV, **(env or {}))
    cmd = ["git", "-c", "advice.detachedHead=false", "-c", "gc.auto=0", *args]
    r = subprocess.run(cmd, cwd=cwd, env=full_env, text=True, capture_output=capture)
    if check and r.returncode != 0:
        raise InfraError(f"git {' '.join(args[:3])} failed in {cwd}: {(r.stderr or r.stdout).strip()[-500:]}")
    return r


def cached_sha256(path: Path) -> str:
    """sha256 of a big file, remembered by (path, size, mtime) so a cache hit stays instant."""
    st = path.stat()
    idx = cache_dir() / "hashes.json"
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    try:
        table = json.loads(idx.read_text())
    except (OSError, ValueError):
        table = {}
    if key in table:
        return table[key]
    digest = sha256_file(path)
    table[key] = digest
    atomic_write(idx, json.dumps(table, indent=1))
    return digest


def makefile_version(tree: Path) -> str:
    """'6.12.117' from the top Makefile's VERSION/PATCHLEVEL/SUBLEVEL/EXTRAVERSION."""
    vals = {}
    try:
        head = (tree / "Makefile").read_text(errors="replace").splitlines()[:12]
    except OSError:
        return "unknown"
    for line in head:
        m = re.match(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=\s*(.*)$", line)
        if m:
            vals[m.group(1)] = m.group(2).strip()
    if "VERSION" not in vals:
        return "unknown"
    v = f"{vals['VERSION']}.{vals.get('PATCHLEVEL', '0')}"
    if vals.get("SUBLEVEL", "0") not in ("", "0"):
        v += f".{vals['SUBLEVEL']}"
    return v + vals.get("EXTRAVERSION", "")


# ----------------------------------------------------------------------------------------------------------
# the source tree
# ----------------------------------------------------------------------------------------------------------
@dataclass
class SourceTree:
    """The cached git work tree for one base."""
    path: Path                      # git work tree (the kernel srctree)
    base_commit: str                # commit of the unpatched base in that tree
    identity: dict = field(default_factory=dict)  # {"kind", "version", "commit"|"sha256", ...}

    @property
    def id(self) -> str:
        """Short stable string naming the base (goes into cache keys)."""
        return self.identity["id"]

    @property
    def lock(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")


def _src_root() -> Path:
    d = cache_dir() / "src"
    d.mkdir(parents=True, exist_ok=True)
    return d


def debian_tarball(version: str, install: bool = True) -> Path:
    """linux-source-<version>'s tarball: installed in /usr/src, or fetched (install=True) through the private
    apt state of harness.kernel.debian; install=False never downloads (InputError when absent)."""
    from harness.kernel import debian
    return Path(debian.source_tarball(version, fetch=install)["tarball"])


def base_identity(inputs: KernelInputs) -> dict:
    """Cheap identity of the base, without unpacking anything (used for the cache-hit path)."""
    b = inputs.spec.base
    if isinstance(b, DebianBase):
        from harness.kernel import debian
        src = debian.source_tarball(b.debian_source)      # {package, package_version, tarball, from, deb_sha256?}
        sha = cached_sha256(Path(src["tarball"]))
        series = debian.parse_request(b.debian_source).series
        return {"kind": "debian-source", **src, "sha256": sha, "id": f"debian-{series}-{sha[:12]}"}
    if isinstance(b, TarballBase):
        tb = inputs.resolve(b.tarball)
        if not tb.is_file():
            raise InputError(f"base tarball not found: {tb} (base.tarball in {inputs.yaml_path})")
        sha = cached_sha256(tb)
        return {"kind": "tarball", "tarball": str(tb), "sha256": sha, "id": f"tarball-{sha[:12]}"}
    # git
    url = b.git
    local = _local_git_path(inputs, url)
    if local is not None:
        r = git("rev-parse", "--verify", "--quiet", f"{b.ref}^{{commit}}", cwd=local, check=False)
        if r.returncode != 0:
            raise InputError(f"base git {local}: ref {b.ref!r} not found")
        commit = r.stdout.strip()
        return {"kind": "git", "git": str(local), "ref": b.ref, "commit": commit, "id": f"git-{commit[:12]}"}
    # a URL
    if re.fullmatch(r"[0-9a-f]{40}", b.ref):
        commit = b.ref
    else:
        r = git("ls-remote", url, b.ref, check=False)
        if r.returncode != 0:
            raise InfraError(f"base git {url}: cannot reach it (offline?): {r.stderr.strip()[-300:]}")
        lines = [ln.split()[0] for ln in r.stdout.splitlines() if ln.strip()]
        if not lines:
            raise InputError(f"base git {url}: ref {b.ref!r} not found on the remote")
        commit = lines[0]
    return {"kind": "git", "git": url, "ref": b.ref, "commit": commit, "id": f"git-{commit[:12]}"}


def _local_git_path(inputs: KernelInputs, url: str) -> Path | None:
    if re.match(r"^[a-z][a-z0-9+.-]*://", url) or re.match(r"^[^/]+@[^/]+:", url):
        return None
    p = inputs.resolve(url)
    if not p.exists():
        raise InputError(f"base git path not found: {p} (base.git in {inputs.yaml_path})")
    r = git("rev-parse", "--git-dir", cwd=p, check=False)
    if r.returncode != 0:
        raise InputError(f"base git path is not a git repository: {p}")
    return p


def _git_init_commit(tree: Path) -> str:
    git("init", "-q", cwd=tree)
    git("config", "core.looseCompression", "1", cwd=tree)
    git("config", "feature.manyFiles", "true", cwd=tree)
    git("config", "user.name", "harness", cwd=tree)
    git("config", "user.email", "harness@localhost", cwd=tree)
    git("add", "-A", "-f", ".", cwd=tree)      # -f: keep files the kernel's .gitignore would skip
    git("commit", "-q", "--no-verify", "-m", "base", cwd=tree,
        env={"GIT_AUTHOR_DATE": FIXED_DATE, "GIT_COMMITTER_DATE": FIXED_DATE})
    return git("rev-parse", "HEAD", cwd=tree).stdout.strip()


def _unpack_tarball(tb: Path, dest: Path, log=print) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
    try:
        log(f"unpacking {tb} -> {dest}")
        r = subprocess.run(["tar", "-xf", str(tb), "-C", str(tmp)], capture_output=True, text=True)
        if r.returncode != 0:
            raise InputError(f"cannot unpack {tb}: {r.stderr.strip()[-300:]}")
        entries = list(tmp.iterdir())
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
        if not (root / "Makefile").is_file():
            raise InputError(f"{tb} does not look like a kernel source tarball (no top-level Makefile)")
        log("making it a git work tree (one base commit)")
        _git_init_commit(root)
        if root is tmp:
            os.rename(tmp, dest)
        else:
            os.rename(root, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_source(inputs: KernelInputs, identity: dict | None = None, log=print) -> SourceTree:
    """Make (once) and return the cached work tree of the base. The tree is left at whatever stack it had;
    callers reset it with series.checkout_base()."""
    ident = identity or base_identity(inputs)
    dest = _src_root() / ident["id"]
    if (dest / ".git").is_dir():
        # made before: no need to wait for the lock (another build may hold it for minutes)
        r = git("rev-parse", "--verify", "--quiet", "refs/harness/base", cwd=dest, check=False)
        if r.returncode == 0 and (ident["kind"] != "git" or r.stdout.strip() == ident["commit"]):
            tree = SourceTree(dest, r.stdout.strip(), dict(ident, base_commit=r.stdout.strip()))
            tree.identity["version"] = _version_at(tree)
            return tree
    with file_lock(_src_root() / (ident["id"] + ".lock")):
        if ident["kind"] in ("debian-source", "tarball"):
            if not (dest / ".git").is_dir():
                if dest.exists():
                    shutil.rmtree(dest)
                _unpack_tarball(Path(ident["tarball"]), dest, log)
            base_commit = _read_base_commit(dest)
        else:
            base_commit = ident["commit"]
            if not (dest / ".git").is_dir():
                if dest.exists():
                    shutil.rmtree(dest)
                _clone_git(ident, dest, log)
            elif git("cat-file", "-e", f"{base_commit}^{{commit}}", cwd=dest, check=False).returncode != 0:
                _fetch(ident, dest)
        ident = dict(ident, base_commit=base_commit)
        tree = SourceTree(dest, base_commit, ident)
        ident["version"] = _version_at(tree)
    return tree


def _read_base_commit(dest: Path) -> str:
    r = git("rev-parse", "--verify", "refs/harness/base", cwd=dest, check=False)
    if r.returncode == 0:
        return r.stdout.strip()
    # first commit of the tree
    c = git("rev-list", "--max-parents=0", "HEAD", cwd=dest).stdout.split()[0]
    git("update-ref", "refs/harness/base", c, cwd=dest)
    return c


def _version_at(tree: SourceTree) -> str:
    r = git("show", f"{tree.base_commit}:Makefile", cwd=tree.path, check=False)
    if r.returncode != 0:
        return "unknown"
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "Makefile").write_text(r.stdout)
        return makefile_version(Path(d))


def _clone_git(ident: dict, dest: Path, log=print) -> None:
    src = ident["git"]
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
    try:
        log(f"cloning {src} -> {dest}")
        args = ["clone", "-q", "--no-checkout"]
        if Path(src).exists():
            args.append("--shared")           # local tree: borrow its objects, do not copy them
        r = git(*args, src, str(tmp / "t"), check=False)
        if r.returncode != 0:
            if Path(src).exists():
                raise InputError(f"cannot clone base git {src}: {r.stderr.strip()[-300:]}")
            raise InfraError(f"cannot clone base git {src} (offline?): {r.stderr.strip()[-300:]}")
        t = tmp / "t"
        if git("cat-file", "-e", f"{ident['commit']}^{{commit}}", cwd=t, check=False).returncode != 0:
            _fetch(ident, t)
        git("config", "feature.manyFiles", "true", cwd=t)
        git("checkout", "-q", "--detach", ident["commit"], cwd=t)
        git("update-ref", "refs/harness/base", ident["commit"], cwd=t)
        os.rename(t, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fetch(ident: dict, tree: Path) -> None:
    r = git("fetch", "-q", "origin", ident["ref"], cwd=tree, check=False)
    if r.returncode != 0 or git("cat-file", "-e", f"{ident['commit']}^{{commit}}", cwd=tree,
                                check=False).returncode != 0:
        raise InfraError(f"cannot fetch {ident['ref']} ({ident['commit'][:12]}) from {ident['git']}: "
                         f"{r.stderr.strip()[-300:]}")
