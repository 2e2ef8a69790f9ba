"""`harness lava-job`: the job it writes passes LAVA's own job schema (lava_common, strict mode) for the whole
matrix and for a shard, and that check fails for a broken job."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.fleet import lava
from harness.cli import main
from harness.errors import InputError
from harness.fleet.matrix import expand, load_matrix
from tests.conftest import REPO

DEBIAN_PY = "/usr/bin/python3"
VALIDATE = ("import lava_common.schemas as s, yaml, sys; "
            "s.validate(yaml.safe_load(open(sys.argv[1])), strict=True)")


def _has_lava_common() -> bool:
    try:
        r = subprocess.run([DEBIAN_PY, "-c", "import lava_common.schemas, yaml"], capture_output=True)
        return r.returncode == 0
    except OSError:
        return False


needs_lava = pytest.mark.skipif(not _has_lava_common(),
                                reason=f"{DEBIAN_PY} lacks lava_common (apt-get install lava-common; "
                                       "scripts/install-deps.sh --build installs it)")


def validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([DEBIAN_PY, "-c", VALIDATE, str(path)], capture_output=True, text=True, timeout=60)


def write_job(tmp_path, *extra) -> tuple[Path, dict]:
    out = tmp_path / f"job{'-'.join(extra).replace('/', '-')}.yaml"
    assert main(["lava-job", "scenarios/nightly.yaml", *extra, "--out", str(out)]) == 0
    return out, yaml.safe_load(out.read_text())


def run_steps(job: dict) -> list[str]:
    test = next(a["test"] for a in job["actions"] if "test" in a)
    (d,) = test["definitions"]
    assert d["from"] == "inline"
    return d["repository"]["run"]["steps"]


def main_list(*extra) -> list[str]:
    r = subprocess.run([sys.executable, "-m", "harness", "matrix", "scenarios/nightly.yaml", "--list", *extra],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [ln.split()[0] for ln in r.stdout.splitlines()]


def head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()


@needs_lava
@pytest.mark.parametrize("shard", [None, "2/4"], ids=["whole-matrix", "shard-2-of-4"])
def test_generated_job_passes_lavas_strict_schema(tmp_path, shard):
    path, job = write_job(tmp_path, *(["--shard", shard] if shard else []))
    r = validate(path)
    assert r.returncode == 0, r.stderr
    assert job["device_type"] == "x86" and job["visibility"] == "public" and job["priority"] == "medium"
    assert [next(iter(a)) for a in job["actions"]] == ["deploy", "boot", "test"]
    steps = run_steps(job)
    commit = head()
    assert job["metadata"]["commit"] == commit and any(f"git checkout --detach {commit}" in s for s in steps)
    matrix = [s for s in steps if ".venv/bin/harness matrix scenarios/nightly.yaml" in s]
    assert len(matrix) == 1
    if shard:
        assert "--shard 2/4 " in matrix[0] and job["metadata"]["shard"] == "2/4" and "2/4" in job["job_name"]
    else:
        assert "--shard" not in matrix[0] and job["metadata"]["shard"] == "all"
    assert any("harness doctor --require-kvm" in s for s in steps)
    assert any(s.startswith("tar -czf results-") for s in steps)   # the results folder, as an artifact
    # the cells are the shard's as `harness matrix --list` names them; every kernel they boot is named by key
    listed = main_list(*(["--shard", shard] if shard else []))
    assert job["metadata"]["cells"].split(",") == listed and job["metadata"]["cell_count"] == str(len(listed))
    booted = {c.kernel for c in expand(load_matrix(REPO / "scenarios/nightly.yaml")) if c.id in listed}
    assert booted == {k.split(".")[1] for k in job["metadata"] if k.startswith("kernel.")}
    for k in booted:
        assert job["metadata"][f"kernel.{k}.kind"] == "build"
        assert job["metadata"].get(f"kernel.{k}.input_key") or job["metadata"].get(f"kernel.{k}.note")


def _drop_visibility(job):
    del job["visibility"]


def _drop_deploy_kernel(job):
    del job["actions"][0]["deploy"]["kernel"]


def _unknown_key(job):
    job["actions"][1]["boot"]["bogus"] = 1   # strict mode: unknown keys are errors


def _test_timeout_above_job(job):
    job["actions"][2]["test"]["timeout"] = {"hours": 99}


@needs_lava
@pytest.mark.parametrize("break_it,expect", [
    (_drop_visibility, "visibility"), (_drop_deploy_kernel, "needs a kernel to deploy"),
    (_unknown_key, "bogus"), (_test_timeout_above_job, "larger than job timeout")])
def test_broken_job_fails_validation(tmp_path, break_it, expect):
    path, job = write_job(tmp_path, "--shard", "1/4")
    assert validate(path).returncode == 0
    break_it(job)
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    r = validate(path)
    assert r.returncode != 0 and expect in r.stderr, r.stderr


@needs_lava
def test_kernel_built_here_is_fetched_by_key_and_checked_by_sha256(tmp_path):
    key = "debian-6.12-585a4a074597-p1-0123456789abcdef"
    kernels = {"mutant-a": {"kind": "build", "input_key": "i" * 64, "key": key, "bzimage_sha256": "b" * 64},
               "clean": {"kind": "build", "note": "keys unknown here; built on the device"}}
    job = lava.job("scenarios/nightly.yaml", (3, 4), "c" * 40, "https://git.example/h.git", "https://a.example",
                   kernels)
    fetch = [s for s in run_steps(job) if s.startswith("lava-test-case fetch-kernel-")]
    assert len(fetch) == 1 and "fetch-kernel-mutant-a " in fetch[0]
    assert f"https://a.example/kernels/{key}.tar.xz" in fetch[0]
    assert f"{'b' * 64}  /var/cache/kvm-dirty-harness/kernels/{key}/bzImage" in fetch[0]
    assert "sha256sum -c" in fetch[0] and f"by-input/{'i' * 64}" in fetch[0]
    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump(job, sort_keys=False))
    assert validate(p).returncode == 0, validate(p).stderr


@pytest.mark.parametrize("bad", ["0/4", "5/4", "x", "1/0", "2"])
def test_bad_shard_is_an_input_error(bad, capsys):
    with pytest.raises(InputError):
        lava.parse_shard(bad)
    assert main(["lava-job", "scenarios/nightly.yaml", "--shard", bad]) == 2
    assert "--shard" in capsys.readouterr().err


def test_cases_report_every_cell_of_the_results_folder(tmp_path):
    cells = [{"id": "0123456789", "kernel": "mutant-a", "variant": {}, "expect": "finding", "seed": 1,
              "outcome": "finding", "ok": True},
             {"kernel": "clean", "variant": {"thp": "always"}, "expect": "clean", "seed": None, "outcome": "finding",
              "ok": False},
             {"kernel": "port", "variant": {"swap": {"kind": "zram"}}, "expect": "clean", "seed": None,
              "outcome": "skipped", "ok": False, "skip": "needs accel kvm"}]
    (tmp_path / "matrix-x").mkdir()
    (tmp_path / "matrix-x/matrix.json").write_text(json.dumps({"cells": cells}))
    assert lava.cases(tmp_path) == ["lava-test-case 0123456789-mutant-a_default_seed1 --result pass",
                                    "lava-test-case clean_thp_always --result fail",
                                    "lava-test-case port_swap_kind_zram --result skip"]
