"""PNG plots from a results folder's files alone (matplotlib, Agg): a run's timeline, a matrix's time to catch.

plots/timeline.png (one per case; `timeline-<case>.png` for cases other than "default"): top, L1's swap-out and
swap-in rates from vmstat.csv; bottom, L2's cgroup memory.current (when vmstat.csv has it) against memory.max;
the ledger's rounds as shaded bands; every finding that has a time as a red line, labelled.

The files have different clocks; everything is drawn on vmstat.csv's: seconds since L2's QEMU was started.
- ledger.jsonl `t`: seconds since the ledger started.  The ledger starts right after L2's init line, which the
  monitor saw at timings.l2_boot_s (seconds since L2's start), so vmstat t ~= ledger t + l2_boot_s (early by the
  init script's few milliseconds up to the ledger's exec).
- trace timestamps: L1's uptime.  The trace is armed when L2's init line appears (run.json trace.armed_at
  "l2-init"), so its first event is at vmstat t ~= l2_boot_s: vmstat t ~= ts - first ts + l2_boot_s.
- L2 console timestamps: L2's uptime, which starts a few seconds after its QEMU (firmware, TCG).  The last
  kernel-stamped line before "HARNESS-L2: init" is a lower bound of L2's uptime at l2_boot_s, so vmstat t ~=
  uptime + l2_boot_s - that stamp (late by at most the gap between that line and init, ~1 s on TCG).
- L1 console timestamps: L1's uptime, placed through the trace's clock when there is a trace, else not placed.
Findings with no time of their own (a hang, a monitor event, a taint change) are listed under the plot.
"""
from __future__ import annotations

import csv
import gzip
import json
import re
from pathlib import Path
from typing import Any

from harness.evidence import Finding
from harness.report.models import MatrixRecord, RunRecord

_KTS = re.compile(r"\[\s*(\d+\.\d+)\]")  # a kernel console timestamp
_TRACE_TS = re.compile(rb"\s(\d+\.\d+):\s")  # an ftrace line's timestamp
L2_INIT = "HARNESS-L2: init"


def _plt() -> Any:  # matplotlib.pyplot, imported (and its backend chosen) only when a plot is drawn
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def read_vmstat(path: Path) -> dict[str, list[float]]:
    """vmstat.csv as columns; rows that do not parse (a run cut in the middle of a write) are skipped."""
    cols: dict[str, list[float]] = {}
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    vals = {k: float(v) for k, v in row.items() if k and v not in (None, "")}
                except ValueError:
                    continue
                if "t" in vals:
                    for k, v in vals.items():
                        cols.setdefault(k, []).append(v)
    except OSError:
        pass
    return cols


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [e for e in out if isinstance(e, dict)]


def rates(t: list[float], counter: list[float]) -> tuple[list[float], list[float]]:
    """A cumulative counter's rate (per second) over each sampling interval: (edges, values) for `stairs`,
    len(edges) == len(values) + 1; an interval where the counter went down (not this run's sample) is NaN."""
    n = min(len(t), len(counter))
    vals = []
    for i in range(1, n):
        dt, dc = t[i] - t[i - 1], counter[i] - counter[i - 1]
        vals.append(dc / dt if dt > 0 and dc >= 0 else float("nan"))
    return (list(t[:n]) if n > 1 else []), vals


def ledger_rounds(events: list[dict[str, Any]], off: float) -> list[tuple[float, float, int]]:
    """(start, end, round) on vmstat's clock: round 0 writes every page from the start; round r runs from the
    end of window r-1 (its "window" event + seconds) to its "round" event."""
    out: list[tuple[float, float, int]] = []
    start = off
    for ev in events:
        if ev.get("ev") == "round" and isinstance(ev.get("t"), (int, float)):
            out.append((start, ev["t"] + off, int(ev.get("round", len(out)))))
        elif ev.get("ev") == "window" and isinstance(ev.get("t"), (int, float)):
            start = ev["t"] + float(ev.get("seconds") or 0) + off
    return out


def trace_origin(case_dir: Path) -> float | None:
    """The first timestamp of the case's trace (L1 uptime when the trace was armed)."""
    for name, opener in (("trace.txt", open), ("trace.txt.gz", gzip.open)):
        p = case_dir / name
        if not p.exists():
            continue
        try:
            with opener(p, "rb") as f:
                for _, line in zip(range(1000), f, strict=False):  # the first 1000 lines at most
                    m = _TRACE_TS.search(line)
                    if m:
                        return float(m.group(1))
        except (OSError, EOFError):
            return None
    return None


