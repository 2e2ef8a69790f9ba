"""`harness run`: kernel → the scenario stage (harness.scenario.case: CaseEvidence) → the judge
(harness.oracles.judge: findings, verdict) → the results folder (harness.report.results)."""
from __future__ import annotations

import errno
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

from rich.console import Console

from harness import __version__
from harness.config import Scenario, load_scenario
from harness.errors import EXIT_INFRA, InfraError, InputError
from harness.evidence import CaseEvidence, Judgement, infra
from harness.kernel.prebuilt import ensure_prebuilt_kernel, load_kernel_dir
from harness.oracles import judge as judge_mod
from harness.paths import REPO, results_root
from harness.util import change_identity
from harness.report.reproduce import reproduce_script
from harness.report.models import RunRecord
from harness.report.results import VERDICT_EXIT, RunDir, atomic_write, junit_xml, now_id, summary_text, write_json
from harness.report.ktap import write_run_ktap as write_ktap
from harness.report.plots import run_plots
from harness.report.progress import RunProgress
from harness.scenario.case import new_evidence, run_case
from harness.vm import qemu

# soft_wrap: a log (no tty) gets one line per event, never wrapped at 80 columns
err = Console(stderr=True, highlight=False, soft_wrap=True)


def log(msg: str) -> None:
    err.print(f"{time.strftime('%H:%M:%S')} {msg}", markup=False)


def resolve_kernel(args) -> dict:
    from harness.kernel.tree import developer_kernel
    if (dev := developer_kernel(args, log)) is not None:      # --tree PATH [--build], --kernel BZIMAGE --modules
        return load_kernel_dir(dev)
    if getattr(args, "build", None):
        from harness.kernel.build import build_kernel
        path = build_kernel(Path(args.build), upto=args.upto)
        return load_kernel_dir(Path(path))
    if getattr(args, "kernel", None):
        p = Path(args.kernel)
        if args.kernel.startswith("debian:") and not p.is_dir():   # debian:7.2, debian:7.2.13, debian:7.2.13-1
            from harness.kernel.debian import ensure_debian_kernel
            return load_kernel_dir(ensure_debian_kernel(args.kernel.removeprefix("debian:")))
        if not p.is_dir():
            raise InputError(f"kernel folder {p} does not exist")
        return load_kernel_dir(p)
    return load_kernel_dir(ensure_prebuilt_kernel())


def git_rev() -> str:
    """The harness's short commit, '-dirty' when a tracked file differs from it (run.json's versions.harness_git)."""
    return change_identity(REPO, short=True)


def kernel_identity(meta: dict) -> dict:
    return {"release": meta.get("release"), "source": meta.get("source"), "base": meta.get("base"),
            "package": meta.get("package"), "version": meta.get("version"), "sha256": meta.get("sha256"),
            "patches": meta.get("patches", []), "config_sha256": meta.get("config_sha256"),
            "dir": meta.get("dir"), "key": meta.get("key"), "kernel_yaml": meta.get("kernel_yaml")}


def cli_run(args) -> int:
    run = run_from_args(args)
    return VERDICT_EXIT.get(run["verdict"], EXIT_INFRA)


def run_from_args(args) -> dict:
    """`harness run`'s work: returns run.json's content (with "path"); `harness run --json` prints it."""
    scen_path = Path(args.scenario) if args.scenario else REPO / "scenarios/default.yaml"
    overrides = list(args.set)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.duration is not None:
        overrides.append(f"timeouts.total_s={args.duration}")
    scenario = load_scenario(scen_path, overrides)  # bad input fails here, before any results folder exists
    meta = resolve_kernel(args)
    kernel_argv = (["--kernel", str(Path(meta["dir"]).resolve())] if meta.get("source") != "debian-prebuilt" else [])
    root = Path(args.results) if args.results else results_root()
    # the scenario as the user can type it again (a name of scenarios/, else the path): next commands use it
    ref = getattr(args, "scenario_ref", None) or str(scen_path)
    return execute(scenario, meta, root, scen_path.read_text(), kernel_argv, overrides,
                   extra={"scenario_ref": ref})


