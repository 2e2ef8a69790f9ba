"""`harness matrix --jobs 2` on the real pipeline: two cells of the small scenario at once, each its own
`harness run` child with its own QEMU; SIGTERM on the matrix stops both and leaves no QEMU."""
import json
import signal
import subprocess
import time

import psutil
import pytest

from tests.conftest import REPO, requires_qemu
from tests.integration.test_pipeline import HARNESS, harness, qemus_under

pytestmark = [pytest.mark.integration, requires_qemu]
TWO = REPO / "tests/fixtures/matrices/small-2.yaml"


def test_jobs_2_runs_both_cells_and_leaves_no_qemu(results_dir):
    p = harness("matrix", str(TWO), "--jobs", "2", "--results", str(results_dir), timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (mdir,) = results_dir.iterdir()
    assert not mdir.name.endswith(".incomplete")
    js = json.loads((mdir / "matrix.json").read_text())
    assert [c["seed"] for c in js["cells"]] == [1, 2] and all(c["outcome"] == "clean" for c in js["cells"])
    assert [len(c["runs"]) for c in js["cells"]] == [1, 1]
    for c in js["cells"]:
        run = json.loads((mdir / "runs" / c["id"] / c["runs"][0]["run_dir"].rsplit("/", 1)[1] / "run.json").read_text())
        assert run["verdict"] == "pass" and run["scenario"]["seed"] == c["seed"]
    assert js["shard"] == {"index": 1, "count": 1} and js["cell_ids"] == [c["id"] for c in js["cells"]]
    assert qemus_under(results_dir) == []


def test_sigterm_stops_every_cell_and_keeps_the_folder_incomplete(results_dir):
    proc = subprocess.Popen([*HARNESS, "matrix", str(TWO), "--jobs", "2", "--results", str(results_dir)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(qemus_under(results_dir)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    running = qemus_under(results_dir)
    assert len(running) == 2, "both cells' L1 QEMUs should be running by now"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode == 3
    _, alive = psutil.wait_procs(running, timeout=10)   # gone, or going: a killed QEMU is reaped by its parent
    assert alive == [] and qemus_under(results_dir) == []
    (mdir,) = results_dir.iterdir()
    assert mdir.name.endswith(".incomplete")
    js = json.loads((mdir / "matrix.json").read_text())
    runs = [r for c in js["cells"] for r in c["runs"]]
    assert len(runs) == 2 and all(r["verdict"] == "infra-error" for r in runs)
