"""A matrix's identity and its shards: stable cell ids, `--list`, `--shard I/N`.

A shard is a deterministic share of the cells (by their sorted ids, so it does not depend on the YAML's order
or on which machine computes it); its folder records what `harness merge` needs to refuse a wrong join: the
matrix id (a hash of the matrix YAML + the scenario YAML), the harness commit, I/N and the cell ids it ran.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from harness.errors import InputError
from harness.paths import REPO
from harness.util import change_identity

SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str | None) -> tuple[int, int]:
    """'I/N' (1-based) → (I, N); None → the whole matrix (1, 1)."""
    if text is None:
        return 1, 1
    mt = SHARD_RE.match(str(text))
    if not mt or not 1 <= int(mt.group(1)) <= int(mt.group(2)):
        raise InputError(f"--shard must be I/N with 1 <= I <= N (got '{text}')")
    return int(mt.group(1)), int(mt.group(2))


def shard_ids(ids: list[str], index: int, count: int) -> set[str]:
    """The ids of shard index/count: position % count == index - 1 in the sorted ids."""
    return {cid for i, cid in enumerate(sorted(ids)) if i % count == index - 1}


def shard_cells(cells: list, index: int, count: int) -> list:
    """The shard's cells, in the matrix's own order."""
    mine = shard_ids([c.id for c in cells], index, count)
    return [c for c in cells if c.id in mine]


def list_text(cells: list) -> str:
    """One line per cell: id, expectation, name, and `# SKIP why` for a cell this host cannot run (its group's
    requires:, harness.fleet.matrix.requires)."""
    return "".join(f"{c.id}  {c.expect:13}  {c.name}" + (f"  # SKIP {c.skip}" if getattr(c, "skip", None) else "")
                   + "\n" for c in cells)


def matrix_id(matrix_yaml: Path, scenario_yaml: Path) -> str:
    h = hashlib.sha256(Path(matrix_yaml).read_bytes() + b"\0" + Path(scenario_yaml).read_bytes())
    return h.hexdigest()[:16]


def harness_commit() -> str:
    """The harness's change identity (HEAD, '-dirty' when a tracked file differs): shards of one matrix must agree."""
    return change_identity(REPO)


def identity(matrix_yaml: Path, scenario_yaml: Path, m, index: int, count: int, cells: list) -> dict:
    """The matrix folder's identity fields in matrix.json (`m`, the Matrix, lets a merge rebuild the cells)."""
    return {"matrix_id": matrix_id(matrix_yaml, scenario_yaml), "harness_commit": harness_commit(),
            "shard": {"index": index, "count": count}, "cell_ids": [c.id for c in cells],
            "matrix": m.model_dump(mode="json")}