def l2_uptime_at_init(case_dir: Path) -> float | None:
    try:
        text = (case_dir / "l2-console.log").read_text(errors="replace")
    except OSError:
        return None
    last = None
    for line in text.splitlines():
        if L2_INIT in line:
            return last
        m = _KTS.search(line)
        last = float(m.group(1)) if m else last
    return None


def _short(text: object, n: int = 48) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= n else s[:n - 1] + "…"


def _ledger_mark(bad: list[dict[str, Any]], off: float) -> dict[str, Any]:
    b = bad[0]
    gfn = f" gfn {b['gfn']:#x}" if isinstance(b.get("gfn"), int) else ""
    return {"t": b["t"] + off, "source": "ledger",
            "label": f"ledger: first bad page ({b.get('class', 'bad')}{gfn}; {len(bad)} logged)"}


def _trace_time(f: Finding, t0: float | None, l2b: float | None) -> float | None:
    """A trace violation's first example, from the trace's clock (L1 uptime) to vmstat's."""
    examples = getattr(f, "examples", None) or []
    ts = [float(x) for e in examples for x in [e.get("ts") or e.get("free_ts") or e.get("zap_ts")] if x is not None]
    return min(ts) - t0 + l2b if ts and t0 is not None and l2b is not None else None


def _console_time(f: Finding, t0: float | None, l2b: float | None, up2: float | None) -> float | None:
    """A console report's kernel timestamp: L2's uptime (from its init), or L1's (from the trace's origin)."""
    m = _KTS.search(f.excerpt or "")
    if not m or l2b is None:
        return None
    if f.layer == "L2":
        return float(m.group(1)) + l2b - (up2 or 0.0)
    return float(m.group(1)) - t0 + l2b if f.layer == "L1" and t0 is not None else None


def _finding_mark(f: Finding, t0: float | None, l2b: float | None, up2: float | None) -> dict[str, Any]:
    if f.oracle == "trace" and f.kind.endswith("violation"):
        t = _trace_time(f, t0, l2b)
        label = f"trace {getattr(f, 'rule', '')}: {getattr(f, 'count', '?')} violations (first example)"
    elif f.oracle == "console":
        t = _console_time(f, t0, l2b, up2)
        label = f"{f.layer} console {f.kind}: {_short(f.title, 40)}"
    else:
        t, label = None, f"{f.oracle}/{f.layer}/{f.kind}: {_short(f.title, 60)}"
    return {"t": round(t, 2) if t is not None else None, "source": f.oracle, "label": label}


def finding_marks(case_dir: Path, run: RunRecord, ledger: list[dict[str, Any]], off: float | None) -> list[dict[str, Any]]:
    """Each finding's time on vmstat's clock: {"t" (None: no time of its own), "source", "label"}."""
    bad = [e for e in ledger if e.get("ev") == "bad" and isinstance(e.get("t"), (int, float))]
    marks = [_ledger_mark(bad, off)] if bad and off is not None else []
    t0, up2 = trace_origin(case_dir), l2_uptime_at_init(case_dir)
    for f in run.findings:
        if (f.oracle == "ledger" and bad) or f.kind == "ledger-timeline":
            continue  # drawn from ledger.jsonl's bad events above (a ledger-timeline is the same page's trace)
        marks.append(_finding_mark(f, t0, off, up2))
    return marks


def _bands(ax: Any, rounds: list[tuple[float, float, int]], label_y: float | None = None) -> None:
    for i, (a, b, r) in enumerate(rounds):
        ax.axvspan(a, b, color="#4a7ab5" if i % 2 else "#7fa7d6", alpha=0.13, lw=0)
        if label_y is not None and b - a > 0:
            ax.text((a + b) / 2, label_y, f"r{r}", ha="center", va="bottom", fontsize=7, color="#35557f",
                    transform=ax.get_xaxis_transform())


def _marks(axes: tuple[Any, ...], marks: list[dict[str, Any]]) -> None:
    for m in (m for m in marks if m["t"] is not None):
        for ax in axes:
            ax.axvline(m["t"], color="#c0392b", lw=1.4, ls="-" if m["source"] == "ledger" else "--")
        txt = axes[0].text(m["t"], 0.03, " " + _short(m["label"], 44), rotation=90, ha="right", va="bottom",
                           fontsize=7, color="#c0392b", transform=axes[0].get_xaxis_transform(),
                           bbox={"facecolor": "white", "alpha": 0.75, "lw": 0, "pad": 1})
        txt.set_in_layout(False)


