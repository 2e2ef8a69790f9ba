"""The embedded default kernel: Debian's prebuilt 6.12 (linux-image-6.12.*-amd64-unsigned), unpacked into the cache.

Produces the same artifact layout as `harness build`: bzImage, modules/lib/modules/<release>/, config, meta.json.
Other Debian kernels (`--kernel debian:7.2`, from sid / trixie-backports) come from harness.kernel.debian.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.errors import InfraError, InputError
from harness.kernel.models import KernelMeta
from harness.paths import cache_dir

PKG_RE = re.compile(r"^(linux-image-(6\.12\.(\d+))\+deb\d+-amd64-unsigned)\s")


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        raise InfraError(f"{' '.join(cmd)} failed: {p.stderr.strip().splitlines()[-1:] or p.returncode}")
    return p.stdout


def newest_package(apt_cache_output: str) -> str:
    """Pick the newest linux-image-6.12.N+debXX-amd64-unsigned name from `apt-cache search` output."""
    best = None
    for line in apt_cache_output.splitlines():
        m = PKG_RE.match(line)
        if m and (best is None or int(m.group(3)) > best[0]):
            best = (int(m.group(3)), m.group(1))
    if best is None:
        raise InfraError("no linux-image-6.12.*-amd64-unsigned package found by apt-cache (run apt-get update?)")
    return best[1]


def find_existing() -> Path | None:
    """Newest already-unpacked prebuilt kernel in the cache, so offline reruns need no apt."""
    kdir = cache_dir() / "kernels"
    found = sorted((p for p in kdir.glob("debian-6.12.*") if re.fullmatch(r"debian-6\.12\.\d+", p.name)),
                   key=lambda p: int(p.name.rsplit(".", 1)[-1]))
    return found[-1] if found and (found[-1] / "meta.json").exists() else None


def ensure_prebuilt_kernel(refresh: bool = False) -> Path:
    """Return the artifact folder of Debian's newest prebuilt 6.12 kernel, downloading it once."""
    if not refresh and (existing := find_existing()):
        return existing
    out = _run(["apt-cache", "search", "--names-only", r"^linux-image-6\.12.*-amd64-unsigned$"])
    pkg = newest_package(out)
    release = pkg.removeprefix("linux-image-").removesuffix("-unsigned")  # 6.12.117+deb12-amd64
    dest = cache_dir() / "kernels" / f"debian-{release.split('+')[0]}"
    if (dest / "meta.json").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".tmp-") as tmp:
        t = Path(tmp)
        _run(["apt-get", "download", pkg], cwd=t)
        deb = next(t.glob("*.deb"))
        unpacked = t / "root"
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)])
        art = t / "artifact"
        (art / "modules/lib/modules").mkdir(parents=True)
        kver = next((unpacked / "lib/modules").iterdir()).name
        shutil.copy2(unpacked / f"boot/vmlinuz-{kver}", art / "bzImage")
        shutil.copy2(unpacked / f"boot/config-{kver}", art / "config")
        if (unpacked / f"boot/System.map-{kver}").exists():
            shutil.copy2(unpacked / f"boot/System.map-{kver}", art / "System.map")
        shutil.move(str(unpacked / "lib/modules" / kver), art / "modules/lib/modules" / kver)
        meta = {"source": "debian-prebuilt", "release": kver, "package": pkg,
                "deb": deb.name, "base": f"debian:{deb.name}", "patches": []}
        KernelMeta.parse(meta, f"{art}/meta.json").write(art / "meta.json")
        art.rename(dest)
    return dest


def load_kernel_dir(path: Path) -> dict:
    """Validate a kernel folder (bzImage + modules/lib/modules/<rel>) and return its metadata."""
    path = Path(path)
    if not (path / "bzImage").is_file():
        raise InputError(f"kernel folder {path} has no bzImage")
    # read through its model: a meta.json that is not one is an input error naming it
    meta = KernelMeta.load(path / "meta.json").to_json(with_schema=False) if (path / "meta.json").exists() else {}
    mods = path / "modules/lib/modules"
    rels = [p.name for p in mods.iterdir()] if mods.is_dir() else []
    if not rels:
        raise InputError(f"kernel folder {path} has no modules/lib/modules/<release>/")
    meta.setdefault("release", rels[0])
    meta.setdefault("source", "folder")
    meta["dir"] = str(path)
    return meta
