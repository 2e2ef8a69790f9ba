"""`harness report RUN_DIR --rejudge [--json]`: judge a stored run again from its files alone and show where
the stored verdict and the current rules differ (a change of rules shows as a diff)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from harness.errors import EXIT_FINDING, EXIT_PASS, InputError
from harness.evidence import CaseEvidence
from harness.oracles import judge as judge_mod


def rejudge(run_dir: Path) -> dict[str, Any]:
    """Judge a stored run again from its files alone; compare with what was recorded."""
    from harness.report.results import load_run_record
    run = load_run_record(run_dir)
    cases = sorted(p for p in (Path(run_dir) / "cases").iterdir() if (p / "evidence.json").exists()) \
        if (Path(run_dir) / "cases").is_dir() else []
    if not cases:
        raise InputError(f"{run_dir}: no cases/*/evidence.json: the run is older than the judge stage")
    ev = CaseEvidence.load(cases[0])
    j = judge_mod.judge(ev, judge_mod.load_logs(cases[0]))
    old = [(f.oracle, f.layer, f.kind, f.title) for f in run.findings]
    new = [(f.oracle, f.layer, f.kind, f.title) for f in j.findings]
    return {"run_dir": str(run_dir), "recorded": {"verdict": run.verdict, "findings": len(old),
                                                  "judge_version": getattr(run, "judge_version", None)},
            "rejudged": {"verdict": j.verdict, "findings": len(new), "judge_version": j.judge_version,
                         "retry": j.retry},
            "agree": run.verdict == j.verdict and sorted(map(str, old)) == sorted(map(str, new)),
            "only_recorded": [" / ".join(map(str, f)) for f in old if f not in new],
            "only_rejudged": [" / ".join(map(str, f)) for f in new if f not in old],
            "findings": [f.to_json() for f in j.findings]}


def cli_rejudge(run_dir: str, as_json: bool = False) -> int:
    out = rejudge(Path(run_dir))
    if as_json:
        json.dump(out, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        rec, new = out["recorded"], out["rejudged"]
        print(f"recorded: {rec['verdict']}, {rec['findings']} findings (judge {rec['judge_version']})")
        print(f"rejudged: {new['verdict']}, {new['findings']} findings (judge {new['judge_version']})")
        for f in out["only_recorded"]:
            print(f"  - {f}")
        for f in out["only_rejudged"]:
            print(f"  + {f}")
        print("agree" if out["agree"] else "DIFFER")
    return EXIT_PASS if out["agree"] else EXIT_FINDING