def _memory_axis(ax: Any, vm: dict[str, list[float]], run: RunRecord) -> None:
    mmax = run.scenario.get("memory_max_mb")
    if "memory_current" in vm:
        ax.plot(vm["t"], [v / 2**20 for v in vm["memory_current"]], color="#2e7d32", lw=1.5,
                label="L2 cgroup memory.current")
    else:
        ax.text(0.5, 0.5, "memory.current not recorded in vmstat.csv (a run from before it was sampled)",
                ha="center", va="center", fontsize=9, color="#666", transform=ax.transAxes)
    if mmax:
        ax.axhline(mmax, color="#2e7d32", ls=":", lw=1.2, label=f"memory.max = {mmax} MiB")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0, top=max([mmax or 1] + [v / 2**20 for v in vm.get("memory_current", [])]) * 1.25)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=8)


def timeline(case_dir: Path, run: RunRecord, out: Path) -> list[dict[str, Any]]:
    """Draw one case's timeline to `out`; returns the findings it marked ({"t", "source", "label"}; "t" None:
    listed under the plot, not drawn on the time axis)."""
    case_dir, out = Path(case_dir), Path(out)
    vm = read_vmstat(case_dir / "vmstat.csv")
    ledger = read_jsonl(case_dir / "ledger.jsonl")
    off = getattr(run.timings, "l2_boot_s", None)  # L2 start -> ledger start: see the module docstring
    rounds = ledger_rounds(ledger, off) if off is not None else []
    marks = finding_marks(case_dir, run, ledger, off)
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(11, 6.5), height_ratios=[3, 2])
    t, top = vm.get("t", []), 1.0
    for key, color, name in (("pswpout", "#d35400", "pswpout (swap-out)"), ("pswpin", "#1f77b4", "pswpin (swap-in)")):
        if key in vm:
            edges, vals = rates(t, vm[key])
            if vals:
                ax1.stairs(vals, edges, baseline=None, color=color, lw=1.6, label=f"L1 {name}")
                top = max([top] + [v for v in vals if v == v])
    reclaim = [w["t"] for w in run.l2.reclaim_writes if isinstance(w.get("t"), (int, float))]
    if reclaim:  # the monitor's memory.reclaim writes: same clock as vmstat.csv
        ax1.plot(reclaim, [0] * len(reclaim), "^", color="#555", ms=5, clip_on=False, label="memory.reclaim write")
    if not t:
        ax1.text(0.5, 0.5, "no vmstat samples in vmstat.csv", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_ylabel("pages/s")
    ax1.set_ylim(0, top * 1.3)  # headroom for the legend
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(loc="upper left", fontsize=8, ncol=3, framealpha=0.85)
    _memory_axis(ax2, vm, run)
    for ax in (ax1, ax2):
        _bands(ax, rounds, 0.03 if ax is ax2 else None)
        ax.grid(alpha=0.3)
    _marks((ax1, ax2), marks)
    ends = t + [b for _, b, _ in rounds] + [m["t"] for m in marks if m["t"] is not None]
    ax2.set_xlim(0, max(ends) * 1.02 if ends else 1)
    ax2.set_xlabel("seconds since L2 start (vmstat.csv clock; ledger, trace and console times aligned via "
                   f"timings.l2_boot_s = {off} s)" if off is not None else
                   "seconds since L2 start (timings.l2_boot_s unknown: ledger rounds and findings not aligned)",
                   fontsize=8)
    k = run.kernel
    ax1.set_title(f"{run.run_id}: {run.verdict.upper()} — L1 kernel {k.get('release')} "
                  f"({k.get('source')}); shaded bands: ledger rounds", fontsize=9)
    unplaced = [m["label"] for m in marks if m["t"] is None]
    if unplaced:
        fig.text(0.01, 0.005, "not on the time axis (no time of their own): " + "; ".join(unplaced[:4]),
                 fontsize=7, color="#c0392b", va="bottom")
    fig.tight_layout(rect=(0, 0.03 if unplaced else 0, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return marks


def run_plots(run_dir: str | Path) -> list[Path]:
    """Every plot of a results folder, under RUN_DIR/plots/: one timeline per case that recorded something."""
    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    # a folder cut short before run.json: its timelines still drawn, with no finding to mark
    run = RunRecord.load(path) if path.exists() else RunRecord(run_id=run_dir.name, verdict="infra-error")
    out = []
    for cdir in sorted(p for p in (run_dir / "cases").glob("*") if p.is_dir()):
        if not ((cdir / "vmstat.csv").exists() or (cdir / "ledger.jsonl").exists()):
            continue
        name = "timeline.png" if cdir.name == "default" else f"timeline-{cdir.name}.png"
        timeline(cdir, run, run_dir / "plots" / name)
        out.append(run_dir / "plots" / name)
    return out


def mutant_kernels(m: MatrixRecord) -> list[str]:
    """The mutants, in the matrix's cell order."""
    mutants = set(m.mutant_kernels())
    return list(dict.fromkeys(c.kernel for c in m.cells if c.kernel in mutants))


def catch_points(m: MatrixRecord) -> tuple[list[dict[str, Any]], dict[str, int], list[str], list[Any]]:
    """Pure: each catching run of a cell that declares a finding, as {kernel, seed, variant (index), t, run_dir};
    the runs per mutant that caught nothing; the variants (JSON) and seeds, in order."""
    kernels = mutant_kernels(m)
    # the cells that declare a finding: a hidden cell (declared clean for this mutant) is no miss
    cells = [c for c in m.cells if c.kernel in kernels and c.expect == "finding"]
    variants = list(dict.fromkeys(json.dumps(c.variant, sort_keys=True) for c in cells))
    seeds = sorted({r.seed for c in cells for r in c.runs}, key=str)
    points, missed = [], {k: 0 for k in kernels}
    for c in cells:
        vi = variants.index(json.dumps(c.variant, sort_keys=True))
        for r in c.runs:
            if r.first_finding_s is None:
                missed[c.kernel] += 1
            else:
                points.append({"kernel": c.kernel, "seed": r.seed, "variant": vi, "t": float(r.first_finding_s),
                               "run_dir": r.run_dir})
    return points, missed, variants, seeds


def time_to_first_finding(m: MatrixRecord, out: Path) -> list[dict[str, Any]]:
    """Per mutant kernel (x), each run's first_finding_s (seconds from `harness run` start) as a point coloured
    by seed, shaped by the cell's knobs; a bar at each mutant's median; runs of cells that expect a finding but
    found nothing counted under the kernel's name.  Returns the points drawn."""
    kernels = mutant_kernels(m)
    points, missed, variants, seeds = catch_points(m)
    shapes, colors = "osD^vP*X", ["#1f77b4", "#d35400", "#2e7d32", "#8e44ad", "#c0392b", "#7f8c8d"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(kernels) + 3), 4.8))
    width = 0.6
    for p in points:
        x = (kernels.index(p["kernel"]) + (p["variant"] + 0.5) / max(1, len(variants)) * width - width / 2
             + (seeds.index(p["seed"]) - (len(seeds) - 1) / 2) * 0.03)  # seeds side by side, not on top
        ax.plot(x, p["t"], shapes[p["variant"] % len(shapes)], ms=7, alpha=0.85, mec="black", mew=0.5,
                color=colors[seeds.index(p["seed"]) % len(colors)])
    for i, k in enumerate(kernels):
        ts = sorted(p["t"] for p in points if p["kernel"] == k)
        if ts:
            ax.hlines(ts[len(ts) // 2], i - width / 2 - 0.05, i + width / 2 + 0.05, color="black", lw=1.2)
            ax.text(i + width / 2 + 0.07, ts[len(ts) // 2], f"{ts[len(ts) // 2]:.1f} s", va="center", fontsize=7)
    labels = [k + (f"\n({missed[k]} not caught)" if missed[k] else "") for k in kernels]
    ax.set_xticks(range(len(kernels)), labels, fontsize=8)
    ax.set_xlim(-0.7, len(kernels) - 0.3)
    ax.set_ylim(bottom=0, top=max([p["t"] for p in points] + [1]) * 1.15)
    ax.set_ylabel("first finding, s from run start")
    ax.grid(axis="y", alpha=0.3)
    if not points:
        ax.text(0.5, 0.5, "no run found anything", ha="center", va="center", transform=ax.transAxes)
    handles = [plt.Line2D([], [], ls="", marker="o", color=colors[i % len(colors)], label=f"seed {s}")
               for i, s in enumerate(seeds)]
    handles += [plt.Line2D([], [], ls="", marker=shapes[i % len(shapes)], color="#999", mec="black",
                           label=", ".join(f"{k}={v}" for k, v in json.loads(v).items()) or "default")
                for i, v in enumerate(variants)] if len(variants) > 1 else []
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="lower right", ncol=2, framealpha=0.85)
    ax.set_title(f"matrix {m.name}: time to first finding per mutant (bar: median)", fontsize=9)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return points


def matrix_plots(m: MatrixRecord, out_dir: Path) -> list[Path]:
    """A matrix's plots under out_dir (the heat map stays harness.fleet.matrix's): time-to-first-finding.png when the
    matrix has mutant cells."""
    if not mutant_kernels(m):
        return []
    out = Path(out_dir) / "time-to-first-finding.png"
    time_to_first_finding(m, out)
    return [out]
