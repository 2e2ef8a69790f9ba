"""Debian kernels beyond the system's release: prebuilt images (`harness run --kernel debian:7.2`) and
linux-source packages (`base: {debian-source: "7.2"}`), from sid and trixie-backports plus the system's own
Debian suites, through the mirror the system's apt already uses.

apt runs with a PRIVATE state in the cache (cache/apt/: its sources, lists and package cache; dpkg status and
preferences /dev/null), so the system's sources, lists and packages are never changed.

Versions: "7.2" (newest of the series), "7.2.13" (newest Debian revision of it), "7.2.13-1" (exact).
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import InfraError, InputError
from harness.paths import cache_dir
from harness.util import file_lock, sha256_file

EXTRA_SUITES = ("sid", "trixie-backports")
DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
LISTS_MAX_AGE_S = 6 * 3600          # private lists older than this are refreshed before a lookup
RETRY_AGE_S = 600                   # a version not found in lists older than this: refresh once and look again
USR_SRC = Path("/usr/src")          # where an installed linux-source-<v> keeps its tarball


def _log(msg: str) -> None:
    print(f"harness: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------
# the system's apt sources (read only)
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AptSource:
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...] = ("main",)
    signed_by: str = ""


def parse_one_line(text: str) -> list[AptSource]:
    """`deb [opts] URI SUITE COMPONENT...` lines of a sources.list (deb-src and comments skipped)."""
    out = []
    for line in text.splitlines():
        m = re.match(r"^\s*deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line.split("#", 1)[0])
        if m:
            opts = dict(o.split("=", 1) for o in (m.group(1) or "").split() if "=" in o)
            out.append(AptSource((m.group(2),), (m.group(3),), tuple(m.group(4).split()), opts.get("signed-by", "")))
    return out


def parse_deb822(text: str) -> list[AptSource]:
    """Stanzas of a deb822 .sources file (Types without deb and Enabled: no skipped)."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += "\n" + ("" if line.strip() == "." else line.strip())
                continue
            key, _, val = line.partition(":")
            key = key.strip().lower()
            fields[key] = val.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        if fields.get("uris") and fields.get("suites"):
            out.append(AptSource(tuple(fields["uris"].split()), tuple(fields["suites"].split()),
                                 tuple(fields.get("components", "").split()), fields.get("signed-by", "").strip()))
    return out


def system_sources(etc: Path = Path("/etc/apt")) -> list[AptSource]:
    out = []
    if (etc / "sources.list").is_file():
        out += parse_one_line((etc / "sources.list").read_text(errors="replace"))
    parts = etc / "sources.list.d"
    for p in sorted(parts.iterdir()) if parts.is_dir() else []:
        if p.suffix == ".list":
            out += parse_one_line(p.read_text(errors="replace"))
        elif p.suffix == ".sources":
            out += parse_deb822(p.read_text(errors="replace"))
    return out


def os_codename(os_release: Path = Path("/etc/os-release")) -> str:
    try:
        m = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", os_release.read_text(), re.M)
    except OSError:
        m = None
    return m.group(1) if m else "bookworm"


def private_sources(system: list[AptSource], codename: str) -> tuple[str, str]:
    """The private deb822 sources (sid + trixie-backports on the system's Debian mirror, then the system's own
    <codename>* suites, main only) and the mirror URI."""
    mirror = next((s for s in system if codename in s.suites), None) or \
        next((s for s in system if s.uris[0].rstrip("/").endswith("/debian")), None)
    if mirror is None:
        raise InfraError(f"no Debian mirror for {codename} in /etc/apt/sources.list or sources.list.d/*: "
                         "cannot fetch Debian kernels")
    key = mirror.signed_by or (DEFAULT_KEYRING if Path(DEFAULT_KEYRING).exists() else "")
    chosen = [AptSource((mirror.uris[0],), EXTRA_SUITES, ("main",), key)]
    for s in system:
        if all(x == codename or x.startswith(codename + "-") for x in s.suites):
            s = AptSource(s.uris, s.suites, ("main",), s.signed_by)
            if s not in chosen:
                chosen.append(s)
    blocks = []
    for s in chosen:
        b = f"Types: deb\nURIs: {' '.join(s.uris)}\nSuites: {' '.join(s.suites)}\nComponents: main\n"
        if s.signed_by:
            b += "Signed-By: " + "\n ".join(ln or "." for ln in s.signed_by.split("\n")) + "\n"
        blocks.append(b)
    return "# written by kvm-dirty-harness from the system's apt sources\n\n" + "\n".join(blocks), mirror.uris[0]


