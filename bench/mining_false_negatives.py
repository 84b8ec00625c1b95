"""Likely false negatives among mined negatives on XQuAD-R, per language, with and without each
positive-aware filter, and how many negatives each filter costs.

XQuAD-R (`../shared/data/xquad-r-dev.tar.xz`): 1,190 questions over 240 Wikipedia paragraphs per
language (ar de el en es hi ru zh). Each question's pool is the paragraphs of its language; a row
whose hardest kept negative contains the question's gold answer string counts as a likely false
negative. Columns: `none` = only the positive and other known positives of the query removed;
`defaults` = the stage's defaults (skip the top 5, drop candidates above 95% of the positive's
score, near duplicates of the positive and its 8 nearest pool neighbours); `-rank`, `-ratio`,
`-neardup`, `-neighbr` = the defaults with that one filter off; `nb-retr` = the defaults with the positive's
neighbours found by the mining retriever instead of BM25 (the same as `defaults` when mining with BM25); `words` = the
defaults, counting an answer only where it stands as whole words (a short answer such as Hindi "वार" or Arabic "لم"
is inside many unrelated words; Chinese has no spaces, so there it is the substring count); `article` = the
defaults, counting a hit only where the negative is a paragraph of the positive's own article (the hits that can
plausibly answer the question; `--show` prints every hit beside its English parallel to judge by eye);
`chance` = the share of the question's other pool paragraphs that contain the answer (what a negative
drawn at random would give: short answers such as "2" or "dos" occur everywhere);
`lost` = negatives per query the defaults keep fewer than `none`. BM25 by default (one process);
`--model DIR` mines with a local dense model instead, `--small-model` with the dense bench's
MiniLM-sized pass-through model (`bench/mining_dense.py`, built offline; it ranks lexically), at one
layer: its layers pass their input through, so one layer is the same kind of retriever at a sixth
of the cost.

    python bench/mining_false_negatives.py [--languages en,zh] [--model DIR | --small-model] [--show]
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
import time
import unicodedata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402

from core.record import WORK_SCHEMA  # noqa: E402
from pipeline.engine.stage import RunContext  # noqa: E402
from pipeline.ops.embed import Embedder, device, load_encoder  # noqa: E402
from pipeline.stages.mine_negatives import MineNegatives, MineNegativesConfig  # noqa: E402

XQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "xquad-r-dev.tar.xz"
LANGS = ("ar", "de", "el", "en", "es", "hi", "ru", "zh")
SETTINGS = {
    "none": {"skip_top": 0, "max_score_ratio": None, "near_dup_threshold": 1.0, "positive_neighbours": 0},
    "defaults": {},
    "-rank": {"skip_top": 0},
    "-ratio": {"max_score_ratio": None},
    "-neardup": {"near_dup_threshold": 1.0},
    "-neighbr": {"positive_neighbours": 0},
    "nb-retr": {"neighbours_by": "retriever"},
}
UNSPACED = {"zh", "ja", "th"}


def rows(tar: tarfile.TarFile, lang: str) -> list[dict]:
    data = json.load(tar.extractfile(f"xquad-r/{lang}.json"))  # type: ignore[arg-type]
    return [
        {
            "query": qa["question"],
            "positive": p["context"],
            "answer": qa["answers"][0]["text"],
            "article": article["title"],
        }
        for article in data["data"]
        for p in article["paragraphs"]
        for qa in p["qas"]
    ]


def mine(items: list[dict], embedder: Embedder | None = None, **config) -> tuple[list[dict], float]:
    table = pa.Table.from_pylist(
        [
            {
                "id": str(i),
                "source": "xquad",
                "task": "retrieval",
                "query": r["query"],
                "positive": r["positive"],
                "licence": "CC-BY-SA-4.0",
                "origin": f"q:{i}",
            }
            for i, r in enumerate(items)
        ],
        schema=WORK_SCHEMA,
    )
    stage = MineNegatives(MineNegativesConfig(stage="mine_negatives", **config), RunContext(Path("."), ("xquad",)))
    if embedder:  # one model and its vectors for every setting (dense)
        stage.embedder = embedder
    started = time.perf_counter()
    out = stage(table).to_pylist()
    return out, time.perf_counter() - started


def hardest_share(items: list[dict], mined: list[dict], words: str | None = None) -> float:
    """Share of rows with negatives whose hardest negative contains the answer (as whole words when
    `words` names the language of a spaced script)."""
    pairs = [(r["answer"], m["negatives"][0]) for r, m in zip(items, mined) if m["negatives"]]
    contains = as_words if words and words not in UNSPACED else str.__contains__
    return sum(contains(n, a) for a, n in pairs) / max(len(pairs), 1)


def same_article_share(items: list[dict], mined: list[dict]) -> float:
    """Share of rows whose hardest negative contains the answer and is a paragraph of the positive's own
    article: the hits that can plausibly answer the question (XQuAD questions are written for one paragraph;
    a paragraph of another article that holds the answer string holds it by chance)."""
    article = {r["positive"]: r["article"] for r in items}
    pairs = [(r, m["negatives"][0]) for r, m in zip(items, mined) if m["negatives"]]
    return sum(r["answer"] in n and article[n] == r["article"] for r, n in pairs) / max(len(pairs), 1)


def show_hits(items: list[dict], english: list[dict], mined: list[dict]) -> None:
    """Print each row whose hardest negative contains the answer beside the English parallel of the question,
    answer and negative (XQuAD-R's languages are aligned row by row), so a reader can judge whether the
    negative answers the question."""
    index = {r["positive"]: i for i, r in reversed(list(enumerate(items)))}
    for i, (r, m) in enumerate(zip(items, mined)):
        if m["negatives"] and r["answer"] in m["negatives"][0]:
            negative = english[index[m["negatives"][0]]]
            print(f"  row {i}: {english[i]['query']!r} answer {english[i]['answer']!r} ({r['answer']!r})")
            print(
                f"    hardest negative ({negative['article']}, positive's: {r['article']}): "
                f"{negative['positive'][:160]!r}"
            )


def as_words(text: str, answer: str) -> bool:
    """`answer` occurs in `text` with a space, punctuation or an end on both sides (Python's `\\b` would
    split Devanagari words at their vowel signs)."""

    def edge(c: str) -> bool:
        return c.isspace() or unicodedata.category(c)[0] in "PSZ"

    start = text.find(answer)
    while start >= 0:
        end = start + len(answer)
        if (start == 0 or edge(text[start - 1])) and (end == len(text) or edge(text[end])):
            return True
        start = text.find(answer, start + 1)
    return False


def chance(items: list[dict]) -> float:
    pool = sorted({r["positive"] for r in items})
    return sum(sum(r["answer"] in p for p in pool if p != r["positive"]) / (len(pool) - 1) for r in items) / len(items)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--languages", default=",".join(LANGS))
    parser.add_argument("--model", help="a local model folder: dense mining instead of BM25")
    parser.add_argument("--small-model", action="store_true", help="dense mining with the dense bench's model")
    parser.add_argument(
        "--show", action="store_true", help="print each hit at the defaults beside its English parallel"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.small_model:
            from bench.mining_dense import small_model

            args.model = str(small_model(Path(tmp) / "model", layers=1))
        report(args, Path(tmp) / "vectors")


def report(args: argparse.Namespace, cache: Path) -> None:
    dense = {"retriever": "dense", "model": args.model} if args.model else {}
    # One model, and each text's vector computed once, for every setting.
    embedder = Embedder(lambda: load_encoder(args.model, device()), cache=cache) if args.model else None
    print(f"{'dense' if dense else 'bm25'}: share of rows whose hardest negative contains the gold answer")
    print(
        "lang  queries  "
        + "  ".join(f"{k:>8}" for k in SETTINGS)
        + "     words   article    chance  negatives/query  lost   queries/s"
    )
    worst, queries, seconds = 0.0, 0, 0.0
    with tarfile.open(XQUAD, "r:xz") as tar:
        for lang in args.languages.split(","):
            items = rows(tar, lang)
            results = {name: mine(items, embedder, **dense, **config) for name, config in SETTINGS.items()}
            shares = {name: hardest_share(items, mined) for name, (mined, _) in results.items()}
            shares["words"] = hardest_share(items, results["defaults"][0], lang)
            shares["article"] = same_article_share(items, results["defaults"][0])
            per_query = {
                name: sum(len(m["negatives"] or []) for m in mined) / len(items) for name, (mined, _) in results.items()
            }
            worst, queries, seconds = (
                max(worst, shares["defaults"]),
                queries + len(items),
                seconds + results["defaults"][1],
            )
            print(
                f"{lang:4}  {len(items):7}  "
                + "  ".join(f"{shares[k]:8.3%}" for k in [*SETTINGS, "words", "article"])
                + f"  {chance(items):8.3%}  {per_query['defaults']:15.1f}  "
                f"{per_query['none'] - per_query['defaults']:4.1f}"
                f"  {len(items) / results['defaults'][1]:9.0f}",
                flush=True,
            )
            if args.show:
                show_hits(items, rows(tar, "en"), results["defaults"][0])
    print(
        f"worst language at the defaults: {worst:.3%}; "
        f"mining throughput {queries / seconds:.0f} queries/s (one process)"
    )


if __name__ == "__main__":
    main()
