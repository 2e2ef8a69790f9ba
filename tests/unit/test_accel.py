from harness.vm.accel import judge_probe, host_cpu_vendor

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
