"""reproduce.sh: one file that rebuilds and reruns a case on another machine with a checkout of the project.

The script embeds the kernel recipe (every patch, the defconfig and every kconfig fragment, each with its
sha256, plus the expected .config sha256; or the Debian prebuilt package name, version and sha256), the
scenario YAML with its overrides and seed, and the harness commit. ``sh reproduce.sh --check-only`` recreates
and checks the files and stops; ``sh reproduce.sh`` also builds (or takes from the cache) the same kernel,
checks its .config, and reruns the case (exit code of the run). ``harness reproduce RUN_DIR --tries N`` runs it
N times and records the reproduction rate in run.json.
"""
from __future__ import annotations

import base64
import datetime as _dt
import gzip
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from harness.errors import EXIT_INFRA, EXIT_INPUT, InputError
from harness.paths import REPO, cache_dir
from harness.report.results import VERDICT_EXIT, load_run, write_run_json
from harness.util import UNKNOWN_COMMIT, change_identity, commit_of

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------------------------
# the recipe of a kernel (read-only look-ups: the KERNEL.yaml, the cache, the base tree)
# ----------------------------------------------------------------------------------------------------------
def _candidate_patches(meta: dict) -> dict[str, Path]:
    """sha256 -> a file holding that patch: the KERNEL.yaml's series if it still exists, else the cache."""
    found: dict[str, Path] = {}
    ky = meta.get("kernel_yaml")
    if ky and Path(ky).is_file():
        from harness.kernel import series, source
        try:
            inputs = source.load_kernel_yaml(Path(ky))
            if not isinstance(inputs.spec.series, source.B4Series):   # b4 would go to the network
                for p in series.read_series(inputs):
                    found.setdefault(p.sha256, p.path)
        except Exception:  # noqa: BLE001 - an edited KERNEL.yaml: fall back to the cache
            pass
    want = {p.get("sha256") for p in meta.get("patches", [])} - set(found)
    for sub in ("series", "reproduce"):
        if not want:
            break
        for f in (cache_dir() / sub).glob("**/*"):
            if f.is_file() and f.stat().st_size < 16 << 20:
                h = _sha(f.read_bytes())
                if h in want:
                    found[h] = f
                    want.discard(h)
    return found


def _patch_files(meta: dict, problems: list[str]) -> list[tuple[str, bytes, dict]]:
    """(name in the recreated series, content, meta entry) per patch, in order."""
    have = _candidate_patches(meta) if meta.get("patches") else {}
    out, used = [], set()
    for i, p in enumerate(meta.get("patches", []), 1):
        name = Path(str(p.get("file", ""))).name
        if not _SAFE.fullmatch(name) or name in used or name == "series":
            name = f"{i:04d}.patch"
        used.add(name)
        path = have.get(p.get("sha256"))
        if path is None:
            problems.append(f"patch {i} {p.get('file')} ({p.get('subject')!r}, sha256 {p.get('sha256')}) "
                            "not found: its KERNEL.yaml series changed and no cached copy has that sha256")
            continue
        out.append((name, path.read_bytes(), p))
    return out


def _defconfig(meta: dict, problems: list[str]) -> tuple[str, bytes | None]:
    """(value for the recreated KERNEL.yaml, the defconfig's text for the record or None).

    A name found in the base tree stays a name (the base is pinned by its sha256, and the same string keeps
    the build's input key, so a machine that has the kernel cached gets a cache hit); a path is embedded."""
    name = str(meta.get("defconfig") or "x86_64_defconfig")
    raw_base = meta.get("base")
    base = raw_base if isinstance(raw_base, dict) else {}
    tree = cache_dir() / "src" / str(base.get("id", ""))
    commit = base.get("base_commit")
    if commit and (tree / ".git").exists() and "/" not in name:
        for d in ("arch/x86/configs", "arch/x86_64/configs"):
            r = subprocess.run(["git", "-C", str(tree), "show", f"{commit}:{d}/{name}"], capture_output=True)
            if r.returncode == 0:
                return name, r.stdout
    ky = meta.get("kernel_yaml")
    p = Path(os.path.expanduser(name))
    if not p.is_absolute() and ky:
        p = (Path(ky).parent / p).resolve()
    if p.is_file() and ("/" in name or not commit):
        return f"defconfig/{_safe_name(p.name, 'defconfig')}", p.read_bytes()
    if "/" in name:
        problems.append(f"defconfig {name} not found")
    return name, None


def _safe_name(name: str, default: str) -> str:
    return name if _SAFE.fullmatch(name) else default


