"""`--tree PATH --build` and the git-range steps: build a kernel source folder out of tree, in one object folder
per developer tree that every later build reuses (make decides what to rebuild), into a cache artifact.

The developer's tree is copied (harness.kernel.tree explains why) into cache/src/<repo_key>/ by `sync_tree`; a
git range is checked out in a clone under the cache (harness.fleet.gitrange) and synced from there the same
way.  Every clone of one repository shares that copy and the object folder cache/obj/<repo_key>/.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from harness.errors import InputError
from harness.kernel import kconfig
from harness.kernel.artifact import (
    HARNESS_FRAGMENTS,
    MINIMAL_FRAGMENT,
    _finish,
    _kernels,
    normalize_modules,
)
from harness.kernel.build import compiler_version, make_vars, run_logged
from harness.kernel.source import file_lock, makefile_version, sha256_file
from harness.paths import REPO, cache_dir

BUILD_TARGETS = ["bzImage", "modules"]


def _h(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def repo_key_name(root_sha: str, root_subject: str) -> str:
    """Pure: the name of a repository's build copy and object folder from its first-parent root commit (the
    same in every clone of it, wherever it lives) and that commit's subject (for people)."""
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in root_subject.strip())[:24].strip("._-")
    return f"tree-{name or 'repo'}-{root_sha[:12]}"


def repo_key(tree: Path) -> str:
    """repo_key_name of the tree's HEAD.  The first-parent root, not every root: a merge that brings in a
    history with its own root (as Linux's early merges did) does not rename the copy."""
    r = subprocess.run(["git", "-C", str(tree), "log", "--first-parent", "--max-parents=0", "--format=%H%x00%s",
                        "HEAD"], check=False, capture_output=True, text=True,
                       env=dict(os.environ, GIT_OPTIONAL_LOCKS="0"))
    line = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else ""
    if "\0" not in line:
        raise InputError(f"{tree}: git cannot name its root commit (no commit yet?): "
                         f"{(r.stderr or r.stdout).strip()[-300:]}")
    sha, subject = line.split("\0", 1)
    return repo_key_name(sha, subject)


# ----------------------------------------------------------------------------------------------------------
# copying the working tree
# ----------------------------------------------------------------------------------------------------------
def tree_files(path: Path) -> list[str]:
    """Tracked and untracked, not ignored files of the working tree that exist (what a build of it reads)."""
    r = subprocess.run(["git", "-C", str(path), "ls-files", "-z", "--cached", "--others", "--exclude-standard"], check=False,
                       capture_output=True, env=dict(os.environ, GIT_OPTIONAL_LOCKS="0"))
    if r.returncode != 0:
        raise InputError(f"git ls-files in {path}: {r.stderr.decode(errors='replace').strip()[-300:]}")
    names = sorted({n.decode() for n in r.stdout.split(b"\0") if n})
    return [n for n in names if os.path.lexists(path / n)]


Stat = tuple       # ("file", size, mtime_ns, mode) or ("link", target)


def plan_sync(src: dict[str, Stat], dst: dict[str, Stat], seen: dict[str, list]) -> tuple[list[str], list[str],
                                                                                          list[str]]:
    """Pure: (copy, compare, delete) so that dst mirrors src.  `seen` is the manifest of the last sync,
    name -> [source stat, copy stat] as they were then.
      unchanged (nothing to do): both stats as at the last sync, or the copy's stat equal to the source's (a
                copy made with the source's mtime, as the first version of this sync did); a link with the
                same target
      compare:  two regular files of the same size, one of them touched since: the content decides (a clone
                or a checkout gives every file a new mtime; an identical file keeps its copy's old mtime, so
                make does not rebuild what was built from it)
      copy:     anything else (new, different size, a file that became a link, a folder, or back)
      delete:   in the copy but no longer in the source."""
    copy, compare = [], []
    for n, s in src.items():
        d = dst.get(n)
        if d is None or d[0] != s[0]:
            copy.append(n)
        elif d == s or list(seen.get(n) or ()) == [list(s), list(d)]:
            continue
        elif s[0] == "link" or d[1] != s[1]:          # another target, another size
            copy.append(n)
        else:
            compare.append(n)
    return sorted(copy), sorted(compare), sorted(n for n in dst if n not in src)


