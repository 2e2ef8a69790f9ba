"""`harness doctor [--require-kvm]` on fake hosts: the readers of harness.vm.host are replaced, no kernel, no QEMU."""
from pathlib import Path

import pytest

from harness.cli import main
from harness.vm import accel
from harness.vm import doctor as D
from harness.vm import host as H

INTEL_CPUINFO = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme vmx ept\nprocessor\t: 1\n"
AMD_CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu svm npt\n"


def fake_host(monkeypatch, *, cpuinfo=INTEL_CPUINFO, modules=("kvm", "kvm_intel"), params=None, dev_kvm="ok",
              cgroup2="cpuset cpu io memory pids", free_gib=50, missing=(), qemu="QEMU emulator version 7.2.0",
              kernel=None, probe=None):
    params = {("kvm_intel", "nested"): "Y", ("kvm_intel", "eptad"): "Y", ("kvm_amd", "nested"): "1"} \
        if params is None else params
    monkeypatch.setenv("COLUMNS", "400")  # rich: one line per row
    monkeypatch.setattr(H, "cpuinfo", lambda: cpuinfo)
    monkeypatch.setattr(H, "sys_modules", lambda: sorted(modules))
    monkeypatch.setattr(H, "module_param", lambda mod, name: params.get((mod, name)) if mod in modules else None)
    monkeypatch.setattr(H, "dev_kvm", lambda: dev_kvm)
    monkeypatch.setattr(H, "cgroup2", lambda: cgroup2)
    monkeypatch.setattr(H, "disk_free", lambda path: int(free_gib * 2**30))
    monkeypatch.setattr(H, "installed_packages",
                        lambda names: None if missing is None else {n for n in names if n not in missing})
    monkeypatch.setattr(H, "qemu_version", lambda: qemu)
    monkeypatch.setattr(H, "mem_total_mib", lambda: 16384)
    import harness.kernel.prebuilt as P
    monkeypatch.setattr(P, "find_existing", lambda: kernel)
    calls = []

    def fake_probe(k, timeout=30.0):
        calls.append(k)
        if probe is None:
            pytest.fail("the boot probe must not run here")
        return probe
    monkeypatch.setattr(accel, "probe_kvm", fake_probe)
    return calls


def doctor(capsys, *args):
    rc = main(["doctor", *args])
    out, err = capsys.readouterr()
    return rc, out, [ln for ln in err.splitlines() if ln.startswith("harness: doctor --require-kvm: ")]


def test_a_fresh_intel_box_passes_without_any_kernel(monkeypatch, capsys):
    fake_host(monkeypatch)  # nothing cached: the probe cannot run, and is not needed
    rc, out, failed = doctor(capsys, "--require-kvm")
    assert rc == 0 and failed == [], out
    assert "every required check passed" in out
    assert "not run: no kernel cached yet" in out and "optional" in out
    assert "kvm_intel eptad=Y" in out and "kvm_intel nested=Y" in out


def test_a_fresh_amd_box_passes_and_says_intel_cells_are_skipped(monkeypatch, capsys):
    fake_host(monkeypatch, cpuinfo=AMD_CPUINFO, modules=("kvm", "kvm_amd"))
    rc, out, failed = doctor(capsys, "--require-kvm")
    assert rc == 0 and failed == []
    assert "kvm_amd nested=1" in out and "vendor: intel} are skipped" in " ".join(out.split())


