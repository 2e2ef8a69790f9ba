"""`make bench` stages that put the two guest modes side by side on the same machine in the same bench run.

micro-vs-l2: a clean run of each mode (the micro-guest: scenarios/micro.yaml; the Linux L2: scenarios/default.yaml
with fewer ledger rounds, recorded), then every cached mutant run with each mode (the Linux L2 stopping at its
first finding): the time to the first finding from the run's start and from the guest workload's start (the
VMM's start for the micro-guest, the ledger's in L2 for the Linux L2), and the ratio Linux L2 / micro-guest.
bisect-micro-vs-l2 (opt-in, --only): `harness bisect` of a two-patch series (a one-line comment, then mutant a)
with each mode: wall time, steps, the first bad patch named, the ratio.

Every run is the harness's own entry point as a child process (`python -m harness run ... --json`,
`python -m harness bisect ...`), read back through harness.report.models; a kernel that is not in the cache is
recorded as skipped with the reason (this stage never builds one).  The machine's load is recorded at the start
and end of every measurement (`host_load()`): on a shared machine the figures say what else was running.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from harness.paths import REPO
from harness.report.models import BisectRecord, RunRecord

MICRO_SCENARIO = "scenarios/micro.yaml"
L2_SCENARIO = "scenarios/default.yaml"
# the Linux L2's clean run takes ~15 s a ledger round under TCG here: 4 rounds keep the stage near 10 minutes
L2_DEFAULT_SET = ("ledger.rounds=4",)
# (name, KERNEL.yaml, the micro-guest's --set, the Linux L2's extra --set): the overrides that make each mutant
# observable, as the proof matrices have them (scenarios/micro-proof-*.yaml, nightly-7.2.yaml): the prefetch
# mutants break the shadow MMU only (the TDP MMU never prefetches), and the Linux L2 needs L1's QEMU reading the
# ledger's pages for its O_DIRECT disk writes (dma_frac) to stage 7.2-b's window
SHADOW = ("tdp_mmu=false",)
MUTANTS = (("mutant-a", "kernels/mutant-a.yaml", (), ()), ("mutant-b", "kernels/mutant-b.yaml", SHADOW, SHADOW),
           ("mutant-c", "kernels/mutant-c.yaml", (), ()), ("mutant-d", "kernels/mutant-d.yaml", (), ()),
           ("mutant-e", "kernels/mutant-e.yaml", (), ()), ("mutant-7.2-a", "kernels/mutant-7.2-a.yaml", (), ()),
           ("mutant-7.2-b", "kernels/mutant-7.2-b.yaml", SHADOW, SHADOW + ("ledger.dma_frac=0.25",)),
           ("mutant-7.2-c", "kernels/mutant-7.2-c.yaml", (), ()))
QUICK_L2_MUTANTS = 1  # --quick: the Linux L2 on the first mutant only (the micro-guest still on all of them)
RUN_TIMEOUT_S = 1500
BISECT_TIMEOUT_S = 3600
ONELINE = REPO / "tests/fixtures/patches/tdp-oneline/0001-KVM-x86-mmu-add-a-comment-to-tdp_mmu.c.patch"


def add_arguments(ap) -> None:
    ap.add_argument("--quick", action="store_true",
                    help="micro-vs-l2: the Linux L2 on one mutant only (the micro-guest on every cached mutant)")
    ap.add_argument("--mutant", action="append", choices=[m[0] for m in MUTANTS], default=None,
                    help="micro-vs-l2: only this mutant (may repeat; default: every cached one)")
    ap.add_argument("--l2-set", action="append", default=None, metavar="KEY=VALUE",
                    help=f"micro-vs-l2, bisect-micro-vs-l2: the Linux L2's overrides (default {' '.join(L2_DEFAULT_SET)})")
    ap.add_argument("--bisect-repeats", type=int, default=1, metavar="N",
                    help="bisect-micro-vs-l2: clean runs that make a step good (default 1)")


# ---- the pure part: run.json / bisect.json → the bench record --------------------------------------------------

def ratio(l2: float | None, micro: float | None) -> float | None:
    """Linux L2 / micro-guest; None when either side has no figure (skipped, no finding, infra error)."""
    if l2 is None or micro is None or micro <= 0:
        return None
    return round(l2 / micro, 1)


def skipped(reason: str) -> dict:
    return {"skipped": reason}


def run_summary(run: RunRecord, run_dir: str, wall_s: float, rc: int, load0: dict, load1: dict) -> dict:
    """One `harness run` as the bench reports it.  first_finding_s is on the run's clock (from the scenario read and
    the kernel found to the first bad page reaching L0); startup_s is what the command spent outside it (Python's
    start, the cache look-up, the exit); first_bad_after_workload_s is the guest's own clock: seconds after the
    VMM started (micro-guest) or after the ledger started in L2 (Linux L2)."""
    t = run.timings.model_dump()
    led = run.ledger
    return {"run_dir": run_dir, "verdict": run.verdict, "rc": rc, "wall_s": round(wall_s, 1),
            "total_s": t.get("total_s"), "startup_s": round(wall_s - t["total_s"], 1) if t.get("total_s") else None,
            "first_finding_s": t.get("first_finding_s"), "first_bad_after_workload_s": led.first_bad_s,
            "l1_boot_s": t.get("l1_boot_s"), "l2_boot_s": t.get("l2_boot_s"), "guest_s": t.get("guest_s"),
            "bad_pages": led.bad, "pages_verified": led.pages_verified, "overrides": list(run.overrides),
            "kernel": run.kernel.get("key") or run.kernel.get("release"),
            "findings": sorted({f.title for f in run.findings})[:3], "infra_events": run.infra_events[:3],
            "load_at_start": load0, "load_at_end": load1}


def failed_run(wall_s: float, rc: int, why: str, load0: dict, load1: dict) -> dict:
    """A child that wrote no run.json (an input error, a timeout): the bench records why, with its load."""
    return {"verdict": None, "rc": rc, "wall_s": round(wall_s, 1), "error": why,
            "load_at_start": load0, "load_at_end": load1}


def mutant_row(micro: dict, l2: dict) -> dict:
    """One mutant in both modes, and how many times longer the Linux L2 took to its first finding."""
    def found(r: dict) -> bool:
        return r.get("verdict") == "finding"
    return {"micro": micro, "l2": l2,
            "ratio_first_finding": ratio(l2.get("first_finding_s"), micro.get("first_finding_s")),
            "ratio_first_bad_after_workload": ratio(l2.get("first_bad_after_workload_s"),
                                                    micro.get("first_bad_after_workload_s")),
            "ratio_first_bad_printed": ratio(l2.get("first_bad_printed_s"), micro.get("first_bad_printed_s")),
            "ratio_wall": ratio(l2.get("wall_s"), micro.get("wall_s")) if found(micro) and found(l2) else None}


def clean_pair(micro: dict, l2: dict) -> dict:
    return {"micro": micro, "l2": l2, "ratio_wall": ratio(l2.get("wall_s"), micro.get("wall_s")),
            "ratio_total": ratio(l2.get("total_s"), micro.get("total_s"))}


def verdict_ok(res: dict) -> tuple[bool, list[str]]:
    """The bench's own targets: both clean runs pass, the micro-guest finds every mutant it ran, and catches at
    least every mutant the Linux L2 caught.  Skipped mutants are not failures (the reason is recorded)."""
    problems = [f"clean {m}: {res['clean'][m].get('verdict') or res['clean'][m].get('error')}"
                for m in ("micro", "l2") if "skipped" not in res["clean"][m]
                and res["clean"][m].get("verdict") != "pass"]
    for name, row in res["mutants"].items():
        if "skipped" in row:
            continue
        mv, lv = row["micro"].get("verdict"), row["l2"].get("verdict")
        if mv != "finding":
            problems.append(f"{name}: the micro-guest gave {mv or row['micro'].get('error')}"
                            + (" (the Linux L2 caught it)" if lv == "finding" else ""))
    return not problems, problems


def _finding_text(r: dict, clock: str) -> str:
    if "skipped" in r:
        return "skipped"
    if r.get("verdict") != "finding":
        return str(r.get("verdict") or r.get("error"))
    return (f"{r.get('first_bad_printed_s')} s from the command ({r.get('first_finding_s')} s on the run's clock, "
            f"{clock} +{r.get('first_bad_after_workload_s')} s)")


def summary_lines(res: dict) -> list[str]:
    """The figures people read (the json has every run, its folder and its load)."""
    c = res["clean"]

    def clean(r: dict) -> str:
        return "skipped" if "skipped" in r else f"{r.get('verdict') or r.get('error')} in {r.get('wall_s')} s"
    lines = [f"clean micro: {clean(c['micro'])} (L1 boot {c['micro'].get('l1_boot_s')} s); clean Linux L2 "
             f"({' '.join(res['l2_set'])}): {clean(c['l2'])}; ratio {c['ratio_wall']}"]
    for name, row in res["mutants"].items():
        if "skipped" in row:
            lines.append(f"{name}: skipped ({row['skipped']})")
            continue
        lines.append(f"{name}: micro {_finding_text(row['micro'], 'VMM')}; Linux L2 "
                     f"{_finding_text(row['l2'], 'ledger')}; ratio {row['ratio_first_bad_printed']}")
    return lines


def bisect_summary(doc: BisectRecord, wall_s: float, rc: int, load0: dict, load1: dict) -> dict:
    fb = doc.first_bad or {}
    return {"status": doc.status, "rc": rc, "wall_s": round(wall_s, 1),
            "first_bad": {"index": fb.get("index"), "subject": fb.get("subject")} if fb else None,
            "steps": [{"upto": s.upto, "verdict": s.verdict,
                       "runs_total_s": [r.get("total_s") for r in s.runs]} for s in doc.steps],
            "reproduction_rate": doc.reproduction_rate, "load_at_start": load0, "load_at_end": load1}


def bisect_pair(micro: dict, l2: dict) -> dict:
    same = (micro.get("first_bad") or {}).get("index") == (l2.get("first_bad") or {}).get("index") \
        and micro.get("status") == "first-bad" == l2.get("status")
    # a ratio of two bisects that each named a first bad patch (a failed one's wall time says nothing)
    both = micro.get("status") == "first-bad" == l2.get("status")
    return {"micro": micro, "l2": l2, "ratio_wall": ratio(l2.get("wall_s"), micro.get("wall_s")) if both else None,
            "same_first_bad": same}


# ---- the children ----------------------------------------------------------------------------------------------

def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def _load() -> dict:
    from harness.util import host_load
    return host_load()


def kernel_in_cache(kernel_yaml: str, upto: int | None = None) -> str | None:
    """None if the kernel is in the cache (a run takes it as is), else why not: this stage never builds."""
    from harness.errors import InputError
    from harness.kernel.build import lookup, plan
    try:
        p = plan(REPO / kernel_yaml, upto)
    except (InputError, OSError) as e:
        return f"{kernel_yaml}: {e}"
    if lookup(p) is None:
        return f"not in the kernel cache (`harness build {kernel_yaml}` builds it; this bench never builds)"
    return None


BAD_PAGE_MARK = b"ledger: BAD PAGE"  # harness.report.progress's line for a bad page reaching L0


def _child(argv: list[str], log: Path, timeout_s: int) -> tuple[int, bytes, float | None]:
    """Run a harness command; its stderr (the progress) to LOG as it comes, with the moment its first bad page
    was printed (seconds after the command started): the time to the first finding as a user sees it."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, cwd=REPO, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    assert p.stdout is not None and p.stderr is not None  # both are pipes
    stdout, stderr = p.stdout, p.stderr
    first_bad: list[float] = []
    timed_out = threading.Event()

    def kill() -> None:  # the child's whole session: its QEMUs too
        timed_out.set()
        os.killpg(p.pid, signal.SIGKILL)

    def pump() -> None:
        with open(log, "wb") as f:
            for line in stderr:
                f.write(line)
                if not first_bad and BAD_PAGE_MARK in line:
                    first_bad.append(round(time.monotonic() - t0, 1))
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    killer = threading.Timer(timeout_s, kill)
    killer.start()
    try:
        out = stdout.read()
        rc = p.wait()
    finally:
        killer.cancel()
    reader.join(5)
    return (-9 if timed_out.is_set() else rc), out, (first_bad[0] if first_bad else None)


