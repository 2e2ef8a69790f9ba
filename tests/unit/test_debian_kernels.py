"""Debian kernels beyond bookworm (harness.kernel.debian): the system's apt sources -> a private apt state,
version selection from recorded `apt-cache show` text, the artifact layout of split 7.x packages (real .debs
made with dpkg-deb), linux-source bases; and a git base on a real repository made from kernel source files."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from argparse import Namespace
from pathlib import Path

import pytest

from harness.errors import InputError
from harness.kernel import debian
from harness.kernel.debian import (PREBUILT_NAME, AptSource, PrivateApt, Prebuilt, compare_versions,
                                   parse_deb822, parse_one_line, parse_request, parse_stanzas,
                                   prebuilt_candidates, private_sources, select_prebuilt, select_source)
from harness.paths import cache_dir

FIX = Path(__file__).resolve().parent.parent / "fixtures/debian"
SHOW = (FIX / "apt-cache-show.txt").read_text()     # recorded on 2026-12-01 from sid + trixie-backports + bookworm
REAL_CACHE = cache_dir()                             # the real cache (before the fixture below redirects it)
needs_dpkg = pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="dpkg-deb not installed")

DEB822 = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://mirror.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://disabled.example/debian
Suites: bookworm-backports
Components: main
Enabled: no
"""


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------------------------------------
# the system's sources -> the private apt state
# ----------------------------------------------------------------------------------------------------------
def test_sources_one_line_and_deb822():
    one = parse_one_line("# a comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n"
                         "deb-src http://m.example/debian bookworm main\ndeb https://other.example/apt stable main\n")
    assert one == [AptSource(("http://m.example/debian",), ("bookworm",), ("main",), "/k.gpg"),
                   AptSource(("https://other.example/apt",), ("stable",), ("main",), "")]
    st = parse_deb822(DEB822)
    assert [s.uris[0] for s in st] == ["http://mirror.example/debian", "http://mirror.example/debian-security"]
    assert st[0].suites == ("bookworm", "bookworm-updates") and st[0].components == ("main", "contrib")


def test_private_sources_use_the_systems_mirror(tmp_path):
    etc = tmp_path / "etc/apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list.d/debian.sources").write_text(DEB822)
    (etc / "sources.list.d/node.sources").write_text(
        "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\nComponents: main\n")
    (etc / "sources.list.d/x.list.disabled").write_text("deb http://ignored.example/debian sid main\n")
    text, mirror = private_sources(debian.system_sources(etc), "bookworm")
    assert mirror == "http://mirror.example/debian"
    st = parse_deb822(text)
    assert st[0] == AptSource(("http://mirror.example/debian",), ("sid", "trixie-backports"), ("main",),
                              "/usr/share/keyrings/debian-archive-keyring.gpg")
    assert [s.suites for s in st[1:]] == [("bookworm", "bookworm-updates"), ("bookworm-security",)]
    assert "nodesource" not in text and "ignored" not in text and all(s.components == ("main",) for s in st)
    # a system on "stable": the mirror is the .../debian URI; no Debian URI at all: one clear error
    assert private_sources(parse_one_line("deb http://m2.example/debian/ stable main\n"), "trixie")[1] == \
        "http://m2.example/debian/"
    with pytest.raises(Exception, match="no Debian mirror for bookworm"):
        private_sources(parse_deb822((etc / "sources.list.d/node.sources").read_text()), "bookworm")


def test_private_apt_command_never_touches_the_system_state(tmp_path):
    etc = tmp_path / "etc/apt"
    etc.mkdir(parents=True)
    (etc / "sources.list").write_text("deb http://deb.debian.org/debian bookworm main\n")
    apt = PrivateApt(tmp_path / "apt", etc=etc)
    cmd = apt.command("apt-get", "update")
    opts = dict(cmd[i + 1].split("=", 1) for i, a in enumerate(cmd) if a == "-o")
    assert cmd[:2] == ["apt-get", "-q"] and cmd[-1] == "update"
    assert opts["Dir::Etc::SourceList"] == "/dev/null" and opts["Dir::State::status"] == "/dev/null"
    assert opts["Dir::Etc::SourceParts"] == str(tmp_path / "apt/sources.list.d")
    assert opts["Dir::State::Lists"] == str(tmp_path / "apt/lists")
    assert opts["Dir::Cache"] == str(tmp_path / "apt/cache")
    assert opts["Dir::Etc::Preferences"] == opts["Dir::Etc::PreferencesParts"] == "/dev/null"
    assert not any(v.startswith(("/etc/apt", "/var/lib/apt", "/var/cache/apt")) for v in opts.values())
    assert "deb.debian.org/debian" in apt.sources_text and "sid trixie-backports" in apt.sources_text


