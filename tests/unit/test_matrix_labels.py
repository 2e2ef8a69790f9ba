"""Variant labels (`label:` in a matrix variant: a name for the heat map, never an override, never part of the cell
id) and the heat map coloured by whether each cell's outcome matched its expectation."""
import json

import pytest

import harness.fleet.matrix as M
from harness.config import load_scenario
from harness.errors import InputError
from tests.conftest import REPO

SHIPPED = ("nightly.yaml", "hardware.yaml", "quick-matrix.yaml", "catch-time.yaml", "false-positives.yaml",
           "false-positives-thp.yaml", "nightly-7.2.yaml", "nightly-debug.yaml",
           "micro-matrix.yaml", "micro-proof-6.12.yaml", "micro-proof-7.2.yaml")
LABELLED = """name: labelled
scenario: s.yaml
kernels: {a: {prebuilt: true}}
groups:
  - kernels: [a]
    variants: [{label: zram, swap: {kind: zram}}, {label: "memfd 64M", memory_backend: memfd, memory_max_mb: 64,
                                                 ledger: {size_mb: 96}},
               {thp: always}, {}]
    expect: clean
"""


def load(tmp_path, text):
    (tmp_path / "s.yaml").write_text("seed: 1\n")
    (tmp_path / "m.yaml").write_text(text)
    return M.load_matrix(tmp_path / "m.yaml")


def strip_labels(m: M.Matrix) -> M.Matrix:
    d = m.model_dump(mode="json")
    for g in d["groups"]:
        g["variants"] = [{k: v for k, v in var.items() if k != "label"} for var in g["variants"]]
    return M.Matrix.model_validate(d)


# the label is popped before the variant becomes overrides ----------------------------------------------------

def test_the_label_is_popped_and_never_reaches_the_scenario(tmp_path):
    cells = M.expand(load(tmp_path, LABELLED))
    assert [c.label for c in cells] == ["zram", "memfd 64M", None, None]
    assert [c.variant for c in cells][:2] == [{"swap": {"kind": "zram"}},
                                               {"memory_backend": "memfd", "memory_max_mb": 64,
                                                "ledger": {"size_mb": 96}}]
    assert all("label" not in c.variant for c in cells)
    assert M.cell_overrides(cells[0]) == ['swap={"kind": "zram"}']
    assert M.overrides_of(cells[1].variant) == ['memory_backend="memfd"', "memory_max_mb=64",
                                                'ledger={"size_mb": 96}']
    for c in cells:  # a valid scenario: no `label` key reached it
        load_scenario(tmp_path / "s.yaml", M.overrides_of(c.variant))


def test_overrides_of_leaves_a_label_out_even_when_given_one():
    assert M.overrides_of({"label": "THP", "thp": "always"}) == ['thp="always"']
    assert M.split_label({"label": " zram ", "swap": {"kind": "zram"}}) == ({"swap": {"kind": "zram"}}, "zram")


@pytest.mark.parametrize("bad", ["3", "''", "{x: 1}", "null"])
def test_a_label_that_is_not_text_is_an_input_error(tmp_path, bad):
    text = LABELLED.replace("label: zram,", f"label: {bad},")
    with pytest.raises(InputError, match=r"m\.yaml.*label must be a non-empty string"):
        load(tmp_path, text)


# the cell id stays what it was ---------------------------------------------------------------------------------

def test_a_label_does_not_change_the_cell_id_or_name(tmp_path):
    m = load(tmp_path, LABELLED)
    assert [c.id for c in M.expand(m)] == [c.id for c in M.expand(strip_labels(m))]
    assert M.Cell("k", {}, "clean", label="default").id == M.Cell("k", {}, "clean").id == "bc800a8c52"
    assert M.Cell("k", {"thp": "always"}, "clean", label="THP").name == "k[thp=always]"  # junit/KTAP names


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_matrices_keep_their_ids_with_labels(name):
    m = M.load_matrix(REPO / "scenarios" / name)
    cells = M.expand(m)
    assert [c.id for c in cells] == [c.id for c in M.expand(strip_labels(m))]
    assert all("label" not in c.variant for c in cells)


def test_nightly_variants_are_labelled():
    cells = M.expand(M.load_matrix(REPO / "scenarios/nightly.yaml"))
    assert all(c.label for c in cells)
    assert M.heatmap_grid(cells)["cols"] == ["default", "tdp_mmu=N", "THP always", "memfd 64M",
                                             "zram, ledger only", "memfd 64M, ledger only", "zram"]


# labels derived when there is none -------------------------------------------------------------------------------

