"""The built-in stages, one module per stage named as the stage (`stage: langid` is `langid.py`).

`REGISTRY` is the one list of them: the manifest schema, the validator and the runner read it, so a
stage is known everywhere or nowhere. A project adds its own with `REGISTRY.register(MyStage)`.
"""

from pipeline.engine.stage import Registry
from pipeline.stages.build_pairs import BuildPairs
from pipeline.stages.decontaminate import Decontaminate
from pipeline.stages.exact_dedup import ExactDedup
from pipeline.stages.filter import QualityFilter
from pipeline.stages.instruct import Instruct
from pipeline.stages.langid import LangTag
from pipeline.stages.langid_prior import LangPrior
from pipeline.stages.mine_negatives import MineNegatives
from pipeline.stages.mix import Mix
from pipeline.stages.near_dedup import NearDedup
from pipeline.stages.normalize import Normalize

REGISTRY = Registry(
    (
        Normalize,
        LangTag,
        LangPrior,
        QualityFilter,
        Decontaminate,
        Instruct,
        ExactDedup,
        NearDedup,
        BuildPairs,
        MineNegatives,
        Mix,
    )
)