def check_free_space(root: Path, s: Scenario) -> None:
    """Refuse to start on a results root that cannot hold a run's files (a trace alone is tens of MiB): one
    line, before any QEMU, instead of a traceback an hour in."""
    need = 64 + (s.trace.max_mb // 8 if s.trace.enabled else 0)
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free >> 20
    if free < need:
        raise InfraError(f"no space for results: {root} has {free} MiB free, a run needs at least {need} MiB")


class WallClock:
    """The run's wall-clock limit, whatever the run is waiting on: past timeouts.total_s plus a grace for the
    monitor's own deadline to act, every QEMU of the run is killed, so any wait on L1 ends."""
    GRACE_S = 60

    def __init__(self, total_s: float):
        self.total_s = total_s
        self.fired: str | None = None
        self.timer = threading.Timer(total_s + self.GRACE_S, self._fire)
        self.timer.daemon = True

    def _fire(self) -> None:
        self.fired = f"run exceeded its wall-clock limit (timeouts.total_s={self.total_s:.0f} s + {self.GRACE_S} s)"
        qemu.reap_all()

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()


def execute(s: Scenario, meta: dict, root: Path, scenario_yaml: str = "", kernel_argv: list[str] | None = None,
            overrides: list[str] | None = None, case: str = "default", extra: dict | None = None) -> dict:
    """One case, end to end.  Returns run.json's content; the folder is complete unless interrupted."""
    qemu.install_signal_handlers()
    check_free_space(Path(root), s)
    t0 = time.monotonic()
    rd = RunDir(root, now_id(s.name, s.seed))
    cdir = rd.case(case)
    kernel = kernel_identity(meta)
    patches = kernel.get("patches") or []
    # every patch, in order: a finding names the whole series under test, not only its last patch
    patch = ("; ".join(f"{i}. {p.get('subject')}" for i, p in enumerate(patches, 1)) if len(patches) > 1
             else patches[0].get("subject") if patches else "none (unpatched kernel)")
    if meta.get("change"):                  # a developer's tree: its commits and uncommitted diff, named
        from harness.kernel.change import change_label
        patch = change_label(meta["change"])
    progress = RunProgress(rd.run_id, s.workload_rounds, err)
    progress(f"run {rd.run_id}: kernel {meta.get('release')} ({meta.get('source')})")
    verdict, interrupted, infra_events, attempt1_s = None, False, [], None
    with WallClock(s.timeouts.total_s) as wall:
        for attempt in (1, 2):
            ev = new_evidence(s, case, patch)
            ev.info["kernel_meta"] = kernel
            try:
                run_case(s, meta, cdir, t0, ev, progress, wall=lambda: wall.fired)
            except KeyboardInterrupt:
                interrupted = True
                ev.error = infra("L0", "interrupted", "run interrupted")
                qemu.reap_all()
            save_evidence(ev, cdir)
            progress.phase("judge")
            verdict = judge_mod.judge(ev, judge_mod.load_logs(cdir))
            if interrupted or attempt == 2 or not verdict.retry:
                break
            progress(f"{verdict.retry}: retrying once")
            ev.info["timings"]["attempt1_s"] = round(time.monotonic() - t0, 2)
            attempt1_s = ev.info["timings"]["attempt1_s"]
            infra_events.append(f"attempt 1: {verdict.retry}; its files are in cases/{case}/attempt1/; retried")
            _set_aside(cdir, "attempt1")
    progress.close()
    assert verdict is not None  # the loop judged at least once
    if attempt1_s is not None:
        ev.info["timings"]["attempt1_s"] = attempt1_s
    run = record(rd.run_id, s, scenario_yaml, overrides, kernel, ev, verdict, infra_events, interrupted, t0)
    run.update(extra or {})
    if meta.get("change"):
        run.update(tree_fields(meta))
        for f in run["findings"]:
            f["change"] = {k: v for k, v in run["change"].items() if k != "diff"}
    return write_run(rd, cdir, run, meta, interrupted)


def tree_fields(meta: dict) -> dict:
    """run.json's `tree` (where the kernel came from) and `change` (what is under test), and the change's
    identity on every finding (without the diff itself: run.json's `change` embeds it once)."""
    change = meta["change"]
    tree = {"path": change.get("path"), "repo": change.get("repo"), "source": meta.get("source"),
            "objtree": (meta.get("objtree") or {}).get("path") or meta.get("tree"),
            "base_config": meta.get("base_config")}
    return {"tree": tree, "change": change}


def save_evidence(ev: CaseEvidence, cdir: Path) -> None:
    try:
        ev.save(cdir)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        ev.error = ev.error or infra("L0", "no-space", f"no space left on device writing {cdir}")


def record(run_id: str, s: Scenario, scenario_yaml: str, overrides, kernel: dict, ev: CaseEvidence,
           verdict: Judgement, infra_events: list[str], interrupted: bool, t0: float) -> dict:
    """run.json: the inputs, the evidence's descriptive facts and the judge's verdict."""
    info = ev.info
    timings = dict(info.get("timings", {}))
    if verdict.first_finding_s is not None:
        timings["first_finding_s"] = verdict.first_finding_s
    timings["total_s"] = round(time.monotonic() - t0, 2)
    return {"schema": 1, "run_id": run_id, "verdict": verdict.verdict, "judge_version": verdict.judge_version,
            "scenario": s.model_dump(), "scenario_yaml": scenario_yaml, "overrides": overrides or [],
            "kernel": kernel, "accel": info.get("accel", {}), "images": info.get("images", {}), "l1": ev.l1.to_json(),
            "l2": ev.l2.to_json(), "ledger": verdict.ledger.to_json(),
            "findings": [f.to_json() for f in verdict.findings], "trace": ev.trace, "timings": timings,
            "infra_events": info.get("infra_events", []) + infra_events, "attempts": 1 + len(infra_events),
            "interrupted": interrupted,
            "versions": {"harness": __version__, "harness_git": git_rev(), "python": platform.python_version(),
                         "judge": verdict.judge_version},
            "host": {"machine": platform.machine(), "cpus": os.cpu_count()}}


def write_run(rd: RunDir, cdir: Path, run: dict, meta: dict, interrupted: bool) -> dict:
    try:
        write_json(cdir / "findings.json", run["findings"])
        # the one-file reproducer: the kernel's recipe (patches, configs embedded), the scenario, the seed
        atomic_write(rd.path / "reproduce.sh", reproduce_script(run, meta))
        os.chmod(rd.path / "reproduce.sh", 0o755)
        record = RunRecord.parse(run, str(rd.path / "run.json"))  # a run that does not fit its model fails here
        atomic_write(rd.path / "summary.txt", summary_text(record, rd.final))
        atomic_write(rd.path / "junit.xml", junit_xml(record))
        write_ktap(record, rd.path / "results.ktap")
        record.write(rd.path / "run.json")
        draw_plots(rd.path)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise InfraError(f"no space left on device writing the results folder {rd.path} "
                         f"(it stays .incomplete; verdict was {run['verdict']})") from None
    if not interrupted:
        rd.finish()
    run["path"] = str(rd.path)
    sys.stdout.write(summary_text(record, rd.path))
    print(f"verdict: {run['verdict']}  results: {rd.path}")
    return run


def draw_plots(run_dir: Path) -> None:
    """plots/ from the folder's files; a plot that fails is said, never the run's end (the verdict is written)."""
    try:
        run_plots(run_dir)
    except OSError:
        raise
    except Exception as e:  # matplotlib on odd data: the results stand without the picture
        err.print(f"plots not drawn: {e!r}", markup=False)


def _set_aside(cdir: Path, name: str) -> None:
    """Move a case's files into cdir/name (a retried attempt stays in the results folder, as evidence)."""
    (cdir / name).mkdir(exist_ok=True)
    for p in list(cdir.iterdir()):
        if p.is_file():
            os.replace(p, cdir / name / p.name)
