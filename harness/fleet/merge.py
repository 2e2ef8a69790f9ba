"""`harness merge DIR... [--results R]`: the shard folders of one matrix → one matrix folder, as if unsharded.

matrix.json (the same cells, in the matrix's order), summary.txt, junit.xml, heat map, mutation score and false
positives come from harness.fleet.matrix's own writers.  Each shard's runs/<cell id>/ is hard-linked (copied across
file systems) into the merged folder, so it stands alone like an unsharded one.  A wrong join is refused with
one line (exit 2): shards of different matrices or harness commits, split differently, overlapping or missing.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from harness.errors import EXIT_FINDING, EXIT_PASS, InputError
from harness.fleet.matrix.expansion import expand
from harness.fleet.matrix.model import Cell, Matrix
from harness.fleet.matrix.outputs import write_outputs
from harness.fleet.matrix.shard import shard_ids
from harness.paths import results_root
from harness.report.models import MatrixRecord
from harness.report.results import RunDir

REQUIRED = ("matrix_id", "harness_commit", "shard", "cell_ids", "matrix", "cells")


def load_shard(d: Path) -> dict:
    if d.name.endswith(".incomplete"):
        raise InputError(f"cannot merge: {d} is an incomplete matrix folder (interrupted or still running)")
    try:
        js = MatrixRecord.load(d / "matrix.json").to_json()
    except InputError as e:
        raise InputError(f"cannot merge: {d} has no readable matrix.json ({e})") from None
    absent = [k for k in REQUIRED if k not in js]
    if absent:
        raise InputError(f"cannot merge: {d}/matrix.json records no {absent[0]} (a matrix folder from before shards)")
    return js


def _tag(js: dict) -> str:
    return f"{js['shard']['index']}/{js['shard']['count']}"


def check_shards(shards: list[tuple[Path, dict]]) -> None:
    """Same matrix, same harness commit, one split, each shard once, none missing: else one line naming both."""
    d0, j0 = shards[0]
    for d, j in shards[1:]:
        if j["matrix_id"] != j0["matrix_id"]:
            raise InputError(f"cannot merge: {d0} and {d} are shards of different matrices "
                             f"(matrix {j0['matrix_id']} vs {j['matrix_id']})")
        if j["harness_commit"] != j0["harness_commit"]:
            raise InputError(f"cannot merge: {d0} and {d} were run by different harness commits "
                             f"({j0['harness_commit']} vs {j['harness_commit']})")
        if j["shard"]["count"] != j0["shard"]["count"]:
            raise InputError(f"cannot merge: {d0} is shard {_tag(j0)} and {d} is shard {_tag(j)}: "
                             "they split the matrix differently")
    seen: dict[int, Path] = {}
    for d, j in shards:
        i = j["shard"]["index"]
        if i in seen:
            raise InputError(f"cannot merge: {seen[i]} and {d} are both shard {_tag(j)} (overlapping shards)")
        seen[i] = d
    n = j0["shard"]["count"]
    missing = [f"{i}/{n}" for i in range(1, n + 1) if i not in seen]
    if missing:
        have = ", ".join(f"{i}/{n}" for i in sorted(seen))
        raise InputError(f"cannot merge: missing shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                         f"(have {have})")


def merged_cells(shards: list[tuple[Path, dict]]) -> tuple[Matrix, list[Cell], dict[str, Path]]:
    """The matrix's cells in its own order, each with the runs of the one shard that ran it."""
    m = Matrix.model_validate(shards[0][1]["matrix"])
    cells = expand(m)
    ids = [c.id for c in cells]
    owner: dict[str, Path] = {}
    runs: dict[str, list] = {}
    skips: dict[str, str | None] = {}
    for d, j in shards:
        want = shard_ids(ids, j["shard"]["index"], j["shard"]["count"])
        if set(j["cell_ids"]) != want:
            raise InputError(f"cannot merge: {d} ran cells {sorted(j['cell_ids'])} but shard {_tag(j)} of its "
                             f"matrix is {sorted(want)}")
        for e in j["cells"]:
            if e.get("id") in owner:
                raise InputError(f"cannot merge: {owner[e['id']]} and {d} both ran cell {e['id']} (overlapping shards)")
            owner[e["id"]], runs[e["id"]] = d, e.get("runs", [])
            skips[e["id"]] = e.get("skip")  # each shard's own host decided what it could run
    for c in cells:
        if c.id not in owner:
            raise InputError(f"cannot merge: cell {c.id} {c.name} is in no shard's matrix.json")
        c.runs, c.skip = runs[c.id], skips[c.id]
    return m, cells, owner


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def adopt_runs(cells: list[Cell], owner: dict[str, Path], mdir: Path, final: Path) -> None:
    """runs/<cell id>/ of each shard into the merged folder; run_dir entries then point there."""
    for c in cells:
        src = owner[c.id] / "runs" / c.id
        if not src.is_dir():
            continue
        shutil.copytree(src, mdir / "runs" / c.id, copy_function=_link_or_copy, symlinks=True)
        for r in c.runs:
            p = Path(r.get("run_dir", ""))
            if p.parent.name == c.id:
                r["run_dir"] = str(final / "runs" / c.id / p.name)
            elif p.name == c.id:
                r["run_dir"] = str(final / "runs" / c.id)


def cli_merge(args) -> int:
    dirs = [Path(d) for d in args.shard_dirs]
    shards = [(d, load_shard(d)) for d in dirs]
    check_shards(shards)
    m, cells, owner = merged_cells(shards)
    root = Path(args.results) if args.results else results_root()
    rd = RunDir(root, f"matrix-{time.strftime('%Y%m%d-%H%M%S')}-{m.name}-merged")
    j0 = shards[0][1]
    (rd.path / "runs").mkdir()
    adopt_runs(cells, owner, rd.path, rd.final)
    meta = {"matrix_id": j0["matrix_id"], "harness_commit": j0["harness_commit"], "shard": {"index": 1, "count": 1},
            "cell_ids": [c.id for c in cells], "matrix": j0["matrix"],
            "merged_from": [{"dir": str(d), "shard": _tag(j)} for d, j in sorted(shards, key=lambda s: s[1]['shard']['index'])]}
    text = write_outputs(rd.path, m, cells, meta)
    rd.finish()
    print(text)
    print(f"matrix results: {rd.final}")
    return EXIT_PASS if all(c.settled for c in cells) else EXIT_FINDING
