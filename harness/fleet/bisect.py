"""`harness bisect KERNEL.yaml [SCENARIO]`: which patch of a series first loses writes.

The base alone (upto=0) first, then the whole series (upto=N), then a binary search between the last good and
the first bad stack. Every step is a kernel build (build_kernel(upto=k): incremental on one object tree,
cached by key) judged by up to R runs stopped at their first finding: one finding makes the step bad (no false
positives are assumed: the harness's oracles do not convict a correct kernel); good needs R clean runs. A race
that is caught in only some runs can make a bad step look good, so from the measured reproduction rate p each
good step may be a miss with chance (1-p)^R, and the result's confidence is the product of 1-(1-p)^R over the
good steps (and 1 - their sum, a lower bound). An infrastructure failure is retried once; twice in a row makes
the step 'infra', and the search goes around it.

The rate is not catching runs / runs at bad steps: a bad step stops at its first finding, so every bad step
contributes exactly one finding however rare the bug, and that ratio is biased upward (one step caught at its
first run says p = 1).  Once the first bad step is named it runs R more times whatever they find ("confirmation
runs"); their number is fixed before they run, so findings / runs over them is an unbiased rate (rate_runs()).
Modelled on syzkaller's pkg/bisect (each commit tested several times, bad if any run crashes, skipped when
the infrastructure failed).

Output: results/bisect-<id>/ (bisect.json, summary.txt, results.ktap: one KTAP subtest per step, the first bad
patch as the parent's diagnostic; runs/upto-<k>/<run folders>). Exit 1 when a first bad
patch is named, 0 when the whole series is good, 3 when the base is already bad or infrastructure failures
leave the answer open, 2 on bad input (e.g. a patch that does not apply).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.errors import (
    EXIT_FINDING,
    EXIT_INFRA,
    EXIT_INPUT,
    EXIT_PASS,
    HarnessError,
    InputError,
)
from harness.report.models import BisectRecord
from harness.report.results import RunDir
from harness.util import atomic_write

FINDING, PASS = "finding", "pass"
SKIP = "skip"           # the step cannot be built (a commit of a git range): not retried, gone around as infra
BAD, GOOD, INFRA, MORE = "bad", "good", "infra", "more"
STATUS_EXIT = {"first-bad": EXIT_FINDING, "clean": EXIT_PASS, "base-bad": EXIT_INFRA, "infra": EXIT_INFRA}


# ----------------------------------------------------------------------------------------------------------
# the policy (pure): recorded (upto, verdict) runs in, the next step or the outcome out
# ----------------------------------------------------------------------------------------------------------
def step_state(verdicts: list[str], repeats: int) -> str:
    """bad at the first finding; good after `repeats` clean runs; an infrastructure failure (any other
    verdict) is retried once, and two in a row make the step infra; otherwise more runs are needed."""
    clean, last_infra = 0, False
    for v in verdicts:
        if v == FINDING:
            return BAD
        if v == SKIP:
            return INFRA
        if v == PASS:
            clean, last_infra = clean + 1, False
            continue
        if last_infra:
            return INFRA
        last_infra = True
    return GOOD if clean >= repeats else MORE


def rate_runs(verdicts: list[str]) -> list[str]:
    """A bad step's runs after its first finding that judged the kernel (pass or finding): their number did not
    depend on their outcome, so they measure the reproduction rate without the stopping bias."""
    if FINDING not in verdicts:
        return []
    return [v for v in verdicts[verdicts.index(FINDING) + 1:] if v in (PASS, FINDING)]


def confirming(verdicts: list[str], repeats: int) -> bool:
    """The first bad step still owes confirmation runs: fewer than `repeats` rate runs, and the last two runs
    were not both infrastructure failures (then the rate stays with what it has)."""
    after = verdicts[verdicts.index(FINDING) + 1:] if FINDING in verdicts else []
    if len(after) >= 2 and all(v not in (PASS, FINDING) for v in after[-2:]):
        return False
    return len(rate_runs(verdicts)) < repeats


def _grouped(history: list[tuple[int, str]]) -> dict[int, list[str]]:
    steps: dict[int, list[str]] = {}
    for upto, verdict in history:
        steps.setdefault(upto, []).append(verdict)
    return steps


def next_action(n: int, history: list[tuple[int, str]], repeats: int) -> tuple[str, Any]:
    """("run", upto) for the next run, or ("done", outcome) with outcome {status, first_bad, candidates,
    last_good}. status: first-bad | clean | base-bad | infra."""
    steps = _grouped(history)
    states = {u: step_state(v, repeats) for u, v in steps.items()}
    for u, st in states.items():
        if st == MORE:                     # a step in progress is finished first
            return "run", u
    done = lambda status, **kw: ("done", {"status": status, "first_bad": None, "candidates": [],  # noqa: E731
                                          "last_good": None} | kw)
    if 0 not in states:
        return "run", 0
    if states[0] == BAD:
        return done("base-bad")
    if states[0] == INFRA:
        return done("infra", candidates=list(range(1, n + 1)))
    if n == 0:
        return done("clean", last_good=0)
    if n not in states:
        return "run", n
    if states[n] == GOOD:
        return done("clean", last_good=n)
    if states[n] == INFRA:
        return done("infra", candidates=list(range(1, n + 1)), last_good=0)
    hi = min(u for u, s in states.items() if s == BAD)
    lo = max(u for u, s in states.items() if s == GOOD and u < hi)
    if hi == lo + 1:
        if confirming(steps[hi], repeats):  # the answer's confirmation runs: the unbiased reproduction rate
            return "run", hi
        return done("first-bad", first_bad=hi, candidates=[hi], last_good=lo)
    untested = [u for u in range(lo + 1, hi) if u not in states]
    if not untested:                        # only infra steps left between them: the answer stays a range
        return done("infra", candidates=list(range(lo + 1, hi + 1)), last_good=lo)
    mid = (lo + hi) / 2
    return "run", min(untested, key=lambda u: (abs(u - mid), u))


def confidence(history: list[tuple[int, str]], repeats: int) -> dict[str, Any]:
    """p = catching / judged runs among the bad steps' rate runs (rate_runs: after the first finding);
    per good step the chance it was a miss, (1-p)^clean_runs; confidence = product of (1 - miss), lower bound =
    1 - sum(miss).  None without rate runs (p unknown).  `stopping_rate` is the biased ratio the search's own runs
    would give (catching runs / runs at bad steps), recorded for comparison only."""
    steps = _grouped(history)
    states = {u: step_state(v, repeats) for u, v in steps.items()}
    bad = [u for u, s in states.items() if s == BAD]
    sample = [v for u in bad for v in rate_runs(steps[u])]
    # the search's own runs at each bad step: up to and including the finding that stopped it
    stopping = [v for u in bad for v in steps[u][:steps[u].index(FINDING) + 1] if v in (PASS, FINDING)]
    p = (sample.count(FINDING) / len(sample)) if sample else None
    misses = {u: (1 - p) ** steps[u].count(PASS) for u, s in states.items() if s == GOOD} if p is not None else {}
    out: dict[str, Any] = {
        "reproduction_rate": p, "catching_runs": sample.count(FINDING), "runs_at_bad_steps": len(sample),
        "stopping_rate": (stopping.count(FINDING) / len(stopping)) if stopping else None,
        "miss_chance": {str(u): m for u, m in sorted(misses.items())}}
    if p is None:
        why = ("no bad step: the reproduction rate cannot be measured" if not bad else
               "no confirmation run after a first finding: the rate cannot be measured without the stopping bias")
        return out | {"confidence": None, "confidence_lower_bound": None, "why": why}
    prod = 1.0
    for m in misses.values():
        prod *= 1 - m
    return out | {"confidence": prod, "confidence_lower_bound": max(0.0, 1 - sum(misses.values()))}


def drive(n: int, repeats: int, run_one: Callable[[int], dict],
          on_step: Callable[[list[dict], dict | None], None] = lambda runs, out: None) -> tuple[list[dict], dict]:
    """Run the policy with `run_one(upto) -> {"verdict": ..., ...}` until it is done; returns (runs, outcome).
    Each record gets its "upto". on_step(runs, outcome) is called after every run (and at the end)."""
    runs: list[dict] = []
    while True:
        kind, what = next_action(n, [(r["upto"], r["verdict"]) for r in runs], repeats)
        if kind == "done":
            outcome = dict(what, **confidence([(r["upto"], r["verdict"]) for r in runs], repeats))
            on_step(runs, outcome)
            return runs, outcome
        rec = dict(run_one(what), upto=what)
        runs.append(rec)
        on_step(runs, None)


# ----------------------------------------------------------------------------------------------------------
# the real steps: build the stack, run the case
# ----------------------------------------------------------------------------------------------------------
def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} harness bisect: {msg}", file=sys.stderr, flush=True)


@dataclass
class Bisect:
    kernel_yaml: Path
    scenario_path: Path
    overrides: list[str]
    repeats: int
    root: Path
    patches: list = field(default_factory=list)      # harness.kernel.series.Patch, in order
    kernels: dict = field(default_factory=dict)      # upto -> meta (or an error string)
    build_s: dict = field(default_factory=dict)

    def kernel(self, upto: int) -> dict:
        if upto not in self.kernels:
            from harness.kernel.build import build_kernel
            from harness.kernel.prebuilt import load_kernel_dir
            t = time.monotonic()
            _log(f"step upto={upto}: building (or taking from the cache) {self.kernel_yaml} --upto {upto}")
            self.kernels[upto] = load_kernel_dir(build_kernel(self.kernel_yaml, upto=upto))
            self.build_s[upto] = round(time.monotonic() - t, 1)
        return self.kernels[upto]

    def run_one(self, upto: int, rd: RunDir) -> dict:
        """One run of the case on the stack of the first `upto` patches; any infrastructure failure (the
        build's included) is an 'infra-error' run."""
        from harness.config import load_scenario
        from harness.report.results import now_id
        from harness.scenario.run import execute
        t0 = time.monotonic()
        root = rd.path / "runs" / f"upto-{upto}"
        try:
            meta = self.kernel(upto)
            s = load_scenario(self.scenario_path, self.overrides)
            while any((root / f"{now_id(s.name, s.seed)}{x}").exists() for x in ("", ".incomplete")):
                time.sleep(0.5)             # run folders are named by the second
            argv = ["--build", str(self.kernel_yaml), "--upto", str(upto)]
            run = execute(s, meta, root, self.scenario_path.read_text(), argv, self.overrides)
            if run.get("interrupted"):
                raise KeyboardInterrupt("run interrupted")      # Ctrl-C stops the bisection, not one run
        except InputError:
            raise
        except HarnessError as e:
            self.kernels.pop(upto, None)        # a failed build is tried again with the retry
            _log(f"step upto={upto}: infrastructure failure: {e}")
            return {"run_dir": None, "verdict": "infra-error", "error": str(e),
                    "total_s": round(time.monotonic() - t0, 1), "first_finding_s": None}
        path = Path(run["path"])
        return {"run_dir": str(path.relative_to(rd.path)) if path.is_relative_to(rd.path) else str(path),
                "verdict": run["verdict"], "first_finding_s": run.get("timings", {}).get("first_finding_s"),
                "total_s": run.get("timings", {}).get("total_s"),
                "titles": [f.get("title") for f in run.get("findings") or []][:3]}

    def patch_info(self, upto: int) -> dict | None:
        if upto == 0:
            return None
        p = self.patches[upto - 1]
        return {"index": upto, "file": p.name, "subject": p.subject, "sha256": p.sha256}


def steps_json(b: Bisect, runs: list[dict], repeats: int) -> list[dict]:
    out, order = [], []
    for r in runs:
        if r["upto"] not in order:
            order.append(r["upto"])
    for u in order:
        rs = [{k: v for k, v in r.items() if k != "upto"} for r in runs if r["upto"] == u]
        meta = b.kernels.get(u) or {}
        out.append({"upto": u, "patch": b.patch_info(u), "kernel_key": meta.get("key"),
                    "build_s": b.build_s.get(u), "runs": rs, "verdict": step_state([r["verdict"] for r in rs],
                                                                                   repeats)})
    return out


def bisect_json(b: Bisect, runs: list[dict], outcome: dict | None, t0: float) -> dict:
    first = outcome.get("first_bad") if outcome else None
    return {"schema": 1, "kind": "bisect", "kernel_yaml": str(b.kernel_yaml), "scenario": str(b.scenario_path),
            "overrides": b.overrides, "repeats": b.repeats,
            "series": [b.patch_info(i) for i in range(1, len(b.patches) + 1)],
            "steps": steps_json(b, runs, b.repeats), "status": outcome["status"] if outcome else "running",
            "first_bad": b.patch_info(first) if first else None,
            "candidates": [b.patch_info(c) for c in (outcome or {}).get("candidates", [])],
            "last_good_upto": (outcome or {}).get("last_good"),
            "reproduction_rate": (outcome or {}).get("reproduction_rate"),
            "confidence": {k: (outcome or {}).get(k) for k in ("confidence", "confidence_lower_bound",
                                                               "miss_chance", "catching_runs",
                                                               "runs_at_bad_steps", "stopping_rate", "why")
                           if k in (outcome or {})},
            "runs_total": len(runs), "elapsed_s": round(time.monotonic() - t0, 1)}


def summary(doc: dict) -> str:
    st, fb = doc["status"], doc.get("first_bad")
    head = {"first-bad": f"FIRST BAD PATCH {fb['index'] if fb else '?'}/{len(doc['series'])}: "
                         f"{fb['subject'] if fb else ''} (sha256 {fb['sha256'] if fb else ''})",
            "clean": f"the whole series ({len(doc['series'])} patches) is good",
            "base-bad": "the base kernel (no patch) already has the finding: nothing to bisect",
            "infra": "inconclusive: infrastructure failures; the first bad patch is one of "
                     + ", ".join(str(c["index"]) for c in doc.get("candidates", []) if c),
            }.get(st, st)
    L = [f"bisect: {head}",
         f"kernel   {doc['kernel_yaml']}  scenario {doc['scenario']}  repeats {doc['repeats']}",
         f"overrides {' '.join(doc['overrides']) or '-'}"]
    for s in doc["steps"]:
        p = s["patch"]
        what = f"patch {p['index']} {p['sha256'][:12]} {p['subject']}" if p else "base (no patch)"
        rs = " ".join(r["verdict"] + (f"@{r['first_finding_s']:.1f}s" if r.get("first_finding_s") else "")
                      for r in s["runs"])
        L.append(f"  upto={s['upto']:<3} {s['verdict']:<5} {what}   runs: {rs}")
    return "\n".join(L + confidence_lines(doc)) + "\n"


def confidence_lines(doc: dict) -> list[str]:
    """The reproduction rate, the confidence and the cost of a bisection (a series' or a commit range's)."""
    L, c = [], doc.get("confidence") or {}
    if doc.get("reproduction_rate") is not None:
        biased = c.get("stopping_rate")
        L.append(f"reproduction rate p = {doc['reproduction_rate']:.3f} ({c.get('catching_runs')} catching of "
                 f"{c.get('runs_at_bad_steps')} confirmation runs after the first finding"
                 + (f"; the search's own runs, which stop at a finding, would say {biased:.3f}" if biased is not None
                    else "") + ")")
        L.append(f"confidence {c.get('confidence'):.4f} (product of 1-(1-p)^R over the good steps; "
                 f"lower bound {c.get('confidence_lower_bound'):.4f})")
    elif c.get("why"):
        L.append(f"confidence: n/a ({c['why']})")
    L.append(f"runs {doc['runs_total']}, elapsed {doc['elapsed_s']:.0f} s")
    return L


def write_outputs(bdir: Path, doc: dict) -> None:
    """bisect.json, summary.txt and results.ktap of a bisection folder (after every run, and at the end)."""
    from harness.report.ktap import write_bisect_ktap
    BisectRecord.parse(doc, str(bdir / "bisect.json")).write(bdir / "bisect.json")
    atomic_write(bdir / "summary.txt", summary(doc))
    write_bisect_ktap(doc, bdir / "results.ktap")


def bisect(kernel_yaml: Path, scenario_path: Path, overrides: list[str], repeats: int, root: Path) -> dict:
    """The whole bisection; returns bisect.json's content (with "path")."""
    from harness.config import load_scenario
    from harness.kernel.build import plan
    if repeats < 1:
        raise InputError(f"--repeats {repeats}: must be at least 1")
    if not any(o.split("=", 1)[0] == "stop_on_first_finding" for o in overrides):
        overrides = overrides + ["stop_on_first_finding=true"]
    load_scenario(scenario_path, overrides)          # bad input fails here, before anything is built
    b = Bisect(Path(kernel_yaml).resolve(), Path(scenario_path).resolve(), overrides, repeats, Path(root))
    b.patches = plan(b.kernel_yaml, None).patches
    rd = RunDir(Path(root), f"bisect-{time.strftime('%Y%m%d-%H%M%S')}-{b.kernel_yaml.stem}")
    t0 = time.monotonic()
    _log(f"{len(b.patches)} patch(es), repeats {repeats}; results in {rd.path}")

    def save(runs, outcome):
        doc = bisect_json(b, runs, outcome, t0)
        write_outputs(rd.path, doc)
        if runs and outcome is None:
            r = runs[-1]
            _log(f"step upto={r['upto']}: run {r['verdict']}")

    runs: list[dict] = []

    def run_one(upto):
        rec = b.run_one(upto, rd)
        runs.append(dict(rec, upto=upto))   # kept for a partial bisect.json if interrupted
        return rec

    try:
        _, outcome = drive(len(b.patches), repeats, run_one, save)
    except BaseException as e:
        doc = bisect_json(b, runs, None, t0)
        doc["status"] = "interrupted" if isinstance(e, KeyboardInterrupt) else "error"
        doc["error"] = str(e)
        write_outputs(rd.path, doc)
        if isinstance(e, InputError):          # a patch that does not apply: a complete (failed) bisect
            rd.finish()
        raise
    doc = bisect_json(b, runs, outcome, t0)
    path = rd.finish()
    doc["path"] = str(path)
    return doc


def cli_bisect(args) -> int:
    from harness.paths import REPO, results_root
    scen = Path(args.scenario) if args.scenario else REPO / "scenarios/micro.yaml"  # cli resolves it first
    overrides = list(args.set) + ([f"seed={args.seed}"] if args.seed is not None else [])
    doc = bisect(Path(args.kernel_yaml), scen, overrides, args.repeats,
                 Path(args.results) if args.results else results_root())
    sys.stdout.write((Path(doc["path"]) / "summary.txt").read_text())
    print(f"bisect: {doc['status']}  results: {doc['path']}")
    return STATUS_EXIT.get(doc["status"], EXIT_INPUT)

