"""A developer's own kernel: `harness run --tree PATH [--build]`, `--kernel BZIMAGE --modules DIR|TARBALL`.

    --tree PATH             PATH is a built kernel tree (arch/x86/boot/bzImage, .config, modules): its .config is
                            checked against kconfigs/kvm-host.config + tracing.config, its modules installed with
                            `make modules_install INSTALL_MOD_PATH=` into an artifact in the cache
    --tree PATH --build     the working tree AS IT IS (uncommitted and untracked files included) is built with
                            the developer's .config (or --defconfig NAME; `minimal`: x86_64_defconfig +
                            kconfigs/minimal-l1.config) + the harness fragments, out of tree, in the cache:

    cache/src/<repo-key>/       a copy of the tree's tracked + untracked, not ignored files
    cache/obj/<repo-key>/       the object folder (O=), reused by every later build of that repository
    cache/kernels/<repo-key>-<hash>/    the artifact (the layout of harness.kernel.build)

<repo-key> names the repository (its first-parent root commit, treebuild.repo_key), not the path: every clone
of it (the reproducer's, a second worktree, a git-range step) shares the copy and the object folder.

Why a copy and not O= on the tree itself: a tree that was ever built in place makes `make O=` refuse ("source
tree is not clean, please run make mrproper"), and mrproper would write to the developer's tree.  Why a copy
and not a `git worktree` + the diff applied: a worktree writes into the developer's .git, and a checkout
gives every changed file a new mtime.  The copy is synced by content (treebuild.sync_tree): only files whose
bytes changed are rewritten (mtime = now); a touched but identical file keeps the copy's mtime, so make in the
reused object folder rebuilds exactly what an in-place build would.  Nothing in PATH (or its .git) is ever
written.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from harness.errors import InputError
from harness.kernel import change as change_mod
from harness.kernel import kconfig
from harness.kernel.artifact import (
    HARNESS_FRAGMENTS,
    is_bzimage,
    _finish,
    _kernels,
    normalize_modules,
    slug,
)
from harness.kernel.source import sha256_file
from harness.kernel.treebuild import build_tree
from harness.paths import REPO

# requested by kvm-host.config to make the harness's own builds small and quick, not needed to run
SPEED_ONLY = {"CONFIG_DEBUG_INFO_NONE"}


# ----------------------------------------------------------------------------------------------------------
# the .config check (pure)
# ----------------------------------------------------------------------------------------------------------
def required_requests(fragments: list[tuple[str, str]]) -> list[kconfig.Request]:
    """What a kernel must have for the harness: every y/m/value request of the fragments ('is not set' ones
    only make the harness's own builds smaller; a developer's kernel may have DRM, USB...)."""
    return [r for r in kconfig.fragment_requests(fragments) if r.value != kconfig.NOT_SET
            and r.symbol not in SPEED_ONLY]


def satisfied(asked: str, got: str | None) -> bool:
    """'m' must be a module (the harness loads kvm/kvm_amd/zram with parameters); 'y' is met by y or m (the
    L1 init modprobes what is modular); any other value must be equal."""
    if asked == "y":
        return got in ("y", "m")
    return got == asked


def fix_command(config_path: str, r: kconfig.Request) -> str:
    sym = r.symbol.removeprefix("CONFIG_")
    if r.value == "y":
        op = f"--enable {sym}"
    elif r.value == "m":
        op = f"--module {sym}"
    else:
        op = f"--set-val {sym} {r.value}"
    return f"scripts/config --file {config_path} {op}"


def config_gaps(config_text: str, requests: list[kconfig.Request], config_path: str) -> list[str]:
    """One line per unmet request: symbol, what the harness needs, what the .config has, the command that
    fixes it (run in the tree, then `make olddefconfig`)."""
    have = kconfig.parse_config(config_text)
    out = []
    for r in requests:
        got = have.get(r.symbol)
        if not satisfied(r.value, got):
            shown = "absent" if got is None else ("not set" if got == kconfig.NOT_SET else got)
            out.append(f"{r.symbol}: needs {r.value} ({r.fragment}), .config has {shown}; fix: "
                       f"{fix_command(config_path, r)}")
    return out


def fragment_texts(names=HARNESS_FRAGMENTS) -> list[tuple[str, str]]:
    return [(n, (REPO / "kconfigs" / n).read_text()) for n in names]


def check_config(config: Path, tree: Path | None = None) -> None:
    """InputError (exit 2) listing every missing symbol of a kernel's .config, with the fix."""
    gaps = config_gaps(config.read_text(errors="replace"), required_requests(fragment_texts()), str(config))
    if not gaps:
        return
    where = tree or config.parent
    frags = " ".join(str(REPO / "kconfigs" / n) for n in HARNESS_FRAGMENTS)
    raise InputError(f"{config} lacks {len(gaps)} symbol(s) the harness needs:\n  " + "\n  ".join(gaps)
                     + f"\nthen: make -C {where} olddefconfig && make -C {where} -j$(nproc) bzImage modules"
                     + f"\nor all at once: cd {where} && scripts/kconfig/merge_config.sh -m .config {frags} && "
                       "make olddefconfig && make -j$(nproc) bzImage modules")


