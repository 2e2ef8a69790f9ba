"""Plots from a results folder alone: the run timeline (fixture: a real 12-round pass of Debian's 6.12 as L1,
vmstat.csv and ledger.jsonl as recorded) and the matrix's time to first finding; `harness report` re-rendering."""
import csv
import json
import shutil
from pathlib import Path

import pytest

from harness.report.models import MatrixRecord, RunRecord
from harness.report.plots import (catch_points, finding_marks, ledger_rounds, matrix_plots, rates, read_jsonl, run_plots,
                                  time_to_first_finding, timeline)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures/timeline/pass-6.12"
L2_BOOT = 9.67  # the fixture's timings.l2_boot_s


@pytest.fixture
def run_dir(tmp_path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(FIXTURE, d)
    return d


def make_finding(d: Path) -> RunRecord:
    """The recorded pass turned into a finding run: two bad pages in the ledger, a trace rule's examples (and the
    trace's first line, its clock's origin), an L2 oops on the console, a hang with no time of its own."""
    c = d / "cases/default"
    ev = read_jsonl(c / "ledger.jsonl")
    bad = [{"ev": "bad", "class": "stale", "round": 3, "index": i, "gfn": 0x12345 + i, "expected": 4, "found": 3,
            "t": 31.2 + i / 10} for i in range(2)]
    (c / "ledger.jsonl").write_text("".join(json.dumps(e) + "\n" for e in ev[:8] + bad + ev[8:]))
    (c / "trace.txt").write_text("  cat-248  [000]  16.644471: mm_page_free: page=00000000deb483e5 pfn=0x10f547\n")
    (c / "l2-console.log").write_text("[    3.815628] amd_pstate: no _CPC\nHARNESS-L2: init 6.12.117 ledger\n"
                                      "[   50.100000] BUG: kernel NULL pointer dereference, address: 0\n")
    run = json.loads((d / "run.json").read_text()) | {"verdict": "finding"}
    run["findings"] = [
        {"oracle": "ledger", "layer": "L2", "kind": "stale", "title": "2 pages lost"},
        {"oracle": "trace", "layer": "L1", "kind": "R1-violation", "rule": "R1", "count": 2, "title": "R1",
         "examples": [{"gfn": 1, "pfn": 2, "ts": "37.5"}, {"gfn": 1, "pfn": 2, "ts": "36.5"}]},
        {"oracle": "trace", "layer": "L1", "kind": "ledger-timeline", "title": "gfn 0x12345's history"},
        {"oracle": "console", "layer": "L2", "kind": "oops", "title": "BUG: kernel NULL pointer dereference",
         "excerpt": "[   50.100000] BUG: kernel NULL pointer dereference, address: 0"},
        {"oracle": "console", "layer": "L2", "kind": "hang", "title": "L2 stalled: no ledger line for 240 s"}]
    (d / "run.json").write_text(json.dumps(run))
    return RunRecord.parse(run)


def test_rates_are_per_interval_and_skip_a_counter_reset():
    edges, vals = rates([0, 5, 10, 15], [0, 500, 1500, 100])
    assert edges == [0, 5, 10, 15] and vals[:2] == [100, 200] and vals[2] != vals[2]  # NaN
    assert rates([1.0], [3.0]) == ([], [])


def test_ledger_rounds_are_shifted_onto_the_vmstat_clock():
    rounds = ledger_rounds(read_jsonl(FIXTURE / "cases/default/ledger.jsonl"), L2_BOOT)
    assert [r for _, _, r in rounds] == list(range(13))
    assert rounds[0] == (L2_BOOT, pytest.approx(4.166 + L2_BOOT), 0)
    assert rounds[1][0] == pytest.approx(4.241 + 2.0 + L2_BOOT) and rounds[1][1] == pytest.approx(10.683 + L2_BOOT)


def test_a_pass_timeline_is_drawn_with_nothing_marked(run_dir, tmp_path):
    out = tmp_path / "timeline.png"
    marks = timeline(run_dir / "cases/default", RunRecord.load(run_dir / "run.json"), out)
    assert marks == [] and out.stat().st_size > 5000 and out.read_bytes()[:4] == b"\x89PNG"


def test_a_finding_timeline_marks_every_finding_at_its_time(run_dir, tmp_path):
    run = make_finding(run_dir)
    out = tmp_path / "timeline.png"
    marks = timeline(run_dir / "cases/default", run, out)
    assert out.stat().st_size > 5000
    by = {m["source"]: m for m in marks if m["t"] is not None}
    assert by["ledger"]["t"] == pytest.approx(31.2 + L2_BOOT) and "gfn 0x12345; 2 logged" in by["ledger"]["label"]
    assert by["trace"]["t"] == pytest.approx(36.5 - 16.644471 + L2_BOOT, abs=0.01)  # its first example
    assert by["console"]["t"] == pytest.approx(50.1 + L2_BOOT - 3.815628, abs=0.01)  # L2 uptime at init
    unplaced = [m["label"] for m in marks if m["t"] is None]
    assert len(unplaced) == 1 and "hang" in unplaced[0]  # the ledger-timeline is the ledger's page: no mark
    assert len(marks) == 4


def test_findings_without_an_l2_boot_time_are_listed_not_placed(run_dir):
    run = make_finding(run_dir)
    del run.timings.l2_boot_s
    marks = finding_marks(run_dir / "cases/default", run, [], None)
    assert marks and all(m["t"] is None for m in marks)
    assert any(m["source"] == "ledger" for m in marks)  # no bad events to draw: the finding is still listed


def test_memory_current_is_drawn_when_vmstat_has_it(run_dir, tmp_path):
    p = run_dir / "cases/default/vmstat.csv"
    rows = list(csv.reader(p.open()))
    rows[0].append("memory_current")
    for i, r in enumerate(rows[1:]):
        r.append(str(min(16, 2 + 3 * i) * 2**20))
    with p.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    out = tmp_path / "t.png"
    timeline(run_dir / "cases/default", RunRecord.load(run_dir / "run.json"), out)
    assert out.stat().st_size > 5000


def test_an_empty_case_still_gives_a_plot(tmp_path):
    c = tmp_path / "run/cases/default"
    c.mkdir(parents=True)
    (c / "vmstat.csv").write_text("t,pswpin,pswpout\n")
    assert run_plots(tmp_path / "run") == [tmp_path / "run/plots/timeline.png"]
    assert (tmp_path / "run/plots/timeline.png").stat().st_size > 5000
    (c / "vmstat.csv").unlink()
    assert run_plots(tmp_path / "run") == []  # nothing recorded: no plot


def matrix_json() -> MatrixRecord:
    cells = [{"kernel": "clean", "variant": {}, "expect": "clean", "outcome": "clean", "ok": True,
              "runs": [{"run_dir": "r0", "verdict": "pass", "seed": 1, "first_finding_s": None}]}]
    for k, base in (("mutant-a", 17.1), ("mutant-b", 17.2), ("mutant-c", 17.6)):
        for v in ({}, {"thp": "always"}):
            cells.append({"kernel": k, "variant": v, "expect": "finding", "outcome": "finding", "ok": True,
                          "runs": [{"run_dir": f"{k}-{s}", "verdict": "finding", "seed": s,
                                    "first_finding_s": base - (2 if v else 0) + s / 10} for s in (1, 2, 3)]})
    cells[-1]["runs"][0] |= {"verdict": "pass", "first_finding_s": None}  # one seed that did not catch it
    cells.append({"kernel": "mutant-a", "variant": {"swap": "zram"}, "expect": "clean", "outcome": "clean",
                  "ok": True, "runs": [{"run_dir": "h", "verdict": "pass", "seed": 1, "first_finding_s": None}]})
    return MatrixRecord.parse({"name": "catch-time", "score": {"mutants": ["mutant-a", "mutant-b", "mutant-c"]},
                               "cells": cells})


def test_time_to_first_finding_has_a_point_per_catching_run(tmp_path):
    pts = time_to_first_finding(matrix_json(), tmp_path / "ttff.png")
    assert len(pts) == 17 and {p["kernel"] for p in pts} == {"mutant-a", "mutant-b", "mutant-c"}
    assert (tmp_path / "ttff.png").stat().st_size > 5000
    assert matrix_plots(matrix_json(), tmp_path / "m") == [tmp_path / "m/time-to-first-finding.png"]
    no_mutant = MatrixRecord.parse({"name": "fp", "cells": [matrix_json().cells[0].model_dump()],
                                    "score": {"mutants": []}})
    assert matrix_plots(no_mutant, tmp_path) == []


def test_catch_points_count_the_misses_and_skip_hidden_cells():
    points, missed, variants, seeds = catch_points(matrix_json())
    assert len(points) == 17 and missed == {"mutant-a": 0, "mutant-b": 0, "mutant-c": 1}
    assert variants == ['{}', '{"thp": "always"}'] and seeds == [1, 2, 3]  # the hidden zram cell is not a variant
    assert min(p["t"] for p in points if p["kernel"] == "mutant-a") == pytest.approx(15.2)


def test_harness_report_re_renders_everything_from_the_folder(run_dir, capsys):
    from harness.report.results import cli_report
    for name in ("summary.txt", "junit.xml", "results.ktap"):
        (run_dir / name).unlink(missing_ok=True)
    assert cli_report(str(run_dir)) == 0
    for name in ("summary.txt", "junit.xml", "results.ktap", "plots/timeline.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert (run_dir / "results.ktap").read_text().rstrip().endswith("ok 1 default")
    assert "wrote" in capsys.readouterr().out
