"""Tokenized data on disk, so the next run (or the run after a disconnect) skips tokenization.

One folder per key under `<workspace>/datasets/`: train.bin and validation.bin (one flat id
stream per split, EOS after each document, as raw little-endian uint16, or uint32 when the
vocabulary does not fit in 65,536), tokenizer.json (what `load_tokenizer` reads) and meta.json
(what made the key, token counts, dtype, known entropy, when). A folder is written under a temp
name and renamed when complete, so a folder with meta.json in it is always whole.

The ids never pass through RAM as a whole: tokenizing writes each batch of rows to the file as
it goes (`encode_split`, `write_ids`), and reading memory-maps the files (`read_cache`), so a
run holds the pages it touches, which belong to the OS page cache, not to the process. That is
what lets a corpus larger than RAM train, and makes reopening a cache instant. Neither does the
text: a large plain text file arrives as pieces of documents (text.py), and EOS goes after the
piece that ends each document.

Formats (meta.json's "format"): 2 is the layout above. 1 (before raw files) kept the streams as
train.npy / validation.npy, uint16 or int32: still read, memory-mapped through the .npy header,
so its ids are exactly what was written. Anything else is refused with what to do.

The key is a readable slug plus a hash of everything that changes the ids: the source (dataset
name and config, or the input files with their sizes and modification times), text_column,
the tokenizer (with vocab_size for BPE and synthetic data, or the tokenizer file's hash),
max_samples, val_fraction, seed and the synthetic settings, and max_tokens for a Hub dataset
streamed up to it (sources.streams_from_hub). block_size is deliberately *not*
in it: blocks are index arithmetic over the stream in make_dataloaders, so trying another
context length must not re-tokenize. The key's "format" is the version of the tokenization
rules, not of the layout: a format-1 folder holds the same ids, so it is found and read.

"Cached local" data is such a folder named directly (data_source="local", data_path=folder),
or any source whose key is found here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import datasets
import numpy as np
from tqdm.auto import tqdm

from ..workspace import atomic_dir
from .errors import DataError
from .hub_stream import streams_from_hub
from .progress import BAR_MIN_ROWS
from .sources import CACHE_META, Source
from .text import DOCUMENT_END, PIECE_CHARS
from .tokenizer import HFTokenizer, Tokenizer, _chunk_safe, load_tokenizer

CACHE_FORMAT = 2  # bump when the folder layout changes (and teach read_cache the old one)
TOKEN_RULES = 1  # bump when the tokenization rules change: it is in the key, so all re-tokenize
SPLITS = ("train", "validation")
SPLIT_FILES = {"train": "train.bin", "validation": "validation.bin"}
FORMAT1_FILES = {"train": "train.npy", "validation": "validation.npy"}
# One tokenizer call gets at most this many rows and (beyond its first row) characters: the
# ids of a batch are Python lists of about 36 bytes per token, so this bounds the peak.
ENCODE_ROWS = 1000
ENCODE_CHARS = 1 << 22
# Below this many tokens writing ids takes about a second: no progress bar.
BAR_MIN_TOKENS = 1 << 22


@dataclass
class CachedTokens:
    train: np.ndarray  # 1-D ids, memory-mapped read-only (uint16/uint32; int32 in format 1)
    val: np.ndarray
    tokenizer: Tokenizer
    meta: dict[str, Any]
    path: Path


def stream_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (half the disk and page cache of uint32), else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def split_path(folder: Path, split: str) -> Path:
    return folder / SPLIT_FILES[split]


def _file_stamp(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _file_sha256(path: str) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        return "missing"  # build_tokenizer reports it; the key only needs to differ
    return hashlib.sha256(p.read_bytes()).hexdigest()


def key_fields(config: Any, source: Source) -> dict[str, Any]:
    """Everything that changes the token ids, and nothing else (see the module docstring)."""
    fields: dict[str, Any] = {
        "format": TOKEN_RULES,
        "data_source": str(config.data_source),
        "source": source.kind,
        "max_samples": int(config.max_samples or 0),
        "val_fraction": float(config.val_fraction),
        "seed": int(config.seed),
    }
    if source.kind == "synthetic":
        fields.update(vocab_size=int(config.vocab_size), synthetic_order=int(config.synthetic_order),
                      synthetic_tokens=int(config.synthetic_tokens))
        return fields  # synthetic ids are the tokens: no tokenizer or text column involved
    fields["text_column"] = str(config.text_column or "")
    tokenizer = str(config.tokenizer).strip()
    fields["tokenizer"] = tokenizer
    if tokenizer == "bpe":
        fields["vocab_size"] = int(config.vocab_size)
    elif tokenizer.lower().endswith(".json"):
        fields["tokenizer_sha256"] = _file_sha256(tokenizer)
    if source.kind == "hub":
        fields.update(dataset_name=source.where, dataset_config=source.subset)
        if streams_from_hub(source, config):  # streamed up to the budget: it bounds the ids
            fields["streamed_max_tokens"] = int(config.max_tokens)
    else:
        fields["where"] = source.where
        fields["files"] = [_file_stamp(f) for f in source.files]
    return fields


def cache_key(config: Any, source: Source) -> str:
    """'<slug>-<hash>': the slug lets a person tell folders apart, the hash keeps them apart."""
    fields = key_fields(config, source)
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    if source.kind == "synthetic":
        name = f"synthetic-v{config.vocab_size}-o{config.synthetic_order}"
    else:
        # The last path part without glob characters: "corpus/*.md" -> "corpus".
        parts = [p for p in Path(source.where).parts if not any(c in p for c in "*?[")]
        base = Path(parts[-1]).stem if parts else "files"
        name = f"{base}-{source.subset}" if source.subset else base
        tok = fields["tokenizer"]
        name += "-" + (f"bpe{config.vocab_size}" if tok == "bpe" else Path(tok).stem)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:48] or "data"
    return f"{slug}-{digest}"


# --------------------------------------------------------------------------- writing


class TokenFile:
    """An id file written as the ids come: memory holds one batch, never the stream.

    Appends raw ids of one dtype; an id that does not fit the dtype is an error, never wrapped
    around. `close()` fsyncs, so a folder renamed into place holds what it says.
    """

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path, self.dtype, self.count = Path(path), np.dtype(dtype), 0
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by close() / __exit__

    def append(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids)
        if ids.size and ids.dtype != self.dtype:
            info = np.iinfo(self.dtype)
            if ids.min() < info.min or ids.max() > info.max:
                raise DataError(f"Token ids {int(ids.min())}..{int(ids.max())} do not fit the "
                                f"cache's {self.dtype.name} ({self.path.name}); this is a bug in "
                                "the tokenizer's vocab_size: please report it.")
            ids = ids.astype(self.dtype)
        self._file.write(np.ascontiguousarray(ids).data)
        self.count += int(ids.size)

    def append_rows(self, rows: Sequence[Sequence[int]]) -> None:
        """Ids as a tokenizer returns them, lists of Python ints: flattened straight into the
        file's dtype, with no int64 copy in between."""
        n = sum(len(r) for r in rows)
        try:
            flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=self.dtype, count=n)
        except OverflowError as e:
            raise DataError(f"A token id does not fit the cache's {self.dtype.name} ({e}); this "
                            "is a bug in the tokenizer's vocab_size: please report it.") from e
        self.append(flat)

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def __enter__(self) -> TokenFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self._file.close()  # the caller's temp folder goes, and the half file with it


