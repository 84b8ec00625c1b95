"""Read sources in units (a file, a byte range of a big file, a row range of a dataset) and turn
each unit into an Arrow table of records, with every unreadable row kept and flagged, not lost.

Parsing is hand-written rather than Ray Data's `read_json`/`read_csv` because those fail a whole
file on one bad line; here each bad line becomes a quarantine row with its file, line and reason.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import pyarrow as pa

from core import storage
from core.record import DETAIL, DROP, INGEST_SCHEMA, RAW
from sources.config import SourceConfig
from sources.mapping import RowError, map_row

CHUNK_BYTES = 64 << 20  # uncompressed JSONL files larger than this are read in parallel byte ranges
HF_ROWS_PER_UNIT = 100_000


class SourceError(Exception):
    """A whole source cannot be read (a hub dataset offline, a folder that is not a dataset)."""


@dataclass(frozen=True)
class Unit:
    """One independent piece of reading work; plain data so Ray can ship it anywhere."""

    source: str
    path: str
    start: int = 0  # byte offset (JSONL) or row (hf, parquet row group index)
    stop: int = -1  # exclusive; -1 = to the end
    first_line: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_binary(path: str) -> io.BufferedIOBase:
    """Open a file (local or in object storage) for reading bytes, decompressing .gz and .zst."""
    if path.endswith(".gz"):
        raw = storage.open_input(path)
        unzipped = gzip.GzipFile(fileobj=raw, mode="rb")
        unzipped.myfileobj = raw  # closed with it (what `gzip.open(path)` does for a file it opened)
        return unzipped  # type: ignore[return-value]
    if path.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(storage.open_input(path)))
    return storage.open_input(path)


def _jsonl_units(source: SourceConfig, path: str) -> list[Unit]:
    size = storage.info(path).size
    if path.endswith((".gz", ".zst")) or size <= CHUNK_BYTES:
        return [Unit(source.name, path)]
    units, start, line = [], 0, 1
    with storage.open_input(path) as f:
        while start < size:
            f.seek(min(start + CHUNK_BYTES, size))
            f.readline()  # move the boundary to the end of the line it falls in
            stop = min(f.tell(), size)
            units.append(Unit(source.name, path, start, stop, line))
            f.seek(start)
            line += f.read(stop - start).count(b"\n")
            start = stop
    return units


def plan_units(source: SourceConfig) -> list[Unit]:
    """Split a source into units. Runs on the driver, cheaply: no row is parsed here."""
    if source.format == "hf":
        n = len(load_hf(source))
        return [
            Unit(source.name, source.path, a, min(a + HF_ROWS_PER_UNIT, n))
            for a in range(0, max(n, 1), HF_ROWS_PER_UNIT)
        ]
    units: list[Unit] = []
    for path in source.files():
        if source.format == "jsonl":
            units += _jsonl_units(source, path)
        elif source.format == "parquet":
            try:
                groups = storage.parquet_file(path).num_row_groups
            except Exception:  # unreadable: one unit, which reports the error as a quarantine row
                groups = 1
            units += [Unit(source.name, path, g, g + 1) for g in range(max(groups, 1))]
        else:
            units.append(Unit(source.name, path))
    return units


class HfLocation(Protocol):
    """What `load_hf` needs: a source, or an evaluation set of the decontaminate stage."""

    name: str
    path: str
    hf_config: str | None
    split: str | None


def load_hf(source: HfLocation) -> Any:
    """A `datasets.Dataset` from a saved dataset folder, a local data folder, or a hub id."""
    import datasets

    path = Path(source.path)
    try:
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(source.path, source.hf_config, split=source.split)
    except Exception as exc:
        hint = "" if path.exists() else " (not a local folder, so it was looked up on the Hugging Face hub; offline?)"
        raise SourceError(f"source {source.name!r}: cannot load dataset {source.path!r}{hint}: {exc}") from exc
    if isinstance(ds, datasets.DatasetDict):
        if source.split is None:
            raise SourceError(f"source {source.name!r}: {source.path!r} has splits {list(ds)}; set `split`")
        ds = ds[source.split]
    return ds


# Each reader yields (origin, raw bytes or None, parsed row or RowError).
Parsed = tuple[str, bytes | None, Any]


def _read_lines(unit: Unit) -> Iterator[tuple[int, bytes]]:
    with open_binary(unit.path) as f:
        if unit.start:
            f.seek(unit.start)
        pos, line_no = unit.start, unit.first_line
        for line in f:
            if unit.stop >= 0 and pos >= unit.stop:
                break
            pos += len(line)
            yield line_no, line
            line_no += 1


def _jsonl(unit: Unit, source: SourceConfig) -> Iterator[Parsed]:
    for line_no, line in _read_lines(unit):
        origin = f"{unit.path}:{line_no}"
        line = line.rstrip(b"\r\n")
        if not line.strip():
            continue  # blank lines are not records
        if len(line) > source.max_record_bytes:
            yield origin, line, RowError("oversize", f"line of {len(line):,} bytes, limit {source.max_record_bytes:,}")
            continue
        try:
            text = line.decode(source.encoding)
        except UnicodeDecodeError as exc:
            yield (
                origin,
                line,
                RowError(
                    "invalid_encoding",
                    f"not valid {source.encoding} at byte {exc.start}: "
                    f"{line[max(exc.start - 10, 0) : exc.start + 10]!r}",
                ),
            )
            continue
        try:
            yield origin, line, json.loads(text)
        except json.JSONDecodeError as exc:
            yield origin, line, RowError("bad_json", f"{exc.msg} at column {exc.colno}")


def _delimited(unit: Unit, source: SourceConfig) -> Iterator[Parsed]:
    bad: list[Parsed] = []
    current = {"line": 0, "raw": b""}

    def decoded_lines() -> Iterator[str]:
        for line_no, line in _read_lines(unit):
            current["line"], current["raw"] = line_no, line.rstrip(b"\r\n")
            if len(line) > source.max_record_bytes:
                bad.append(
                    (
                        f"{unit.path}:{line_no}",
                        line,
                        RowError("oversize", f"line of {len(line):,} bytes, limit {source.max_record_bytes:,}"),
                    )
                )
                continue
            try:
                yield line.decode(source.encoding)
            except UnicodeDecodeError as exc:
                bad.append(
                    (
                        f"{unit.path}:{line_no}",
                        line,
                        RowError("invalid_encoding", f"not valid {source.encoding} at byte {exc.start}"),
                    )
                )

    delimiter = "\t" if source.format == "tsv" else ","
    quoting = csv.QUOTE_NONE if source.csv.quoting == "none" else csv.QUOTE_MINIMAL
    reader = csv.reader(decoded_lines(), delimiter=delimiter, quoting=quoting)
    hint = (
        ""
        if quoting == csv.QUOTE_NONE
        else "; if quote characters in this file are text, not CSV quoting, set `csv: {quoting: none}`"
    )
    header = source.csv.column_names
    try:
        for cells in reader:
            yield from bad
            bad.clear()
            if header is None:
                header = cells if source.csv.header else [str(i) for i in range(len(cells))]
                if source.csv.header:
                    continue
            origin = f"{unit.path}:{current['line']}"
            if not cells or cells == [""]:
                continue
            if len(cells) != len(header):
                yield origin, current["raw"], RowError("bad_csv", f"{len(cells)} cells, header has {len(header)}{hint}")
                continue
            yield origin, current["raw"], dict(zip(header, cells))
    except csv.Error as exc:
        yield f"{unit.path}:{current['line']}", current["raw"], RowError("bad_csv", f"{exc}{hint}")
    yield from bad


def _text(unit: Unit, source: SourceConfig) -> Iterator[Parsed]:
    """Plain text: each non-blank line is a row, or (`text_unit: file`) the whole file is one; rows
    have the columns `text` and `path` (so a code file's extension can declare its language)."""
    if source.text_unit == "file":
        with open_binary(unit.path) as f:
            raw = f.read()
        if len(raw) > source.max_record_bytes:
            yield (
                unit.path,
                None,
                RowError("oversize", f"file of {len(raw):,} bytes, limit {source.max_record_bytes:,}"),
            )
            return
        try:
            yield unit.path, raw, {"text": raw.decode(source.encoding), "path": unit.path}
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            yield (
                f"{unit.path}:{line}",
                raw,
                RowError("invalid_encoding", f"not valid {source.encoding} at byte {exc.start} (line {line})"),
            )
        return
    for line_no, line in _read_lines(unit):
        origin = f"{unit.path}:{line_no}"
        line = line.rstrip(b"\r\n")
        if not line.strip():
            continue
        if len(line) > source.max_record_bytes:
            yield origin, line, RowError("oversize", f"line of {len(line):,} bytes, limit {source.max_record_bytes:,}")
            continue
        try:
            yield origin, line, {"text": line.decode(source.encoding), "path": unit.path}
        except UnicodeDecodeError as exc:
            yield (
                origin,
                line,
                RowError(
                    "invalid_encoding",
                    f"not valid {source.encoding} at byte {exc.start}: "
                    f"{line[max(exc.start - 10, 0) : exc.start + 10]!r}",
                ),
            )


def _parquet(unit: Unit, source: SourceConfig) -> Iterator[Parsed]:
    table = storage.parquet_file(unit.path).read_row_group(unit.start)
    for i, row in enumerate(table.to_pylist()):
        yield f"{unit.path}:rowgroup={unit.start}:row={i}", None, row


def _hf(unit: Unit, source: SourceConfig) -> Iterator[Parsed]:
    ds = load_hf(source).select(range(unit.start, unit.stop))
    split = f"[{source.split}]" if source.split else ""
    for i, row in enumerate(ds):
        yield f"{source.path}{split}:row={unit.start + i}", None, row


_READERS = {"jsonl": _jsonl, "csv": _delimited, "tsv": _delimited, "parquet": _parquet, "hf": _hf, "text": _text}


def read_batches(unit: Unit, source: SourceConfig, batch_rows: int = 65_536) -> Iterator[pa.Table]:
    """The rows of one unit as tables of at most `batch_rows` rows (INGEST_SCHEMA), so a unit as
    large as a whole compressed file is never in memory at once; bad rows carry `_drop`,
    `_detail`, `_raw`."""
    rows: list[dict[str, Any]] = []

    def bad(origin: str, raw: bytes | None, err: RowError) -> None:
        rows.append(
            {
                "id": "",
                "source": source.name,
                "task": source.task,
                "query": "",
                "licence": source.licence,
                "origin": origin,
                DROP: err.reason,
                DETAIL: err.detail,
                RAW: raw,
            }
        )

    try:
        for origin, raw, parsed in _READERS[source.format](unit, source):
            if isinstance(parsed, RowError):
                bad(origin, raw, parsed)
            else:
                try:
                    record = map_row(parsed, source)
                    record["origin"] = origin
                    rows.append(record)
                except RowError as err:
                    bad(
                        origin,
                        raw if raw is not None else json.dumps(parsed, default=str, ensure_ascii=False).encode(),
                        err,
                    )
            if len(rows) >= batch_rows:
                yield pa.Table.from_pylist(rows, schema=INGEST_SCHEMA)
                rows.clear()
    except (OSError, EOFError, ValueError, pa.ArrowException) as exc:
        # A file that breaks mid-way (truncated gzip, corrupt Parquet): the rows read so far stay,
        # and the failure itself becomes a quarantine row naming the file.
        bad(f"{unit.path}", None, RowError("unreadable_file", f"{type(exc).__name__}: {exc}"))
    if rows:
        yield pa.Table.from_pylist(rows, schema=INGEST_SCHEMA)


def read_unit(unit: Unit, source: SourceConfig) -> pa.Table:
    """All rows of one unit as one table (INGEST_SCHEMA)."""
    return pa.concat_tables([INGEST_SCHEMA.empty_table(), *read_batches(unit, source)])