def _fragments(meta: dict, problems: list[str]) -> list[tuple[str, bytes]]:
    out = []
    for i, f in enumerate(meta.get("fragments", []), 1):
        p = Path(f)
        if not p.is_file():
            problems.append(f"config fragment {f} not found")
            continue
        # keep the file name: the configure cache is keyed by (name, text)
        out.append((f"fragments/{i}/{_safe_name(p.name, f'fragment{i}.config')}", p.read_bytes()))
    return out


def _inputs_match(meta: dict, patches, frags) -> bool | None:
    """Do the files found now give the build's input key (so they are exactly what was built)?"""
    if not meta.get("input_key") or not isinstance(meta.get("base"), dict):
        return None
    from harness.kernel.build import input_key
    mv = [v for v in meta.get("make_vars", []) if not v.startswith("KERNELRELEASE=")]
    texts = [(Path(rel).name, data.decode(errors="replace")) for rel, data in frags]
    key = input_key(meta["base"].get("id", ""), [p["sha256"] for _, _, p in patches], str(meta.get("defconfig")),
                    texts, mv, meta.get("compiler", ""))
    return key == meta["input_key"]


def _apt_sha256(package: str, version: str) -> str | None:
    """SHA256 of a .deb from the local apt lists (no network)."""
    try:
        out = subprocess.run(["apt-cache", "show", f"{package}={version}"], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"^SHA256: ([0-9a-f]{64})$", out, re.M)
    return m.group(1) if m else None


def _file_sha(path) -> str | None:
    try:
        return _sha(Path(path).read_bytes())
    except (OSError, TypeError):
        return None


def kernel_recipe(meta: dict) -> dict:
    """What reproduce.sh embeds for the kernel: {kind, files: [(relpath, bytes)], problems, ...}."""
    kdir = meta.get("dir")
    rec: dict = {"kind": meta.get("source", "folder"), "release": meta.get("release"), "files": [],
                 "problems": [], "bzimage_sha256": _file_sha(Path(kdir) / "bzImage") if kdir else None,
                 "dir": kdir}
    if rec["kind"] == "debian-prebuilt":
        deb = str(meta.get("deb", ""))
        parts = deb.removesuffix(".deb").split("_")
        rec.update(package=meta.get("package"), deb=deb, version=parts[1] if len(parts) == 3 else None)
        rec["deb_sha256"] = _apt_sha256(rec["package"], rec["version"]) if rec["version"] else None
        return rec
    if rec["kind"] == "debian-package":         # harness run --kernel debian:<exact version>
        rec.update(package=meta.get("package"), version=meta.get("version"), deb_sha256=meta.get("sha256"),
                   packages=(meta.get("base") or {}).get("packages", []))
        return rec
    if rec["kind"] in ("tree", "tree-build") and (meta.get("change") or {}).get("git"):
        return _tree_recipe(meta, rec)
    if rec["kind"] != "build" or not isinstance(meta.get("base"), dict):
        return dict(rec, kind="folder")
    problems = rec["problems"]
    patches = _patch_files(meta, problems)
    defconfig, deftext = _defconfig(meta, problems)
    frags = _fragments(meta, problems)
    files = [(f"patches/{n}", data) for n, data, _ in patches]
    if patches:
        files.append(("patches/series", "".join(n + "\n" for n, _, _ in patches).encode()))
    if deftext is not None:
        files.append((defconfig if "/" in defconfig else f"defconfig/{defconfig}", deftext))
    files += frags
    base = meta["base"]
    rec.update(base={k: base.get(k) for k in ("kind", "id", "package", "package_version", "tarball", "sha256",
                                              "from", "deb", "deb_sha256", "git", "ref", "commit",
                                              "base_commit", "version") if base.get(k)},
               patches=[dict(p, name=n) for n, _, p in patches], defconfig=defconfig,
               defconfig_embedded=deftext is not None, fragments=[r for r, _ in frags],
               config_sha256=meta.get("config_sha256"), key=meta.get("key"), compiler=meta.get("compiler"),
               files=files, inputs_match=_inputs_match(meta, patches, frags))
    config = Path(kdir) / "config" if kdir else None
    if config and config.is_file() and _file_sha(config) == meta.get("config_sha256"):
        rec["config_gz"] = gzip.compress(config.read_bytes(), 9, mtime=0)   # for a diff when they differ
    return rec


