"""Plain text files as documents: a file, a folder or a glob, one document per file.

The no-network source: anything on the machine (your notes, a repo, Python's own standard
library) becomes a corpus, with errors that name the file and say what to do. `sources.py`
builds every file-reading source on these helpers.

Text up to TEXT_IN_MEMORY_BYTES (all the files together) is read whole: one row per document.
More than that is never held whole, whatever its size (a 2 GB .txt): each file is read in
blocks and cut into pieces of about PIECE_CHARS characters, written by `datasets` to a
memory-mapped Arrow file (in its cache, like a .jsonl), and the splits are made of whole
documents as before. A piece row carries DOCUMENT_END, so the token cache puts EOS after each
document, not after each piece, and the ids are those of the document read whole:

- Pieces are cut just before a whitespace character that follows a non-space one, preferring
  the end of a paragraph (a blank line follows), then of a line, then of a word. A byte-level
  pre-tokenizer (the GPT-2 regex: our "bpe" and GPT-2-style tokenizer.json files) splits there
  anyway, none of its patterns looks behind, and its one look-ahead sees whitespace there
  either way, so each piece gives exactly the ids it gives inside the whole text; byte and char ids cannot change at all; and a BPE trained on pieces
  counts the same words, so it learns the same merges.
- Only where PIECE_CHARS * HARD_PIECES characters hold no such place (a minified blob, a vast
  run of spaces) is the text cut anyway; a byte-level BPE then sees that run as two words, so a
  token or two there differ from encoding the whole.
- A tokenizer.json of another kind (a SentencePiece-style one that adds "▁" in front of every
  text it encodes, say) may encode each piece's first word differently: a token or two every
  PIECE_CHARS characters. The token cache says so when it tokenizes such pieces.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Features, Value

from .errors import DataError

TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst")
# More text than this (16 MB) is read in pieces: read whole, a 16 MB document already peaks
# at ~250 MB (byte) to ~700 MB (a BPE encoding it at once) of RAM.
TEXT_IN_MEMORY_BYTES = 1 << 24
PIECE_CHARS = 1 << 14  # a piece's target size: 1,000 pieces (a `datasets` batch) are 16 MB
HARD_PIECES = 16  # this many pieces' worth of text without whitespace is cut anyway
READ_BYTES = 1 << 20  # one read from the file
WRITE_ROWS = 64  # pieces the Arrow writer holds before writing them (1 MB of text)
DOCUMENT_END = "document_end"  # the piece column: True on the last piece of each document
PIECES_VERSION = 1  # in the Arrow file's fingerprint: bump when the cutting rules change
ROW_FEATURES = Features({"text": Value("string"), DOCUMENT_END: Value("bool")})
PIECE_FEATURES = Features({**ROW_FEATURES, "has_text": Value("bool")})
# Where a piece may end: just before whitespace that follows a non-space character (group 1).
# The greedy head finds the last such place in a window in one pass, without a match per line.
PARAGRAPH = re.compile(r".*\S(\r?\n[ \t]*\r?\n)", re.DOTALL)
LINE = re.compile(r".*\S(\r?\n)", re.DOTALL)
WORD = re.compile(r".*\S([ \t])", re.DOTALL)
ANY_SPACE = re.compile(r"(?<=\S)[ \t\r\n]")


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


def _binary(path: Path) -> DataError:
    return DataError(
        f"{path} looks like a binary file (it contains NUL bytes); "
        "point data_path at text files or a folder of .txt/.md/.py/.rst files."
    )


def _not_utf8(path: Path, position: int) -> DataError:
    return DataError(
        f"{path} is not UTF-8 text (undecodable byte at position {position}); "
        "convert it to UTF-8 or leave it out of data_path."
    )


def read_text(path: Path) -> str:
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise _binary(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e.start) from e
    return text.removeprefix("\ufeff")  # a BOM is an encoding marker, not content


def _no_text(files: Sequence[Path], where: str) -> DataError:
    what = "no files" if not files else f"{len(files)} file(s), all empty"
    if len(files) == 1:
        what = f"{files[0]} is empty"
    return DataError(
        f"No text found at {where!r} ({what}). data_path may be a file, a folder (searched "
        f"recursively for {', '.join(TEXT_SUFFIXES)}) or a glob such as 'notes/**/*.txt'; "
        "check the path exists and holds non-empty UTF-8 text."
    )


def read_text_files(files: Sequence[Path], where: str) -> list[str]:
    """One document per file, in the given order; empty or whitespace-only files are skipped.

    `where` is what the user asked for (a path or glob), for the error when nothing is left.
    """
    texts = [text for text in map(read_text, files) if text.strip()]
    if not texts:
        raise _no_text(files, where)
    return texts


def too_big_to_hold(files: Sequence[Path]) -> bool:
    """Is this more text than is read whole (see the module docstring)?"""
    return sum(f.stat().st_size for f in files) > TEXT_IN_MEMORY_BYTES


# --------------------------------------------------------------------------- cutting pieces


def document_cut(length: int, val_fraction: float, rfind: Callable[[int, int], int]) -> int:
    """Where one document is cut into (train, validation): at a line break near the end when
    there is one. `rfind(lo, hi)` is str.rfind("\\n", lo, hi) over the document."""
    cut = int(length * (1.0 - val_fraction))
    newline = rfind(int(cut * 0.9), cut)
    if newline != -1:
        cut = newline + 1
    return min(max(cut, 1), length - 1)


def split_document(text: str, val_fraction: float) -> tuple[str, str]:
    """Cut one document into (train, validation), at a line break near the end when there is one."""
    cut = document_cut(len(text), val_fraction, lambda lo, hi: text.rfind("\n", lo, hi))
    return text[:cut], text[cut:]


def _last(pattern: re.Pattern[str], text: str, lo: int, hi: int) -> int:
    match = pattern.match(text, lo, hi)
    return match.start(1) if match else -1


def _next_cut(text: str, start: int, size: int, final: bool) -> int:
    """Where the piece that starts at `start` ends (see the module docstring for why there)."""
    lo, hi, hard = start + size // 2, start + size, start + size * HARD_PIECES
    for pattern in (PARAGRAPH, LINE, WORD):
        cut = _last(pattern, text, lo, hi)
        if cut > start:
            return cut
    later = ANY_SPACE.search(text, hi, hard)  # a long line: its first word break past `hi`
    if later is not None:
        return later.start()
    return len(text) if final and len(text) < hard else hi


def piece_ends(text: str, size: int, final: bool) -> Iterator[int]:
    """Where the pieces of `text` (of about `size` characters) end, one after the other. Unless
    `final`, the text after the last end is carried to the next read: a piece is only cut with
    HARD_PIECES pieces' worth of text ahead, so a long line can still end it at a word break."""
    start = 0
    while len(text) - start > (size if final else size * HARD_PIECES):
        start = _next_cut(text, start, size, final)
        yield start
    if final and start < len(text):
        yield len(text)


