"""Language tagging of each text field (query, positive, negatives as a set) with a fastText model.

Per field it sets `<field>_lang` (ISO 639-3 + script, `und`, or `code:<lang>`) and its confidence;
`cross_lingual` says whether query and positive are in different languages (kept, not dropped).
A source's declared language is trusted, verified or ignored as its `language_policy` says; a
confident disagreement is counted in the ledger (`flagged`, reason `language_mismatch`, under the
declared language; once per field: query, positive, the set of negatives) and, with
`drop_mismatch`, drops the row (query or positive). Thresholds depend on the predicted label and
the text's length (the model's table, `langid/thresholds.py`). With `pair_context`, a short query
the model is unsure of takes its positive's language when the positive is sure of it and it is
among the query's best candidates (flagged `language_from_pair`).
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, ValidationInfo, field_validator

from core.record import DECLARED_LANG, FLAGS
from core.settings import example, from_manifest
from langid import UNDETERMINED, LanguageTagger
from langid.declared import agrees
from langid.distinct import map_distinct
from langid.fragments import BUCKET_NAMES, bucket_index, bucket_indices
from langid.labels import CODE_PREFIX, is_scheme_label, language_of
from langid.tagger import BUNDLED_MODELS, DEFAULT_FALLBACK, DEFAULT_MODEL, Tags
from pipeline.engine.stage import Stage, StageConfig
from pipeline.ops.arrow import flag_lists, replace_column

PAIR_FLAG = "language_from_pair"


def bucket_name(bucket: str) -> str:
    """A length bucket's name, checked (a config's `..._max_words`)."""
    if bucket not in BUCKET_NAMES:
        raise ValueError(f"must be one of {', '.join(BUCKET_NAMES)}")
    return bucket


def resolve_model(model: str | None, info: ValidationInfo) -> str | None:
    """A bundled model's name as it is, or the resolved path of a model file (relative to the manifest)."""
    if model is None or model in BUNDLED_MODELS:
        return model
    path = from_manifest(model, info)
    if not path.is_file():
        raise ValueError(f"no fastText model at {path} (bundled models: {', '.join(BUNDLED_MODELS)})")
    return str(path.resolve())


def cross_lingual(query: pa.Array, positive: pa.Array) -> pa.Array:
    """Whether query and positive are in different languages (null where either is missing or `und`)."""
    known = pc.and_(pc.not_equal(query, UNDETERMINED), pc.not_equal(positive, UNDETERMINED))
    return pc.if_else(known, pc.not_equal(_languages(query), _languages(positive)), pa.scalar(None, pa.bool_()))


class LangTagConfig(StageConfig):
    model_config = example(stage="langid", model="short200", fallback="lid176", min_confidence=0.3, drop_mismatch=True)

    stage: Literal["langid"]
    model: str = Field(
        DEFAULT_MODEL,
        description=f"A bundled model ({', '.join(BUNDLED_MODELS)}) or the path of any fastText language-ID model "
        "(GlotLID, OpenLID, `python -m langid train`).",
    )
    fallback: str | None = Field(
        DEFAULT_FALLBACK,
        description="Model asked where `model` is unsure; its label is taken when `model` does not know that language "
        "and the fallback is sure (null: none).",
    )
    min_confidence: float = Field(
        0.3, ge=0.0, le=1.0, description="Below this a text is labelled `und` (labels without their own threshold)."
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Per-label thresholds ({eng_Latn: 0.8}), for every length; "
        "override the model's length-aware table.",
    )
    pair_context: bool = Field(
        False,
        description="A short, unsure query takes its positive's language when the positive is sure of it "
        "and it is among the query's candidates (flagged `language_from_pair`).",
    )
    pair_max_words: str = Field(
        "3-5", description=f"Longest length bucket the pair rule applies to ({', '.join(BUCKET_NAMES)})."
    )
    pair_candidates: int = Field(
        5, ge=1, le=20, description="How many of the query's best labels the positive's language must be among."
    )
    drop_below: bool = Field(False, description="Drop rows whose query is `und` after the thresholds.")
    drop_mismatch: bool = Field(
        False, description="Drop rows where a verified declared language is confidently contradicted."
    )
    max_chars: int = Field(
        3000, ge=30, description="Longer texts are predicted on three windows (start, middle, end) of max_chars/3."
    )
    detect_code: bool = Field(True, description="Tag texts that look like source code `code:<lang>`.")
    prefer_standard: bool = Field(
        True,
        description="A regional variety (Najdi Arabic, Cantonese, Dari...) keeps a text only with at least half "
        "its group's probability, else the standard (Standard Arabic, Mandarin, Persian) takes it.",
    )

    @field_validator("pair_max_words")
    @classmethod
    def _bucket(cls, bucket: str) -> str:
        return bucket_name(bucket)

    @field_validator("model", "fallback")
    @classmethod
    def _model_exists(cls, model: str | None, info: ValidationInfo) -> str | None:
        return resolve_model(model, info)

    @field_validator("thresholds")
    @classmethod
    def _labels(cls, thresholds: dict[str, float]) -> dict[str, float]:
        bad = [k for k, v in thresholds.items() if not is_scheme_label(k) or not 0.0 <= v <= 1.0]
        if bad:
            raise ValueError(f"thresholds need labels like eng_Latn and values in [0, 1]: {bad}")
        return thresholds