def _tree_recipe(meta: dict, rec: dict) -> dict:
    """A developer's tree: its HEAD commit, the uncommitted diff and the final .config, embedded; the rebuild
    is a clone at that commit + the diff, built with exactly that .config."""
    ch = meta["change"]
    files, problems = [], rec["problems"]
    if ch.get("diff_sha256"):
        if ch.get("diff") is None:
            problems.append(f"the uncommitted diff (sha256 {ch['diff_sha256']}, {ch.get('diff_bytes')} bytes) was "
                            "too large to embed in run.json")
        else:
            files.append(("change.diff", ch["diff"].encode()))
    config = Path(str(meta.get("dir", ""))) / "config"
    if config.is_file():
        files.append(("tree.config", config.read_bytes()))
    else:
        problems.append(f"the kernel's .config ({config}) is gone: no config to rebuild with")
    rec.update(kind="tree", files=files, config_sha256=meta.get("config_sha256") or _file_sha(config),
               tree={"repo": ch.get("repo"), "path": ch.get("path"), "commit": (ch.get("head") or {}).get("sha"),
                     "describe": ch.get("describe"), "diff_sha256": ch.get("diff_sha256")})
    return rec


_TREE = r'''
git_src=${HARNESS_TREE_GIT:-$TREE_GIT}
git -C "$git_src" rev-parse --git-dir >/dev/null 2>&1 || die 2 "the tree's repository $git_src is not here (set HARNESS_TREE_GIT to a clone holding $TREE_COMMIT)"
src="$work/src"
[ -d "$src/.git" ] || git clone -q --shared --no-checkout "$git_src" "$src" || die 3 "git clone $git_src failed"
git -C "$src" cat-file -e "$TREE_COMMIT^{commit}" 2>/dev/null || die 2 "commit $TREE_COMMIT ($TREE_DESCRIBE) is not in $git_src (push it there, or set HARNESS_TREE_GIT)"
git -C "$src" -c advice.detachedHead=false checkout -q -f --detach "$TREE_COMMIT"
git -C "$src" clean -q -f -d
if [ -f "$work/change.diff" ]; then
  git -C "$src" apply --binary "$work/change.diff" || mismatch "the embedded uncommitted diff does not apply on $TREE_COMMIT"
fi
echo "reproduce.sh: building $TREE_DESCRIBE with the run's .config (olddefconfig only)" >&2
art=$("$py" -c 'import sys; from pathlib import Path; from harness.kernel.tree import tree_kernel
print(tree_kernel(Path(sys.argv[1]), True, config_file=Path(sys.argv[2]), log=lambda m: print(m, file=sys.stderr)))' "$src" "$work/tree.config") || die $? "the kernel build failed"
art=$(printf '%s\n' "$art" | tail -n 1)
got=$(sha256sum "$art/config" | cut -d' ' -f1)
if [ "$got" != "$CONFIG_SHA256" ]; then
  diff "$work/tree.config" "$art/config" | grep '^[<>]' | head -n 20 >&2 || :
  mismatch "built .config sha256 $got differs from the run's $CONFIG_SHA256 ($art/config)"
fi
"$py" - "$art/meta.json" "$TREE_COMMIT" "$DIFF_SHA256" <<'PY' || mismatch "the rebuilt tree is not the run's change (see above)"
import json, sys
ch = json.load(open(sys.argv[1])).get("change") or {}
got = ((ch.get("head") or {}).get("sha"), ch.get("diff_sha256") or "")
if got != (sys.argv[2], sys.argv[3]):
    print(f"reproduce.sh: rebuilt commit/diff {got}, the run's {(sys.argv[2], sys.argv[3])}", file=sys.stderr)
    sys.exit(1)
PY
echo "reproduce.sh: kernel $art: commit, uncommitted diff and .config sha256 match" >&2
rc=0
harness run "$work/scenario.yaml" --kernel "$art" --seed "$SEED" "$@" || rc=$?
exit $rc
'''


# ----------------------------------------------------------------------------------------------------------
# the script
# ----------------------------------------------------------------------------------------------------------
def _embed(rel: str, data: bytes) -> str:
    """Shell lines that write `data` to $work/rel and check its sha256: a readable heredoc when the bytes
    survive one exactly, base64 otherwise."""
    sha = _sha(data)
    tag = f"HARNESS_EOF_{sha[:12]}"
    try:
        text = data.decode()
    except UnicodeDecodeError:
        text = None
    d = os.path.dirname(rel)
    mk = f'mkdir -p "$work/{d}"\n' if d else ""
    if text is not None and text.endswith("\n") and "\r" not in text and "\0" not in text \
            and tag not in text.splitlines():
        return f"{mk}cat > \"$work/{rel}\" <<'{tag}'\n{text}{tag}\ncheck {rel} {sha}\n"
    b64 = base64.encodebytes(data).decode()
    return f"{mk}base64 -d > \"$work/{rel}\" <<'{tag}'\n{b64}{tag}\ncheck {rel} {sha}\n"


