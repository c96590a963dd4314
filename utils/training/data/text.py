"""Plain text files as documents: a file, a folder or a glob, one document per file.

The no-network source: anything on the machine (your notes, a repo, Python's own standard
library) becomes a corpus, with errors that name the file and say what to do. `sources.py`
builds every file-reading source on these helpers.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import DataError

TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst")


def find_files(path_or_glob: str, suffixes: Iterable[str] = TEXT_SUFFIXES) -> list[Path]:
    """A file as itself; a folder searched recursively for `suffixes`; a glob as matched.

    Sorted, so runs see the same data in the same order every time.
    """
    path = Path(os.path.expanduser(path_or_glob))
    if path.is_file():
        return [path]
    if path.is_dir():
        wanted = tuple(s.lower() for s in suffixes)
        # Hidden folders (.git, .venv, .ipynb_checkpoints) are tooling, not corpus.
        return sorted(
            p
            for p in path.rglob("*")
            if p.suffix.lower() in wanted
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    # A glob picks any extension: whoever writes one chose the files on purpose.
    return sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())


def looks_binary(path: Path, head: int = 8192) -> bool:
    # NUL bytes never occur in text but are everywhere in binaries (some decode as "valid"
    # UTF-8), so they are the test.
    with open(path, "rb") as f:
        return b"\x00" in f.read(head)


def read_text(path: Path) -> str:
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise DataError(
            f"{path} looks like a binary file (it contains NUL bytes); "
            "point data_path at text files or a folder of .txt/.md/.py/.rst files."
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not UTF-8 text (undecodable byte at position {e.start}); "
            "convert it to UTF-8 or leave it out of data_path."
        ) from e
    return text.removeprefix("\ufeff")  # a BOM is an encoding marker, not content


def read_text_files(files: Sequence[Path], where: str) -> list[str]:
    """One document per file, in the given order; empty or whitespace-only files are skipped.

    `where` is what the user asked for (a path or glob), for the error when nothing is left.
    """
    texts = [text for text in map(read_text, files) if text.strip()]
    if not texts:
        what = "no files" if not files else f"{len(files)} file(s), all empty"
        if len(files) == 1:
            what = f"{files[0]} is empty"
        raise DataError(
            f"No text found at {where!r} ({what}). data_path may be a file, a folder (searched "
            f"recursively for {', '.join(TEXT_SUFFIXES)}) or a glob such as 'notes/**/*.txt'; "
            "check the path exists and holds non-empty UTF-8 text."
        )
    return texts
