"""Raw text from five sources, in one shape: a DatasetDict with train/validation and a text column.

Sources (config.data_source):
- "huggingface": `load_dataset(dataset_name, dataset_config)` from the Hub; or, when data_path
  is set or dataset_name is an existing path, that local file/folder/glob (as "local" reads it).
  Before going online a 3 s probe checks that the Hub answers, so no network means an error
  naming the offline alternatives within seconds, not the library's retries for minutes.
  With max_tokens > 0 a Hub dataset is not downloaded: load_token_data streams it
  (`hub_stream.open_hub_stream`) straight into the token file, up to max_tokens ids.
- "drive": data_path relative to the workspace root (on Drive in Colab), absolute, or starting
  with "MyDrive/" (under the Drive mount point).
- "upload": the file(s) uploads.py keeps in `<workspace>/datasets/uploads/`.
- "local": a file, folder or glob on this machine. A folder written by `load_token_data`
  (it holds meta.json) is the "cached local" source: its tokens are used as they are.
- "synthetic": the Markov chain of synthetic.py, as rows of space-separated token ids.

How files become rows, the same for every source that reads files:
- .csv / .json / .jsonl / .parquet: one row per record, read by `datasets`;
- a folder written by `save_to_disk`: its splits as saved;
- any other file (.txt, .md, .py, ...): one document per file, whole. Not one row per line: an
  end-of-document token after every line would teach the model that lines are unrelated, and
  a file's newlines would be lost. Files of both kinds in one folder is an error (use a glob).
  More than text.TEXT_IN_MEMORY_BYTES of such text is read in pieces, never whole: its splits
  are still whole documents, as rows of pieces with a "document_end" column (text.py).

Then, whatever the source: the text column of a table is chosen (plain text files and synthetic
rows ignore text_column, which a notebook form may still hold from another source), rows
whose text is empty are dropped, and a validation split is found or split off.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Value
from huggingface_hub import constants as hub_constants

from ..network import answers
from ..workspace import DRIVE_MOUNT_POINT, Workspace
from .errors import DataError
from .progress import progress_for
from .synthetic import synthetic_text_data
from .text import (
    TEXT_SUFFIXES,
    TextPieces,
    find_files,
    looks_binary,
    read_text_files,
    read_text_pieces,
    split_document,
    too_big_to_hold,
)
from .uploads import find_upload

SOURCES = ("huggingface", "drive", "upload", "local", "synthetic")
# Module constants so tests can point the probe at a closed local port.
HUB_PROBE_URL = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
HUB_PROBE_TIMEOUT_S = 3.0
STRUCTURED = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# Suffixes people try that are neither text nor a format `datasets` reads here.
UNSUPPORTED = (".xlsx", ".xls", ".zip", ".gz", ".bz2", ".xz", ".tar", ".7z", ".pdf", ".docx",
               ".arrow", ".pkl", ".pt", ".npy")
VALIDATION_SPLITS = ("validation", "valid", "val", "dev", "test")
CACHE_META = "meta.json"  # marks a folder written by load_token_data (see cache.py)
OFFLINE_ALTERNATIVES = (
    "Without the Hub, use data_source='local', 'drive' or 'upload' with a .txt/.csv/.jsonl/"
    ".parquet file or a folder saved with Dataset.save_to_disk, or data_source='synthetic'. "
    "If this dataset was downloaded before, set HF_HUB_OFFLINE=1 (before starting Python) to "
    "use the cached copy."
)


@dataclass(frozen=True)
class Source:
    """Where the text comes from, resolved (paths found, upload done) but not read yet.

    Resolving first lets load_token_data build the cache key, and find the cache, without
    reading or downloading anything.
    """

    kind: str  # "hub", "files", "disk" (save_to_disk folder), "cache" (tokens), "synthetic"
    where: str  # what the user named: a dataset name, a path, a glob
    files: tuple[Path, ...] = ()
    subset: str = ""  # the Hub dataset's config name

    def describe(self) -> str:
        if self.kind == "hub":
            return f"Hugging Face dataset {self.where}" + (f"/{self.subset}" * bool(self.subset))
        if self.kind == "files":
            return f"{len(self.files)} file(s) from {self.where}"
        if self.kind == "disk":
            return f"saved dataset {self.where}"
        if self.kind == "cache":
            return f"cached tokens {self.where}"
        return self.where


def is_token_cache(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / CACHE_META).is_file()


def _is_saved_dataset(path: Path) -> bool:
    # What Dataset.save_to_disk / DatasetDict.save_to_disk write at the top of the folder.
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


# --------------------------------------------------------------------------- resolving


def resolve_source(config: Any, workspace: Workspace | None = None) -> Source:
    """Find the files (uploading in Colab if needed); touches no network."""
    kind = str(config.data_source)
    if kind == "synthetic":
        return Source("synthetic", f"synthetic order-{config.synthetic_order} Markov chain "
                                   f"over {config.vocab_size} tokens")
    if kind == "huggingface":
        name = str(config.dataset_name).strip()
        path = str(config.data_path).strip()
        if path:
            print(f"data_source='huggingface' with data_path set: reading {path!r}, not the Hub "
                  "(clear data_path to download dataset_name).")
            return _local_source(path)
        if _exists_locally(name):
            return _local_source(name)
        if not name:
            raise DataError("dataset_name is empty; give a Hugging Face dataset name such as "
                            "'wikitext' (with dataset_config 'wikitext-2-raw-v1').")
        return Source("hub", name, subset=str(config.dataset_config).strip())
    if kind == "local":
        return _local_source(str(config.data_path))
    if kind == "drive":
        return _local_source(_drive_path(str(config.data_path), workspace))
    if kind == "upload":
        return _upload_source(config, workspace)
    raise DataError(f"data_source={kind!r} is not known; use one of {', '.join(SOURCES)}.")


def _exists_locally(name: str) -> bool:
    if not name:
        return False
    if Path(name).expanduser().exists():
        return True
    return any(ch in name for ch in "*?[") and bool(find_files(name))


def _local_source(path_or_glob: str) -> Source:
    raw = path_or_glob.strip()
    if not raw:
        # Path("") is the current folder: refuse rather than silently train on whatever is there.
        raise DataError("data_path is empty; set it to a file, a folder or a glob.")
    path = Path(raw).expanduser()
    if path.is_dir():
        if is_token_cache(path):
            return Source("cache", str(path), (path,))
        if _is_saved_dataset(path):
            return Source("disk", str(path), tuple(sorted(p for p in path.rglob("*") if p.is_file())))
    files = find_files(raw, TEXT_SUFFIXES + tuple(STRUCTURED))
    if not files:
        what = (f"the folder {path} (searched recursively for "
                f"{', '.join(TEXT_SUFFIXES + tuple(STRUCTURED))})" if path.is_dir() else str(path))
        raise DataError(
            f"No data found at {what}. data_path may be a file, a folder or a glob such as "
            "'data/**/*.txt'; check that it exists (on Colab, that Drive is mounted)."
        )
    return Source("files", raw, tuple(files))


def _drive_path(data_path: str, workspace: Workspace | None) -> str:
    raw = data_path.strip()
    if not raw:
        raise DataError("data_path is empty; give a file, folder or glob on Google Drive, "
                        "relative to the workspace or starting with 'MyDrive/'.")
    if Path(raw).expanduser().is_absolute():
        return raw
    if raw.startswith("MyDrive/"):
        return str(DRIVE_MOUNT_POINT / raw)
    # Relative paths mean the workspace (on Drive in Colab); without one, the current folder.
    root = workspace.root if workspace is not None else Path.cwd()
    inside = os.path.normpath(root / raw)
    if os.path.commonpath([inside, os.path.normpath(root)]) != os.path.normpath(root):
        raise DataError(f"data_path={raw!r} leaves the workspace {root} (through '..'); a "
                        "relative path is read from inside it. For a file elsewhere on Drive "
                        "write 'MyDrive/<folder>/<file>', or give an absolute path.")
    return str(root / raw)


def _upload_source(config: Any, workspace: Workspace | None) -> Source:
    return _local_source(str(find_upload(workspace, str(config.data_path))))


# --------------------------------------------------------------------------- the Hub


def hub_reachable(url: str | None = None, timeout: float | None = None) -> bool:
    """Does the Hub answer an HTTP HEAD within `timeout` seconds (any status counts)?

    The request runs in a daemon thread so that a slow DNS lookup, which no socket timeout
    covers, cannot stretch the wait either.
    """
    url = url or HUB_PROBE_URL
    timeout = HUB_PROBE_TIMEOUT_S if timeout is None else timeout
    return answers(url, timeout)


def _in_hf_cache(name: str) -> bool:
    hub_copy = Path(hub_constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}"
    built = Path(datasets.config.HF_DATASETS_CACHE) / name.replace("/", "___")
    return hub_copy.is_dir() or built.is_dir()


def _load_hub(name: str, subset: str, limit: int = 0) -> DatasetDict:
    loaded = _from_hub(name, subset, lambda: _stream_head(name, subset, limit) if limit > 0
                       else datasets.load_dataset(name, subset or None))
    if not isinstance(loaded, DatasetDict):
        raise DataError(f"load_dataset({name!r}) returned a {type(loaded).__name__}, not splits.")
    return loaded


def _from_hub(name: str, subset: str, load: Callable[[], Any]) -> Any:
    """`load()` after the Hub probe, with the library's errors turned into ones that say what
    to do."""
    offline = datasets.config.HF_HUB_OFFLINE
    if not offline and not hub_reachable():
        if not _in_hf_cache(name):
            raise DataError(f"Cannot reach the Hugging Face Hub ({HUB_PROBE_URL}) to download "
                            f"{name!r}. {OFFLINE_ALTERNATIVES}")
        print(f"The Hub ({HUB_PROBE_URL}) does not answer; trying the cached copy of {name!r} "
              "(the library retries for a while first; HF_HUB_OFFLINE=1 skips that).")
    try:
        return load()
    except ConnectionError as e:
        mode = " (HF_HUB_OFFLINE is set)" if offline else ""
        raise DataError(f"Cannot load {name!r} from the Hugging Face Hub{mode}: {e}. "
                        f"{OFFLINE_ALTERNATIVES}") from e
    except FileNotFoundError as e:
        raise DataError(f"Hugging Face dataset {name!r} was not found: {e}. Check dataset_name "
                        "on huggingface.co/datasets.") from e
    except ValueError as e:  # e.g. a missing or unknown config name; the message lists them
        raise DataError(f"Cannot load {name!r} with dataset_config={subset!r}: {e}") from e


def _stream_head(name: str, subset: str, limit: int) -> DatasetDict:
    """The first rows of each split, streamed: a quick run on a few thousand documents of a
    40 GB dataset must not download all of it first. A split that will be divided into train
    and validation later gets enough extra rows for both."""
    streamed = datasets.load_dataset(name, subset or None, streaming=True)
    has_validation = any(s in streamed for s in ("validation", "valid", "test"))
    splits = {}
    for split, rows in streamed.items():
        take = limit if has_validation or split != "train" else 2 * limit
        splits[split] = Dataset.from_list(list(rows.take(take)))
    print(f"Streamed the first {limit:,} rows of each split of {name!r} (max_samples).")
    return DatasetDict(splits)


# --------------------------------------------------------------------------- reading


def load_text_data(config: Any, workspace: Workspace | None = None) -> DatasetDict:
    """train and validation splits with one "text" column, from config.data_source."""
    return read_source(resolve_source(config, workspace), config)


def read_source(source: Source, config: Any) -> DatasetDict:
    # text_column only means something for tables; the form may still hold an old value.
    text_column = str(config.text_column or "")
    if source.kind == "synthetic":
        raw: Dataset | DatasetDict = synthetic_text_data(config)
        text_column = ""
    elif source.kind == "hub":
        raw = _load_hub(source.where, source.subset, int(config.max_samples or 0))
    elif source.kind == "disk":
        try:
            raw = datasets.load_from_disk(source.where)
        except (FileNotFoundError, ValueError) as e:
            raise DataError(f"Cannot read the saved dataset {source.where}: {e}") from e
    elif source.kind == "files":
        raw, plain_text = _load_files(source.files, source.where)
        if isinstance(raw, TextPieces):  # split by document already; text_column is moot
            return raw.splits(float(config.val_fraction), int(config.seed),
                              int(config.max_samples or 0))
        if plain_text:
            text_column = ""
    else:
        raise DataError(f"{source.where} holds tokens cached by an earlier run, not text: "
                        "load_token_data reads it (data_source='local', data_path=that folder).")
    return to_text_splits(raw, config, source.describe(), text_column)


def _load_files(files: tuple[Path, ...], where: str) -> tuple[Dataset | TextPieces, bool]:
    """The files as one dataset (or, for much plain text, its pieces), and whether they were
    plain text (one document per file)."""
    groups: dict[str, list[Path]] = {}
    for f in files:
        suffix = f.suffix.lower()
        if suffix in UNSUPPORTED:
            raise DataError(f"{f}: {suffix} files are not a supported format. Use text files "
                            "(.txt, .md, ...), .csv, .json/.jsonl or .parquet.")
        groups.setdefault(STRUCTURED.get(suffix, "text"), []).append(f)
    if len(groups) > 1:
        examples = "; ".join(f"{kind}: {paths[0].name}" for kind, paths in sorted(groups.items()))
        raise DataError(f"{where!r} holds files of different kinds ({examples}). Point data_path "
                        "at one kind, e.g. with a glob such as 'folder/**/*.txt'.")
    (kind, group), = groups.items()
    if kind == "text":
        if too_big_to_hold(group):
            return read_text_pieces(group, where), True
        return Dataset.from_dict({"text": read_text_files(group, where)}), True
    for f in group:
        if f.stat().st_size == 0:
            raise DataError(f"{f} is empty; give a {kind} file with data in it.")
        if kind != "parquet" and looks_binary(f):
            raise DataError(f"{f} looks like a binary file (it contains NUL bytes), not {kind} "
                            "text; check that it is the file you meant.")
    try:
        return datasets.load_dataset(kind, data_files=[str(f) for f in group], split="train"), False
    except datasets.exceptions.DatasetGenerationError as e:
        raise DataError(f"Cannot read {where!r} as {kind}: {e.__cause__ or e}. Check that the "
                        f"file is valid {kind}.") from e
    except pa.ArrowInvalid as e:
        raise DataError(f"Cannot read {where!r} as {kind}: {e}") from e
    except ValueError as e:  # `datasets` says 'Instruction "train" corresponds to no data!'
        if "no data" not in str(e):
            raise
        raise DataError(f"{where!r} holds no {kind} records (a header line alone?); give a "
                        f"{kind} file with at least one row of text in it.") from e


# Where a person sets text_column; every source that reads a table uses it.
TEXT_COLUMN_FIELD = ("text_column (in the notebook: the field under data_source in cell 2.1; it "
                     "applies to every source)")


def string_features(features: Mapping[str, Any]) -> list[str]:
    return [name for name, f in features.items()
            if isinstance(f, Value) and f.dtype in ("string", "large_string")]


def not_a_column(wanted: str, columns: list[str], where: str) -> DataError:
    return DataError(f"text_column={wanted!r} is not a column of {where}; its columns are "
                     f"{columns}. Set {TEXT_COLUMN_FIELD} to one of them.")


def pick_text_column(strings: list[str], columns: list[str], where: str) -> str:
    """"text", else the only string column; several or none is an error naming them."""
    if "text" in strings:
        return "text"
    if len(strings) == 1:
        return strings[0]
    if not strings:
        raise DataError(f"{where} has no text column (columns: {columns}); give a dataset with "
                        "a string column to train on.")
    raise DataError(f"{where} has several text columns {strings}; set {TEXT_COLUMN_FIELD} to the "
                    "one to train on.")


def _empty_columns(ds: Dataset) -> list[str]:
    """Columns with no value in any row: a CSV column left blank reads as all-null float64,
    which is not a missing column and not a column of the wrong kind, so it gets its own words."""
    empty = []
    for name in ds.column_names:
        column = ds.data.column(name)
        if len(column) == 0:
            continue
        is_string = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        if column.null_count == len(column) or (
                is_string and not pc.any(_has_text_mask(column)).as_py()):
            empty.append(name)
    return empty


def choose_text_column(ds: Dataset, wanted: str, where: str) -> str:
    """config.text_column when set; else "text"; else the only string column; else an error."""
    strings = string_features(ds.features)
    empty = _empty_columns(ds)
    if wanted:
        if wanted not in ds.column_names:
            raise not_a_column(wanted, ds.column_names, where)
        if wanted in empty:
            raise DataError(f"Column {wanted!r} of {where} is empty in every row; set "
                            f"{TEXT_COLUMN_FIELD} to a column with text "
                            f"(text columns: {[c for c in strings if c not in empty] or 'none'}).")
        if wanted not in strings:
            raise DataError(f"Column {wanted!r} of {where} holds {ds.features[wanted]}, not text; "
                            f"text columns: {strings or 'none'}.")
        return wanted
    usable = [c for c in strings if c not in empty]
    if not usable and empty:
        which = f"column {empty[0]!r}" if len(empty) == 1 else f"columns {empty}"
        raise DataError(f"{where} has no text to train on: every row of {which} is empty "
                        f"(columns: {ds.column_names}). Check that it is the file you meant, "
                        f"or set {TEXT_COLUMN_FIELD} to a column that holds text.")
    if len(usable) == 1 and usable[0] != "text" and "text" in ds.column_names:
        print(f"Column 'text' of {where} is empty in every row; using {usable[0]!r}, its only "
              "column with text.")
    return pick_text_column(usable, ds.column_names, where)


def _has_text(texts: list[str | None]) -> list[bool]:
    return [bool(t and not t.isspace()) for t in texts]


def _has_text_mask(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where a string column holds something other than nothing or whitespace. Chunk by
    chunk: trimming the whole column at once copies all of its text into RAM."""
    def mask(chunk: pa.Array) -> pa.Array:
        trimmed = pc.utf8_trim_whitespace(chunk)
        return pc.fill_null(pc.greater(pc.utf8_length(trimmed), 0), False)

    return pa.chunked_array([mask(chunk) for chunk in column.chunks], type=pa.bool_())


