"""Golden classifier output for every log of the shared console corpus.

``python -m harness.oracles.console_golden`` checks the classifier against
``tests/fixtures/console-golden.json`` (exit 1 on any difference);
``--update`` rewrites the goldens from the current classifier.  Review the
diff of an update like code: every changed line is a changed verdict.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness.oracles.console import classify
from harness.paths import REPO

# syzkaller's real console logs, vendored with their licence (tests/fixtures/console-corpus/README.md)
CORPUS = REPO / "tests/fixtures/console-corpus"
CORPUS_MIN_LOGS = 498  # as vendored: fewer means the corpus was lost, and its tests would pass vacuously
GOLDEN = REPO / "tests/fixtures/console-golden.json"


def parse_case(path: Path) -> tuple[dict[str, str], str]:
    """A corpus file is label lines ("TITLE: ...", "TYPE: ..."), a blank line, then the console log.

    A file that opens with the blank line has no labels (a negative case); its whole rest is the log.
    """
    raw = path.read_bytes().decode("utf-8", errors="replace")
    head, _, body = raw.partition("\n") if raw.startswith("\n") else raw.partition("\n\n")
    labels: dict[str, str] = {}
    for line in head.splitlines():
        key, _, value = line.partition(":")
        labels.setdefault(key.strip(), value.strip())
    return labels, body


def corpus_files(corpus: Path = CORPUS) -> list[Path]:
    """The corpus logs in numeric order (1.log, 2.log, ..., 10.log), so goldens diff readably."""
    if not corpus.is_dir():
        return []
    def numeric_first(p: Path) -> tuple[int, int, str]:
        return (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.name)
    return sorted(corpus.glob("*.log"), key=numeric_first)


def golden_entry(body: str) -> dict[str, Any]:
    rep = classify(body)
    return {"crash": rep.crash, "kind": rep.kind, "title": rep.title, "start_line": rep.start_line}


def compute(corpus: Path = CORPUS) -> dict[str, dict[str, Any]]:
    return {p.name: golden_entry(parse_case(p)[1]) for p in corpus_files(corpus)}


def load(path: Path = GOLDEN) -> dict[str, dict[str, Any]]:
    goldens: dict[str, dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return goldens


def write(goldens: dict[str, dict[str, Any]], path: Path = GOLDEN) -> None:
    # one log per line: a changed verdict is a one-line diff
    rows = [f"  {json.dumps(name)}: {json.dumps(entry, ensure_ascii=False)}" for name, entry in goldens.items()]
    path.write_text("{\n" + ",\n".join(rows) + "\n}\n", encoding="utf-8")


def diff(want: dict[str, dict[str, Any]], got: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for name in sorted(want.keys() | got.keys()):
        if want.get(name) != got.get(name):
            out.append(f"{name}: golden {want.get(name)} != now {got.get(name)}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.oracles.console_golden")
    ap.add_argument("--update", action="store_true", help="rewrite the goldens from the current classifier")
    args = ap.parse_args(argv)
    got = compute()
    if not got:
        print(f"console corpus not found at {CORPUS}", file=sys.stderr)
        return 2
    if args.update:
        write(got)
        print(f"wrote {len(got)} goldens to {GOLDEN}")
        return 0
    problems = diff(load(), got)
    for line in problems:
        print(line)
    print(f"{len(got)} logs, {len(problems)} differ from {GOLDEN.name}")
    return 1 if problems else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
