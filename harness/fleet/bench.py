"""`make bench`: performance figures → results/bench-<stage>-<time>.json.

pipeline: one default-scenario run (L1 boot, L2 boot, L1-ready → workload, ledger pages verified per second,
swap rates, wall time, harness overhead = wall − guest time); console: classifying a 10 MB log; trace: decoding
and checking a synthetic trace; build (with --build): full / cache-hit / incremental kernel builds;
minimal-config (with --build): the full-build time kconfigs/minimal-l1.config saves (harness.kernel.configbench);
micro-vs-l2 (with --build): both guest modes side by side (clean runs, time to first finding per cached mutant, the ratio;
bisect-micro-vs-l2, --only: a bisect with each; harness.fleet.bench_micro, docs/microguest.md);
matrix-jobs (with --build): one matrix run with `--jobs 1` and with `--jobs 2` (wall time, per cell, the ratio,
every cell's outcome, false positives): tests/fixtures/matrices/bench-jobs.yaml, or with --nightly the real
nightly (scenarios/nightly.yaml and catch-time.yaml, ~30 min a pass).  docs/scale.md."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness.config import load_scenario
from harness.kernel.prebuilt import ensure_prebuilt_kernel, load_kernel_dir
from harness.paths import REPO, results_root
from harness.util import host_load, write_json


def bench_pipeline(root: Path) -> dict:
    from harness.scenario.run import execute
    s = load_scenario(REPO / "scenarios/default.yaml")
    run = execute(s, load_kernel_dir(ensure_prebuilt_kernel()), root / "bench-runs",
                  (REPO / "scenarios/default.yaml").read_text())
    t = run["timings"]
    vd = run["l1"].get("vmstat_delta", {})
    work = t.get("workload_s") or 0
    return {"run_dir": run["path"], "verdict": run["verdict"], "accel": run["accel"].get("mode"),
            "l1_boot_s": t.get("l1_boot_s"), "l2_boot_s": t.get("l2_boot_s"),
            "l1_ready_to_workload_s": t.get("l1_ready_to_workload_s"),
            "ledger_pages_verified_per_s": round(run["ledger"].get("pages_verified", 0) / work, 1) if work else None,
            "pswpout_per_s": round(vd.get("pswpout", 0) / work, 1) if work else None,
            "pswpin_per_s": round(vd.get("pswpin", 0) / work, 1) if work else None,
            "total_s": t.get("total_s"), "guest_s": t.get("guest_s"),
            "harness_overhead_s": round(t["total_s"] - t["guest_s"], 2) if t.get("guest_s") else None,
            "harness_overhead_frac": round((t["total_s"] - t["guest_s"]) / t["total_s"], 3) if t.get("guest_s") else None,
            "targets": {"total_s": 180, "l1_ready_to_workload_s": 12, "harness_overhead_frac": 0.10}}


# console stage: lines a busy guest prints, then one KVM WARNING that must be found at the very end
_NOISE = (
    "[{t:12.6f}][ T{p}] EXT4-fs (sda1): re-mounted. Opts: errors=remount-ro\n",
    "[{t:12.6f}][ T{p}] audit: type=1400 audit({t:.3f}:{p}): avc:  denied  {{ read }} for pid={p} comm=\"ledger\"\n",
    "[{t:12.6f}][ T{p}] kvm: vcpu{p} unhandled rdmsr: 0x{p:x} data 0x0\n",
    "[{t:12.6f}][ T{p}] ledger[{p}]: wrote page {p} generation {p} checksum 0x{p:08x}\n",
    "[{t:12.6f}][ T{p}] systemd[1]: Started Session {p} of User root.\n",
    "[{t:12.6f}][ T{p}] virtio_net virtio0 eth0: error: queue {p} reset (-11)\n",
)

_BENCH_REPORT = """\
[ 9999.000001][ T4242] ------------[ cut here ]------------
[ 9999.000002][ T4242] WARNING: CPU: 1 PID: 4242 at arch/x86/kvm/mmu/tdp_mmu.c:532 handle_changed_spte+0x8f1/0x1a70 [kvm]
[ 9999.000003][ T4242] Modules linked in: kvm_intel kvm
[ 9999.000004][ T4242] RIP: 0010:handle_changed_spte+0x8f1/0x1a70 [kvm]
[ 9999.000005][ T4242] Call Trace:
[ 9999.000006][ T4242]  <TASK>
[ 9999.000007][ T4242]  tdp_mmu_zap_leafs+0x2d1/0x5b0 [kvm]
[ 9999.000008][ T4242]  kvm_tdp_mmu_unmap_gfn_range+0x1a5/0x2c0 [kvm]
[ 9999.000009][ T4242]  </TASK>
[ 9999.000010][ T4242] ---[ end trace 0000000000000000 ]---
"""


def bench_console(size_mb: float = 10) -> dict:
    """Time classify() on a ~size_mb MB synthetic log (noise + one WARNING at the end)."""
    target = int(size_mb * 1024 * 1024)
    parts: list[str] = []
    n = 0
    i = 0
    while n < target:
        s = _NOISE[i % len(_NOISE)].format(t=i * 0.001, p=1000 + i % 50000)
        parts.append(s)
        n += len(s)
        i += 1
    from harness.oracles.console import classify
    text = "".join(parts) + _BENCH_REPORT
    t0 = time.perf_counter()
    rep = classify(text)
    dt = time.perf_counter() - t0
    return {"size_mb": round(len(text) / (1024 * 1024), 2), "seconds": round(dt, 4),
            "crash": rep.crash, "kind": rep.kind, "title": rep.title}


# matrix-jobs stage: the same matrix with --jobs 1 and --jobs 2, as `harness matrix` children
MATRIX_JOBS_FIXTURE = REPO / "tests/fixtures/matrices/bench-jobs.yaml"
NIGHTLY_MATRICES = tuple(REPO / "scenarios" / m for m in
                         ("nightly.yaml", "catch-time.yaml", "nightly-7.2.yaml", "nightly-debug.yaml"))


def prepare_matrix(mpath: Path) -> dict:
    """Build (or take from the cache) every kernel and guest image the matrix boots, before any pass is timed,
    so neither pass pays for them; what --jobs auto would be here."""
    from harness.fleet.matrix.expansion import expand, overrides_of, resolve
    from harness.fleet.matrix.jobs import job_count, warm_images
    from harness.fleet.matrix.model import load_matrix
    m = load_matrix(mpath)
    cells = expand(m)
    scen = mpath.parent / m.scenario
    scenarios = [load_scenario(scen, overrides_of(c.variant)) for c in cells if not c.requires]
    t0 = time.monotonic()
    kernels = {k: resolve(m.kernels[k], mpath.parent) for k in dict.fromkeys(c.kernel for c in cells)
               if any(c.kernel == k and not c.requires for c in cells)}  # cells that need no particular host
    warm_images(kernels)
    return {"name": m.name, "cells": len(cells), "prepare_s": round(time.monotonic() - t0, 1),
            "cores": len(os.sched_getaffinity(0)), "jobs_auto": job_count("auto", scenarios)}


def _run_facts(run_dir: str) -> dict:
    """What shows a starved run besides its time: the pressure reached, pages verified, trace events lost."""
    try:
        run = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    t, led = run.get("timings", {}), run.get("ledger") or {}
    vd = (run.get("l1") or {}).get("vmstat_delta") or {}
    return {k: t.get(k) for k in ("l1_boot_s", "l2_boot_s", "workload_s", "guest_s")} | {
        "accel": (run.get("accel") or {}).get("mode"), "pswpout": vd.get("pswpout"),
        "swap_ra_hit": vd.get("swap_ra_hit"), "pages_verified": led.get("pages_verified"),
        "bad_pages": sum(led.get(k) or 0 for k in ("stale", "zero", "corrupt")),
        "trace_lost_events": (run.get("trace") or {}).get("lost_events")}


def cell_record(c: dict) -> dict:
    runs = [{"seed": r["seed"], "verdict": r["verdict"], "total_s": r.get("total_s"),
             "first_finding_s": r.get("first_finding_s"), "attempts": r.get("attempts", 1),
             **_run_facts(r["run_dir"])} for r in c.get("runs", [])]
    from harness.fleet.matrix.model import Cell
    name = Cell(c["kernel"], c.get("variant") or {}, c["expect"], seed=c.get("seed")).name
    return {"id": c["id"], "name": name, "expect": c["expect"],
            "outcome": c["outcome"], "ok": c["ok"], "retries": c.get("retries", 0), "runs": runs}


def matrix_pass(mpath: Path, jobs: int, out: Path) -> dict:
    """One `harness matrix MPATH --jobs N` into its own results root; its wall time and what it judged."""
    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "harness", "matrix", str(mpath), "--jobs", str(jobs), "--results", str(out)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    load0 = host_load()
    print(f"bench matrix-jobs: {mpath.name} --jobs {jobs} → {out}", flush=True)
    t0 = time.monotonic()
    with open(out / "matrix.log", "wb") as log:
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.monotonic() - t0
    done = [d for d in out.glob("matrix-*") if d.is_dir() and not d.name.endswith(".incomplete")]
    res = {"jobs": jobs, "rc": rc, "wall_s": round(wall, 1), "load_at_start": load0, "load_at_end": host_load(),
           "log": str(out / "matrix.log")}
    if len(done) != 1:
        return res | {"error": f"no finished matrix folder under {out} (exit {rc})"}
    js = json.loads((done[0] / "matrix.json").read_text())
    sc = js["score"]
    cells = [cell_record(c) for c in js["cells"]]
    return res | {"matrix_dir": str(done[0]), "cells": len(cells), "wall_per_cell_s": round(wall / len(cells), 1),
                  "cells_ok": sc["cells_ok"], "mutation_score": sc["mutation_score"],
                  "false_positives": sc["false_positives"], "retries": sum(c["retries"] for c in cells),
                  "outcomes": {c["id"]: c["outcome"] for c in cells}, "cell_results": cells}


def compare_passes(passes: dict[str, dict]) -> dict:
    """Ratios to --jobs 1, and whether every pass judged every cell alike (a starved cell would not)."""
    base = passes.get("1", {})
    ratios = {j: round(p["wall_s"] / base["wall_s"], 2) for j, p in passes.items()
              if j != "1" and base.get("wall_s") and p.get("wall_s")}
    outcomes = [p.get("outcomes") for p in passes.values()]
    agree = all(o is not None for o in outcomes) and all(o == outcomes[0] for o in outcomes)
    fp = [p.get("false_positives") for p in passes.values()]
    all_ok = all(p.get("cells_ok") == p.get("cells") and p.get("cells") for p in passes.values())
    return {"wall_ratio_to_jobs1": ratios, "outcomes_agree": agree, "false_positives": fp,
            "ok": agree and all_ok and all(f == 0 for f in fp)}


def bench_matrix_jobs(root: Path, matrices: list[Path] | None = None, jobs: tuple[int, ...] = (1, 2)) -> dict:
    """Each matrix with every --jobs value in turn (kernels and images prepared first, outside the timing)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    res: dict = {"jobs": list(jobs), "matrices": {}, "target": "false positives 0 with --jobs 2; every cell as "
                 "expected in every pass; --jobs 2 wall time well under --jobs 1"}
    for mpath in matrices or [MATRIX_JOBS_FIXTURE]:
        mpath = Path(mpath).resolve()
        prep = prepare_matrix(mpath)
        passes = {str(j): matrix_pass(mpath, j, root / "bench-runs" / f"matrix-jobs-{stamp}-{prep['name']}" / f"jobs{j}")
                  for j in jobs}
        res["matrices"][prep["name"]] = {"matrix": str(mpath), **prep, "passes": passes, **compare_passes(passes)}
    res["ok"] = all(m["ok"] for m in res["matrices"].values())
    return res


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m harness.fleet.bench")
    ap.add_argument("--only", choices=sorted(STAGES), action="append")
    ap.add_argument("--build", action="store_true",
                    help="also run the slow benchmarks: kernel builds, the matrix --jobs 1 vs 2, micro-guest vs Linux L2")
    ap.add_argument("--nightly", action="store_true",
                    help="matrix-jobs: time the real nightly (nightly.yaml, catch-time.yaml; ~30 min a pass) "
                         "instead of tests/fixtures/matrices/bench-jobs.yaml")
    ap.add_argument("--matrix", action="append", default=None, metavar="FILE",
                    help="matrix-jobs: time this matrix instead (may repeat)")
    ap.add_argument("--jobs", default="1,2", metavar="N,M",
                    help="matrix-jobs: the --jobs values to compare (default 1,2)")
    from harness.fleet.bench_micro import add_arguments
    add_arguments(ap)
    args = ap.parse_args(argv)
    if args.bisect_repeats < 1:
        ap.error("--bisect-repeats must be >= 1")
    try:
        args.jobs = tuple(int(j) for j in args.jobs.split(","))
    except ValueError:
        ap.error(f"--jobs takes comma-separated numbers (got '{args.jobs}')")
    if any(j < 1 for j in args.jobs):
        ap.error("--jobs values must be >= 1")
    return args


