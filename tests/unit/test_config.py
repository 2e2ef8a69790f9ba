import pytest

from harness.config import load_scenario, parse_scenario
from harness.errors import InputError
from tests.conftest import REPO


def test_default_scenario_loads_with_the_measured_choices():
    s = load_scenario(REPO / "scenarios/default.yaml")
    assert s.swap.kind == "disk" and s.thp == "never" and s.memory_backend == "anon" and s.mglru
    assert s.memory_max_mb < s.ledger.size_mb <= s.l2_memory_mb - s.l2_kernel_node_mb - 8
    assert s.ledger_pages == s.ledger.size_mb * 256


@pytest.mark.parametrize("text,needle", [
    ("ledger: [", "x.yaml:1: malformed YAML"),
    ("seed: 1\nfoo: 2\n", "x.yaml:2: unknown key 'foo'"),
    ("ledger:\n  rounds: 2\n  colour: red\n", "x.yaml:3: unknown key 'ledger.colour'"),
    ("ledger:\n  size_mb: lots\n", "x.yaml:2: key 'ledger.size_mb'"),
    ("swap: {kind: nfs}\n", "key 'swap.kind'"),
    ("thp: sometimes\n", "key 'thp'"),
    ("memory_max_mb: 400\n", "memory_max_mb must be below ledger.size_mb"),
    ("l2_memory_mb: 320\n", "must be a positive multiple of 128 MiB"),
    ("ledger: {size_mb: 124}\n", "must leave 8 MiB of the data DIMM"),
    ("l2_kernel_node_mb: 64\n", "at least 96"),
    ("l2_kernel_node_mb: 0\nmemory_max_mb: 300\n", "memory_max_mb must be below l2_memory_mb"),
    ("l2_kernel_node_mb: 0\nledger: {size_mb: 200}\n", "must leave ~96 MiB"),
    ("swap: {size_mb: 256}\n", "at least twice l2_memory_mb"),
    ("- a\n- b\n", "must be a YAML mapping"),
])
def test_bad_scenarios_name_the_key_and_line(text, needle):
    with pytest.raises(InputError) as e:
        parse_scenario(text, "x.yaml")
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_overrides_apply_and_are_validated():
    s = parse_scenario("seed: 1\n", "x.yaml", ["seed=9", "ledger.rounds=2", "swap.kind=zram"])
    assert (s.seed, s.ledger.rounds, s.swap.kind) == (9, 2, "zram")
    with pytest.raises(InputError, match="unknown key 'nope'"):
        parse_scenario("", "x.yaml", ["nope=1"])
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_scenario("", "x.yaml", ["seed"])


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot read scenario"):
        load_scenario(tmp_path / "absent.yaml")


def test_a_bad_override_blames_the_set_not_the_file():
    with pytest.raises(InputError, match=r"^--set memory_max_mb=4: key 'memory_max_mb'"):
        parse_scenario("memory_max_mb: 16\n", "x.yaml", ["memory_max_mb=4"])
