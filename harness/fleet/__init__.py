"""Orchestration over many runs: the matrix (matrix/), merging shard folders (merge), bisecting a series (bisect),
running on another machine (remote), LAVA job definitions (lava), performance figures (bench) and the LKDTM
recorder (lkdtm).  Above the stages: each of these drives `harness run` (or a stage) and reads its results; no
stage imports from here."""
