"""One YAML loader for every input file (scenario, KERNEL.yaml, matrix): read, apply ``--set KEY=VALUE``
overrides, validate with a pydantic model, and turn any failure into ONE-line InputError that names the file,
the line and the key (or the override that caused it)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from harness.errors import InputError

M = TypeVar("M", bound=BaseModel)
Path_ = tuple[str, ...]


def load_model(path: str | Path, Model: type[M], overrides: Iterable[str] = (), what: str = "file") -> M:
    """Load ``path`` as ``Model``; ``what`` ("scenario", "matrix", ...) only words the unreadable-file error."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise InputError(f"{p}: cannot read {what}: not found") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read {what}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: cannot read {what}: not UTF-8 text (byte {e.start})") from None
    return parse_model(text, str(p), Model, overrides)


def parse_model(text: str, source: str, Model: type[M], overrides: Iterable[str] = ()) -> M:
    """``load_model`` on text already read; ``source`` is the name errors give the text."""
    node, data = _parse(text, source)
    if data is None:
        data = {}  # an empty file: every key at its default
    if not isinstance(data, dict):
        raise InputError(f"{source}: must be a YAML mapping (got {type(data).__name__})")
    lines = _line_index(node)
    set_by: dict[Path_, str] = {}  # key path → the override that gave it its value (errors blame the --set)
    for ov in overrides or ():
        key, value = _parse_override(ov)
        _set_path(data, key, value, ov)
        set_by[tuple(key.split("."))] = ov
    try:
        return Model.model_validate(data)
    except ValidationError as e:
        raise InputError(_describe(e, data, source, lines, set_by)) from None


def _parse(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    # one pass gives both the node tree (for line numbers) and the data
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        col = f" at column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise InputError(f"{where}: malformed YAML{col}: {problem}") from None
    finally:
        loader.dispose()


def _line_index(node: yaml.Node | None, path: Path_ = ()) -> dict[Path_, int]:
    """Map each key path (list items by index) to its 1-based line in the YAML text."""
    out: dict[Path_, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            p = path + (str(k.value),)
            out[p] = k.start_mark.line + 1
            out.update(_line_index(v, p))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            p = path + (str(i),)
            out[p] = v.start_mark.line + 1
            out.update(_line_index(v, p))
    return out


def _parse_override(ov: str) -> tuple[str, Any]:
    if "=" not in ov:
        raise InputError(f"--set {ov}: expected KEY=VALUE")
    key, raw = ov.split("=", 1)
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise InputError(f"--set {ov}: value is not valid YAML: {getattr(e, 'problem', None) or e}") from None


def _set_path(d: dict, dotted: str, value: Any, ov: str) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        if d.get(k) is None:  # absent, or an empty section in the file
            d[k] = {}
        d = d[k]
        if not isinstance(d, dict):
            raise InputError(f"--set {ov}: '{k}' is not a section")
    d[keys[-1]] = value


# ----------------------------------------------------------------------------------------------------------
# ValidationError → one line
# ----------------------------------------------------------------------------------------------------------
def _split(err: Mapping[str, Any], data: Any) -> tuple[Path_, list[tuple[Path_, str]]]:
    """The error's key path in the data, and the union members ("tags") its loc went through.

    pydantic puts a union member's name in loc ('base', 'GitBase', 'git'); those are not keys of the data."""
    path: list[str] = []
    tags: list[tuple[Path_, str]] = []
    cur = data
    loc = err["loc"]
    for i, x in enumerate(loc):
        if isinstance(cur, dict) and any(str(k) == str(x) for k in cur):
            cur = next(v for k, v in cur.items() if str(k) == str(x))
            path.append(str(x))
        elif isinstance(cur, list) and isinstance(x, int) and 0 <= x < len(cur):
            cur = cur[x]
            path.append(str(x))
        elif i == len(loc) - 1 and err["type"] == "missing":
            path.append(str(x))  # the required key itself
        else:
            tags.append((tuple(path), str(x)))
    return tuple(path), tags


def _pick(errors: Sequence[Mapping[str, Any]], data: Any) -> tuple[Mapping[str, Any], Path_]:
    """The one error worth reporting, and its key path.  In a union, keep only the member the input came
    closest to: not a type mismatch of the whole value, then fewest errors (`{git: 1}` is a GitBase with a bad
    git, not a DebianBase with an unknown key)."""
    cands = [(i, e, *_split(e, data)) for i, e in enumerate(errors)]  # (order, error, path, tags)
    level = 0
    while True:  # one union depth at a time: nested unions choose inside the member already chosen
        groups: dict[tuple, dict[str, list]] = {}
        for c in cands:
            tags = c[3]
            if len(tags) > level:
                groups.setdefault((tuple(tags[:level]), tags[level][0]), {}).setdefault(tags[level][1], []).append(c)
        if not groups:
            break
        drop = set()
        for (_, at), members in groups.items():
            def rank(cs, at=at):
                return any(c[2] == at and c[1]["type"] != "missing" for c in cs), len(cs), cs[0][0]
            best = min(members, key=lambda tag: rank(members[tag]))
            drop |= {c[0] for tag, cs in members.items() if tag != best for c in cs}
        cands = [c for c in cands if c[0] not in drop]
        level += 1
    _, err, path, _ = cands[0]
    return err, path


def _longest_prefix(path: Path_, table: dict[Path_, Any]) -> Any:
    return next((table[path[:i]] for i in range(len(path), 0, -1) if path[:i] in table), None)


def _describe(e: ValidationError, data: Any, source: str, lines: dict[Path_, int], set_by: dict[Path_, str]) -> str:
    err, path = _pick(e.errors(), data)
    key = ".".join(path)
    ov = _longest_prefix(path, set_by)
    if ov:
        where = f"--set {ov}"
    else:
        line = _longest_prefix(path, lines)
        where = f"{source}:{line}" if line else source
        under = [o for p, o in set_by.items() if p[:len(path)] == path]  # overrides inside a failing section
        if under:
            where += " (with " + ", ".join(f"--set {o}" for o in under) + ")"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key '{key}'"
    msg = " ".join(err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ").split())
    return f"{where}: key '{key}': {msg}" if key else f"{where}: {msg}"
