"""`--tree PATH --build` and the git-range steps: build a kernel source folder out of tree, in one object folder
per developer tree that every later build reuses (make decides what to rebuild), into a cache artifact.

The developer's tree is copied (harness.kernel.tree explains why) into cache/src/<slug>/ by `sync_tree`; a git
range is checked out in a clone under the cache (harness.fleet.gitrange).  Both end in `build_source`.
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
    slug,
)
from harness.kernel.build import compiler_version, make_vars, run_logged
from harness.kernel.source import file_lock, makefile_version, sha256_file
from harness.paths import REPO, cache_dir

BUILD_TARGETS = ["bzImage", "modules"]


def _h(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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


def plan_sync(src_stat: dict[str, tuple], dst_stat: dict[str, tuple]) -> tuple[list[str], list[str]]:
    """Pure: (files to copy, files to delete) so dst mirrors src; a stat is (kind, size, mtime_ns) or
    ("link", target).  Unchanged files are left alone: their mtime keeps make from rebuilding them."""
    copy = [n for n, st in src_stat.items() if dst_stat.get(n) != st]
    delete = [n for n in dst_stat if n not in src_stat]
    return sorted(copy), sorted(delete)


def _stat(p: Path) -> tuple | None:
    try:
        if p.is_symlink():
            return ("link", os.readlink(p))
        st = p.stat()
        return ("file", st.st_size, st.st_mtime_ns)
    except OSError:
        return None


def sync_tree(src: Path, dest: Path, names: list[str]) -> dict:
    """Mirror `names` of src into dest (copy2: content and mtime), delete what left the list since last time."""
    manifest = dest.with_name(dest.name + ".files.json")
    try:
        old = json.loads(manifest.read_text())
    except (OSError, ValueError):
        old = []
    src_stat = {n: s for n in names if (s := _stat(src / n)) is not None}
    dst_stat = {n: s for n in set(old) | set(names) if (s := _stat(dest / n)) is not None}
    copy, delete = plan_sync(src_stat, dst_stat)
    for n in delete:
        (dest / n).unlink(missing_ok=True)
    for n in copy:
        d = dest / n
        d.parent.mkdir(parents=True, exist_ok=True)
        if d.is_symlink() or d.is_file():
            d.unlink()
        if src_stat[n][0] == "link":
            os.symlink(src_stat[n][1], d)
        else:
            shutil.copy2(src / n, d)
    manifest.write_text(json.dumps(sorted(src_stat)))
    return {"files": len(src_stat), "copied": len(copy), "deleted": len(delete)}


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


def configure(src: Path, staging: Path, start: Path, frags: list[Path], kdigest: str, mv: list[str],
              cc: str, log) -> str:
    """Final .config text: merge_config.sh + olddefconfig + the fragment check (kconfig.configure), cached by
    (start config, fragments, Kconfig files, make variables, compiler)."""
    key = _h({"start": start.read_text(errors="replace"), "frags": [(f.name, f.read_text()) for f in frags],
              "kconfig": kdigest, "make_vars": mv, "compiler": cc, "kind": "tree"})
    cached = cache_dir() / "kconfig" / f"tree-{key[:32]}.config"
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
def build_source(src: Path, objdir: Path, start: Path, start_desc: dict, frags: list[Path], kdigest: str,
                 change: dict, key_prefix: str, log) -> Path:
    """Configure and build `src` with O=objdir (reused), install into a cache artifact; cache hit by key =
    (HEAD commit, uncommitted diff hash, final .config hash, make variables)."""
    t0 = time.monotonic()
    mv, cc = make_vars(), compiler_version()
    config_text = configure(src, objdir.with_name(objdir.name + ".kconfig"), start, frags, kdigest, mv, cc, log)
    cfg_sha = hashlib.sha256(config_text.encode()).hexdigest()
    head = (change.get("head") or {}).get("sha")
    key = f"{key_prefix}-{_h({'head': head, 'diff': change.get('diff_sha256'), 'config': cfg_sha, 'mv': mv})[:16]}"
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


def build_tree(tree: Path, change: dict, defconfig: str | None, log=print, config_file: Path | None = None) -> Path:
    """`--tree PATH --build`: sync the working tree into the cache copy, build it there (O= reused).
    config_file: build with exactly that .config (olddefconfig only, no fragments): the reproducer's rebuild."""
    name = slug(tree)
    src = cache_dir() / "src" / name
    with file_lock(cache_dir() / "src" / f"{name}.lock"):
        t = time.monotonic()
        names = tree_files(tree)
        src.mkdir(parents=True, exist_ok=True)
        st = sync_tree(tree, src, names)
        log(f"synced {tree} -> {src}: {st['copied']} file(s) copied, {st['deleted']} deleted of {st['files']} "
            f"({time.monotonic() - t:.1f} s)")
        start, desc, frags = base_config(tree, src, defconfig)
        if config_file is not None:
            start, desc, frags = config_file, {"kind": "verbatim", "name": config_file.name,
                                               "sha256": sha256_file(config_file)}, []
        return build_source(src, cache_dir() / "obj" / name, start, desc, frags, kconfig_digest(src, names),
                            change, name, log)
