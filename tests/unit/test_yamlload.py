"""load_model: every way an input file can be wrong gives ONE line naming the file, the line and the key."""
from typing import Literal, Union

import pytest
from pydantic import BaseModel, ConfigDict, Field

from harness.errors import InputError
from harness.yamlload import load_model


class _S(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Inner(_S):
    rounds: int = Field(2, gt=0)
    kind: Literal["disk", "zram"] = "disk"


class A(_S):
    a: str


class B(_S):
    b: int


class Top(_S):
    name: str = "x"
    inner: Inner = Inner()
    items: list[Inner] = []
    either: Union[A, B, None] = None


@pytest.mark.parametrize("text, overrides, expected", [
    # unknown key, at the top and nested
    ("name: n\ncolour: red\n", [], "{p}:2: unknown key 'colour'"),
    ("name: n\ninner:\n  rounds: 3\n  colour: red\n", [], "{p}:4: unknown key 'inner.colour'"),
    # wrong type
    ("name: [1]\n", [], "{p}:1: key 'name': Input should be a valid string"),
    ("inner: 5\n", [], "{p}:1: key 'inner': Input should be a valid dictionary or instance of Inner"),
    # nested key, and a list item's key
    ("name: n\ninner:\n  kind: nfs\n", [], "{p}:3: key 'inner.kind': Input should be 'disk' or 'zram'"),
    ("items:\n  - rounds: 1\n  - rounds: 0\n", [], "{p}:3: key 'items.1.rounds': Input should be greater than 0"),
    # a union names the member the input was meant as, not the first one tried
    ("either: {b: x}\n", [], "{p}:1: key 'either.b': Input should be a valid integer, unable to parse string as an integer"),
    # an override that causes the error is named instead of a line
    ("inner:\n  rounds: 3\n", ["inner.rounds=0"], "--set inner.rounds=0: key 'inner.rounds': Input should be greater than 0"),
    ("name: n\n", ["nope=1"], "--set nope=1: unknown key 'nope'"),
    ("name: n\n", ["inner={kind: nfs}"], "--set inner={kind: nfs}: key 'inner.kind': Input should be 'disk' or 'zram'"),
    ("name: n\n", ["name.x=1"], "--set name.x=1: 'name' is not a section"),
    ("name: n\n", ["name"], "--set name: expected KEY=VALUE"),
    ("name: n\n", ["name=["], "--set name=[: value is not valid YAML: expected the node content, but found '<stream end>'"),
    # an override elsewhere does not take the blame for the file's own error
    ("name: n\ninner:\n  kind: nfs\n", ["inner.rounds=4"], "{p}:3: key 'inner.kind': Input should be 'disk' or 'zram'"),
    # malformed YAML: the line and column of the YAML error
    ("name: n\ninner: {rounds: 3\n", [], "{p}:3: malformed YAML at column 1: expected ',' or '}', but got '<stream end>'"),
    ("name: n\n  inner: 3\n", [], "{p}:2: malformed YAML at column 8: mapping values are not allowed here"),
    ("- a\n- b\n", [], "{p}: must be a YAML mapping (got list)"),
])
def test_errors_name_file_line_and_key(tmp_path, text, overrides, expected):
    p = tmp_path / "x.yaml"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        load_model(p, Top, overrides)
    assert str(e.value) == expected.replace("{p}", str(p))


def test_missing_and_unreadable_files_name_the_file_and_the_reason(tmp_path):
    with pytest.raises(InputError) as e:
        load_model(tmp_path / "absent.yaml", Top, what="scenario")
    assert str(e.value) == f"{tmp_path / 'absent.yaml'}: cannot read scenario: not found"
    with pytest.raises(InputError) as e:
        load_model(tmp_path, Top)
    assert str(e.value) == f"{tmp_path}: cannot read file: Is a directory"


def test_values_and_overrides_apply(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("name: n\ninner:\n")  # an empty section takes nested overrides
    t = load_model(p, Top, ["inner.rounds=7", "either={a: hi}"])
    assert (t.name, t.inner.rounds, t.either) == ("n", 7, A(a="hi"))
    p.write_text("")
    assert load_model(p, Top) == Top()


def test_the_three_callers_share_the_format(tmp_path):
    from harness.config import load_scenario
    from harness.kernel.source import load_kernel_yaml
    from harness.fleet.matrix import load_matrix
    (tmp_path / "s.yaml").write_text("seed: 1\nledger:\n  rounds: 0\n")
    (tmp_path / "k.yaml").write_text("base:\n  git: x\n  ref: [1]\n")
    (tmp_path / "m.yaml").write_text("name: x\nkernels: {a: {}}\ngroups:\n  - kernels: [a]\n    expect: maybe\n")
    for load, name, prefix in [
        (load_scenario, "s.yaml", ":3: key 'ledger.rounds': Input should be greater than or equal to 1"),
        (load_kernel_yaml, "k.yaml", ":3: key 'base.ref': Input should be a valid string"),
        (load_matrix, "m.yaml", ":5: key 'groups.0.expect': Input should be 'clean' or 'finding'"),
    ]:
        with pytest.raises(InputError) as e:
            load(tmp_path / name)
        assert str(e.value) == f"{tmp_path / name}{prefix}"
