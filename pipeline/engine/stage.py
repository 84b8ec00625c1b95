"""The stage contract: typed settings, declared resources and columns, a worker-side `setup()`, and a
batch-in/batch-out transform over Arrow tables.

A stage never removes rows: it marks the rows it drops with a reason (`Stage.drop`), so the runner
can account for every row (rows in = rows out + dropped by reason) and keep the dropped ones
inspectable. Stages are built cheaply wherever the runner needs their settings; anything heavy (a
model, an evaluation set's hashes) is loaded in `setup()`, which runs once per worker, and never for
a step that resumes from its checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Mapping, TypeVar, get_args, get_origin

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from core.record import DETAIL, DROP
from core.settings import Strict
from core.tasks import POOL_TASKS
from pipeline.ops.arrow import replace_column

if TYPE_CHECKING:
    from sources.config import SourceConfig


class StageConfig(Strict):
    """Base of every stage's settings; subclasses add a `stage: Literal[...]` tag and their fields."""

    checkpoint: bool = Field(
        False, description="Write a checkpoint right after this stage, even inside a fused group (finer resume)."
    )

    def unknown_sources(self, names: set[str]) -> list[str]:
        """Source names these settings refer to that the manifest lacks (checked at validation)."""
        return []

    def corpora(self) -> list[str]:
        """Sources (of task `corpus`) this stage uses as a pool of passages; a corpus source no stage
        names would end as records with no pairs, so the manifest rejects it."""
        return []


class DedupConfig(StageConfig):
    """Settings every dedup stage shares: which row of a cluster is kept."""

    priority: list[str] = Field(
        default_factory=list,
        description=(
            "Sources whose rows are kept first, in this order; the others follow in manifest order, "
            "then by smallest id."
        ),
    )

    def unknown_sources(self, names: set[str]) -> list[str]:
        return [n for n in self.priority if n not in names]

    def ranks(self, context: RunContext) -> dict[str, int]:
        """Source -> rank (smaller is kept first): `priority`, then the manifest's order, sources of a
        pool task (`corpus`) after every source of records unless `priority` names them."""
        pools = {n for n, s in context.sources.items() if s.task in POOL_TASKS}
        records = [n for n in context.source_order if n not in pools]
        order = list(dict.fromkeys([*self.priority, *records, *context.source_order]))
        return {name: i for i, name in enumerate(order)}


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs; the runner makes its Ray requests from these alone."""

    cpus: float = 1.0
    gpus: float = 0.0  # a stage that can use a GPU when the cluster has one says so here (fraction or whole)
    memory_mb: int = 0  # per worker, for Ray's scheduler; 0: no reservation

    def ray_options(self, cluster: Mapping[str, float]) -> dict[str, float]:
        """The per-worker request for Ray: GPUs only where the cluster has them. `cluster` is
        `ray.cluster_resources()`."""
        options: dict[str, float] = {"num_cpus": self.cpus}
        if self.gpus and cluster.get("GPU", 0.0):
            options["num_gpus"] = self.gpus
        if self.memory_mb:
            options["memory"] = self.memory_mb << 20
        return options


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
    # The run's passage store (`passages/`, local or a URL): stages that make negatives store their
    # texts there and keep ids (`pipeline/ops/passage_store.py`); None outside a run: texts stay inline.
    passages: str | None = None


C = TypeVar("C", bound=StageConfig)


def stage_name(config_model: type[StageConfig]) -> str:
    """The manifest's `stage:` value for a config: the one value of its `stage: Literal[...]` tag."""
    tag = config_model.model_fields.get("stage")
    values = get_args(tag.annotation) if tag is not None and get_origin(tag.annotation) is Literal else ()
    if len(values) != 1 or not isinstance(values[0], str):
        raise TypeError(
            f"{config_model.__module__}.{config_model.__qualname__} has no tag field with one name, "
            f"like `stage: Literal[\"my_stage\"]`; a stage's name comes from its config's tag"
        )
    return values[0]


