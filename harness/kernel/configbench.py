"""`make bench` (stage minimal-config): what kconfigs/minimal-l1.config saves on a full build.

The same base (a KERNEL.yaml: by default the clean Debian 7.2) built twice from an empty object folder: with the
harness fragments (x86_64_defconfig + kvm_guest + kvm-host + tracing) and with minimal-l1.config on top.  A full
build that the cache already holds from an empty object folder is read from its meta.json instead of being
redone.  Wall time depends on the machine's load; make's CPU seconds (make_cpu_s) and the number of objects
compiled do not, so both are reported."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import yaml

from harness.kernel.artifact import MINIMAL_FRAGMENT
from harness.paths import REPO, cache_dir


def saving(default: dict, minimal: dict) -> dict:
    """Pure: the figures of the two full builds -> what the minimal config saves (absolute and fraction)."""
    out = {}
    for k in ("make_s", "make_cpu_s", "objects"):
        a, b = default.get(k), minimal.get(k)
        if a and b is not None:
            out[f"saved_{k}"] = round(a - b, 1)
            out[f"saved_{k}_frac"] = round((a - b) / a, 3)
    return out


def _objects(objdir: str | None) -> int | None:
    if not objdir or not Path(objdir).is_dir():
        return None
    return sum(1 for p in Path(objdir).rglob("*.o") if p.is_file())


def _full_build(kernel_yaml: Path) -> dict:
    """A full build of this KERNEL.yaml from an empty object folder: from the cache when one was made, else now."""
    from harness.kernel.build import build_kernel
    meta = json.loads((build_kernel(kernel_yaml) / "meta.json").read_text())
    if meta.get("objtree", {}).get("state") != "fresh":
        meta = json.loads((build_kernel(kernel_yaml, _fresh_objtree=True) / "meta.json").read_text())
    t = meta.get("times", {})
    return {"key": meta.get("key"), "make_s": t.get("make_s"), "make_cpu_s": t.get("make_cpu_s"),
            "total_s": t.get("total_s"), "loadavg_1m_start_end": t.get("loadavg_1m_start_end"),
            "objects": _objects(meta.get("objtree", {}).get("path")), "config_sha256": meta.get("config_sha256"),
            "built_at": meta.get("built_at")}


def bench_minimal_config(kernel_yaml: Path = REPO / "kernels/debian-7.2.yaml") -> dict:
    kernel_yaml = Path(kernel_yaml).resolve()
    spec = yaml.safe_load(kernel_yaml.read_text())
    spec["fragments"] = [str((kernel_yaml.parent / f).resolve()) for f in spec.get("fragments", [])]
    spec["fragments"].append(str(REPO / "kconfigs" / MINIMAL_FRAGMENT))
    if isinstance(spec.get("series"), str):
        spec["series"] = str((kernel_yaml.parent / spec["series"]).resolve())
    default = _full_build(kernel_yaml)
    d = cache_dir() / "bench"
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=d) as tmp:
        ky = Path(tmp) / f"{kernel_yaml.stem}-minimal.yaml"
        ky.write_text(yaml.safe_dump(spec))
        minimal = _full_build(ky)
    return {"kernel_yaml": str(kernel_yaml), "jobs": os.cpu_count(), "default": default, "minimal": minimal,
            **saving(default, minimal), "loadavg_1m_end": round(os.getloadavg()[0], 2)}
