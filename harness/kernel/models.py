"""A kernel artifact's meta.json as a typed model (the folder's other files: bzImage, modules/, config).

Written by the builders (harness.kernel.build, the Debian fetchers, a developer's tree) and read by
load_kernel_dir, always through KernelMeta.  Its "schema" is the artifact layout's (harness.kernel.build.SCHEMA);
a Debian prebuilt's meta.json predates it and has none.  The builders' own fields (base, patches, package,
version, tree, timings...) pass through.
"""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from harness.resultfile import ResultFile

KERNEL_META_SCHEMA = 2  # = harness.kernel.build.SCHEMA: the newest artifact layout this harness reads


class KernelMeta(ResultFile):
    SCHEMA: ClassVar[int] = KERNEL_META_SCHEMA
    schema_version: int = Field(KERNEL_META_SCHEMA, alias="schema")
    release: str | None = None   # uname -r; a bare folder's is its modules/lib/modules/<release> name
    source: str | None = None    # build | debian-prebuilt | debian-package | tree | folder ...
    key: str | None = None       # the cache key (kernels/<key>/)
    base: Any = None
    patches: list[Any] = Field(default_factory=list)
    config_sha256: str | None = None
    dir: str | None = None       # where the folder is (set when loaded)
