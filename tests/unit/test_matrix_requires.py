"""A matrix cell's `requires:` against the host's capabilities: the pure check (a table), the host's capabilities
from its facts, and what a skipped cell becomes in matrix.json, summary.txt, JUnit, KTAP, the score, --list and
a merge (no QEMU: the host, the probe and the runs are fakes)."""
import argparse
import json
import signal

import pytest

import harness.fleet.matrix as M
import harness.fleet.matrix.cli as MC
import harness.fleet.matrix.jobs as MJ
import harness.fleet.matrix.shard as S
from harness.cli import main
from harness.config import KvmIntelKnobs, load_scenario
from harness.errors import InputError
from harness.fleet.matrix.requires import Requires, cell_skip_reason, knob_requirements, missing_requirements
from harness.vm import host as H
from tests.conftest import REPO

TCG = H.HostCaps("tcg", "no kvm_intel or kvm_amd loaded", "intel")
INTEL = H.HostCaps("kvm", "KVM probe: booted", "intel", nested=True, ept_ad=True, probed=True)
INTEL_NO_AD = H.HostCaps("kvm", "KVM probe: booted", "intel", nested=True, ept_ad=False, probed=True)
INTEL_NO_NESTED = H.HostCaps("kvm", "KVM probe: booted", "intel", nested=False, ept_ad=True, probed=True)
AMD = H.HostCaps("kvm", "KVM probe: booted", "amd", nested=True, probed=True)
AMD_TCG = H.HostCaps("tcg", "forced by HARNESS_ACCEL=tcg", "amd")
UNKNOWN = H.HostCaps("kvm", "KVM probe: booted", "unknown", nested=True)


# ---- the check, as a table -------------------------------------------------------------------------------------
@pytest.mark.parametrize("req,caps,want", [
    ({}, TCG, None),                                       # no requirement: runs anywhere
    ({}, AMD, None),
    ({"accel": "kvm"}, TCG, "needs accel kvm: L1 runs under TCG here (no kvm_intel or kvm_amd loaded)"),
    ({"accel": "kvm"}, INTEL, None),
    ({"accel": "kvm"}, AMD, None),
    ({"accel": "kvm"}, INTEL_NO_NESTED, "needs nested KVM: L0's kvm_intel has nested off, so L1 gets no VMX"),
    ({"vendor": "intel"}, TCG, "needs an Intel L1 (kvm_intel, EPT): L1 runs under TCG here, which emulates SVM, not VMX"),
    ({"accel": "kvm", "vendor": "intel"}, AMD_TCG, "L1 runs under TCG here"),
    ({"accel": "kvm", "vendor": "intel"}, AMD,
     "needs an Intel L1 (kvm_intel, EPT): this host is AMD with KVM, and L1 gets L0's CPU (kvm_amd, NPT)"),
    ({"accel": "kvm", "vendor": "intel"}, INTEL, None),
    ({"accel": "kvm", "vendor": "intel"}, INTEL_NO_AD, None),  # A/D off in L1 needs nothing of L0's eptad
    ({"accel": "kvm", "vendor": "intel", "ept_ad": True}, INTEL, None),
    ({"accel": "kvm", "vendor": "intel", "ept_ad": True}, INTEL_NO_AD,
     "needs L0's kvm_intel eptad=Y (L0 offers EPT A/D bits and PML to L1 only then): this host's kvm_intel has eptad=N"),
    ({"vendor": "amd"}, TCG, None),                        # TCG's L1 is an SVM (AMD-style) host
    ({"vendor": "amd"}, AMD, None),
    ({"vendor": "amd"}, INTEL, "needs an AMD L1 (kvm_amd, NPT): this host is Intel with KVM, and L1 gets L0's CPU "
                               "(kvm_intel, EPT)"),
    ({"vendor": "intel"}, UNKNOWN, "this host's CPU vendor is unknown"),
])
def test_cell_skip_reason(req, caps, want):
    got = cell_skip_reason(req, caps)
    if want is None:
        assert got is None
    else:
        assert got is not None and want in got


def test_the_check_takes_the_model_or_its_dict():
    assert cell_skip_reason(Requires(vendor="intel"), TCG) == cell_skip_reason({"vendor": "intel"}, TCG)
    assert cell_skip_reason(None, TCG) is None


def test_requires_is_strict():
    with pytest.raises(ValueError, match="ept_ad: true .* needs vendor: intel"):
        Requires(ept_ad=True)
    with pytest.raises(ValueError):
        Requires.model_validate({"vendr": "intel"})
    with pytest.raises(ValueError):
        Requires.model_validate({"accel": "tcg"})
    assert Requires(accel="kvm", vendor="intel", ept_ad=True).text() == "{accel: kvm, vendor: intel, ept_ad: true}"


