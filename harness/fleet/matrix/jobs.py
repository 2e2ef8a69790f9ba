"""Running a matrix's cells: every run is its own `harness run` child, up to `jobs` cells at once.

One code path for any N: a child per run (own process group, own results folder runs/<cell id>/, own QEMU
ports and QMP socket), the matrix reads each child's run.json.  A cell's runs stay sequential (a finding cell
stops at its first finding), so N only changes when a cell runs, never what it runs or its place in
matrix.json.  Ctrl-C / SIGTERM: SIGTERM to every child's group (each reaps its QEMU and writes an interrupted
run.json), then SIGKILL to whatever is left, QEMU included.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from harness.errors import InputError
from harness.fleet.matrix.expansion import cell_overrides, seeds_of
from harness.fleet.matrix.model import Cell, Matrix
from harness.fleet.matrix.scoring import run_entry
from harness.paths import REPO
from harness.report.models import RunRecord
from harness.util import kill_procs

HARNESS_ARGV = [sys.executable, "-m", "harness"]  # tests point this at a fake child
POLL_S = 0.2
STOP_GRACE_S = 45.0  # an interrupted child reaps its QEMU (≤ 5 s) and judges what it has before exiting
DEADLINE_PAD_S = 300.0  # past a run's own wall clock (total_s + its 60 s grace) and its judging
OVERHEAD_MB = 1024  # per cell besides L1's RAM: the child harness, QEMU itself, the trace


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} matrix: {msg}", file=sys.stderr, flush=True)


def job_count(spec, scenarios: list) -> int:
    """--jobs N, or 'auto': what the host allows, min(cores, available memory / (L1 memory + overhead))."""
    if spec is None or str(spec).strip() == "1":
        return 1
    if str(spec).strip() == "auto":
        cores = len(os.sched_getaffinity(0))
        need = max((s.l1.memory_mb for s in scenarios), default=4096) + OVERHEAD_MB
        avail = psutil.virtual_memory().available >> 20
        n = max(1, min(cores, avail // need))
        log(f"--jobs auto = {n} ({cores} cores, {avail} MiB available, {need} MiB per cell)")
        return n
    try:
        n = int(spec)
    except ValueError:
        n = 0
    if n < 1:
        raise InputError(f"--jobs must be a positive number or 'auto' (got '{spec}')")
    return n


@dataclass
class Context:
    m: Matrix
    scenario: Path
    kernels: dict[str, dict]  # kernel key → resolved kernel folder's metadata
    mdir: Path  # the matrix folder being written (.incomplete)
    final: Path  # its name once complete: run_dir entries point there
    jobs: int
    total_s: dict[str, float]  # cell id → its scenario's wall clock
    overrides: list[str] = field(default_factory=list)  # `harness matrix --set`: every cell, after its variant


@dataclass
class Job:
    cell: Cell
    seeds: list[int]
    started: int = 0  # runs started so far
    seed: int | None = None
    proc: subprocess.Popen | None = None
    before: set[str] = field(default_factory=set)
    t0: float = 0.0
    deadline: float = 0.0
    timed_out: bool = False
    log: Path | None = None


def child_argv(ctx: Context, c: Cell, seed: int) -> list[str]:
    meta = ctx.kernels[c.kernel]
    argv = [*HARNESS_ARGV, "run", str(ctx.scenario)]
    if meta.get("source") != "debian-prebuilt" and meta.get("dir"):  # the prebuilt: the child's own default
        argv += ["--kernel", str(Path(meta["dir"]).resolve())]
    argv += ["--seed", str(seed)]
    for ov in [f"name={json.dumps(c.kernel)}", *cell_overrides(c), *ctx.overrides]:  # folders named after the kernel
        argv += ["--set", ov]
    return argv + ["--results", str(ctx.mdir / "runs" / c.id)]


def _die_with_parent() -> None:
    """In the child: SIGTERM when the matrix dies, even by SIGKILL (the child then reaps its QEMU)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start(ctx: Context, job: Job) -> None:
    job.proc = None  # until the new child exists (an interrupt in between must not collect the old one)
    job.seed = job.seeds[job.started]
    job.started += 1
    rdir = ctx.mdir / "runs" / job.cell.id
    rdir.mkdir(parents=True, exist_ok=True)
    job.before = {p.name for p in rdir.iterdir()}
    out = None
    if ctx.jobs > 1:  # N children on one terminal would interleave: each writes its own log
        job.log = rdir / f"run{job.started}-seed{job.seed}.log"
        out = open(job.log, "wb")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    try:
        job.proc = subprocess.Popen(child_argv(ctx, job.cell, job.seed), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT if out else None, env=env, start_new_session=True,
                                    preexec_fn=_die_with_parent)
    finally:
        if out:
            out.close()
    job.t0 = time.monotonic()
    job.deadline = job.t0 + ctx.total_s.get(job.cell.id, 900) + DEADLINE_PAD_S
    job.timed_out = False
    if job.log is not None:  # several children: each one's output in its own log
        log(f"start {job.cell.id} {job.cell.name} seed {job.seed} (log {job.log.relative_to(ctx.mdir)})")