def _timed_harness(stage: str, label: str, argv: list[str], sets: list[str], out: Path, timeout_s: int):
    """One harness command with its --set overrides, timed, the load read before and after:
    (rc, stdout, first bad page printed at, wall seconds, load before, load after)."""
    for s in sets:
        argv = argv + ["--set", s]
    out.mkdir(parents=True, exist_ok=True)
    print(f"bench {stage}: {label}: {' '.join(argv[3:])}", flush=True)
    load0 = _load()
    t0 = time.monotonic()
    rc, stdout, first_bad = _child(argv, out / f"{label}.log", timeout_s)
    return rc, stdout, first_bad, time.monotonic() - t0, load0, _load()


def harness_run(label: str, scenario: str, build: str | None, sets: list[str], out: Path) -> dict:
    """`python -m harness run SCENARIO [--build K] --set ... --json`, timed; its run.json read back."""
    argv = [sys.executable, "-m", "harness", "run", scenario, "--results", str(out), "--json"]
    argv += ["--build", build] if build else []
    rc, stdout, first_bad_cmd, wall, load0, load1 = _timed_harness("micro-vs-l2", label, argv, sets, out,
                                                                  RUN_TIMEOUT_S)
    try:
        path = Path(json.loads(stdout)["path"])
        run = RunRecord.load(path / "run.json")
    except (ValueError, KeyError, TypeError, OSError) as e:
        why = f"timeout after {RUN_TIMEOUT_S} s" if rc == -9 else f"no run.json ({type(e).__name__}: {e})"
        return failed_run(wall, rc, f"{why}; see {out / label}.log", load0, load1)
    res = run_summary(run, str(path), wall, rc, load0, load1) | {"first_bad_printed_s": first_bad_cmd}
    print(f"  → {res['verdict']} in {res['wall_s']} s (first finding {res['first_finding_s']}), "
          f"load {load0['loadavg'][0]} → {load1['loadavg'][0]}", flush=True)
    return res