_PRELUDE = r'''set -eu
mode=run
case "${1:-}" in
  --check-only) mode=check ;;
  --print-recipe) mode=print ;;
  ""|--run) ;;
  *) echo "usage: sh reproduce.sh [--check-only | --print-recipe]" >&2; exit 2 ;;
esac
die() { rc=$1; shift; echo "reproduce.sh: error: $*" >&2; exit "$rc"; }
mismatch() {  # a recipe check failed: this is not the run's case (exit 2) unless HARNESS_REPRO_FORCE=1
  echo "reproduce.sh: error: $*" >&2
  [ "${HARNESS_REPRO_FORCE:-0}" = 1 ] || exit 2
  echo "reproduce.sh: HARNESS_REPRO_FORCE=1: going on anyway" >&2
}
warn() { echo "reproduce.sh: warning: $*" >&2; }
# empty variables mean "not set" (an empty HARNESS_CACHE would be the current folder)
[ -n "${HARNESS_CACHE:-}" ] || unset HARNESS_CACHE
[ -n "${HARNESS_RESULTS:-}" ] || unset HARNESS_RESULTS
if [ "$mode" = print ]; then recipe_json; exit 0; fi
if [ -n "${HARNESS_REPRO_DIR:-}" ]; then work=$HARNESS_REPRO_DIR
elif [ "$mode" = check ]; then work="$PWD/reproduce-$RUN_ID"
else work="${HARNESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvm-dirty-harness}/reproduce/$RUN_ID"
fi
mkdir -p "$work"
work=$(cd "$work" && pwd)
: > "$work/MANIFEST.sha256"
check() {  # FILE SHA256: the recreated file must be byte-identical to the one the run used
  got=$(sha256sum "$work/$1" | cut -d' ' -f1)
  [ "$got" = "$2" ] || mismatch "$1: sha256 $got, expected $2 (the embedded copy was altered)"
  echo "$2  $1" >> "$work/MANIFEST.sha256"
}
'''

_HARNESS = r'''
repo=${HARNESS_REPO:-__REPO__}
[ -d "$repo/harness" ] || die 2 "HARNESS_REPO=$repo is not a checkout of kvm-dirty-harness"
repo=$(cd "$repo" && pwd)
if [ -x "$repo/.venv/bin/python" ]; then py="$repo/.venv/bin/python"; else py=python3; fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
harness() { "$py" -m harness "$@"; }
here=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
case "$here" in "$HARNESS_COMMIT"*) ;; *) warn "the checkout is at $here, the run was made at $HARNESS_COMMIT" ;; esac
# the scenario must resolve to what the run used (a checkout with other defaults is another case)
"$py" - "$work/scenario.yaml" "$work/scenario.resolved.yaml" "seed=$SEED" "$@" <<'PY' || mismatch "the scenario resolves differently in this checkout (see above)"
import json, sys, yaml
from harness.config import load_scenario
ovs = [a for a in sys.argv[3:] if a != "--set"]
got = json.loads(json.dumps(load_scenario(sys.argv[1], ovs).model_dump(), default=str))
want = yaml.safe_load(open(sys.argv[2]))
diff = [k for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)]
for k in diff:
    print(f"reproduce.sh: scenario {k}: run {want.get(k)!r}, here {got.get(k)!r}", file=sys.stderr)
sys.exit(1 if diff else 0)
PY
'''


def _shell_str(s) -> str:
    return shlex.quote(str(s if s is not None else ""))


def _kernel_yaml_lines(rec: dict) -> str:
    """Shell that writes $work/KERNEL.yaml (the base line may name a file of this machine)."""
    b = rec["base"]
    rest = {"series": "patches" if rec["patches"] else None, "upto": None, "defconfig": rec["defconfig"],
            "fragments": rec["fragments"]}
    body = yaml.safe_dump(rest, sort_keys=False, default_flow_style=None)
    if b["kind"] == "debian-source":
        base = f"printf 'base: {{debian-source: \"%s\"}}\\n' {_shell_str(_debian_source_request(b))}"
    elif b["kind"] == "tarball":
        base = "printf 'base: {tarball: \"%s\"}\\n' \"$base_tarball\""
    else:
        base = f"printf 'base: {{git: \"%s\", ref: \"%s\"}}\\n' \"$base_git\" {_shell_str(b.get('commit'))}"
    return (f"{{ echo '# recreated by reproduce.sh of run '\"$RUN_ID\"; {base}\n  cat <<'HARNESS_EOF_KERNEL'\n"
            f"{body}HARNESS_EOF_KERNEL\n}} > \"$work/KERNEL.yaml\"\n")


