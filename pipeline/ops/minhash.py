"""MinHash signatures with script-aware shingles, and LSH band keys (the base of near-dup dedup).

Shingles. Words are the natural unit where words are separated by spaces (Latin, Cyrillic, Arabic,
Devanagari...); scripts written without spaces (Han, kana, Thai, Lao, Khmer, Myanmar, Tibetan) have
no such unit, so each of their characters (with its combining marks) is a token. A shingle is `n`
consecutive tokens of one text (`n_words`, or `n_chars` where the text is mostly unspaced script),
so a Thai or Chinese text gets character n-grams rather than one giant "word".

Speed. Tokenising runs column-wise in Arrow's C++ kernels; tokens are hashed from the Arrow
buffers, and shingle hashing and the MinHash itself run in one numba-compiled loop over the flat
token hashes (per shingle: mix n token hashes, then min over `num_perm` multiply-shift hashes). We
compile this loop ourselves because the libraries measured do not fit: datasketch and a numpy
version reach 2-11 MB/s, and rensa computes fast but returns signatures as Python lists (converting
them costs ten times the hashing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Scripts written without spaces between words: every character is a token.
UNSPACED = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Tibetan}"


@dataclass(frozen=True)
class Shingling:
    """How texts become shingles: `auto` picks words or characters per text by its script."""

    kind: Literal["auto", "words", "chars"] = "auto"
    # 3-grams: one typo breaks three shingles instead of five (see the near_dedup stage's threshold).
    n_words: int = 3
    n_chars: int = 3


def tokens(texts: pa.Array | pa.ChunkedArray, kind: str) -> tuple[pa.ListArray, np.ndarray]:
    """Lower-cased tokens per text (punctuation, symbols and spaces separate them), and per text
    whether it counts as unspaced script (more than half its characters)."""
    if isinstance(texts, pa.ChunkedArray):  # a table column: the masked replacement needs one array
        texts = texts.combine_chunks()
    lower = pc.utf8_lower(pc.fill_null(texts, ""))
    length = np.maximum(pc.utf8_length(lower).to_numpy(zero_copy_only=False), 1)
    if kind == "words":
        unspaced = np.zeros(len(lower), dtype=bool)
    else:
        pattern = r"([\p{L}\p{N}]\p{M}*)" if kind == "chars" else f"([{UNSPACED}]\\p{{M}}*)"
        counts = pc.count_substring_regex(lower, pattern).to_numpy(zero_copy_only=False)
        unspaced = counts * 2 > length if kind == "auto" else np.ones(len(lower), dtype=bool)
        has = counts > 0
        if has.any():  # space out single characters only in the texts that have them
            idx = pa.array(np.flatnonzero(has))
            spaced = pc.replace_substring_regex(lower.take(idx), pattern, r" \1 ")
            lower = pc.replace_with_mask(lower, pa.array(has), spaced)
    # Anything but letters, digits, marks and ASCII whitespace (so punctuation, symbols and the
    # Unicode spaces) becomes an ASCII space, so the fast ASCII split is right.
    words = pc.utf8_trim_whitespace(pc.replace_substring_regex(lower, r"[^\p{L}\p{N}\p{M}\s]+", " "))
    split = pc.ascii_split_whitespace(words)
    # An empty text splits into one empty token: make it a text without tokens.
    return pc.if_else(pc.equal(words, ""), pa.scalar([], split.type), split), unspaced


@numba.njit(cache=True, nogil=True)
def _hash_bytes(data, offsets, out):  # pragma: no cover (compiled)
    """FNV-1a over each token's UTF-8 bytes, then the splitmix64 finaliser for avalanche."""
    for i in range(out.shape[0]):
        h = np.uint64(0xCBF29CE484222325)
        for j in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[j])) * np.uint64(0x100000001B3)
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        out[i] = h ^ (h >> np.uint64(31))


