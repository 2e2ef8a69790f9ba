"""The head of summary.txt (pure): at most ten lines that say what a run found and what to do next.

verdict, what was lost (pages, the first gfn and the L1 pfn that held it), which rule the trace saw broken, which
change was under test (the tree's commits and uncommitted diff when run.json has them, else every patch of the
series), and the next commands filled in for this run (`harness reproduce RUN`, `harness bisect ...`).  The
details (kernel, L1, ledger, trace rules, every finding) follow it in summary.txt.
"""
from __future__ import annotations

import shlex
from typing import Any

from harness.evidence import Finding
from harness.report.models import RunRecord

MAX_LINES = 10
LEDGER_KINDS = ("stale", "zero", "corrupt")


def _own(f: Finding, name: str, default: Any = None) -> Any:
    """An oracle's own field of a finding (pages, count, rule, gfn...: Finding's extra fields), or `default`."""
    return getattr(f, name, default)


def head_lines(run: RunRecord, run_dir: str) -> list[str]:
    """summary.txt's first lines (<= MAX_LINES); `run_dir`: the results folder as the user should type it."""
    verdict = run.verdict
    findings = [f for f in run.findings if f.real]
    code = {"pass": 0, "finding": 1, "infra-error": 3, "input-error": 2}.get(verdict, 3)
    out = [f"verdict  {verdict.upper()} (exit {code}): " + _verdict_text(run, findings)]
    if verdict == "finding":
        out += _lost_lines(findings)
        out.append("rule     " + _rule_text(run, findings))
    out.append("change   " + change_text(run))
    out += _next_lines(run, run_dir, findings)
    return out[:MAX_LINES]


def _verdict_text(run: RunRecord, findings: list[Finding]) -> str:
    if run.verdict == "pass":
        lg = run.ledger
        return (f"no lost write: {lg.pages_verified or 0:,} page checks over {lg.rounds_done}/"
                f"{lg.rounds} rounds, no oracle found anything")
    if run.verdict == "finding":
        return "; ".join(dict.fromkeys(f.title for f in findings if f.kind != "ledger-timeline"
                                       and f.oracle != "trace")) or findings[0].title
    infra = [f for f in run.findings if not f.real]
    why = infra[0].title if infra else "; ".join(run.infra_events[-1:]) or "see below"
    return f"the harness could not judge this kernel: {why}"


def _lost_lines(findings: list[Finding]) -> list[str]:
    """'lost' line: the ledger's bad pages by class and the first one (gfn, index, the L1 pfn the trace saw)."""
    ledger = [f for f in findings if f.oracle == "ledger" and f.kind in LEDGER_KINDS]
    dirty_log = next((f for f in findings if f.kind == "dirty-log-missing"), None)
    if dirty_log and not ledger:  # the micro-guest's VMM: written pages KVM_GET_DIRTY_LOG did not report
        h = (_own(dirty_log, "harvests") or [{}])[0]
        gfn = h.get("first_missing_gfn")
        return [f"lost     {_own(dirty_log, 'count')} written page(s) missing from KVM's dirty log"
                + (f"; first: gfn {gfn:#x} ({h.get('chor')}, round {h.get('round')})" if isinstance(gfn, int)
                   else "")]
    if not ledger:
        return []
    counts = ", ".join(f"{_own(f, 'count', len(_own(f, 'pages', [])))} {f.kind}" for f in ledger)
    first = min((p for f in ledger for p in _own(f, "pages", [])[:1]), key=lambda p: p.get("round", 0), default=None)
    text = f"lost     {counts} page(s)"
    if first and isinstance(first.get("gfn"), int):
        micro = "chor" in first  # the micro-guest's VMM names the choreography, its step and the L1 pfn itself
        text += f"; first: {'gfn' if micro else 'L2 gfn'} {first['gfn']:#x} (ledger index {first.get('index')}, " \
                f"generation {first.get('found')} read back, {first.get('expected')} written)"
        tl = next((f for f in findings if f.kind == "ledger-timeline" and _own(f, "gfn") == first["gfn"]), None)
        if tl and _own(tl, "pfn") is not None:  # the trace's story of that page: "L1 pfn 0x..: ..., freed"
            text += " in " + tl.title.split(": ", 1)[-1].split(" (rules ")[0]
        elif micro and isinstance(first.get("pfn"), int):
            text += f" in L1 pfn {first['pfn']:#x}, {first['chor']} step {first.get('step')}"
    return [text]


