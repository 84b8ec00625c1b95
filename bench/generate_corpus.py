"""Large stage-1 inputs with known duplicates, made from real text: bitext rows whose query is two
English SIB-200 (FLORES) sentences and whose positive is the same two sentences in one of 204 other
languages, drawn with Zipf weights over the languages.

- Every sentence recurs in thousands of rows (the English side in every language), and rows share
  half their text with many others (one of their two sentences): templated text, as real corpora
  have it, which near-dedup must not take for duplicates (Jaccard about 0.3).
- Originals are distinct: each language's sentence pairs are drawn without replacement (a
  language's share is capped at half of its 319,600 pairs, the rest spread over the others).
- `--exact` of the rows are verbatim copies of an original, `--near` edited copies (1-3 letter
  typos in each field, so they stay distinct after normalisation and case-folding; 3-gram
  Jaccard about 0.6-0.9 with their original).
- `truth.parquet`: per row (`file`, `line`), its `group` (the original's number) and `kind`
  (original, exact, near). Two rows are duplicates exactly when they share a group.

Rows are shuffled and written as `part-NNNNN.tsv.gz` (header `source<TAB>target`, no quoting: TSV
text may hold quote characters), with `manifest.yaml` (normalize, langid, exact and near dedup on
both fields) beside them.

    python bench/generate_corpus.py OUT --rows 1000000 [--files 40] [--exact 0.08] [--near 0.04] [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[1]
PIVOT = "eng_Latn"
STAGES = [{"stage": "normalize"}, {"stage": "langid"}, {"stage": "exact_dedup", "key": ["query", "positive"]},
          {"stage": "near_dedup", "fields": ["query", "positive"]}]


def parallel_sentences(data: Path) -> dict[str, list[str]]:
    """SIB-200 train + dev sentences per language, aligned by `index_id` (the same sentence at the
    same position in every language)."""
    by_language: dict[str, dict[int, str]] = {}
    with tarfile.open(data / "sib200-train-dev.tar.xz", "r:xz") as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and parts[-1] in ("train.tsv", "dev.tsv"):
                lines = tar.extractfile(member).read().decode("utf-8").splitlines()[1:]  # type: ignore[union-attr]
                for line in lines:
                    index, _, text = line.split("\t", 2)
                    by_language.setdefault(parts[2], {})[int(index)] = " ".join(text.split())
    ids = sorted(set.intersection(*(set(v) for v in by_language.values())))
    return {lang: [texts[i] for i in ids] for lang, texts in sorted(by_language.items())}


def shares(languages: int, rows: int, capacity: int, zipf: float, rng: np.random.Generator) -> np.ndarray:
    """Originals per language: Zipf weights (a seeded order of languages), capped at `capacity`,
    the excess spread over the languages under their cap."""
    weights = 1.0 / np.arange(1, languages + 1) ** zipf
    weights = weights[rng.permutation(languages)]
    counts = np.zeros(languages, np.int64)
    left = rows
    while left > 0:
        open_ = counts < capacity
        if not open_.any():
            raise SystemExit(f"{rows:,} originals exceed the {languages * capacity:,} distinct sentence pairs available")
        add = np.floor(left * weights * open_ / (weights * open_).sum()).astype(np.int64)
        add[np.flatnonzero(open_)[0]] += left - add.sum()  # rounding
        counts = np.minimum(counts + add, capacity)
        left = rows - counts.sum()
    return counts


def pair(index: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The (i, j), i < j, of each index into the n*(n-1)/2 unordered pairs of n sentences."""
    i = (n - 2 - np.floor(np.sqrt(-8 * index + 4 * n * (n - 1) - 7) / 2 - 0.5)).astype(np.int64)
    j = index + i + 1 - n * (n - 1) // 2 + (n - i) * ((n - i) - 1) // 2
    return i, j