def _check_one_key(ds: Dataset, column: str, where: str, split: str) -> None:
    """Refuse rows that keep their text under another key than the chosen column.

    JSON lines written by different tools often mix `{"text": ...}` and `{"body": ...}`; read
    as a table, each row has text in one column and nothing in the other. Training on one column
    would quietly drop the other rows, so this names both keys and the fix instead.
    """
    chosen = _has_text_mask(ds.data.column(column))
    missing = len(ds) - pc.sum(chosen).as_py() if len(ds) else 0
    if not missing:
        return
    others = {}
    for name in string_features(ds.features):
        if name == column:
            continue
        other = _has_text_mask(ds.data.column(name))
        # The other column fills in exactly where the chosen one is blank, and never beside it.
        if not pc.any(pc.and_(chosen, other)).as_py() and pc.any(other).as_py():
            others[name] = pc.sum(other).as_py()
    if others:
        counts = ", ".join(f"{name!r} in {n:,} rows" for name, n in
                           [(column, len(ds) - missing), *others.items()])
        raise DataError(
            f"The {split!r} split of {where} keeps its text under different keys: {counts}. "
            f"Using only {column!r} would drop the other rows. Give every row the same key: "
            f"rename {next(iter(others))!r} to {column!r} in the file (or delete the rows you do "
            "not want), then run again."
        )


