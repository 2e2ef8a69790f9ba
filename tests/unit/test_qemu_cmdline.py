"""The QEMU command lines of a bare-metal run, pinned: L1's (harness.vm.qemu.command_line with the accelerator's
KVM arguments) and L2's (the qemu line of guest-images/l1/start-l2.sh, expanded by a real shell exactly as the
script's two levels of quoting expand it, with its side-effecting commands stubbed out).

Neither depends on the CPU vendor: `-cpu host` hands L0's CPU (with vmx or svm, when L0's kvm_intel/kvm_amd has
nested=1) to L1, and L1's to L2; which KVM module L1 loads is decided in L1 (setup-host.sh).  The tests run each
line for both vendors' accelerator records to pin that."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from harness.config import Scenario
from harness.scenario import l1host
from harness.vm import accel, qemu

REPO = Path(__file__).resolve().parents[2]
START_L2 = REPO / "guest-images/l1/start-l2.sh"
VENDORS = ("GenuineIntel", "AuthenticAMD")


def kvm_accel(vendor: str) -> accel.Accel:
    return accel.Accel("kvm", "KVM probe: a real kernel booted", vendor, accel.KVM, 0.5)


# ---- L1 ----------------------------------------------------------------------------------------------------------
L1_WANT = [
    "qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-m", "4096", "-smp", "1",
    "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none", "-no-reboot",
    "-chardev", "file,id=con0,path=/r/l1-console.log", "-serial", "chardev:con0",
    "-qmp", "unix:/tmp/q.sock,server=on,wait=off",
    "-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22", "-device", "virtio-net-pci,netdev=n0",
    "-kernel", "/k/bzImage", "-initrd", "/i/initramfs.cpio", "-append", "console=ttyS0 panic=-1",
    "-drive", "file=/r/swap.img,if=virtio,format=raw,cache=unsafe,discard=unmap"]


@pytest.mark.parametrize("vendor", VENDORS)
def test_l1_command_line_under_kvm(vendor):
    a = kvm_accel(vendor)
    spec = qemu.VMSpec(Path("/k/bzImage"), Path("/i/initramfs.cpio"), "console=ttyS0 panic=-1", a.qemu_args,
                       4096, 1, Path("/r/swap.img"))
    assert qemu.command_line(spec, Path("/r/l1-console.log"), Path("/tmp/q.sock"), 2222) == L1_WANT


def test_l1_command_line_under_tcg_differs_only_in_the_accelerator():
    spec = qemu.VMSpec(Path("/k/bzImage"), Path("/i/initramfs.cpio"), "console=ttyS0 panic=-1", accel.TCG,
                       4096, 1, Path("/r/swap.img"))
    got = qemu.command_line(spec, Path("/r/l1-console.log"), Path("/tmp/q.sock"), 2222)
    assert got[1:5] == ["-accel", "tcg,thread=multi,tb-size=512", "-cpu", "max"]  # TCG's max: SVM, no VMX
    assert got[5:] == L1_WANT[4:]


# ---- L2 (start-l2.sh) ----------------------------------------------------------------------------------------------
def l2_argv(env: dict[str, str]) -> list[str]:
    """start-l2.sh's L2 QEMU argv for `env`: its RAM/backend set-up block and result channel as written, then the
    qemu line the outer shell expands inside `setsid sh -c "..."` and the inner shell splits into words."""
    text = START_L2.read_text()
    setup = text[text.index("KERNEL_NODE_MB=${KERNEL_NODE_MB:-0}"):text.index("rm -f /run/l2.rc")]
    result = "\n".join(ln for ln in text.splitlines() if ln.startswith("result="))
    m = re.search(r"(qemu-system-x86_64 .*?-append '\$L2_APPEND')", text, re.S)
    assert m, "start-l2.sh: no qemu-system-x86_64 ... -append '$L2_APPEND' line"
    prog = "\n".join([
        "mkdir() { :; }; mount() { :; }; rm() { :; }; dd() { :; }",  # the block's side effects, stubbed
        *(f"{k}='{v}'" for k, v in env.items()), setup, result,
        f'inner="{m.group(1)}"', 'eval "set -- $inner"', "printf '%s\\n' \"$@\""])
    out = subprocess.run(["sh", "-c", prog], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.splitlines()


def env_of(s: Scenario) -> dict[str, str]:
    return l1host.start_l2_env(s)  # what harness/scenario/case.py passes to start-l2.sh


HEAD = ["qemu-system-x86_64", "-L", "/usr/share/qemu", "-enable-kvm", "-cpu", "host,-xsave", "-machine", "pc"]
TAIL = ["-nodefaults", "-no-user-config", "-vga", "none", "-display", "none", "-no-reboot",
        "-serial", "file:/run/l2-console.log",
        "-device", "virtio-serial-pci,id=vser0", "-chardev", "file,id=result,path=/run/l2-result.log",
        "-device", "virtserialport,bus=vser0.0,chardev=result,name=harness.result",
        "-kernel", "/l2/bzImage", "-initrd", "/l2/initramfs.cpio", "-append"]


@pytest.mark.parametrize("vendor", VENDORS)
def test_l2_command_line_default_scenario(vendor):
    s = Scenario()  # 256 MiB, a 128 MiB kernel node, the ledger's DIMM on node 1, anon RAM
    assert kvm_accel(vendor).mode == "kvm"  # L2 always runs under L1's KVM, whatever accelerates L1
    argv = l2_argv(env_of(s))
    assert argv == HEAD + [
        "-m", "128M,slots=1,maxmem=256M",
        "-object", "memory-backend-file,id=knode,size=128M,mem-path=/run/l2-kernel-node.ram,share=on",
        "-numa", "node,nodeid=0,cpus=0-0,memdev=knode", "-numa", "node,nodeid=1",
        "-object", "memory-backend-ram,id=ram0,size=128M", "-device", "pc-dimm,id=data,memdev=ram0,node=1",
        "-smp", "1"] + TAIL + [l1host.l2_append(s)]


def test_l2_command_line_one_node_memfd_two_cpus():
    s = Scenario(l2_kernel_node_mb=0, memory_backend="memfd", l2_cpus=2, memory_max_mb=64,
                 ledger={"size_mb": 96, "rounds": 4})
    argv = l2_argv(env_of(s))
    assert argv == HEAD + ["-m", "256", "-object", "memory-backend-memfd,id=ram0,size=256M,share=on",
                           "-machine", "memory-backend=ram0", "-smp", "2"] + TAIL + [l1host.l2_append(s)]


def test_l2_append_is_one_word():
    s = Scenario()
    argv = l2_argv(env_of(s))
    assert argv[-1] == l1host.l2_append(s) and " " in argv[-1] and argv[-2] == "-append"


# ---- kvm_intel knobs: scenario -> setup_env -> setup-host.sh's modprobe ---------------------------------------------
def test_kvm_intel_knobs_reach_setup_env():
    from harness.config import parse_scenario
    assert Scenario().kvm_intel.params() == "" and l1host.setup_env(Scenario())["KVM_INTEL_PARAMS"] == ""
    s = parse_scenario("kvm_intel: {eptad: false}\n", overrides=["kvm_intel.pml=false"])
    assert l1host.setup_env(s)["KVM_INTEL_PARAMS"] == "eptad=N pml=N"
    assert parse_scenario("kvm_intel: {eptad: true, pml: true}\n").kvm_intel.params() == "eptad=Y pml=Y"


def test_unknown_kvm_intel_knob_is_an_error():
    from harness.config import parse_scenario
    from harness.errors import InputError
    with pytest.raises((InputError, ValueError), match="enable_pml"):
        parse_scenario("kvm_intel: {enable_pml: false}\n")


SETUP_HOST = REPO / "guest-images/l1/setup-host.sh"


def setup_host_params(tmp_path: Path, mod: str, params: str, sysfs: dict[str, str]) -> subprocess.CompletedProcess:
    """setup-host.sh's module-parameter block (from `params=""` to the read-back loop's `done`), run by a real
    shell against a fake /sys/module and a stubbed modprobe."""
    text = SETUP_HOST.read_text()
    start = text.index('params=""')
    block = text[start:text.index("done\n", start) + 5]
    pdir = tmp_path / mod / "parameters"
    pdir.mkdir(parents=True)
    for k, v in sysfs.items():
        (pdir / k).write_text(v + "\n")
    block = block.replace("/sys/module/", f"{tmp_path}/").replace("[ -c /dev/kvm ]", "true")
    prog = "\n".join(["set -e", 'fail() { echo "setup-host: $*" >&2; exit 1; }',
                      'modprobe() { echo "modprobe $*" >> "$LOG"; }', f"mod={mod}", "vendor=TestVendor",
                      block, "echo ok"])
    env = {"KVM_INTEL_PARAMS": params, "LOG": str(tmp_path / "modprobe.log"), "PATH": "/usr/bin:/bin",
           "TDP_MMU": "Y"}
    return subprocess.run(["sh", "-c", prog], capture_output=True, text=True, timeout=30, env=env)


def test_setup_host_passes_and_checks_kvm_intel_params(tmp_path):
    r = setup_host_params(tmp_path, "kvm_intel", "eptad=N pml=N", {"eptad": "N", "pml": "N"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert (tmp_path / "modprobe.log").read_text().splitlines() == ["modprobe kvm tdp_mmu=Y",
                                                                   "modprobe kvm_intel nested=1 eptad=N pml=N"]


def test_setup_host_refuses_a_param_that_did_not_take(tmp_path):
    # a CPU without EPT A/D bits: kvm_intel reads eptad=N whatever modprobe said
    r = setup_host_params(tmp_path, "kvm_intel", "eptad=Y", {"eptad": "N"})
    assert r.returncode == 1 and "eptad=Y asked for, but L1's kvm_intel has eptad=N" in r.stderr


def test_setup_host_refuses_kvm_intel_params_on_amd(tmp_path):
    r = setup_host_params(tmp_path, "kvm_amd", "eptad=N", {})
    assert r.returncode == 1 and "kvm_intel parameters (eptad=N) asked for, but L1 is TestVendor (kvm_amd)" in r.stderr
    ok = setup_host_params(tmp_path / "b", "kvm_amd", "", {})
    assert ok.returncode == 0 and (tmp_path / "b/modprobe.log").read_text().splitlines()[-1] == \
        "modprobe kvm_amd nested=1"


# ---- scenarios/hardware.yaml -------------------------------------------------------------------------------------
def test_hardware_matrix_covers_vendors_and_versions():
    from harness.config import load_scenario
    from harness.fleet.matrix import expand, load_matrix, overrides_of
    path = REPO / "scenarios/hardware.yaml"
    m = load_matrix(path)
    cells = expand(m)
    for c in cells:  # every variant is a valid scenario
        load_scenario(path.parent / m.scenario, overrides_of(c.variant))
    refs = {k: m.kernels[k] for k in {c.kernel for c in cells}}
    assert any(r.prebuilt for r in refs.values()) and any(r.debian == "7.2" for r in refs.values())
    assert any(r.build and r.build.endswith("debian-7.2.yaml") for r in refs.values())
    intel = [c for c in cells if "kvm_intel" in c.variant]
    # each kvm_intel cell declares what it needs of the host and states a real expectation
    assert intel and all(c.requires.get("vendor") == "intel" and c.why for c in intel)
    assert all(c.expect == ("finding" if m.kernels[c.kernel].mutant else "clean") for c in intel)
    knobs = {tuple(sorted(c.variant["kvm_intel"].items())) for c in intel}
    assert {(("eptad", True), ("pml", True)), (("eptad", True), ("pml", False)),
            (("eptad", False), ("pml", False))} <= knobs
    assert {c.kernel for c in intel} >= {"debian-6.12", "debian-7.2"}
    assert any(m.kernels[c.kernel].mutant for c in intel)
    assert all(c.expect in ("clean", "finding") for c in cells if "kvm_intel" not in c.variant)
