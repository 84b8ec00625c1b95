"""Per-language statistics of a run, written as Parquet and CSV under `RUN_DIR/stats/`.

One streaming pass over the shards, a batch of rows at a time: each batch becomes small partial
tables (sums per source, task and language; counts per histogram bin), which are added up at the
end. Sums and binned counts add across batches, so memory holds one batch of records and the
partials, whatever the run's size; medians and percentiles are read from the histograms (to the
bin's width: 1% of confidence, ~12% of a length). The funnel and decontamination hits come from the
ledger, which already counts every step's rows per source, language and reason.

Tables (see docs/outputs.md): `languages`, `sources`, `tasks`, `funnel`, `filters`,
`histograms`, `samples`, and `comparison` when a reference is given; `meta.json` says what they
describe. A previous run's `languages` table is kept as `previous_languages` for drift.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from core.passages import CORPUS_DIR, DOC_ID, NEGATIVE_IDS, TEXT
from langid.labels import label_kind, language_family, language_name, script_name
from pipeline.engine.checkpoint import Checkpoint
from pipeline.ops.files import write_atomic
from pipeline.ops.minhash import UNSPACED

STATS_DIR = "stats"
BATCH_ROWS = 8192
SAMPLE_CHARS = 400
# A word is a run of letters, digits and marks; in scripts written without spaces every character
# (with its marks) counts, as in near-dup shingling (pipeline/ops/minhash.py).
WORD_PATTERN = rf"[{UNSPACED}]\p{{M}}*|[[\p{{L}}\p{{N}}\p{{M}}]--[{UNSPACED}]]+"
COLUMNS = [
    "source",
    "task",
    "instruction",
    "query",
    "positive",
    NEGATIVE_IDS,
    "negatives",
    "positive_score",
    "negative_scores",
    "label",
    "query_lang",
    "query_lang_conf",
    "positive_lang_conf",
    "cross_lingual",
    "dup_count",
    "near_dup_count",
    "id",
]


def _geometric_edges() -> np.ndarray:
    """0, 1, 2, ... then ~12% wider each bin: exact for small counts, relative for long texts."""
    return np.unique(np.concatenate([[0.0], np.floor(1.12 ** np.arange(0, 220))]))


def _signed_log_edges() -> np.ndarray:
    """Score margins: any sign and scale (cosine ~0.1, BM25 ~10); bins ~2% wide in log(1+|x|)."""
    pos = np.expm1(np.arange(0.0, 9.0, 0.02))
    return np.concatenate([-pos[:0:-1], pos])


@dataclass(frozen=True)
class Metric:
    name: str
    edges: np.ndarray
    description: str


METRICS = {
    m.name: m
    for m in (
        Metric("query_chars", _geometric_edges(), "characters of the query"),
        Metric("positive_chars", _geometric_edges(), "characters of the positive"),
        Metric("query_tokens", _geometric_edges(), "tokens of the query"),
        Metric("positive_tokens", _geometric_edges(), "tokens of the positive"),
        Metric("query_lang_conf", np.linspace(0.0, 1.0, 101), "language-ID confidence of the query"),
        Metric("positive_lang_conf", np.linspace(0.0, 1.0, 101), "language-ID confidence of the positive"),
        Metric("negatives", _geometric_edges(), "hard negatives per query"),
        Metric("margin", _signed_log_edges(), "positive score minus the hardest negative's score"),
        Metric("dup_count", _geometric_edges(), "exact-duplicate cluster size (per kept row)"),
        Metric("near_dup_count", _geometric_edges(), "near-duplicate cluster size (per kept row)"),
    )
}
HIST_SCHEMA = {"language": pl.String, "metric": pl.String, "bin": pl.Int32, "count": pl.Int64}
FOLD_EVERY = 64  # batches between foldings of the partial tables
SUMS = [
    "records",
    "characters",
    "tokens",
    "query_chars",
    "positive_chars",
    "negative_chars",
    "query_tokens",
    "positive_tokens",
    "negative_tokens",
    "instructed",
    "cross_lingual",
    "with_negatives",
    "negatives",
    "exact_dup_clusters",
    "near_dup_clusters",
]


class TokenCounter:
    """Tokens per text: a `tokenizers` tokenizer (a tokenizer.json file or a folder holding one), or
    words by the script-aware rule when none is named."""

    def __init__(self, tokenizer: str | None = None):
        self.name = "words (script-aware)"
        self._tokenizer = None
        if tokenizer:
            from tokenizers import Tokenizer

            path = Path(tokenizer)
            self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path))
            self.name = str(path)

    def __call__(self, texts: pl.Series) -> pl.Series:
        if self._tokenizer is None:
            return texts.str.count_matches(WORD_PATTERN).fill_null(0).cast(pl.Int64)
        present = texts.fill_null("").to_list()
        return pl.Series(
            [len(e.ids) for e in self._tokenizer.encode_batch(present, add_special_tokens=False)], dtype=pl.Int64
        )


def _batches(files: list[str]) -> Iterator[pl.DataFrame]:
    for path in files:
        parquet = pq.ParquetFile(path)
        columns = [c for c in COLUMNS if c in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            yield pl.from_arrow(pa.Table.from_batches([batch]))  # type: ignore[misc]


def passage_figures(files: list[str], count: TokenCounter) -> pl.DataFrame:
    """Characters and tokens of each passage of the run's passage table (`doc_id`, `chars`, `tokens`),
    counted once however many rows name the passage."""
    parts = [
        pl.from_arrow(pa.Table.from_batches([b]))
        for f in files
        for b in pq.ParquetFile(f).iter_batches(BATCH_ROWS, columns=[DOC_ID, TEXT])
    ]
    return (
        pl.concat(
            [
                p.select(
                    DOC_ID, pl.col(TEXT).str.len_chars().cast(pl.Int64).alias("chars"), count(p[TEXT]).alias("tokens")
                )  # type: ignore[union-attr]
                for p in parts
            ],
            how="vertical",
        )
        if parts
        else pl.DataFrame(schema={DOC_ID: pl.String, "chars": pl.Int64, "tokens": pl.Int64})
    )


def _negatives(df: pl.DataFrame, count: TokenCounter, passages: pl.DataFrame) -> pl.DataFrame:
    """Per row: its negatives' number, characters and tokens, by id through the passage table (or from
    inline texts, in shards written before negatives were stored by reference)."""
    rows = df.with_row_index("row")
    if NEGATIVE_IDS in df.columns:
        number = pl.col(NEGATIVE_IDS).list.len()
        flat = rows.select("row", pl.col(NEGATIVE_IDS).alias(DOC_ID)).explode(DOC_ID).drop_nulls(DOC_ID)
        flat = flat.join(passages, on=DOC_ID, how="left")
    else:
        number = pl.col("negatives").list.len()
        flat = rows.select("row", "negatives").explode("negatives").drop_nulls("negatives")
        flat = flat.with_columns(
            chars=pl.col("negatives").str.len_chars().cast(pl.Int64), tokens=count(flat["negatives"])
        )
    per_row = flat.group_by("row").agg(
        pl.col("chars").sum().alias("negative_chars"), pl.col("tokens").sum().alias("negative_tokens")
    )
    return (
        rows.select("row", number.fill_null(0).cast(pl.Int64).alias("negatives"))
        .join(per_row, on="row", how="left", maintain_order="left")
        .fill_null(0)
    )


def _per_row(df: pl.DataFrame, count: TokenCounter, passages: pl.DataFrame) -> pl.DataFrame:
    """The figures of each row that the sums and histograms are made of."""
    negatives = _negatives(df, count, passages)
    out = df.select(
        "source",
        "task",
        pl.col("query_lang").fill_null("und").alias("language"),
        pl.col("query").str.len_chars().fill_null(0).cast(pl.Int64).alias("query_chars"),
        pl.col("positive").str.len_chars().fill_null(0).cast(pl.Int64).alias("positive_chars"),
        pl.col("instruction").is_not_null().cast(pl.Int64).alias("instructed"),
        pl.col("cross_lingual").fill_null(False).cast(pl.Int64).alias("cross_lingual"),
        "query_lang_conf",
        "positive_lang_conf",
        "dup_count",
        "near_dup_count",
        (pl.col("positive_score") - pl.col("negative_scores").list.max()).alias("margin"),
    ).with_columns(
        query_tokens=count(df["query"]),
        positive_tokens=count(df["positive"]),
        negatives=negatives["negatives"],
        negative_chars=negatives["negative_chars"],
        negative_tokens=negatives["negative_tokens"],
    )
    return out.with_columns(
        records=pl.lit(1, pl.Int64),
        characters=pl.col("query_chars") + pl.col("positive_chars") + pl.col("negative_chars"),
        tokens=pl.col("query_tokens") + pl.col("positive_tokens") + pl.col("negative_tokens"),
        with_negatives=(pl.col("negatives") > 0).cast(pl.Int64),
        exact_dup_clusters=(pl.col("dup_count").fill_null(1) > 1).cast(pl.Int64),
        near_dup_clusters=(pl.col("near_dup_count").fill_null(1) > 1).cast(pl.Int64),
    )


def _histogram_counts(rows: pl.DataFrame) -> pl.DataFrame:
    parts = []
    for metric in METRICS.values():
        value = pl.col(metric.name)
        if metric.name == "negatives":  # per query that has negatives (margins are null without)
            value = pl.when(value > 0).then(value)
        values = rows.select("language", value.cast(pl.Float64).alias("value")).drop_nulls("value")
        if values.height == 0:
            continue
        bins = np.clip(
            np.searchsorted(metric.edges, values["value"].to_numpy(), side="right") - 1, 0, len(metric.edges) - 2
        )
        parts.append(
            values.with_columns(pl.Series("bin", bins, pl.Int32), pl.lit(metric.name).alias("metric"))
            .group_by("language", "metric", "bin")
            .agg(pl.len().cast(pl.Int64).alias("count"))
        )
    return pl.concat(parts) if parts else pl.DataFrame(schema=HIST_SCHEMA)


def _samples(df: pl.DataFrame, per_language: int) -> pl.DataFrame:
    return (
        df.with_columns(pl.col("query_lang").fill_null("und").alias("language"))
        .group_by("language", maintain_order=True)
        .head(per_language)
        .select(
            "language",
            "id",
            "source",
            "task",
            "instruction",
            pl.col("query").str.slice(0, SAMPLE_CHARS),
            pl.col("positive").str.slice(0, SAMPLE_CHARS),
            "label",
        )
    )


def quantile(hist: pl.DataFrame, metric: str, q: float) -> pl.DataFrame:
    """Per language, the q-quantile of a metric read from its histogram (linear within the bin)."""
    edges = METRICS[metric].edges
    h = (
        hist.filter(pl.col("metric") == metric)
        .sort("language", "bin")
        .with_columns(cum=pl.col("count").cum_sum().over("language"), total=pl.col("count").sum().over("language"))
    )
    first = h.filter(pl.col("cum") >= q * pl.col("total")).group_by("language").agg(pl.all().first())
    lo = edges[first["bin"].to_numpy()]
    hi = edges[first["bin"].to_numpy() + 1]
    before = (first["cum"] - first["count"]).to_numpy()
    frac = np.clip((q * first["total"].to_numpy() - before) / np.maximum(first["count"].to_numpy(), 1), 0, 1)
    return pl.DataFrame({"language": first["language"], f"{metric}_p{round(q * 100)}": lo + frac * (hi - lo)})


def _language_info(languages: pl.Series) -> pl.DataFrame:
    labels = languages.to_list()
    return pl.DataFrame(
        {
            "language": labels,
            "name": [language_name(x) for x in labels],
            "script": [x.partition("_")[2] or None for x in labels],
            "script_name": [script_name(x) for x in labels],
            "family": [language_family(x) for x in labels],
            "kind": [label_kind(x) for x in labels],
        }
    )


def read_reference(path: str | Path) -> pl.DataFrame:
    """A reference distribution: a CSV with columns `language` (xxx_Xxxx or ISO 639-3) and `count`."""
    ref = pl.read_csv(path, schema_overrides={"language": pl.String})
    missing = {"language", "count"} - set(ref.columns)
    if missing:
        raise ValueError(
            f"{path}: a reference needs columns language and count; missing {sorted(missing)} (has {ref.columns})"
        )
    return ref.group_by("language").agg(pl.col("count").cast(pl.Float64).sum())


def compare(languages: pl.DataFrame, reference: pl.DataFrame) -> pl.DataFrame:
    """Side-by-side shares. Reference labels without a script are matched on the ISO 639-3 code
    (all scripts of the language summed), so a corpus counted per language compares as it is."""
    by_label = set(reference["language"].to_list())
    ours = languages.select("language", "records").with_columns(
        key=pl.when(pl.col("language").is_in(list(by_label)))
        .then(pl.col("language"))
        .otherwise(pl.col("language").str.split("_").list.first())
    )
    ours = ours.group_by("key").agg(pl.col("records").sum())
    out = ours.join(
        reference.rename({"language": "key", "count": "reference_count"}), on="key", how="full", coalesce=True
    ).fill_null(0)
    out = out.with_columns(
        share=pl.col("records") / pl.col("records").sum(),
        reference_share=pl.col("reference_count") / pl.col("reference_count").sum(),
    )
    out = out.rename({"key": "language"}).with_columns(ratio=pl.col("share") / pl.col("reference_share"))
    return out.with_columns(pl.col("language").map_elements(language_name, return_dtype=pl.String).alias("name")).sort(
        "records", "reference_count", descending=True
    )


def _funnel(run_dir: Path) -> pl.DataFrame:
    ledger = pl.read_parquet(run_dir / "ledger.parquet")
    return (
        ledger.group_by("step", "language", "kind", "reason")
        .agg(pl.col("rows").sum())
        .sort("step", "language", "kind", "reason", nulls_last=True)
    )


def filters(funnel: pl.DataFrame) -> pl.DataFrame:
    """The `filter` stage per language and filter: the rows that reached it, the rows each filter
    dropped (`filter:<name>[:<reason>]`) and the rate, the rows it could not judge (`skipped`: no
    word tokenizer for the text's language) and the negatives it removed, these two under the
    language of the text. A run whose filter stage found nothing has one row per language with no
    filter; a run without the stage, no row."""
    steps = [s for s in funnel["step"].unique().to_list() if s.endswith("-filter")]
    schema = {
        "language": pl.String,
        "filter": pl.String,
        "rows_in": pl.Int64,
        "dropped": pl.Int64,
        "rate": pl.Float64,
        "skipped": pl.Int64,
        "negatives_removed": pl.Int64,
    }
    if not steps:
        return pl.DataFrame(schema=schema)
    mine = funnel.filter(pl.col("step").is_in(steps))
    rows_in = mine.filter(kind="in").group_by("language").agg(pl.col("rows").sum().alias("rows_in"))

    def counted(kind: str, prefix: str, name: str) -> pl.DataFrame:
        return (
            mine.filter((pl.col("kind") == kind) & pl.col("reason").str.starts_with(prefix))
            .with_columns(pl.col("reason").str.split(":").list.get(1, null_on_oob=True).alias("filter"))
            .group_by("language", "filter")
            .agg(pl.col("rows").sum().cast(pl.Int64).alias(name))
        )

    parts = [
        counted("dropped", "filter:", "dropped"),
        counted("flagged", "filter_skipped:", "skipped"),
        counted("flagged", "filter_negative:", "negatives_removed"),
    ]
    names = pl.concat([p.select("filter") for p in parts]).unique().sort("filter")
    if not names.height:
        names = pl.DataFrame({"filter": [None]}, schema={"filter": pl.String})
    grid = (
        pl.concat([rows_in.select("language"), *(p.select("language") for p in parts)])
        .unique()
        .join(rows_in, on="language", how="left")
    )
    table = grid.with_columns(pl.col("rows_in").fill_null(0).cast(pl.Int64)).join(names, how="cross")
    for part, name in zip(parts, ("dropped", "skipped", "negatives_removed")):
        table = table.join(part, on=["language", "filter"], how="left", nulls_equal=True).with_columns(
            pl.col(name).fill_null(0)
        )
    return (
        table.with_columns(
            pl.when(pl.col("rows_in") > 0).then(pl.col("dropped") / pl.col("rows_in")).otherwise(0.0).alias("rate")
        )
        .select(list(schema))
        .cast(schema)
        .sort("language", "filter", nulls_last=True)
    )


def _write(table: pl.DataFrame, folder: Path, name: str) -> None:
    write_atomic(folder / f"{name}.parquet", lambda tmp: table.write_parquet(tmp))
    flat = table.select([c for c in table.columns if not isinstance(table[c].dtype, (pl.List, pl.Struct))])
    write_atomic(folder / f"{name}.csv", lambda tmp: flat.write_csv(tmp))


def compute(
    run_dir: str | Path,
    tokenizer: str | None = None,
    reference: str | None = None,
    samples_per_language: int = 3,
    progress: bool = True,
) -> dict[str, pl.DataFrame]:
    """Compute and write every statistics table of a finished run; returns them by name."""
    from tqdm import tqdm

    started = time.perf_counter()
    run_dir = Path(run_dir)
    marker = Checkpoint(run_dir, "shards").marker()
    if marker is None:
        raise FileNotFoundError(f"{run_dir}: no finished shards (shards/_SUCCESS.json); run the manifest first")
    files = [str(run_dir / "shards" / s["path"]) for s in marker["shards"]]
    count = TokenCounter(tokenizer)
    sums, hists, samples = [], [], []
    total_rows = sum(s["rows"] for s in marker["shards"])
    passages = passage_figures([str(run_dir / CORPUS_DIR / p["path"]) for p in marker.get("corpus", [])], count)
    with tqdm(total=total_rows, desc="statistics", unit="rows", disable=not progress) as bar:
        for df in _batches(files):
            rows = _per_row(df, count, passages)
            sums.append(rows.group_by("source", "task", "language").agg(pl.col(SUMS).sum()))
            hists.append(_histogram_counts(rows))
            if samples_per_language:
                samples.append(_samples(df, samples_per_language))
            bar.update(df.height)
            if len(sums) >= FOLD_EVERY:  # keep the partials small: fold them as we go
                sums = [pl.concat(sums).group_by("source", "task", "language").agg(pl.col(SUMS).sum())]
                hists = [pl.concat(hists).group_by("language", "metric", "bin").agg(pl.col("count").sum())]
                samples = (
                    [pl.concat(samples).group_by("language", maintain_order=True).head(samples_per_language)]
                    if samples
                    else []
                )
    sources = pl.concat(sums).group_by("source", "task", "language").agg(pl.col(SUMS).sum()).sort("source", "language")
    hist = (
        pl.concat(hists)
        .group_by("language", "metric", "bin")
        .agg(pl.col("count").sum())
        .sort("metric", "language", "bin")
    )
    edges = pl.concat(
        [
            pl.DataFrame(
                {
                    "metric": m.name,
                    "bin": np.arange(len(m.edges) - 1, dtype=np.int32),
                    "bin_lo": m.edges[:-1],
                    "bin_hi": m.edges[1:],
                }
            )
            for m in METRICS.values()
        ]
    )
    hist = hist.join(edges, on=["metric", "bin"], how="left").select(
        "metric", "language", "bin", "bin_lo", "bin_hi", "count"
    )
    funnel = _funnel(run_dir)
    tables = {"sources": sources, "histograms": hist, "funnel": funnel}
    tables["tasks"] = (
        sources.group_by("task")
        .agg(pl.col(SUMS).sum(), pl.col("language").n_unique().alias("languages"))
        .sort("records", "task", descending=[True, False])
    )
    tables["languages"] = _languages(sources, hist, funnel)
    tables["filters"] = filters(funnel)
    tables["samples"] = (
        pl.concat(samples).group_by("language", maintain_order=True).head(samples_per_language)
        if samples
        else pl.DataFrame(schema={"language": pl.String})
    )

    folder = run_dir / STATS_DIR
    folder.mkdir(exist_ok=True)
    meta_path = folder / "meta.json"
    old = json.loads(meta_path.read_text()) if meta_path.exists() else None
    if old and old.get("shards") != marker["fingerprint"] and (folder / "languages.parquet").exists():
        shutil.copy(folder / "languages.parquet", folder / "previous_languages.parquet")
        (folder / "previous_meta.json").write_text(json.dumps(old, indent=1))
    previous = folder / "previous_languages.parquet"
    if previous.exists():
        tables["languages"] = _drift(tables["languages"], pl.read_parquet(previous))
    if reference:
        tables["comparison"] = compare(tables["languages"], read_reference(reference))
    for name, table in tables.items():
        _write(table, folder, name)
    if not reference:
        for stale in ("comparison.parquet", "comparison.csv"):
            (folder / stale).unlink(missing_ok=True)
    meta = {
        "shards": marker["fingerprint"],
        "rows": total_rows,
        "files": len(files),
        "tokens": count.name,
        "reference": reference,
        "seconds": round(time.perf_counter() - started, 2),
        "previous": json.loads((folder / "previous_meta.json").read_text())["shards"] if previous.exists() else None,
    }
    write_atomic(meta_path, lambda tmp: tmp.write_text(json.dumps(meta, indent=1)))
    return tables


def _languages(sources: pl.DataFrame, hist: pl.DataFrame, funnel: pl.DataFrame) -> pl.DataFrame:
    lang = sources.group_by("language").agg(
        pl.col(SUMS).sum(),
        pl.col("source").n_unique().alias("sources"),
        pl.col("task").unique().sort().str.join(",").alias("tasks"),
    )
    lang = lang.with_columns(
        share=pl.col("records") / pl.col("records").sum(),
        cross_lingual_share=pl.col("cross_lingual") / pl.col("records"),
    )
    for metric, q in (
        ("query_chars", 0.5),
        ("positive_chars", 0.5),
        ("query_lang_conf", 0.1),
        ("query_lang_conf", 0.5),
        ("margin", 0.5),
    ):
        lang = lang.join(quantile(hist, metric, q), on="language", how="left")
    dropped = funnel.filter(pl.col("kind") == "dropped")
    removed = dropped.group_by("language").agg(
        pl.col("rows").sum().alias("removed"),
        pl.col("rows").filter(pl.col("reason").str.starts_with("eval_overlap")).sum().alias("decontaminated"),
    )
    lang = lang.join(removed, on="language", how="left").with_columns(pl.col("removed", "decontaminated").fill_null(0))
    return (
        _language_info(lang["language"]).join(lang, on="language").sort("records", "language", descending=[True, False])
    )


def _drift(languages: pl.DataFrame, previous: pl.DataFrame) -> pl.DataFrame:
    prev = previous.select(
        "language", pl.col("records").alias("previous_records"), pl.col("share").alias("previous_share")
    )
    out = languages.join(prev, on="language", how="left").with_columns(
        pl.col("previous_records", "previous_share").fill_null(0)
    )
    return out.with_columns(share_change=pl.col("share") - pl.col("previous_share"))


def load(run_dir: str | Path) -> dict[str, pl.DataFrame]:
    """The statistics tables of a run (computed by the run, or by `compute`)."""
    folder = Path(run_dir) / STATS_DIR
    return {p.stem: pl.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}
