"""A matrix folder's outputs besides runs/: matrix.json, summary.txt, junit.xml, heatmap.png, results.ktap and the
plots (a run, a shard and a merge write the same)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from harness.fleet.matrix.model import Cell, Matrix, variant_label
from harness.fleet.matrix.scoring import headline, score
from harness.report.junit import matrix_junit
from harness.report.models import MATRIX_SCHEMA, MatrixRecord
from harness.util import atomic_write


def summary(m: Matrix, cells: list[Cell], sc: dict) -> str:
    L = [f"matrix {m.name}: {headline(sc)}", ""]
    L.append(f"{'cell':58} {'expect':14} {'outcome':9} runs retried  first finding")
    for c in cells:
        ff = [r.get("first_finding_s") for r in c.runs if r.get("first_finding_s") is not None]
        tail = f"  # SKIP {c.skip}" if c.skipped else "" if c.ok else "  <-- MISMATCH"
        L.append(f"{c.name:58} {c.expect:14} {c.outcome:9} {len(c.runs):4} {c.retries:7}  "
                 f"{(str(ff[0]) + ' s') if ff else '-':>8} {tail}")
    L += ["", "TCG retries (an L2 crash with no lost write, run again) per kernel and MMU:"]
    L += [f"  {k:40} {e['retried']}/{e['runs']} runs ({100 * e['rate']:.0f} %)" for k, e in sc["retries"].items()]
    L += ["", "evidence (first catching run of each cell):"]
    for c in cells:
        r = next((r for r in c.runs if r.get("evidence")), None)
        if r:
            L.append(f"  {c.name} (seed {r['seed']}, {r['run_dir']})")
            L += [f"    {e}" for e in r["evidence"]]
    L += ["", "time to catch (from run start):"]
    for k, t in sc["time_to_catch"].items():
        L.append(f"  {k:20} median {t['median_s']} s, min {t['min_s']} s over {t['runs_caught']} catching runs")
    return "\n".join(L) + "\n"


def junit(m: Matrix, cells: list[Cell]) -> str:
    return matrix_junit(m.name, cells)


GREEN, RED, GREY = "green", "red", "grey"  # as expected / mismatch / not run (skipped, or no run recorded)


HEAT_RGB = {None: "#ffffff", GREEN: "#8fd18f", RED: "#e06666", GREY: "#cccccc"}


def _slot_colour(slot: list[Cell]) -> str:
    """green when every cell that ran is as expected (a hidden mutant that stayed clean, a mutant caught, a
    correct kernel clean), red when one is not, grey when none ran (skipped here, or not run)."""
    ran = [c for c in slot if c.outcome not in ("skipped", "not-run")]
    if not ran:
        return GREY
    return GREEN if all(c.ok for c in ran) else RED


def _slot_text(slot: list[Cell]) -> str:
    counts = Counter(c.outcome for c in slot)  # in first-seen order
    outcomes = [f"{o} ×{n}" if len(slot) > 1 else o for o, n in counts.items()]
    expects = "/".join(dict.fromkeys(c.expect for c in slot))
    return f"{', '.join(outcomes)}\nexpect {expects}"


def heatmap_grid(cells: list[Cell]) -> dict:
    """The heat map as data: rows (kernels), cols (variant labels), colours[row][col] (GREEN/RED/GREY, None
    where the kernel has no such cell) and texts (outcome and expectation).  One slot per kernel × variant;
    the seeds of a one-cell-per-seed group share their slot (its text counts the outcomes)."""
    kernels = list(dict.fromkeys(c.kernel for c in cells))
    keys = list(dict.fromkeys(json.dumps(c.variant, sort_keys=True) for c in cells))
    slots: dict[tuple[int, int], list[Cell]] = {}
    names: dict[int, list[str]] = {}
    for c in cells:
        j = keys.index(json.dumps(c.variant, sort_keys=True))
        slots.setdefault((kernels.index(c.kernel), j), []).append(c)
        names.setdefault(j, [])
        if c.shown_label not in names[j]:
            names[j].append(c.shown_label)
    named = [" / ".join(names[j]) for j in range(len(keys))]
    # two variants under one label: told apart by their knobs
    cols = [f"{n} ({variant_label(json.loads(keys[j]))})" if named.count(n) > 1 else n for j, n in enumerate(named)]
    colours: list[list[str | None]] = [[None] * len(keys) for _ in kernels]
    texts = [[""] * len(keys) for _ in kernels]
    for (i, j), slot in slots.items():
        colours[i][j], texts[i][j] = _slot_colour(slot), _slot_text(slot)
    return {"rows": kernels, "cols": cols, "colours": colours, "texts": texts}


def heatmap(cells: list[Cell], out: Path) -> dict:
    """heatmap.png: kernels × variants, each slot coloured by whether its outcome matched its expectation;
    returns heatmap_grid()."""
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb
    g = heatmap_grid(cells)
    rows, cols = g["rows"], g["cols"]
    fig, ax = plt.subplots(figsize=(2.5 + 1.5 * len(cols), 1.2 + 0.62 * len(rows)))
    ax.imshow([[to_rgb(HEAT_RGB[c]) for c in row] for row in g["colours"]], aspect="auto")
    ax.set_xticks(range(len(cols)), ["\n".join(textwrap.wrap(c, 18)) for c in cols], rotation=0, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xticks([x + 0.5 for x in range(len(cols) - 1)], minor=True)
    ax.set_yticks([y + 0.5 for y in range(len(rows) - 1)], minor=True)
    ax.grid(which="minor", color="white", linewidth=2)
    ax.tick_params(which="minor", length=0)
    for i, row in enumerate(g["texts"]):
        for j, text in enumerate(row):
            ax.text(j, i, text + (" !" if g["colours"][i][j] == RED else ""), ha="center", va="center",
                    fontsize=6.5)
    ax.set_title("green: as expected · red: mismatch · grey: skipped / not run", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return g


def matrix_record(m: Matrix, cells: list[Cell], meta: dict | None = None) -> MatrixRecord:
    """matrix.json's content; `meta` is the folder's identity (matrix id, harness commit, shard, cell ids, the
    matrix)."""
    return MatrixRecord.parse({"schema": MATRIX_SCHEMA, "name": m.name, **(meta or {}), "score": score(m, cells),
                               "cells": [{"id": c.id} | c.__dict__ |
                                         {"outcome": c.outcome, "ok": c.ok, "retries": c.retries,
                                          "skipped": c.skipped} for c in cells]}, f"matrix {m.name}")


def save(mdir: Path, m: Matrix, cells: list[Cell], meta: dict | None = None) -> dict:
    """matrix.json, through its model; returns the score."""
    record = matrix_record(m, cells, meta)
    record.write(mdir / "matrix.json")
    return record.score


def write_outputs(mdir: Path, m: Matrix, cells: list[Cell], meta: dict | None = None, note: str = "") -> str:
    """Everything a finished matrix folder holds besides runs/ (a run, a shard and a merge write the same)."""
    sc = save(mdir, m, cells, meta)
    text = note + summary(m, cells, sc)
    atomic_write(mdir / "summary.txt", text)
    atomic_write(mdir / "junit.xml", junit(m, cells))
    if cells:  # an empty shard (more shards than cells) has nothing to draw
        heatmap(cells, mdir / "heatmap.png")
        from harness.report.ktap import write_matrix_ktap
        from harness.report.plots import matrix_plots
        mj = MatrixRecord.load(mdir / "matrix.json")
        write_matrix_ktap(mj.to_json(), mdir / "results.ktap")
        matrix_plots(mj, mdir)
    return text