def read_pieces(path: Path, size: int = PIECE_CHARS) -> Iterator[str]:
    """The text of `path` as pieces, read READ_BYTES at a time: memory holds a few pieces,
    never the file. The same checks as `read_text`, with the same byte positions."""
    pending, offset, rest, at_start = b"", 0, "", True
    with open(path, "rb") as f:
        while True:
            block = f.read(READ_BYTES)
            if b"\x00" in block:
                raise _binary(path)
            data, final = pending + block, not block
            try:
                text, used = codecs.utf_8_decode(data, "strict", final)
            except UnicodeDecodeError as e:
                raise _not_utf8(path, offset + e.start) from e
            pending, offset = data[used:], offset + used
            if at_start and text:
                text, at_start = text.removeprefix("\ufeff"), False
            text, start = rest + text, 0
            for end in piece_ends(text, size, final):
                yield text[start:end]
                start = end
            if final:
                return
            rest = text[start:]


def _piece_rows(paths: list[str], size: int) -> Iterator[dict[str, Any]]:
    """Rows for the Arrow file: every piece of every file, in order, the last of each marked."""
    for path in paths:
        held = None
        for piece in read_pieces(Path(path), size):
            if held is not None:
                yield {"text": held, DOCUMENT_END: False, "has_text": not held.isspace()}
            held = piece
        if held is not None:
            yield {"text": held, DOCUMENT_END: True, "has_text": not held.isspace()}


# --------------------------------------------------------------------------- documents in pieces


def read_text_pieces(files: Sequence[Path], where: str) -> TextPieces:
    """The files as pieces in a memory-mapped Arrow file (see the module docstring).

    `datasets` keeps the file in its cache under a fingerprint of the files' paths, sizes and
    modification times, so the next read of the same files (the preview cell, then training)
    does not read them again.
    """
    stamps = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    fingerprint = hashlib.sha256(
        json.dumps([PIECES_VERSION, PIECE_CHARS, stamps]).encode()).hexdigest()[:16]
    print(f"{where}: {sum(s[1] for s in stamps) / 1e6:,.0f} MB of text, read in pieces of "
          f"{PIECE_CHARS:,} characters (never whole).")
    try:
        pieces = Dataset.from_generator(
            _piece_rows, features=PIECE_FEATURES, fingerprint=f"text-pieces-{fingerprint}",
            gen_kwargs={"paths": [s[0] for s in stamps], "size": PIECE_CHARS},
            writer_batch_size=WRITE_ROWS)
    except datasets.exceptions.DatasetGenerationError as e:
        if isinstance(e.__cause__, DataError):
            raise e.__cause__ from None
        raise
    except OSError as e:  # ENOSPC while writing the Arrow file, or a file gone meanwhile
        raise DataError(f"Cannot read {where!r} into pieces: {e}. Free some disk space "
                        f"(datasets writes a copy to {datasets.config.HF_DATASETS_CACHE}) and "
                        "check the files are still there.") from e
    return TextPieces(pieces, files, where)


