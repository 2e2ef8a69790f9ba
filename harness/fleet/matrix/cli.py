"""`harness matrix MATRIX.yaml`: validate every cell's scenario, shard, skip what this host cannot run, resolve the
kernels once, run the cells (jobs.py) and write the folder (outputs.py)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from harness.config import load_scenario
from harness.errors import EXIT_FINDING, EXIT_INFRA, EXIT_PASS
from harness.fleet.matrix import jobs as mj
from harness.fleet.matrix import shard as sh
from harness.fleet.matrix.expansion import (
    check_requirements,
    expand,
    mark_skips,
    overrides_of,
    resolve,
)
from harness.fleet.matrix.model import load_matrix
from harness.fleet.matrix.outputs import save, write_outputs
from harness.paths import results_root
from harness.report.results import RunDir


def cli_matrix(args) -> int:
    from harness.scenario.run import check_free_space
    from harness.vm.qemu import install_signal_handlers
    mpath = Path(args.matrix_yaml)
    m = load_matrix(mpath)
    scen_path = mpath.parent / m.scenario
    every = list(getattr(args, "set", None) or [])  # `harness matrix --set K=V`: every cell, after its variant
    base = load_scenario(scen_path, every)  # validated before anything runs
    cells = expand(m)
    # every variant must be a valid scenario: fail now, not an hour in
    scenarios = {c.id: load_scenario(scen_path, overrides_of(c.variant) + every) for c in cells}
    check_requirements(m, cells, scenarios)
    index, count = sh.parse_shard(getattr(args, "shard", None))
    mine = sh.shard_cells(cells, index, count)
    listing = getattr(args, "list", False)
    root = Path(args.results) if args.results else results_root()
    if not listing:
        check_free_space(root, base)
    caps = None
    if any(c.requires for c in mine):  # only then does the host matter (no probe for a matrix without requires:)
        from harness.vm.host import host_caps
        # --list boots nothing: static checks and a probe remembered from this host boot
        caps = host_caps(probe_kernel=None if listing else _probe_kernel)
        print(f"matrix: this host: {caps.describe()}", file=sys.stderr)
    runnable = mark_skips(mine, caps) if caps is not None else list(mine)
    if caps is not None:
        print(f"matrix: {len(mine) - len(runnable)} of {len(mine)} cells skipped on this host (their requires:)",
              file=sys.stderr)
    if listing:
        print(sh.list_text(mine), end="")
        return EXIT_PASS
    jobs = mj.job_count(getattr(args, "jobs", None), [scenarios[c.id] for c in runnable])
    install_signal_handlers()  # SIGTERM during a kernel build stops the matrix too
    meta = sh.identity(mpath, scen_path, m, index, count, mine)
    if every:
        meta["overrides"] = every
    if caps is not None:
        meta["host"] = caps.to_json()
    # the same lifecycle as a run's folder: .incomplete until every cell has run
    shard_tag = f"-shard{index}of{count}" if count > 1 else ""
    rd = RunDir(root, f"matrix-{time.strftime('%Y%m%d-%H%M%S')}-{m.name}{shard_tag}")
    final, mdir = rd.final, rd.path
    (mdir / "runs").mkdir(parents=True)
    save(mdir, m, mine, meta)
    kernels: dict[str, dict] = {}
    for c in runnable:  # once per kernel key, in the parent: the children get the built folder
        if c.kernel not in kernels:
            kernels[c.kernel] = resolve(m.kernels[c.kernel], mpath.parent)
    ctx = mj.Context(m, scen_path.resolve(), kernels, mdir, final, jobs,
                     {c.id: scenarios[c.id].timeouts.total_s for c in runnable}, overrides=every)
    # after every cell: a killed nightly still leaves what it measured
    if mj.run_cells(mine, ctx, on_cell_done=lambda c: save(mdir, m, mine, meta)):
        # Ctrl-C / SIGTERM stops the whole matrix; the folder stays .incomplete with what it measured
        save(mdir, m, mine, meta)
        print(f"matrix interrupted; partial results: {mdir}")
        return EXIT_INFRA
    note = f"shard {index}/{count} of matrix {meta['matrix_id']}\n" if count > 1 else ""
    text = write_outputs(mdir, m, mine, meta, note)
    rd.finish()
    print(text)
    print(f"matrix results: {final}")
    return EXIT_PASS if all(c.settled for c in mine) else EXIT_FINDING


def _probe_kernel() -> Path:
    """The kernel the host's KVM boot probe boots (as a run's own probe does): Debian's prebuilt, which every run
    needs anyway as L2's kernel."""
    from harness.kernel.prebuilt import ensure_prebuilt_kernel
    return ensure_prebuilt_kernel() / "bzImage"