def test_each_failed_requirement_is_one_line_and_exit_3(monkeypatch, capsys):
    fake_host(monkeypatch, params={("kvm_intel", "nested"): "N", ("kvm_intel", "eptad"): "N"}, dev_kvm="no access",
              free_gib=3.5, missing=("flex", "linux-source-6.12"), qemu=None, cgroup2=None)
    rc, out, failed = doctor(capsys, "--require-kvm")
    assert rc == 3
    names = [ln.split(": ")[2] for ln in failed]
    assert names == ["/dev/kvm", "nested (L0)", "packages", "qemu", "free disk (cache)"]
    assert any("kvm_intel nested=N" in ln and "options kvm_intel nested=1" in ln for ln in failed)
    assert any("missing: flex linux-source-6.12" in ln and "scripts/install-deps.sh --build" in ln for ln in failed)
    assert any("3.5 GiB free" in ln for ln in failed)
    assert any("usermod -aG kvm" in ln for ln in failed)
    # cgroup v1 on L0 and L0's eptad=N are shown, never fatal (L1 mounts its own cgroup2; eptad only skips cells)
    assert "not the unified hierarchy" in " ".join(out.split())


def test_a_paravirtual_kvm_fails_on_the_module_not_on_a_boot(monkeypatch, capsys):
    fake_host(monkeypatch, cpuinfo="vendor_id\t: GenuineIntel\nflags\t\t: fpu\n", modules=("kvm", "kvm_pvm"),
              kernel=Path("/cache/kernels/debian-6.12.117"))
    rc, out, failed = doctor(capsys, "--require-kvm")
    assert rc == 3
    assert [ln.split(": ")[2] for ln in failed] == ["cpu vendor", "kvm module", "nested (L0)"]
    assert "KVM modules: kvm, kvm_pvm" in failed[1]
    assert "not run: /dev/kvm or the KVM module failed above" in " ".join(out.split())


def test_without_require_kvm_it_only_reports(monkeypatch, capsys):
    fake_host(monkeypatch, modules=("kvm",), dev_kvm="missing")
    rc, out, failed = doctor(capsys)
    assert rc == 0 and failed == [] and "NO" in out


def test_the_optional_probe_runs_when_a_kernel_is_cached(monkeypatch, capsys, tmp_path):
    calls = fake_host(monkeypatch, kernel=tmp_path, probe=(False, "KVM probe timed out before the kernel reached "
                                                                  "its root-mount panic"))
    rc, out, failed = doctor(capsys, "--require-kvm")
    assert calls == [tmp_path / "bzImage"] and rc == 3
    assert len(failed) == 1 and failed[0].startswith("harness: doctor --require-kvm: KVM boot probe (optional): "
                                                     "KVM probe timed out")
    calls = fake_host(monkeypatch, kernel=tmp_path, probe=(True, "KVM probe: a real kernel booted"))
    assert doctor(capsys, "--require-kvm")[0] == 0 and len(calls) == 1
    fake_host(monkeypatch, kernel=tmp_path)  # --no-probe: never boots
    rc, out, failed = doctor(capsys, "--require-kvm", "--no-probe")
    assert rc == 0 and "not run (--no-probe)" in out


def test_without_dpkg_the_commands_are_looked_for(monkeypatch):
    fake_host(monkeypatch, missing=None)
    monkeypatch.setattr(H.shutil, "which", lambda c: None if c in ("flex", "pahole") else f"/usr/bin/{c}")
    f = H.read_host()
    assert f.missing_packages is None and f.missing_commands == ("flex (flex)", "dwarves (pahole)")
    row = next(c for c in D.host_checks(f) if c.name == "packages")
    assert row.ok is False and "flex (flex), dwarves (pahole)" in row.value


def test_the_package_list_is_install_deps_own():
    pkgs = H.required_packages()
    assert pkgs[:2] == ["qemu-system-x86", "qemu-utils"] and "linux-source-6.12" in pkgs and "flex" in pkgs
    assert len(pkgs) == len(set(pkgs))


def test_vendor_of_cpuinfo():
    assert H.vendor_of(INTEL_CPUINFO) == ("GenuineIntel", "intel", {"vmx"})
    assert H.vendor_of(AMD_CPUINFO) == ("AuthenticAMD", "amd", {"svm"})
    assert H.vendor_of("vendor_id : HygonGenuine\nflags : svm\n")[1] == "amd"
    assert H.vendor_of("") == ("unknown", "unknown", set())
