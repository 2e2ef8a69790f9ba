"""Console oracle goldens: every corpus log keeps the kind and title it had when the goldens were written.

A changed verdict fails here; if the change is intended, rewrite the goldens with
``pytest tests/unit -k console_golden --update-golden`` (or
``python -m harness.oracles.console_golden --update``) and review the diff.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.oracles import console_golden

DATA = console_golden.CORPUS
GOLDEN = Path(__file__).resolve().parents[1] / "fixtures/console-golden.json"
FILES = console_golden.corpus_files(DATA)


@pytest.fixture(scope="module")
def goldens(request) -> dict[str, dict]:
    if request.config.getoption("--update-golden"):
        console_golden.write(console_golden.compute(DATA), GOLDEN)
    return console_golden.load(GOLDEN)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_golden(path, goldens):
    assert path.name in goldens, f"no golden for {path.name}: rerun with --update-golden"
    _, body = console_golden.parse_case(path)
    assert console_golden.golden_entry(body) == goldens[path.name]


def test_goldens_cover_exactly_the_corpus(goldens):
    assert sorted(goldens) == sorted(p.name for p in FILES)
    assert all(set(g) == {"crash", "kind", "title", "start_line"} for g in goldens.values())


def test_the_corpus_is_there():
    # a missing corpus would parametrize test_golden over nothing: a failure, not a silent pass
    assert len(FILES) >= console_golden.CORPUS_MIN_LOGS, f"console corpus missing or cut short at {DATA}"
