"""KERNEL.yaml schema: accepted forms and one-line errors that name the key."""
import pytest

from harness.errors import InputError
from harness.kernel.source import DebianBase, GitBase, TarballBase, B4Series, load_kernel_yaml, parse_kernel_yaml


def test_full_example():
    s = parse_kernel_yaml("""
base: {debian-source: "6.12"}
series: ../patches/series
upto: null
defconfig: x86_64_defconfig
fragments: [../kconfigs/kvm-host.config, ../kconfigs/tracing.config]
""")
    assert isinstance(s.base, DebianBase) and s.base.debian_source == "6.12"
    assert s.series == "../patches/series" and s.upto is None
    assert s.fragments == ["../kconfigs/kvm-host.config", "../kconfigs/tracing.config"]


def test_debian_version_as_float_is_kept_as_text():
    assert parse_kernel_yaml("base: {debian-source: 6.12}").base.debian_source == "6.12"


def test_git_and_tarball_and_b4():
    s = parse_kernel_yaml("base: {git: /src/linux, ref: v6.12}\nseries: {b4: 20240101.abc@example.org}\nupto: 2")
    assert isinstance(s.base, GitBase) and s.base.ref == "v6.12"
    assert isinstance(s.series, B4Series) and s.upto == 2
    assert isinstance(parse_kernel_yaml("base: {tarball: linux.tar.xz}").base, TarballBase)
    assert parse_kernel_yaml("base: {git: x}").base.ref == "HEAD"
    assert parse_kernel_yaml("base: {git: x}").defconfig == "x86_64_defconfig"


@pytest.mark.parametrize("text, needle", [
    ("base: {debian-source: '6.12'}\nfragmets: []", "fragmets"),
    ("base: {debian-source: '6.12'}\nupto: -1", "upto"),
    ("base: {debian-source: '6.12'}\nupto: two", "upto"),
    ("base: {debian-source: '6.12', git: x}", "exactly one"),
    ("base: {svn: x}", "base"),
    ("base: {tarball: x, ref: y}", "ref"),
    ("base: {git: x, reff: y}", "reff"),
    ("series: x", "base"),
    ("base: {debian-source: '6.12'}\nseries: {b5: x}", "series"),
    ("base: {debian-source: '6.12'}\nfragments: a.config", "fragments"),
    ("- a\n- b", "mapping"),
    ("base: [", "YAML"),
])
def test_errors_name_the_key(text, needle):
    with pytest.raises(InputError) as e:
        parse_kernel_yaml(text, "k.yaml")
    msg = str(e.value)
    assert needle in msg and msg.startswith("k.yaml") and "\n" not in msg


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_kernel_yaml(tmp_path / "nope.yaml")


def test_paths_resolve_relative_to_the_file(tmp_path):
    (tmp_path / "k").mkdir()
    y = tmp_path / "k" / "K.yaml"
    y.write_text("base: {tarball: ../linux.tar}\n")
    ki = load_kernel_yaml(y)
    assert ki.resolve(ki.spec.base.tarball) == (tmp_path / "linux.tar").resolve()


def test_missing_base_paths_are_input_errors(tmp_path):
    from harness.kernel.source import base_identity
    for body in ("base: {tarball: missing.tar.xz}", "base: {git: missing-dir}"):
        y = tmp_path / "K.yaml"
        y.write_text(body)
        with pytest.raises(InputError, match="not found"):
            base_identity(load_kernel_yaml(y))