def _l2_sets(args) -> list[str]:
    return list(args.l2_set) if getattr(args, "l2_set", None) else list(L2_DEFAULT_SET)


def stage_micro_vs_l2(root: Path, args) -> dict:
    out = root / "bench-runs" / f"micro-vs-l2-{time.strftime('%Y%m%d-%H%M%S')}"
    l2_sets = _l2_sets(args)
    quick = bool(getattr(args, "quick", False))
    res: dict = {"micro_scenario": MICRO_SCENARIO, "l2_scenario": L2_SCENARIO, "l2_set": l2_sets,
                 "l2_mutant_set": ["stop_on_first_finding=true"], "quick": quick, "runs_dir": str(out),
                 "cores": len(os.sched_getaffinity(0)), "load_at_start": _load(),
                 "targets": {"micro_first_finding_s": 10, "micro_first_bad_after_vmm_s": 1, "micro_clean_wall_s": 20}}
    res["clean"] = clean_pair(harness_run("clean-micro", MICRO_SCENARIO, None, [], out),
                              harness_run("clean-l2", L2_SCENARIO, None, l2_sets, out))
    res["mutants"] = {}
    l2_done = 0
    chosen = getattr(args, "mutant", None)
    for name, ky, sets, l2_extra in MUTANTS:
        if chosen and name not in chosen:
            continue
        why = kernel_in_cache(ky)
        if why:
            res["mutants"][name] = skipped(why)
            continue
        micro = harness_run(f"{name}-micro", MICRO_SCENARIO, ky, list(sets), out)
        if quick and l2_done >= QUICK_L2_MUTANTS:
            l2 = skipped("--quick: the Linux L2 runs on the first mutant only")
        else:
            l2 = harness_run(f"{name}-l2", L2_SCENARIO, ky, l2_sets + list(l2_extra) + ["stop_on_first_finding=true"],
                             out)
            l2_done += 1
        res["mutants"][name] = mutant_row(micro, l2)
    res["load_at_end"] = _load()
    res["ok"], res["problems"] = verdict_ok(res)
    res["summary"] = summary_lines(res)
    return res