# ----------------------------------------------------------------------------------------------------------
# the private apt state
# ----------------------------------------------------------------------------------------------------------
class PrivateApt:
    """apt-get / apt-cache on the private state in cache/apt/."""

    def __init__(self, root: Path | None = None, etc: Path = Path("/etc/apt"),
                 os_release: Path = Path("/etc/os-release")):
        self.root = Path(root) if root else cache_dir() / "apt"
        self.sources_text, self.mirror = private_sources(system_sources(etc), os_codename(os_release))
        self.stamp = self.root / "lists.updated"       # outside lists/: apt-get update cleans that folder

    @property
    def where(self) -> str:
        return f"{self.mirror} ({', '.join(EXTRA_SUITES)} + the system's suites)"

    def options(self) -> list[str]:
        r = self.root
        o = {"Dir::Etc::SourceList": "/dev/null", "Dir::Etc::SourceParts": r / "sources.list.d",
             "Dir::State::Lists": r / "lists", "Dir::State::status": "/dev/null", "Dir::Cache": r / "cache",
             "Dir::Cache::pkgcache": "pkgcache.bin", "Dir::Cache::srcpkgcache": "srcpkgcache.bin",
             "Dir::Etc::Preferences": "/dev/null", "Dir::Etc::PreferencesParts": "/dev/null",
             "APT::Architecture": "amd64", "APT::Architectures": "amd64", "Acquire::Languages": "none"}
        if os.geteuid() == 0:
            o["APT::Sandbox::User"] = "root"     # _apt cannot enter a cache under /root
        return [a for k, v in o.items() for a in ("-o", f"{k}={v}")]

    def command(self, tool: str, *args: str) -> list[str]:
        return [tool, "-q", *self.options(), *args]

    def _run(self, tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(tool, *args), cwd=cwd, capture_output=True, text=True,
                              env=dict(os.environ, LC_ALL="C"))

    def lists_age(self) -> float | None:
        try:
            return time.time() - self.stamp.stat().st_mtime
        except OSError:
            return None

    def _lock(self):
        return file_lock(self.root / "harness.lock")

    def update(self) -> None:
        """apt-get update of the private lists (raises InfraError when the mirror cannot be reached)."""
        for d in ("sources.list.d", "lists/partial", "cache/archives/partial"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "sources.list.d/harness.sources").write_text(self.sources_text)
        r = self._run("apt-get", "update")
        bad = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith(("E:", "W: Failed to fetch"))]
        if r.returncode != 0 or bad:
            raise InfraError(f"apt-get update of the private Debian lists in {self.root} failed (offline?): "
                             f"{(bad or (r.stderr or r.stdout).strip().splitlines() or ['?'])[0][:300]}")
        self.stamp.touch()

    def ensure_lists(self, force: bool = False) -> None:
        """Refresh lists older than LISTS_MAX_AGE_S (or whose sources changed); stale lists do when offline."""
        with self._lock():
            src = self.root / "sources.list.d/harness.sources"
            same = src.is_file() and src.read_text() == self.sources_text
            age = self.lists_age()
            if same and age is not None and age < LISTS_MAX_AGE_S and not force:
                return
            try:
                self.update()
            except InfraError as e:
                if age is None or not same:
                    raise
                _log(f"{e}; using the lists from {age / 3600:.1f} h ago")

    def show(self, names: list[str]) -> list[dict]:
        if not names:
            return []
        r = self._run("apt-cache", "show", *names)
        return parse_stanzas(r.stdout)

    def names(self, pattern: re.Pattern, prefix: str = "linux-") -> list[str]:
        r = self._run("apt-cache", "pkgnames", prefix)
        return sorted(n for n in r.stdout.split() if pattern.match(n))

    def lookup(self, pattern: re.Pattern, pick):
        """pick(stanzas of the packages whose name matches) -> result; a miss on older lists refreshes once."""
        self.ensure_lists()
        try:
            return pick(self.show(self.names(pattern)))
        except InputError:
            age = self.lists_age()
            if age is None or age < RETRY_AGE_S:
                raise
            self.ensure_lists(force=True)
            return pick(self.show(self.names(pattern)))

    def download(self, stanzas: list[dict], dest: Path) -> list[Path]:
        """apt-get download NAME=VERSION... into dest; every file checked against the index's SHA256."""
        with self._lock():
            r = self._run("apt-get", "download", *[f"{s['Package']}={s['Version']}" for s in stanzas], cwd=dest)
        if r.returncode != 0:
            raise InfraError(f"apt-get download failed (offline?): {(r.stderr or r.stdout).strip()[-300:]}")
        out = []
        for s in stanzas:
            f = dest / Path(s["Filename"]).name.replace("%3a", ":")
            if not f.is_file():
                found = list(dest.glob(f"{s['Package']}_*.deb"))
                f = found[0] if len(found) == 1 else f
            if not f.is_file() or sha256_file(f) != s.get("SHA256"):
                raise InfraError(f"{s['Package']} {s['Version']}: downloaded file missing or SHA256 mismatch")
            out.append(f)
        return out