@pytest.mark.parametrize("knobs,want", [
    ({}, Requires()),
    ({"eptad": False, "pml": False}, Requires(vendor="intel")),
    ({"eptad": True, "pml": False}, Requires(vendor="intel", ept_ad=True)),
    ({"pml": True}, Requires(vendor="intel", ept_ad=True)),  # pml=Y needs eptad=Y in L1, so in L0
])
def test_knob_requirements(knobs, want):
    assert knob_requirements(KvmIntelKnobs(**knobs)) == want


def test_missing_requirements():
    need = Requires(vendor="intel", ept_ad=True)
    assert missing_requirements({}, need) == ["vendor: intel", "ept_ad: true"]
    assert missing_requirements({"vendor": "intel"}, need) == ["ept_ad: true"]
    assert missing_requirements({"accel": "kvm", "vendor": "intel", "ept_ad": True}, need) == []
    assert missing_requirements({"vendor": "intel"}, Requires(accel="kvm")) == []  # Intel implies KVM


# ---- matrices --------------------------------------------------------------------------------------------------
MATRIX = """name: req
scenario: s.yaml
seeds: [1, 2]
budget_runs: 1
kernels: {clean: {prebuilt: true}, intel-only: {prebuilt: true}, m1: {prebuilt: true, mutant: true},
          m2: {prebuilt: true, mutant: true}}
groups:
  - {kernels: [clean], expect: clean}
  - {kernels: [m1], expect: finding}
  - kernels: [clean, intel-only]
    variants: [{label: "EPT A/D off", kvm_intel: {eptad: false, pml: false}}]
    requires: {accel: kvm, vendor: intel}
    expect: clean
    why: "a correct kernel stays clean with A/D-disabled SPTEs"
  - kernels: [m2]
    variants: [{label: "EPT A/D off", kvm_intel: {eptad: false}}]
    requires: {vendor: intel}
    expect: finding
    why: "the mutant is caught with A/D-disabled SPTEs"
"""


def write(tmp_path, text=MATRIX):
    (tmp_path / "s.yaml").write_text("seed: 1\n")
    (tmp_path / "m.yaml").write_text(text)
    return tmp_path / "m.yaml"


def test_requires_reaches_each_cell_and_not_its_id(tmp_path):
    cells = M.expand(M.load_matrix(write(tmp_path)))
    hw = [c for c in cells if c.requires]
    assert [c.name for c in hw] == ["clean[kvm_intel={'eptad': False, 'pml': False}]",
                                    "intel-only[kvm_intel={'eptad': False, 'pml': False}]",
                                    "m2[kvm_intel={'eptad': False}]"]
    assert hw[0].requires == {"accel": "kvm", "vendor": "intel"} and hw[2].requires == {"vendor": "intel"}
    plain = M.expand(M.load_matrix(write(tmp_path, MATRIX.replace("    requires: {accel: kvm, vendor: intel}\n", "")
                                         .replace("    requires: {vendor: intel}\n", ""))))
    assert [c.id for c in plain] == [c.id for c in cells]  # requires: says where a cell runs, not what it is


def test_a_bad_requires_is_an_input_error_with_its_line(tmp_path):
    p = write(tmp_path, MATRIX.replace("requires: {vendor: intel}", "requires: {vendor: arm}"))
    with pytest.raises(InputError, match=r":17: key 'groups.3.requires.vendor': Input should be 'intel' or 'amd'"):
        M.load_matrix(p)


def test_hardware_only_is_no_expectation_any_more(tmp_path):
    with pytest.raises(InputError, match="'clean' or 'finding'"):
        M.load_matrix(write(tmp_path, MATRIX.replace("expect: finding\n    why", "expect: hardware-only\n    why")))


def test_a_knob_that_needs_a_host_must_be_declared(tmp_path):
    p = write(tmp_path, MATRIX.replace("    requires: {vendor: intel}\n", ""))
    m = M.load_matrix(p)
    cells = M.expand(m)
    scen = {c.id: load_scenario(tmp_path / "s.yaml", M.overrides_of(c.variant)) for c in cells}
    with pytest.raises(InputError, match=r"cell m2\[kvm_intel=\{'eptad': False\}\] sets kvm_intel eptad=N, which "
                                         r"needs \{vendor: intel\} of the host; its group's requires: does not say "
                                         r"vendor: intel"):
        M.check_requirements(m, cells, scen)
    assert main(["matrix", str(p), "--list"]) == 2  # refused before anything runs
    p2 = write(tmp_path, MATRIX.replace('kvm_intel: {eptad: false}}', 'kvm_intel: {eptad: true}}'))
    m2 = M.load_matrix(p2)
    cells2 = M.expand(m2)
    scen2 = {c.id: load_scenario(tmp_path / "s.yaml", M.overrides_of(c.variant)) for c in cells2}
    with pytest.raises(InputError, match="does not say ept_ad: true"):
        M.check_requirements(m2, cells2, scen2)


