"""docs/ci/*-nightly.yml: valid against the CI systems' own schemas (the copies check-jsonschema ships, offline) and
shaped as the nightly needs: N shard jobs on KVM runners, each `harness matrix --shard I/N`, then one merge job."""
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from harness.cli import _parser
from tests.conftest import REPO

GITHUB = REPO / "docs/ci/github-nightly.yml"
GITLAB = REPO / "docs/ci/gitlab-nightly.yml"


def check_schema(schema: str, path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("schema,path", [("vendor.github-workflows", GITHUB), ("vendor.gitlab-ci", GITLAB)])
def test_template_is_valid_for_its_ci_system(schema, path):
    r = check_schema(schema, path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validation done" in r.stdout


@pytest.mark.parametrize("schema,path,break_it,expect", [
    # a job without runs-on, and a timeout that is neither a number nor an expression: both are schema errors
    ("vendor.github-workflows", GITHUB, lambda d: d["jobs"]["shard"].pop("runs-on"), "runs-on"),
    ("vendor.github-workflows", GITHUB, lambda d: d["jobs"]["merge"].update({"timeout-minutes": "soon"}), "soon"),
    # GitLab allows parallel 1..200 and a fixed set of `when` values
    ("vendor.gitlab-ci", GITLAB, lambda d: d["nightly-shard"].update(parallel=500), "500"),
    ("vendor.gitlab-ci", GITLAB, lambda d: d["nightly-merge"]["artifacts"].update(when="sometimes"), "sometimes"),
])
def test_schema_check_rejects_a_broken_copy(tmp_path, schema, path, break_it, expect):
    data = yaml.safe_load(path.read_text())
    break_it(data)
    if True in data:   # YAML 1.1 read GitHub's `on:` as true: write it back as `on`
        data["on"] = data.pop(True)
    broken = tmp_path / path.name
    broken.write_text(yaml.safe_dump(data, sort_keys=False))
    r = check_schema(schema, broken)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Schema validation errors" in r.stdout + r.stderr and expect in r.stdout + r.stderr


def _harness_commands(lines: list[str], subst: dict[str, str]) -> list[list[str]]:
    out = []
    for ln in lines:
        for k, v in subst.items():
            ln = ln.replace(k, v)
        if ln.startswith(".venv/bin/harness "):
            out.append(shlex.split(ln)[1:])
    return out


def github_commands() -> list[list[str]]:
    jobs = yaml.safe_load(GITHUB.read_text())["jobs"]
    runs = [s["run"] for j in jobs.values() for s in j["steps"] if "run" in s]
    return _harness_commands(runs, {"${{ matrix.shard }}": "1", '"$JOBS"': "2"})


def gitlab_commands() -> list[list[str]]:
    ci = yaml.safe_load(GITLAB.read_text())
    n = str(ci["nightly-shard"]["parallel"])
    return _harness_commands(ci["nightly-shard"]["script"] + ci["nightly-merge"]["script"],
                             {"$CI_NODE_INDEX": "1", "$CI_NODE_TOTAL": n, '"$JOBS"': "2"})


def _parses(argv: list[str]) -> None:
    known = _parser()._subparsers._group_actions[0].choices
    # a template that calls what the CLI does not have is broken: a failure here, never a skip
    assert argv[0] in known, f"the CI template runs `harness {argv[0]}`, which the CLI does not have: {argv}"
    assert argv[0] != "matrix" or "--shard" in known["matrix"].format_usage(), f"`harness matrix` has no --shard: {argv}"
    _parser().parse_args(argv)   # SystemExit on an unknown flag or a missing argument


def test_github_workflow_shape():
    wf = yaml.safe_load(GITHUB.read_text())
    on = wf.get("on", wf.get(True))   # YAML 1.1 reads a bare `on` key as true
    assert "schedule" in on and "workflow_dispatch" in on
    shard, merge = wf["jobs"]["shard"], wf["jobs"]["merge"]
    assert shard["runs-on"] == ["self-hosted", "x86-64", "kvm"] and "self-hosted" in merge["runs-on"]
    assert shard["strategy"]["fail-fast"] is False
    shards = shard["strategy"]["matrix"]["shard"]
    runs = [s["run"] for s in shard["steps"] if "run" in s]
    m = [re.search(r"harness matrix scenarios/nightly\.yaml --shard \$\{\{ matrix\.shard \}\}/(\d+) .*"
                   r"--results results/shard$", r) for r in runs]
    n = [int(x.group(1)) for x in m if x]
    assert n and shards == list(range(1, n[0] + 1)), (shards, n)
    assert runs[:2] == ["make setup-build", ".venv/bin/harness doctor --require-kvm"]
    upload = next(s for s in shard["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["path"] == "results/shard"
    assert merge["needs"] == "shard" and merge["if"] == "always()"
    download = next(s for s in merge["steps"] if s.get("uses", "").startswith("actions/download-artifact"))
    prefix = download["with"]["pattern"].rstrip("*")
    assert upload["with"]["name"].startswith(prefix)
    mruns = [s["run"] for s in merge["steps"] if "run" in s]
    # merge takes the matrix folders (DIR/matrix.json) the shards wrote under their results roots
    assert f".venv/bin/harness merge {download['with']['path']}/{prefix}*/matrix-* --results results/merged" in mruns
    assert any(s.get("with", {}).get("path") == "results/merged" for s in merge["steps"])
    assert any("junit" in s.get("uses", "") for s in merge["steps"])
    for job in (shard, merge):
        assert 0 < job["timeout-minutes"] <= 360
        for s in job["steps"]:
            if s.get("uses", "").startswith("actions/"):
                assert re.fullmatch(r"actions/(checkout|upload-artifact|download-artifact)@v4", s["uses"]), s
    assert [c[0] for c in github_commands()] == ["doctor", "matrix", "merge"]


def test_gitlab_pipeline_shape():
    ci = yaml.safe_load(GITLAB.read_text())
    assert ci["stages"] == ["shard", "merge"]
    shard, merge = ci["nightly-shard"], ci["nightly-merge"]
    assert shard["stage"] == "shard" and merge["stage"] == "merge"
    assert set(shard["tags"]) == {"x86-64", "kvm"} and "x86-64" in merge["tags"]
    assert 2 <= shard["parallel"] <= 200
    script = " ".join(shard["script"])
    assert '--shard "$CI_NODE_INDEX/$CI_NODE_TOTAL"' in script and "results/shard-$CI_NODE_INDEX" in script
    assert shard["script"][:2] == ["make setup-build", ".venv/bin/harness doctor --require-kvm"]
    art = shard["artifacts"]
    assert art["when"] == "always" and art["paths"] == ["results/shard-$CI_NODE_INDEX/"]
    assert art["reports"]["junit"].startswith("results/shard-$CI_NODE_INDEX/")
    assert merge["needs"] == [{"job": "nightly-shard", "artifacts": True}] and merge["when"] == "always"
    assert ".venv/bin/harness merge results/shard-*/matrix-* --results results/merged" in merge["script"]
    assert merge["artifacts"]["when"] == "always" and merge["artifacts"]["paths"] == ["results/merged/"]
    assert shard["timeout"] and merge["timeout"]
    assert [c[0] for c in gitlab_commands()] == ["doctor", "matrix", "merge"]


@pytest.mark.parametrize("commands", [github_commands, gitlab_commands], ids=["github", "gitlab"])
def test_every_harness_command_in_the_templates_parses(commands):
    for argv in commands():
        _parses(argv)


def test_a_command_the_cli_lacks_fails_instead_of_skipping():
    with pytest.raises(AssertionError, match="does not have"):
        _parses(["no-such-command", "--shard", "1/2"])
