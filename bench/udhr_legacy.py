"""Legacy encodings (`udhr.zip`, files named `Language-Encoding`): what the pipeline's reader and
tagger do with each file, read as UTF-8 (the default) and with the encoding its name declares.

For every file: is it valid UTF-8 (else the reader quarantines it as `invalid_encoding`, naming the
line); decoded with the declared codec (where Python has one), which language lid.176 tags it with,
and whether that is the language the file name says (names resolved by pycountry, where they can).

    python bench/udhr_legacy.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langid.labels import canonical, language_of  # noqa: E402
from langid.tagger import DEFAULT_FALLBACK, LanguageTagger  # noqa: E402
from sources.config import SourceConfig  # noqa: E402
from sources.reader import Unit, read_unit  # noqa: E402

UDHR = Path(__file__).resolve().parents[2] / "shared" / "data" / "udhr.zip"
# The encoding part of a udhr.zip file name -> Python codec (the Windows code pages where the name
# is a script: iso8859-5 turns these Cyrillic files into mojibake that lid.176 calls Russian). Font
# encodings (Agra, DallakHelv...) and Vietnamese VIQR/VPS/TCVN have no codec: their bytes cannot be
# decoded honestly.
CODECS = {
    "Latin1": "latin-1",
    "Latin2": "iso8859-2",
    "Cyrillic": "cp1251",
    "Greek": "cp1253",
    "Hebrew": "cp1255",
    "Arabic": "cp1256",
    "GB2312": "gb2312",
    "HZ": "hz",
    "EUC": "euc_jp",
    "JIS": "iso2022_jp",
    "SJIS": "shift_jis",
    "Turkish": "iso8859-9",
    "Baltic": "iso8859-4",
    "UTF8": "utf-8",
    "Unicode": "utf-16",
}


def language_from_name(name: str) -> str | None:
    import pycountry

    for part in name.split("-")[0].split("_"):
        try:
            return pycountry.languages.lookup(part).alpha_3
        except LookupError:
            continue
    return None


def read(path: Path, encoding: str) -> dict:
    """The one row the pipeline's plain-text reader makes of a whole file."""
    source = SourceConfig(
        name="udhr",
        task="clustering",
        path=str(path),
        format="text",
        text_unit="file",
        encoding=encoding,
        columns={"query": "text", "label": "path"},
        licence="public-domain",
    )
    return read_unit(Unit(source.name, str(path)), source).to_pylist()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json")
    args = parser.parse_args()
    tagger = LanguageTagger(detect_code=False, fallback=DEFAULT_FALLBACK)
    covered = {language_of(c) for c in tagger.covered_labels()}
    rows, stats = [], Counter()
    with zipfile.ZipFile(UDHR) as archive, tempfile.TemporaryDirectory() as tmp:
        for member in sorted(n for n in archive.namelist() if not n.endswith("/")):
            name = Path(member).name
            path = Path(tmp) / name
            path.write_bytes(archive.read(member))
            as_utf8 = read(path, "utf-8")
            valid = as_utf8["_drop"] is None
            codec = CODECS.get(name.rsplit("-", 1)[-1]) if "-" in name else None
            row = {
                "file": name,
                "valid_utf8": valid,
                "utf8_reason": as_utf8["_drop"],
                "origin": as_utf8["origin"],
                "codec": codec,
            }
            stats["files"] += 1
            stats["valid_utf8" if valid else "quarantined_as_utf8"] += 1
            if codec:
                decoded = read(path, codec)
                if decoded["_drop"] is None:
                    label, conf = tagger.predict([decoded["query"]])
                    expected = language_from_name(name)
                    expected = canonical(expected) if expected else None
                    row.update(label=label[0], conf=float(conf[0]), expected=expected)
                    stats["decoded_with_codec"] += 1
                    if expected in covered:
                        stats["named_language_covered_by_model"] += 1
                        stats["tagged_as_named"] += language_of(label[0]) == expected
                else:
                    stats["codec_failed"] += 1
            else:
                stats["no_codec"] += 1
            rows.append(row)
    print(json.dumps(stats, indent=1))
    wrong = [r for r in rows if r.get("expected") in covered and language_of(r["label"]) != r["expected"]]
    print(
        f"covered by the model but tagged differently from the file name ({len(wrong)}):",
        ", ".join(f"{r['file']}->{r['label']}" for r in wrong[:40]),
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"stats": stats, "files": rows}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
