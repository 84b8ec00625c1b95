"""The code detector (langid/code.py) on real source files of this machine and on real prose,
against Pygments' `guess_lexer` (the maintained library one would reach for) in the same run.

Snippets: 3-25 consecutive non-blank lines from source files found under --roots, named by their
extension. Prose: SIB-200 dev sentences (205 languages) and UDHR paragraphs. Reported per language:
detected as code, and detected with the right language; on prose: texts wrongly called code.

    python bench/code_detection.py [--per-language 150] [--roots /usr /opt]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langid.code import CodeDetector, declared_code_label  # noqa: E402
from langid.corpora import sib200  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
EXTENSIONS = ("py", "c", "h", "cc", "cpp", "hpp", "js", "php", "sql", "sh", "html", "css", "go", "rs", "java", "rb")
# Pygments lexer names -> our names, for scoring its guesses.
PYGMENTS = {
    "python": "python",
    "c": "c",
    "c++": "cpp",
    "javascript": "javascript",
    "php": "php",
    "sql": "sql",
    "bash": "shell",
    "html": "html",
    "css": "css",
    "go": "go",
    "rust": "rust",
    "java": "java",
    "ruby": "ruby",
}


def snippets(roots: list[str], per_language: int, rng: random.Random) -> list[tuple[str, str]]:
    files: dict[str, list[str]] = {}
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                label = declared_code_label(name) if name.rsplit(".", 1)[-1] in EXTENSIONS else None
                if label is not None:
                    files.setdefault(label.removeprefix("code:"), []).append(os.path.join(folder, name))
    out = []
    for lang, paths in sorted(files.items()):
        rng.shuffle(paths)
        taken = 0
        for path in paths:
            try:
                lines = [ln for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
            except (UnicodeDecodeError, OSError):
                continue
            if len(lines) < 5:
                continue
            k = rng.randint(3, 25)
            start = rng.randint(0, max(0, len(lines) - k))
            text = "\n".join(lines[start : start + k])
            if 40 <= len(text) <= 5000:
                out.append((lang, text))
                taken += 1
            if taken >= per_language:
                break
    return out


def prose() -> list[str]:
    texts = sib200(SHARED / "sib200-train-dev.tar.xz", "dev").texts[::5]
    with zipfile.ZipFile(SHARED / "udhr2.zip") as z:
        for name in z.namelist()[::4]:
            if name.endswith(".txt"):
                texts += [p for p in z.read(name).decode("utf-8").split("\n") if len(p) > 40][:10]
    return texts


def pygments_guess(texts: list[str]) -> list[str | None]:
    from pygments.lexers import guess_lexer
    from pygments.util import ClassNotFound

    out = []
    for text in texts:
        try:
            name = guess_lexer(text).name.lower()
        except ClassNotFound:
            name = None
        out.append(PYGMENTS.get(name, "other" if name not in (None, "text only") else None))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-language", type=int, default=150)
    parser.add_argument("--roots", nargs="+", default=["/usr", "/opt", sys.prefix])
    args = parser.parse_args()
    code = snippets(args.roots, args.per_language, random.Random(0))
    natural = prose()
    texts = [t for _, t in code]
    detector = CodeDetector()

    start = time.perf_counter()
    ours = detector(texts)
    ours_prose = detector(natural)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    theirs = pygments_guess(texts)
    theirs_prose = pygments_guess(natural)
    theirs_s = time.perf_counter() - start

    total, ours_code, ours_right, py_code, py_right = Counter(), Counter(), Counter(), Counter(), Counter()
    for i, (lang, _) in enumerate(code):
        total[lang] += 1
        if i in ours:
            ours_code[lang] += 1
            ours_right[lang] += ours[i][0] == f"code:{lang}"
        if theirs[i] is not None:
            py_code[lang] += 1
            py_right[lang] += theirs[i] == lang
    print(f"{len(code):,} code snippets, {len(natural):,} prose texts\n")
    print(f"{'language':12s} {'n':>5s}   ours: code  right   pygments: code  right")
    for lang in sorted(total):
        n = total[lang]
        print(
            f"{lang:12s} {n:5d}   {ours_code[lang] / n:10.2f} {ours_right[lang] / n:6.2f}   "
            f"{py_code[lang] / n:14.2f} {py_right[lang] / n:6.2f}"
        )
    n = len(code)
    print(
        f"{'all':12s} {n:5d}   {sum(ours_code.values()) / n:10.2f} {sum(ours_right.values()) / n:6.2f}   "
        f"{sum(py_code.values()) / n:14.2f} {sum(py_right.values()) / n:6.2f}"
    )
    fp_theirs = sum(g is not None for g in theirs_prose)
    print(f"\nprose called code: ours {len(ours_prose)} of {len(natural):,}, pygments {fp_theirs} of {len(natural):,}")
    docs = len(texts) + len(natural)
    print(
        f"speed: ours {docs / ours_s:,.0f} texts/s, pygments {docs / theirs_s:,.0f} texts/s, "
        f"ratio {theirs_s / ours_s:.1f}x"
    )


if __name__ == "__main__":
    main()
