"""Streaming a Hub dataset into the token file, up to max_tokens, never downloading it whole.

A corpus too large to download (a FineWeb sample, OpenWebText) is read row by row only as far
as the token budget needs: the train split up to max_tokens ids, the validation split (or the
stream's head when there is none) up to a bounded share. The notebook's preview of a Hub
dataset (`preview_hub`) reads only the rows it shows, the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import datasets

from .errors import DataError
from .sources import (
    VALIDATION_SPLITS,
    Source,
    _from_hub,
    not_a_column,
    pick_text_column,
    string_features,
)

# With max_tokens > 0 a Hub dataset is streamed into the token file, never downloaded whole:
# the train split up to max_tokens ids, the validation split up to this many (at least).
STREAM_VAL_MIN_IDS = 1 << 16
# A tokenizer that needs training (bpe, char) learns from at most this many characters of the
# stream's head, or 4 per token of the budget when that is less (but at least 1 MB).
TOKENIZER_SAMPLE_CHARS = 1 << 27
# The preview looks this far into the train split for rows with text to show.
PREVIEW_SCAN_ROWS = 1000


def streams_from_hub(source: Source, config: Any) -> bool:
    """Is this source streamed into the token file (a Hub dataset with max_tokens set)?"""
    return source.kind == "hub" and int(getattr(config, "max_tokens", 0) or 0) > 0


def stream_budget(config: Any) -> tuple[int, int]:
    """(train ids, validation ids) a streamed Hub dataset is tokenized to."""
    max_tokens = int(config.max_tokens)
    val = max(int(max_tokens * float(config.val_fraction)), STREAM_VAL_MIN_IDS,
              2 * (int(config.block_size) + 1))
    return max_tokens, val


class TextStream:
    """A streamed split's text rows, pulled one by one only when asked for, in the shape
    `encode_split` reads (`.iter(batch_size)` yielding {"text": [...]}).

    One stream is one pass: a second `.iter` goes on where the first stopped, so validation can
    take the head of a split and training the rest. `pulled` counts the rows read from the
    source; rows whose text is empty are skipped.
    """

    def __init__(self, rows: Iterator[dict[str, Any]], column: str, limit: int = 0) -> None:
        self._rows = itertools.islice(rows, limit) if limit > 0 else rows
        self.column, self.pulled = column, 0

    def iter(self, batch_size: int) -> Iterator[dict[str, list[str]]]:
        batch: list[str] = []
        for row in self._rows:
            self.pulled += 1
            text = row.get(self.column)
            if isinstance(text, str) and text.strip():
                batch.append(text)
                if len(batch) >= batch_size:
                    yield {"text": batch}
                    batch = []
        if batch:
            yield {"text": batch}

    def texts(self, max_chars: int) -> Iterator[str]:
        """The first rows' texts, up to about max_chars characters (for training a tokenizer)."""
        seen = 0
        for batch in self.iter(64):
            for text in batch["text"]:
                yield text
                seen += len(text)
                if seen >= max_chars:
                    return


@dataclass
class HubStream:
    """A Hub dataset opened with streaming=True: nothing is downloaded until rows are read."""

    name: str
    splits: Any  # datasets.IterableDatasetDict
    train_split: str
    val_split: str | None  # None: validation comes from the head of the train split
    column: str
    limit: int = 0  # max_samples: rows read from each split at most

    def rows(self, split: str) -> TextStream:
        """A fresh pass over `split` from its first row."""
        return TextStream(iter(self.splits[split]), self.column, self.limit)


def open_hub_stream(source: Source, config: Any) -> HubStream:
    """Open `source` (a Hub dataset) for streaming, and choose its splits and text column."""
    name, subset = source.where, source.subset
    splits = _from_hub(name, subset,
                       lambda: datasets.load_dataset(name, subset or None, streaming=True))
    if not hasattr(splits, "keys"):
        raise DataError(f"load_dataset({name!r}, streaming=True) returned a "
                        f"{type(splits).__name__}, not splits.")
    names = list(splits.keys())
    if "train" in names:
        train = "train"
    elif len(names) == 1:
        train = names[0]
    else:
        raise DataError(f"{source.describe()} has splits {names} and none is called 'train'.")
    val = next((n for n in VALIDATION_SPLITS if n in names and n != train), None)
    column = _stream_column(splits[train], str(config.text_column or ""), source.describe())
    return HubStream(name, splits, train, val, column, int(config.max_samples or 0))


def _stream_column(split: Any, wanted: str, where: str) -> str:
    """text_column, else "text", else the only string column: from the declared features when
    the dataset has them, else from its first row (one row read)."""
    features = getattr(split, "features", None)
    if features:
        columns, strings = list(features), string_features(features)
    else:
        first = next(iter(split), None)
        if first is None:
            raise DataError(f"The train split of {where} is empty.")
        columns = list(first)
        strings = [c for c, v in first.items() if isinstance(v, str)]
    if wanted and wanted not in columns:
        raise not_a_column(wanted, columns, where)
    return wanted or pick_text_column(strings, columns, where)


@dataclass
class HubPreview:
    """The first rows of a Hub dataset's train split, streamed: what the data cell shows."""

    sizes: str  # "train: 36,718 rows, validation: 3,760 rows" (as far as the Hub says)
    texts: list[str]
    column: str
    pulled: int  # rows read from the stream


def preview_hub(source: Source, config: Any, rows: int = 3) -> HubPreview:
    """The first `rows` texts of the train split, read by streaming: the Hub sends the start of
    the first file, not the dataset. Errors are those of training: no train split, a
    text_column that is not a column, a split whose every row is empty."""
    hub = open_hub_stream(source, config)
    stream = TextStream(iter(hub.splits[hub.train_split]), hub.column, PREVIEW_SCAN_ROWS)
    first = next(stream.iter(max(rows, 1)), {"text": []})["text"]
    where = source.describe()
    if not first and stream.pulled < PREVIEW_SCAN_ROWS:
        raise DataError(f"The {hub.train_split!r} split of {where} has no text: every row of "
                        f"column {hub.column!r} is empty. Set text_column to a column with text.")
    sizes = ", ".join(_split_size(hub.splits[name], name) for name in hub.splits)
    if hub.val_split is None:
        sizes += f" (validation is split off {hub.train_split!r} when training)"
    if not first:
        print(f"Note: no text in the first {stream.pulled:,} rows of column {hub.column!r} of "
              f"{where}; check that text_column names the column to train on.")
    return HubPreview(sizes, list(first[:rows]), hub.column, stream.pulled)


def _split_size(split: Any, name: str) -> str:
    """'train: 1,234 rows' when the dataset's card says how many, else just the name."""
    known = getattr(getattr(split, "info", None), "splits", None) or {}
    found = known.get(name) if hasattr(known, "get") else None
    count = getattr(found, "num_examples", None)
    return f"{name}: {count:,} rows" if count else name
