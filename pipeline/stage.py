"""The stage contract: a typed config plus a batch-in/batch-out transform over Arrow tables.

A stage never removes rows: it sets `_drop` to a reason on the rows it drops, so the runner can
account for every row (rows in = rows out + dropped by reason) and keep the dropped ones inspectable.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo

if TYPE_CHECKING:
    from pipeline.manifest import SourceConfig


def from_manifest(path: str, info: ValidationInfo) -> Path:
    """A path written in a manifest, relative to the manifest's folder unless absolute (for the
    validators of sources and stage settings; `load_manifest` passes the folder as `base_dir`)."""
    return Path(path) if Path(path).is_absolute() else Path((info.context or {}).get("base_dir", ".")) / path


def existing_path(path: str | None, info: ValidationInfo) -> str | None:
    """`from_manifest` for an optional file or folder that must exist, as an absolute path."""
    if path is None:
        return None
    resolved = from_manifest(path, info)
    if not resolved.exists():
        raise ValueError(f"no such file or folder: {path!r} (looked for {resolved})")
    return str(resolved.resolve())


def matching_files(path: str, info: ValidationInfo) -> str:
    """`from_manifest` for a file or glob that must match at least one file, as an absolute pattern."""
    pattern = str(from_manifest(path, info))
    if not glob.glob(pattern, recursive=True):
        raise ValueError(f"no file matches {path!r} (looked for {pattern})")
    return str(Path(pattern).absolute())


class StageConfig(BaseModel):
    """Base of every stage's settings; subclasses add a `stage: Literal[...]` tag and their fields."""

    model_config = ConfigDict(extra="forbid")

    def unknown_sources(self, names: set[str]) -> list[str]:
        """Source names these settings refer to that the manifest lacks (checked at validation)."""
        return []


class DedupConfig(StageConfig):
    """Settings every dedup stage shares: which row of a cluster is kept."""

    priority: list[str] = Field(default_factory=list, description=(
        "Sources whose rows are kept first, in this order; the others follow in manifest order, then by smallest id."))

    def unknown_sources(self, names: set[str]) -> list[str]:
        return [n for n in self.priority if n not in names]

    def ranks(self, context: RunContext) -> dict[str, int]:
        """Source -> rank (smaller is kept first)."""
        order = list(dict.fromkeys([*self.priority, *context.source_order]))
        return {name: i for i, name in enumerate(order)}


@dataclass(frozen=True)
class RunContext:
    """What a stage may know about the run besides its own settings."""

    run_dir: Path
    source_order: tuple[str, ...]  # sources in manifest order, e.g. for deterministic priorities
    sources: Mapping[str, SourceConfig] = field(default_factory=dict)  # by name: declared languages...
    # The step's own scratch folder: partial results kept here survive a crash, so a re-run can
    # skip finished work units (mining shards); named by the step's fingerprint, removed when the
    # step's checkpoint commits.
    work_dir: Path | None = None


class Stage:
    """A transform over Arrow batches. Subclasses set `name`, `config_model` and `__call__`."""

    name: ClassVar[str]
    config_model: ClassVar[type[StageConfig]]
    version: ClassVar[str] = "1"  # bump when the same settings would now produce different output
    stateful: ClassVar[bool] = False  # True: built once per actor in a pool (models, big tables)
    num_cpus: ClassVar[float] = 1.0

    def __init__(self, config: StageConfig, context: RunContext):
        self.config = config
        self.context = context

    def __call__(self, batch: pa.Table) -> pa.Table:
        raise NotImplementedError

    def report(self, files: list[str]) -> Any:
        """A polars DataFrame summarising what the step did, from its output files (read lazily),
        which the runner writes to `reports/<step>.csv`; None when the stage has nothing to add to
        the ledger's counts."""
        return None


class ShuffleStage(Stage):
    """A stage that needs all rows sharing a key in one batch (dedup, grouping).

    The runner hash-partitions rows on the uint64 column `key(batch)` returns, then calls the
    stage on whole partitions, so no node ever holds more than its partitions.
    """

    def key(self, batch: pa.Table) -> pa.Array:
        raise NotImplementedError

    def prepare(self, ds: Any) -> Any:
        """Dataset-level work before the shuffle, on the kept rows (e.g. embedding them in an actor
        pool); columns it adds travel with the rows to `__call__`. Default: nothing."""
        return ds


class DatasetStage(Stage):
    """A stage that must see the whole dataset at once (near-duplicate detection compares every
    row with every other). The runner hands `plan` the lazy Ray dataset of the rows no earlier step
    dropped and writes what it returns: the same rows, with `_drop` set on the ones it drops.
    A plan must keep the work distributed: it may never gather rows (or per-row data) on the driver.
    """

    def plan(self, ds: Any, rows: int) -> Any:
        raise NotImplementedError


STAGES: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: makes a stage available to manifests under `stage: <name>`."""
    STAGES[cls.name] = cls
    return cls