def test_hardware_yaml_declares_every_host_need_and_a_real_expectation():
    path = REPO / "scenarios/hardware.yaml"
    m = M.load_matrix(path)
    cells = M.expand(m)
    scen = {c.id: load_scenario(path.parent / m.scenario, M.overrides_of(c.variant)) for c in cells}
    M.check_requirements(m, cells, scen)  # no kvm_intel knob without its requires:
    intel = [c for c in cells if c.requires]
    assert intel and all("kvm_intel" in c.variant and c.requires["vendor"] == "intel" and c.why for c in intel)
    assert {c.expect for c in intel if m.kernels[c.kernel].mutant} == {"finding"}
    assert {c.expect for c in intel if not m.kernels[c.kernel].mutant} == {"clean"}
    ad_on = [c for c in intel if c.variant["kvm_intel"].get("eptad") or c.variant["kvm_intel"].get("pml")]
    assert ad_on and all(c.requires.get("ept_ad") for c in ad_on)
    # on TCG and on AMD every one of them is skipped, on an Intel KVM host none; eptad=N in L0 skips the A/D-on ones
    assert all(cell_skip_reason(c.requires, TCG) and cell_skip_reason(c.requires, AMD) for c in intel)
    assert not any(cell_skip_reason(c.requires, INTEL) for c in intel)
    assert {c.id for c in intel if cell_skip_reason(c.requires, INTEL_NO_AD)} == {c.id for c in ad_on}
    assert not any(cell_skip_reason(c.requires, TCG) for c in cells if not c.requires)


# ---- what a skipped cell becomes ---------------------------------------------------------------------------------
def run(verdict, seed=1):
    return {"run_dir": f"/r/runs/x/{verdict}{seed}", "verdict": verdict, "seed": seed,
            "first_finding_s": 12.0 if verdict == "finding" else None, "total_s": 30, "titles": [], "attempts": 1,
            "tdp_mmu": True, "evidence": ["ledger: x"] if verdict == "finding" else []}


def ran_on(caps, tmp_path):
    m = M.load_matrix(write(tmp_path))
    cells = M.expand(m)
    todo = M.mark_skips(cells, caps)
    for c in todo:
        c.runs = [run("finding" if c.expect == "finding" else "pass")]
    return m, cells, todo


def test_on_tcg_the_intel_cells_are_skipped_never_passed_nor_scored(tmp_path):
    m, cells, todo = ran_on(TCG, tmp_path)
    skipped = [c for c in cells if c.skipped]
    assert len(skipped) == 3 and len(todo) == 2 and all(not c.runs for c in skipped)
    for c in skipped:
        assert c.outcome == "skipped" and not c.ok and c.settled and "L1 runs under TCG here" in c.skip
    sc = M.score(m, cells)
    # m2's only finding cell was skipped: it is not a mutant that could be caught here (not 0/2, not 2/2)
    assert sc["runnable_mutants"] == ["m1"] and sc["caught"] == ["m1"] and sc["mutation_score"] == 1.0
    assert (sc["cells_ok"], sc["cells"], sc["cells_skipped"]) == (2, 5, 3)
    text = M.summary(m, cells, sc)
    assert text.startswith("matrix req: 2/2 cells as expected, 3 skipped on this host (requires:); mutation score "
                           "100 % (1/1)")
    line = next(ln for ln in text.splitlines() if ln.startswith("m2["))
    assert "skipped" in line and "# SKIP needs an Intel L1" in line and "MISMATCH" not in line


def test_on_an_intel_kvm_host_the_same_cells_run_and_count(tmp_path):
    m, cells, todo = ran_on(INTEL, tmp_path)
    assert len(todo) == 5 and not any(c.skipped for c in cells)
    sc = M.score(m, cells)
    assert sc["runnable_mutants"] == ["m1", "m2"] and sc["mutation_score"] == 1.0 and sc["cells_ok"] == 5
    assert "skipped" not in M.summary(m, cells, sc).splitlines()[0]