def _rule_text(run: RunRecord, findings: list[Finding]) -> str:
    rules = [f for f in findings if f.oracle == "trace" and f.kind.endswith("-violation")]
    console = [f for f in findings if f.oracle == "console"]
    parts = []
    if rules:
        what = rules[0].title.split(" x ", 1)[-1]
        parts.append(f"{_own(rules[0], 'rule')} {what} ({_own(rules[0], 'count')} x)"
                     + "".join(f", {_own(f, 'rule')} ({_own(f, 'count')} x)" for f in rules[1:])
                     + " -- the rules: docs/trace-oracle.md")
    elif (run.scenario.get("trace") or {}).get("enabled") is False:
        if any(f.oracle == "ledger" for f in findings):
            parts.append("trace off (trace.enabled=false): the ledger alone convicts; the trace would name the rule")
    elif run.trace.get("rules"):
        parts.append("no trace rule broken (the ledger or the console convicts)")
    parts += [f"console {f.layer} {f.kind}: {f.title}" for f in console[:1]]
    return "; ".join(parts) or "none named"


def _tree(run: RunRecord) -> dict[str, Any] | None:
    """The tree change under test (run.json's `change`, or an older run's kernel.change), if any."""
    tree = run.change or run.kernel.get("change")
    return tree if isinstance(tree, dict) else None


def change_text(run: RunRecord) -> str:
    """The change under test: the tree's identity (commits, uncommitted diff) when recorded, else the patch
    series (every patch, in order), else the unpatched kernel."""
    k = run.kernel
    tree = _tree(run)
    if tree and tree.get("kind", "tree") == "tree":
        return _tree_text(tree)
    patches = k.get("patches") or []
    base = k.get("base")
    if isinstance(base, dict):
        base = base.get("id") or base.get("base_commit") or base.get("commit")
    on = f" on {base}" if base else ""
    if not patches:
        return f"none: kernel {k.get('release')} ({k.get('source')}{on}), unpatched"
    if len(patches) == 1:
        p = patches[0]
        return f"patch 1/1 {str(p.get('sha256', ''))[:12]} {p.get('subject')}{on}"
    return f"{len(patches)} patches{on}: " + "; ".join(f"{i}. {p.get('subject')}" for i, p in enumerate(patches, 1))


def _tree_text(t: dict[str, Any]) -> str:
    """harness.kernel.change.tree_change's identity in one line: where, which commit, how many commits since the
    base, and the uncommitted diff (reproduce.sh embeds it)."""
    head = t.get("head") or {}
    sha = str(head.get("sha") or "")
    text = f"tree {t.get('path') or t.get('repo') or '?'} at {t.get('describe') or sha[:12] or '?'}"
    if head.get("subject"):
        text += f" ({sha[:12]} {head['subject']})"
    commits = t.get("commits") or []
    if commits:
        text += f"; {len(commits)} commit(s) since {t.get('base') or 'the base'}"
    if t.get("diff_sha256"):
        text += f"; uncommitted diff sha256 {str(t['diff_sha256'])[:12]} (embedded in reproduce.sh)"
    return text


def _next_lines(run: RunRecord, run_dir: str, findings: list[Finding]) -> list[str]:
    verdict = run.verdict
    rd = shlex.quote(run_dir)
    if verdict == "pass":
        return []
    if verdict != "finding":
        return [f"next     harness doctor; then harness reproduce {rd}   # the host, then this case again"]
    out = [f"next     harness reproduce {rd} --tries 3   # this case again, from its folder: reproduced k/3"]
    bis = bisect_command(run)
    if bis:
        out.append(f"         {bis}")
    if any(f.kind in LEDGER_KINDS for f in findings):
        out.append(f"details  below; every lost page: {rd}/cases/*/ledger.jsonl (\"ev\": \"bad\" lines)")
    elif any(f.kind == "dirty-log-missing" for f in findings):
        out.append(f"details  below; every step of the VMM: {rd}/cases/*/micro-steps.jsonl")
    else:
        out.append(f"details  below; the consoles: {rd}/cases/*/l1-console.log, l2-console.log")
    return out


def scenario_args(run: RunRecord) -> list[str]:
    """The scenario and its overrides as a bisect (or run) command takes them."""
    ref = run.scenario_ref
    args = [ref] if ref and ref != "default" else []
    for ov in run.overrides:
        args += ["--set", ov]
    return args


def bisect_command(run: RunRecord) -> str | None:
    """`harness bisect ...` for this run's change: over the tree's commits (--git) or the patch series."""
    k = run.kernel
    tree = _tree(run)
    scen = scenario_args(run)
    if tree and tree.get("git") is not False and (tree.get("head") or {}).get("sha"):
        where = str(tree.get("path") or tree.get("repo"))
        bad = str(tree["head"]["sha"])
        commits = tree.get("commits") or []
        if tree.get("base") and len(commits) > 1:
            argv = ["harness", "bisect", "--git", where, "--good", str(tree["base"]), "--bad", bad, *scen]
            return shlex.join(argv) + "   # the first bad commit"
        if not tree.get("base"):
            return shlex.join(["harness", "bisect", "--git", where, "--good", "REF", "--bad", bad, *scen]) + \
                "   # REF: a commit without the finding"
        return None
    if len(k.get("patches") or []) > 1:
        yaml = k.get("kernel_yaml") or "KERNEL.yaml"
        return shlex.join(["harness", "bisect", yaml, *scen]) + "   # the first bad patch of the series"
    return None
