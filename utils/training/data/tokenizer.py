"""Tokenizers behind one small protocol: byte, char, identity (synthetic), and Hugging Face ones.

The trainer only ever needs encode/decode for samples, vocab_size to size the model, eos_id to
mark document ends and a saved form to put next to checkpoints, so that is the whole protocol
(plus encode_batch, the fast path the tokenization `map` calls). A trained byte-level BPE and a
user's `tokenizer.json` (GPT-2's, say) are the same class, `HFTokenizer`: both are a
`tokenizers.Tokenizer` plus the name of its end-of-document token.

Whatever the kind, the file a tokenizer saves is a plain Hugging Face `tokenizer.json`, so what a
run leaves behind loads with `tokenizers` or `transformers` alone and can be given back as
`tokenizer=<path>` to the next run. Byte, char and identity tokenizers are written as the
Hugging Face tokenizer that gives exactly their ids, and recognised again by their contents when
loaded (no extra metadata), so they come back as themselves with the same ids and decoding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as _HFTokenizerCore

from ..workspace import atomic_write
from .errors import DataError

EOS_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<unk>"  # the char tokenizer's id 1, by name in its tokenizer.json
# End-of-document names used by common tokenizer.json files (GPT-2, T5/Llama, others), in the
# order they are tried when a user's file does not say which one it uses.
EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<eos>", "<|eos|>", "<|end_of_text|>", "[EOS]", "<|im_end|>")
# Long documents are cut into pieces of about this many characters before encode_batch, so a
# single big file is encoded on every core instead of one (5 MB: 1.1 s instead of 4.8 s).
CHUNK_CHARS = 1 << 16


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int | None  # None when the tokenizer has no end-of-document token

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...

    def to_hf(self) -> _HFTokenizerCore: ...

    def save(self, path: str | os.PathLike[str]) -> Path: ...


def _write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    # Temp file + rename: a disconnect never leaves half a tokenizer on Drive.
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _eos_name(tok: Tokenizer) -> str | None:
    if tok.eos_id is None:
        return None
    return getattr(tok, "eos_token", EOS_TOKEN)


def hf_tokenizer_config(tok: Tokenizer, model_max_length: int | None = None) -> dict[str, Any]:
    """tokenizer_config.json for `tok`: what `transformers.AutoTokenizer` needs beyond the file.

    The generic fast-tokenizer class (never GPT2Tokenizer, which would rebuild a BPE from the
    vocabulary), no token_type_ids (GPT-2 would add them to the embeddings) and no clean-up of
    spaces, so that decoding gives back exactly the text.
    """
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast",
                              "model_input_names": ["input_ids", "attention_mask"],
                              "clean_up_tokenization_spaces": False}
    eos = _eos_name(tok)
    if eos is not None:
        config.update(eos_token=eos, bos_token=eos)
    if isinstance(tok, CharTokenizer):
        config["unk_token"] = UNK_TOKEN
    if model_max_length is not None:
        config["model_max_length"] = int(model_max_length)
    return config


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike[str],
                   model_max_length: int | None = None) -> Path:
    """`tok` as a Hugging Face tokenizer.json at `path`.

    Beside a file named tokenizer.json goes its tokenizer_config.json: the folder then loads with
    `AutoTokenizer.from_pretrained`, and a user tokenizer's end-of-document token (which the
    tokenizer.json does not name) survives being loaded again.
    """
    path = Path(path)
    saved = _write_text_atomic(path, tok.to_hf().to_str(pretty=True))
    if path.name == "tokenizer.json":
        config = hf_tokenizer_config(tok, model_max_length)
        _write_text_atomic(path.with_name("tokenizer_config.json"),
                           json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return saved


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte 0..255, as byte-level tokenizer.json files use.

    Printable Latin-1 bytes stand for themselves; the others are shifted to code points 256+.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]


class _Base:
    """What the tokenizers here share: one text at a time by default, saved as tokenizer.json."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def save(self, path: str | os.PathLike[str]) -> Path:
        return save_tokenizer(self, path)


class ByteTokenizer(_Base):
    """UTF-8 bytes 0..255 plus EOS = 256: any text, no training, exact round trip."""

    vocab_size = 257
    eos_id: int | None = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        # EOS reads as a line break so document boundaries stay visible in samples; a model can
        # emit a byte sequence that is not valid UTF-8, hence errors="replace" rather than raise.
        raw = bytes(10 if int(i) == self.eos_id else int(i) for i in ids)
        return raw.decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "byte"}

    def to_hf(self) -> _HFTokenizerCore:
        """A merge-free byte-level BPE: id b for byte b, EOS 256 (decoded as a line break)."""
        symbols = _byte_symbols()
        vocab = {sym: b for b, sym in enumerate(symbols)}
        vocab[EOS_TOKEN] = 256
        core = _HFTokenizerCore(models.BPE(vocab, []))
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        core.decoder = decoders.Sequence([decoders.Replace(EOS_TOKEN, symbols[10]),
                                          decoders.ByteLevel()])
        return core

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=257)"


