"""The zoo's corpus: the public-domain King James Bible, with a fixed split by whole books.

Source: Debian's ``bible-kjv`` package (``apt-get update && apt-get install -y bible-kjv``), read with
``bible -f "Gen1:1-Rev22:21"`` (31,102 verses, 4.4 MB). Each output line is ``<Book><chapter>:<verse> <text>``
(e.g. ``Ge1:1 In the beginning God created...``); the prefix is stripped.

Text format (train and held-out alike): one verse per line, a blank line between books, UTF-8/ASCII.

Split (fixed, by whole books, never by random lines): the held-out books are :data:`HELDOUT_BOOKS`
(Ruth, Ecclesiastes, Joel, Jonah, John, Galatians, 1 John; ~186 kB, 4.5 % of the characters), chosen to
cover narrative, wisdom, prophecy, gospel and epistle. Mark was deliberately *not* held out: most of its
text has near-verbatim parallels in Matthew and Luke, which would flatter the held-out loss. Every other
book is train.

Shipped files (``writelens/zoo/data/``): ``heldout.txt.gz`` (the whole held-out split) and
``train_sample.txt.gz`` (the train books :data:`TRAIN_SAMPLE_BOOKS`: Genesis, Psalms, Matthew, Romans).
The full train split is rebuilt through ``bible`` by :func:`load_split` (``python -m writelens.zoo.train``).
``python -m writelens.zoo.corpus`` rewrites both shipped files.
"""

from __future__ import annotations

import argparse
import gzip
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
HELDOUT_FILE = DATA_DIR / "heldout.txt.gz"
TRAIN_SAMPLE_FILE = DATA_DIR / "train_sample.txt.gz"

#: Book names as the ``bible`` tool prints them. Held out: whole books, a mix of genres.
HELDOUT_BOOKS: tuple[str, ...] = ("Ruth", "Eccl", "Joel", "Jonah", "John", "Gal", "1Jn")
#: Train books shipped as the train sample (for SAE-extraction examples and tests).
TRAIN_SAMPLE_BOOKS: tuple[str, ...] = ("Ge", "Psa", "Mat", "Rom")
N_VERSES = 31102

INSTALL_HINT = (
    "The King James Bible is read from Debian's `bible-kjv` package, which is not installed.\n"
    "Run (as root):  apt-get update && apt-get install -y bible-kjv\n"
    'or pass a file produced elsewhere by `bible -f "Gen1:1-Rev22:21" > kjv.txt` with --corpus kjv.txt.'
)

_VERSE_RE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


@dataclass(frozen=True)
class Verse:
    """One verse: ``book`` as the ``bible`` tool abbreviates it (``"Ge"``, ``"1Jn"``), chapter, verse, text."""

    book: str
    chapter: int
    verse: int
    text: str


def raw_kjv(corpus: str | Path | None = None) -> str:
    """The raw ``bible -f "Gen1:1-Rev22:21"`` output, from ``corpus`` (a file) or by running ``bible``.

    Raises ``FileNotFoundError`` with the apt command to run when ``bible`` is missing.
    """
    if corpus is not None:
        return Path(corpus).read_text(encoding="utf-8")
    exe = shutil.which("bible")
    if exe is None:
        raise FileNotFoundError(INSTALL_HINT)
    out = subprocess.run([exe, "-f", "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True)
    return out.stdout


def parse_verses(raw: str) -> list[Verse]:
    """Parse ``bible -f`` output into verses, stripping the ``Ge1:1 `` prefixes.

    Raises ``ValueError`` on a line that does not look like a verse.
    """
    verses: list[Verse] = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        m = _VERSE_RE.match(line)
        if m is None:
            raise ValueError(f"line {lineno} of the KJV text is not '<Book><ch>:<v> <text>': {line[:80]!r}")
        verses.append(Verse(m[1], int(m[2]), int(m[3]), m[4].strip()))
    return verses


def format_books(verses: list[Verse]) -> str:
    """Join verses into the zoo's text format: one verse per line, a blank line between books."""
    books: list[list[str]] = []
    last = None
    for v in verses:
        if v.book != last:
            books.append([])
            last = v.book
        books[-1].append(v.text)
    return "\n\n".join("\n".join(b) for b in books) + "\n"


def split_verses(verses: list[Verse]) -> tuple[list[Verse], list[Verse]]:
    """(train, held-out) verses by whole books (:data:`HELDOUT_BOOKS`)."""
    found = {v.book for v in verses}
    missing = set(HELDOUT_BOOKS) - found
    if missing:
        raise ValueError(
            f"held-out books {sorted(missing)} not found in the corpus (books seen: {len(found)})"
        )
    train = [v for v in verses if v.book not in HELDOUT_BOOKS]
    held = [v for v in verses if v.book in HELDOUT_BOOKS]
    return train, held


def load_split(corpus: str | Path | None = None) -> tuple[str, str]:
    """(train_text, heldout_text) of the full KJV, in the zoo's text format. Needs ``bible`` or ``corpus``."""
    verses = parse_verses(raw_kjv(corpus))
    if len(verses) != N_VERSES:
        raise ValueError(f"expected {N_VERSES} KJV verses, got {len(verses)}: is the corpus complete?")
    train, held = split_verses(verses)
    return format_books(train), format_books(held)


def _read_gz(path: Path) -> str:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read()


def _write_gz(path: Path, text: str) -> None:
    # mtime=0 keeps the file byte-identical across rebuilds.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9) as f:
        f.write(text.encode("utf-8"))


def heldout_text() -> str:
    """The whole shipped held-out split (:data:`HELDOUT_BOOKS`; ~186 kB), one verse per line."""
    return _read_gz(HELDOUT_FILE)


def train_sample_text() -> str:
    """The shipped train sample (train books :data:`TRAIN_SAMPLE_BOOKS`; ~595 kB), one verse per line."""
    return _read_gz(TRAIN_SAMPLE_FILE)


def write_shipped_data(corpus: str | Path | None = None, out_dir: Path = DATA_DIR) -> tuple[Path, Path]:
    """Rebuild ``heldout.txt.gz`` and ``train_sample.txt.gz`` in ``out_dir`` from the full corpus."""
    verses = parse_verses(raw_kjv(corpus))
    train, held = split_verses(verses)
    sample = [v for v in train if v.book in TRAIN_SAMPLE_BOOKS]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / HELDOUT_FILE.name, out_dir / TRAIN_SAMPLE_FILE.name)
    _write_gz(paths[0], format_books(held))
    _write_gz(paths[1], format_books(sample))
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description="Rebuild the zoo's shipped KJV snippets (held-out split, train sample)."
    )
    p.add_argument("--corpus", type=Path, default=None, help="a `bible -f` dump (default: run `bible`)")
    p.add_argument("--out", type=Path, default=DATA_DIR)
    args = p.parse_args(argv)
    for path in write_shipped_data(args.corpus, args.out):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
