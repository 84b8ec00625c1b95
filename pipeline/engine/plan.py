"""The steps of a run: what the manifest's stages become, with their checkpoints and fingerprints.

Ingest is the first step. Consecutive row-local stages form one step (a fused group: one pass, one
checkpoint), unless the manifest asks for `checkpoint: every_step` or a stage for `checkpoint: true`;
a shuffle or dataset stage is a step of its own. Every stage keeps its own name (`02-langid`) in the
ledger and its own fingerprint, chained from the one before it, so changing a stage's settings
re-runs from the step that holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.engine.checkpoint import fingerprint
from pipeline.engine.stage import (
    DatasetStage,
    Registry,
    Resources,
    RunContext,
    ShuffleStage,
    Stage,
    StageConfig,
)

Kind = Literal["ingest", "rows", "shuffle", "dataset"]


@dataclass(frozen=True)
class StageSpec:
    """One stage of a step: its ledger name (`02-langid`), class and settings. Building it is cheap;
    nothing heavy happens before `setup()` on a worker."""

    step: str
    cls: type[Stage]
    config: StageConfig
    fingerprint: str  # of every setting and input up to this stage

    def build(self, context: RunContext) -> Stage:
        return self.cls(self.config, context)


@dataclass(frozen=True)
class Step:
    kind: Kind
    stages: tuple[StageSpec, ...]  # empty for ingest
    fingerprint: str  # of the last stage: every setting and input up to it

    @property
    def name(self) -> str:
        """The checkpoint folder: the step's stages, joined (`01-normalize+02-langid`)."""
        return "+".join(s.step for s in self.stages) if self.stages else "00-ingest"

    @property
    def ledger_steps(self) -> list[str]:
        return [s.step for s in self.stages] or ["00-ingest"]

    def language_set_at(self) -> int | None:
        """The index of the stage that sets the query's language (for the ledger), if any."""
        return next((i for i, s in enumerate(self.stages) if "query_lang" in s.cls.writes), None)

    def resources(self) -> Resources:
        """What one worker of the step needs: the most any of its stages needs (ingest: one CPU)."""
        if not self.stages:
            return Resources()
        return Resources(
            max(s.cls.resources.cpus for s in self.stages),
            max(s.cls.resources.gpus for s in self.stages),
            max(s.cls.resources.memory_mb for s in self.stages),
        )


def _kind(cls: type[Stage]) -> Kind:
    if issubclass(cls, DatasetStage):
        return "dataset"
    return "shuffle" if issubclass(cls, ShuffleStage) else "rows"


def plan_steps(
    configs: list[StageConfig], registry: Registry, ingest_fingerprint: str, every_step: bool = False
) -> list[Step]:
    steps = [Step("ingest", (), ingest_fingerprint)]
    fp = ingest_fingerprint
    group: list[StageSpec] = []

    def close_group() -> None:
        if group:
            steps.append(Step("rows", tuple(group), group[-1].fingerprint))
            group.clear()

    for i, config in enumerate(configs, start=1):
        cls = registry[config.stage]
        fp = fingerprint(fp, cls.name, cls.version, config.model_dump(mode="json", exclude={"checkpoint"}))
        spec = StageSpec(f"{i:02d}-{cls.name}", cls, config, fp)
        kind = _kind(cls)
        if kind != "rows":
            close_group()
            steps.append(Step(kind, (spec,), fp))
            continue
        # One stage that sets the query's language per group (the ledger counts the others under the
        # language before the group); and a GPU stage runs alone, on the workers that have one.
        sets_language = "query_lang" in cls.writes and any("query_lang" in s.cls.writes for s in group)
        if sets_language or (group and (cls.resources.gpus or any(s.cls.resources.gpus for s in group))):
            close_group()
        group.append(spec)
        if every_step or config.checkpoint:
            close_group()
    close_group()
    return steps