# ----------------------------------------------------------------------------------------------------------
# package stanzas and versions (pure)
# ----------------------------------------------------------------------------------------------------------
def parse_stanzas(text: str) -> list[dict]:
    """`apt-cache show` output -> one dict per package version (continuation lines joined)."""
    out: list[dict] = []
    cur: dict[str, str] = {}
    key = None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if cur:
                out.append(cur)
            cur, key = {}, None
        elif line[0] in " \t" and key:
            cur[key] += "\n" + line.strip()
        else:
            key, _, val = line.partition(":")
            cur[key] = val.strip()
    return out


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    return ord(c) if c.isalpha() else ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i, j = i + 1, j + 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        diff = 0
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            diff = diff or ord(a[i]) - ord(b[j])
            i, j = i + 1, j + 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if diff:
            return diff
    return 0


def _split(v: str) -> tuple[int, str, str]:
    epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
    up, _, rev = rest.rpartition("-") if "-" in rest else (rest, "", "")
    return int(epoch or 0), up, rev


def compare_versions(a: str, b: str) -> int:
    """dpkg's version order (<0, 0, >0), as `dpkg --compare-versions`."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    return (ea - eb) or _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


version_key = functools.cmp_to_key(compare_versions)


def upstream_of(version: str) -> str:
    return _split(version)[1].split("~")[0].split("+")[0]


@dataclass(frozen=True)
class Request:
    """What the user asked for: a series ("7.2"), an upstream version ("7.2.13") or an exact one ("7.2.13-1")."""
    text: str
    kind: str
    series: str

    def matches(self, version: str) -> bool:
        up = upstream_of(version)
        if self.kind == "exact":
            return version == self.text
        if self.kind == "upstream":
            return up == self.text
        return up == self.series or up.startswith(self.series + ".")


def parse_request(text: str, what: str = "debian:") -> Request:
    m = re.fullmatch(r"(\d+\.\d+)(\.\d+)?(-[0-9A-Za-z.+~]+)?", text.strip())
    if not m:
        raise InputError(f"{what}{text}: expected a Debian kernel version like 7.2, 7.2.13 or 7.2.13-1")
    kind = "exact" if m.group(3) else "upstream" if m.group(2) else "series"
    return Request(text.strip(), kind, m.group(1))


def _not_offered(what: str, req: Request, noun: str, offered: list[str], where: str) -> InputError:
    listed = ", ".join(sorted(set(offered), key=version_key)) or "none"
    return InputError(f"{what}{req.text}: no {noun} of that version on {where}; offered: {listed}")


# ----------------------------------------------------------------------------------------------------------
# prebuilt kernels
# ----------------------------------------------------------------------------------------------------------
PREBUILT_NAME = re.compile(r"^linux-(binary-unsigned|binary|modules|base|image)-(\d+\.\d+\.\d+\+deb\d+-amd64)"
                           r"(-unsigned)?$")
# preferred first: unsigned images, then signed ones (the signature does not matter to QEMU -kernel)
STYLES = (("split", ("binary", "modules", "base")), ("unsigned", ("image-unsigned",)),
          ("split-signed", ("binary-signed", "modules", "base")), ("signed", ("image-signed",)))


@dataclass
class Prebuilt:
    abi: str                    # 7.2.13+deb14-amd64
    version: str                # 7.2.13-1
    style: str                  # split | split-signed (binary[-unsigned] + modules + base) | unsigned | signed
    packages: list[dict] = field(default_factory=list)

    @property
    def primary(self) -> dict:
        return self.packages[0]

    def record(self) -> list[dict]:
        return [{"package": s["Package"], "version": s["Version"], "sha256": s.get("SHA256"),
                 "size": int(s.get("Size", 0) or 0), "filename": s.get("Filename")} for s in self.packages]


def prebuilt_candidates(stanzas: list[dict]) -> list[Prebuilt]:
    """Complete amd64 kernels in the stanzas: the split layout of newer kernels (linux-binary-unsigned-* or
    linux-binary-* + linux-modules-* + linux-base-*) or one linux-image-*[-unsigned] (not the linux-image meta
    package of a split kernel)."""
    roles: dict[tuple[str, str], dict[str, dict]] = {}
    for st in stanzas:
        m = PREBUILT_NAME.match(st.get("Package", ""))
        if not m or "Version" not in st:
            continue
        kind, abi, unsigned = m.groups()
        if kind == "image":
            deps = st.get("Depends", "")
            if not unsigned and ("linux-binary-" in deps or "linux-modules-" in deps):
                continue
            role = "image-unsigned" if unsigned else "image-signed"
        elif unsigned:
            continue
        else:
            role = {"binary-unsigned": "binary", "binary": "binary-signed"}.get(kind, kind)
        roles.setdefault((abi, st["Version"]), {})[role] = st
    out = []
    for (abi, ver), have in roles.items():
        for style, need in STYLES:
            if all(r in have for r in need):
                out.append(Prebuilt(abi, ver, style, [have[r] for r in need]))
                break
    return sorted(out, key=lambda c: version_key(c.version))


def select_prebuilt(cands: list[Prebuilt], req: Request, where: str = "the mirror") -> Prebuilt:
    hits = [c for c in cands if req.matches(c.version)]
    if not hits:
        raise _not_offered("debian:", req, "prebuilt amd64 kernel", [c.version for c in cands], where)
    return max(hits, key=lambda c: version_key(c.version))


def lay_out(root: Path, art: Path) -> str:
    """Unpacked packages (root) -> the artifact layout (bzImage, config, System.map, modules/lib/modules/<rel>/);
    returns the release. Handles /boot + /lib/modules (6.12) and everything under /usr/lib/modules (7.x)."""
    mroots = [root / "usr/lib/modules", root / "lib/modules"]
    rels = sorted({p.name for m in mroots if m.is_dir() for p in m.iterdir() if p.is_dir()})
    if len(rels) != 1:
        raise InfraError(f"expected one kernel release in the unpacked packages, found {rels or 'none'}")
    rel = rels[0]
    mdir = art / "modules/lib/modules" / rel
    for m in mroots:
        if (m / rel).is_dir():
            shutil.copytree(m / rel, mdir, symlinks=True, dirs_exist_ok=True)
    boot = root / "boot"
    for names, dst, required in (([f"vmlinuz-{rel}"], "bzImage", True), ([f"config-{rel}"], "config", True),
                                 ([f"System.map-{rel}"], "System.map", False)):
        cands = [boot / n for n in names]
        cands += [mdir / n for n in ({"bzImage": ["vmlinuz", "vmlinuz.unsigned", "vmlinuz.efi"],
                                      "config": ["config"], "System.map": ["System.map"]}[dst])]
        src = next((c for c in cands if c.is_file()), None)
        if src is None:
            if required:
                raise InfraError(f"no {dst} in the unpacked packages (looked for {', '.join(c.name for c in cands)})")
            continue
        shutil.move(str(src), art / dst)
        for c in cands:                      # the signed/unsigned twin must not stay among the modules
            if c.parent == mdir and c.exists():
                c.unlink()
    for link in ("build", "source"):
        if (mdir / link).is_symlink():
            (mdir / link).unlink()
    return rel


def depmod(modroot: Path, release: str) -> None:
    exe = shutil.which("depmod") or next((p for p in ("/usr/sbin/depmod", "/sbin/depmod") if Path(p).exists()), None)
    if exe is None:
        raise InfraError("depmod not found (apt-get install kmod)")
    r = subprocess.run([exe, "-b", str(modroot), release], capture_output=True, text=True)
    if r.returncode != 0 or not (modroot / "lib/modules" / release / "modules.dep").is_file():
        raise InfraError(f"depmod -b {modroot} {release} failed: {r.stderr.strip()[-300:]}")


def _cached_kernels(req: Request) -> list[Path]:
    found = []
    for p in (cache_dir() / "kernels").glob("debian-pkg-*"):
        try:
            meta = json.loads((p / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        if meta.get("source") == "debian-package" and req.matches(meta.get("version", "")):
            found.append((meta["version"], p))
    return [p for _, p in sorted(found, key=lambda x: version_key(x[0]))]


def ensure_debian_kernel(spec: str, log=_log) -> Path:
    """The artifact folder of Debian's prebuilt kernel `spec` ("7.2", "7.2.13", "7.2.13-1"), fetched once."""
    req = parse_request(spec)
    kdir = cache_dir() / "kernels"
    if req.kind == "exact" and (kdir / f"debian-pkg-{req.text}" / "meta.json").is_file():
        return kdir / f"debian-pkg-{req.text}"
    try:
        apt = PrivateApt()
        cand = apt.lookup(PREBUILT_NAME, lambda sts: select_prebuilt(prebuilt_candidates(sts), req, apt.where))
    except InfraError as e:
        cached = _cached_kernels(req)
        if not cached:
            raise
        log(f"{e}; using the cached {cached[-1].name}")
        return cached[-1]
    dest = kdir / f"debian-pkg-{cand.version}"
    if (dest / "meta.json").is_file():
        return dest
    kdir.mkdir(parents=True, exist_ok=True)
    log(f"fetching Debian {cand.version} ({', '.join(s['Package'] for s in cand.packages)}) from {apt.mirror}")
    with tempfile.TemporaryDirectory(dir=kdir, prefix=".tmp-debian-") as tmp:
        t = Path(tmp)
        (t / "dl").mkdir()
        debs = apt.download(cand.packages, t / "dl")
        for deb in debs:
            _dpkg_x(deb, t / "root")
        art = t / "artifact"
        art.mkdir()
        rel = lay_out(t / "root", art)
        depmod(art / "modules", rel)
        prim = cand.primary
        pkgs = cand.record()
        base = {"kind": "debian-package", "id": f"{prim['Package']}={cand.version} sha256:{prim['SHA256'][:12]}",
                "fetched_for": f"debian:{spec}", "package": prim["Package"], "version": cand.version,
                "sha256": prim["SHA256"], "style": cand.style, "packages": pkgs, "mirror": apt.mirror}
        meta = {"source": "debian-package", "release": rel, "package": prim["Package"], "version": cand.version,
                "sha256": prim["SHA256"], "base": base, "patches": [],
                "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (art / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.chmod(art, 0o755)
        try:
            art.rename(dest)
        except OSError:
            if not (dest / "meta.json").is_file():    # another run made it first: fine
                raise
    return dest


def _dpkg_x(deb: Path, root: Path) -> None:
    r = subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], capture_output=True, text=True)
    if r.returncode != 0:
        raise InfraError(f"dpkg-deb -x {deb.name} failed: {r.stderr.strip()[-300:]}")


