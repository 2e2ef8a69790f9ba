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
            res = bench_console(10)
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
