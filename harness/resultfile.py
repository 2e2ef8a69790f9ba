"""The base of the harness's JSON result files (run.json, matrix.json, bisect.json, a kernel's meta.json): a
pydantic model with its schema version (stored under the key "schema", as the files always had it), loading with
one clear input error, writing atomically with the file's own key order and nothing added.

Each file's model lives with its layer: harness.report.models (runs, matrices, bisections), harness.kernel.models
(a kernel's meta.json)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from harness.errors import InputError
from harness.util import atomic_write

M = TypeVar("M", bound="ResultFile")


class ResultFile(BaseModel):
    """A JSON result file: its schema version, loading with one clear error, writing atomically."""
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    SCHEMA: ClassVar[int] = 1  # the newest schema this harness reads (a subclass's own)
    schema_version: int = Field(1, alias="schema")
    _key_order: list[str] = PrivateAttr(default_factory=list)  # the file's own key order, kept on writing

    @classmethod
    def load(cls: type[M], path: Path) -> M:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{path}: cannot read ({e})") from None
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls: type[M], data: object, where: str = "result") -> M:
        if isinstance(data, dict) and isinstance(data.get("schema"), int) and data["schema"] > cls.SCHEMA:
            raise InputError(f"{where}: schema {data['schema']} is newer than this harness reads ({cls.SCHEMA})")
        try:
            record = cls.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            at = ".".join(str(x) for x in first["loc"])
            raise InputError(f"{where}: not a valid {cls.__name__} ({at}: {first['msg']})") from None
        record._key_order = list(data) if isinstance(data, dict) else []
        return record

    def to_json(self, with_schema: bool = True) -> dict[str, Any]:
        """The file's content: the keys it was read or built with (no defaults added) in their order, "schema"
        first (`with_schema=False`: only if the file had it)."""
        d = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        order = [k for k in self._key_order if k in d] + [k for k in d if k not in self._key_order]
        out = {k: d[k] for k in order if k != "schema"}
        return {"schema": self.schema_version} | out if with_schema or "schema" in d else out

    def write(self, path: Path) -> None:
        atomic_write(Path(path), json.dumps(self.to_json(), indent=2, sort_keys=False, default=str) + "\n")
