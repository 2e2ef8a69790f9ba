"""KTAP v1 results (the kernel's Documentation/dev-tools/ktap.rst, as of 6.12) for a run, a matrix and a bisection.

`results.ktap` is what kernel CI (kunit.py parse, LAVA, KernelCI) reads: a run is one test per case, a matrix is
one parent test whose subtests are its cells (nested: indented two spaces, with KUnit's "# Subtest:" header), a
bisection one parent test whose subtests are its steps ("upto k: <top patch subject>", ok when good, not ok when
bad) and whose diagnostics name the first bad patch and the confidence.
A test passes ("ok") when its verdict is the expected one (a pass unless the case says otherwise), exactly as in
junit.xml; every finding is a "# " diagnostic line right before the test's result line, where parsers attach it.

Infrastructure verdicts (infra-error, input-error) are `not ok ... # ERROR <why>`, never `# SKIP`: SKIP says "not
run on purpose" and parsers count it as a success (kunit.py exits 0), which would hide that the harness could not
tell whether the kernel is correct.  ERROR is the ktap.rst directive for "the execution of the test failed due to
an error"; a parser that does not know it falls back to the `not ok` (ktap.rst), so it is still a failure.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.evidence import Finding
from harness.report.models import RunRecord
from harness.util import atomic_write

INFRA_VERDICTS = ("infra-error", "input-error")  # a run's verdicts that say nothing about the kernel
INFRA_OUTCOMES = ("infra", "not-run", "flaky")  # a matrix cell's (as in junit.py)
MAX_DIAG_FINDINGS = 20  # diagnostic lines per test: a finding with 100k violations is one line, not 100k
MAX_PAGES = 3

# Phrases that make kunit_parser stop reading KTAP wherever they appear in a line (its KTAP_END regex): a console
# excerpt or title quoting them would cut the results short.  Their colons become " -".
_KTAP_END = ((re.compile(r"List of all partitions:"), "List of all partitions -"),
             (re.compile(r"Kernel panic - not syncing: VFS:"), "Kernel panic - not syncing: VFS -"),
             (re.compile(r"reboot: System halted"), "reboot - System halted"))


def clean(text: object, limit: int = 300) -> str:
    """One line of text safe anywhere in KTAP: no newline, no "#" (a test description "can be any string of
    characters other than # or a newline", ktap.rst; escaped as %23, so nothing is lost), no parser stop phrase."""
    raw = str(text if text is not None else "")
    lead = min(len(raw) - len(raw.lstrip(" ")), 8)  # keep a sub-line's indent
    s = " " * lead + " ".join(raw.split()).replace("#", "%23")
    for rx, repl in _KTAP_END:
        s = rx.sub(repl, s)
    return s if len(s) <= limit else s[:limit - 1] + "…"


def name_of(text: object) -> str:
    """A test name: cleaned and never empty (kunit matches a parent's "# Subtest:" name to its result line)."""
    return clean(text, 200) or "unnamed"


def _pages_lines(f: Finding) -> list[str]:
    pages = getattr(f, "pages", None) or []
    return [f"  page gfn {p['gfn']:#x} index {p.get('index')}: gen {p.get('found')} instead of {p.get('expected')}"
            for p in pages[:MAX_PAGES] if isinstance(p.get("gfn"), int)]


def _finding_lines(findings: list[Finding]) -> list[str]:
    out = []
    for f in findings[:MAX_DIAG_FINDINGS]:
        out.append(f"{'finding' if f.real else 'infra-error'}: [{f.oracle}/{f.layer}/{f.kind}] {f.title}")
        out += _pages_lines(f)
        gfn, pfn = getattr(f, "gfn", None), getattr(f, "pfn", None)
        if f.oracle == "trace" and isinstance(gfn, int) and isinstance(pfn, int):
            out.append(f"  gfn {gfn:#x} at L1 pfn {pfn:#x}, rules {', '.join(getattr(f, 'rules', None) or [])}")
        if f.patch:
            out.append(f"  patch under test: {f.patch}")
    if len(findings) > MAX_DIAG_FINDINGS:
        out.append(f"... and {len(findings) - MAX_DIAG_FINDINGS} more findings (findings.json)")
    return out


def _pass_line(run: RunRecord) -> str:
    lg, rules = run.ledger, run.trace.get("rules") or {}
    s = f"pass: ledger verified {lg.pages_verified} page reads over {lg.rounds_done} rounds, {lg.bad} bad"
    if rules:
        ran = [r for r, v in rules.items() if v.get("ran")]
        s += (f"; trace rules {'/'.join(ran) or 'none'} ran, "
              f"{sum(v.get('violations') or 0 for v in rules.values())} violations")
    return s


@dataclass
class Case:
    """One case of a run as its KTAP test: the run itself, or one of run.json's "cases" (several)."""
    name: str
    verdict: str
    findings: list[Finding] = field(default_factory=list)
    time: float | None = None
    expect: str = "pass"


def _cases(run: RunRecord) -> list[Case]:
    listed = getattr(run, "cases", None)
    if not listed:
        return [Case("default", run.verdict, list(run.findings), run.timings.total_s)]
    return [Case(str(c.get("name")), str(c.get("verdict")), [Finding.model_validate(f) for f in c.get("findings") or []],
                 c.get("time") if isinstance(c.get("time"), (int, float)) else None, c.get("expect", "pass"))
            for c in listed]


def case_lines(run: RunRecord, case: Case, num: int) -> list[str]:
    diags = [f"case {case.name}: verdict {case.verdict} (expected {case.expect})"
             + (f", {float(case.time):.1f} s" if case.time is not None else "")]
    diags += _finding_lines(case.findings) if case.findings else [_pass_line(run)] if case.verdict == "pass" else []
    ok = case.verdict == case.expect
    directive = ""
    if case.verdict in INFRA_VERDICTS and not ok:
        why = next((f.title for f in case.findings), None) or "the harness could not judge this case"
        directive = f" # ERROR {case.verdict}: {clean(why, 200)}"
    return [f"# {clean(d)}" for d in diags] + [f"{'ok' if ok else 'not ok'} {num} {name_of(case.name)}" + directive]


def run_ktap(run: RunRecord) -> str:
    """KTAP for one run: one test per case, its findings as diagnostics right before its result line."""
    cases = _cases(run)
    sc, k = run.scenario, run.kernel
    head = (f"kvm-dirty-harness run {run.run_id}: scenario {sc.get('name')}, seed {sc.get('seed')}, "
            f"kernel {k.get('release')} ({k.get('source')})")
    lines = ["KTAP version 1", f"1..{len(cases)}", f"# {clean(head)}"]
    for i, c in enumerate(cases, 1):
        lines += case_lines(run, c, i)
    return "\n".join(lines) + "\n"


def _run_line(r: dict[str, Any]) -> str:
    ff = r.get("first_finding_s")
    titles = "; ".join((r.get("titles") or [])[:2])
    return (f"  run {Path(str(r.get('run_dir', '?'))).name}: seed {r.get('seed')}, {r.get('verdict')}"
            + (f" after {ff} s" if ff is not None else "") + (f": {titles}" if titles else ""))


def cell_lines(cell: dict[str, Any], num: int) -> list[str]:
    """One matrix cell as a subtest: ok when its outcome is the one it declares (as in junit.xml)."""
    name, outcome, expect = name_of(cell.get("name") or _cell_name(cell)), cell.get("outcome"), cell.get("expect")
    runs = cell.get("runs") or []
    diags = [f"cell {name}: expect {expect}, outcome {outcome}, {len(runs)} run(s), "
             f"{cell.get('retries', 0)} TCG retries"]
    if cell.get("why"):
        diags.append(f"  why: {cell['why']}")
    diags += [_run_line(r) for r in runs[:MAX_DIAG_FINDINGS]]
    for r in runs:
        diags += [f"  evidence: {e}" for e in (r.get("evidence") or [])[:6]]
        if r.get("evidence"):
            break  # the first catching run's evidence is enough here (summary.txt has it all)
    ok = bool(cell.get("ok"))
    if outcome == "skipped":  # KTAP's skip is an "ok" line with a reason; never counted as passed
        ok, tail = True, f" # SKIP {clean(cell.get('skip') or 'skipped on this host')}"
    elif not ok and outcome in INFRA_OUTCOMES:
        tail = f" # ERROR {outcome}: expected {expect}, got {outcome}"
    else:
        tail = ""
    return [f"# {clean(d)}" for d in diags] + [f"{'ok' if ok else 'not ok'} {num} {name}{tail}"]


def _cell_name(cell: dict[str, Any]) -> str:
    """matrix.Cell.name, for a matrix.json that does not store it."""
    knobs = ",".join(f"{k}={v}" for k, v in (cell.get("variant") or {}).items()) or "default"
    return f"{cell.get('kernel')}[{knobs}]" + (f"@seed{cell['seed']}" if cell.get("seed") is not None else "")


def matrix_ktap(matrix_json: dict[str, Any]) -> str:
    """KTAP for a matrix: one parent test (the matrix) with one subtest per cell, nested two spaces deep."""
    cells = matrix_json.get("cells") or []
    mname = name_of("matrix-" + str(matrix_json.get("name")))
    sub = ["KTAP version 1", f"# Subtest: {mname}", f"1..{len(cells)}"]
    for i, c in enumerate(cells, 1):
        sub += cell_lines(c, i)
    sc = matrix_json.get("score") or {}
    ms = sc.get("mutation_score")
    ms_text = "n/a" if ms is None else f"{100 * ms:.0f} %"
    skipped = sc.get("cells_skipped") or 0
    head = (f"matrix {matrix_json.get('name')}: {sc.get('cells_ok')}/{(sc.get('cells') or 0) - skipped} cells as "
            f"expected" + (f", {skipped} skipped on this host" if skipped else "") + f"; mutation "
            f"score {ms_text} ({len(sc.get('caught') or [])}/{len(sc.get('runnable_mutants') or [])}); "
            f"false positives {sc.get('false_positives')}")
    ok = all(c.get("ok") or c.get("outcome") == "skipped" for c in cells)
    return "\n".join(["KTAP version 1", "1..1"] + ["  " + s for s in sub]
                     + [f"# {clean(head)}", f"{'ok' if ok else 'not ok'} 1 {mname}"]) + "\n"


def _step_name(step: dict[str, Any]) -> str:
    p = step.get("patch")
    what = (p.get("subject") or p.get("file") or "?") if p else "base (no patch)"
    return name_of(f"upto {step.get('upto')}: {what}")


def step_lines(step: dict[str, Any], num: int, repeats: object) -> list[str]:
    """One bisection step (the stack of the first `upto` patches) as a subtest: ok when good, not ok when bad,
    `not ok ... # ERROR` when the infrastructure failed twice (or the step never finished); never SKIP."""
    p, runs, verdict = step.get("patch"), step.get("runs") or [], step.get("verdict")
    diags = [f"step upto {step.get('upto')}: {verdict}, {len(runs)} run(s)"
             + (f" (good needs {repeats} clean)" if repeats else "")
             + (f", build {step['build_s']} s" if step.get("build_s") is not None else "")]
    if p:
        diags.append(f"  top patch {p.get('index')} {Path(str(p.get('file'))).name} sha256 {p.get('sha256')}")
    for r in runs[:MAX_DIAG_FINDINGS]:
        ff = r.get("first_finding_s")
        diags.append(f"  run {r.get('run_dir') or '-'}: {r.get('verdict')}"
                     + (f" after {ff} s" if ff is not None else "")
                     + "".join(f"; {t}" for t in (r.get("titles") or [])[:2])
                     + (f": {r['error']}" if r.get("error") else ""))
    name = _step_name(step)
    if verdict == "good":
        return [f"# {clean(d)}" for d in diags] + [f"ok {num} {name}"]
    tail = "" if verdict == "bad" else (
        " # ERROR infra: the infrastructure failed twice in a row, the step says nothing about the kernel"
        if verdict == "infra" else f" # ERROR {clean(verdict, 40)}: the step did not finish")
    return [f"# {clean(d)}" for d in diags] + [f"not ok {num} {name}{tail}"]


def _bisect_head(doc: dict[str, Any]) -> tuple[list[str], str]:
    """The parent test's diagnostics (the first bad patch, the confidence) and its result's directive."""
    st, fb, n = doc.get("status"), doc.get("first_bad"), len(doc.get("series") or [])
    conf = doc.get("confidence") or {}
    if st == "first-bad" and fb:
        lines = [f"first bad patch {fb.get('index')}/{n}: {fb.get('subject')} "
                 f"({Path(str(fb.get('file'))).name}, sha256 {fb.get('sha256')})"]
    elif st == "clean":
        lines = [f"no bad patch: the whole series ({n} patches) is good"]
    elif st == "base-bad":
        lines = ["the base kernel (no patch) already has the finding: nothing to bisect"]
    else:
        cands = ", ".join(str(c.get("index")) for c in doc.get("candidates") or [] if c) or "?"
        lines = [f"bisect {st}: no first bad patch named; candidates {cands}"
                 + (f" ({doc['error']})" if doc.get("error") else "")]
    if doc.get("reproduction_rate") is not None:
        lines.append(f"reproduction rate {doc['reproduction_rate']:.3f} ({conf.get('catching_runs')} catching of "
                     f"{conf.get('runs_at_bad_steps')} runs at bad steps); confidence {conf.get('confidence'):.4f} "
                     f"(lower bound {conf.get('confidence_lower_bound'):.4f})")
    elif conf.get("why"):
        lines.append(f"confidence n/a: {conf['why']}")
    lines.append(f"kernel {doc.get('kernel_yaml')}, scenario {doc.get('scenario')}, repeats {doc.get('repeats')}, "
                 f"{doc.get('runs_total')} runs, {doc.get('elapsed_s')} s")
    tail = "" if st in ("first-bad", "clean") else f" # ERROR {clean(st, 40)}: the bisection named no first bad patch"
    return lines, tail


def bisect_ktap(doc: dict[str, Any]) -> str:
    """KTAP for a bisection (bisect.json): one parent test with one subtest per step, in the order they ran;
    the parent passes only when the whole series is good, and its diagnostics name the first bad patch."""
    steps = doc.get("steps") or []
    pname = name_of("bisect-" + Path(str(doc.get("kernel_yaml") or "kernel")).stem)
    sub = ["KTAP version 1", f"# Subtest: {pname}", f"1..{len(steps)}"]
    for i, s in enumerate(steps, 1):
        sub += step_lines(s, i, doc.get("repeats"))
    head, tail = _bisect_head(doc)
    ok = doc.get("status") == "clean"
    return "\n".join(["KTAP version 1", "1..1"] + ["  " + s for s in sub] + [f"# {clean(h)}" for h in head]
                     + [f"{'ok' if ok else 'not ok'} 1 {pname}{tail}"]) + "\n"


def write_bisect_ktap(doc: dict[str, Any], path: str | Path) -> Path:
    atomic_write(Path(path), bisect_ktap(doc))
    return Path(path)


def write_run_ktap(run: RunRecord | dict[str, Any], path: str | Path) -> Path:
    """results.ktap of a run (run.json's content is read through its model)."""
    atomic_write(Path(path), run_ktap(run if isinstance(run, RunRecord) else RunRecord.parse(run, str(path))))
    return Path(path)


def write_matrix_ktap(matrix_json: dict[str, Any], path: str | Path) -> Path:
    atomic_write(Path(path), matrix_ktap(matrix_json))
    return Path(path)