class CharTokenizer(_Base):
    """One id per character seen in the training text, plus EOS (id 0) and UNK (id 1).

    For tiny experiments: the vocabulary is small and readable. Characters that were not in the
    training text encode to UNK and decode to U+FFFD, so such text does not round-trip; use
    "byte" or "bpe" when that matters.
    """

    eos_id: int | None = 0
    unk_id = 1

    def __init__(self, chars: str) -> None:
        self.chars = "".join(sorted(set(chars)))
        self._ids = {c: i + 2 for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars) + 2

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        if not seen:
            raise DataError("The char tokenizer found no characters in the training text.")
        return cls("".join(seen))

    def encode(self, text: str) -> list[int]:
        get, unk = self._ids.get, self.unk_id
        return [get(c, unk) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        # EOS reads as a line break, like ByteTokenizer; UNK and out-of-range ids as U+FFFD.
        out = []
        for i in ids:
            i = int(i)
            out.append("\n" if i == self.eos_id else
                       self.chars[i - 2] if 2 <= i < self.vocab_size else "\ufffd")
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "char", "chars": self.chars}

    def to_hf(self) -> _HFTokenizerCore:
        """A word-level model over single characters, with the same ids and the same decoding.

        EOS and UNK are ordinary vocabulary entries, not added tokens: a literal
        "<|endoftext|>" in the text is its characters here, exactly as `encode` makes it.
        """
        vocab = {EOS_TOKEN: self.eos_id, UNK_TOKEN: self.unk_id, **self._ids}
        core = _HFTokenizerCore(models.WordLevel(vocab, unk_token=UNK_TOKEN))
        core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        core.decoder = decoders.Sequence([decoders.Replace(UNK_TOKEN, "\ufffd"),
                                          decoders.Replace(EOS_TOKEN, "\n"), decoders.Fuse()])
        return core

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class IdentityTokenizer(_Base):
    """For synthetic data, where the ids already are the tokens.

    Text form is ids separated by spaces ("3 17 5"), so encode(decode(ids)) == ids; that is how
    the synthetic source offers its streams as a text dataset like every other source. There is
    no end-of-document token (eos_id is None): synthetic streams have no documents.
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

    def to_hf(self) -> _HFTokenizerCore:
        """A word-level model over the words "0".."vocab_size-1"; decoding joins with spaces."""
        vocab = {str(i): i for i in range(self.vocab_size)}
        core = _HFTokenizerCore(models.WordLevel(vocab, unk_token=UNK_TOKEN))
        core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return core

    def __repr__(self) -> str:
        return f"IdentityTokenizer(vocab_size={self.vocab_size})"


def _chunks(text: str, size: int) -> list[str]:
    """Cut at line breaks that have a non-space character on both sides.

    Byte-level pre-tokenization (the GPT-2 regex) never joins such a "\\n" with its neighbours,
    so encoding the pieces gives exactly the ids of encoding the whole text.
    """
    pieces, start = [], 0
    while len(text) - start > size:
        cut = text.find("\n", start + size)
        while cut != -1 and not (
            cut + 1 < len(text) and not text[cut - 1].isspace() and not text[cut + 1].isspace()
        ):
            cut = text.find("\n", cut + 1)
        if cut == -1:
            break
        pieces.append(text[start : cut + 1])
        start = cut + 1
    pieces.append(text[start:])
    return pieces


def _chunk_safe(core: _HFTokenizerCore) -> bool:
    """True when `_chunks` provably does not change the ids: a plain byte-level pre-tokenizer."""
    pre = json.loads(core.to_str()).get("pre_tokenizer") or {}
    return (
        pre.get("type") == "ByteLevel"
        and not pre.get("add_prefix_space", True)
        and pre.get("use_regex", True)
    )


class HFTokenizer(_Base):
    """A Hugging Face `tokenizers` tokenizer (a trained byte-level BPE or a tokenizer.json file).

    Special tokens are never added by encode (a file's post-processor might add [CLS]/[SEP]);
    the data pipeline appends eos_id after each document itself.
    """

    def __init__(self, core: _HFTokenizerCore, eos_token: str) -> None:
        eos_id = core.token_to_id(eos_token)
        if eos_id is None:
            raise DataError(f"The tokenizer has no token {eos_token!r} to end documents with.")
        self.core, self.eos_token, self.eos_id = core, eos_token, int(eos_id)
        self.vocab_size = int(core.get_vocab_size(with_added_tokens=True))
        self._chunked = _chunk_safe(core)

    @classmethod
    def train_bpe(cls, texts: Iterable[str | list[str]], vocab_size: int) -> HFTokenizer:
        """Byte-level BPE: every string is encodable and decode(encode(s)) == s exactly.

        add_prefix_space=False keeps the round trip exact (no invented leading space) and makes
        long documents safe to encode in pieces.
        """
        if vocab_size < 257:
            raise DataError(
                f"vocab_size={vocab_size} is too small for a byte-level BPE: it needs 256 byte "
                "symbols + EOS = 257 at least (a few thousand is typical)."
            )
        core = _HFTokenizerCore(models.BPE())
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        core.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        core.train_from_iterator(texts, trainer=trainer)
        return cls(core, EOS_TOKEN)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> HFTokenizer:
        """A tokenizer.json; its EOS comes from tokenizer_config.json beside it or a common name."""
        path = Path(path).expanduser()
        return cls._from_spec(path, *_read_tokenizer_file(path))

    @classmethod
    def _from_spec(cls, path: Path, text: str, spec: dict[str, Any]) -> HFTokenizer:
        if "model" not in spec:
            raise DataError(f"{path} is not a Hugging Face tokenizer.json file: it has no "
                            f"\"model\" entry. {_FILE_FIX}")
        try:
            core = _HFTokenizerCore.from_str(text)
        except Exception as e:  # the Rust side raises a bare Exception for any parse problem
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(
                f"{path} is not a Hugging Face tokenizer.json file that this version of the "
                f"tokenizers library can read (it says: {detail}). {_FILE_FIX}") from e
        return cls(core, _find_eos(core, path))

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not self._chunked:
            return [e.ids for e in self._encode_many(list(texts))]
        pieces, owner = [], []
        for i, text in enumerate(texts):
            for piece in _chunks(text, CHUNK_CHARS):
                pieces.append(piece)
                owner.append(i)
        out: list[list[int]] = [[] for _ in texts]
        for i, enc in zip(owner, self._encode_many(pieces)):
            out[i].extend(enc.ids)
        return out

    def _encode_many(self, texts: list[str]) -> list[Any]:
        # encode_batch_fast (tokenizers >= 0.20) skips the character offsets we never use.
        fast = getattr(self.core, "encode_batch_fast", None) or self.core.encode_batch
        return fast(texts, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        # Special tokens stay in the text, so a literal "<|endoftext|>" in the input round-trips.
        return self.core.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_dict(self) -> dict[str, Any]:
        # The whole tokenizer as one JSON string: it goes into every checkpoint, and one string
        # pickles and loads far faster than a nested dict of tens of thousands of entries.
        return {"type": "hf", "eos_token": self.eos_token, "json": self.core.to_str()}

    def to_hf(self) -> _HFTokenizerCore:
        return self.core

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, eos={self.eos_token!r})"


def _find_eos(core: _HFTokenizerCore, path: Path) -> str:
    names: list[str] = []
    config_file = path.with_name("tokenizer_config.json")
    if config_file.is_file():
        try:
            eos = json.loads(config_file.read_text(encoding="utf-8")).get("eos_token")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise DataError(f"{config_file} is not a valid tokenizer_config.json: {e}") from e
        eos = eos.get("content") if isinstance(eos, dict) else eos
        if isinstance(eos, str):
            names.append(eos)
    names += EOS_CANDIDATES
    for name in names:
        if core.token_to_id(name) is not None:
            return name
    raise DataError(
        f"{path} has no end-of-document token (looked for {', '.join(EOS_CANDIDATES)}). Documents "
        "must be separated: add one, e.g. tok.add_special_tokens(['<|endoftext|>']) and "
        "tok.save(path) with the tokenizers library, then point tokenizer at the new file."
    )


def build_tokenizer(config: Any, texts: Iterable[str | list[str]]) -> Tokenizer:
    """The tokenizer config.tokenizer names, trained on `texts` where it needs training.

    `texts` may yield strings or lists of strings (batches); it is read once, and not at all
    for "byte" or a tokenizer.json file. A file is read by `load_tokenizer`, so the tokenizer.json
    an earlier run saved next to its checkpoints gives back exactly that run's tokenizer.
    """
    kind = str(config.tokenizer).strip()
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer.train(_flatten(texts))
    if kind == "bpe":
        vocab = int(config.vocab_size)
        print(f"Training a byte-level BPE tokenizer (vocab {vocab:,}) on the training split...")
        return HFTokenizer.train_bpe(texts, vocab)
    if kind.lower().endswith(".json"):
        return load_tokenizer(kind)
    raise DataError(
        f"tokenizer={kind!r} is not known: use 'bpe', 'char', 'byte' or the path of a "
        "tokenizer.json file."
    )


def _flatten(texts: Iterable[str | list[str]]) -> Iterable[str]:
    for t in texts:
        if isinstance(t, str):
            yield t
        else:
            yield from t


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Inverse of `tok.to_dict()` (what checkpoints store, and what older versions saved as a
    tokenizer.json)."""
    kind = d.get("type")
    try:
        if kind == "byte":
            return ByteTokenizer()
        if kind == "identity":
            return IdentityTokenizer(int(d["vocab_size"]))
        if kind == "char":
            return CharTokenizer(str(d["chars"]))
        if kind == "hf":
            text = str(d["json"])
            try:
                core = _HFTokenizerCore.from_str(text)
            except Exception as e:  # the Rust side raises a bare Exception for any parse problem
                raise DataError(f"The saved Hugging Face tokenizer cannot be read: {e}") from e
            return HFTokenizer(core, str(d["eos_token"]))
    except DataError:
        raise
    except (KeyError, TypeError, ValueError) as e:  # a key missing or of the wrong kind
        what = f"its {e.args[0]!r} entry is missing" if isinstance(e, KeyError) else str(e)
        raise DataError(f"The saved {kind!r} tokenizer is incomplete or damaged ({what}).") from e
    raise DataError(
        f"Unknown tokenizer type {kind!r}; this version knows 'byte', 'char', 'identity' and "
        "'hf'. Was the file written by a newer version?"
    )


_FILE_FIX = ("Point tokenizer at a Hugging Face tokenizer.json (a model's, or the "
             "checkpoints/<run>/tokenizer.json an earlier run saved), or use tokenizer='bpe', "
             "'char' or 'byte'.")


def _read_tokenizer_file(path: Path) -> tuple[str, dict[str, Any]]:
    """The file's text and its JSON object, or a DataError that names the file and the fix."""
    if not path.is_file():
        raise DataError(f"No tokenizer file at {path}. {_FILE_FIX}")
    try:
        text = path.read_text(encoding="utf-8")
        spec = json.loads(text)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not a Hugging Face tokenizer.json file: it is not UTF-8 "
                        f"text, so it is damaged or something else. {_FILE_FIX}") from e
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path} is not a Hugging Face tokenizer.json file: it is not valid JSON (line "
            f"{e.lineno}, column {e.colno}), so it was cut off or is something else. "
            f"{_FILE_FIX}") from e
    if not isinstance(spec, dict):
        raise DataError(f"{path} is not a Hugging Face tokenizer.json file: it holds a JSON "
                        f"{type(spec).__name__}, not an object. {_FILE_FIX}")
    return text, spec