def _bar(total: int | None, desc: str, unit: str, small: int) -> tqdm:
    quiet = (total is not None and total < small) or datasets.are_progress_bars_disabled()
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=quiet)


def _text_batches(ds: Any) -> Iterator[tuple[list[str], list[bool] | None]]:
    """The "text" column in batches of at most ENCODE_ROWS rows and about ENCODE_CHARS
    characters (a row longer than that is a batch of its own), each with its rows'
    DOCUMENT_END flags when the rows are pieces of documents (else None: a row is a document).
    Pieces are read ENCODE_CHARS // PIECE_CHARS rows at a time, so a batch of them is never
    more text than ENCODE_CHARS either."""
    pieces = DOCUMENT_END in (getattr(ds, "column_names", None) or ())
    rows = max(1, min(ENCODE_ROWS, ENCODE_CHARS // PIECE_CHARS)) if pieces else ENCODE_ROWS
    for batch in ds.iter(batch_size=rows):
        texts, start, size = batch["text"], 0, 0
        ends = batch[DOCUMENT_END] if pieces else None
        for i, text in enumerate(texts):
            size += len(text)
            if size >= ENCODE_CHARS:
                yield texts[start : i + 1], ends and ends[start : i + 1]
                start, size = i + 1, 0
        if start < len(texts):
            yield texts[start:], ends and ends[start:]


def _pieces_may_differ(ds: Any, tokenizer: Tokenizer) -> bool:
    """Pieces of documents, and a tokenizer whose ids may change where a piece ends: one
    that is not byte-level like GPT-2's (text.py's docstring says why those cannot)."""
    return (DOCUMENT_END in (getattr(ds, "column_names", None) or ())
            and isinstance(tokenizer, HFTokenizer) and not _chunk_safe(tokenizer.core))


def encode_split(ds: Any, tokenizer: Tokenizer, path: Path, desc: str = "Tokenizing",
                 max_ids: int = 0) -> int:
    """Tokenize a split into the id file `path`: each row's ids followed by EOS (when the
    tokenizer has one), batch by batch. Returns the number of ids written.

    `ds` is anything with `.iter(batch_size)` over a "text" column (a Dataset, memory-mapped or
    not, or a streamed IterableDataset, which `max_ids` > 0 stops reading once that many ids
    are written). tokenizers' Rust side works on a whole batch at once.
    """
    eos = tokenizer.eos_id
    rows = len(ds) if hasattr(ds, "__len__") else None
    if _pieces_may_differ(ds, tokenizer):
        print(f"Note: {tokenizer!r} is not a byte-level tokenizer, so where the large text was "
              f"cut into pieces (every ~{PIECE_CHARS:,} characters, at a word or line break) a "
              "token or two may differ from encoding each document whole.")
    with TokenFile(path, stream_dtype(tokenizer.vocab_size)) as out, \
            _bar(rows, desc, " rows", BAR_MIN_ROWS) as bar:
        for texts, ends in _text_batches(ds):
            ids = tokenizer.encode_batch(texts)
            if eos is not None:  # after each document: each row, or each piece that ends one
                for row, end in zip(ids, ends or itertools.repeat(True)):
                    if end:
                        row.append(eos)
            if max_ids > 0 and out.count + sum(len(r) for r in ids) >= max_ids:
                flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64)
                out.append(flat[: max_ids - out.count])
                break
            out.append_rows(ids)
            bar.update(len(texts))
    return out.count


def write_ids(chunks: Iterable[np.ndarray], path: Path, dtype: np.dtype,
              total: int | None = None, desc: str = "Writing ids") -> int:
    """Ids that need no tokenizer (synthetic streams) into the id file `path`, chunk by chunk."""
    with TokenFile(path, dtype) as out, _bar(total, desc, " tok", BAR_MIN_TOKENS) as bar:
        for chunk in chunks:
            out.append(chunk)
            bar.update(len(chunk))
    return out.count


Fill = Callable[[Path], None]  # writes split_path(folder, split) for every split


def write_cache(parent: Path, key: str, fill: Fill, tokenizer: Tokenizer,
                meta: dict[str, Any]) -> Path:
    """Write <parent>/<key>/ whole or not at all: `fill` writes the id files into a temp
    folder, which is renamed into place once meta.json is in it."""
    final = parent / key
    # A folder that another process (a second notebook) finished first holds the same ids.
    with atomic_dir(final) as tmp:
        fill(tmp)
        dtype = stream_dtype(tokenizer.vocab_size)
        counts = {split: split_path(tmp, split).stat().st_size // dtype.itemsize
                  for split in SPLITS}
        tokenizer.save(tmp / "tokenizer.json")
        meta = {**meta, "format": CACHE_FORMAT, "key": key, "train_tokens": counts["train"],
                "validation_tokens": counts["validation"], "dtype": dtype.name,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / CACHE_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if not (final / CACHE_META).is_file():
        raise DataError(f"Cannot write the token cache: {final} exists and is not one. "
                        "Delete or rename that folder.")
    return final


def fill_in_memory(fill: Fill, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Run `fill` in a temp folder and read the ids into RAM (2 or 4 bytes per token): for
    runs without a workspace, which keep nothing on disk."""
    dtype = stream_dtype(vocab_size)
    with tempfile.TemporaryDirectory(prefix="tokens-") as tmp:
        fill(Path(tmp))
        train, val = (np.fromfile(split_path(Path(tmp), s), dtype=dtype) for s in SPLITS)
    return train, val


# --------------------------------------------------------------------------- reading


def made_with(cached: CachedTokens) -> dict[str, Any]:
    """The config fields that made these tokens: `tokenizer` and `vocab_size`.

    A run on a cache folder (data_source="local", data_path=the folder) uses the cache's
    tokenizer whatever the form says, so its saved and logged config must say so too. A BPE
    cache records the vocab_size it was trained for (the key's value); other kinds record the
    tokenizer's real size. Synthetic ids have no tokenizer kind among the config's choices, so
    they point at the cache's own tokenizer.json (which is exactly what was used).
    """
    fields = cached.meta.get("fields") or {}
    kind = fields.get("tokenizer")
    if fields.get("source") == "synthetic" or not kind:
        return {"tokenizer": str(cached.path / "tokenizer.json"),
                "vocab_size": int(cached.tokenizer.vocab_size)}
    vocab = fields.get("vocab_size") if kind == "bpe" else None
    return {"tokenizer": str(kind), "vocab_size": int(vocab or cached.tokenizer.vocab_size)}


def _damaged(folder: Path, why: str) -> DataError:
    return DataError(f"The token cache {folder} is damaged ({why}); delete the folder and run "
                     "again to re-tokenize.")


def open_ids(path: Path, dtype: np.dtype, count: int) -> np.ndarray:
    """A read-only memory map of `count` ids; the file must hold exactly that many."""
    size = path.stat().st_size
    if size != count * dtype.itemsize:
        raise ValueError(f"{path.name} holds {size:,} bytes, meta.json says {count:,} "
                         f"{dtype.name} ids")
    if count == 0:
        return np.empty(0, dtype=dtype)  # mmap cannot map nothing
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def _open_format2(folder: Path, meta: dict[str, Any]) -> list[np.ndarray]:
    name = meta.get("dtype")
    if name not in ("uint16", "uint32"):
        raise ValueError(f"meta.json says dtype {name!r}")
    dtype = np.dtype(name).newbyteorder("<")
    return [open_ids(split_path(folder, s), dtype, int(meta[f"{s}_tokens"])) for s in SPLITS]


def _open_format1(folder: Path, meta: dict[str, Any]) -> list[np.ndarray]:
    streams = []
    for split in SPLITS:
        path = folder / FORMAT1_FILES[split]
        try:
            ids = np.load(path, mmap_mode="r")
        except ValueError:  # an empty stream: nothing to map
            ids = np.load(path)
        # Format 1 wrote 1-D uint16 or int32; the .npy header says which, so ids read exact.
        if ids.ndim != 1 or ids.dtype.kind not in "iu" or ids.dtype.itemsize > 4:
            raise ValueError(f"{path.name} holds {ids.dtype} of shape {ids.shape}")
        want = meta.get(f"{split}_tokens")
        if want is not None and int(want) != ids.size:
            raise ValueError(f"{path.name} holds {ids.size:,} ids, meta.json says {want:,}")
        streams.append(ids)
    return streams


def read_cache(folder: str | os.PathLike[str]) -> CachedTokens:
    """Open a cache folder without reading its ids: they are memory-mapped (see the module
    docstring), so this takes milliseconds whatever the size."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / CACHE_META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise _damaged(folder, str(e)) from e
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt not in (1, CACHE_FORMAT):
        raise DataError(f"The token cache {folder} has format {fmt!r}, this version reads 1 "
                        f"and {CACHE_FORMAT}; delete the folder to re-tokenize.")
    try:
        train, val = (_open_format2 if fmt == CACHE_FORMAT else _open_format1)(folder, meta)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _damaged(folder, str(e)) from e
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    if train.dtype.itemsize < 4 and tokenizer.vocab_size > 1 << (8 * train.dtype.itemsize):
        raise _damaged(folder, f"{train.dtype} ids cannot hold a vocabulary of "
                               f"{tokenizer.vocab_size:,}")
    return CachedTokens(train, val, tokenizer, meta, folder)