# ----------------------------------------------------------------------------------------------------------
# linux-source-<series>
# ----------------------------------------------------------------------------------------------------------
def select_source(stanzas: list[dict], req: Request, where: str = "the mirror") -> dict:
    pkg = f"linux-source-{req.series}"
    offered = [s for s in stanzas if s.get("Package") == pkg and "Version" in s]
    hits = [s for s in offered if req.matches(s["Version"])]
    if not hits:
        raise _not_offered("base debian-source ", req, pkg, [s["Version"] for s in offered], where)
    return max(hits, key=lambda s: version_key(s["Version"]))


def _installed_version(pkg: str) -> str:
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


def _fetched_sources(req: Request) -> list[dict]:
    found = []
    for p in (cache_dir() / "debian/src").glob(f"linux-source-{req.series}_*/meta.json"):
        try:
            m = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if req.matches(m.get("package_version", "")) and Path(m.get("tarball", "")).is_file():
            found.append(m)
    return sorted(found, key=lambda m: version_key(m["package_version"]))


def source_tarball(version: str, fetch: bool = True, log=_log) -> dict:
    """linux-source-<series> for a debian-source base: {package, package_version, tarball, ...}. An installed
    /usr/src tarball of a matching version wins; otherwise the private apt state (downloaded once into
    cache/debian/src/, with the .deb's sha256)."""
    req = parse_request(version, what="base debian-source ")
    pkg = f"linux-source-{req.series}"
    tb = USR_SRC / f"{pkg}.tar.xz"
    inst = _installed_version(pkg) if tb.is_file() else ""
    if tb.is_file() and (req.kind == "series" or req.matches(inst)):
        return {"package": pkg, "package_version": inst, "tarball": str(tb), "from": "installed"}
    fetched = _fetched_sources(req)
    if fetched and (req.kind == "exact" or not fetch):
        return fetched[-1]
    if not fetch:
        raise InputError(f"{tb} missing and linux-source {version} not fetched yet (harness build fetches it)")
    try:
        apt = PrivateApt()
        st = apt.lookup(re.compile(rf"^{re.escape(pkg)}$"), lambda sts: select_source(sts, req, apt.where))
    except InfraError as e:
        if not fetched:
            raise
        log(f"{e}; using the fetched {fetched[-1]['package']} {fetched[-1]['package_version']}")
        return fetched[-1]
    store = cache_dir() / "debian/src"
    dest = store / f"{pkg}_{st['Version']}"
    if (dest / "meta.json").is_file():
        return json.loads((dest / "meta.json").read_text())
    store.mkdir(parents=True, exist_ok=True)
    log(f"fetching {pkg} {st['Version']} ({int(st.get('Size', 0) or 0) >> 20} MiB) from {apt.mirror}")
    with tempfile.TemporaryDirectory(dir=store, prefix=".tmp-") as tmp:
        t = Path(tmp)
        (t / "dl").mkdir()
        (deb,) = apt.download([st], t / "dl")
        _dpkg_x(deb, t / "root")
        tars = sorted((t / "root/usr/src").glob(f"{pkg}.tar.*"))
        if not tars:
            raise InfraError(f"{deb.name} holds no usr/src/{pkg}.tar.*")
        out = t / "out"
        out.mkdir()
        shutil.move(str(tars[0]), out / tars[0].name)
        meta = {"package": pkg, "package_version": st["Version"], "tarball": str(dest / tars[0].name),
                "from": "fetched", "deb": deb.name, "deb_sha256": st["SHA256"], "mirror": apt.mirror}
        (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:
            out.rename(dest)
        except OSError:
            if not (dest / "meta.json").is_file():    # another build fetched it first: fine
                raise
    return meta
