"""Local text files as training data: a file, a folder or a glob, byte-tokenized.

The no-network source: anything on the machine (your notes, a repo, Python's own standard
library) becomes a corpus, with errors that name the file and say what to do.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DataError
from .loaders import TokenData
from .tokenizer import ByteTokenizer

TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst")


def _find_files(path_or_glob: str) -> list[Path]:
    path = Path(os.path.expanduser(path_or_glob))
    if path.is_file():
        return [path]
    if path.is_dir():
        # Hidden folders (.git, .venv, .ipynb_checkpoints) are tooling, not corpus.
        return sorted(
            p
            for p in path.rglob("*")
            if p.suffix.lower() in TEXT_SUFFIXES
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    # A glob picks any extension: whoever writes one chose the files on purpose.
    return sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    # NUL bytes never occur in text but are everywhere in binaries (some decode as "valid"
    # UTF-8), so check them first for a better message.
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


def read_local_texts(path_or_glob: str, max_samples: int = 0) -> list[str]:
    """Documents (one per file) in sorted path order, so runs see the same data every time.

    A folder is searched recursively for .txt/.md/.py/.rst files; files that are empty or only
    whitespace are skipped. max_samples > 0 keeps the first that many documents.
    """
    if not str(path_or_glob).strip():
        # Path("") is the current folder: refuse rather than silently train on whatever is there.
        raise DataError("data_path is empty; set it to a text file, a folder or a glob.")
    files = _find_files(str(path_or_glob))
    texts: list[str] = []
    for f in files:
        text = _read_text(f)
        if text.strip():
            texts.append(text)
            if 0 < max_samples <= len(texts):
                break
    if not texts:
        what = "files" if not files else f"{len(files)} file(s), all empty"
        raise DataError(
            f"No text found at {path_or_glob!r} (found {what}). data_path may be a file, a "
            f"folder (searched recursively for {', '.join(TEXT_SUFFIXES)}) or a glob such as "
            "'notes/**/*.txt'; check the path exists and holds non-empty UTF-8 text."
        )
    return texts


def local_token_data(config: Any) -> TokenData:
    """Byte-tokenized documents with EOS after each, split into train/val by whole documents.

    Splitting by document (seeded shuffle) keeps val text unseen in training; with a single
    document the only honest split is its tail, so val is the last val_fraction of its tokens.
    """
    kind = str(getattr(config, "tokenizer", "byte"))
    if kind != "byte":
        raise DataError(
            f"tokenizer={kind!r} is not available for local files yet (BPE arrives with the "
            "tokenizer issue); use tokenizer='byte'."
        )
    tok = ByteTokenizer()
    texts = read_local_texts(str(config.data_path), int(getattr(config, "max_samples", 0) or 0))
    val_fraction = float(config.val_fraction)
    eos = np.array([tok.eos_id], dtype=np.int64)

    def encode_docs(docs: list[str]) -> torch.Tensor:
        # np.frombuffer over the UTF-8 bytes is ByteTokenizer.encode without a Python list per
        # byte: ~100x faster on a few MB of text.
        parts = []
        for d in docs:
            parts += [np.frombuffer(d.encode("utf-8"), dtype=np.uint8).astype(np.int64), eos]
        return torch.from_numpy(np.concatenate(parts))

    if len(texts) == 1:
        ids = encode_docs(texts)
        n_val = min(max(1, int(round(len(ids) * val_fraction))), len(ids) - 1)
        train_ids, val_ids = ids[:-n_val].clone(), ids[-n_val:].clone()
    else:
        order = np.random.default_rng(int(config.seed)).permutation(len(texts))
        n_val = min(max(1, int(round(len(texts) * val_fraction))), len(texts) - 1)
        val_set = set(order[:n_val].tolist())
        # Both splits keep the sorted file order: easier to inspect, same result either way.
        train_ids = encode_docs([t for i, t in enumerate(texts) if i not in val_set])
        val_ids = encode_docs([t for i, t in enumerate(texts) if i in val_set])
    return TokenData(
        train_ids=train_ids,
        val_ids=val_ids,
        tokenizer=tok,
        known_entropy=None,
        source=f"{len(texts)} local document(s) from {config.data_path}",
    )
