"""Step checkpoints in the run folder, committed by a marker object, never by a rename.

Object stores have no atomic rename of a folder, so one scheme serves a local disk and object
storage alike: a step writes its files under a fresh attempt folder (`stages/NN-name/attempt-<id>/`),
then writes one small marker, `stages/NN-name/_SUCCESS.json`, naming the attempt, exactly its files,
and the fingerprint of the step's settings, inputs and code. Writing one object (or one local file,
written aside and renamed) is atomic, so a reader sees the old marker or the new one. Readers and
resume trust only the marker: files of an attempt that never committed (a crash, a worker of a
killed run still writing) are ignored, and removed by `clean`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from core import storage

MARKER = "_SUCCESS.json"


def fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def read_marker(folder: str | Path) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(storage.join(str(folder), MARKER)))
    except (OSError, json.JSONDecodeError):
        return None


def write_marker(folder: str | Path, content: dict[str, Any]) -> None:
    storage.write_bytes(storage.join(str(folder), MARKER), json.dumps(content, indent=2).encode())


class Checkpoint:
    """A step's folder: attempts, and the marker naming the one committed."""

    def __init__(self, root: str | Path, name: str):
        self.path = storage.join(str(root), name)
        self.attempt: str | None = None

    def marker(self) -> dict[str, Any] | None:
        return read_marker(self.path)

    def is_done(self, fp: str) -> bool:
        marker = self.marker()
        return marker is not None and marker.get("fingerprint") == fp and "attempt" in marker

    def begin(self) -> str:
        """The folder (or prefix) of a new attempt, to write the step's output into."""
        self.attempt = f"attempt-{uuid.uuid4().hex[:12]}"
        return storage.join(self.path, self.attempt)

    def commit(self, fp: str, info: dict[str, Any]) -> None:
        """Name the attempt's files in the marker (the commit), then remove every other attempt."""
        assert self.attempt is not None, "begin() first"
        folder = storage.join(self.path, self.attempt)
        files = [p[len(folder) + 1 :] for p in storage.list_files(folder)]
        write_marker(self.path, {"fingerprint": fp, "attempt": self.attempt, "files": files, **info})
        self.clean()

    def clean(self) -> None:
        """Remove what the marker does not name: uncommitted attempts and any other file."""
        committed = (self.marker() or {}).get("attempt")
        for child in storage.children(self.path):
            if storage.name(child) not in (MARKER, committed):
                storage.delete(child)

    def pruned(self) -> bool:
        """Its rows were removed (`keep_checkpoints: last`): only the marker and the ledger are left."""
        return bool((self.marker() or {}).get("pruned"))

    def prune(self) -> int:
        """Remove the committed rows, keep the marker and the step's ledger; returns the bytes freed.
        The marker says so first, so a crash halfway leaves a checkpoint known to be without rows."""
        marker = self.marker()
        if not marker or marker.get("pruned") or "attempt" not in marker:
            return 0
        rows = [f for f in marker.get("files", []) if not storage.name(f).startswith("_")]
        write_marker(self.path, {**marker, "pruned": True, "files": [f for f in marker["files"] if f not in rows]})
        freed = 0
        for name in rows:
            path = storage.join(self.path, marker["attempt"], name)
            freed += storage.size_and_mtime(path)[0] if storage.exists(path) else 0
            storage.delete(path)
        return freed

    def size(self) -> int:
        """Bytes of the committed rows."""
        return sum(storage.size_and_mtime(f)[0] for f in self.files())

    def file(self, name: str) -> str:
        """A file of the committed attempt (e.g. the step's `_ledger.parquet`)."""
        marker = self.marker() or {}
        return storage.join(self.path, marker.get("attempt", ""), name)

    def files(self) -> list[str]:
        """The committed data files (names starting with '_' are the step's own bookkeeping)."""
        marker = self.marker() or {}
        return [
            storage.join(self.path, marker["attempt"], f)
            for f in marker.get("files", [])
            if f.endswith(".parquet") and not storage.name(f).startswith("_")
        ]
