"""Language tagging of each text field with a fastText model (bundled lid.176 by default)."""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from langid import UNDETERMINED, LanguageTagger
from pipeline.arrow_utils import replace_column, set_where
from pipeline.record import DROP
from pipeline.stage import RunContext, Stage, StageConfig, register


class LangTagConfig(StageConfig):
    stage: Literal["langid"]
    model: str = Field("lid176", description="`lid176` (bundled) or the path of any fastText language-ID model.")
    min_confidence: float = Field(0.3, ge=0.0, le=1.0, description="Below this a text is labelled `und`.")
    drop_below: bool = Field(False, description="Drop rows whose query is `und` after the threshold.")


@register
class LangTag(Stage):
    """Sets `<field>_lang` and `<field>_lang_conf` for query, positive and the negatives (as a set)."""

    name = "langid"
    config_model = LangTagConfig
    stateful = True  # the model is loaded once per actor
    config: LangTagConfig

    def __init__(self, config: LangTagConfig, context: RunContext):
        super().__init__(config, context)
        self.tagger = LanguageTagger(config.model)

    def _tag(self, texts: list[str | None]) -> tuple[list[str], np.ndarray]:
        labels, conf = self.tagger.predict(texts)
        low = conf < self.config.min_confidence
        return [UNDETERMINED if lo else lab for lab, lo in zip(labels, low)], conf

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        queries = batch.column("query").to_pylist()
        positives = batch.column("positive").to_pylist()
        negatives = batch.column("negatives").to_pylist()
        flat_neg = [t for negs in negatives for t in (negs or [])]
        # One predict call for every text of the batch: fastText's per-call overhead is what we save.
        labels, conf = self._tag(queries + positives + flat_neg)

        for i, field in enumerate(("query", "positive")):
            lab, cf = labels[i * n : (i + 1) * n], conf[i * n : (i + 1) * n]
            present = [t is not None for t in (queries if i == 0 else positives)]
            batch = replace_column(batch, f"{field}_lang", pa.array([l if p else None for l, p in zip(lab, present)], pa.string()))
            batch = replace_column(batch, f"{field}_lang_conf", pa.array([c if p else None for c, p in zip(cf.tolist(), present)], pa.float32()))

        neg_lang, neg_conf, pos = [], [], 2 * n
        for negs in negatives:
            k = len(negs or [])
            if k == 0:
                neg_lang.append(None)
                neg_conf.append(None)
                continue
            # The set's label is its most common label; its confidence the mean over those texts.
            chunk = labels[pos : pos + k]
            top = Counter(chunk).most_common(1)[0][0]
            neg_lang.append(top)
            neg_conf.append(float(np.mean([c for l, c in zip(chunk, conf[pos : pos + k]) if l == top])))
            pos += k
        batch = replace_column(batch, "negatives_lang", pa.array(neg_lang, pa.string()))
        batch = replace_column(batch, "negatives_lang_conf", pa.array(neg_conf, pa.float32()))

        if self.config.drop_below:
            und = pa.array([l == UNDETERMINED for l in labels[:n]])
            batch = replace_column(batch, DROP, set_where(batch.column(DROP), und, "low_language_confidence"))
        return batch
