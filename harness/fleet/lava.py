"""`harness lava-job M [--shard I/N] [--out FILE]`: a LAVA job definition that runs a matrix (or one shard) on an
x86 device of a LAVA lab (the engine KernelCI uses).

The job boots the device's own Debian 12 over the network (deploy to tftp: kernel, initrd and NFS root fetched
from ``--artifacts-url``), then one inline test definition checks the harness out at this commit
(``git rev-parse HEAD``), installs it (``make setup-build``), requires real KVM, puts the kernels under test in
the harness cache by key, runs ``harness matrix M [--shard I/N]``, reports every cell as a ``lava-test-case``
and uploads the results folder as a tarball.

Kernels are named by their cache keys: a kernel already built here is fetched as
``ARTIFACTS/kernels/<key>.tar.xz`` (made with ``tar -cJf <key>.tar.xz -C ~/.cache/kvm-dirty-harness/kernels <key>``)
and its bzImage checked against its sha256; one not built here is built on the device (its input key is in the
job's metadata, so a mismatch shows). Debian's prebuilt kernel comes from apt, named by its package.
The job validates against lava_common's schema in strict mode (tests/unit/test_lava.py).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from harness.errors import HarnessError, InputError
from harness.paths import REPO
from harness.util import UNKNOWN_COMMIT, change_identity, commit_of

PLACEHOLDER = "https://artifacts.example.invalid/kvm-dirty-harness"   # the user fills in the real base URL
CACHE = "/var/cache/kvm-dirty-harness"                                  # HARNESS_CACHE on the device
PROMPT = "root@debian:~#"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'I/N' as `harness matrix --shard` reads it; None: the whole matrix."""
    from harness.fleet.matrix.shard import parse_shard as matrix_parse_shard
    return None if text is None else matrix_parse_shard(text)


def _git(*args: str) -> str | None:
    r = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def _kernel_ref(ref, base: Path) -> dict:
    """What the device needs to know of one kernel: its cache keys and, if built here, its bzImage sha256."""
    if ref.prebuilt:
        from harness.kernel.prebuilt import find_existing
        found = find_existing()
        meta = json.loads((found / "meta.json").read_text()) if found else {}
        return {"kind": "debian-prebuilt", "package": meta.get("package", "linux-image-6.12.*-amd64-unsigned")}
    from harness.kernel import build, source
    yml = (base / ref.build).resolve()
    out: dict[str, Any] = {"kind": "build", "kernel_yaml": str(yml.relative_to(REPO)) if yml.is_relative_to(REPO) else str(yml)}
    try:
        b = source.load_kernel_yaml(yml).spec.base
        if isinstance(b, source.DebianBase):
            source.debian_tarball(b.debian_source, install=False)   # no 150 MB apt-get just to write a job
        p = build.plan(yml, ref.upto)
    except HarnessError as e:
        return out | {"note": f"keys unknown here ({e}); built on the device"}
    out |= {"input_key": p.input_key, "base_sha256": p.identity.get("sha256", p.identity.get("commit", "")),
            "patches_sha256": [x.sha256 for x in p.patches]}
    art = build.lookup(p)
    if art is not None:
        from harness.kernel.source import sha256_file
        out |= {"key": art.name, "bzimage_sha256": sha256_file(art / "bzImage")}
    return out


def shard_plan(matrix_yaml: Path, shard: tuple[int, int] | None) -> tuple[list[str], dict[str, dict]]:
    """The shard's cell ids (as `harness matrix --list` names them) and the kernels those cells boot."""
    from harness.fleet.matrix.expansion import expand
    from harness.fleet.matrix.model import load_matrix
    from harness.fleet.matrix.shard import shard_cells
    m = load_matrix(matrix_yaml)
    mine = shard_cells(expand(m), *(shard or (1, 1)))
    used = {c.kernel for c in mine}  # the device skips what it cannot run (requires:), after the fetch
    return [c.id for c in mine], {n: _kernel_ref(r, matrix_yaml.parent) for n, r in m.kernels.items() if n in used}


def _fetch_step(name: str, k: dict, url: str) -> str:
    kdir = f"{CACHE}/kernels"
    return (f"lava-test-case fetch-kernel-{name} --shell sh -ec 'mkdir -p {kdir}/by-input; "
            f"curl -fsSL {url}/kernels/{k['key']}.tar.xz | tar -xJ -C {kdir}; "
            f"echo \"{k['bzimage_sha256']}  {kdir}/{k['key']}/bzImage\" | sha256sum -c -; "
            f"echo {k['key']} > {kdir}/by-input/{k['input_key']}'")