# ---- bisect --------------------------------------------------------------------------------------------------

def two_patch_series(where: Path) -> Path:
    """The integration test's series: a one-line comment in tdp_mmu.c, then mutant a; its KERNEL.yaml has the same
    inputs as the cache's builds of that stack (so every step is a cache hit)."""
    mutant_a = next((REPO / "patches/mutants").glob("a-*/0001-*.patch"))
    sdir = where / "series"
    sdir.mkdir(parents=True, exist_ok=True)
    for p in (ONELINE, mutant_a):
        shutil.copyfile(p, sdir / p.name)
    (sdir / "series").write_text(f"{ONELINE.name}\n{mutant_a.name}\n")
    ky = where / "KERNEL.yaml"
    ky.write_text('base: {debian-source: "6.12"}\nseries: series\ndefconfig: x86_64_defconfig\n'
                  f"fragments: [{REPO}/kconfigs/kvm-host.config, {REPO}/kconfigs/tracing.config]\n")
    return ky


def harness_bisect(label: str, ky: Path, scenario: str, sets: list[str], repeats: int, out: Path) -> dict:
    argv = [sys.executable, "-m", "harness", "bisect", str(ky), scenario, "--repeats", str(repeats),
            "--results", str(out)]
    rc, stdout, _, wall, load0, load1 = _timed_harness("bisect-micro-vs-l2", label, argv, sets, out,
                                                       BISECT_TIMEOUT_S)
    (out / f"{label}.out").write_bytes(stdout)
    done = [d for d in out.glob("bisect-*") if (d / "bisect.json").is_file()]
    if len(done) != 1:
        why = f"timeout after {BISECT_TIMEOUT_S} s" if rc == -9 else f"no bisect.json under {out} (exit {rc})"
        return failed_run(wall, rc, why, load0, load1)
    res = bisect_summary(BisectRecord.load(done[0] / "bisect.json"), wall, rc, load0, load1)
    res["bisect_dir"] = str(done[0])
    print(f"  → {res['status']} in {res['wall_s']} s, load {load0['loadavg'][0]} → {load1['loadavg'][0]}", flush=True)
    return res


