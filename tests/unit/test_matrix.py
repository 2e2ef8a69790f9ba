
import pytest

from harness.errors import InputError
from harness.fleet.matrix import Cell, expand, heatmap, junit, load_matrix, overrides_of, score, summary
from tests.conftest import REPO


def test_shipped_matrices_load_and_every_variant_is_a_valid_scenario():
    from harness.config import load_scenario
    for name in ("nightly.yaml", "hardware.yaml", "quick-matrix.yaml", "catch-time.yaml", "nightly-7.2.yaml",
                 "nightly-debug.yaml", "micro-matrix.yaml", "micro-proof-6.12.yaml", "micro-proof-7.2.yaml"):
        m = load_matrix(REPO / "scenarios" / name)
        cells = expand(m)
        assert cells and {c.expect for c in cells} <= {"clean", "finding"}
        for c in cells:
            load_scenario(REPO / "scenarios" / m.scenario, overrides_of(c.variant))
        assert all((REPO / "scenarios" / m.kernels[k].build).exists() for k in m.kernels if m.kernels[k].build)


def test_unknown_kernel_in_group_is_an_input_error(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("name: x\nkernels: {a: {prebuilt: true}}\ngroups: [{kernels: [b], expect: clean}]\n")
    with pytest.raises(InputError, match="kernel 'b'"):
        load_matrix(p)


def test_score_counts_caught_mutants_and_false_positives(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("name: x\nkernels: {clean: {prebuilt: true}, m1: {prebuilt: true, mutant: true}, "
                 "m2: {prebuilt: true, mutant: true}}\n"
                 "groups: [{kernels: [clean], expect: clean}, {kernels: [m1, m2], expect: finding}]\n")
    m = load_matrix(p)
    cells = expand(m)
    run = lambda v, ff=None: {"verdict": v, "first_finding_s": ff, "run_dir": "r", "total_s": 1}
    cells[0].runs = [run("pass"), run("finding", 50.0)]  # a false positive
    cells[1].runs = [run("pass"), run("finding", 40.0)]
    cells[2].runs = [run("pass"), run("pass")]
    sc = score(m, cells)
    assert sc["mutation_score"] == 0.5 and sc["caught"] == ["m1"] and sc["false_positives"] == 1
    hidden = Cell("m2", {"swap": "zram"}, "clean", runs=[run("finding", 30.0)])  # a mutant seen where declared hidden
    sc2 = score(m, cells + [hidden])
    assert sc2["false_positives"] == 1 and not hidden.ok
    assert sc["time_to_catch"]["m1"]["median_s"] == 40.0
    assert "MISMATCH" in summary(m, cells, sc)
    assert junit(m, cells).count("<failure") == 2
    heatmap(cells, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 1000


def test_overrides_serialise_nested_values():
    assert overrides_of({"swap": {"kind": "zram", "size_mb": 2048}}) == ['swap={"kind": "zram", "size_mb": 2048}']
    assert Cell("k", {"thp": "always"}, "clean").name == "k[thp=always]"


def test_cell_per_seed_gives_one_cell_per_seed(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("name: x\nseeds: [1, 2, 3]\nkernels: {m1: {prebuilt: true, mutant: true}}\n"
                 "groups: [{kernels: [m1], expect: finding, cell_per_seed: true}]\n")
    cells = expand(load_matrix(p))
    assert [c.seed for c in cells] == [1, 2, 3] and cells[1].name == "m1[default]@seed2"


def test_evidence_names_gfn_pfn_rule_and_patch():
    from harness.fleet.matrix import evidence
    fs = [{"oracle": "ledger", "kind": "stale", "title": "43 lost write: stale page", "patch": "MUTANT: x",
           "pages": [{"index": 212, "gfn": 0x1000d4, "expected": 2, "found": 1}]},
          {"oracle": "trace", "kind": "R1-violation", "title": "trace rule R1: 9 x dirty SPTE zapped", "patch": "MUTANT: x"},
          {"oracle": "trace", "kind": "ledger-timeline", "pfn": 0x10fed4, "patch": "MUTANT: x",
           "title": "ledger-bad gfn 0x1000d4: L1 pfn 0x10fed4: writable dirty SPTE zapped at 1.0 s, then no dirty "
                    "mark, no writeback, freed (rules R1, R3)"},
          {"oracle": "infra", "kind": "oom", "title": "ignored"}]
    ev = "\n".join(evidence(fs))
    assert "first gfn 0x1000d4" in ev and "pfn 0x10fed4" in ev and "rules R1, R3" in ev and "rule R1" in ev
    assert ev.endswith("patch: MUTANT: x") and "ignored" not in ev
    assert evidence([{"oracle": "infra", "kind": "oom", "title": "x"}]) == []


# test_an_interrupted_run_stops_the_whole_matrix: in test_matrix_shard_jobs.py (runs are child processes now)
