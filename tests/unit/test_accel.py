import pytest

from harness.vm.accel import host_cpu_vendor, host_tsc_khz, judge_probe, l1_clock_cmdline

# Real output of the probe on a machine whose /dev/kvm is kvm_pvm (QEMU 7.2).
PVM_FAILURE = ("qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion "
               "`ret == cpu->kvm_msr_buf->nmsrs' failed.\n")


def test_pvm_kvm_is_not_usable():
    ok, why = judge_probe(-6, PVM_FAILURE)
    assert not ok and "kvm_buf_set_msrs" in why and "exit -6" in why


def test_a_kernel_reaching_its_root_panic_proves_kvm():
    console = "[    0.9] VFS: Unable to mount root fs on unknown-block(0,0)\n[    0.9] Kernel panic - not syncing: VFS"
    assert judge_probe(0, console)[0]


def test_timeout_is_not_usable():
    ok, why = judge_probe(None, "Linux version 6.12")
    assert not ok and "timed out" in why


def test_cpu_vendor_parse():
    assert host_cpu_vendor("processor: 0\nvendor_id\t: GenuineIntel\n") == "GenuineIntel"
    assert host_cpu_vendor("nothing") == "unknown"


def test_a_failed_probe_is_made_once_per_host_boot(tmp_path, monkeypatch):
    from harness.vm import accel
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(accel, "probe_kvm", lambda k: calls.append(k) or (False, "KVM probe timed out"))
    assert accel.choose_accel(tmp_path / "bzImage").mode == "tcg"
    second = accel.choose_accel(tmp_path / "bzImage")
    assert second.mode == "tcg" and "probed once this host boot" in second.reason and len(calls) == 1
    monkeypatch.setattr(accel, "host_identity", lambda: "another boot")
    accel.choose_accel(tmp_path / "bzImage")
    assert len(calls) == 2


def test_a_passing_probe_is_never_cached(tmp_path, monkeypatch):
    from harness.vm import accel
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(accel, "probe_kvm", lambda k: calls.append(k) or (True, "booted"))
    assert accel.choose_accel(tmp_path / "k").mode == "kvm" and accel.choose_accel(tmp_path / "k").mode == "kvm"
    assert len(calls) == 2


# -- L1's clock under TCG ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cpuinfo,sysfs,khz", [
    ("processor\t: 0\ncpu MHz\t\t: 2596.142\n", "", 2596142),
    ("processor\t: 0\ncpu MHz\t\t: 2596.142\n", "2600000\n", 2600000),  # the kernel's own figure first
    ("processor\t: 0\n", "", None),
    ("cpu MHz\t\t: fast\n", "", None),
    ("cpu MHz\t\t: 0.000\n", "0\n", None),
])
def test_host_tsc_khz(cpuinfo, sysfs, khz):
    assert host_tsc_khz(cpuinfo, sysfs) == khz


def test_l1_clock_cmdline_only_under_tcg_with_a_known_rate():
    assert l1_clock_cmdline("tcg", 2596142) == "tsc_early_khz=2596142"
    assert l1_clock_cmdline("kvm", 2596142) == ""  # KVM gives L1 a calibrated TSC (kvmclock)
    assert l1_clock_cmdline("tcg", None) == ""