class LangTag(Stage[LangTagConfig]):
    config_model = LangTagConfig
    version = "6"  # 6: Chinese by script, min_confidence as a floor under the model's table
    # negatives as texts: the validator refuses langid after they are stored by id
    reads = ("query", "positive", "negatives")
    writes = (
        "query_lang",
        "query_lang_conf",
        "positive_lang",
        "positive_lang_conf",
        "negatives_lang",
        "negatives_lang_conf",
        "cross_lingual",
    )

    def setup(self) -> None:
        config, context = self.config, self.context
        self.tagger = LanguageTagger(
            config.model,
            max_chars=config.max_chars,
            detect_code=config.detect_code,
            fallback=config.fallback,
            min_confidence=config.min_confidence,
            thresholds=config.thresholds,
            prefer_standard=config.prefer_standard,
        )
        # field -> {source: (declared label, policy)} for the sources that declare one
        self.declared = {
            field: {
                name: (src.declared_language(field), src.language_policy)
                for name, src in context.sources.items()
                if src.declared_language(field)
            }
            for field in ("query", "positive", "negatives")
        }

    def _declared(self, batch: pa.Table, field: str) -> tuple[list[str | None], list[str]]:
        """Per row: the declared label of `field` (row column first, then the source) and the policy."""
        n = batch.num_rows
        by_source = self.declared[field]
        per_row = batch.column(DECLARED_LANG)
        if not by_source and per_row.null_count == n:
            return [None] * n, ["ignored"] * n  # nothing declared: the common case, kept cheap
        labels, policies = [], []
        for source, row_lang in zip(batch.column("source").to_pylist(), per_row.to_pylist()):
            declared, policy = by_source.get(source, (None, "ignored"))
            if row_lang is not None:
                config = self.context.sources.get(source)
                declared, policy = row_lang, (config.language_policy if config else "verified")
            labels.append(declared)
            policies.append(policy)
        return labels, policies

    def _tag_fields(
        self, fields: list[tuple[pa.Array, list[str | None], list[str]]]
    ) -> list[tuple[list[str | None], np.ndarray, Tags | None, np.ndarray]]:
        """Per field (texts, declared labels, policies): labels (None where the text is missing; `und`
        below the threshold), confidences, the tagger's `Tags` and the indices they are for (texts
        present and not trusted). All fields are tagged in one call: the model then reads a batch's
        texts in one run (each call's first predictions pay for bringing the model back into the CPU
        caches: tagging query and positive apart was 5% slower on fragments), and a text shared by
        two fields is predicted once."""
        todos = []
        for texts, declared, policies in fields:
            present = texts.is_valid().to_numpy(zero_copy_only=False)
            if declared.count(None) < len(declared):
                present &= np.array(self._policies(declared, policies)) != "trusted"
            todos.append(np.flatnonzero(present))
        parts = [
            texts if len(todo) == len(texts) else texts.take(pa.array(todo, pa.int64()))
            for (texts, _, _), todo in zip(fields, todos)
        ]
        joined = pa.concat_arrays([part.cast(pa.string()) for part in parts])
        tags = self.tagger.tag(joined) if len(joined) else None
        out, start = [], 0
        for (texts, _, _), todo in zip(fields, todos):
            labels: list[str | None] = [None] * len(texts)
            conf = np.zeros(len(texts), dtype=np.float32)
            part = tags.slice(start, start + len(todo)) if len(todo) else None
            start += len(todo)
            if part is not None and len(todo) == len(texts):  # every text tagged: the common case, no per-text copying
                labels, conf = part.decided(), part.confidence.copy()
            elif part is not None:
                conf[todo] = part.confidence
                for i, label in zip(todo.tolist(), part.decided()):
                    labels[i] = label
            out.append((labels, conf, part, todo))
        return out

    @staticmethod
    def _policies(declared: list[str | None], policies: list[str]) -> list[str]:
        # A declared programming language is trusted: a language-ID model cannot check it.
        return [
            "trusted" if d is not None and d.startswith(CODE_PREFIX) and p == "verified" else p
            for d, p in zip(declared, policies)
        ]

    def _apply_declared(
        self,
        texts: pa.Array,
        labels: list[str | None],
        conf: np.ndarray,
        declared: list[str | None],
        policies: list[str],
    ) -> list[int]:
        """Declared languages in place (trusted: taken; verified: kept where the prediction agrees)
        for the texts present; returns the indices of confident disagreements."""
        mismatches = []
        if declared.count(None) == len(declared):
            return mismatches  # nothing declared: the common case, kept cheap
        policies = self._policies(declared, policies)
        for i in np.flatnonzero(texts.is_valid().to_numpy(zero_copy_only=False)).tolist():
            d, policy = declared[i], policies[i]
            if d is None or policy == "ignored":
                continue
            if policy == "trusted":
                labels[i], conf[i] = d, 1.0
            elif agrees(d, labels[i]):
                labels[i] = d
            else:
                mismatches.append(i)
        return mismatches

    def _from_pair(
        self, texts: pa.Array, query: tuple, positive: list[str | None], positive_sure: np.ndarray
    ) -> list[int]:
        """The pair-context rule: rows whose short, unsure query takes the positive's language
        (set in place in `query`'s labels and confidences); returns their indices."""
        labels, conf, tags, todo = query
        if tags is None:
            return []
        longest = bucket_index(self.config.pair_max_words)
        buckets = bucket_indices(texts.take(pa.array(todo, pa.int64())))
        rows = [
            (i, positive[i])
            for j, i in enumerate(todo.tolist())
            if not tags.sure[j]
            and buckets[j] <= longest
            and positive[i] not in (None, UNDETERMINED)
            and positive_sure[i]
            and not positive[i].startswith(CODE_PREFIX)
        ]
        if not rows:
            return []
        candidates = self.tagger.candidates([texts[i].as_py() for i, _ in rows], self.config.pair_candidates)
        taken = []
        for (i, label), best in zip(rows, candidates):
            if label in best:
                labels[i], conf[i] = label, best[label]
                taken.append(i)
        return taken

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        flags: list[
            tuple[int, str, str | None]
        ] = []  # (row, reason, language); cross-lingual ones are added column-wise
        drop: list[str | None] = [None] * n
        detail: list[str | None] = [None] * n
        out: dict[str, pa.Array] = {}

        # Negatives: every text is tagged, the set gets its most common label and that label's mean confidence.
        negatives = batch.column("negatives").combine_chunks()
        lengths = pc.fill_null(pc.list_value_length(negatives), 0).to_numpy(zero_copy_only=False)
        owner = np.repeat(np.arange(n), lengths).tolist()
        neg_declared, neg_policies = self._declared(batch, "negatives")
        fields = {
            field: (batch.column(field).combine_chunks(), *self._declared(batch, field))
            for field in ("query", "positive")
        }
        fields["negatives"] = (
            pc.list_flatten(negatives),
            [neg_declared[i] for i in owner],
            [neg_policies[i] for i in owner],
        )
        tagged = {
            field: (d, p, result)
            for (field, (_, d, p)), result in zip(fields.items(), self._tag_fields(list(fields.values())))
        }
        if self.config.pair_context:
            _, _, (p_labels, _, p_tags, p_todo) = tagged["positive"]
            p_sure = np.zeros(n, dtype=bool)
            if p_tags is not None:
                p_sure[p_todo] = p_tags.sure
            for i in self._from_pair(batch.column("query").combine_chunks(), tagged["query"][2], p_labels, p_sure):
                flags.append((i, PAIR_FLAG, tagged["query"][2][0][i]))
        for field in ("query", "positive"):
            declared, policies, (labels, conf, _, _) = tagged[field]
            mismatches = self._apply_declared(batch.column(field).combine_chunks(), labels, conf, declared, policies)
            for i in mismatches:
                flags.append((i, "language_mismatch", declared[i]))
                if self.config.drop_mismatch and drop[i] is None:
                    drop[i], detail[i] = (
                        "language_mismatch",
                        f"{field}: declared {declared[i]}, predicted {labels[i]} ({conf[i]:.2f})",
                    )
            out[field] = pa.array(labels, pa.string())
            batch = replace_column(batch, f"{field}_lang", out[field])
            batch = replace_column(
                batch,
                f"{field}_lang_conf",
                pa.array(conf, pa.float32(), mask=out[field].is_null().to_numpy(zero_copy_only=False)),
            )

        flat, each_declared, each_policy = fields["negatives"]
        labels, conf, _, _ = tagged["negatives"][2]
        mismatches = self._apply_declared(flat, labels, conf, each_declared, each_policy)
        for i in sorted({owner[j] for j in mismatches}):  # one count per row for its set of negatives
            flags.append((i, "language_mismatch", neg_declared[i]))
        neg_lang: list[str | None] = [None] * n
        neg_conf: list[float | None] = [None] * n
        by_row: dict[int, list[int]] = {}
        for j, i in enumerate(owner):
            by_row.setdefault(i, []).append(j)
        for i, js in by_row.items():
            top = Counter(labels[j] for j in js).most_common(1)[0][0]
            neg_lang[i] = top
            neg_conf[i] = float(np.mean([conf[j] for j in js if labels[j] == top]))
        batch = replace_column(batch, "negatives_lang", pa.array(neg_lang, pa.string()))
        batch = replace_column(batch, "negatives_lang_conf", pa.array(neg_conf, pa.float32()))

        # Column-wise: a batch has a few hundred distinct labels at most, its rows thousands.
        query, positive = out["query"], out["positive"]
        cross = cross_lingual(query, positive)
        if self.config.drop_below:
            for i in np.flatnonzero(
                pc.fill_null(pc.equal(query, UNDETERMINED), False).to_numpy(zero_copy_only=False)
            ).tolist():
                if drop[i] is None:
                    drop[i], detail[i] = "low_language_confidence", "query: below the confidence threshold"
        batch = replace_column(batch, "cross_lingual", cross)
        crossed = np.flatnonzero(pc.fill_null(cross, False).to_numpy(zero_copy_only=False))
        rows = np.concatenate([np.array([f[0] for f in flags], dtype=np.int64), crossed])
        reasons = pa.array([f[1] for f in flags] + ["cross_lingual"] * len(crossed), pa.string())
        languages = pa.concat_arrays(
            [pa.array([f[2] for f in flags], pa.string()), query.take(pa.array(crossed, pa.int64()))]
        )
        batch = replace_column(batch, FLAGS, flag_lists(n, rows, reasons, languages))
        return self.drop(batch, drop, detail)


def _languages(labels: pa.Array) -> pa.Array:
    """The language of each label (`srp` for `srp_Cyrl`), computed once per distinct label."""
    return map_distinct(labels, language_of)
