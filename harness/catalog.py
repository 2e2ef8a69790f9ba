"""The scenario and matrix files by name: `harness run default`, `harness matrix nightly`, `harness list`.

A reference the user types is a path (resolved against the current directory, as a shell would) or a name (the
file's stem in the repository's scenarios/: `default` is scenarios/default.yaml, wherever the command runs).  A
path that does not exist but whose name is one of scenarios/ is taken from there too (`harness run default.yaml`
from any directory).  Each file says what it is for in its first comment paragraph (or a `purpose:` /
`description:` key): its first sentence is the one-line purpose `harness list` shows.  A file with `kernels:` or
`groups:` is a matrix; any other mapping is a scenario.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from harness.errors import InputError
from harness.paths import REPO

SCENARIOS = REPO / "scenarios"
MATRIX_KEYS = ("kernels", "groups")
PURPOSE_MAX = 110  # characters of purpose on one `harness list` line


def resolve(ref: str | None, default: str = "default") -> tuple[Path, str]:
    """(the file, the reference to show the user: its name when it is one of scenarios/, else the path)."""
    if ref is None:
        ref = default
    p = Path(ref).expanduser()
    if p.is_file():
        return p, display_ref(p)
    named = SCENARIOS / (ref if ref.endswith((".yaml", ".yml")) else f"{ref}.yaml")
    if "/" not in ref and named.is_file():
        return named, named.stem
    if "/" in ref or ref.endswith((".yaml", ".yml")):
        raise InputError(f"{ref}: no such file (relative paths are from the current directory; names from "
                         f"scenarios/: harness list)")
    raise InputError(f"no scenario or matrix named '{ref}' (harness list shows them: {', '.join(names())})")


def display_ref(path: Path) -> str:
    """A file of scenarios/ by its name, any other by its path as given."""
    try:
        if path.resolve().parent == SCENARIOS.resolve() and path.suffix == ".yaml":
            return path.stem
    except OSError:
        pass
    return str(path)


def names() -> list[str]:
    return sorted(p.stem for p in SCENARIOS.glob("*.yaml"))


def read_mapping(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}  # the loader proper (harness.yamlload) says what is wrong, with the line
    return data if isinstance(data, dict) else {}


def kind_of(data: dict) -> str:
    if "base" in data:  # KERNEL.yaml (harness.kernel.source.KernelSpec): a kernel, for --build
        return "kernel"
    return "matrix" if any(k in data for k in MATRIX_KEYS) else "scenario"


def check_kind(path: Path, ref: str, want: str) -> None:
    """One line when a matrix is given to `run` (or a scenario to `matrix`), instead of a schema error."""
    got = kind_of(read_mapping(path))
    if got == want:
        return
    if got == "kernel":
        raise InputError(f"{ref} is a KERNEL.yaml (a kernel to build), not a {want}: harness run --build {ref}")
    if want == "matrix":
        raise InputError(f"{ref} is a scenario (one run), not a matrix (kernels x knobs x seeds): "
                         f"harness run {ref}")
    raise InputError(f"{ref} is a matrix (kernels x knobs x seeds), not a scenario: harness matrix {ref}")


def resolve_kind(ref: str | None, want: str, default: str = "default") -> tuple[Path, str]:
    path, shown = resolve(ref, default)
    check_kind(path, shown, want)
    return path, shown


def purpose(text: str, data: dict | None = None) -> str:
    """The first sentence of the file's leading comment paragraph (or of a purpose:/description: key)."""
    data = data or {}
    for key in ("purpose", "description"):
        if isinstance(data.get(key), str) and data[key].strip():
            return first_sentence(data[key])
    para = []
    for line in text.splitlines():
        s = line.strip()
        if not s.startswith("#"):
            break
        para.append(s.lstrip("#").strip())
    return first_sentence(" ".join(para))


def first_sentence(text: str) -> str:
    text = " ".join(text.split())
    m = re.search(r"\. (?=[A-Z`(\[])", text)  # a full stop before a capital: a sentence's end, not "e.g. the"
    s = text[:m.start() + 1] if m else text
    return s if len(s) <= PURPOSE_MAX else s[:PURPOSE_MAX - 1].rstrip() + "…"


def catalog() -> list[dict]:
    out = []
    for p in sorted(SCENARIOS.glob("*.yaml")):
        text = p.read_text()
        data = read_mapping(p)
        out.append({"name": p.stem, "kind": kind_of(data), "path": str(p.relative_to(REPO)),
                    "purpose": purpose(text, data)})
    return out


def list_text(rows: list[dict]) -> str:
    width = max((len(r["name"]) for r in rows), default=0)
    lines = []
    for kind, how in (("scenario", "harness run NAME"), ("matrix", "harness matrix NAME")):
        lines.append(f"{kind} files ({how}):")
        lines += [f"  {r['name']:{width}}  {r['purpose']}" for r in rows if r["kind"] == kind]
    return "\n".join(lines) + "\n"


def cli_list(as_json: bool = False) -> int:
    import json
    import sys
    rows = catalog()
    sys.stdout.write(json.dumps(rows, indent=1) + "\n" if as_json else list_text(rows))
    return 0
