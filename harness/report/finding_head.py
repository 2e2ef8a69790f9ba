"""The head of summary.txt (pure): at most ten lines that say what a run found and what to do next.

verdict, what was lost (pages, the first gfn and the L1 pfn that held it), which rule the trace saw broken, which
change was under test (the tree's commits and uncommitted diff when run.json has them, else every patch of the
series), and the next commands filled in for this run (`harness reproduce RUN`, `harness bisect ...`).  The
details (kernel, L1, ledger, trace rules, every finding) follow it in summary.txt.
"""
from __future__ import annotations

import shlex

MAX_LINES = 10
LEDGER_KINDS = ("stale", "zero", "corrupt")


def head_lines(run: dict, run_dir: str) -> list[str]:
    """summary.txt's first lines (<= MAX_LINES); `run_dir`: the results folder as the user should type it."""
    verdict = run.get("verdict", "?")
    findings = [f for f in run.get("findings", []) if f.get("oracle") != "infra"]
    code = {"pass": 0, "finding": 1, "infra-error": 3, "input-error": 2}.get(verdict, 3)
    out = [f"verdict  {verdict.upper()} (exit {code}): " + _verdict_text(run, findings)]
    if verdict == "finding":
        out += _lost_lines(findings)
        out.append("rule     " + _rule_text(run, findings))
    out.append("change   " + change_text(run))
    out += _next_lines(run, run_dir, findings)
    return out[:MAX_LINES]


def _verdict_text(run: dict, findings: list[dict]) -> str:
    verdict = run.get("verdict")
    if verdict == "pass":
        lg = run.get("ledger") or {}
        return (f"no lost write: {lg.get('pages_verified', 0):,} page checks over {lg.get('rounds_done')}/"
                f"{lg.get('rounds')} rounds, no oracle found anything")
    if verdict == "finding":
        return "; ".join(dict.fromkeys(f.get("title", "") for f in findings if f.get("kind") != "ledger-timeline"
                                       and f.get("oracle") != "trace")) or findings[0].get("title", "")
    infra = [f for f in run.get("findings", []) if f.get("oracle") == "infra"]
    why = infra[0].get("title") if infra else "; ".join(run.get("infra_events", [])[-1:]) or "see below"
    return f"the harness could not judge this kernel: {why}"


def _lost_lines(findings: list[dict]) -> list[str]:
    """'lost' line: the ledger's bad pages by class and the first one (gfn, index, the L1 pfn the trace saw)."""
    ledger = [f for f in findings if f.get("oracle") == "ledger" and f.get("kind") in LEDGER_KINDS]
    dirty_log = next((f for f in findings if f.get("kind") == "dirty-log-missing"), None)
    if dirty_log and not ledger:  # the micro-guest's VMM: written pages KVM_GET_DIRTY_LOG did not report
        h = (dirty_log.get("harvests") or [{}])[0]
        gfn = h.get("first_missing_gfn")
        return [f"lost     {dirty_log.get('count')} written page(s) missing from KVM's dirty log"
                + (f"; first: gfn {gfn:#x} ({h.get('chor')}, round {h.get('round')})" if isinstance(gfn, int)
                   else "")]
    if not ledger:
        return []
    counts = ", ".join(f"{f.get('count', len(f.get('pages', [])))} {f['kind']}" for f in ledger)
    first = min((p for f in ledger for p in f.get("pages", [])[:1]), key=lambda p: p.get("round", 0), default=None)
    text = f"lost     {counts} page(s)"
    if first and isinstance(first.get("gfn"), int):
        text += f"; first: L2 gfn {first['gfn']:#x} (ledger index {first.get('index')}, generation " \
                f"{first.get('found')} read back, {first.get('expected')} written)"
        tl = next((f for f in findings if f.get("kind") == "ledger-timeline" and f.get("gfn") == first["gfn"]), None)
        if tl and tl.get("pfn") is not None:  # the trace's story of that page: "L1 pfn 0x..: ..., freed"
            text += " in " + str(tl.get("title", "")).split(": ", 1)[-1].split(" (rules ")[0]
    return [text]