def test_lists_refresh_policy_and_offline(tmp_path, monkeypatch):
    from harness.errors import InfraError
    etc = tmp_path / "etc/apt"
    etc.mkdir(parents=True)
    (etc / "sources.list").write_text("deb http://deb.debian.org/debian bookworm main\n")
    apt = PrivateApt(tmp_path / "apt", etc=etc)
    calls = []

    def offline():
        calls.append(1)
        raise InfraError("apt-get update failed (offline?)")
    monkeypatch.setattr(apt, "update", offline)
    with pytest.raises(InfraError, match="offline"):          # no lists at all: cannot go on
        apt.ensure_lists()
    (tmp_path / "apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "apt/sources.list.d/harness.sources").write_text(apt.sources_text)
    apt.stamp.touch()
    apt.ensure_lists()                                         # fresh lists: no update
    assert calls == [1]
    old = time.time() - debian.LISTS_MAX_AGE_S - 60
    os.utime(apt.stamp, (old, old))
    apt.ensure_lists()                                         # stale + offline: the old lists do
    assert calls == [1, 1]


def test_offline_uses_a_cached_kernel_of_the_series(tmp_path, monkeypatch):
    from harness.errors import InfraError
    k = cache_dir() / "kernels/debian-pkg-7.2.12-1~bpo13+1"
    k.mkdir(parents=True)
    (k / "meta.json").write_text(json.dumps({"source": "debian-package", "version": "7.2.12-1~bpo13+1"}))

    class Offline:
        def __init__(self):
            raise InfraError("apt-get update failed (offline?)")
    monkeypatch.setattr(debian, "PrivateApt", Offline)
    logged = []
    assert debian.ensure_debian_kernel("7.2", log=logged.append) == k and "offline" in logged[0]
    with pytest.raises(InfraError, match="offline"):
        debian.ensure_debian_kernel("7.3", log=logged.append)


# ----------------------------------------------------------------------------------------------------------
# versions (pure)
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("a,b,sign", [
    ("7.2.13-1", "7.2.12-1~bpo13+1", 1), ("7.2.9-1~bpo13+1", "7.2.12-1~bpo13+1", -1),
    ("7.3.4-1~bpo13+1", "7.2.13-1", 1), ("6.12.115-2~deb12u1", "6.12.117-1~deb12u1", -1),
    ("1.0~rc1-1", "1.0-1", -1), ("1.0-1", "1.0-1", 0), ("1:0.1-1", "9.9-1", 1), ("1.0a-1", "1.0-1", 1),
    ("1.0+b1-1", "1.0-1", 1), ("1.01-1", "1.1-1", 0), ("2.0-1~", "2.0-1", -1),
])
def test_compare_versions_like_dpkg(a, b, sign):
    got = compare_versions(a, b)
    assert (got > 0) - (got < 0) == sign
    if shutil.which("dpkg"):
        op = {1: "gt", 0: "eq", -1: "lt"}[sign]
        assert subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0


def test_parse_request():
    assert (parse_request("7.2").kind, parse_request("7.2.13").kind, parse_request("7.2.13-1").kind) == \
        ("series", "upstream", "exact")
    assert parse_request("7.2.12-1~bpo13+1").series == "7.2"
    for bad in ("seven", "7", "7.2.x", ""):
        with pytest.raises(InputError, match="expected a Debian kernel version"):
            parse_request(bad)


def _cands() -> list[Prebuilt]:
    return prebuilt_candidates([s for s in parse_stanzas(SHOW) if PREBUILT_NAME.match(s["Package"])])


def test_candidates_from_recorded_apt_cache_show():
    by = {c.version: c for c in _cands()}
    # 6.19.14 has a signed linux-binary but no linux-modules/linux-base in these suites: not a complete kernel
    assert sorted(by, key=debian.version_key) == ["6.12.115-2~deb12u1", "6.12.117-1~deb12u1", "7.2.12-1~bpo13+1",
                                                  "7.2.13-1", "7.3.4-1~bpo13+1"]
    k = by["7.2.13-1"]
    assert k.style == "split" and k.abi == "7.2.13+deb14-amd64"
    assert [p["Package"] for p in k.packages] == ["linux-binary-unsigned-7.2.13+deb14-amd64",
                                                  "linux-modules-7.2.13+deb14-amd64", "linux-base-7.2.13+deb14-amd64"]
    assert k.record()[0]["sha256"] == "9990f14b7bea8932d3377894b4c81811d1414eea792720881a067578f913f2b4"
    assert by["6.12.117-1~deb12u1"].style == "unsigned"
    assert by["6.12.117-1~deb12u1"].primary["Package"] == "linux-image-6.12.117+deb12-amd64-unsigned"


@pytest.mark.parametrize("req,want", [
    ("7.2", "7.2.13-1"), ("7.3", "7.3.4-1~bpo13+1"), ("6.12", "6.12.117-1~deb12u1"),
    ("7.2.12", "7.2.12-1~bpo13+1"), ("7.2.13-1", "7.2.13-1"), ("6.12.115-2~deb12u1", "6.12.115-2~deb12u1"),
])
def test_select_prebuilt(req, want):
    assert select_prebuilt(_cands(), parse_request(req)).version == want


@pytest.mark.parametrize("req", ["7.9", "7.2.99", "7.2.13-2", "6.19"])
def test_absent_version_is_one_line_listing_what_is_offered(req):
    with pytest.raises(InputError) as e:
        select_prebuilt(_cands(), parse_request(req), "http://deb.debian.org/debian (sid, trixie-backports)")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"debian:{req}: no prebuilt amd64 kernel of that version on "
                                               "http://deb.debian.org/debian (sid, trixie-backports); offered: ")
    assert msg.endswith("offered: 6.12.115-2~deb12u1, 6.12.117-1~deb12u1, 7.2.12-1~bpo13+1, 7.2.13-1, 7.3.4-1~bpo13+1")