def collect(ctx: Context, job: Job) -> tuple[dict, bool]:
    """The finished child's run entry (from its run.json) and whether that run was interrupted."""
    rdir = ctx.mdir / "runs" / job.cell.id
    new = sorted((p for p in rdir.iterdir() if p.is_dir() and p.name not in job.before), key=lambda p: p.name)
    for p in reversed(new):
        try:
            run = RunRecord.load(p / "run.json").to_json()
        except InputError:  # not written (the child died first) or unreadable: an earlier attempt may have one
            continue
        entry = run_entry(run, str(ctx.final / p.relative_to(ctx.mdir)), job.seed)
        if job.timed_out:  # the matrix stopped it, not the user: an infra run, the matrix goes on
            entry["verdict"] = "infra-error"
            entry["titles"] = [f"the run did not end within {job.deadline - job.t0:.0f} s: stopped"] + entry["titles"]
            return entry, False
        return entry, bool(run.get("interrupted"))
    rc = job.proc.returncode if job.proc else None
    why = (f"the run did not end within {job.deadline - job.t0:.0f} s: stopped" if job.timed_out else
           f"harness run exited with code {rc} and left no run.json")
    where = f" (output: {ctx.final / job.log.relative_to(ctx.mdir)})" if job.log else ""
    return {"run_dir": str(ctx.final / rdir.relative_to(ctx.mdir)), "verdict": "infra-error", "seed": job.seed,
            "first_finding_s": None, "total_s": round(time.monotonic() - job.t0, 2), "titles": [why + where],
            "attempts": 1, "tdp_mmu": None, "evidence": []}, False


def _descendants(pid: int) -> set[psutil.Process]:
    try:
        return set(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return set()


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # start_new_session: the child leads its own group
    except (ProcessLookupError, PermissionError):
        pass


def stop(jobs: list[Job], grace: float | None = None) -> None:
    """SIGTERM each child's group, wait up to `grace`, then SIGKILL the groups and every descendant seen
    (QEMU runs in a session of its own, so a group kill alone would miss it).  A second Ctrl-C skips the wait."""
    live = [j.proc for j in jobs if j.proc is not None and j.proc.poll() is None]
    if not live:
        return
    grace = STOP_GRACE_S if grace is None else grace
    hurry: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    prev = {s: signal.getsignal(s) for s in sigs}
    for s in sigs:
        signal.signal(s, lambda *_: hurry.append(1))
    try:
        seen: set[psutil.Process] = set()
        for child in live:
            seen |= _descendants(child.pid)
            _killpg(child.pid, signal.SIGTERM)
        end = time.monotonic() + grace
        while not hurry and time.monotonic() < end and any(child.poll() is None for child in live):
            for child in live:
                seen |= _descendants(child.pid)  # a QEMU started meanwhile
            time.sleep(POLL_S)
        for child in live:
            if child.poll() is None:
                seen |= _descendants(child.pid)
                _killpg(child.pid, signal.SIGKILL)
        kill_procs([p for p in seen if p.is_running()])
        for child in live:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
    finally:
        for s, h in prev.items():
            signal.signal(s, h)


def warm_images(kernels: dict[str, dict]) -> None:
    """Children started together would race to build the same new L1/L2 image into the cache: build them
    here first, with the arguments the run uses (a cache hit when nothing changed).  Best effort."""
    try:
        from harness.images.l1 import build_l1_image
        from harness.images.l2 import build_l2_image
        from harness.kernel.prebuilt import ensure_prebuilt_kernel
        l2k = ensure_prebuilt_kernel()
        l2 = build_l2_image(l2k)
        for meta in kernels.values():
            if meta.get("dir"):
                build_l1_image(Path(meta["dir"]), meta["release"], l2, l2k / "bzImage")
    except Exception as e:  # each run builds (and reports) its own
        log(f"could not prepare the guest images ahead ({e})")


def _finish_one(ctx: Context, job: Job) -> tuple[bool, bool]:
    """Record the exited child's run; returns (cell done, run interrupted)."""
    entry, interrupted = collect(ctx, job)
    job.cell.runs.append(entry)
    if ctx.jobs > 1:
        log(f"{job.cell.id} {job.cell.name} seed {job.seed}: {entry['verdict']} in {entry['total_s']} s")
    found = job.cell.expect == "finding" and entry["verdict"] == "finding"
    return found or job.started >= len(job.seeds), interrupted


def run_cells(cells: list[Cell], ctx: Context, on_cell_done: Callable[[Cell], object]) -> bool:
    """Run every cell's runs, `ctx.jobs` cells at a time, in the cells' order.  True when interrupted."""
    todo = deque(Job(c, seeds_of(ctx.m, c)) for c in cells if not c.skip)  # skipped: the host cannot (requires:)
    active: list[Job] = []
    try:
        if ctx.jobs > 1:
            warm_images(ctx.kernels)
        while todo or active:
            while todo and len(active) < ctx.jobs:
                active.append(todo.popleft())
                start(ctx, active[-1])
            time.sleep(POLL_S)
            for job in list(active):
                if job.proc is not None and job.proc.poll() is None:  # start() set it (or raised)
                    if time.monotonic() > job.deadline and not job.timed_out:
                        job.timed_out = True
                        stop([job])
                    continue
                done, interrupted = _finish_one(ctx, job)
                if interrupted:  # a child was interrupted (someone signalled it): the matrix stops too
                    active.remove(job)
                    raise KeyboardInterrupt
                if done:
                    active.remove(job)
                    on_cell_done(job.cell)
                else:
                    start(ctx, job)
    except KeyboardInterrupt:
        stop(active)
        for job in active:
            if job.proc is not None:
                job.cell.runs.append(collect(ctx, job)[0])
        return True
    return False
