"""Where things live: the repo, the cache (outside results/), the results root."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Cache for kernels, images and build trees; git-ignored inside the repo unless overridden."""
    d = Path(os.environ.get("HARNESS_CACHE", REPO / ".cache"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def results_root() -> Path:
    return Path(os.environ.get("HARNESS_RESULTS", REPO / "results"))
