"""Large stage-1 inputs with known duplicates, made from real text: bitext rows whose query is two
English SIB-200 (FLORES) sentences and whose positive is the same two sentences in one of 204 other
languages, drawn with Zipf weights over the languages.

- Every sentence recurs in thousands of rows (the English side in every language), and rows share
  half their text with many others (one of their two sentences): templated text, as real corpora
  have it, which near-dedup must not take for duplicates. The two sentences of a row are of
  similar length (at most 1.25 times apart, in English words), so two rows sharing one sentence
  have a word 3-gram Jaccard similarity of at most about 0.39, clearly under near-dedup's 0.5.
- Originals are distinct: each language's sentence pairs (123,684 such pairs) are drawn without
  replacement (a language's share is capped at all of them, the rest spread over the others).
- `--exact` of the rows are verbatim copies of an original, `--near` edited copies: letter typos
  (one per 25 words) or, where typos would take a field's word 3-gram Jaccard with its original
  under 0.6 (short texts), punctuation changes; so near copies stay distinct after normalisation
  and case-folding, and each field keeps a Jaccard of at least 0.6 with its original.
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
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[1]
PIVOT = "eng_Latn"
UNSPACED = re.compile(r"[\u0e00-\u0eff\u1780-\u17ff\u1000-\u109f\u0f00-\u0fff\u3040-\u30ff\u3400-\u9fff]")
STAGES = [
    {"stage": "normalize"},
    {"stage": "langid"},
    {"stage": "exact_dedup", "key": ["query", "positive"]},
    {"stage": "near_dedup", "fields": ["query", "positive"]},
]


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
            raise SystemExit(
                f"{rows:,} originals exceed the {languages * capacity:,} distinct sentence pairs available"
            )
        add = np.floor(left * weights * open_ / (weights * open_).sum()).astype(np.int64)
        add[np.flatnonzero(open_)[0]] += left - add.sum()  # rounding
        counts = np.minimum(counts + add, capacity)
        left = rows - counts.sum()
    return counts


def similar_pairs(sentences: list[str], ratio: float = 1.25) -> np.ndarray:
    """(i, j), i < j, of the sentences whose lengths in words are at most `ratio` apart."""
    words = np.array([len(s.split()) for s in sentences])
    close = np.maximum(words[:, None], words[None, :]) <= ratio * np.minimum(words[:, None], words[None, :])
    i, j = np.nonzero(np.triu(close, k=1))
    return np.stack([i, j], axis=1)


def shingle_set(text: str) -> set[tuple[str, ...]]:
    """Word 3-grams (character 3-grams for unspaced scripts), about as near-dedup counts them."""
    words = re.findall(r"\w+", text.casefold())
    unspaced = sum(len(w) for w in words if UNSPACED.search(w)) * 2 > sum(map(len, words))
    tokens = [c for w in words for c in w] if unspaced else words
    return {tuple(tokens[k : k + 3]) for k in range(max(1, len(tokens) - 2))}


def jaccard(a: str, b: str) -> float:
    x, y = shingle_set(a), shingle_set(b)
    return len(x & y) / len(x | y) if x | y else 1.0


def near_copy(text: str, rng: np.random.Generator) -> str:
    """Letter typos, one per 25 words (replace, drop or double a letter), where they keep the text's
    Jaccard with the original at 0.6 or more; else a punctuation change (which shingles ignore)."""
    chars = list(text)
    letters = [k for k, c in enumerate(chars) if c.isalpha()]
    for _ in range(max(1, len(text.split()) // 25)):
        if not letters:
            break
        k = letters[int(rng.integers(len(letters)))]
        chars[k] = ("x" if chars[k] != "x" else "q", "", chars[k] * 2)[int(rng.integers(3))]
    edited = "".join(chars)
    if edited.casefold() != text.casefold() and jaccard(edited, text) >= 0.6:
        return edited
    return text.rstrip(".。!") + ("!" if text.endswith(".") else ".") if rng.random() < 0.5 else "« " + text + " »"


def generate(
    out: Path, rows: int, files: int, exact: float, near: float, zipf: float, seed: int, data: Path
) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    sentences = parallel_sentences(data)
    english = sentences.pop(PIVOT)
    languages = sorted(sentences)
    pairs = similar_pairs(english)
    copies_exact, copies_near = int(rows * exact), int(rows * near)
    originals = rows - copies_exact - copies_near
    counts = shares(len(languages), originals, len(pairs), zipf, rng)
    lang = np.repeat(np.arange(len(languages)), counts)
    index = np.concatenate([rng.choice(len(pairs), c, replace=False) for c in counts])
    first, second = pairs[index, 0], pairs[index, 1]
    swap = rng.random(originals) < 0.5  # which of the two comes first
    first, second = np.where(swap, second, first), np.where(swap, first, second)
    group = np.concatenate([np.arange(originals), rng.integers(0, originals, copies_exact + copies_near)])
    kind = np.concatenate(
        [np.zeros(originals, np.int8), np.ones(copies_exact, np.int8), np.full(copies_near, 2, np.int8)]
    )
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
                    query, positive = near_copy(query, rng), near_copy(positive, rng)
                handle.write(f"{query}\t{positive}\n")
        truth["file"] += [name] * len(chunk)
        truth["line"] += list(range(2, len(chunk) + 2))
        truth["group"].append(group[chunk.start : chunk.stop])
        truth["kind"].append(kind[chunk.start : chunk.stop])
    kinds = np.array(["original", "exact", "near"])
    pq.write_table(
        pa.table(
            {
                "file": truth["file"],
                "line": pa.array(truth["line"], pa.int64()),
                "group": np.concatenate(truth["group"]),
                "kind": kinds[np.concatenate(truth["kind"])],
            }
        ),
        out / "truth.parquet",
    )
    manifest = {
        "output": "run",
        "sources": [
            {
                "name": "bitext",
                "task": "bitext",
                "path": "part-*.tsv.gz",
                "columns": {"query": "source", "positive": "target"},
                "licence": "CC-BY-SA-4.0",
                "language": {"query": PIVOT},
                "csv": {"quoting": "none"},
            }
        ],
        "stages": STAGES,
    }
    (out / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    return {
        "rows": rows,
        "originals": originals,
        "exact": copies_exact,
        "near": copies_near,
        "languages": int((counts > 0).sum()),
    }


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
    summary = generate(
        args.out,
        args.rows,
        args.files or max(1, -(-args.rows // 250_000)),
        args.exact,
        args.near,
        args.zipf,
        args.seed,
        args.data,
    )
    print(", ".join(f"{k} {v:,}" for k, v in summary.items()))