class Stage(Generic[C]):
    """A row-local transform over Arrow batches: each output row depends on its input row alone, so
    consecutive row-local stages run fused in one pass. Subclasses name their settings' type as the
    base's parameter (`Stage[MyConfig]`), set `config_model` (the same class) and `__call__`; the
    stage's `name` is the config's `stage: Literal[...]` tag, written nowhere else. They declare
    `reads` (record columns an earlier stage must have filled, checked when the manifest is
    validated), `writes` and `resources`, and load what they need in `setup()`."""

    name: ClassVar[str]  # set from `config_model`'s `stage` tag when a subclass sets `config_model`
    config_model: ClassVar[type[StageConfig]]  # a ClassVar cannot hold `C`: the same class as the parameter
    version: ClassVar[str] = "1"  # bump when the same settings would now produce different output
    resources: ClassVar[Resources] = Resources()
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()

    config: C

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_model" in cls.__dict__:
            try:
                name = stage_name(cls.config_model)
            except TypeError as e:
                raise TypeError(f"stage {cls.__module__}.{cls.__qualname__}: {e}") from None
            if "name" in cls.__dict__ and cls.__dict__["name"] != name:
                raise TypeError(
                    f"{cls.__module__}.{cls.__qualname__}: name {cls.__dict__['name']!r} is not its config's "
                    f"stage tag {name!r}; leave `name` out, it comes from the tag"
                )
            cls.name = name

    def __init__(self, config: C, context: RunContext):
        self.config = config
        self.context = context

    @classmethod
    def columns_read(cls, config: C) -> tuple[str, ...]:
        """The columns these settings make the stage read (default: `reads`)."""
        return cls.reads

    def setup(self) -> None:
        """Load models and tables; runs once on each worker before its first batch."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        raise NotImplementedError

    @staticmethod
    def drop(
        batch: pa.Table, reasons: pa.Array | list[str | None], details: pa.Array | list[str | None] | None = None
    ) -> pa.Table:
        """`batch` with `_drop` set to `reasons` where a reason is given (and `_detail` to the detail):
        the one way a stage marks the rows it drops. Rows an earlier step dropped never reach a stage."""
        reasons = pa.array(reasons, pa.string()) if isinstance(reasons, list) else reasons
        dropping = pc.is_valid(reasons)
        batch = replace_column(batch, DROP, pc.if_else(dropping, reasons, batch.column(DROP)))
        if details is not None:
            details = pa.array(details, pa.string()) if isinstance(details, list) else details
            batch = replace_column(batch, DETAIL, pc.if_else(dropping, details, batch.column(DETAIL)))
        return batch

    def report(self, files: list[str]) -> Any:
        """A polars DataFrame summarising what the step did, from its output files (read lazily),
        which the runner writes to `reports/<step>.csv`; None when the stage has nothing to add to
        the ledger's counts."""
        return None


class Filter(Stage[C]):
    """A row-local stage that only decides which rows go: subclasses write `filter`, returning a
    reason (None: keep) and a detail per row; the base class marks them."""

    def filter(self, batch: pa.Table) -> tuple[list[str | None] | pa.Array, list[str | None] | pa.Array | None]:
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> pa.Table:
        reasons, details = self.filter(batch)
        return self.drop(batch, reasons, details)


class ShuffleStage(Stage[C]):
    """A stage that needs all rows sharing a key in one batch (dedup, grouping).

    The runner hash-partitions rows on the uint64 column `key(batch)` returns, then calls the
    stage on whole partitions, so no node ever holds more than its partitions.
    """

    def key(self, batch: pa.Table) -> pa.Array:
        raise NotImplementedError


class DatasetStage(Stage[C]):
    """A stage that must see the whole dataset at once (near-duplicate detection compares every
    row with every other). The runner hands `plan` the step's input files as blocks (refs whose
    rows are those no earlier step dropped) and a `Rounds` to run tasks with
    (`pipeline/ops/exchange.py`: their tables pass through scratch files, in process or on Ray);
    `plan` returns one table (or ref) per output file, in the work schema: the same rows, with `_drop`
    set on the ones it drops. It may never gather rows (or per-row data) on the driver.
    """

    def plan(self, blocks: list[Any], rows: int, rounds: Any) -> list[Any]:
        raise NotImplementedError


def is_row_local(cls: type[Stage]) -> bool:
    """Row-local stages can be fused: neither a shuffle nor a whole-dataset stage."""
    return not issubclass(cls, (ShuffleStage, DatasetStage))


class Registry:
    """The stages a manifest may name, by `stage:` name. Explicit: the built-in ones are listed in
    `pipeline/stages/__init__.py`; a project adds its own with `register`, and the manifest schema is
    built from the registry when a manifest is loaded, so no import order can hide a stage."""

    def __init__(self, stages: tuple[type[Stage], ...] = ()):
        self._stages: dict[str, type[Stage]] = {}
        for cls in stages:
            self.register(cls)

    def register(self, cls: type[Stage]) -> type[Stage]:
        """Add a stage (usable as a class decorator); a second stage of the same name is an error."""
        if cls.name in self._stages and self._stages[cls.name] is not cls:
            raise ValueError(f"two stages named {cls.name!r}: {self._stages[cls.name].__module__} and {cls.__module__}")
        self._stages[cls.name] = cls
        return cls

    def __getitem__(self, name: str) -> type[Stage]:
        return self._stages[name]

    def __contains__(self, name: object) -> bool:
        return name in self._stages

    def names(self) -> tuple[str, ...]:
        return tuple(self._stages)

    def configs(self) -> tuple[type[StageConfig], ...]:
        return tuple(cls.config_model for cls in self._stages.values())