def _stage_console(root: Path, args) -> dict:
    return bench_console(10) | {"target_s": 1.0}


def _stage_trace(root: Path, args) -> dict:
    from harness.oracles.trace import bench_trace
    return bench_trace(256) | {"target": "1 GB in < 60 s on one core"}


def _stage_build(root: Path, args) -> dict:
    from harness.kernel.build import bench
    return {"report": str(bench(REPO / "kernels/debian-6.12.yaml"))}


def _stage_minimal_config(root: Path, args) -> dict:
    from harness.kernel.configbench import bench_minimal_config
    return bench_minimal_config()


def _stage_matrix_jobs(root: Path, args) -> dict:
    mats = [Path(m) for m in args.matrix] if args.matrix else list(NIGHTLY_MATRICES) if args.nightly else None
    return bench_matrix_jobs(root, mats, args.jobs)


def _stage_micro_vs_l2(root: Path, args) -> dict:
    from harness.fleet.bench_micro import stage_micro_vs_l2
    return stage_micro_vs_l2(root, args)


def _stage_bisect_micro_vs_l2(root: Path, args) -> dict:
    from harness.fleet.bench_micro import stage_bisect_micro_vs_l2
    return stage_bisect_micro_vs_l2(root, args)


STAGES = {"console": _stage_console, "trace": _stage_trace, "pipeline": lambda root, args: bench_pipeline(root),
          "build": _stage_build, "minimal-config": _stage_minimal_config, "matrix-jobs": _stage_matrix_jobs,
          "micro-vs-l2": _stage_micro_vs_l2, "bisect-micro-vs-l2": _stage_bisect_micro_vs_l2}  # the last: --only


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    stages = args.only or ["console", "trace", "pipeline"] + (
        ["build", "minimal-config", "matrix-jobs", "micro-vs-l2"] if args.build else [])
    root = results_root()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rc = 0
    for st in stages:
        res = STAGES[st](root, args)
        write_json(root / f"bench-{st}-{stamp}.json", res)
        text = matrix_jobs_text(res) if "matrices" in res else "\n  ".join([""] + res["summary"]) if "summary" in res else res
        print(f"bench {st}: {text}")
        if res.get("ok") is False:  # a measurement that broke its own target (a false positive, a mismatch)
            rc = 1
    return rc


def matrix_jobs_text(res: dict) -> str:
    """The figures people read (the json has every cell and run)."""
    lines = []
    for name, m in res["matrices"].items():
        for j, p in m["passes"].items():
            lines.append(f"{name} --jobs {j}: {p['wall_s']} s, {p.get('wall_per_cell_s')} s/cell, "
                         f"{p.get('cells_ok')}/{p.get('cells')} as expected, false positives "
                         f"{p.get('false_positives')}, retries {p.get('retries')} {p.get('error', '')}".rstrip())
        lines.append(f"{name}: ratio to --jobs 1 {m['wall_ratio_to_jobs1']}, outcomes agree {m['outcomes_agree']}")
    return "\n  " + "\n  ".join(lines) + f"\n  ok: {res['ok']}"


if __name__ == "__main__":
    raise SystemExit(main())
