"""A labelled set of near-duplicate / distinct text pairs built from real UDHR text, for measuring
near-duplicate detection per script (`python -m pipeline dedup-eval`).

How it is built (deterministic from a seed), per UDHR text in `udhr2.zip`:
- duplicates: a paragraph and an edited copy of it, each edit touching about a tenth of it: typos
  (1% of letters replaced), a sentence of another paragraph inserted (cut to 10% of the length),
  its two halves swapped, or a short boilerplate header and footer added;
  and whole texts of the same language in two editions (`deu` / `deu_1901`, `ron_1953` / `ron_1993`,
  and udhr.zip's older English, German, French, Spanish texts against udhr2.zip's)
- distinct: two different paragraphs of the same text (same language, same legal vocabulary), the
  same paragraph in two closely related languages (Bosnian / Croatian / Serbian, Czech / Slovak,
  Hindi / Marathi...), and the same article in two unrelated languages.
Scripts with few UDHR texts (Han, Thai...) get more pairs per text, so every script has at least
`min_per_script` duplicates and as many distinct pairs. Each pair carries the script of its first
text (the dominant one of Latin, Cyrillic, Arabic, Han, Devanagari, Thai, ... as decided by `regex`
script properties).
"""

from __future__ import annotations

import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

import regex

SCRIPTS = (
    "Latin",
    "Cyrillic",
    "Arabic",
    "Han",
    "Devanagari",
    "Thai",
    "Greek",
    "Hebrew",
    "Hangul",
    "Ethiopic",
    "Bengali",
    "Tamil",
    "Georgian",
    "Armenian",
)
_SCRIPT_RE = {s: regex.compile(rf"\p{{Script={s}}}") for s in SCRIPTS}
RELATED = [
    ("bos_latn", "hrv"),
    ("hrv", "srp_latn"),
    ("ces", "slk"),
    ("dan", "nob"),
    ("nob", "swe"),
    ("spa", "glg"),
    ("por_PT", "glg"),
    ("hin", "mar"),
    ("rus", "ukr"),
    ("rus", "bel"),
    ("bul", "mkd"),
    ("ind", "zsm"),
    ("arb", "ary"),
    ("cmn_hans", "cmn_hant"),
]
# Two editions of the same text: dated versions inside udhr2.zip, and udhr.zip's older edition
# (file, codec) against udhr2.zip. Different translations (pes_1/pes_2, por_BR/por_PT, the two
# Russian editions) are not near-duplicates and are left out.
EDITIONS = [("deu", "deu_1901"), ("ron_1953", "ron_1993")]
OLD_EDITIONS = {
    "eng": ("English-Latin1", "latin-1"),
    "deu": ("German_Deutsch-Latin1", "latin-1"),
    "fra": ("French_Francais-Latin1", "latin-1"),
    "spa": ("Spanish-Latin1", "latin-1"),
}
BOILERPLATE = ("Home | About | Contact | Privacy policy", "Copyright 2024. All rights reserved. Share on social media.")


@dataclass
class Pair:
    a: str
    b: str
    duplicate: bool
    kind: str
    script: str


def script_of(text: str) -> str:
    counts = {s: len(p.findall(text[:2000])) for s, p in _SCRIPT_RE.items()}
    best = max(counts, key=counts.get)
    return best if counts[best] else "Other"


def _paragraphs(text: str) -> list[str]:
    """Lines of at least 300 UTF-8 bytes (about 300 Latin or 100 Han characters)."""
    return [p.strip() for p in text.splitlines() if len(p.strip().encode("utf-8")) >= 300]


def _sentences(text: str) -> list[str]:
    return [s for s in regex.split(r"(?<=[.!?។။။।؟。！？])\s*", text) if s.strip()]