def _text_only(ds: Dataset, column: str, where: str, split: str) -> Dataset:
    if column not in ds.column_names:
        raise DataError(f"The {split!r} split of {where} has no column {column!r} (it has "
                        f"{ds.column_names}).")
    if column in _empty_columns(ds):
        raise DataError(f"The {split!r} split of {where} has no text: every row of column "
                        f"{column!r} is empty.")
    _check_one_key(ds, column, where, split)
    before = len(ds)
    ds = ds.select_columns([column])
    if column != "text":
        ds = ds.rename_column(column, "text")
    # In memory: only an index list is kept, and nothing is written next to the user's files.
    with progress_for(len(ds)):
        ds = ds.filter(_has_text, input_columns="text", batched=True, keep_in_memory=True,
                       desc=f"Dropping empty rows ({split})")
    if len(ds) == 0:
        raise DataError(f"The {split!r} split of {where} has no text: every row of column "
                        f"{column!r} is empty.")
    if len(ds) < before:
        print(f"Skipped {before - len(ds):,} of {before:,} rows of the {split!r} split of {where}: "
              f"their {column!r} is empty.")
    return ds


def to_text_splits(
    raw: Dataset | DatasetDict, config: Any, where: str, text_column: str = ""
) -> DatasetDict:
    """Any loaded data -> DatasetDict(train, validation) with exactly one "text" column."""
    splits = dict(raw) if isinstance(raw, DatasetDict) else {"train": raw}
    if "train" in splits:
        train_name = "train"
    elif len(splits) == 1:
        train_name = next(iter(splits))
    else:
        raise DataError(f"{where} has splits {list(splits)} and none is called 'train'.")
    val_name = next((n for n in VALIDATION_SPLITS if n in splits and n != train_name), None)
    column = choose_text_column(splits[train_name], text_column, where)
    train = _text_only(splits[train_name], column, where, train_name)
    if val_name is not None:
        if val_name != "validation":
            print(f"Using the {val_name!r} split of {where} for validation.")
        val = _text_only(splits[val_name], column, where, val_name)
    elif len(train) >= 2:
        parts = train.train_test_split(test_size=float(config.val_fraction), seed=int(config.seed))
        train, val = parts["train"], parts["test"]
    else:  # one document: the only honest split is its tail
        head, tail = split_document(train[0]["text"], float(config.val_fraction))
        train = Dataset.from_dict({"text": [head]})
        val = Dataset.from_dict({"text": [tail]})
    limit = int(config.max_samples or 0)
    if limit > 0:
        train = train.select(range(min(limit, len(train))))
        val = val.select(range(min(limit, len(val))))
    return DatasetDict(train=train, validation=val)
