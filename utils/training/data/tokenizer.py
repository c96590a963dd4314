"""Tokenizers small enough to need no library, behind the protocol BPE will implement later.

The trainer only ever needs encode/decode for samples, vocab_size to size the model and a saved
form to put next to checkpoints, so that is the whole protocol.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .errors import DataError


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int | None  # None when the tokenizer has no end-of-document token

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...

    def save(self, path: str | os.PathLike[str]) -> Path: ...


def _write_json_atomic(path: str | os.PathLike[str], obj: dict[str, Any]) -> Path:
    # Written to a temp file and renamed so a disconnect never leaves half a tokenizer on Drive.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class ByteTokenizer:
    """UTF-8 bytes 0..255 plus EOS = 256: any text, no training, exact round trip."""

    vocab_size = 257
    eos_id: int | None = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        # EOS reads as a line break so document boundaries stay visible in samples; a model can
        # emit a byte sequence that is not valid UTF-8, hence errors="replace" rather than raise.
        raw = bytes(10 if int(i) == self.eos_id else int(i) for i in ids)
        return raw.decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "byte"}

    def save(self, path: str | os.PathLike[str]) -> Path:
        return _write_json_atomic(path, self.to_dict())

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=257)"


class IdentityTokenizer:
    """For synthetic data, where the ids already are the tokens.

    Text form is ids separated by spaces ("3 17 5"), so encode(decode(ids)) == ids. There is no
    end-of-document token (eos_id is None): synthetic streams have no documents.
    """

    eos_id: int | None = None

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < 1:
            raise DataError(f"IdentityTokenizer needs vocab_size >= 1, got {vocab_size}.")
        self.vocab_size = int(vocab_size)

    def encode(self, text: str) -> list[int]:
        try:
            ids = [int(tok) for tok in text.split()]
        except ValueError as e:
            raise DataError(
                f"IdentityTokenizer encodes space-separated integers, got {text[:40]!r}."
            ) from e
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise DataError(f"Token ids {bad[:5]} are outside 0..{self.vocab_size - 1}.")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(str(int(i)) for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "identity", "vocab_size": self.vocab_size}

    def save(self, path: str | os.PathLike[str]) -> Path:
        return _write_json_atomic(path, self.to_dict())

    def __repr__(self) -> str:
        return f"IdentityTokenizer(vocab_size={self.vocab_size})"


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    kind = d.get("type")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "identity":
        return IdentityTokenizer(int(d["vocab_size"]))
    raise DataError(
        f"Unknown tokenizer type {kind!r}; this version knows 'byte' and 'identity'. "
        "Was the file written by a newer version?"
    )


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Inverse of `tok.save(path)`."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"No tokenizer file at {path}; save one with tokenizer.save().") from e
    except json.JSONDecodeError as e:
        raise DataError(f"Tokenizer file {path} is not valid JSON ({e}); re-save it.") from e
    if not isinstance(d, dict):
        raise DataError(f"Tokenizer file {path} should hold a JSON object, got {type(d).__name__}.")
    return tokenizer_from_dict(d)