def _stat(p: Path) -> Stat | None:
    try:
        if p.is_symlink():
            return ("link", os.readlink(p))
        st = p.stat()
        return ("dir" if p.is_dir() else "file", st.st_size, st.st_mtime_ns, st.st_mode & 0o7777)
    except OSError:
        return None


def same_bytes(a: Path, b: Path, chunk: int = 1 << 20) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(chunk), fb.read(chunk)
            if x != y:
                return False
            if not x:
                return True


def _write(src: Path, d: Path, st: Stat) -> None:
    """The source's content (and mode) into the copy, with mtime = now: newer than any object built from the
    copy's former content, whatever the source file's own mtime."""
    d.parent.mkdir(parents=True, exist_ok=True)
    if d.is_symlink() or d.is_file():
        d.unlink()
    elif d.is_dir():                                  # a folder (of files that left the tree) became a file
        shutil.rmtree(d)
    if st[0] == "link":
        os.symlink(st[1], d)
    else:
        shutil.copyfile(src, d)
        os.chmod(d, st[3])


def sync_tree(src: Path, dest: Path, names: list[str]) -> dict:
    """Mirror `names` of src into dest by content (plan_sync), delete what left the list since last time;
    the manifest dest.files.json keeps both stats of every file as this sync left them."""
    manifest = dest.with_name(dest.name + ".files.json")
    try:
        old = json.loads(manifest.read_text())
    except (OSError, ValueError):
        old = {}
    seen = old if isinstance(old, dict) else {}      # a list: the names-only manifest of the first version
    src_stat = {n: s for n in names if (s := _stat(src / n)) is not None}
    dst_stat = {n: s for n in set(old) | set(names) if (s := _stat(dest / n)) is not None}
    copy, compare, delete = plan_sync(src_stat, dst_stat, seen)
    for n in delete:
        (dest / n).unlink(missing_ok=True)
    identical = 0
    for n in compare:
        if same_bytes(src / n, dest / n):
            identical += 1
            if dst_stat[n][3] != src_stat[n][3]:
                os.chmod(dest / n, src_stat[n][3])     # a mode change alone: the mtime stays
        else:
            copy.append(n)
    for n in copy:
        _write(src / n, dest / n, src_stat[n])
    state = {n: [list(s), list(_stat(dest / n) or ())] for n, s in src_stat.items()}
    tmp = manifest.with_name(manifest.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state, sort_keys=True, separators=(",", ":")))
    os.replace(tmp, manifest)
    return {"files": len(src_stat), "copied": len(copy), "deleted": len(delete), "compared": len(compare),
            "identical": identical}


def kconfig_digest(src: Path, names: list[str]) -> str:
    h = hashlib.sha256()
    for n in names:
        if "Kconfig" in n.rsplit("/", 1)[-1] and (src / n).is_file():
            h.update(n.encode() + b"\0" + (src / n).read_bytes() + b"\0")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------
def base_config(tree: Path, src: Path, defconfig: str | None) -> tuple[Path, dict, list[Path]]:
    """(the starting config file, its description, the harness fragments): the tree's own .config, or a named
    defconfig of the tree (`minimal`: x86_64_defconfig + kconfigs/minimal-l1.config)."""
    frags = [REPO / "kconfigs" / n for n in HARNESS_FRAGMENTS]
    asked = defconfig                 # as the user named it: `--defconfig minimal` again reproduces it
    if defconfig == "minimal":
        frags.append(REPO / "kconfigs" / MINIMAL_FRAGMENT)
        defconfig = "x86_64_defconfig"
    if defconfig:
        p = kconfig.find_defconfig(src, defconfig, lambda s: Path(os.path.expanduser(s)).resolve())
        return p, {"kind": "defconfig", "name": asked, "file": p.name, "sha256": sha256_file(p)}, frags
    own = tree / ".config"
    if own.is_file():
        return own, {"kind": "tree .config", "name": ".config", "sha256": sha256_file(own)}, frags
    p = kconfig.find_defconfig(src, "x86_64_defconfig", lambda s: Path(s))
    return p, {"kind": "defconfig", "name": "x86_64_defconfig", "sha256": sha256_file(p),
               "why": "the tree has no .config"}, frags


