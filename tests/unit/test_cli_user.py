"""The command line as a new user meets it: `--help` as a guide, scenarios by name, `harness list`, one line and
exit 2 for each bad input, --json for scripts, no traceback when the reader of stdout goes away."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import catalog
from harness.cli import _parser, main
from harness.paths import REPO

HARNESS = [sys.executable, "-m", "harness"]


def fails(capsys, *argv) -> str:
    """Run `harness ARGV` that must fail on its input: exit 2, exactly one line on stderr, nothing on stdout."""
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert out == "" and len(err.strip().splitlines()) == 1, err
    return err


def test_help_is_the_readme_guide_in_order():
    text = _parser().format_help()
    order = ["proves that a KVM memory-management change loses no guest writes", "make run", "make test",
             "Your own tree, in three commands", "harness run --tree", "harness bisect --git", "harness check --git",
             "Reading a finding", "CI and bare metal", "docs/microguest.md", "docs/measurements.md"]
    at = 0
    for s in order:  # each after the one before
        assert text.find(s, at) >= 0, (s, "not after", text[max(0, at - 80):at])
        at = text.find(s, at) + len(s)


@pytest.mark.parametrize("cmd,option", [(["run"], "--seed"), (["build"], "--upto"),
                                         (["console", "classify"], "--json"), (["matrix"], "--results"),
                                         (["matrix"], "--set"), (["doctor"], "--json"), (["run"], "--json")])
def test_every_option_says_what_it_does(cmd, option):
    p = _parser()
    sub = p._subparsers._group_actions[0].choices[cmd[0]]
    if len(cmd) > 1:
        sub = sub._subparsers._group_actions[0].choices[cmd[1]]
    action = next(a for a in sub._actions if option in a.option_strings)
    assert action.help and len(action.help) > 20


def test_upto_without_build_is_an_error(capsys):
    assert "--upto N needs --build KERNEL.yaml" in fails(capsys, "run", "--upto", "2")


def test_build_upto_negative_says_what_upto_takes(capsys):
    err = fails(capsys, "build", "kernels/port.yaml", "--upto", "-1")
    assert "--upto: must be a whole number >= 0 (got -1)" in err


def test_a_matrix_given_to_run_and_a_scenario_given_to_matrix_say_so(capsys):
    assert "nightly is a matrix (kernels x knobs x seeds), not a scenario: harness matrix nightly" in \
        fails(capsys, "run", "nightly")
    assert "default is a scenario (one run), not a matrix" in fails(capsys, "matrix", "default")
    assert "harness run default" in fails(capsys, "matrix", "scenarios/default.yaml")  # a repo file: by name


def test_unknown_names_and_missing_paths(capsys):
    assert "no scenario or matrix named 'nosuch' (harness list shows them: catch-time, default" in \
        fails(capsys, "run", "nosuch")
    assert "./nosuch.yaml: no such file (relative paths are from the current directory" in \
        fails(capsys, "run", "./nosuch.yaml")


def test_names_resolve_against_the_repo_and_paths_against_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert catalog.resolve("default") == (REPO / "scenarios/default.yaml", "default")
    assert catalog.resolve(None) == (REPO / "scenarios/default.yaml", "default")
    assert catalog.resolve("default.yaml") == (REPO / "scenarios/default.yaml", "default")
    (tmp_path / "default.yaml").write_text("seed: 3\n")  # a file of the user's, in the cwd, wins over the name
    assert catalog.resolve("default.yaml") == (Path("default.yaml"), "default.yaml")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/s.yaml").write_text("seed: 3\n")
    assert catalog.resolve("mine/s.yaml") == (Path("mine/s.yaml"), "mine/s.yaml")


def test_list_shows_every_scenario_and_matrix_with_a_one_line_purpose(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    files = sorted(p.stem for p in (REPO / "scenarios").glob("*.yaml"))
    for name in files:
        line = next(ln for ln in out.splitlines() if ln.split()[:1] == [name])
        assert len(line.split(None, 1)[1]) > 20 and len(line) < 140
    assert out.index("scenario files") < out.index("  default ") < out.index("matrix files") < out.index("  nightly ")
    rows = {r["name"]: r for r in catalog.catalog()}
    assert rows["default"]["kind"] == "scenario" and rows["nightly"]["kind"] == "matrix"
    assert rows["nightly"]["purpose"].endswith("seeds.") and "…" not in rows["default"]["purpose"]


@pytest.mark.parametrize("text,want", [
    ("# Time to catch. More text\nname: x\n", "Time to catch."),
    ("# One sentence that goes on\n# over two lines, e.g. like this. Then\n", "One sentence that goes on over two "
                                                                             "lines, e.g. like this."),
    ("purpose: Given as a key. Rest\n", "Given as a key."),
    ("name: no comment\n", ""),
])
def test_purpose_is_the_first_sentence(text, want):
    import yaml
    assert catalog.purpose(text, yaml.safe_load(text)) == want


def test_run_json_prints_one_object_and_nothing_else_on_stdout(capfd, monkeypatch):
    import harness.scenario.run as R

    def fake_run(args):  # prints as a run does, and a child process writes to its inherited stdout
        print("run 1: kernel x")
        subprocess.run(["echo", "a child's line"], check=True)
        return {"verdict": "finding", "run_id": "1", "path": "results/1"}
    monkeypatch.setattr(R, "run_from_args", fake_run)
    assert main(["run", "--json"]) == 1
    out, err = capfd.readouterr()
    assert json.loads(out) == {"verdict": "finding", "run_id": "1", "path": "results/1"}
    assert "run 1: kernel x" in err and "a child's line" in err


def test_run_json_on_bad_input_is_still_one_object(capfd):
    assert main(["run", "--json", "--kernel", "/nonexistent/kernel"]) == 2
    out, err = capfd.readouterr()
    obj = json.loads(out)
    assert obj["verdict"] == "input-error" and obj["exit"] == 2 and "does not exist" in obj["error"]
    assert err.count("\n") == 1


def test_a_closed_pipe_ends_quietly():
    """`harness report RUN --rejudge --json | head`: the reader goes away before the writer is done."""
    run = REPO / "tests/fixtures/runs/mutant-a"
    import os
    r, w = os.pipe()
    os.close(r)  # a reader that is already gone: the first write meets EPIPE, whatever the output's size
    try:
        p = subprocess.run([*HARNESS, "report", str(run), "--rejudge", "--json"], cwd=REPO, stdout=w,
                           stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(w)
    err = p.stderr.decode()
    assert p.returncode == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_matrix_set_applies_to_every_cell_and_is_checked_first(capsys, tmp_path):
    from harness.fleet.matrix import jobs as mj
    from harness.fleet.matrix.model import Cell
    err = fails(capsys, "matrix", "quick-matrix", "--set", "no_such_knob=1", "--list")
    assert "no_such_knob" in err
    assert main(["matrix", "quick-matrix", "--set", "thp=always", "--list"]) == 0
    capsys.readouterr()
    ctx = mj.Context(None, tmp_path / "s.yaml", {"k": {"source": "debian-prebuilt"}}, tmp_path, tmp_path, 1, {},
                     overrides=["thp=always"])
    argv = mj.child_argv(ctx, Cell("k", {"tdp_mmu": False}, "clean"), 3)
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert sets == ['name="k"', "tdp_mmu=false", "thp=always"]  # the user's --set last: it wins


def readme() -> str:
    return (REPO / "README.md").read_text()


def test_readme_is_the_guide_in_the_order_help_gives_it():
    text = readme()
    order = ["Proves that a KVM memory-management change", "## The two commands", "make run     #", "make test    #",
             "## Your own tree, in three commands", "## Reading a finding", "## CI and bare metal",
             "## Micro-guest", "docs/microguest.md", "## Measurements", "docs/measurements.md"]
    at = 0
    for s in order:  # each after the one before
        assert text.find(s, at) >= 0, (s, "not after", text[max(0, at - 80):at])
        at = text.find(s, at) + len(s)
    assert (REPO / "docs/measurements.md").is_file()


def test_every_command_the_readme_shows_parses():
    """The README's commands are the CLI's: each `.venv/bin/harness ...` line of its code blocks parses."""
    import re
    import shlex
    lines = [ln for block in re.findall(r"```sh\n(.*?)```", readme(), re.S) for ln in block.splitlines()
             if ln.startswith(".venv/bin/harness ")]
    assert len(lines) >= 10
    for ln in lines:
        argv = shlex.split(ln.split("  #")[0].split("   #")[0])[1:]
        if "[" in ln or "|" in " ".join(argv) or "..." in argv:  # a synopsis line: its options must exist
            sub = _parser()
            for word in argv:  # down to the (sub)command's own parser
                subs = sub._subparsers._group_actions[0].choices if sub._subparsers else {}
                if word in subs:
                    sub = subs[word]
            for opt in re.findall(r"(--[a-z-]+)", ln.split("#")[0]):
                assert opt in sub._option_string_actions, (ln, opt)
            continue
        if argv == ["--help"]:
            continue
        _parser().parse_args(argv)


def test_the_readme_finding_example_is_what_summary_txt_renders_for_that_run():
    from harness.report.results import load_run_record, summary_text
    run = load_run_record(REPO / "tests/fixtures/runs/mutant-a")
    head = summary_text(run, "results/20261201-154455-default-s1").split("\n\n")[0]
    assert "```text\n" + head + "\n```" in readme()


def test_doctor_json_is_one_object_and_plain_output_is_one_line_per_check(monkeypatch, capsys):
    from tests.unit.test_doctor import AMD_CPUINFO, fake_host
    fake_host(monkeypatch, cpuinfo=AMD_CPUINFO, modules=("kvm",), params={})  # no kvm_amd: failing checks
    monkeypatch.delenv("COLUMNS")  # as in a log: rich would wrap at 80 columns
    assert main(["doctor", "--json", "--no-probe", "--require-kvm"]) == 3
    out, err = capsys.readouterr()
    obj = json.loads(out)
    assert obj["ok"] is False and "kvm module" in {c["name"] for c in obj["checks"]}
    assert any(ln.startswith("kvm module: no kvm_intel or kvm_amd") for ln in obj["failed"])
    assert "harness: doctor --require-kvm: kvm module" in err  # the failures stay on stderr
    assert main(["doctor", "--no-probe"]) == 0
    out = capsys.readouterr().out
    nested = [ln for ln in out.splitlines() if ln.startswith("nested (L0)")]
    assert len(nested) == 1 and len(nested[0]) > 120  # the fix command whole, on its row's line
    assert nested[0].endswith("sudo modprobe -r kvm_amd; sudo modprobe kvm_amd")


@pytest.mark.parametrize("argv,says", [
    (["reproduce", "R", "--tries", "0"], "--tries: must be 1 or more (got 0)"),
    (["bisect", "kernels/port.yaml", "--repeats", "0"], "--repeats: must be 1 or more (got 0)"),
    (["run", "--seed", "x"], "--seed: must be a whole number >= 0 (got 'x')"),
    (["run", "--set", "nope=1"], "--set nope=1: unknown key 'nope'"),
    (["nosuch"], "invalid choice: 'nosuch'"),
])
def test_bad_numbers_and_commands_are_one_line(capsys, argv, says):
    assert says in fails(capsys, *argv)


def test_a_kernel_yaml_given_as_a_scenario_says_what_it_is(capsys):
    err = fails(capsys, "run", "kernels/port.yaml")
    assert "kernels/port.yaml is a KERNEL.yaml (a kernel to build), not a scenario: harness run --build " in err
    assert "not a matrix" in fails(capsys, "matrix", "kernels/port.yaml")
