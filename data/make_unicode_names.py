"""Writes data/unicode-names.txt, the records of configs/names.yaml: one Unicode character name
per line, as Python's own unicodedata module has them (Unicode 14.0 in Python 3.11).

Kept: the names of letters, signs and symbols made of words; left out: names with digits (mostly
CJK ideographs and numbered forms), the 11,172 generated Hangul syllables, and two of every
three of the rest, so that the file stays near 250 KB. Shuffled with a fixed seed: in code point
order the last 5% (the validation records) would be one block of scripts the model never saw.
Run: python data/make_unicode_names.py

The names are from the Unicode Character Database, (c) Unicode, Inc., under the Unicode License
v3 (https://www.unicode.org/license.txt): data/unicode-names.LICENSE.
"""

import random
import re
import unicodedata
from pathlib import Path

names = [unicodedata.name(chr(c), "") for c in range(0x110000)]
kept = [n for n in names if n and not re.search(r"[0-9]", n) and "HANGUL SYLLABLE" not in n]
kept = [n for i, n in enumerate(kept) if i % 3 == 0]
random.Random(0).shuffle(kept)
out = Path(__file__).with_name("unicode-names.txt")
out.write_text("".join(n + "\n" for n in kept), encoding="utf-8")
print(f"wrote {out}: {len(kept):,} names, {out.stat().st_size:,} bytes (Unicode {unicodedata.unidata_version})")
