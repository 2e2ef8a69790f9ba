"""run.json, matrix.json and bisect.json through their models (harness.report.models): every stored run reads and
writes back unchanged, a file that is not what it claims is one clear input error, and the writers go through
the models."""
import json
from pathlib import Path

import pytest

from harness.errors import InputError
from harness.evidence import Finding
from harness.report.models import BisectRecord, MatrixRecord, RunRecord
from harness.report.results import load_run, load_run_record, write_run_json

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
STORED_RUNS = sorted(FIXTURES.rglob("run.json"))


def test_there_are_stored_runs():
    assert len(STORED_RUNS) >= 10


@pytest.mark.parametrize("path", STORED_RUNS, ids=[str(p.parent.relative_to(FIXTURES)) for p in STORED_RUNS])
def test_every_stored_run_reads_typed_and_writes_back_unchanged(path, tmp_path):
    raw = json.loads(path.read_text())
    run = RunRecord.load(path)
    assert run.schema_version == raw["schema"] and run.verdict == raw["verdict"]
    assert all(isinstance(f, Finding) for f in run.findings) and len(run.findings) == len(raw["findings"])
    assert run.timings.total_s == raw["timings"].get("total_s")
    assert run.to_json() == raw and list(run.to_json()) == list(raw)  # same keys, same order, nothing added
    write_run_json(tmp_path / "run.json", raw)
    assert json.loads((tmp_path / "run.json").read_text()) == raw
    assert load_run(path.parent) == raw and load_run_record(path.parent).run_id == raw["run_id"]


def test_tree_and_change_are_optional_fields_of_a_run():
    run = RunRecord.parse({"schema": 1, "run_id": "r", "verdict": "pass"})
    assert run.tree is None and run.change is None and "tree" not in run.to_json()
    ch = {"kind": "tree", "git": True, "describe": "v7.2-3-gabc-dirty"}
    run = RunRecord.parse({"schema": 1, "run_id": "r", "verdict": "finding", "tree": {"path": "/src"}, "change": ch})
    assert run.change == ch and run.to_json()["tree"] == {"path": "/src"}


@pytest.mark.parametrize("data, message", [
    ({"schema": 1, "verdict": "pass"}, "run_id: Field required"),
    ({"schema": 1, "run_id": "r", "verdict": "maybe"}, "verdict"),
    ({"schema": 1, "run_id": "r", "verdict": "finding", "findings": [{"oracle": "ledger", "title": "x"}]},
     "findings.0.layer"),
    ({"schema": 2, "run_id": "r", "verdict": "pass"}, r"schema 2 is newer than this harness reads \(1\)"),
    (["not", "a", "run"], "not a valid RunRecord"),
])
def test_a_file_that_is_not_a_run_is_one_input_error(tmp_path, data, message):
    p = tmp_path / "run.json"
    p.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message) as e:
        RunRecord.load(p)
    assert str(p) in str(e.value)
    with pytest.raises(InputError):
        write_run_json(tmp_path / "out.json", data)  # and none is written either
    assert not (tmp_path / "out.json").exists()


def test_an_unreadable_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        RunRecord.load(tmp_path / "absent.json")
    (tmp_path / "cut.json").write_text('{"schema": 1, "run_')
    with pytest.raises(InputError, match="cannot read"):
        RunRecord.load(tmp_path / "cut.json")


def test_a_matrix_folder_is_written_through_its_model(tmp_path):
    from harness.fleet.matrix.model import Cell, KernelRef, Matrix
    from harness.fleet.matrix.outputs import save
    m = Matrix(name="m", kernels={"k": KernelRef(prebuilt=True), "mut": KernelRef(prebuilt=True, mutant=True)},
               groups=[])
    cells = [Cell("k", {}, "clean", runs=[{"run_dir": "r1", "verdict": "pass", "seed": 1, "first_finding_s": None,
                                           "total_s": 3.0}]),
             Cell("mut", {"thp": "always"}, "finding",
                  runs=[{"run_dir": "r2", "verdict": "finding", "seed": 1, "first_finding_s": 12.5, "total_s": 20}])]
    sc = save(tmp_path, m, cells, {"matrix_id": "abc", "harness_commit": "1234-dirty"})
    raw = json.loads((tmp_path / "matrix.json").read_text())
    assert list(raw)[:2] == ["schema", "name"] and raw["schema"] == 1 and raw["harness_commit"] == "1234-dirty"
    rec = MatrixRecord.load(tmp_path / "matrix.json")
    assert rec.score == sc and sc["caught"] == ["mut"] and rec.mutant_kernels() == ["mut"]
    assert [c.outcome for c in rec.cells] == ["clean", "finding"] and rec.cells[1].runs[0].first_finding_s == 12.5
    assert rec.to_json() == raw


def test_a_bisection_is_written_through_its_model(tmp_path):
    from harness.fleet.bisect import write_outputs
    doc = {"schema": 1, "kind": "bisect", "status": "first-bad", "series": [], "repeats": 1, "kernel_yaml": "k",
           "scenario": "s", "overrides": [], "steps": [{"upto": 0, "patch": None, "runs": [{"verdict": "pass"}],
                                                         "verdict": "good"}],
           "candidates": [], "first_bad": None, "confidence": {}, "runs_total": 1, "elapsed_s": 1.0}
    write_outputs(tmp_path, doc)
    rec = BisectRecord.load(tmp_path / "bisect.json")
    assert rec.status == "first-bad" and rec.steps[0].verdict == "good" and rec.to_json() == doc
    with pytest.raises(InputError, match="steps.0.upto"):
        write_outputs(tmp_path, doc | {"steps": [{"verdict": "good"}]})


def _kernel_folder(d: Path, meta: dict | None) -> Path:
    (d / "modules/lib/modules/7.2.0-test").mkdir(parents=True)
    (d / "bzImage").write_bytes(b"\0" * 600)
    if meta is not None:
        (d / "meta.json").write_text(json.dumps(meta))
    return d


def test_a_kernel_meta_is_read_through_its_model(tmp_path):
    from harness.kernel.models import KernelMeta
    from harness.kernel.prebuilt import load_kernel_dir
    built = {"schema": 2, "key": "abc", "release": "7.2.0-test", "source": "build", "base": {"kind": "git"},
             "patches": [{"name": "0001.patch"}], "config_sha256": "f" * 64, "build_s": 12.5}
    meta = load_kernel_dir(_kernel_folder(tmp_path / "k1", built))
    assert meta == built | {"dir": str(tmp_path / "k1")}                       # unchanged, extras kept
    prebuilt = {"source": "debian-prebuilt", "release": "6.12.57+deb13-amd64", "package": "p", "patches": []}
    meta = load_kernel_dir(_kernel_folder(tmp_path / "k2", prebuilt))
    assert "schema" not in meta and meta["package"] == "p"                    # an old meta.json: as it was
    assert load_kernel_dir(_kernel_folder(tmp_path / "k3", None))["release"] == "7.2.0-test"  # a bare folder
    with pytest.raises(InputError, match=r"schema 3 is newer than this harness reads \(2\)"):
        load_kernel_dir(_kernel_folder(tmp_path / "k4", built | {"schema": 3}))
    with pytest.raises(InputError, match="meta.json: not a valid KernelMeta"):
        load_kernel_dir(_kernel_folder(tmp_path / "k5", built | {"patches": "all of them"}))
    assert KernelMeta.parse({"release": "r", "source": "debian-prebuilt"}).to_json()["schema"] == 2
