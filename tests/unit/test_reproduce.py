"""reproduce.sh embeds the whole recipe (patches, fragments, defconfig, scenario, each with its sha256) and
recreates it byte for byte from an empty folder; its run mode checks the built .config; `harness reproduce
--tries N` records the reproduction rate."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PATCHES = [REPO / "tests/fixtures/patches/tdp-oneline/0001-KVM-x86-mmu-add-a-comment-to-tdp_mmu.c.patch",
           next((REPO / "patches/mutants/a-tdp-handle-changed-spte").glob("0001-*.patch"))]
FRAGMENTS = [REPO / "kconfigs/kvm-host.config", REPO / "kconfigs/tracing.config"]


def sha(p) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))


def series_case(tmp_path, patches=PATCHES, defconfig="x86_64_defconfig"):
    """A 2-patch KERNEL.yaml in tmp_path and the meta.json a build of it would have written."""
    from harness.kernel import series, source
    sdir = tmp_path / "in" / "series"
    sdir.mkdir(parents=True)
    for p in patches:
        shutil.copyfile(p, sdir / p.name)
    (sdir / "series").write_text("".join(p.name + "\n" for p in patches))
    tb = tmp_path / "in" / "base.tar"
    tb.write_bytes(b"not really a tarball")
    ky = tmp_path / "in" / "KERNEL.yaml"
    ky.write_text(f"base: {{tarball: base.tar}}\nseries: series\ndefconfig: {defconfig}\n"
                  f"fragments: [{', '.join(str(f) for f in FRAGMENTS)}]\n")
    pt = series.read_series(source.load_kernel_yaml(ky))
    art = tmp_path / "in" / "art"
    art.mkdir()
    (art / "config").write_text("CONFIG_KVM=m\nCONFIG_SWAP=y\n")
    (art / "bzImage").write_bytes(b"kernel")
    meta = {"source": "build", "release": "6.12.117", "key": "tarball-0123456789ab-p2-0123456789abcdef",
            "base": {"kind": "tarball", "tarball": str(tb), "sha256": sha(tb), "id": f"tarball-{sha(tb)[:12]}"},
            "patches": [p.meta() for p in pt], "config_sha256": sha(art / "config"), "kernel_yaml": str(ky),
            "defconfig": defconfig, "fragments": [str(f) for f in FRAGMENTS], "dir": str(art),
            "compiler": "gcc (Debian 12.2.0-14) 12.2.0"}
    (art / "meta.json").write_text(json.dumps(meta))
    return meta


def a_run(overrides=("stop_on_first_finding=true", "seed=4")):
    from harness.config import load_scenario
    s = load_scenario(REPO / "scenarios/default.yaml", list(overrides))
    return {"run_id": "20260101-000000-default-s4", "verdict": "finding", "scenario": s.model_dump(),
            "scenario_yaml": (REPO / "scenarios/default.yaml").read_text(), "overrides": list(overrides),
            "versions": {"harness_git": "abc1234"}}


def write_script(tmp_path, meta, run=None) -> Path:
    from harness.report.reproduce import reproduce_script
    script = tmp_path / "reproduce.sh"
    script.write_text(reproduce_script(run or a_run(), meta))
    return script


def sh(script, *args, cwd, env=None):
    return subprocess.run(["sh", str(script), *args], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})))


def test_script_embeds_every_patch_and_fragment_with_its_sha256(tmp_path):
    text = write_script(tmp_path, series_case(tmp_path)).read_text()
    for p in PATCHES:
        assert f"check patches/{p.name} {sha(p)}" in text and p.read_text() in text
    for i, f in enumerate(FRAGMENTS, 1):
        assert f"check fragments/{i}/{f.name} {sha(f)}" in text and f.read_text() in text
    assert "--set stop_on_first_finding=true" in text and "SEED=4" in text and "--set seed=" not in text
    assert "HARNESS_COMMIT=abc1234" in text and "original kernel argument: --kernel" in text
    assert "no embedded recipe" not in text and "recipe incomplete" not in text


def test_check_only_in_an_empty_folder_recreates_identical_files(tmp_path):
    meta = series_case(tmp_path)
    script = write_script(tmp_path, meta)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = sh(script, "--check-only", cwd=empty, env={"HARNESS_REPO": "/nonexistent"})
    assert r.returncode == 0, r.stderr
    (work,) = empty.iterdir()
    assert work.name == "reproduce-20260101-000000-default-s4"
    for p in PATCHES:
        assert sha(work / "patches" / p.name) == sha(p)
    assert (work / "patches/series").read_text().split() == [p.name for p in PATCHES]
    for i, f in enumerate(FRAGMENTS, 1):
        assert sha(work / "fragments" / str(i) / f.name) == sha(f)
    assert sha(work / "scenario.yaml") == sha(REPO / "scenarios/default.yaml")
    assert (work / "expected.config").read_text() == "CONFIG_KVM=m\nCONFIG_SWAP=y\n"
    assert subprocess.run(["sha256sum", "-c", "--quiet", "MANIFEST.sha256"], cwd=work).returncode == 0
    # the recreated KERNEL.yaml plans the same patch stack as the original
    from harness.kernel import series, source
    ky = source.load_kernel_yaml(work / "KERNEL.yaml")
    assert ky.spec.base.tarball == meta["base"]["tarball"] and ky.spec.defconfig == "x86_64_defconfig"
    assert [p.sha256 for p in series.read_series(ky)] == [p["sha256"] for p in meta["patches"]]
    assert [Path(f).name for f in ky.spec.fragments] == [f.name for f in FRAGMENTS]
    recipe = json.loads((work / "recipe.json").read_text())
    assert [p["sha256"] for p in recipe["kernel"]["patches"]] == [sha(p) for p in PATCHES]
    assert recipe["kernel"]["config_sha256"] == meta["config_sha256"] and recipe["seed"] == 4


def test_print_recipe_writes_nothing(tmp_path):
    script = write_script(tmp_path, series_case(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    r = sh(script, "--print-recipe", cwd=empty)
    assert r.returncode == 0 and not list(empty.iterdir())
    assert json.loads(r.stdout)["kernel"]["base"]["kind"] == "tarball"


def test_an_altered_embedded_patch_is_refused(tmp_path):
    script = write_script(tmp_path, series_case(tmp_path))
    script.write_text(script.read_text().replace("INJECTED BUG (mutant a)", "INJECTED BUG (mutant A)", 1))
    r = sh(script, "--check-only", cwd=tmp_path)
    assert r.returncode == 2
    assert "reproduce.sh: error: patches/0001-MUTANT" in r.stderr and "the embedded copy was altered" in r.stderr


def test_patch_without_final_newline_or_with_crlf_goes_base64_and_comes_back_exact(tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    p = odd / "0001-odd.patch"
    p.write_bytes(PATCHES[0].read_bytes().replace(b"\n", b"\r\n").rstrip())
    meta = series_case(tmp_path, patches=[p])
    script = write_script(tmp_path, meta)
    assert "base64 -d > \"$work/patches/0001-odd.patch\"" in script.read_text()
    r = sh(script, "--check-only", cwd=tmp_path, env={"HARNESS_REPRO_DIR": str(tmp_path / "w")})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "w/patches/0001-odd.patch").read_bytes() == p.read_bytes()


def test_defconfig_given_as_a_path_is_embedded_and_used(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "my_defconfig").write_text("CONFIG_64BIT=y\n")
    meta = series_case(tmp_path, defconfig="my_defconfig")
    script = write_script(tmp_path, meta)
    r = sh(script, "--check-only", cwd=tmp_path, env={"HARNESS_REPRO_DIR": str(tmp_path / "w")})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "w/defconfig/my_defconfig").read_text() == "CONFIG_64BIT=y\n"
    assert "defconfig: defconfig/my_defconfig" in (tmp_path / "w/KERNEL.yaml").read_text()


def test_a_patch_that_cannot_be_found_makes_the_recipe_incomplete(tmp_path):
    meta = series_case(tmp_path)
    os.remove(meta["kernel_yaml"])
    script = write_script(tmp_path, meta)
    r = sh(script, "--check-only", cwd=tmp_path)
    assert r.returncode == 2 and "recipe incomplete: patch 1" in r.stderr


def fake_checkout(tmp_path, art: Path) -> tuple[Path, Path]:
    """A checkout whose python runs the real one, except `-m harness build|run` (logged; build prints `art`,
    run exits 1 = a finding)."""
    repo = tmp_path / "checkout"
    (repo / "harness").mkdir(parents=True)
    (repo / ".venv/bin").mkdir(parents=True)
    log = tmp_path / "harness.log"
    py = repo / ".venv/bin/python"
    py.write_text(f"""#!/bin/sh