def steps(matrix: str, shard: tuple[int, int] | None, commit: str, repo: str, url: str, kernels: dict) -> list[str]:
    tag = f"shard-{shard[0]}-of-{shard[1]}" if shard else "all"
    shard_arg = f" --shard {shard[0]}/{shard[1]}" if shard else ""
    upload = f"{url}/results/{commit}/{tag}.tar.gz"
    return [
        f"export HARNESS_CACHE={CACHE}",
        f"git clone --no-checkout {repo} kvm-dirty-harness",
        f"cd kvm-dirty-harness && git checkout --detach {commit}",
        f"lava-test-case checkout --shell test \"$(git rev-parse HEAD)\" = {commit}",
        "lava-test-case setup --shell make setup-build",
        "lava-test-case kvm --shell .venv/bin/harness doctor --require-kvm",
        *[_fetch_step(n, k, url) for n, k in kernels.items() if k.get("key")],
        f"lava-test-case matrix-{tag} --shell .venv/bin/harness matrix {matrix}{shard_arg} --results results/shard",
        ".venv/bin/python -m harness.fleet.lava cases results/shard | sh",
        f"tar -czf results-{tag}.tar.gz -C results shard",
        f"lava-test-case upload-results --shell curl -fsS -T results-{tag}.tar.gz {upload}",
        f"lava-test-reference results-{tag} --result pass --reference {upload}",
    ]


def job(matrix: str, shard: tuple[int, int] | None, commit: str, repo: str, url: str, kernels: dict,
        cells: Sequence[str] = ()) -> dict:
    """The LAVA job (a dict for yaml.safe_dump): deploy to tftp, boot by iPXE into an NFS root, inline test."""
    tag = f"shard {shard[0]}/{shard[1]}" if shard else "all cells"
    name = re.sub(r"[^-_a-zA-Z0-9.]+", "-", f"kvm-dirty-harness-{Path(matrix).stem}-{tag}")
    meta = {"commit": commit, "matrix": matrix, "shard": f"{shard[0]}/{shard[1]}" if shard else "all",
            "cells": ",".join(cells), "cell_count": str(len(cells))}
    for kname, k in kernels.items():
        meta |= {f"kernel.{kname}.{f}": ",".join(v) if isinstance(v, list) else str(v) for f, v in k.items()}
    testdef = {
        "metadata": {"format": "Lava-Test Test Definition 1.0", "name": name,
                     "description": f"harness matrix {matrix} ({tag}) at {commit[:12]}: lost guest writes under "
                                    "nested KVM", "os": ["debian"], "devices": ["x86"]},
        "run": {"steps": steps(matrix, shard, commit, repo, url, kernels)},
    }
    return {
        "job_name": f"kvm-dirty-harness {Path(matrix).stem} {tag} @ {commit[:12]}",
        "device_type": "x86",
        "priority": "medium",
        "visibility": "public",
        "timeouts": {"job": {"hours": 6}, "action": {"minutes": 30}, "connection": {"minutes": 5},
                     "actions": {"lava-test-shell": {"hours": 5}}},
        "context": {"extra_kernel_args": "kvm_intel.nested=1 kvm_amd.nested=1"},
        "metadata": meta,
        "actions": [
            {"deploy": {"to": "tftp", "os": "debian", "timeout": {"minutes": 20},
                        "kernel": {"url": f"{url}/host/vmlinuz"},
                        "ramdisk": {"url": f"{url}/host/initrd.img"},
                        "nfsrootfs": {"url": f"{url}/host/debian-12-rootfs.tar.xz", "compression": "xz"}}},
            {"boot": {"method": "ipxe", "commands": "nfs", "prompts": [PROMPT], "timeout": {"minutes": 10}}},
            {"test": {"timeout": {"hours": 5},
                      "definitions": [{"from": "inline", "name": name, "path": "inline/kvm-dirty-harness.yaml",
                                       "repository": testdef}]}},
        ],
    }


def cases(root: Path) -> list[str]:
    """`lava-test-case` lines for every cell of every matrix folder under root (run on the device)."""
    from harness.fleet.matrix.model import Cell
    out = []
    for mj in sorted(Path(root).glob("*/matrix.json")):
        for c in json.loads(mj.read_text())["cells"]:
            result = "skip" if c["outcome"] == "skipped" else "pass" if c["ok"] else "fail"
            cname = Cell(c["kernel"], c["variant"], c["expect"], seed=c.get("seed")).name
            cname = f"{c['id']}-{cname}" if c.get("id") else cname   # the id: stable across shards and runs
            out.append(f"lava-test-case {re.sub(r'[^-_a-zA-Z0-9.]+', '_', cname).strip('_')} --result {result}")
    return out


def cli_lava_job(args) -> int:
    mpath = Path(args.matrix_yaml)
    shard = parse_shard(args.shard)
    ident = change_identity(REPO)
    commit = commit_of(ident)
    if ident == UNKNOWN_COMMIT:
        raise InputError(f"{REPO} is not a git checkout: the LAVA job checks the harness out by commit")
    if ident.endswith("-dirty"):
        print(f"harness lava-job: warning: uncommitted changes are not in {commit[:12]}", file=sys.stderr)
    url = (args.artifacts_url or PLACEHOLDER).rstrip("/")
    repo = args.repo or _git("remote", "get-url", "origin") or f"{url}/kvm-dirty-harness.git"
    rel = str(mpath.resolve().relative_to(REPO)) if mpath.resolve().is_relative_to(REPO) else str(mpath)
    cells, kernels = shard_plan(mpath, shard)
    text = yaml.safe_dump(job(rel, shard, commit, repo, url, kernels, cells), sort_keys=False, width=120)
    if args.out:
        Path(args.out).write_text(text)
        print(f"LAVA job: {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["cases"]:
    print("\n".join(cases(Path(sys.argv[2]))))
