"""The passage table: every distinct passage of a run (positives and negatives) stored once, by id.

ML-Embed's stage 2 has ~33M rows with up to 24 hard negatives each, mostly the same passages again
and again. So a record refers to its passages by `doc_id` (BLAKE2b-128 of the text: the same text
always gets the same id, in any run) and the texts live once in the run's `corpus/` shards
(`CORPUS_SCHEMA`). Inside a run, the stages that make negatives (`build_pairs`, `mine_negatives`)
put their texts in a content-addressed passage store (`passages/` of the run folder, same schema)
and their rows carry ids from there on, so the checkpoints shrink as well as the shards.

This module is the one place that names the columns; the pipeline, the trainer and the export read
them from here (it imports nothing of the engine, so the trainer may use it).
"""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

DOC_ID, TEXT = "doc_id", "text"
POSITIVE_ID, NEGATIVE_IDS = "positive_id", "negative_ids"
NEGATIVES = "negatives"  # inline negative texts: what sources give and stages read, until stored by reference
CORPUS_DIR, STORE_DIR = "corpus", "passages"  # folders of a run: the final passage table, the store of a run in flight
CORPUS_SCHEMA = pa.schema(
    [
        pa.field(DOC_ID, pa.string(), nullable=False),
        pa.field(TEXT, pa.string(), nullable=False),
        pa.field("language", pa.string()),  # as a positive, else as a query, else its row's negatives' label
        pa.field("source", pa.string()),  # the source of the first row (by source name) that holds it
    ]
)


def passage_id(text: str) -> str:
    """The passage's stable id: BLAKE2b-128 of its UTF-8 text, hex."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


_LOOKUP = pa.schema([CORPUS_SCHEMA.field(DOC_ID), CORPUS_SCHEMA.field(TEXT)])


class MissingPassage(LookupError):
    """A record refers to a passage the table does not hold: a broken run, never a silent gap."""


def corpus_files(run_dir: str | Path) -> list[str]:
    """The passage table's files of a run folder (or a folder or glob of them), sorted."""
    path = Path(run_dir)
    if path.is_dir():
        if (path / CORPUS_DIR).is_dir():
            path = path / CORPUS_DIR
        elif (path / "shards").is_dir():  # a run folder without a table: never its other Parquet files
            return []
        return sorted(str(f) for f in path.rglob("*.parquet"))
    return sorted(glob.glob(str(run_dir), recursive=True))


class PassageTable:
    """doc_id -> text over a run's corpus files: the texts stay one Arrow column (no Python string
    per passage), found through a sorted array of the ids' 64-bit prefixes (binary search).
    `PassageTable.mapped` does the same without holding the texts in memory."""

    def __init__(self, files: Iterable[str]):
        files = list(files)
        table = pq.read_table(files, columns=_LOOKUP.names, schema=_LOOKUP) if files else _LOOKUP.empty_table()
        self._index(table[DOC_ID], table[TEXT])

    @classmethod
    def mapped(cls, files: Iterable[str], folder: str | Path) -> PassageTable:
        """The same lookups over a table larger than memory: the files (local or in object storage)
        are copied once, a batch at a time, into an uncompressed Arrow file under `folder` that is
        memory-mapped, so the operating system pages texts in as they are asked for (and drops them
        again under memory pressure); only the ids' 8-byte prefixes are held."""
        from core import storage

        path = Path(folder) / "passages.arrow"
        path.parent.mkdir(parents=True, exist_ok=True)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, _LOOKUP) as writer:
            for file in files:
                for batch in storage.parquet_file(file).iter_batches(batch_size=65_536, columns=_LOOKUP.names):
                    writer.write_batch(batch.cast(_LOOKUP))
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        self = cls.__new__(cls)
        self._index(table[DOC_ID], table[TEXT])
        return self

    def _index(self, ids: pa.ChunkedArray, texts: pa.ChunkedArray) -> None:
        keys = _prefixes(ids) if len(ids) else np.zeros(0, np.uint64)
        if len(keys) > 1 and not (keys[1:] >= keys[:-1]).all():  # a run's table is sorted by id already
            order = pa.array(np.argsort(keys, kind="stable"))
            keys, ids, texts = keys[order.to_numpy()], ids.take(order), texts.take(order)
        self.keys, self.ids, self.texts = keys, ids, texts

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self, ids: list[str] | pa.Array, where: str | list[str] | Callable[[int], str] = "") -> np.ndarray:
        """Row numbers of `ids` in the table; a missing id raises `MissingPassage` naming where it
        was found (`where`, or `where[k]` / `where(k)` for the k-th id)."""
        wanted = ids if isinstance(ids, pa.Array) else pa.array(ids, pa.string())
        found = np.searchsorted(self.keys, _prefixes(wanted)).clip(max=max(len(self.keys) - 1, 0))
        ok = (
            pc.equal(self.ids.take(pa.array(found)), wanted).to_numpy(zero_copy_only=False)
            if len(self.keys)
            else np.zeros(len(ids), bool)
        )
        if not ok.all():
            k = int(np.flatnonzero(~ok)[0])
            place = where[k] if isinstance(where, list) else where(k) if callable(where) else where
            raise MissingPassage(
                f"{place}: passage {wanted[k].as_py()} is not in the passage table ({len(self)} passages)"
            )
        return found

    def texts_of(self, ids: list[str], where: str | list[str] = "") -> list[str]:
        return self.texts.take(pa.array(self.rows(ids, where))).to_pylist() if ids else []

    def take(self, ids: pa.Array, where: str | list[str] | Callable[[int], str] = "") -> pa.Array:
        """The texts of `ids` as an Arrow array (no Python string each); missing ids as in `rows`."""
        if not len(ids):
            return pa.array([], pa.string())
        texts = self.texts.take(pa.array(self.rows(ids, where)))
        return texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts


_NIBBLE = np.zeros(256, np.uint64)  # hex digit (ASCII) -> its value; anything else 0
for _value, _digit in enumerate(b"0123456789abcdef"):
    _NIBBLE[_digit] = _NIBBLE[bytes([_digit]).upper()[0]] = _value


def _prefixes(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The first 16 hex digits of each id as an unsigned 64-bit number (ids are uniform hashes), over
    the Arrow buffer (no Python string per id). An id that is not hex gets some key: the caller
    compares the whole id after the search, so it is reported missing, never mistaken."""
    head = pc.utf8_rpad(pc.utf8_slice_codeunits(ids, 0, 16), 16, "0").cast(pa.binary())
    head = pc.if_else(pc.equal(pc.binary_length(head), 16), head, pa.scalar(b"0" * 16, pa.binary()))  # non-ASCII
    fixed = head.cast(pa.binary(16))
    fixed = fixed.combine_chunks() if isinstance(fixed, pa.ChunkedArray) else fixed
    if not len(fixed):
        return np.zeros(0, np.uint64)
    digits = np.frombuffer(fixed.buffers()[1], np.uint8)[fixed.offset * 16 : (fixed.offset + len(fixed)) * 16]
    shifts = np.arange(60, -1, -4, dtype=np.uint64)
    return np.bitwise_or.reduce(_NIBBLE[digits.reshape(-1, 16)] << shifts, axis=1)
