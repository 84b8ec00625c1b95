"""Stage checkpoints in the run folder: a folder of Parquet files per step plus a completion marker.

A step writes into `<name>.tmp/`, writes `_SUCCESS.json` (its fingerprint, counts, timing) last, and
renames the folder into place. A folder without a marker, or with another fingerprint, is stale.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

MARKER = "_SUCCESS.json"


def fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


class Checkpoint:
    def __init__(self, root: Path, name: str):
        self.path = root / name
        self.tmp = root / f"{name}.tmp"

    def marker(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / MARKER).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def is_done(self, fp: str) -> bool:
        marker = self.marker()
        return marker is not None and marker.get("fingerprint") == fp

    def begin(self) -> Path:
        """A clean temporary folder to write the step's output into."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def commit(self, fp: str, info: dict[str, Any]) -> None:
        (self.tmp / MARKER).write_text(json.dumps({"fingerprint": fp, **info}, indent=2))
        self.discard()
        self.tmp.rename(self.path)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def files(self) -> list[str]:
        """The step's data files (names starting with '_' are the step's own bookkeeping)."""
        return sorted(str(p) for p in self.path.glob("*.parquet") if not p.name.startswith("_"))