def typos(text: str, rng: np.random.Generator) -> str:
    """1-3 letter edits (replace, drop, insert a letter): a near copy, never equal after normalising."""
    chars = list(text)
    letters = [k for k, c in enumerate(chars) if c.isalpha()]
    for _ in range(int(rng.integers(1, 4))):
        if not letters:
            break
        k = letters[int(rng.integers(len(letters)))]
        op = int(rng.integers(3))
        if op == 0:
            chars[k] = "x" if chars[k] != "x" else "q"
        elif op == 1 and len(letters) > 1:
            chars[k] = ""
        else:
            chars[k] = chars[k] + chars[k]
    edited = "".join(chars)
    return edited if edited.casefold() != text.casefold() else text + "x"


def generate(out: Path, rows: int, files: int, exact: float, near: float, zipf: float, seed: int, data: Path) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    sentences = parallel_sentences(data)
    english = sentences.pop(PIVOT)
    languages = sorted(sentences)
    n = len(english)
    pairs = n * (n - 1) // 2
    copies_exact, copies_near = int(rows * exact), int(rows * near)
    originals = rows - copies_exact - copies_near
    counts = shares(len(languages), originals, pairs // 2, zipf, rng)
    lang = np.repeat(np.arange(len(languages)), counts)
    index = np.concatenate([rng.choice(pairs, c, replace=False) for c in counts])
    first, second = pair(index, n)
    swap = rng.random(originals) < 0.5  # which of the two comes first
    first, second = np.where(swap, second, first), np.where(swap, first, second)
    group = np.concatenate([np.arange(originals), rng.integers(0, originals, copies_exact + copies_near)])
    kind = np.concatenate([np.zeros(originals, np.int8), np.ones(copies_exact, np.int8), np.full(copies_near, 2, np.int8)])
    order = rng.permutation(rows)
    group, kind = group[order], kind[order]
    out.mkdir(parents=True, exist_ok=True)
    per_file = -(-rows // files)
    truth = {"file": [], "line": [], "group": [], "kind": []}
    for f in range(files):
        name = f"part-{f:05d}.tsv.gz"
        chunk = range(f * per_file, min(rows, (f + 1) * per_file))
        with gzip.open(out / name, "wt", encoding="utf-8", compresslevel=1) as handle:
            handle.write("source\ttarget\n")
            for r in chunk:
                g = group[r]
                target = sentences[languages[lang[g]]]
                query = f"{english[first[g]]} {english[second[g]]}"
                positive = f"{target[first[g]]} {target[second[g]]}"
                if kind[r] == 2:
                    query, positive = typos(query, rng), typos(positive, rng)
                handle.write(f"{query}\t{positive}\n")
        truth["file"] += [name] * len(chunk)
        truth["line"] += list(range(2, len(chunk) + 2))
        truth["group"].append(group[chunk.start:chunk.stop])
        truth["kind"].append(kind[chunk.start:chunk.stop])
    kinds = np.array(["original", "exact", "near"])
    pq.write_table(pa.table({"file": truth["file"], "line": pa.array(truth["line"], pa.int64()),
                             "group": np.concatenate(truth["group"]), "kind": kinds[np.concatenate(truth["kind"])]}),
                   out / "truth.parquet")
    manifest = {"output": "run", "sources": [{
        "name": "bitext", "task": "bitext", "path": "part-*.tsv.gz", "columns": {"query": "source", "positive": "target"},
        "licence": "CC-BY-SA-4.0", "language": {"query": PIVOT}, "csv": {"quoting": "none"}}], "stages": STAGES}
    (out / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    return {"rows": rows, "originals": originals, "exact": copies_exact, "near": copies_near, "languages": int((counts > 0).sum())}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, help="default: one per 250,000 rows")
    parser.add_argument("--exact", type=float, default=0.08)
    parser.add_argument("--near", type=float, default=0.04)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    summary = generate(args.out, args.rows, args.files or max(1, -(-args.rows // 250_000)), args.exact, args.near, args.zipf,
                       args.seed, args.data)
    print(", ".join(f"{k} {v:,}" for k, v in summary.items()))