def test_select_source_from_recorded_text():
    sts = parse_stanzas(SHOW)
    assert select_source(sts, parse_request("7.2"))["Version"] == "7.2.13-1"
    assert select_source(sts, parse_request("7.2.9"))["Version"] == "7.2.9-1~bpo13+1"
    assert select_source(sts, parse_request("7.3"))["SHA256"] == \
        "703e369ddd4cce971452f5a593ee55df3a5c10c83caf0fa0df039633ed181ee3"
    with pytest.raises(InputError, match=r"^base debian-source 7.2.14: no linux-source-7.2 of that version on the "
                                         r"mirror; offered: 7.2.6-1~bpo13\+1, 7.2.9"):
        select_source(sts, parse_request("7.2.14"))


# ----------------------------------------------------------------------------------------------------------
# fetching: real .debs (dpkg-deb -b) served by a fake apt
# ----------------------------------------------------------------------------------------------------------
REL = "7.2.13+deb14-amd64"


def _deb(tmp: Path, name: str, version: str, files: dict[str, bytes]) -> dict:
    root = tmp / f"pkg-{name}_{version}"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n"
                                         "Maintainer: t <t@t>\nDescription: test\n")
    deb = tmp / f"{name}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "-Zgzip", "-b", str(root), str(deb)], check=True, capture_output=True)
    return {"Package": name, "Version": version, "Filename": f"pool/main/l/linux/{deb.name}",
            "Size": str(deb.stat().st_size), "SHA256": hashlib.sha256(deb.read_bytes()).hexdigest(), "_deb": deb}


class FakeApt(PrivateApt):
    """The real lookup/download plumbing minus apt: stanzas in memory, downloads copy local .debs."""

    def __init__(self, stanzas):
        self.stanzas, self.mirror, self.root = stanzas, "http://mirror.example/debian", Path("/nonexistent")
        self.stamp = self.root / "stamp"
        self.downloads = 0

    def ensure_lists(self, force=False):
        pass

    def names(self, pattern, prefix="linux-"):
        return [s["Package"] for s in self.stanzas if pattern.match(s["Package"])]

    def show(self, names):
        return [{k: v for k, v in s.items() if k != "_deb"} for s in self.stanzas if s["Package"] in names]

    def download(self, stanzas, dest):
        self.downloads += 1
        by = {(s["Package"], s["Version"]): s for s in self.stanzas}
        out = []
        for s in stanzas:
            out.append(dest / by[s["Package"], s["Version"]]["_deb"].name)
            shutil.copy(by[s["Package"], s["Version"]]["_deb"], out[-1])
        return out


