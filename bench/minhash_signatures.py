"""MinHash signature speed per core: pipeline/ops/minhash.py against datasketch (the MinHash library
text-dedup and many dedup scripts use), same texts, same shingles, same number of permutations.

Texts: UDHR paragraphs in ~360 languages and scripts (udhr2.zip), repeated to --mb megabytes.
Both sides get the texts as strings and return one signature per text; datasketch is given the
shingles already made by our tokenizer (its own input format), so it is measured on hashing only
and the ratio is, if anything, in its favour. Pinned to one core.

    pip install -e ".[bench]"
    python bench/minhash_signatures.py [--mb 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from pipeline.ops.minhash import Shingling, signatures, tokens  # noqa: E402

UDHR = Path(__file__).resolve().parents[2] / "shared" / "data" / "udhr2.zip"


def corpus(mb: float) -> list[str]:
    with zipfile.ZipFile(UDHR) as z:
        paragraphs = [
            p
            for n in sorted(z.namelist())
            if n.endswith(".txt")
            for p in z.read(n).decode("utf-8").split("\n")
            if p.strip()
        ]
    out, size = [], 0
    while size < mb * 1e6:
        for p in paragraphs:
            out.append(p)
            size += len(p.encode("utf-8"))
            if size >= mb * 1e6:
                break
    return out


def datasketch_signatures(texts: list[str], num_perm: int) -> float:
    from datasketch import MinHash

    shingling = Shingling()
    split, unspaced = tokens(pa.array(texts), shingling.kind)
    docs = []
    for toks, u in zip(split.to_pylist(), unspaced.tolist()):
        n = min(shingling.n_chars if u else shingling.n_words, max(len(toks), 1))
        docs.append([" ".join(toks[i : i + n]).encode("utf-8") for i in range(max(len(toks) - n + 1, 0))])
    start = time.perf_counter()
    MinHash.bulk(docs, num_perm=num_perm)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=32)
    parser.add_argument("--num-perm", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    texts = corpus(args.mb)
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    column = pa.array(texts)
    signatures(column[:10], args.num_perm)  # compile (or load the cached) numba code outside the timing
    ours, theirs = [], []
    for r in range(args.repeats):
        start = time.perf_counter()
        sig = signatures(column, args.num_perm)
        ours.append(time.perf_counter() - start)
        theirs.append(datasketch_signatures(texts, args.num_perm))
        print(
            f"repeat {r + 1}: ours {ours[-1]:.2f} s ({mb / ours[-1]:.1f} MB/s), "
            f"datasketch {theirs[-1]:.2f} s ({mb / theirs[-1]:.1f} MB/s)",
            flush=True,
        )
    assert sig.shape == (len(texts), args.num_perm) and sig.dtype == np.uint32
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"\n{len(texts):,} texts, {mb:.1f} MB, {args.num_perm} permutations, one core, median of {args.repeats}:")
    print(f"  ours       {o:6.2f} s  {mb / o:6.1f} MB/s  (tokenising included)")
    print(f"  datasketch {t:6.2f} s  {mb / t:6.1f} MB/s  (hashing ready-made shingles only)")
    print(f"ratio: {t / o:.1f}x")


if __name__ == "__main__":
    main()
