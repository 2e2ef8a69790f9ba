"""Stable cell ids, `--list`, `--shard I/N` and `harness merge` (fake shard folders, no QEMU)."""
import json

import pytest

import harness.fleet.matrix as M
import harness.fleet.matrix.cli as MC
import harness.fleet.matrix.shard as S
from harness.cli import main
from harness.errors import InputError
from tests.conftest import REPO

SHIPPED = ("nightly.yaml", "hardware.yaml", "quick-matrix.yaml", "catch-time.yaml", "false-positives.yaml")
MATRIX = """name: fake
scenario: s.yaml
seeds: [1, 2, 3]
budget_runs: 2
kernels: {clean: {prebuilt: true}, m1: {prebuilt: true, mutant: true}, m2: {prebuilt: true, mutant: true}}
groups:
  - {kernels: [clean], variants: [{}, {thp: always}, {tdp_mmu: false}], expect: clean}
  - {kernels: [m1, m2], expect: finding, cell_per_seed: true}
  - {kernels: [m1], variants: [{swap: {kind: zram, size_mb: 2048}}], expect: clean}
"""


def write_matrix(tmp_path, text=MATRIX, scenario="seed: 1\n"):
    (tmp_path / "s.yaml").write_text(scenario)
    (tmp_path / "m.yaml").write_text(text)
    return tmp_path / "m.yaml"


def fake_runs(cells):
    """Deterministic runs: m1 is caught on every seed, m2 never, the clean kernel is clean."""
    for c in cells:
        verdict = "finding" if c.kernel == "m1" and c.expect == "finding" else "pass"
        c.runs = [{"run_dir": f"/elsewhere/runs/{c.id}/r{c.seed}", "verdict": verdict, "seed": c.seed or 1,
                   "first_finding_s": 12.5 if verdict == "finding" else None, "total_s": 60, "titles": [],
                   "attempts": 1, "tdp_mmu": True, "evidence": ["ledger: x"] if verdict == "finding" else []}]


def make_shards(tmp_path, n, only=None, commit=None):
    """Shard folders of the fake matrix, as `harness matrix --shard I/N` would leave them (without runs/)."""
    mpath = write_matrix(tmp_path)
    m = M.load_matrix(mpath)
    out = []
    for i in (only or range(1, n + 1)):
        cells = S.shard_cells(M.expand(m), i, n)
        fake_runs(cells)
        meta = S.identity(mpath, tmp_path / "s.yaml", m, i, n, cells)
        if commit:
            meta["harness_commit"] = commit
        d = tmp_path / "shards" / f"matrix-x-fake-shard{i}of{n}-{len(list((tmp_path).glob('shards/*')))}"
        (d / "runs").mkdir(parents=True)
        M.save(d, m, cells, meta)
        out.append(d)
    return out


def merge(*dirs, results):
    return main(["merge", *map(str, dirs), "--results", str(results)])


# ids ---------------------------------------------------------------------------------------------------------

def test_cell_ids_are_stable_hashes_of_kernel_variant_and_seed():
    a = M.Cell("k", {"thp": "always", "ledger": {"size_mb": 8, "rounds": 2}}, "clean")
    b = M.Cell("k", {"ledger": {"rounds": 2, "size_mb": 8}, "thp": "always"}, "finding", why="other")
    assert a.id == b.id and len(a.id) == 10 and int(a.id, 16) >= 0  # key order, expectation, why: not the cell
    assert a.id != M.Cell("k2", a.variant, "clean").id != M.Cell("k", a.variant, "clean", seed=1).id
    assert M.Cell("k", {}, "clean").id == "bc800a8c52"  # the same on every machine and every run


def test_ids_do_not_depend_on_the_order_of_groups(tmp_path):
    m = M.load_matrix(write_matrix(tmp_path))
    head, *groups = MATRIX.split("  - ")
    (tmp_path / "m2.yaml").write_text(head + "".join("  - " + g for g in reversed(groups)))
    m2 = M.load_matrix(tmp_path / "m2.yaml")
    assert [c.id for c in M.expand(m)] != [c.id for c in M.expand(m2)]
    assert sorted(c.id for c in M.expand(m)) == sorted(c.id for c in M.expand(m2))


def test_shipped_matrices_have_unique_ids():
    for name in SHIPPED:
        cells = M.expand(M.load_matrix(REPO / "scenarios" / name))
        assert len({c.id for c in cells}) == len(cells), name


def test_a_cell_listed_twice_is_an_input_error(tmp_path):
    p = write_matrix(tmp_path, "name: x\nscenario: s.yaml\nkernels: {a: {prebuilt: true}}\n"
                               "groups: [{kernels: [a], expect: clean}, {kernels: [a], expect: finding}]\n")
    with pytest.raises(InputError, match=r"cell a\[default\] appears twice"):
        M.expand(M.load_matrix(p))


# --list --------------------------------------------------------------------------------------------------------