def _split_kernel(tmp: Path) -> list[dict]:
    m = f"usr/lib/modules/{REL}"
    return [
        _deb(tmp, f"linux-binary-unsigned-{REL}", "7.2.13-1", {f"{m}/vmlinuz.unsigned": b"bzImage!"}),
        _deb(tmp, f"linux-modules-{REL}", "7.2.13-1", {f"{m}/kernel/arch/x86/kvm/kvm.ko.xz": b"not a module"}),
        _deb(tmp, f"linux-base-{REL}", "7.2.13-1", {f"{m}/config": b"CONFIG_KVM=m\n", f"{m}/System.map": b"map",
                                                    f"{m}/modules.builtin": b"kernel/drivers/virtio/virtio_pci.ko\n",
                                                    f"{m}/modules.order": b""}),
        _deb(tmp, f"linux-image-{REL}", "7.2.13-1", {"usr/share/doc/x": b""}) | {
            "Depends": f"linux-binary-{REL} (= 7.2.13-1), linux-modules-{REL} (= 7.2.13-1)"},
    ]


@needs_dpkg
def test_split_kernel_fetched_and_laid_out(tmp_path, monkeypatch):
    from harness.kernel.prebuilt import load_kernel_dir
    fake = FakeApt(_split_kernel(tmp_path))
    monkeypatch.setattr(debian, "PrivateApt", lambda: fake)
    monkeypatch.setattr(debian, "depmod", lambda root, rel: (root / "lib/modules" / rel / "modules.dep").write_text(""))
    art = debian.ensure_debian_kernel("7.2", log=lambda m: None)
    assert art.name == "debian-pkg-7.2.13-1"
    assert (art / "bzImage").read_bytes() == b"bzImage!" and (art / "config").read_text() == "CONFIG_KVM=m\n"
    mdir = art / "modules/lib/modules" / REL
    assert (mdir / "kernel/arch/x86/kvm/kvm.ko.xz").is_file() and (mdir / "modules.builtin").is_file()
    assert not (mdir / "vmlinuz.unsigned").exists() and not (mdir / "config").exists()
    meta = json.loads((art / "meta.json").read_text())
    assert meta["source"] == "debian-package" and meta["release"] == REL and meta["version"] == "7.2.13-1"
    assert meta["package"] == f"linux-binary-unsigned-{REL}" and meta["sha256"] == fake.stanzas[0]["SHA256"]
    assert [p["package"] for p in meta["base"]["packages"]] == [s["Package"] for s in fake.stanzas[:3]]
    assert meta["base"]["id"].startswith(f"linux-binary-unsigned-{REL}=7.2.13-1 sha256:")
    assert load_kernel_dir(art)["release"] == REL
    # again: the same folder, nothing downloaded; an exact version needs no apt at all
    assert debian.ensure_debian_kernel("7.2", log=lambda m: None) == art and fake.downloads == 1
    monkeypatch.setattr(debian, "PrivateApt", lambda: pytest.fail("apt used for a cached exact version"))
    assert debian.ensure_debian_kernel("7.2.13-1") == art


@needs_dpkg
def test_old_style_single_image_layout_and_real_depmod(tmp_path):
    if not (shutil.which("depmod") or Path("/usr/sbin/depmod").exists() or Path("/sbin/depmod").exists()):
        pytest.skip("depmod not installed")
    rel = "6.12.117+deb12-amd64"
    root = tmp_path / "root"
    for f, data in {f"boot/vmlinuz-{rel}": "bz", f"boot/config-{rel}": "CONFIG_X=y\n",
                    f"lib/modules/{rel}/kernel/x.txt": "", f"lib/modules/{rel}/modules.builtin": ""}.items():
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text(data)
    os.symlink("/usr/src/linux-headers", root / f"lib/modules/{rel}/build")
    art = tmp_path / "art"
    art.mkdir()
    assert debian.lay_out(root, art) == rel
    assert (art / "bzImage").read_text() == "bz" and not (art / "System.map").exists()
    assert not (art / "modules/lib/modules" / rel / "build").is_symlink()
    debian.depmod(art / "modules", rel)
    assert (art / "modules/lib/modules" / rel / "modules.dep").is_file()