def _release(tree: Path) -> str:
    f = tree / "include/config/kernel.release"
    if not f.is_file():
        raise InputError(f"{tree} has no include/config/kernel.release: build it first (make bzImage modules) "
                         "or use --build")
    return f.read_text().strip()


def _modules_expected(config_text: str) -> bool:
    return kconfig.parse_config(config_text).get("CONFIG_MODULES") == "y"


def _modules_stamp(tree: Path, order: Path) -> str:
    """Size and mtime of every module modules.order names (x.o -> x.ko): a change that rebuilds only a module
    (kvm.ko, with no LOCALVERSION_AUTO to change the bzImage) makes another artifact, not the stale one."""
    if not order.is_file():
        return "-"
    out = []
    for line in order.read_text().split():
        ko = tree / (line.removesuffix(".o") + ".ko")
        st = ko.stat() if ko.is_file() else None
        out.append(f"{line}:{st.st_size}:{st.st_mtime_ns}" if st else f"{line}:-")
    return "\n".join(out)


def built_tree_kernel(tree: Path, change: dict, log=print) -> Path:
    """The artifact of an already built tree (in place or its O= folder): bzImage, .config checked, modules
    installed from the tree.  Keyed by (bzImage, .config, modules.order) hashes: a rebuild gets a new one."""
    tree = Path(tree).resolve()
    bz, cfg = tree / "arch/x86/boot/bzImage", tree / ".config"
    if not cfg.is_file():
        raise InputError(f"{tree} has no .config: configure and build it (make olddefconfig bzImage modules), "
                         "or use --tree PATH --build")
    check_config(cfg, tree)
    if not bz.is_file():
        raise InputError(f"{tree} is not built (no arch/x86/boot/bzImage): make -C {tree} -j$(nproc) bzImage "
                         "modules, or use --tree PATH --build")
    cfg_text = cfg.read_text()
    order = tree / "modules.order"
    if _modules_expected(cfg_text) and not order.is_file():
        raise InputError(f"{tree} has CONFIG_MODULES=y but no modules.order: make -C {tree} -j$(nproc) modules")
    digest = hashlib.sha256()
    for f in (bz, cfg, order):
        digest.update((sha256_file(f) if f.is_file() else "-").encode())
    digest.update(_modules_stamp(tree, order).encode())
    key = f"{slug(tree)}-built-{digest.hexdigest()[:16]}"
    if (_kernels() / key / "meta.json").is_file():
        return _kernels() / key
    release = _release(tree)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=_kernels()))
    try:
        mods = tmp / "modules"
        (mods / "lib/modules").mkdir(parents=True)
        if _modules_expected(cfg_text):
            log(f"installing the modules of {tree} (make modules_install INSTALL_MOD_PATH=<cache>)")
            r = subprocess.run(["make", "-s", "-C", str(tree), f"INSTALL_MOD_PATH={mods}", "INSTALL_MOD_STRIP=1",
                                "DEPMOD=/bin/true", "modules_install"], check=False, capture_output=True, text=True)
            if r.returncode != 0:
                raise InputError(f"make modules_install in {tree} failed: {(r.stderr or r.stdout).strip()[-400:]}")
        (mods / "lib/modules" / release).mkdir(parents=True, exist_ok=True)
        compressed = normalize_modules(mods, release)
        shutil.copyfile(bz, tmp / "bzImage")
        shutil.copyfile(cfg, tmp / "config")
        if (tree / "System.map").is_file():
            shutil.copyfile(tree / "System.map", tmp / "System.map")
        meta = {"source": "tree", "release": release, "config_sha256": sha256_file(cfg), "tree": str(tree),
                "base_config": {"kind": "tree .config", "name": ".config", "sha256": sha256_file(cfg)},
                "built_by": "developer", "modules_decompressed": compressed, "change": change, "patches": []}
        return _finish(tmp, key, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _modules_root(src: Path, into: Path) -> Path:
    """--modules DIR|TARBALL -> a folder holding lib/modules/<release>/ (a tarball is unpacked into `into`).
    Accepts a root with lib/modules/, a lib/modules folder, or a lib/modules/<release> folder."""
    if src.is_file():
        try:
            with tarfile.open(src) as tf:
                tf.extractall(into, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise InputError(f"--modules {src}: not a readable tarball ({e})") from None
        src = into
    if not src.is_dir():
        raise InputError(f"--modules {src}: no such folder or tarball")
    def is_release(d: Path) -> bool:
        return d.is_dir() and any((d / m).exists() for m in ("modules.order", "modules.dep", "kernel"))

    if is_release(src):
        return src
    for cand in (src / "lib/modules", src / "usr/lib/modules", src):
        rels = [p for p in cand.iterdir() if is_release(p)] if cand.is_dir() else []
        if len(rels) == 1:
            return rels[0]
        if len(rels) > 1:
            raise InputError(f"--modules {src}: several releases ({', '.join(p.name for p in rels)}); give one")
    raise InputError(f"--modules {src}: expected lib/modules/<release>/ with .ko files (a modules_install "
                     "INSTALL_MOD_PATH folder, its lib/modules/<release>, or a tarball of one)")


def external_kernel(bzimage: Path, modules: Path | None, change: dict | None = None) -> Path:
    """--kernel BZIMAGE --modules DIR|TARBALL (as tuxrun): an artifact with the modules decompressed and
    depmod'ed; a config found beside the bzImage (config, .config) or in the modules' folder is checked."""
    bzimage, modules = Path(bzimage).resolve(), Path(modules).resolve() if modules else None
    if not is_bzimage(bzimage):
        raise InputError(f"--kernel {bzimage}: not a bzImage (no x86 boot header), nor a kernel folder or tree")
    if modules is None:
        raise InputError(f"--kernel {bzimage} is a bzImage: give its modules with --modules DIR|TARBALL "
                         "(L1 loads kvm, kvm_amd/kvm_intel and zram as modules)")
    digest = hashlib.sha256(sha256_file(bzimage).encode())
    for f in ([modules] if modules.is_file() else sorted(modules.rglob("*"))):
        if f.is_file():
            st = f.stat()
            digest.update(f"{f.relative_to(modules) if f != modules else ''}:{st.st_size}:{st.st_mtime_ns}".encode())
    key = f"ext-{bzimage.parent.name[:24]}-{digest.hexdigest()[:16]}"
    if (_kernels() / key / "meta.json").is_file():
        return _kernels() / key
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=_kernels()))
    try:
        rdir = _modules_root(modules, tmp / "unpacked")
        release = rdir.name
        shutil.copytree(rdir, tmp / "modules/lib/modules" / release, symlinks=True)
        shutil.rmtree(tmp / "unpacked", ignore_errors=True)
        cfgs = [c for c in (bzimage.parent / "config", bzimage.parent / ".config", rdir / "config",
                            bzimage.parent.parent.parent.parent / ".config") if c.is_file()]
        if cfgs:
            check_config(cfgs[0])
            shutil.copyfile(cfgs[0], tmp / "config")
        compressed = normalize_modules(tmp / "modules", release)
        shutil.copyfile(bzimage, tmp / "bzImage")
        meta: dict[str, Any] = {
            "source": "external", "release": release, "bzimage": str(bzimage), "modules": str(modules),
            "config_sha256": sha256_file(tmp / "config") if cfgs else None, "config_checked": bool(cfgs),
            "modules_decompressed": compressed, "change": change, "patches": []}
        return _finish(tmp, key, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------------------
# `--tree PATH` / `--kernel PATH` resolution
# ----------------------------------------------------------------------------------------------------------
def is_kernel_tree(path: Path) -> bool:
    return (path / "Makefile").is_file() and (path / "Kconfig").is_file() and (path / "arch/x86").is_dir()


def tree_kernel(path: Path, build: bool, defconfig: str | None = None, base: str | None = None,
                log=print, config_file: Path | None = None) -> Path:
    """The artifact for `--tree PATH [--build] [--defconfig NAME] [--base REF]`; config_file: build with
    exactly that .config (the reproducer)."""
    path = Path(os.path.expanduser(str(path))).resolve()
    if not path.is_dir():
        raise InputError(f"--tree {path}: no such folder")
    objtree = (path / "Makefile").is_file() and (path / "source").is_symlink()   # an O= build folder
    if not (is_kernel_tree(path) or objtree):
        raise InputError(f"--tree {path}: not a kernel source tree (no Makefile, Kconfig and arch/x86/)")
    if base and not change_mod.is_git_tree(path):
        raise InputError(f"--base {base}: {path} is not a git tree")
    if defconfig and not build:
        raise InputError("--defconfig goes with --tree PATH --build (a built tree keeps its own .config)")
    src_for_identity = (path / "source").resolve() if objtree else path
    change = change_mod.tree_change(src_for_identity, base)
    if not build:
        return built_tree_kernel(path, change, log)
    if objtree:
        raise InputError(f"--tree {path} --build: give the source tree, not an O= build folder")
    if not change.get("git"):
        raise InputError(f"--tree {path} --build: not a git tree (the build copies its tracked and untracked "
                         "files and names the change by commit + diff)")
    return build_tree(path, change, defconfig, log, config_file)


# ----------------------------------------------------------------------------------------------------------
# the command line
# ----------------------------------------------------------------------------------------------------------
TREE_BUILD = "@tree"        # `--build` given without a value (cli.py's const)


def _tree_root_of(bzimage: Path) -> Path | None:
    """.../arch/x86/boot/bzImage of a built tree -> the tree (its .config and modules come with it)."""
    root = bzimage.resolve().parents[3] if len(bzimage.resolve().parents) > 3 else None
    return root if root and bzimage.resolve() == root / "arch/x86/boot/bzImage" and (root / ".config").is_file() \
        else None


def _fix_run_args(args) -> None:
    tree, build, kernel = getattr(args, "tree", None), getattr(args, "build", None), getattr(args, "kernel", None)
    if kernel and not tree and not kernel.startswith("debian:"):
        p = Path(os.path.expanduser(kernel))
        if p.is_dir() and is_kernel_tree(p):              # --kernel ~/linux: that tree, as --tree does
            args.tree, args.kernel, tree = str(p), None, str(p)
        elif p.is_file() and not args.modules and _tree_root_of(p):
            args.tree, args.kernel, tree = str(_tree_root_of(p)), None, str(_tree_root_of(p))
    if build == TREE_BUILD and not tree:
        raise InputError("--build needs a KERNEL.yaml, or --tree PATH to build that working tree")
    if tree and build not in (None, TREE_BUILD):
        if args.scenario is not None:                     # argparse gave --build the scenario's name
            raise InputError(f"--tree PATH --build takes no value (got {build!r})")
        args.scenario, args.build = build, TREE_BUILD
    if tree and args.kernel:
        raise InputError("--tree and --kernel each name the kernel to boot: give one")
    if tree and args.upto is not None:
        raise InputError("--upto N goes with --build KERNEL.yaml (a patch series), not with --tree")
    for opt in ("defconfig", "base"):
        if getattr(args, opt, None) and not tree:
            raise InputError(f"--{opt} goes with --tree PATH")
    if args.modules and not (args.kernel and Path(os.path.expanduser(args.kernel)).is_file()):
        raise InputError("--modules goes with --kernel BZIMAGE (a bzImage file)")


def fix_args(args) -> None:
    """Options that go together (one clear line, exit 2, before anything runs); `--tree PATH --build SCENARIO`
    and `bisect --git ... SCENARIO` put the scenario where argparse could not."""
    if args.cmd == "run":
        _fix_run_args(args)
    elif args.cmd == "bisect" and getattr(args, "git", None):
        if args.kernel_yaml is not None and args.scenario is not None:
            raise InputError("bisect --git takes one scenario (no KERNEL.yaml)")
        if args.kernel_yaml is not None:
            args.scenario, args.kernel_yaml = args.kernel_yaml, None
        if not args.good:
            raise InputError("bisect --git PATH needs --good REF (a commit without the finding)")
    elif args.cmd == "bisect":
        if args.kernel_yaml is None:
            raise InputError("bisect needs KERNEL.yaml (a patch series) or --git PATH --good REF --bad REF")
        for opt in ("good", "bad", "defconfig"):
            if getattr(args, opt, None):
                raise InputError(f"--{opt} goes with bisect --git PATH")


def developer_kernel(args, log=print) -> Path | None:
    """The artifact folder for --tree / --kernel BZIMAGE, or None when the run names no such kernel."""
    if getattr(args, "tree", None):
        return tree_kernel(Path(args.tree), args.build == TREE_BUILD, args.defconfig, args.base, log)
    kernel = getattr(args, "kernel", None)
    if kernel and not kernel.startswith("debian:") and Path(os.path.expanduser(kernel)).is_file():
        mods = Path(os.path.expanduser(args.modules)) if args.modules else None
        return external_kernel(Path(os.path.expanduser(kernel)), mods)
    return None