def test_list_prints_one_line_per_cell_and_runs_nothing(tmp_path, capsys, monkeypatch):
    mpath = write_matrix(tmp_path)
    monkeypatch.setattr(MC, "resolve", lambda *a: pytest.fail("--list must not resolve kernels"))
    assert main(["matrix", str(mpath), "--list", "--results", str(tmp_path / "res")]) == 0
    lines = capsys.readouterr().out.splitlines()
    cells = M.expand(M.load_matrix(mpath))
    assert len(lines) == len(cells) == 10 and not (tmp_path / "res").exists()
    assert lines[0].split() == [cells[0].id, "clean", "clean[default]"]
    assert lines[3].split() == [cells[3].id, "finding", "m1[default]@seed1"]
    assert main(["matrix", str(mpath), "--list", "--shard", "2/3"]) == 0
    part = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in part] == [c.id for c in S.shard_cells(cells, 2, 3)]


def test_list_of_a_bad_matrix_is_exit_2(tmp_path, capsys):
    mpath = write_matrix(tmp_path, MATRIX.replace("thp: always", "thp: sometimes"))
    assert main(["matrix", str(mpath), "--list"]) == 2
    assert "thp" in capsys.readouterr().err


# shards --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SHIPPED)
def test_every_cell_is_in_exactly_one_shard(name):
    cells = M.expand(M.load_matrix(REPO / "scenarios" / name))
    for n in range(1, 8):
        parts = [S.shard_cells(cells, i, n) for i in range(1, n + 1)]
        ids = [c.id for p in parts for c in p]
        assert sorted(ids) == sorted(c.id for c in cells)  # each once, none missing
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1
        # deterministic: the order cells are listed in does not matter, only their ids
        assert [[c.id for c in p] for p in parts] == \
               [[c.id for c in S.shard_cells(list(reversed(cells)), i, n)][::-1] for i in range(1, n + 1)]


def test_a_shard_keeps_the_matrix_order():
    cells = M.expand(M.load_matrix(REPO / "scenarios/nightly.yaml"))
    part = S.shard_cells(cells, 1, 3)
    assert [cells.index(c) for c in part] == sorted(cells.index(c) for c in part)


@pytest.mark.parametrize("text,want", [(None, (1, 1)), ("1/1", (1, 1)), ("2/3", (2, 3)), (" 3 / 3 ", (3, 3))])
def test_parse_shard(text, want):
    assert S.parse_shard(text) == want


@pytest.mark.parametrize("bad", ["0/2", "3/2", "1", "a/b", "1/0", "-1/2", "1/2/3"])
def test_bad_shard_is_an_input_error(bad):
    with pytest.raises(InputError, match="--shard must be I/N"):
        S.parse_shard(bad)


def test_identity_hashes_matrix_and_scenario_yaml(tmp_path):
    mpath = write_matrix(tmp_path)
    a = S.matrix_id(mpath, tmp_path / "s.yaml")
    (tmp_path / "s.yaml").write_text("seed: 2\n")
    assert S.matrix_id(mpath, tmp_path / "s.yaml") != a and len(a) == 16
    m = M.load_matrix(mpath)
    cells = S.shard_cells(M.expand(m), 2, 3)
    meta = S.identity(mpath, tmp_path / "s.yaml", m, 2, 3, cells)
    assert meta["shard"] == {"index": 2, "count": 3} and meta["cell_ids"] == [c.id for c in cells]
    assert meta["harness_commit"].split("-")[0] == "?" or len(meta["harness_commit"].split("-")[0]) == 40
    assert M.Matrix.model_validate(meta["matrix"]) == m


# merge ---------------------------------------------------------------------------------------------------------

def test_merge_gives_the_matrix_the_unsharded_run_gives(tmp_path, capsys):
    shards = make_shards(tmp_path, 3)
    mpath = tmp_path / "m.yaml"
    m = M.load_matrix(mpath)
    whole = M.expand(m)
    fake_runs(whole)
    M.write_outputs(tmp_path, m, whole, S.identity(mpath, tmp_path / "s.yaml", m, 1, 1, whole))
    ref = json.loads((tmp_path / "matrix.json").read_text())
    assert merge(*reversed(shards), results=tmp_path / "out") == 1  # m2 is never caught: not all cells as expected
    (out,) = (tmp_path / "out").iterdir()
    got = json.loads((out / "matrix.json").read_text())
    assert got["cells"] == ref["cells"] and got["score"] == ref["score"]
    assert got["score"]["mutation_score"] == 0.5 and got["score"]["false_positives"] == 0
    assert got["matrix_id"] == ref["matrix_id"] and got["cell_ids"] == ref["cell_ids"]
    assert [s["shard"] for s in got["merged_from"]] == ["1/3", "2/3", "3/3"]
    assert (out / "summary.txt").read_text() == (tmp_path / "summary.txt").read_text()
    assert (out / "junit.xml").read_text() == (tmp_path / "junit.xml").read_text()
    assert (out / "heatmap.png").stat().st_size > 1000 and not out.name.endswith(".incomplete")
    assert "mutation score 50 %" in capsys.readouterr().out