def config_cache_path(start: Path, frags: list[Path], kdigest: str, mv: list[str], cc: str) -> Path:
    key = _h({"start": start.read_text(errors="replace"), "frags": [(f.name, f.read_text()) for f in frags],
              "kconfig": kdigest, "make_vars": mv, "compiler": cc, "kind": "tree"})
    return cache_dir() / "kconfig" / f"tree-{key[:32]}.config"


def configure(src: Path, staging: Path, start: Path, frags: list[Path], kdigest: str, mv: list[str],
              cc: str, log) -> str:
    """Final .config text: merge_config.sh + olddefconfig + the fragment check (kconfig.configure), cached by
    (start config, fragments, Kconfig files, make variables, compiler)."""
    cached = config_cache_path(start, frags, kdigest, mv, cc)
    if cached.is_file():
        return cached.read_text()
    if frags:
        log(f"configuring ({start.name} + {', '.join(f.name for f in frags)}; merge_config.sh + olddefconfig)")
        text, _ = kconfig.configure(src, staging, start, frags, mv)
    else:                   # a recorded final .config (the reproducer): as it is, olddefconfig only
        log(f"configuring ({start} as it is; olddefconfig)")
        text = _olddefconfig(src, staging, start, mv)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, cached)
    return text


def _olddefconfig(src: Path, staging: Path, start: Path, mv: list[str]) -> str:
    staging.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(start, staging / ".config")
    r = subprocess.run(["make", "-s", "-C", str(src), f"O={staging}", *mv, "olddefconfig"], check=False, capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise InputError(f"make olddefconfig of {start} failed: {(r.stderr or r.stdout).strip()[-600:]}")
    return (staging / ".config").read_text()


# ----------------------------------------------------------------------------------------------------------
# the build
# ----------------------------------------------------------------------------------------------------------
def artifact_key(key_prefix: str, change: dict, config_text: str, mv: list[str]) -> str:
    """Pure: the artifact's name from (HEAD commit, uncommitted diff hash, final .config hash, make variables)."""
    cfg_sha = hashlib.sha256(config_text.encode()).hexdigest()
    head = (change.get("head") or {}).get("sha")
    return f"{key_prefix}-{_h({'head': head, 'diff': change.get('diff_sha256'), 'config': cfg_sha, 'mv': mv})[:16]}"


def cached_artifact(start: Path, frags: list[Path], kdigest: str, change: dict, key_prefix: str) -> Path | None:
    """The artifact of these inputs when its configured .config and the artifact itself are both in the cache:
    then a build needs neither the sync nor make (a git-range step or a reproducer of something built)."""
    mv = make_vars()
    cached = config_cache_path(start, frags, kdigest, mv, compiler_version())
    if not cached.is_file():
        return None
    art = _kernels() / artifact_key(key_prefix, change, cached.read_text(), mv)
    return art if (art / "meta.json").is_file() else None


def build_source(src: Path, objdir: Path, start: Path, start_desc: dict, frags: list[Path], kdigest: str,
                 change: dict, key_prefix: str, log) -> Path:
    """Configure and build `src` with O=objdir (reused), install into a cache artifact; cache hit by key =
    (HEAD commit, uncommitted diff hash, final .config hash, make variables)."""
    t0 = time.monotonic()
    mv, cc = make_vars(), compiler_version()
    config_text = configure(src, objdir.with_name(objdir.name + ".kconfig"), start, frags, kdigest, mv, cc, log)
    cfg_sha = hashlib.sha256(config_text.encode()).hexdigest()
    key = artifact_key(key_prefix, change, config_text, mv)
    if (_kernels() / key / "meta.json").is_file():
        return _kernels() / key
    objdir.mkdir(parents=True, exist_ok=True)
    state = "reused" if (objdir / "vmlinux").exists() else "fresh"
    cfg = objdir / ".config"
    if not cfg.is_file() or cfg.read_text() != config_text:      # same content: keep the mtime
        cfg.write_text(config_text)
    krel = f"KERNELRELEASE={makefile_version(src)}"
    mk = ["nice", "-n", "10", "make", "-C", str(src), f"O={objdir}", f"-j{os.cpu_count() or 1}", *mv, krel]
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=_kernels()))
    try:
        times = {"config_s": round(time.monotonic() - t0, 2)}
        with open(tmp / "build.log", "w") as lf:
            lf.write(shlex.join(mk + BUILD_TARGETS) + "\n")
            lf.write(f"# key {key}; objtree {objdir} ({state}); change {change.get('describe')}\n")
            lf.flush()
            log(f"building {key} in {objdir} ({state} object folder, -j{os.cpu_count()})")
            t, ru0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
            run_logged(mk + BUILD_TARGETS, src, lf, f"make {' '.join(BUILD_TARGETS)}")
            times["make_s"] = round(time.monotonic() - t, 2)
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            # CPU seconds of make and its compilers: comparable across busy and idle machines
            times["make_cpu_s"] = round(ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime, 1)
            times["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
            release = (objdir / "include/config/kernel.release").read_text().strip()
            mods = tmp / "modules"
            (mods / "lib/modules").mkdir(parents=True)
            run_logged(mk + ["modules_install", f"INSTALL_MOD_PATH={mods}", "INSTALL_MOD_STRIP=1"], src, lf,
                       "make modules_install")
        (mods / "lib/modules" / release).mkdir(parents=True, exist_ok=True)
        normalize_modules(mods, release)
        for a, b in (("arch/x86/boot/bzImage", "bzImage"), ("System.map", "System.map"), (".config", "config")):
            shutil.copyfile(objdir / a, tmp / b)
        times["total_s"] = round(time.monotonic() - t0, 2)
        meta = {"source": "tree-build", "release": release, "config_sha256": cfg_sha, "change": change,
                "base_config": start_desc, "fragments": [str(f) for f in frags], "make_vars": mv, "compiler": cc,
                "objtree": {"path": str(objdir), "state": state}, "times": times, "patches": []}
        final = _finish(tmp, key, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"built {release} in {times['total_s']:.0f} s (make {times['make_s']:.0f} s) -> {final}")
    return final


def build_tree(tree: Path, change: dict, defconfig: str | None, log=print, config_file: Path | None = None,
               config_tree: Path | None = None) -> Path:
    """`--tree PATH --build`: sync the working tree into its repository's copy, build it there (O= reused).
    config_file: build with exactly that .config (olddefconfig only, no fragments): the reproducer's rebuild.
    config_tree: the tree whose .config is the starting point (default: `tree`; a git-range step: the
    developer's repository, not the clone it checked the commit out in).

    One copy and one object folder per repository (repo_key), whichever clone or path it is built from: the
    reproducer's fresh clone, a second worktree and a git-range step all rebuild only what differs from the
    last build.  The per-name lock serialises them."""
    name = repo_key(tree)
    src = cache_dir() / "src" / name
    with file_lock(cache_dir() / "src" / f"{name}.lock"):
        t = time.monotonic()
        names = tree_files(tree)
        # the tree's defconfigs and Kconfig files are what the copy will hold: read there, before any sync
        start, desc, frags = base_config(config_tree or tree, tree, defconfig)
        if config_file is not None:
            start, desc, frags = config_file, {"kind": "verbatim", "name": config_file.name,
                                               "sha256": sha256_file(config_file)}, []
        kdigest = kconfig_digest(tree, names)
        hit = cached_artifact(start, frags, kdigest, change, name)
        if hit is not None:
            log(f"{hit.name} is in the cache (same commit, diff and .config): no sync, no make")
            return hit
        src.mkdir(parents=True, exist_ok=True)
        st = sync_tree(tree, src, names)
        log(f"synced {tree} -> {src}: {st['copied']} file(s) written, {st['deleted']} deleted, "
            f"{st['identical']} touched but identical kept, of {st['files']} ({time.monotonic() - t:.1f} s)")
        return build_source(src, cache_dir() / "obj" / name, start, desc, frags, kdigest, change, name, log)