def test_run_resolves_debian_kernel_argument(tmp_path, monkeypatch):
    from harness.scenario import run
    art = tmp_path / "k"
    (art / "modules/lib/modules/7.2.13+deb14-amd64").mkdir(parents=True)
    (art / "bzImage").write_text("")
    (art / "meta.json").write_text(json.dumps({"source": "debian-package", "version": "7.2.13-1"}))
    asked = []
    monkeypatch.setattr(debian, "ensure_debian_kernel", lambda spec: asked.append(spec) or art)
    meta = run.resolve_kernel(Namespace(build=None, kernel="debian:7.2"))
    assert asked == ["7.2"] and meta["release"] == "7.2.13+deb14-amd64" and meta["dir"] == str(art)


# ----------------------------------------------------------------------------------------------------------
# base: {debian-source: ...}
# ----------------------------------------------------------------------------------------------------------
def _source_debs(tmp: Path) -> list[dict]:
    out = []
    for ver, sub in (("7.2.12-1~bpo13+1", 12), ("7.2.13-1", 13)):
        src = tmp / f"src-{sub}/linux-source-7.2"
        (src / "kernel").mkdir(parents=True)
        (src / "Makefile").write_text(f"VERSION = 7\nPATCHLEVEL = 2\nSUBLEVEL = {sub}\nEXTRAVERSION =\n")
        tb = tmp / f"t{sub}/linux-source-7.2.tar.xz"
        tb.parent.mkdir()
        with tarfile.open(tb, "w:xz") as t:
            t.add(src, arcname="linux-source-7.2")
        out.append(_deb(tmp, "linux-source-7.2", ver, {"usr/src/linux-source-7.2.tar.xz": tb.read_bytes()}))
    return out


@needs_dpkg
def test_debian_source_base_fetched_through_private_apt(tmp_path, monkeypatch):
    from harness.kernel import source
    fake = FakeApt(_source_debs(tmp_path))
    monkeypatch.setattr(debian, "PrivateApt", lambda: fake)
    monkeypatch.setattr(debian, "USR_SRC", tmp_path / "no-usr-src")
    y = tmp_path / "K.yaml"
    y.write_text('base: {debian-source: "7.2"}\n')
    ident = source.base_identity(source.load_kernel_yaml(y))
    tb = Path(ident["tarball"])
    assert ident["package"] == "linux-source-7.2" and ident["package_version"] == "7.2.13-1"
    assert ident["deb_sha256"] == fake.stanzas[1]["SHA256"] and ident["from"] == "fetched"
    assert ident["sha256"] == hashlib.sha256(tb.read_bytes()).hexdigest()
    assert ident["id"] == f"debian-7.2-{ident['sha256'][:12]}" and tb.is_relative_to(tmp_path / "cache")
    tree = source.prepare_source(source.load_kernel_yaml(y), ident, log=lambda m: None)
    assert tree.identity["version"] == "7.2.13"
    # pinned to the older version: a different tarball, a different base
    y.write_text('base: {debian-source: "7.2.12-1~bpo13+1"}\n')
    old = source.base_identity(source.load_kernel_yaml(y))
    assert old["package_version"] == "7.2.12-1~bpo13+1" and old["id"] != ident["id"] and fake.downloads == 2
    # install=False (lava) finds a fetched tarball without apt
    monkeypatch.setattr(debian, "PrivateApt", lambda: pytest.fail("apt used"))
    assert source.debian_tarball("7.2.13-1", install=False) == tb
    y.write_text('base: {debian-source: "7.2.13-1"}\n')
    assert source.base_identity(source.load_kernel_yaml(y))["id"] == ident["id"]     # a fetched exact pin: no apt
    with pytest.raises(InputError, match="linux-source 7.3 not fetched"):
        source.debian_tarball("7.3", install=False)


@needs_dpkg
def test_debian_source_absent_version(tmp_path, monkeypatch):
    from harness.kernel import source
    fake = FakeApt(_source_debs(tmp_path))
    monkeypatch.setattr(debian, "PrivateApt", lambda: fake)
    monkeypatch.setattr(debian, "USR_SRC", tmp_path / "no-usr-src")
    y = tmp_path / "K.yaml"
    y.write_text('base: {debian-source: "7.2.14"}\n')
    with pytest.raises(InputError, match=r"^base debian-source 7.2.14: no linux-source-7.2 of that version on "
                                         r"http://mirror.example/debian \(sid, trixie-backports \+ the system's "
                                         r"suites\); offered: 7.2.12-1~bpo13\+1, 7.2.13-1$"):
        source.base_identity(source.load_kernel_yaml(y))