def stage_bisect_micro_vs_l2(root: Path, args) -> dict:
    out = root / "bench-runs" / f"bisect-micro-vs-l2-{time.strftime('%Y%m%d-%H%M%S')}"
    ky = two_patch_series(out / "kernel")
    missing = [f"upto {n}: {why}" for n in (0, 1, 2) if (why := kernel_in_cache(str(ky), n))]
    repeats = getattr(args, "bisect_repeats", 1)
    l2_sets = _l2_sets(args)
    res: dict = {"series": ["tdp-oneline (a comment)", "mutant a"], "repeats": repeats, "l2_set": l2_sets,
                 "runs_dir": str(out), "load_at_start": _load()}
    if missing:
        return res | {"skipped": "; ".join(missing), "ok": None}
    pair = bisect_pair(harness_bisect("micro", ky, MICRO_SCENARIO, [], repeats, out / "micro"),
                       harness_bisect("l2", ky, L2_SCENARIO, l2_sets, repeats, out / "l2"))
    res = res | pair | {"load_at_end": _load(), "ok": pair["micro"].get("status") == "first-bad"}
    return res | {"summary": bisect_lines(res)}


def bisect_lines(res: dict) -> list[str]:
    def one(r: dict) -> str:
        fb = r.get("first_bad") or {}
        return (f"{r.get('status') or r.get('error')} in {r.get('wall_s')} s, {len(r.get('steps') or [])} steps"
                + (f", first bad patch {fb.get('index')}: {fb.get('subject')}" if fb else ""))
    return [f"micro-guest bisect: {one(res['micro'])}", f"Linux L2 bisect ({' '.join(res['l2_set'])}): "
            f"{one(res['l2'])}", f"ratio {res['ratio_wall']}, same first bad patch: {res['same_first_bad']}"]