@pytest.mark.parametrize("variant,label", [
    ({}, "default"), ({"thp": "always"}, "thp=always"), ({"tdp_mmu": False}, "tdp_mmu=false"),
    ({"swap": {"kind": "zram", "size_mb": 2048}}, "swap.kind=zram, swap.size_mb=2048"),
    ({"memory_backend": "memfd", "memory_max_mb": 64}, "memory_backend=memfd, memory_max_mb=64"),
])
def test_a_variant_without_a_label_gets_a_short_one(variant, label):
    assert M.variant_label(variant) == label == M.Cell("k", variant, "clean").shown_label


# the heat map: coloured by match ---------------------------------------------------------------------------------

def run(verdict):
    return {"verdict": verdict, "first_finding_s": 17.0 if verdict == "finding" else None, "run_dir": "r",
            "total_s": 1, "seed": 1}


def grid_cells():
    C = M.Cell
    return [
        C("clean", {}, "clean", runs=[run("pass")], label="default"),                  # green: clean as expected
        C("clean", {"thp": "always"}, "clean", runs=[run("finding")]),                  # red: a false positive
        C("mutant-a", {}, "finding", runs=[run("finding")], seed=1, label="default"),   # green: caught
        C("mutant-a", {}, "finding", runs=[run("finding")], seed=2, label="default"),
        C("mutant-a", {"swap": {"kind": "zram"}}, "clean", runs=[run("pass")], label="zram"),  # green: hidden, clean
        C("mutant-b", {}, "clean", runs=[run("finding")], label="default"),            # red: hidden, yet found
        C("mutant-b", {"thp": "always"}, "finding", runs=[run("pass")]),                # red: missed
        C("mutant-c", {}, "finding", runs=[run("infra-error")], label="default"),      # red: could not tell
        C("mutant-c", {"thp": "always"}, "finding"),                                    # grey: not run
        C("mutant-c", {"swap": {"kind": "zram"}}, "clean", label="zram", skip="needs accel kvm"),  # grey: skipped
    ]


def test_heatmap_colours_each_cell_by_whether_it_matched_its_expectation():
    g = M.heatmap_grid(grid_cells())
    assert g["rows"] == ["clean", "mutant-a", "mutant-b", "mutant-c"]
    assert g["cols"] == ["default", "thp=always", "zram"]
    G, R, Y = M.GREEN, M.RED, M.GREY
    assert g["colours"] == [[G, R, None],
                            [G, None, G],
                            [R, R, None],
                            [R, Y, Y]]


def test_heatmap_cells_say_outcome_and_expectation():
    t = M.heatmap_grid(grid_cells())["texts"]
    assert t[0][0] == "clean\nexpect clean" and t[0][1] == "finding\nexpect clean"
    assert t[1][0] == "finding ×2\nexpect finding"  # the seeds of a one-cell-per-seed group share a slot
    assert t[1][2] == "clean\nexpect clean" and t[3][0] == "infra\nexpect finding"
    assert t[3][1] == "not-run\nexpect finding" and t[3][2] == "skipped\nexpect clean"
    assert t[0][2] == ""


def test_a_slot_with_one_mismatching_seed_is_red():
    cells = [M.Cell("m", {}, "finding", runs=[run("finding")], seed=s) for s in (1, 2)]
    cells.append(M.Cell("m", {}, "finding", runs=[run("pass")], seed=3))
    g = M.heatmap_grid(cells)
    assert g["colours"] == [[M.RED]] and g["texts"] == [["finding ×2, clean ×1\nexpect finding"]]


def test_two_variants_under_one_label_stay_apart():
    cells = [M.Cell("k", {"thp": "always"}, "clean", label="x"), M.Cell("k", {"ksm": True}, "clean", label="x")]
    assert M.heatmap_grid(cells)["cols"] == ["x (thp=always)", "x (ksm=true)"]


def test_heatmap_png_is_written(tmp_path):
    out = tmp_path / "heatmap.png"
    g = M.heatmap(grid_cells(), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000
    assert g == M.heatmap_grid(grid_cells())


def test_a_finished_matrix_folder_has_the_heatmap_and_the_labels(tmp_path):
    m = load(tmp_path, LABELLED)
    cells = M.expand(m)
    for c in cells:
        c.runs = [run("pass")]
    (tmp_path / "out").mkdir()
    M.write_outputs(tmp_path / "out", m, cells)
    assert (tmp_path / "out/heatmap.png").stat().st_size > 1000
    mj = json.loads((tmp_path / "out/matrix.json").read_text())
    assert [c["label"] for c in mj["cells"]] == ["zram", "memfd 64M", None, None]