# ----------------------------------------------------------------------------------------------------------
# base: {git: PATH, ref: REF} on a real git repository made of real kernel source files
# ----------------------------------------------------------------------------------------------------------
KFILES = ["Makefile", "arch/x86/kvm/mmu/tdp_mmu.c", "arch/x86/kvm/Kconfig", "virt/kvm/kvm_main.c"]


def _kernel_files(dest: Path) -> None:
    """A few files of a real unpacked kernel tree: one in the harness cache, else from /usr/src's tarball."""
    trees = sorted(p.parents[4] for p in (REAL_CACHE / "src").glob("*/arch/x86/kvm/mmu/tdp_mmu.c"))
    if trees:
        for f in KFILES:
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(trees[0] / f, dest / f)
        return
    tbs = sorted(Path("/usr/src").glob("linux-source-*.tar.xz"))
    if not tbs:
        pytest.skip("no unpacked kernel tree in the cache and no /usr/src/linux-source-*.tar.xz")
    top = tbs[0].name.removesuffix(".tar.xz")
    subprocess.run(["tar", "-xf", str(tbs[0]), "-C", str(dest), "--strip-components=1",
                    *[f"{top}/{f}" for f in KFILES]], check=True)


def test_git_base_real_repo_ref_not_head(tmp_path):
    from harness.kernel import source
    repo = tmp_path / "linux"
    repo.mkdir()
    _kernel_files(repo)
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")

    def g(*a):
        return subprocess.run(["git", *a], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()

    g("init", "-q", "-b", "master")
    g("add", "-A")
    g("commit", "-q", "-m", "import a few kernel files")
    g("tag", "v-import")
    first = g("rev-parse", "HEAD")
    tdp = repo / "arch/x86/kvm/mmu/tdp_mmu.c"
    orig = tdp.read_text()
    tdp.write_text("/* second commit */\n" + orig)
    g("commit", "-q", "-am", "tdp_mmu: a comment")
    second = g("rev-parse", "HEAD")
    g("branch", "stable", first)
    version = source.makefile_version(repo)
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?\S*", version)
    y = tmp_path / "K.yaml"
    for ref, want in (("v-import", first), ("stable", first), ("HEAD~1", first), (first[:12], first),
                      ("master", second)):
        y.write_text(f"base: {{git: linux, ref: '{ref}'}}\nfragments: []\n")
        ki = source.load_kernel_yaml(y)
        p = Namespace(inputs=ki, identity=source.base_identity(ki))   # build.plan's identity; meta.json base =
        assert p.identity["commit"] == want and p.identity["ref"] == ref and p.identity["id"] == f"git-{want[:12]}"
        tree = source.prepare_source(p.inputs, p.identity, log=lambda m: None)
        base_meta = dict(p.identity, **tree.identity)              # plan identity + tree identity
        assert base_meta["base_commit"] == want and base_meta["git"] == str(repo) and base_meta["version"] == version
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree.path, capture_output=True, text=True).stdout
        assert head.strip() == want
        assert (tree.path / "arch/x86/kvm/mmu/tdp_mmu.c").read_text() == (orig if want == first else tdp.read_text())
    assert len([d for d in (cache_dir() / "src").glob("git-*") if d.is_dir()]) == 2    # one cached tree per commit
    # a new commit on the branch: the same ref now names it, and the next plan/prepare follows
    (repo / "virt/kvm/kvm_main.c").write_text("/* third */\n" + (repo / "virt/kvm/kvm_main.c").read_text())
    g("checkout", "-q", "stable")
    g("commit", "-q", "-am", "kvm_main: a comment")
    third = g("rev-parse", "HEAD")
    y.write_text("base: {git: linux, ref: stable}\nfragments: []\n")
    ident = source.base_identity(source.load_kernel_yaml(y))
    tree = source.prepare_source(source.load_kernel_yaml(y), ident, log=lambda m: None)
    assert ident["commit"] == third == tree.base_commit and (tree.path / "virt/kvm/kvm_main.c").read_text() \
        .startswith("/* third */")