def _debian_source_request(b: dict) -> str:
    """The exact package version ("6.12.117-1~deb12u1") when the checkout can fetch one, else the series."""
    series = str(b.get("package", "")).removeprefix("linux-source-")
    ver = str(b.get("package_version") or "")
    try:
        from harness.kernel import debian
        if ver and debian.parse_request(ver).kind == "exact" and debian.parse_request(ver).series == series:
            return ver
    except Exception:  # noqa: BLE001 - a checkout without pinned versions: the series (the sha256 check decides)
        pass
    return series


def _base_vars(rec: dict) -> str:
    b = rec["base"]
    if b["kind"] == "debian-source":
        return (f"base_tarball={_shell_str(b.get('tarball'))}\nbase_sha256={_shell_str(b.get('sha256'))}\n"
                f"base_what={_shell_str(str(b.get('package')) + ' ' + str(b.get('package_version')))}\n")
    if b["kind"] == "tarball":
        return (f"base_tarball=${{HARNESS_BASE_TARBALL:-{_shell_str(b.get('tarball'))}}}\n"
                f"base_sha256={_shell_str(b.get('sha256'))}\nbase_what='the base tarball (HARNESS_BASE_TARBALL)'\n")
    return f"base_git=${{HARNESS_BASE_GIT:-{_shell_str(b.get('git'))}}}\nbase_tarball=\n"


_BUILD = r'''
check_base() {
  [ -n "$base_tarball" ] || return 0
  [ -f "$base_tarball" ] || return 0
  got=$(sha256sum "$base_tarball" | cut -d' ' -f1)
  [ "$got" = "$base_sha256" ] || mismatch "base $base_tarball: sha256 $got, expected $base_sha256 ($base_what)"
}
check_base
echo "reproduce.sh: building (or taking from the cache) the kernel of $work/KERNEL.yaml" >&2
art=$(harness build "$work/KERNEL.yaml") || die $? "the kernel build failed"
art=$(printf '%s\n' "$art" | tail -n 1)
"$py" - "$art/meta.json" "$BASE_ID" <<'PY' || mismatch "the kernel was built from another base (see above)"
import json, sys
base = json.load(open(sys.argv[1])).get("base", {})
if base.get("id") != sys.argv[2]:
    print(f"reproduce.sh: base {base.get('id')} {base.get('package_version', '')}, the run's was {sys.argv[2]}",
          file=sys.stderr)
    sys.exit(1)
PY
got=$(sha256sum "$art/config" | cut -d' ' -f1)
if [ "$got" != "$CONFIG_SHA256" ]; then
  if [ -f "$work/expected.config" ]; then diff "$work/expected.config" "$art/config" | grep '^[<>]' | head -n 20 >&2 || :; fi
  mismatch "built .config sha256 $got differs from the run's $CONFIG_SHA256 ($art/config; '<' = the run's, '>' = this build's; the run's compiler: $COMPILER)"
fi
[ "$(basename "$art")" = "$KERNEL_KEY" ] || warn "kernel key $(basename "$art"), the run's was $KERNEL_KEY"
echo "reproduce.sh: kernel $art: .config sha256 matches" >&2
rc=0
harness run "$work/scenario.yaml" --build "$work/KERNEL.yaml" --seed "$SEED" "$@" || rc=$?
exit $rc
'''

_PREBUILT = r'''
kdir=$("$py" -c 'from harness.kernel.prebuilt import ensure_prebuilt_kernel as e; print(e())') || die 3 "cannot fetch Debian's prebuilt kernel ($PACKAGE $VERSION)"
grep -qF "\"package\": \"$PACKAGE\"" "$kdir/meta.json" || mismatch "the prebuilt kernel here ($kdir) is not $PACKAGE"
grep -qF "\"deb\": \"$DEB\"" "$kdir/meta.json" || mismatch "the prebuilt kernel here ($kdir) is not from $DEB (version $VERSION)"
if [ -n "$DEB_SHA256" ] && command -v apt-cache >/dev/null; then
  got=$(apt-cache show "$PACKAGE=$VERSION" 2>/dev/null | sed -n 's/^SHA256: //p' | head -n 1)
  [ -z "$got" ] || [ "$got" = "$DEB_SHA256" ] || mismatch "$PACKAGE $VERSION: apt says sha256 $got, the run's was $DEB_SHA256"
fi
got=$(sha256sum "$kdir/bzImage" | cut -d' ' -f1)
[ -z "$BZIMAGE_SHA256" ] || [ "$got" = "$BZIMAGE_SHA256" ] || mismatch "$kdir/bzImage: sha256 $got, expected $BZIMAGE_SHA256"
rc=0
harness run "$work/scenario.yaml" --seed "$SEED" "$@" || rc=$?
exit $rc
'''

