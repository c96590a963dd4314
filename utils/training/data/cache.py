"""Tokenized data on disk, so the next run (or the run after a disconnect) skips tokenization.

One folder per key under `<workspace>/datasets/`: train.npy and validation.npy (one flat id
stream per split, EOS after each document), tokenizer.json (what `load_tokenizer` reads) and
meta.json (what made the key, token counts, known entropy, when). A folder is written under a
temp name and renamed when complete, so a folder with meta.json in it is always whole.

The key is a readable slug plus a hash of everything that changes the ids: the source (dataset
name and config, or the input files with their sizes and modification times), text_column,
the tokenizer (with vocab_size for BPE and synthetic data, or the tokenizer file's hash),
max_samples, val_fraction, seed and the synthetic settings. block_size is deliberately *not*
in it: packing into block_size + 1 windows happens in make_dataloaders and takes milliseconds,
so trying another context length must not re-tokenize.

"Cached local" data is such a folder named directly (data_source="local", data_path=folder),
or any source whose key is found here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, Features, Sequence, Value

from ..workspace import atomic_dir
from .errors import DataError
from .progress import progress_for
from .sources import CACHE_META, Source
from .tokenizer import Tokenizer, load_tokenizer

CACHE_FORMAT = 1  # bump when the folder layout or the tokenization rules change
SPLITS = ("train", "validation")
MAP_BATCH_ROWS = 1000


@dataclass
class CachedTokens:
    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer
    meta: dict[str, Any]
    path: Path


def stream_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (half the disk and memory of int32), else int32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


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
        "format": CACHE_FORMAT,
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


def encode_split(ds: Dataset, tokenizer: Tokenizer, desc: str) -> np.ndarray:
    """One flat id stream: each row's ids followed by EOS (when the tokenizer has one).

    A batched Dataset.map calling encode_batch: tokenizers' Rust side works on a whole batch
    at once, and datasets draws the progress bar.
    """
    eos = tokenizer.eos_id
    dtype = stream_dtype(tokenizer.vocab_size)

    def encode(texts: list[str]) -> dict[str, list[list[int]]]:
        ids = tokenizer.encode_batch(texts)
        if eos is not None:
            for row in ids:
                row.append(eos)
        return {"ids": ids}

    with progress_for(len(ds)):
        out = _map(ds, encode, dtype, desc)
    flat = pc.list_flatten(out.data.column("ids"))
    chunks = [c.to_numpy(zero_copy_only=False) for c in flat.chunks]
    return np.concatenate(chunks).astype(dtype, copy=False) if chunks else np.empty(0, dtype)


def _map(ds: Any, encode: Any, dtype: Any, desc: str) -> Any:
    return ds.map(
        encode,
        input_columns="text",
        batched=True,
        batch_size=MAP_BATCH_ROWS,
        remove_columns=ds.column_names,
        features=Features({"ids": Sequence(Value(str(dtype)))}),
        # Our cache replaces datasets' own: keep the result in memory, write nothing, and skip
        # hashing the tokenizer for a fingerprint nobody will look up.
        keep_in_memory=True,
        load_from_cache_file=False,
        new_fingerprint=uuid.uuid4().hex,
        desc=desc,
    )


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


def read_cache(folder: str | os.PathLike[str]) -> CachedTokens:
    folder = Path(folder)
    try:
        meta = json.loads((folder / CACHE_META).read_text(encoding="utf-8"))
        train = np.load(folder / "train.npy")
        val = np.load(folder / "validation.npy")
    except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise DataError(f"The token cache {folder} is damaged ({e}); delete the folder and run "
                        "again to re-tokenize.") from e
    if meta.get("format") != CACHE_FORMAT:
        raise DataError(f"The token cache {folder} has format {meta.get('format')!r}, this "
                        f"version reads {CACHE_FORMAT}; delete the folder to re-tokenize.")
    return CachedTokens(train, val, load_tokenizer(folder / "tokenizer.json"), meta, folder)


def write_cache(
    parent: Path, key: str, train: np.ndarray, val: np.ndarray, tokenizer: Tokenizer,
    meta: dict[str, Any],
) -> Path:
    """Write <parent>/<key>/ whole or not at all: files go to a temp folder that is renamed."""
    final = parent / key
    # A folder that another process (a second notebook) finished first holds the same ids.
    with atomic_dir(final) as tmp:
        np.save(tmp / "train.npy", train)
        np.save(tmp / "validation.npy", val)
        tokenizer.save(tmp / "tokenizer.json")
        meta = {**meta, "format": CACHE_FORMAT, "key": key, "train_tokens": int(train.size),
                "validation_tokens": int(val.size), "dtype": str(train.dtype),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / CACHE_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if not (final / CACHE_META).is_file():
        raise DataError(f"Cannot write the token cache: {final} exists and is not one. "
                        "Delete or rename that folder.")
    return final