def _recognise(spec: dict[str, Any]) -> Tokenizer | None:
    """The byte, char or identity tokenizer whose `to_hf()` this file is, else None.

    Judged by what decides the ids (model, vocabulary, pre-tokenizer), not the exact JSON, so a
    file re-saved by another tokenizers version is still recognised.
    """
    model, pre_tokenizer = spec.get("model"), spec.get("pre_tokenizer")
    if not isinstance(model, dict):  # not one of ours; the tokenizers library judges the rest
        return None
    vocab = model.get("vocab")
    pre = pre_tokenizer.get("type") if isinstance(pre_tokenizer, dict) else None
    if not isinstance(vocab, dict) or spec.get("added_tokens"):
        return None
    if model.get("type") == "BPE" and pre == "ByteLevel" and not model.get("merges"):
        byte_vocab = {sym: b for b, sym in enumerate(_byte_symbols())}
        byte_vocab[EOS_TOKEN] = ByteTokenizer.vocab_size - 1
        return ByteTokenizer() if vocab == byte_vocab else None
    if model.get("type") != "WordLevel":
        return None
    if pre == "WhitespaceSplit" and vocab == {str(i): i for i in range(len(vocab))} and vocab:
        return IdentityTokenizer(len(vocab))
    if pre == "Split" and model.get("unk_token") == UNK_TOKEN and \
            vocab.get(EOS_TOKEN) == CharTokenizer.eos_id and vocab.get(UNK_TOKEN) == 1:
        rest = sorted((i, c) for c, i in vocab.items() if c not in (EOS_TOKEN, UNK_TOKEN))
        chars = "".join(c for _, c in rest)
        if [i for i, _ in rest] == list(range(2, len(rest) + 2)) and len(chars) == len(rest) \
                and rest and chars == "".join(sorted(set(chars))):
            return CharTokenizer(chars)
    return None


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Inverse of `tok.save(path)`, for any tokenizer file: one this library saved (a plain
    Hugging Face tokenizer.json, or the {"type": ...} form older versions wrote) or a user's."""
    path = Path(path).expanduser()
    text, spec = _read_tokenizer_file(path)
    if "type" in spec and "model" not in spec:  # written by an older version of this library
        try:
            return tokenizer_from_dict(spec)
        except DataError as e:
            raise DataError(f"{path} cannot be loaded: {e} {_FILE_FIX}") from e
    return _recognise(spec) or HFTokenizer._from_spec(path, text, spec)