def edit(text: str, how: str, rng: random.Random, donor: str) -> str:
    """One realistic edit of `text` (`typos`, `insert`, `reorder`, `boilerplate`)."""
    if how == "typos":
        chars = list(text)
        letters = [i for i, c in enumerate(chars) if c.isalpha()]
        for i in rng.sample(letters, max(1, len(letters) // 100)):
            chars[i] = chars[rng.choice(letters)]
        return "".join(chars)
    if how == "insert":
        donor_sentences = _sentences(donor) or [donor]
        extra = rng.choice(donor_sentences)[: max(10, len(text) // 10)]
        cut = len(text) // 2
        return text[:cut] + " " + extra + " " + text[cut:]
    if how == "reorder":
        sentences = _sentences(text)
        if len(sentences) >= 2:
            half = len(sentences) // 2
            return " ".join(sentences[half:] + sentences[:half])
        cut = text.find(" ", len(text) // 2)
        return text[cut + 1 :] + " " + text[:cut] if cut > 0 else text[len(text) // 2 :] + text[: len(text) // 2]
    if how == "boilerplate":
        room = max(10, len(text) // 20)
        return f"{BOILERPLATE[0][:room]}\n{text}\n{BOILERPLATE[1][:room]}"
    raise ValueError(how)


EDITS = ("typos", "insert", "reorder", "boilerplate")


def build(data_dir: str | Path, seed: int = 0, per_text: int = 4, min_per_script: int = 40) -> list[Pair]:
    """The labelled pairs from `udhr2.zip` and `udhr.zip` in `data_dir`: at least `per_text`
    duplicates and as many distinct pairs per UDHR text."""
    rng = random.Random(seed)
    with zipfile.ZipFile(Path(data_dir) / "udhr2.zip") as z:
        texts = {Path(n).stem: z.read(n).decode("utf-8") for n in sorted(z.namelist()) if n.endswith(".txt")}
    with zipfile.ZipFile(Path(data_dir) / "udhr.zip") as z:
        old = {code: z.read(f"udhr/{name}").decode(codec) for code, (name, codec) in OLD_EDITIONS.items()}
    pairs: list[Pair] = []
    names = [n for n in sorted(texts) if len(_paragraphs(texts[n])) >= 4]
    scripts = {n: script_of(texts[n]) for n in names}
    texts_per_script = {s: sum(v == s for v in scripts.values()) for s in set(scripts.values())}
    for name in names:
        paras = _paragraphs(texts[name])
        script = scripts[name]
        count = max(per_text, -(-min_per_script // texts_per_script[script]))
        for k in range(count):
            how = EDITS[k % len(EDITS)]
            p, donor = rng.sample(paras, 2)
            pairs.append(Pair(p, edit(p, how, rng, donor), True, f"edit:{how}", script))
        for _ in range(count):
            p, q = rng.sample(paras, 2)
            pairs.append(Pair(p, q, False, "other_paragraph", script))
        other = rng.choice(names)
        other_paras = _paragraphs(texts[other])
        if other != name:
            k = min(len(paras), len(other_paras)) // 2
            pairs.append(Pair(paras[k], other_paras[k], False, "other_language", script))
    for a, b in EDITIONS:
        pairs.append(Pair(texts[a], texts[b], True, "edition", script_of(texts[a])))
    for code, text in old.items():
        pairs.append(Pair(text, texts[code], True, "edition", script_of(text)))
    for a, b in RELATED:
        if a in texts and b in texts:
            pa_, pb_ = _paragraphs(texts[a]), _paragraphs(texts[b])
            for k in range(0, min(len(pa_), len(pb_)), max(1, min(len(pa_), len(pb_)) // 4)):
                pairs.append(Pair(pa_[k], pb_[k], False, "related_language", script_of(texts[a])))
            pairs.append(Pair(texts[a], texts[b], False, "related_language_text", script_of(texts[a])))
    return pairs


def planted_corpus(data_dir: str | Path, texts: int = 40, dup_share: float = 0.3, seed: int = 0) -> list[dict]:
    """Rows `{text, language, cluster}` for testing a near-dup run end to end: the paragraphs of
    `texts` UDHR texts of different languages (so no two editions of one text), and for `dup_share`
    of them one to three edited copies (the edits of `build`) that share the original's `cluster`;
    every other row is alone."""
    rng = random.Random(seed)
    with zipfile.ZipFile(Path(data_dir) / "udhr2.zip") as z:
        by_language = {Path(n).stem.split("_")[0]: n for n in sorted(z.namelist(), reverse=True) if n.endswith(".txt")}
        names = sorted(by_language.values())
        chosen = [names[i] for i in sorted(rng.sample(range(len(names)), min(texts, len(names))))]
        paragraphs = {Path(n).stem: _paragraphs(z.read(n).decode("utf-8")) for n in chosen}
    rows: list[dict] = []
    for language, paras in paragraphs.items():
        for k, p in enumerate(paras):
            cluster = f"{language}:{k}"
            rows.append({"text": p, "language": language, "cluster": cluster})
            if len(paras) > 1 and rng.random() < dup_share:
                for c in range(rng.randint(1, 3)):
                    donor = paras[(k + 1) % len(paras)]
                    rows.append(
                        {
                            "text": edit(p, EDITS[(k + c) % len(EDITS)], rng, donor),
                            "language": language,
                            "cluster": cluster,
                        }
                    )
    rng.shuffle(rows)
    return rows
