"""Where things live: the repo, the cache (outside results/), the results root."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Cache for kernels, images and build trees, outside the repo so fresh clones (CI) share it.

    HARNESS_CACHE overrides; resolved so that object trees always see one absolute source path (make would
    otherwise rebuild everything when the same tree is reached through a symlink)."""
    xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    d = Path(os.environ.get("HARNESS_CACHE", xdg / "kvm-dirty-harness")).resolve()
    d.mkdir(parents=True, exist_ok=True)  # resolved first: a symlinked cache whose target is gone is recreated
    return d


def results_root() -> Path:
    return Path(os.environ.get("HARNESS_RESULTS", REPO / "results"))