_DEBPKG = r'''
kdir=$("$py" -c 'import sys; from harness.kernel.debian import ensure_debian_kernel as e; print(e(sys.argv[1]))' "$VERSION") || die 3 "cannot fetch Debian's kernel $PACKAGE $VERSION"
grep -qF "\"sha256\": \"$DEB_SHA256\"" "$kdir/meta.json" || mismatch "the Debian kernel here ($kdir) is not $PACKAGE $VERSION with sha256 $DEB_SHA256"
got=$(sha256sum "$kdir/bzImage" | cut -d' ' -f1)
[ -z "$BZIMAGE_SHA256" ] || [ "$got" = "$BZIMAGE_SHA256" ] || mismatch "$kdir/bzImage: sha256 $got, expected $BZIMAGE_SHA256"
rc=0
harness run "$work/scenario.yaml" --kernel "debian:$VERSION" --seed "$SEED" "$@" || rc=$?
exit $rc
'''

_FOLDER = r'''
kdir=${HARNESS_KERNEL_DIR:-$KERNEL_DIR}
[ -f "$kdir/bzImage" ] || die 2 "kernel folder $kdir not found (set HARNESS_KERNEL_DIR; this kernel has no recipe)"
got=$(sha256sum "$kdir/bzImage" | cut -d' ' -f1)
[ -z "$BZIMAGE_SHA256" ] || [ "$got" = "$BZIMAGE_SHA256" ] || mismatch "$kdir/bzImage: sha256 $got, expected $BZIMAGE_SHA256"
rc=0
harness run "$work/scenario.yaml" --kernel "$kdir" --seed "$SEED" "$@" || rc=$?
exit $rc
'''


def _recipe_json(run: dict, rec: dict, commit: str, overrides: list[str]) -> str:
    shown = {k: v for k, v in rec.items() if k not in ("files", "config_gz")}
    shown["embedded_files"] = [{"path": r, "sha256": _sha(d)} for r, d in rec["files"]]
    return json.dumps({"run_id": run.get("run_id"), "verdict": run.get("verdict"), "harness_commit": commit,
                       "seed": run.get("scenario", {}).get("seed"), "overrides": overrides, "kernel": shown},
                      indent=2, default=str) + "\n"


def _harness_commit(run: dict) -> str:
    short = commit_of(str(run.get("versions", {}).get("harness_git") or ""))
    full = commit_of(change_identity(REPO))
    full = "" if full == UNKNOWN_COMMIT else full
    return full if full and (not short or full.startswith(short.rstrip("?"))) else (short or "unknown")


def _header(run: dict, rec: dict, commit: str, kernel_note: str) -> str:
    return f"""#!/bin/sh
# Reproduce run {run.get('run_id')} (verdict: {run.get('verdict')}); harness commit {commit}.
# Kernel: {rec.get('release')} ({rec['kind']}); {kernel_note}
#
#   HARNESS_REPO=/path/to/checkout sh reproduce.sh          rebuild (or take from the cache) the same kernel,
#                                                          check its .config sha256, rerun: exit code of the run
#   sh reproduce.sh --check-only                           recreate the recipe in ./reproduce-<run>/, check
#                                                          every sha256 (MANIFEST.sha256), stop
#   sh reproduce.sh --print-recipe                         print the recipe (JSON)
# Environment: HARNESS_REPO, HARNESS_CACHE, HARNESS_RESULTS, HARNESS_REPRO_DIR (where to recreate the files),
# HARNESS_BASE_TARBALL / HARNESS_BASE_GIT (the base on this machine), HARNESS_REPRO_FORCE=1 (go on after a
# recipe check failed). Exit 2: the recipe cannot be honoured here (a file or hash differs); else the run's.
"""


def reproduce_script(run: dict, meta: dict) -> str:
    """reproduce.sh for a finished run (run.json's dict) and the kernel it ran (its meta.json dict)."""
    try:
        return _script(run, meta)
    except Exception as e:  # noqa: BLE001 - never lose a run for its reproducer: fall back to the short one
        argv = ["--kernel", str(meta["dir"])] if meta.get("dir") and meta.get("source") != "debian-prebuilt" else []
        return reproduce_sh(argv, run).replace("set -e\n", f"# (no embedded recipe: {type(e).__name__}: {e})\nset -e\n", 1)