def test_a_skipped_cell_in_matrix_json_junit_and_ktap(tmp_path):
    from junitparser import JUnitXml, Skipped
    m, cells, _ = ran_on(AMD, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    M.write_outputs(out, m, cells, {"host": AMD.to_json()})
    js = json.loads((out / "matrix.json").read_text())
    sk = [c for c in js["cells"] if c["outcome"] == "skipped"]
    assert len(sk) == 3 and all(c["ok"] is False and c["skipped"] is True and "this host is AMD" in c["skip"]
                                for c in sk)
    assert js["host"]["l1_vendor"] == "amd" and js["score"]["cells_skipped"] == 3
    suite = next(iter(JUnitXml.fromfile(str(out / "junit.xml"))))
    assert (suite.tests, suite.skipped, suite.failures, suite.errors) == (5, 3, 0, 0)
    res = [c.result[0] for c in suite if c.result]
    assert len(res) == 3 and all(isinstance(r, Skipped) and "needs an Intel L1" in r.message for r in res)
    ktap = (out / "results.ktap").read_text().splitlines()
    skip_lines = [ln for ln in ktap if "# SKIP" in ln]
    assert len(skip_lines) == 3 and all(ln.startswith("  ok ") for ln in skip_lines)
    assert any(ln.strip().startswith("ok 3 clean[kvm_intel=") and ln.endswith(
        "# SKIP needs an Intel L1 (kvm_intel, EPT): this host is AMD with KVM, and L1 gets L0's CPU (kvm_amd, NPT)")
        for ln in skip_lines)
    assert ktap[-1] == "ok 1 matrix-req"  # every cell that ran is as expected; skips do not fail the matrix
    assert "2/2 cells as expected, 3 skipped on this host" in "\n".join(ktap)


# ---- the command ------------------------------------------------------------------------------------------------
def test_list_shows_what_this_host_skips_without_probing(tmp_path, capsys, monkeypatch):
    p = write(tmp_path)
    calls = []
    monkeypatch.setattr(H, "host_caps", lambda facts=None, probe_kernel=None: calls.append(probe_kernel) or AMD)
    monkeypatch.setattr(MC, "resolve", lambda *a: pytest.fail("--list must not resolve kernels"))
    assert main(["matrix", str(p), "--list"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert calls == [None]  # no boot probe for a listing
    assert len(lines) == 5 and sum("# SKIP" in ln for ln in lines) == 3
    assert lines[0].split() == [M.expand(M.load_matrix(p))[0].id, "clean", "clean[default]"]
    assert "# SKIP needs an Intel L1 (kvm_intel, EPT): this host is AMD with KVM" in lines[2]
    assert "this host: accel kvm" in err and "3 of 5 cells skipped on this host" in err


def test_a_matrix_without_requires_never_asks_the_host(tmp_path, capsys, monkeypatch):
    p = write(tmp_path, MATRIX.split("  - kernels: [clean, intel-only]")[0])
    monkeypatch.setattr(H, "host_caps", lambda **k: pytest.fail("no requires: no host check"))
    assert main(["matrix", str(p), "--list"]) == 0
    assert "# SKIP" not in capsys.readouterr().out


def test_the_runner_runs_only_what_the_host_can(tmp_path, monkeypatch):
    p = write(tmp_path)
    resolved, given = [], []
    monkeypatch.setattr(H, "host_caps", lambda facts=None, probe_kernel=None: TCG)
    monkeypatch.setattr(MC, "resolve", lambda ref, base: resolved.append(ref) or {"source": "debian-prebuilt"})

    def fake_run_cells(cells, ctx, on_cell_done):
        for c in cells:
            if not c.skip:
                given.append(c.name)
                c.runs = [run("finding" if c.expect == "finding" else "pass")]
                on_cell_done(c)
        return False
    monkeypatch.setattr(MJ, "run_cells", fake_run_cells)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        rc = MC.cli_matrix(argparse.Namespace(matrix_yaml=str(p), results=str(tmp_path / "res"), list=False,
                                             shard=None, jobs="1"))
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    assert rc == 0  # the cells that ran are as expected; the skipped ones are no mismatch
    assert given == ["clean[default]", "m1[default]"]
    assert len(resolved) == 2  # intel-only and m2 are never resolved (built) on a host that skips them
    (mdir,) = (tmp_path / "res").iterdir()
    js = json.loads((mdir / "matrix.json").read_text())
    assert js["host"]["accel"] == "tcg" and js["score"]["cells_skipped"] == 3
    assert [c["outcome"] for c in js["cells"]] == ["clean", "finding", "skipped", "skipped", "skipped"]
    assert "# SKIP needs an Intel L1" in (mdir / "summary.txt").read_text()


def test_merge_keeps_each_shards_skips(tmp_path, capsys):
    p = write(tmp_path)
    m = M.load_matrix(p)
    dirs = []
    for i, caps in ((1, TCG), (2, INTEL)):  # one shard on a TCG box, the other on an Intel KVM runner
        cells = S.shard_cells(M.expand(m), i, 2)
        for c in M.mark_skips(cells, caps):
            c.runs = [run("finding" if c.expect == "finding" else "pass")]
        d = tmp_path / f"shard{i}"
        (d / "runs").mkdir(parents=True)
        M.save(d, m, cells, S.identity(p, tmp_path / "s.yaml", m, i, 2, cells))
        dirs.append(d)
    want = {c["id"]: c["outcome"] for d in dirs for c in json.loads((d / "matrix.json").read_text())["cells"]}
    assert main(["merge", *map(str, dirs), "--results", str(tmp_path / "out")]) == 0
    (out,) = (tmp_path / "out").iterdir()
    got = json.loads((out / "matrix.json").read_text())
    assert {c["id"]: c["outcome"] for c in got["cells"]} == want
    assert got["score"]["cells_skipped"] == sum(o == "skipped" for o in want.values())


# ---- the host's capabilities from its facts ---------------------------------------------------------------------
def facts(**kw):
    base = dict(vendor_id="GenuineIntel", vendor="intel", virt_flags=("vmx",), kvm_modules=("kvm", "kvm_intel"),
                nested={"kvm_intel": "Y"}, eptad="Y", dev_kvm="ok", cgroup2="cpu memory", cache="/c", free_gib=50.0,
                packages=("qemu-system-x86",), missing_packages=(), qemu="QEMU emulator version 7.2.0",
                cpus=8, mem_mib=32768)
    return H.HostFacts(**(base | kw))


@pytest.fixture
def no_probe(monkeypatch):
    from harness.vm import accel
    monkeypatch.delenv("HARNESS_ACCEL", raising=False)
    monkeypatch.setattr(accel, "cached_failure", lambda ident=None: None)
    monkeypatch.setattr(accel, "probe_kvm", lambda k, timeout=30.0: pytest.fail("no boot here"))
    monkeypatch.setattr(accel, "cached_probe", lambda k: pytest.fail("no boot here"))
    return accel


def test_caps_from_the_facts_without_a_probe(no_probe):
    c = H.host_caps(facts())
    assert (c.accel, c.vendor, c.l1_vendor, c.nested, c.ept_ad, c.probed) == ("kvm", "intel", "intel", True, True, False)
    assert "not boot-probed" in c.accel_why
    c = H.host_caps(facts(kvm_modules=("kvm", "kvm_pvm"), nested={}, eptad=None))
    assert c.accel == "tcg" and c.l1_vendor == "amd" and "KVM modules: kvm, kvm_pvm" in c.accel_why
    assert H.host_caps(facts(dev_kvm="no access")).accel_why == "/dev/kvm is not readable and writable"
    assert H.host_caps(facts(dev_kvm="missing")).accel_why == "/dev/kvm is missing"
    assert H.host_caps(facts(eptad="N")).ept_ad is False
    amd = H.host_caps(facts(vendor_id="AuthenticAMD", vendor="amd", virt_flags=("svm",), kvm_modules=("kvm", "kvm_amd"),
                            nested={"kvm_amd": "1"}, eptad=None))
    assert (amd.accel, amd.l1_vendor, amd.nested, amd.ept_ad) == ("kvm", "amd", True, None)


def test_caps_forced_tcg_and_a_remembered_failed_probe(no_probe, monkeypatch):
    monkeypatch.setenv("HARNESS_ACCEL", "tcg")
    assert H.host_caps(facts()).accel_why == "forced by HARNESS_ACCEL=tcg"
    monkeypatch.delenv("HARNESS_ACCEL")
    monkeypatch.setattr(no_probe, "cached_failure", lambda ident=None: "KVM probe timed out (probed once this host boot)")
    c = H.host_caps(facts(), probe_kernel=lambda: pytest.fail("a remembered failure needs no kernel"))
    assert c.accel == "tcg" and c.probed and "probed once" in c.accel_why


def test_caps_with_the_probe(no_probe, monkeypatch, tmp_path):
    monkeypatch.setattr(no_probe, "cached_probe", lambda k: (k == tmp_path / "bzImage", "KVM probe: booted"))
    c = H.host_caps(facts(), probe_kernel=lambda: tmp_path / "bzImage")
    assert (c.accel, c.probed, c.accel_why) == ("kvm", True, "KVM probe: booted")
    monkeypatch.setattr(no_probe, "cached_probe", lambda k: (False, "KVM probe timed out"))
    assert H.host_caps(facts(), probe_kernel=lambda: tmp_path / "bzImage").accel == "tcg"