def _rule_text(run: dict, findings: list[dict]) -> str:
    rules = [f for f in findings if f.get("oracle") == "trace" and str(f.get("kind", "")).endswith("-violation")]
    console = [f for f in findings if f.get("oracle") == "console"]
    parts = []
    if rules:
        what = str(rules[0].get("title", "")).split(" x ", 1)[-1]
        parts.append(f"{rules[0].get('rule')} {what} ({rules[0].get('count')} x)"
                     + "".join(f", {f.get('rule')} ({f.get('count')} x)" for f in rules[1:])
                     + " -- the rules: docs/trace-oracle.md")
    elif (run.get("scenario") or {}).get("trace", {}).get("enabled") is False:
        if any(f.get("oracle") == "ledger" for f in findings):
            parts.append("trace off (trace.enabled=false): the ledger alone convicts; the trace would name the rule")
    elif (run.get("trace") or {}).get("rules"):
        parts.append("no trace rule broken (the ledger or the console convicts)")
    parts += [f"console {f.get('layer')} {f.get('kind')}: {f.get('title')}" for f in console[:1]]
    return "; ".join(parts) or "none named"


def change_text(run: dict) -> str:
    """The change under test: the tree's identity (commits, uncommitted diff) when recorded, else the patch
    series (every patch, in order), else the unpatched kernel."""
    k = run.get("kernel") or {}
    tree = run.get("change") or k.get("change")
    if isinstance(tree, dict) and tree.get("kind", "tree") == "tree" and tree:
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


def _tree_text(t: dict) -> str:
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


def _next_lines(run: dict, run_dir: str, findings: list[dict]) -> list[str]:
    verdict = run.get("verdict")
    rd = shlex.quote(run_dir)
    if verdict == "pass":
        return []
    if verdict != "finding":
        return [f"next     harness doctor; then harness reproduce {rd}   # the host, then this case again"]
    out = [f"next     harness reproduce {rd} --tries 3   # this case again, from its folder: reproduced k/3"]
    bis = bisect_command(run)
    if bis:
        out.append(f"         {bis}")
    if any(f.get("kind") in LEDGER_KINDS for f in findings):
        out.append(f"details  below; every lost page: {rd}/cases/*/ledger.jsonl (\"ev\": \"bad\" lines)")
    elif any(f.get("kind") == "dirty-log-missing" for f in findings):
        out.append(f"details  below; every step of the VMM: {rd}/cases/*/micro-steps.jsonl")
    else:
        out.append(f"details  below; the consoles: {rd}/cases/*/l1-console.log, l2-console.log")
    return out


def scenario_args(run: dict) -> list[str]:
    """The scenario and its overrides as a bisect (or run) command takes them."""
    ref = run.get("scenario_ref")
    args = [ref] if ref and ref != "default" else []
    for ov in run.get("overrides") or []:
        args += ["--set", ov]
    return args


def bisect_command(run: dict) -> str | None:
    """`harness bisect ...` for this run's change: over the tree's commits (--git) or the patch series."""
    k = run.get("kernel") or {}
    tree = run.get("change") or k.get("change")
    scen = scenario_args(run)
    if isinstance(tree, dict) and tree.get("git") is not False and (tree.get("head") or {}).get("sha"):
        where = tree.get("path") or tree.get("repo")
        bad = tree["head"]["sha"]
        commits = tree.get("commits") or []
        if tree.get("base") and len(commits) > 1:
            argv = ["harness", "bisect", "--git", where, "--good", tree["base"], "--bad", bad, *scen]
            return shlex.join(argv) + "   # the first bad commit"
        if not tree.get("base"):
            return shlex.join(["harness", "bisect", "--git", where, "--good", "REF", "--bad", bad, *scen]) + \
                "   # REF: a commit without the finding"
        return None
    if len(k.get("patches") or []) > 1:
        yaml = k.get("kernel_yaml") or "KERNEL.yaml"
        return shlex.join(["harness", "bisect", yaml, *scen]) + "   # the first bad patch of the series"
    return None
