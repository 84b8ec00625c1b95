"""Bytes of hard negatives in a run: by reference (ids + the passage table) against inline texts.

The baseline is the layout before the passage table, rebuilt from the run itself: every shard and
checkpoint file written again with each row's negative texts inline (resolved through the passage
table and store), same rows, row groups and compression. Bytes are Parquet column chunks
(compressed), summed over files.

    python -m pipeline run manifests/stage2.yaml && python bench/passage_table.py runs/stage2
    python bench/passage_table.py runs/stage2 --before OLD_RUN   # also: a run written by the code before

It also times the trainer's batches (`train/data.py`: reading, sampling hard negatives, resolving
them to texts) on the run's shards by id against the same shards with negative texts inline.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core.passages import CORPUS_DIR, NEGATIVE_IDS, NEGATIVES, STORE_DIR, PassageTable, corpus_files
from pipeline.ops.passage_store import store_files


def column_bytes(path: str | io.BytesIO, column: str) -> int:
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(j).path.split(".")[0] for j in range(meta.num_columns)]
    return sum(
        meta.row_group(g).column(j).total_compressed_size
        for g in range(meta.num_row_groups)
        for j, name in enumerate(names)
        if name == column
    )


def inline_bytes(path: Path, table: PassageTable, **options: object) -> int:
    """Bytes of the `negatives` column were the file's negatives inline texts."""
    data = pq.read_table(path)
    texts = [
        (own if own is not None else table.texts_of(ids, f"{path}") if ids else None)
        for own, ids in zip(
            data[NEGATIVES].to_pylist() if NEGATIVES in data.column_names else [None] * data.num_rows,
            data[NEGATIVE_IDS].to_pylist(),
        )
    ]
    inline = data.drop_columns([c for c in (NEGATIVES, NEGATIVE_IDS) if c in data.column_names]).append_column(
        NEGATIVES, pa.array(texts, pa.list_(pa.string()))
    )
    buffer = io.BytesIO()
    pq.write_table(inline, buffer, **options)  # type: ignore[arg-type]
    return column_bytes(io.BytesIO(buffer.getvalue()), NEGATIVES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--before", type=Path, help="a run of the same manifest written before the passage table")
    parser.add_argument(
        "--repeats", type=int, default=3, help="trainer reads: runs of each layout, alternated (median)"
    )
    parser.add_argument("--batches", type=int, default=300)
    args = parser.parse_args()
    run = args.run
    table = PassageTable(corpus_files(run) + store_files(str(run / STORE_DIR)))
    shards = sorted((run / "shards").rglob("*.parquet"))
    checkpoints = sorted((run / "stages").glob("*/attempt-*/part-*.parquet"))
    corpus = sum(Path(f).stat().st_size for f in corpus_files(run / CORPUS_DIR))
    store = sum(Path(f).stat().st_size for f in store_files(str(run / STORE_DIR)))
    rows = {
        "shards": (
            sum(inline_bytes(p, table, compression="zstd") for p in shards),
            sum(column_bytes(str(p), NEGATIVE_IDS) for p in shards) + corpus,
            f"negative_ids + the whole passage table ({corpus:,} B, positives included)",
        ),
        "checkpoints": (
            sum(inline_bytes(p, table, row_group_size=8192) for p in checkpoints),
            sum(column_bytes(str(p), c) for p in checkpoints for c in (NEGATIVE_IDS, NEGATIVES)) + store,
            f"negative_ids + negatives still inline + the passage store ({store:,} B)",
        ),
    }
    print(f"{'':12} {'inline texts':>14} {'by reference':>14} {'smaller':>8}")
    for name, (before, after, what) in rows.items():
        print(f"{name:12} {before:>14,} {after:>14,} {before / after:>7.1f}x   ({what})")
    with tempfile.TemporaryDirectory() as tmp:
        inline = inline_copy(run, Path(tmp))
        rates: dict[str, list[float]] = {"inline texts": [], "by id": []}
        for _ in range(args.repeats):
            rates["inline texts"].append(trainer_reads(inline, args.batches, 64))
            rates["by id"].append(trainer_reads(run, args.batches, 64))
    ours, base = statistics.median(rates["by id"]), statistics.median(rates["inline texts"])
    print(
        f"trainer batches (64 rows, negatives sampled and resolved), medians of {args.repeats}: "
        f"inline texts {base:,.0f} samples/s, by id {ours:,.0f} samples/s ({ours / base:.2f}x)"
    )
    if args.before:
        old_shards = sum(column_bytes(str(p), NEGATIVES) for p in sorted((args.before / "shards").rglob("*.parquet")))
        old_ckpt = sum(
            column_bytes(str(p), NEGATIVES) for p in sorted((args.before / "stages").glob("*/attempt-*/part-*.parquet"))
        )
        print(
            f"run before the change, negatives column: "
            f"shards {old_shards:,} B ({old_shards / rows['shards'][1]:.1f}x), "
            f"checkpoints {old_ckpt:,} B ({old_ckpt / rows['checkpoints'][1]:.1f}x)"
        )


def inline_copy(run: Path, out: Path) -> Path:
    """The run's shards as they were before the passage table (negative texts inline, no ids)."""
    table = PassageTable(corpus_files(run))
    for path in sorted((run / "shards").rglob("*.parquet")):
        data = pq.read_table(path)
        texts = [table.texts_of(ids, str(path)) if ids is not None else None for ids in data[NEGATIVE_IDS].to_pylist()]
        target = out / "shards" / path.relative_to(run / "shards")
        target.parent.mkdir(parents=True, exist_ok=True)
        data = data.drop_columns([NEGATIVE_IDS, "positive_id"]).append_column(
            NEGATIVES, pa.array(texts, pa.list_(pa.string()))
        )
        pq.write_table(data, target, compression="zstd")
    return out


def trainer_reads(run: Path, batches: int, batch_size: int) -> float:
    """Samples/s of the trainer's batches (reading, sampling negatives, resolving them to texts)."""
    from train.config import DataConfig
    from train.data import Batches

    config = DataConfig(
        shards=[str(run)], negatives={"retrieval": 7, "classification": 1, "clustering": 9}, shuffle_buffer=2000
    )
    started = time.perf_counter()
    data = Batches(config, batch_size, seed=0)  # opening (counting groups, loading the passage table) included
    negatives = sum(len(b.negatives) for b, _ in zip(data, range(batches)))
    assert negatives > 0
    return batches * batch_size / (time.perf_counter() - started)


if __name__ == "__main__":
    main()