def _script(run: dict, meta: dict) -> str:
    rec = kernel_recipe(meta)
    commit = _harness_commit(run)
    seed = run.get("scenario", {}).get("seed")
    overrides = [ov for ov in run.get("overrides", []) if not ov.startswith("seed=")]
    sets = " ".join(f"--set {shlex.quote(ov)}" for ov in overrides)
    argv_note = {"debian-prebuilt": "original kernel argument: none (Debian's prebuilt)",
                 "tree": f"the tree {(rec.get('tree') or {}).get('repo')} at {(rec.get('tree') or {}).get('describe')}"
                         " (commit + uncommitted diff + .config embedded)",
                 "debian-package": f"original kernel argument: --kernel debian:{meta.get('version')}"}.get(
        rec["kind"], f"original kernel argument: --kernel {meta.get('dir')}")
    resolved = yaml.safe_dump(json.loads(json.dumps(run.get("scenario", {}), default=str)), sort_keys=False)
    scen = run.get("scenario_yaml") or ""
    parts = [_header(run, rec, commit, argv_note),
             f"RUN_ID={_shell_str(run.get('run_id'))}\nHARNESS_COMMIT={_shell_str(commit)}\nSEED={_shell_str(seed)}\n",
             "recipe_json() {\ncat <<'HARNESS_EOF_RECIPE'\n" + _recipe_json(run, rec, commit, overrides)
             + "HARNESS_EOF_RECIPE\n}\n", _PRELUDE]
    for p in rec["problems"]:
        parts.append(f"mismatch {_shell_str('recipe incomplete: ' + p)}\n")
    if rec["kind"] == "build" and rec.get("inputs_match") is False:
        parts.append("warn 'the fragments embedded here do not give the input key of the build (edited since "
                     "it?); the .config check decides'\n")
    parts.append("# ---- the scenario: the YAML the run was given, and what it resolved to with the overrides\n")
    parts.append(_embed("scenario.yaml", scen.encode()))
    parts.append(_embed("scenario.resolved.yaml", resolved.encode()))
    parts.append("# ---- the kernel recipe\n")
    for rel, data in rec["files"]:
        parts.append(_embed(rel, data))
    if rec.get("config_gz"):
        b64 = base64.encodebytes(rec["config_gz"]).decode()
        parts.append(f"base64 -d <<'HARNESS_EOF_CONFIG' | gzip -dc > \"$work/expected.config\"\n{b64}"
                     f"HARNESS_EOF_CONFIG\ncheck expected.config {rec['config_sha256']}\n")
    if rec["kind"] == "build":
        parts.append(_base_vars(rec) + _kernel_yaml_lines(rec))
    parts.append('recipe_json > "$work/recipe.json"\n'
                 'if [ "$mode" = check ]; then\n'
                 '  echo "reproduce.sh: recipe recreated in $work; every sha256 checked (MANIFEST.sha256)"; exit 0\n'
                 'fi\n')
    parts.append(f"set -- {sets}\n" if sets else "set --\n")
    parts.append(_HARNESS.replace("__REPO__", str(REPO)))
    if rec["kind"] == "build":
        parts.append(f"CONFIG_SHA256={_shell_str(rec['config_sha256'])}\nKERNEL_KEY={_shell_str(rec['key'])}\n"
                     f"BASE_ID={_shell_str(rec['base'].get('id'))}\n"
                     f"COMPILER={_shell_str(rec.get('compiler'))}\n" + _BUILD)
    elif rec["kind"] == "tree":
        t = rec["tree"]
        parts.append(f"TREE_GIT={_shell_str(t['path'])}\nTREE_COMMIT={_shell_str(t['commit'])}\n"
                     f"TREE_DESCRIBE={_shell_str(t['describe'])}\nDIFF_SHA256={_shell_str(t['diff_sha256'] or '')}\n"
                     f"CONFIG_SHA256={_shell_str(rec['config_sha256'])}\n" + _TREE)
    elif rec["kind"] == "debian-prebuilt":
        parts.append(f"PACKAGE={_shell_str(rec['package'])}\nVERSION={_shell_str(rec['version'])}\n"
                     f"DEB={_shell_str(rec['deb'])}\nDEB_SHA256={_shell_str(rec.get('deb_sha256') or '')}\n"
                     f"BZIMAGE_SHA256={_shell_str(rec.get('bzimage_sha256') or '')}\n" + _PREBUILT)
    elif rec["kind"] == "debian-package":
        parts.append(f"PACKAGE={_shell_str(rec['package'])}\nVERSION={_shell_str(rec['version'])}\n"
                     f"DEB_SHA256={_shell_str(rec.get('deb_sha256') or '')}\n"
                     f"BZIMAGE_SHA256={_shell_str(rec.get('bzimage_sha256') or '')}\n" + _DEBPKG)
    else:
        parts.append(f"KERNEL_DIR={_shell_str(rec.get('dir'))}\n"
                     f"BZIMAGE_SHA256={_shell_str(rec.get('bzimage_sha256') or '')}\n" + _FOLDER)
    return "".join(parts)


