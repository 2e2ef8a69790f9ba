"""`python -m harness.fleet.bench`: stage selection and the matrix-jobs bench (a fake `harness matrix`, no QEMU)."""
import json
from pathlib import Path

import pytest

import harness.fleet.bench as B
import harness.fleet.matrix as M
from harness.fleet.matrix.shard import shard_cells
from tests.conftest import REPO

FIXTURE = REPO / "tests/fixtures/matrices/bench-jobs.yaml"


def test_bench_fixtures_expand_as_documented():
    cells = M.expand(M.load_matrix(FIXTURE))
    assert [(c.kernel, c.expect, c.seed) for c in cells] == [
        ("prebuilt", "clean", 1), ("prebuilt", "clean", 2), ("mutant-a", "finding", 1), ("mutant-a", "finding", 2)]
    four = M.expand(M.load_matrix(REPO / "tests/fixtures/matrices/mutant-a-4.yaml"))
    assert [c.seed for c in four] == [1, 2, 3, 4] and {c.expect for c in four} == {"finding"}
    halves = [shard_cells(four, i, 2) for i in (1, 2)]
    assert sorted(c.id for h in halves for c in h) == sorted(c.id for c in four) and all(len(h) == 2 for h in halves)


def fake_matrix_run(fp_on_jobs: int | None = None, seconds: dict | None = None):
    """Stands in for subprocess.run(['python', '-m', 'harness', 'matrix', M, '--jobs', N, '--results', R]): a
    finished matrix folder written by harness.fleet.matrix's own save(), clean cells clean, finding cells found."""
    calls = []

    def run(argv, **kw):
        mpath, jobs, out = Path(argv[4]), int(argv[argv.index("--jobs") + 1]), Path(argv[argv.index("--results") + 1])
        calls.append(jobs)
        m = M.load_matrix(mpath)
        cells = M.expand(m)
        for c in cells:
            verdict = "finding" if c.expect == "finding" or (jobs == fp_on_jobs and c.seed == 1) else "pass"
            c.runs = [{"run_dir": str(out / "nowhere"), "verdict": verdict, "seed": c.seed, "total_s": 10.0,
                       "first_finding_s": 5.0 if verdict == "finding" else None, "attempts": 1}]
        mdir = out / f"matrix-x-{m.name}"
        mdir.mkdir(parents=True)
        M.save(mdir, m, cells)
        (out / f"matrix-y-{m.name}.incomplete").mkdir()  # an interrupted folder is never the one read
        B.time.sleep((seconds or {}).get(jobs, 0))
        return type("P", (), {"returncode": 0})()
    return run, calls


@pytest.fixture
def bench_env(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_RESULTS", str(tmp_path))
    monkeypatch.setattr(B, "prepare_matrix", lambda p: {"name": M.load_matrix(p).name, "cells": 4, "prepare_s": 0,
                                                       "cores": 2, "jobs_auto": 2})
    return tmp_path


def test_matrix_jobs_records_both_passes(bench_env, monkeypatch, capsys):
    run, calls = fake_matrix_run(seconds={1: 0.4, 2: 0.2})
    monkeypatch.setattr(B.subprocess, "run", run)
    assert B.main(["--only", "matrix-jobs"]) == 0
    assert calls == [1, 2]
    (out,) = bench_env.glob("bench-matrix-jobs-*.json")
    res = json.loads(out.read_text())
    m = res["matrices"]["bench-jobs"]
    assert res["ok"] and m["ok"] and m["outcomes_agree"] and m["false_positives"] == [0, 0]
    for j in ("1", "2"):
        p = m["passes"][j]
        assert p["cells"] == 4 and p["cells_ok"] == 4 and p["mutation_score"] == 1.0 and p["false_positives"] == 0
        assert p["wall_per_cell_s"] == round(p["wall_s"] / 4, 1) and not p["matrix_dir"].endswith(".incomplete")
        assert [c["outcome"] for c in p["cell_results"]] == ["clean", "clean", "finding", "finding"]
        assert p["cell_results"][0]["name"] == "prebuilt[default]@seed1"
    assert 0 < m["wall_ratio_to_jobs1"]["2"] < 1
    assert "bench-jobs --jobs 2:" in capsys.readouterr().out


def test_a_false_positive_with_jobs_2_fails_the_bench(bench_env, monkeypatch):
    run, _ = fake_matrix_run(fp_on_jobs=2)
    monkeypatch.setattr(B.subprocess, "run", run)
    assert B.main(["--only", "matrix-jobs", "--jobs", "1,2"]) == 1
    (out,) = bench_env.glob("bench-matrix-jobs-*.json")
    m = json.loads(out.read_text())["matrices"]["bench-jobs"]
    assert m["false_positives"] == [0, 1] and not m["outcomes_agree"] and not m["ok"]


def test_nightly_flag_times_both_nightly_matrices(bench_env, monkeypatch):
    seen = []
    monkeypatch.setattr(B, "bench_matrix_jobs", lambda root, mats, jobs: seen.append((mats, jobs)) or {"ok": True})
    B.main(["--only", "matrix-jobs", "--nightly"])
    B.main(["--only", "matrix-jobs", "--jobs", "2,1"])
    assert seen == [(list(B.NIGHTLY_MATRICES), (1, 2)), (None, (2, 1))]
    assert [p.name for p in B.NIGHTLY_MATRICES] == ["nightly.yaml", "catch-time.yaml", "nightly-7.2.yaml",
                                                   "nightly-debug.yaml"]


def test_build_flag_adds_the_slow_stages(bench_env, monkeypatch):
    ran = []
    monkeypatch.setattr(B, "STAGES", {k: (lambda root, args, k=k: ran.append(k) or {}) for k in B.STAGES})
    B.main([])
    assert ran == ["console", "trace", "pipeline"]
    ran.clear()
    B.main(["--build"])
    assert ran == ["console", "trace", "pipeline", "build", "minimal-config", "matrix-jobs", "micro-vs-l2"]


def test_bad_jobs_list_is_an_argument_error():
    with pytest.raises(SystemExit):
        B.main(["--only", "matrix-jobs", "--jobs", "one"])
