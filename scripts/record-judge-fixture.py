#!/usr/bin/env python3
"""Copy a real results folder into tests/fixtures/runs/NAME as a judge fixture: run.json, the case's evidence
and logs (not the trace stream: the judge reads the trace oracle's findings from evidence.json), and
expect.json (the verdict and finding kinds recorded by the run, which the judge must reproduce).
Usage: scripts/record-judge-fixture.py RUN_DIR NAME [--note TEXT]"""
import json
import shutil
import sys
from pathlib import Path

KEEP = ("evidence.json", "l1-console.log", "l1-dmesg.log", "l2-console.log", "l2-result.log", "l2-qemu.log",
        "vmstat.csv", "ledger.jsonl", "findings.json")


def main(argv: list[str]) -> int:
    src, name = Path(argv[0]), argv[1]
    note = argv[argv.index("--note") + 1] if "--note" in argv else ""
    dst = Path(__file__).resolve().parent.parent / "tests/fixtures/runs" / name
    if dst.exists():
        shutil.rmtree(dst)
    (dst / "cases/default").mkdir(parents=True)
    run = json.loads((src / "run.json").read_text())
    run.pop("path", None)
    (dst / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    for f in KEEP:
        if (src / "cases/default" / f).exists():
            shutil.copy(src / "cases/default" / f, dst / "cases/default" / f)
    expect = {"verdict": run["verdict"], "kinds": sorted({f["kind"] for f in run["findings"]}),
              "source": src.name, "note": note}
    (dst / "expect.json").write_text(json.dumps(expect, indent=1) + "\n")
    print(f"{dst}: {expect['verdict']} {expect['kinds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
