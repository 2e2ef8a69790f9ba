#!/usr/bin/env python3
"""Record real LKDTM consoles as console-oracle fixtures.

Boots each built kernel (kernels/<name>.yaml, from the build cache; --build builds it first) as L1 without
oops=panic, provokes its crash types (harness.fleet.lkdtm.KERNELS) one after the other, and writes, per kernel,
tests/fixtures/consoles-lkdtm/<name>/<TYPE>.log (the console from the type's begin marker to its end marker),
boot.log (the console before the first marker: a real boot, which must hold no report),
expected.json (file -> the kind and title the oracle must give: harness.fleet.lkdtm's table, not the oracle's own answer) and
recorded.json (release, command line, accelerator, timings, what each writer did).  The whole console and
QEMU's stderr stay in results/lkdtm/<name>/.  Prints the oracle's verdict per type; exit 1 if any differs.

Usage: scripts/record-lkdtm-consoles.py [NAME ...] [--build] [--types T1,T2] [--out DIR] [--no-boot]
  NAME: debian-6.12-debug debian-7.2-debug debian-7.2-kasan (the default: all).  Boots QEMU (one L1 per kernel):
  on a machine shared with other QEMU runs, serialise it with them.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.fleet import lkdtm  # noqa: E402
from harness.oracles.console import classify  # noqa: E402
from harness.paths import REPO, results_root  # noqa: E402

FIXTURES = REPO / "tests/fixtures/consoles-lkdtm"


def judge_recorded(out: Path, kernels: list[str]) -> int:
    bad = 0
    for name in kernels:
        d = out / name
        expected = {f"{c.name}.log": {"kind": c.kind, "title": c.title} for c in lkdtm.KERNELS[name]}
        (d / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
        for c in lkdtm.KERNELS[name]:
            rep = classify((d / f"{c.name}.log").read_text())
            ok = rep.crash and (rep.kind, rep.title) == (c.kind, c.title)
            bad += not ok
            print(f"{name} {c.name:21} {'ok ' if ok else 'BAD'} {rep.kind:8} {rep.title}")
    return 1 if bad else 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kernels", nargs="*", default=list(lkdtm.KERNELS))
    ap.add_argument("--build", action="store_true", help="build a kernel that is not in the cache")
    ap.add_argument("--types", default="", help="comma-separated subset of the crash types (default: all)")
    ap.add_argument("--out", type=Path, default=FIXTURES)
    ap.add_argument("--no-boot", action="store_true",
                    help="boot nothing: rewrite expected.json from the table and judge the recorded fixtures")
    a = ap.parse_args(argv)
    if a.no_boot:
        return judge_recorded(a.out, a.kernels)
    want = a.types.split(",") if a.types else []
    unknown = [t for t in want if t not in lkdtm.BY_NAME] + [k for k in a.kernels if k not in lkdtm.KERNELS]
    if unknown:
        ap.error(f"unknown {unknown}; kernels: {', '.join(lkdtm.KERNELS)}; types: {', '.join(lkdtm.BY_NAME)}")
    bad = missing = 0
    for name in a.kernels:
        types = tuple(c for c in lkdtm.KERNELS[name] if not want or c.name in want)   # always in the safe order
        kdir = lkdtm.cached_kernel(name)
        if kdir is None and a.build:
            from harness.kernel.build import build_kernel
            kdir = build_kernel(REPO / "kernels" / f"{name}.yaml")
        if kdir is None:
            print(f"{name}: not built (harness build kernels/{name}.yaml, or --build)", file=sys.stderr)
            missing += 1
            continue
        work = results_root() / "lkdtm" / name
        shutil.rmtree(work, ignore_errors=True)
        t0 = time.monotonic()
        rec = lkdtm.record_kernel(name, kdir, work, types, log=lambda s, n=name: print(f"{n}: {s}", file=sys.stderr))
        (work / "console.log").write_text(rec.console)
        out = a.out / name
        out.mkdir(parents=True, exist_ok=True)
        expected = {}
        for ct in types:
            seg = rec.segments.get(ct.name, "")
            (out / f"{ct.name}.log").write_text(seg)
            expected[f"{ct.name}.log"] = {"kind": ct.kind, "title": ct.title}
            rep = classify(seg)
            ok = rep.crash and (rep.kind, rep.title) == (ct.kind, ct.title)
            bad += not ok
            print(f"{name} {ct.name:21} {'ok ' if ok else 'BAD'} {rep.kind:8} {rep.title}"
                  + ("" if ok else f"   (want {ct.kind}: {ct.title})"))
        boot = classify(lkdtm.boot_part(rec.console))
        (out / "boot.log").write_text(lkdtm.boot_part(rec.console))
        bad += boot.crash
        print(f"{name} {'(boot)':21} {'BAD' if boot.crash else 'ok '} {boot.kind:8} {boot.title}")
        (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
        qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout
        meta = {"kernel": f"kernels/{name}.yaml", "release": rec.release, "cmdline": rec.cmdline,
                "accel": rec.accel, "cpus": 2, "qemu": qemu.splitlines()[0] if qemu else "",
                "date": datetime.date.today().isoformat(), "timings_s": rec.timings,
                "wall_s": round(time.monotonic() - t0, 1), "writer": rec.writer,
                "lkdtm_types_offered": rec.offered}
        (out / "recorded.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"{name}: {len(types)} types, boot {rec.timings['boot_s']} s, boot+record {rec.timings['record_s']} s"
              f" -> {out.relative_to(REPO) if out.is_relative_to(REPO) else out}", file=sys.stderr)
    return 1 if bad else 2 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