if [ "$1" = -m ] && [ "$2" = harness ]; then
  shift 2; echo "$*" >> {log}
  case "$1" in build) echo "building..." >&2; echo {art} ;; run) exit 1 ;; esac
  exit 0
fi
exec {sys.executable} "$@"
""")
    py.chmod(0o755)
    return repo, log


def test_run_mode_builds_checks_the_config_and_reruns_the_case(tmp_path):
    meta = series_case(tmp_path)
    script = write_script(tmp_path, meta)
    repo, log = fake_checkout(tmp_path, Path(meta["dir"]))
    env = {"HARNESS_REPO": str(repo), "HARNESS_REPRO_DIR": str(tmp_path / "w"), "HARNESS_RESULTS": ""}
    r = sh(script, cwd=tmp_path, env=env)
    assert r.returncode == 1, r.stderr                  # the run's exit code: a finding
    build, run = log.read_text().splitlines()
    assert build == f"build {tmp_path}/w/KERNEL.yaml"
    assert run == (f"run {tmp_path}/w/scenario.yaml --build {tmp_path}/w/KERNEL.yaml --seed 4 "
                   "--set stop_on_first_finding=true")
    assert ".config sha256 matches" in r.stderr and "the checkout is at" in r.stderr


def test_run_mode_stops_with_a_clear_line_when_the_built_config_differs(tmp_path):
    meta = series_case(tmp_path)
    script = write_script(tmp_path, meta)
    (Path(meta["dir"]) / "config").write_text("CONFIG_KVM=y\nCONFIG_SWAP=y\n")   # this machine builds another
    repo, log = fake_checkout(tmp_path, Path(meta["dir"]))
    r = sh(script, cwd=tmp_path, env={"HARNESS_REPO": str(repo), "HARNESS_REPRO_DIR": str(tmp_path / "w")})
    assert r.returncode == 2
    line = next(ln for ln in r.stderr.splitlines() if "error" in ln)
    assert line.startswith("reproduce.sh: error: built .config sha256 ") and meta["config_sha256"] in line
    assert "< CONFIG_KVM=m" in r.stderr and "> CONFIG_KVM=y" in r.stderr     # what differs
    assert [ln.split()[0] for ln in log.read_text().splitlines()] == ["build"]   # never ran the case


def test_run_mode_refuses_a_kernel_built_from_another_base(tmp_path):
    meta = series_case(tmp_path)
    script = write_script(tmp_path, meta)
    (Path(meta["dir"]) / "meta.json").write_text(json.dumps(dict(meta, base={"id": "tarball-ffffffffffff"})))
    repo, log = fake_checkout(tmp_path, Path(meta["dir"]))
    r = sh(script, cwd=tmp_path, env={"HARNESS_REPO": str(repo), "HARNESS_REPRO_DIR": str(tmp_path / "w")})
    assert r.returncode == 2 and f"base tarball-ffffffffffff , the run's was {meta['base']['id']}" in r.stderr


def test_run_mode_refuses_a_scenario_this_checkout_resolves_differently(tmp_path):
    run = a_run()
    run["scenario"]["ledger"]["rounds"] = 99            # the run resolved another value
    script = write_script(tmp_path, series_case(tmp_path), run)
    repo, log = fake_checkout(tmp_path, tmp_path / "in" / "art")
    r = sh(script, cwd=tmp_path, env={"HARNESS_REPO": str(repo), "HARNESS_REPRO_DIR": str(tmp_path / "w")})
    assert r.returncode == 2 and "scenario ledger: run" in r.stderr and not log.exists()


def test_prebuilt_kernel_recipe(tmp_path):
    art = tmp_path / "deb"
    art.mkdir()
    (art / "bzImage").write_bytes(b"vmlinuz")
    meta = {"source": "debian-prebuilt", "release": "6.12.117+deb12-amd64", "dir": str(art),
            "package": "linux-image-6.12.117+deb12-amd64-unsigned",
            "deb": "linux-image-6.12.117+deb12-amd64-unsigned_6.12.117-1~deb12u1_amd64.deb", "patches": []}
    script = write_script(tmp_path, meta)
    text = script.read_text()
    assert "PACKAGE=linux-image-6.12.117+deb12-amd64-unsigned" in text and "VERSION='6.12.117-1~deb12u1'" in text
    assert f"BZIMAGE_SHA256={sha(art / 'bzImage')}" in text and "--build" not in text.split("# ---- the kernel")[1]
    r = sh(script, "--check-only", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_reproduction_block():
    from harness.report.reproduce import reproduction_block
    b = reproduction_block("finding", [{"verdict": "finding"}, {"verdict": "pass"}, {"verdict": "finding"}])
    assert (b["tries"], b["reproduced"], b["rate"], b["flaky"]) == (3, 2, 0.6667, True)
    assert reproduction_block("finding", [{"verdict": "finding"}] * 2)["flaky"] is False
    assert reproduction_block("finding", [{"verdict": "pass"}] * 2)["flaky"] is False


def test_harness_reproduce_tries_records_the_rate_in_run_json(tmp_path, capsys):
    from harness.report.reproduce import cli_reproduce
    rd = tmp_path / "run"
    rd.mkdir()
    (rd / "run.json").write_text(json.dumps({"run_id": "r", "verdict": "finding"}))
    n = tmp_path / "n"
    # a stand-in for reproduce.sh: a finding on tries 1 and 3, a pass on try 2
    (rd / "reproduce.sh").write_text(f"""i=$(($(cat {n} 2>/dev/null || echo 0) + 1)); echo $i > {n}
