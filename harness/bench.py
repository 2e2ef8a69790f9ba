"""`make bench`: performance figures → results/bench-<stage>-<time>.json.

pipeline: one default-scenario run (L1 boot, L2 boot, L1-ready → workload, ledger pages verified per second,
swap rates, wall time, harness overhead = wall − guest time); console: classifying a 10 MB log; trace: decoding
and checking a synthetic trace; build (with --build): full / cache-hit / incremental kernel builds."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from harness.config import load_scenario
from harness.kernel.prebuilt import ensure_prebuilt_kernel, load_kernel_dir
from harness.paths import REPO, results_root
from harness.report.results import write_json


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.bench")
    ap.add_argument("--only", choices=["pipeline", "console", "trace", "build"], action="append")
    ap.add_argument("--build", action="store_true", help="also run the (slow) kernel build benchmark")
    args = ap.parse_args(argv)
    stages = args.only or ["console", "trace", "pipeline"] + (["build"] if args.build else [])
    root = results_root()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for st in stages:
        if st == "console":
            from harness.oracles.console import bench_classify
            res = bench_classify(10)
            res["target_s"] = 1.0
        elif st == "trace":
            from harness.oracles.trace import bench_trace
            res = bench_trace(256)
            res["target"] = "1 GB in < 60 s on one core"
        elif st == "pipeline":
            res = bench_pipeline(root)
        else:
            from harness.kernel.build import bench
            res = {"report": str(bench(REPO / "kernels/debian-6.12.yaml"))}
        write_json(root / f"bench-{st}-{stamp}.json", res)
        print(f"bench {st}: {res}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
