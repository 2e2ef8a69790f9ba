"""`harness matrix`: kernels × knob variants × seeds, each cell with a declared expectation.

A cell expected to find (`expect: finding`) runs seed after seed until it finds or its budget ends (and stops
each run at the first lost write); a cell expected clean runs its whole budget.  Outputs in
results/matrix-<id>/: matrix.json, summary.txt, junit.xml (one test case per cell), heatmap.png (kernels ×
variants, named by each variant's `label:` or its knobs; green as expected, red mismatch, grey not run), runs/.
Mutation score = mutants caught / mutants that can run here; false positives = finding runs in clean cells.

The parts: model.py (the file's model and the cell), expansion.py (matrix → cells, overrides, seeds, host skips,
kernels), scoring.py (mutation score, evidence), outputs.py (matrix.json, summary, JUnit, heat map), cli.py
(`harness matrix`), requires.py (a group's `requires:`: what its cells need of the host; a cell this host cannot
give that to is `skipped` with the reason, never run, never a pass, never in the mutation score), shard.py (stable
cell ids, --list, --shard I/N), jobs.py (every run a `harness run` child, up to --jobs at once).  `harness merge`
joins shard folders (harness.fleet.merge).

This package re-exports the names callers use; patch a name where it is looked up (e.g. cli.resolve), not here.
"""
from harness.fleet.matrix.expansion import (
                                            cell_overrides,
                                            check_requirements,
                                            expand,
                                            mark_skips,
                                            overrides_of,
                                            resolve,
                                            seeds_of,
)
from harness.fleet.matrix.model import (
                                            Cell,
                                            Group,
                                            KernelRef,
                                            Matrix,
                                            load_matrix,
                                            split_label,
                                            variant_label,
)
from harness.fleet.matrix.outputs import (
                                            GREEN,
                                            GREY,
                                            HEAT_RGB,
                                            RED,
                                            heatmap,
                                            heatmap_grid,
                                            junit,
                                            save,
                                            summary,
                                            write_outputs,
)
from harness.fleet.matrix.scoring import (
                                            evidence,
                                            headline,
                                            retry_rates,
                                            run_entry,
                                            score,
)

__all__ = ["Cell", "GREEN", "GREY", "Group", "HEAT_RGB", "KernelRef", "Matrix", "RED", "cell_overrides",
           "check_requirements", "evidence", "expand", "headline", "heatmap", "heatmap_grid", "junit", "load_matrix",
           "mark_skips", "overrides_of", "resolve", "retry_rates", "run_entry", "save", "score", "seeds_of",
           "split_label", "summary", "variant_label", "write_outputs"]