v=finding; rc=1; [ $i = 2 ] && v=pass && rc=0
mkdir -p "$HARNESS_RESULTS/try$i" && echo "{{\\"verdict\\": \\"$v\\"}}" > "$HARNESS_RESULTS/try$i/run.json"
exit $rc
""")
    assert cli_reproduce(str(rd), tries=3) == 1
    assert "reproduced 2/3" in capsys.readouterr().out
    block = json.loads((rd / "run.json").read_text())["reproduction"]
    assert (block["tries"], block["reproduced"], block["rate"], block["flaky"]) == (3, 2, 0.6667, True)
    assert [t["verdict"] for t in block["runs"]] == ["finding", "pass", "finding"]
    assert block["runs"][1]["run_dir"].endswith("reproductions/try2")


def test_debian_package_kernel_recipe(tmp_path):
    art = tmp_path / "deb"
    art.mkdir()
    (art / "bzImage").write_bytes(b"vmlinuz")
    meta = {"source": "debian-package", "release": "7.2.13+deb14-amd64", "dir": str(art), "version": "7.2.13-1",
            "package": "linux-binary-unsigned-7.2.13+deb14-amd64", "sha256": "9" * 64, "patches": [],
            "base": {"kind": "debian-package", "packages": [{"package": "linux-modules-7.2.13+deb14-amd64"}]}}
    text = write_script(tmp_path, meta).read_text()
    assert "VERSION=7.2.13-1" in text and f"DEB_SHA256={'9' * 64}" in text
    assert '--kernel "debian:$VERSION"' in text and "original kernel argument: --kernel debian:7.2.13-1" in text


def test_a_debian_source_base_is_pinned_to_its_exact_package_version():
    from harness.report.reproduce import _debian_source_request
    b = {"package": "linux-source-6.12", "package_version": "6.12.117-1~deb12u1"}
    assert _debian_source_request(b) == "6.12.117-1~deb12u1"
    assert _debian_source_request({"package": "linux-source-6.12"}) == "6.12"