class TextPieces:
    """Documents stored as runs of piece rows; splits are made of whole documents, exactly as
    `sources.to_text_splits` makes them from one row per document."""

    def __init__(self, pieces: Dataset, files: Sequence[Path], where: str) -> None:
        self.pieces = pieces
        table = pieces.data
        ends = np.flatnonzero(table.column(DOCUMENT_END).to_numpy(zero_copy_only=False))
        starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
        has_text = table.column("has_text").to_numpy(zero_copy_only=False)
        # Whitespace-only files are skipped, as read_text_files skips them.
        kept = (np.logical_or.reduceat(has_text, starts) if len(starts) and len(has_text)
                else np.zeros(0, dtype=bool))
        if not kept.any():
            raise _no_text(files, where)
        self.starts, self.ends = starts[kept], ends[kept]

    def _rows(self, docs: np.ndarray) -> Dataset:
        """The pieces of documents `docs` (indices into the kept ones), in that order."""
        starts, lengths = self.starts[docs], self.ends[docs] - self.starts[docs] + 1
        first = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        rows = first + np.arange(int(lengths.sum()), dtype=np.int64)
        return self.pieces.select(rows, keep_in_memory=True).select_columns(list(ROW_FEATURES))

    def splits(self, val_fraction: float, seed: int, limit: int = 0) -> DatasetDict:
        """train and validation: a seeded split of the documents, or the tail of the only one."""
        n = len(self.starts)
        if n == 1:
            train, val = self._split_one(val_fraction)
            return DatasetDict(train=train, validation=val)
        # The permutation train_test_split draws for n rows, whatever the rows hold.
        parts = Dataset.from_dict({"doc": np.arange(n)}).train_test_split(
            test_size=val_fraction, seed=seed)
        train_docs, val_docs = (np.asarray(parts[s][:]["doc"], dtype=np.int64)
                                for s in ("train", "test"))
        if limit > 0:
            train_docs, val_docs = train_docs[:limit], val_docs[:limit]
        return DatasetDict(train=self._rows(train_docs), validation=self._rows(val_docs))

    def _split_one(self, val_fraction: float) -> tuple[Dataset, Dataset]:
        """`split_document` over the pieces of the only document: only the pieces around the
        cut are read."""
        first, last = int(self.starts[0]), int(self.ends[0])
        column = self.pieces.data.column("text").slice(first, last - first + 1)
        lengths = pc.utf8_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])

        def piece(i: int) -> str:
            return str(self.pieces[first + i]["text"])

        def rfind(lo: int, hi: int) -> int:
            i = int(np.searchsorted(offsets, hi, side="left")) - 1
            while i >= 0 and offsets[i + 1] > lo:
                found = piece(i).rfind("\n", max(lo - offsets[i], 0), hi - offsets[i])
                if found != -1:
                    return int(offsets[i]) + found
                i -= 1
            return -1

        cut = document_cut(int(offsets[-1]), val_fraction, rfind)
        k = max(int(np.searchsorted(offsets, cut, side="right")) - 1, 0)
        k = min(k, len(lengths) - 1)
        text, at = piece(k), cut - int(offsets[k])
        head = Dataset.from_dict({"text": [text[:at]], DOCUMENT_END: [True]},
                                 features=ROW_FEATURES)
        tail = Dataset.from_dict({"text": [text[at:]], DOCUMENT_END: [k == len(lengths) - 1]},
                                 features=ROW_FEATURES)
        return (self._join(first, first + k, head, before=True),
                self._join(first + k + 1, last + 1, tail, before=False))

    def _join(self, start: int, stop: int, row: Dataset, before: bool) -> Dataset:
        """Piece rows start..stop-1, then `row` (or `row` first when not `before`)."""
        if stop <= start:
            return row
        rows = self.pieces.select(range(start, stop)).select_columns(list(ROW_FEATURES))
        return datasets.concatenate_datasets([rows, row] if before else [row, rows])


# --------------------------------------------------------------------------- showing them


def count_rows(ds: Dataset) -> str:
    """'12 rows', or for pieces '3 documents (1,234 pieces)'."""
    if DOCUMENT_END not in ds.column_names:
        return f"{len(ds):,} rows"
    docs = sum(sum(b[DOCUMENT_END]) for b in ds.select_columns([DOCUMENT_END]).iter(4096))
    return f"{docs:,} documents ({len(ds):,} pieces)"


def first_texts(ds: Dataset, n: int) -> list[str]:
    """The first `n` rows' texts; for pieces, the first piece of each of the first documents."""
    if DOCUMENT_END not in ds.column_names:
        return list(ds[:n]["text"])
    firsts, row = [0], 0
    for batch in ds.select_columns([DOCUMENT_END]).iter(4096):
        for end in batch[DOCUMENT_END]:
            row += 1
            if end:
                firsts.append(row)
        if len(firsts) > n:
            break
    return [ds[i]["text"] for i in firsts[:n] if i < len(ds)]