def test_merge_brings_the_runs_into_the_merged_folder(tmp_path):
    shards = make_shards(tmp_path, 2)
    js = json.loads((shards[0] / "matrix.json").read_text())
    cid = js["cells"][0]["id"]
    run = shards[0] / "runs" / cid / js["cells"][0]["runs"][0]["run_dir"].rsplit("/", 1)[1]
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")
    merge(*shards, results=tmp_path / "out")
    (out,) = (tmp_path / "out").iterdir()
    got = json.loads((out / "matrix.json").read_text())
    cell = next(c for c in got["cells"] if c["id"] == cid)
    assert cell["runs"][0]["run_dir"] == str(out / "runs" / cid / run.name)
    assert (out / "runs" / cid / run.name / "run.json").read_text() == "{}"
    other = next(c for c in got["cells"] if c["id"] != cid)
    assert other["runs"][0]["run_dir"].startswith("/elsewhere/")  # no folder to bring: left as recorded


def refused(capsys, *dirs, results) -> str:
    assert merge(*dirs, results=results) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not results.exists()
    return err


def test_merge_refuses_shards_of_different_matrices(tmp_path, capsys):
    a, b = make_shards(tmp_path, 2)
    js = json.loads((b / "matrix.json").read_text())
    js["matrix_id"] = "0123456789abcdef"
    (b / "matrix.json").write_text(json.dumps(js))
    err = refused(capsys, a, b, results=tmp_path / "out")
    mid = json.loads((a / "matrix.json").read_text())["matrix_id"]
    assert "different matrices" in err and mid in err and "0123456789abcdef" in err and str(b) in err


def test_merge_refuses_different_harness_commits(tmp_path, capsys):
    (a,) = make_shards(tmp_path, 2, only=[1], commit="a" * 40)
    (b,) = make_shards(tmp_path, 2, only=[2], commit="b" * 40)
    err = refused(capsys, a, b, results=tmp_path / "out")
    assert "different harness commits" in err and "a" * 40 in err and "b" * 40 in err


def test_merge_refuses_overlapping_shards(tmp_path, capsys):
    (a,) = make_shards(tmp_path, 2, only=[1])
    (b,) = make_shards(tmp_path, 2, only=[1])
    err = refused(capsys, a, b, results=tmp_path / "out")
    assert "both shard 1/2" in err and "overlapping" in err and str(a) in err and str(b) in err


def test_merge_refuses_missing_shards(tmp_path, capsys):
    a, _, c = make_shards(tmp_path, 3)
    err = refused(capsys, a, c, results=tmp_path / "out")
    assert err.endswith("missing shard 2/3 (have 1/3, 3/3)")
    (d,) = make_shards(tmp_path, 4, only=[3])
    shards4 = [d]
    err = refused(capsys, *shards4, results=tmp_path / "out")
    assert "missing shards 1/4, 2/4, 4/4 (have 3/4)" in err


def test_merge_refuses_shards_split_differently(tmp_path, capsys):
    (a,) = make_shards(tmp_path, 2, only=[1])
    (b,) = make_shards(tmp_path, 3, only=[2])
    err = refused(capsys, a, b, results=tmp_path / "out")
    assert "shard 1/2" in err and "shard 2/3" in err and "split the matrix differently" in err


def test_merge_refuses_incomplete_or_foreign_folders(tmp_path, capsys):
    a, b = make_shards(tmp_path, 2)
    inc = b.rename(b.with_name(b.name + ".incomplete"))
    assert "incomplete" in refused(capsys, a, inc, results=tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no readable matrix.json" in refused(capsys, a, empty, results=tmp_path / "out")
    old = tmp_path / "old"
    old.mkdir()
    (old / "matrix.json").write_text(json.dumps({"name": "x", "score": {}, "cells": []}))
    assert "records no matrix_id" in refused(capsys, old, results=tmp_path / "out")


def test_merge_refuses_a_shard_whose_cells_are_not_its_share(tmp_path, capsys):
    a, b = make_shards(tmp_path, 2)
    js = json.loads((b / "matrix.json").read_text())
    js["cell_ids"] = js["cell_ids"][1:]
    (b / "matrix.json").write_text(json.dumps(js))
    assert "but shard 2/2 of its matrix is" in refused(capsys, a, b, results=tmp_path / "out")


def test_a_single_unsharded_folder_merges_to_itself(tmp_path):
    (a,) = make_shards(tmp_path, 1)
    assert merge(a, results=tmp_path / "out") == 1
    (out,) = (tmp_path / "out").iterdir()
    assert json.loads((out / "matrix.json").read_text())["cells"] == json.loads((a / "matrix.json").read_text())["cells"]