def reproduce_sh(argv: list[str], run: dict) -> str:
    """The short form (no embedded recipe): re-runs this case from a checkout, with the kernel argument given."""
    seed = run.get("scenario", {}).get("seed")
    scenario_yaml = run.get("scenario_yaml", "")
    argv = list(argv) + [a for ov in run.get("overrides", []) if not ov.startswith("seed=") for a in ("--set", ov)]
    return f"""#!/bin/sh
# Reproduce run {run['run_id']} (verdict: {run['verdict']}); harness commit {run.get('versions', {}).get('harness_git', '?')}.
# Kernel: {run.get('kernel', {}).get('release')} ({run.get('kernel', {}).get('source')})
set -e
cd "${{HARNESS_REPO:-{REPO}}}"
scenario=$(mktemp --suffix=.yaml)
cat > "$scenario" <<'SCENARIO'
{scenario_yaml}SCENARIO
exec .venv/bin/harness run "$scenario" --seed {seed} {' '.join(shlex.quote(a) for a in argv)}
"""


# ----------------------------------------------------------------------------------------------------------
# harness reproduce RUN_DIR [--tries N]
# ----------------------------------------------------------------------------------------------------------
def reproduction_block(expected: str, tries: list[dict]) -> dict:
    """Pure: {tries, reproduced, rate, flaky} from the reruns' verdicts (a rerun reproduces when its verdict is
    the original one)."""
    k = sum(1 for t in tries if t.get("verdict") == expected)
    n = len(tries)
    return {"tries": n, "reproduced": k, "rate": round(k / n, 4) if n else None, "flaky": 0 < k < n,
            "expected_verdict": expected, "runs": tries,
            "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


_EXIT_VERDICT = {0: "pass", 1: "finding", 2: "input-error", 3: "infra-error"}


def _one_try(script: Path, out_root: Path, env: dict) -> dict:
    out_root.mkdir(parents=True, exist_ok=True)
    before = set(out_root.iterdir())
    rc = subprocess.run(["sh", str(script)], env=env, cwd=out_root).returncode
    new = sorted(set(out_root.iterdir()) - before)
    run_dirs = [d for d in new if (d / "run.json").is_file()]
    verdict = _EXIT_VERDICT.get(rc, "infra-error")
    if run_dirs:
        try:
            verdict = json.loads((run_dirs[-1] / "run.json").read_text())["verdict"]
        except (OSError, ValueError, KeyError):
            pass
    return {"exit": rc, "verdict": verdict, "run_dir": str(run_dirs[-1]) if run_dirs else None}


def cli_reproduce(run_dir: str, tries: int = 1) -> int:
    """Rerun RUN_DIR/reproduce.sh `tries` times (reruns go to RUN_DIR/reproductions/), print "reproduced k/N",
    record the reproduction block in run.json. Exit: the original verdict's code when it reproduced at least
    once, else the last rerun's."""
    rd = Path(run_dir)
    script = rd / "reproduce.sh"
    if not script.exists():
        raise InputError(f"{script} not found")
    if tries < 1:
        raise InputError(f"--tries {tries}: must be at least 1")
    expected = load_run(rd)["verdict"]
    env = dict(os.environ, HARNESS_REPO=os.environ.get("HARNESS_REPO") or str(REPO),
               HARNESS_RESULTS=str((rd / "reproductions").resolve()))
    results = []
    for i in range(tries):
        t = _one_try(script.resolve(), rd / "reproductions", env)
        results.append(t)
        print(f"harness reproduce: try {i + 1}/{tries}: {t['verdict']} (exit {t['exit']}) {t['run_dir'] or ''}",
              file=sys.stderr)
    block = reproduction_block(expected, results)
    run = load_run(rd)                       # re-read: the run may have been re-judged meanwhile
    run["reproduction"] = block
    write_run_json(rd / "run.json", run)
    print(f"reproduced {block['reproduced']}/{block['tries']}" + (" (flaky)" if block["flaky"] else ""))
    if block["reproduced"]:
        return VERDICT_EXIT.get(expected, EXIT_INFRA)
    return results[-1]["exit"] if results[-1]["exit"] in _EXIT_VERDICT else EXIT_INPUT