def hash_strings(flat: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash per string (token), straight from the Arrow buffers (no Python string each).
    Nulls hash as empty strings."""
    flat = flat.combine_chunks() if isinstance(flat, pa.ChunkedArray) else flat
    if flat.null_count:
        flat = pc.fill_null(flat, "")
    if flat.type != pa.string():
        flat = flat.cast(pa.string())
    _, offsets_buf, data_buf = flat.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[flat.offset : flat.offset + len(flat) + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    out = np.empty(len(flat), dtype=np.uint64)
    _hash_bytes(data, offsets, out)
    return out


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of `num_perm` multiply-shift hash functions h -> (a*h + b) >> 32, a odd."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)
    return a, b


@numba.njit(cache=True, nogil=True, inline="always")
def _shingle(token_hash, first, width):  # pragma: no cover (compiled)
    """The hash of the shingle made of tokens first .. first+width-1 (order matters)."""
    s = np.uint64(0)
    for k in range(width):
        s = (s ^ token_hash[first + k]) * np.uint64(0x9E3779B97F4A7C15)
        s ^= s >> np.uint64(29)
    return s


@numba.njit(cache=True, nogil=True)
def _minhash(token_hash, token_start, token_count, n, a, b, out):  # pragma: no cover (compiled)
    for d in range(token_start.shape[0]):
        count, width = token_count[d], min(n[d], token_count[d])  # a short text: one shingle of all its tokens
        for j in range(count - width + 1 if count else 0):
            s = _shingle(token_hash, token_start[d] + j, width)
            for p in range(a.shape[0]):
                v = np.uint32((a[p] * s + b[p]) >> np.uint64(32))
                if v < out[d, p]:
                    out[d, p] = v


@numba.njit(cache=True, nogil=True)
def _shingles(token_hash, token_start, token_count, n, offsets, out):  # pragma: no cover (compiled)
    for d in range(token_start.shape[0]):
        count, width = token_count[d], min(n[d], token_count[d])
        for j in range(count - width + 1 if count else 0):
            out[offsets[d] + j] = _shingle(token_hash, token_start[d] + j, width)


def _prepare(
    texts: pa.Array, shingling: Shingling
) -> tuple[pa.ListArray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, token hashes, first token of each text, tokens per text, shingle size per text)."""
    split, unspaced = tokens(texts, shingling.kind)
    counts = pc.list_value_length(split).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(split)
    hashes = hash_strings(flat) if len(flat) else np.zeros(0, np.uint64)
    # each text's first token (as long as `counts`, empty included)
    starts = (np.cumsum(counts) - counts).astype(np.int64)
    n = np.where(unspaced, shingling.n_chars, shingling.n_words).astype(np.int64)
    return split, hashes, starts, counts, n


@dataclass(frozen=True)
class Shingles:
    """The shingles of a batch of texts: text d's are `hashes[offsets[d]:offsets[d+1]]`."""

    hashes: np.ndarray  # uint64, flat
    offsets: np.ndarray  # int64, len(texts) + 1
    short: np.ndarray  # bool per text: fewer tokens than n, so its one shingle is the whole text
    normalised: np.ndarray  # uint64 per text: hash of its tokens joined by one space (0: no tokens)


def shingle_hashes(texts: pa.Array, shingling: Shingling = Shingling()) -> Shingles:
    """The same shingles the signatures are made of, with what exact matching needs."""
    split, hashes, starts, counts, n = _prepare(texts, shingling)
    per_text = np.where(counts > 0, counts - np.minimum(n, counts) + 1, 0)
    offsets = np.concatenate([[0], np.cumsum(per_text)]).astype(np.int64)
    out = np.empty(int(offsets[-1]), dtype=np.uint64)
    _shingles(hashes, starts, counts, n, offsets, out)
    normalised = hash_strings(pc.binary_join(split, " ").fill_null(""))
    normalised[counts == 0] = 0
    return Shingles(out, offsets, counts < n, normalised)


def signatures(texts: pa.Array, num_perm: int = 128, seed: int = 1, shingling: Shingling = Shingling()) -> np.ndarray:
    """MinHash signatures, shape (len(texts), num_perm), uint32. A text without tokens keeps the
    all-max row, which shares no band with anything."""
    _, hashes, starts, counts, n = _prepare(texts, shingling)
    a, b = permutations(num_perm, seed)
    out = np.full((len(counts), num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    _minhash(hashes, starts, counts, n, a, b, out)
    return out


# b-bit minwise hashing (Li and König, 2010): a signature keeps only the low `bits` of each hash,
# 4 times smaller at 8 bits. Two compact signatures agree where the full ones do, and by chance 1
# time in 2^bits elsewhere, which `similarity` corrects for. A band keys its bucket with
# rows x fields x bits bits, so `compact_bits` widens the hashes until a band holds at least 32.
_COMPACT_TYPES = {8: np.uint8, 16: np.uint16, 32: np.uint32}


def compact_bits(hashes_per_band: int) -> int:
    """The fewest bits per hash (8, 16 or 32) that give a band of `hashes_per_band` 32 bits."""
    return next(bits for bits in (8, 16, 32) if bits * hashes_per_band >= 32)


def compact(sig: np.ndarray, bits: int = 8) -> np.ndarray:
    """The low `bits` of each hash (uint8, uint16 or uint32, same shape)."""
    dtype = _COMPACT_TYPES[bits]
    return (sig & np.uint32(np.iinfo(dtype).max)).astype(dtype)


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of each pair of compact signatures, per field: `a`, `b` are
    (pairs, fields, num_perm) compact hashes; returns (pairs, fields) float32."""
    chance = np.float32(2.0 ** -(8 * a.dtype.itemsize))
    agree = (a == b).mean(axis=2, dtype=np.float32)
    return np.clip((agree - chance) / (1 - chance), 0.0, 1.0)


@numba.njit(cache=True, nogil=True)
def _band_keys(sig, first, count, rows, salt, out):  # pragma: no cover (compiled)
    for d in range(sig.shape[0]):
        for k in range(count):
            band = first + k
            h = np.uint64(band + 1) * np.uint64(0x9E3779B97F4A7C15)
            for f in range(sig.shape[1]):
                for j in range(rows):
                    h = (h ^ np.uint64(sig[d, f, band * rows + j])) * np.uint64(0x100000001B3)
                    h ^= h >> np.uint64(32)
            h = (h ^ salt[d]) * np.uint64(0x9E3779B97F4A7C15)
            out[d, k] = h ^ (h >> np.uint64(29))


def band_keys(sig: np.ndarray, bands: range, rows: int, salt: np.ndarray | None = None) -> np.ndarray:
    """(docs, len(bands)) uint64 bucket keys of compact signatures `sig` (docs, fields, num_perm):
    band b takes hashes b*rows .. b*rows+rows-1 of every field, so two documents share a key when
    every field agrees on the band (but for chance collisions). `salt` (uint64 per document, e.g.
    its language) keeps documents of different salts apart."""
    if (bands.stop) * rows > sig.shape[2]:
        raise ValueError(
            f"{bands.stop} bands x {rows} rows need {bands.stop * rows} hashes, signatures have {sig.shape[2]}"
        )
    out = np.empty((sig.shape[0], len(bands)), dtype=np.uint64)
    salt = np.zeros(sig.shape[0], np.uint64) if salt is None else salt.astype(np.uint64)
    _band_keys(np.ascontiguousarray(sig), bands.start, len(bands), rows, salt, out)
    return out


def probability_of_candidate(jaccard: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """P(two texts of this Jaccard similarity share at least one band) = 1 - (1 - s^r)^b."""
    return 1.0 - (1.0 - jaccard**rows) ** bands


def choose_bands(threshold: float, num_perm: int, fp_weight: float = 0.5, fields: int = 1) -> tuple[int, int]:
    """Bands x rows per field (b * r <= num_perm) minimising fp_weight * (area of candidates below
    the threshold) + (1 - fp_weight) * (area of misses above it) under the S-curve of a band of
    r hashes from each of `fields` fields (for fields alike in similarity, exponent r * fields)."""
    below = np.linspace(0.0, threshold, 200)
    above = np.linspace(threshold, 1.0, 200)
    best, best_cost = (1, num_perm), np.inf
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = np.trapezoid(probability_of_candidate(below, bands, rows * fields), below)
            fn = np.trapezoid(1.0 - probability_of_candidate(above, bands, rows * fields), above)
            cost = fp_weight * fp + (1 - fp_weight) * fn
            if cost < best_cost:
                best, best_cost = (bands, rows), cost
    return best
