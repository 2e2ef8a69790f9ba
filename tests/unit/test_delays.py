"""The delay-injection knob (scenario `delays`, docs/races.md): validation, the module parameters L1's set-up gets,
the per-probe counts read back, and the kernels the module can be built for."""
import pytest

from harness.config import parse_scenario
from harness.errors import InputError
from harness.images.delay import objtree_of
from harness.scenario.l1host import delay_counts, delay_env, setup_env


def test_no_delays_means_no_module_and_the_same_setup_environment():
    env = setup_env(parse_scenario("seed: 1"))
    assert "DELAY_KO" not in env and "DELAY_PARAMS" not in env
    assert delay_env([]) == {}


@pytest.mark.parametrize("yaml_text, params", [
    ("delays: [{func: __kvm_faultin_pfn, ret: true, us: 200, prob: 0.5}]",
     "func=__kvm_faultin_pfn offset=0 ret=1 us=200 ppm=500000"),
    ("delays: [{func: kvm_tdp_mmu_age_gfn_range, offset: 0x2c, us: 50},"
     " {func: kvm_tdp_mmu_unmap_gfn_range, us: 20000, prob: 0.000001}]",
     "func=kvm_tdp_mmu_age_gfn_range,kvm_tdp_mmu_unmap_gfn_range offset=44,0 ret=0,0 us=50,20000 ppm=1000000,1"),
    # alternatives: setup-host.sh probes the first name L1's kallsyms has
    ("delays: [{func: kvm_mmu_faultin_pfn|kvm_faultin_pfn, ret: true, us: 300}]",
     "func=kvm_mmu_faultin_pfn|kvm_faultin_pfn offset=0 ret=1 us=300 ppm=1000000"),
])
def test_delays_become_positional_module_parameters(yaml_text, params):
    env = setup_env(parse_scenario(yaml_text))
    assert env["DELAY_PARAMS"] == params
    assert env["DELAY_KO"] == "/run/kvmdelay.ko"


@pytest.mark.parametrize("bad, key", [
    ("delays: [{func: 'a b', us: 1}]", "delays.0.func"),
    ("delays: [{func: 'x;reboot', us: 1}]", "delays.0.func"),   # reaches a shell command line in L1
    ("delays: [{func: 'a||b', us: 1}]", "delays.0.func"),
    ("delays: [{func: 'a|', us: 1}]", "delays.0.func"),
    ("delays: [{func: x, us: 0}]", "delays.0.us"),
    ("delays: [{func: x, us: 20001}]", "delays.0.us"),
    ("delays: [{func: x, us: 5, prob: 0}]", "delays.0.prob"),
    ("delays: [{func: x, us: 5, prob: 1.5}]", "delays.0.prob"),
    ("delays: [{func: x, us: 5, ret: true, offset: 4}]", "delays.0"),
    ("delays: [{us: 5}]", "delays.0.func"),
    ("delays: [" + ",".join(["{func: x, us: 1}"] * 9) + "]", "delays"),
])
def test_bad_delays_are_input_errors_naming_the_key(bad, key):
    with pytest.raises(InputError, match=f"key '{key}'"):
        parse_scenario(bad)


@pytest.mark.parametrize("text, n, want", [
    ("3,1,0,0,0,0,0,0\n1,0,0,0,0,0,0,0\n", 2, {"seen": [3, 1], "fired": [1, 0]}),
    ("12,0,0,0,0,0,0,0\n12,0,0,0,0,0,0,0", 1, {"seen": [12], "fired": [12]}),
    ("cat: can't open '/sys/module/kvmdelay/parameters/seen': No such file or directory", 1, None),
    ("", 1, None),
    ("1,2\n", 1, None),
])
def test_delay_counts_read_back(text, n, want):
    assert delay_counts(text, n) == want


def test_module_needs_a_harness_built_kernel():
    with pytest.raises(InputError, match="linux-headers"):
        objtree_of({"source": "debian-package", "release": "7.2.13+deb14-amd64"})
    with pytest.raises(InputError, match="'external'"):
        objtree_of({"source": "external", "bzimage": "/x/bzImage"})
    assert str(objtree_of({"source": "build", "objtree": {"path": "/c/obj/debian-7.2-abc-0123"}})) == \
        "/c/obj/debian-7.2-abc-0123"
    assert str(objtree_of({"source": "tree-build", "objtree": {"path": "/c/obj/tree-1"}})) == "/c/obj/tree-1"
    assert str(objtree_of({"source": "tree", "tree": "/home/dev/linux"})) == "/home/dev/linux"


def test_the_delay_module_build_takes_the_kernel_builds_lock(tmp_path, monkeypatch):
    """make in a shared object tree while a kernel build makes there corrupts both: the module build holds the
    lock the kernel build holds (KERNEL.yaml builds: per source tree; --tree --build: per repository key)."""
    from harness.images import delay
    monkeypatch.setattr(delay, "cache_dir", lambda: tmp_path)
    obj = tmp_path / "obj"
    assert delay.tree_lock(obj / "debian-7.2-ecb3877b9988-4012ab698676c7f3", "build") == \
        tmp_path / "src/debian-7.2-ecb3877b9988.lock"
    assert delay.tree_lock(obj / "tree-base-acc29107fc6d", "tree-build") == tmp_path / "src/tree-base-acc29107fc6d.lock"
