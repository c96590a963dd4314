"""Tokenizers: exact round trips, vocab sizes, user tokenizer.json files, save/load of every kind."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer as CoreTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from utils.training.data import (
    ByteTokenizer,
    CharTokenizer,
    DataError,
    HFTokenizer,
    IdentityTokenizer,
    build_tokenizer,
    load_tokenizer,
    tokenizer_from_dict,
)
from utils.training.data import tokenizer as tokenizer_module
from utils.training.training_config import TrainingConfig

CORPUS = [
    "def add(a, b):\n    return a + b\n\n\nclass Point:\n    x: int = 0\n",
    "The quick brown fox jumps over the lazy dog.\nPack my box with five dozen liquor jugs.\n",
    "naïve café — déjà vu; 日本語のテキスト; Ελληνικά; emoji 🚀🔥\n",
    "\tindented with a tab\r\nwindows line end\r\n  two  spaces  \n\n\n",
] * 20

TRICKY = [
    "naïve café — 日本語 🚀",
    "  leading and trailing spaces  ",
    "\n\nnewlines\n\n\n",
    "\ttabs\tand\r\ncarriage returns\r\n",
    "never seen: ʕ•ᴥ•ʔ ∮ ⅋ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "a literal <|endoftext|> in the text",
    "",
]


def cfg(**kw) -> TrainingConfig:
    return TrainingConfig(**{"tokenizer": "bpe", "vocab_size": 400, **kw})


@pytest.fixture(scope="module")
def bpe() -> HFTokenizer:
    return build_tokenizer(cfg(), CORPUS)


def test_bpe_round_trips_text_exactly(bpe):
    for text in TRICKY + CORPUS[:4]:
        assert bpe.decode(bpe.encode(text)) == text
    # It learned merges: common text takes fewer tokens than bytes.
    assert len(bpe.encode(CORPUS[1])) < len(CORPUS[1].encode()) / 2


def test_bpe_respects_vocab_size_and_has_eos(bpe):
    assert 257 < bpe.vocab_size <= 400
    assert bpe.eos_token == "<|endoftext|>" and bpe.eos_id == bpe.core.token_to_id("<|endoftext|>")
    assert all(0 <= i < bpe.vocab_size for t in CORPUS[:4] for i in bpe.encode(t))
    big = build_tokenizer(cfg(vocab_size=600), CORPUS)
    assert bpe.vocab_size < big.vocab_size <= 600


def test_bpe_trains_from_batches_like_from_strings(bpe):
    batches = [CORPUS[i : i + 7] for i in range(0, len(CORPUS), 7)]
    again = build_tokenizer(cfg(), iter(batches))
    assert again.encode(CORPUS[0]) == bpe.encode(CORPUS[0])


def test_bpe_vocab_too_small_says_the_minimum():
    with pytest.raises(DataError, match="257"):
        build_tokenizer(cfg(vocab_size=100), CORPUS)


def test_encode_batch_matches_encode_and_long_texts_split_exactly(bpe, monkeypatch):
    texts = TRICKY + CORPUS[:4]
    assert bpe.encode_batch(texts) == [bpe.encode(t) for t in texts]
    long_text = "".join(CORPUS)
    whole = bpe.core.encode(long_text, add_special_tokens=False).ids
    assert bpe._chunked  # a plain byte-level BPE is encoded in pieces
    monkeypatch.setattr(tokenizer_module, "CHUNK_CHARS", 40)  # forces many pieces
    assert len(tokenizer_module._chunks(long_text, 40)) > 20
    assert bpe.encode(long_text) == whole
    assert bpe.decode(bpe.encode(long_text)) == long_text


def test_char_tokenizer_round_trips_seen_characters_only():
    tok = build_tokenizer(cfg(tokenizer="char"), ["hello world", ["abc", "xyz\n"]])
    assert isinstance(tok, CharTokenizer)
    assert tok.vocab_size == len(set("hello worldabcxyz\n")) + 2
    assert tok.decode(tok.encode("hello\nxyz")) == "hello\nxyz"
    ids = tok.encode("hello Q")  # Q was never seen
    assert ids[-1] == tok.unk_id and tok.decode(ids) == "hello \ufffd"
    assert tok.decode([tok.eos_id]) == "\n"
    assert tok.encode_batch(["ab", "c"]) == [tok.encode("ab"), tok.encode("c")]
    with pytest.raises(DataError, match="no characters"):
        build_tokenizer(cfg(tokenizer="char"), ["", ""])


def test_identity_tokenizer_encodes_space_separated_ids():
    tok = IdentityTokenizer(10)
    assert tok.encode_batch(["1 2 3", "9\n0"]) == [[1, 2, 3], [9, 0]]
    with pytest.raises(DataError, match="outside"):
        tok.encode("3 10")
    with pytest.raises(DataError, match="integers"):
        tok.encode("three")


def make_tokenizer_json(path, specials=("</s>",)) -> None:
    """A small BPE tokenizer.json written with the tokenizers library, as a user might."""
    core = CoreTokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    core.train_from_iterator(CORPUS, trainer=trainer)
    core.save(str(path))


def test_tokenizer_json_path_finds_its_eos(tmp_path):
    path = tmp_path / "tokenizer.json"
    make_tokenizer_json(path, specials=("<pad>", "</s>"))
    tok = build_tokenizer(cfg(tokenizer=str(path)), iter(()))
    assert isinstance(tok, HFTokenizer) and tok.eos_token == "</s>"
    assert tok.eos_id == 1 and tok.vocab_size <= 300
    assert tok.decode(tok.encode(TRICKY[0])) == TRICKY[0]
    assert isinstance(load_tokenizer(path), HFTokenizer)  # a raw tokenizer.json loads too


def test_tokenizer_json_eos_from_tokenizer_config(tmp_path):
    path = tmp_path / "tokenizer.json"
    make_tokenizer_json(path, specials=("<|custom_end|>", "</s>"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": {"content": "<|custom_end|>"}}))
    assert build_tokenizer(cfg(tokenizer=str(path)), []).eos_token == "<|custom_end|>"


def test_tokenizer_json_errors_name_the_problem(tmp_path):
    path = tmp_path / "tokenizer.json"
    make_tokenizer_json(path, specials=("<pad>",))
    with pytest.raises(DataError, match="no end-of-document token"):
        build_tokenizer(cfg(tokenizer=str(path)), [])
    with pytest.raises(DataError, match="No tokenizer file"):
        build_tokenizer(cfg(tokenizer=str(tmp_path / "missing.json")), [])
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a tokenizer"}')
    with pytest.raises(DataError, match="not a Hugging Face tokenizer.json"):
        build_tokenizer(cfg(tokenizer=str(bad)), [])
    with pytest.raises(DataError, match="'bpe', 'char', 'byte'"):
        build_tokenizer(cfg(tokenizer="wordpiece"), [])


@pytest.mark.parametrize("kind", ["byte", "char", "identity", "bpe", "file"])
def test_save_load_round_trip_for_every_kind(kind, bpe, tmp_path):
    if kind == "byte":
        tok = ByteTokenizer()
    elif kind == "char":
        tok = CharTokenizer.train(CORPUS)
    elif kind == "identity":
        tok = IdentityTokenizer(50)
    elif kind == "bpe":
        tok = bpe
    else:
        make_tokenizer_json(tmp_path / "user.json")
        tok = HFTokenizer.from_file(tmp_path / "user.json")
    text = "3 17 42" if kind == "identity" else CORPUS[2]
    for again in (load_tokenizer(tok.save(tmp_path / "saved.json")), tokenizer_from_dict(tok.to_dict())):
        assert type(again) is type(tok)
        assert (again.vocab_size, again.eos_id) == (tok.vocab_size, tok.eos_id)
        assert again.encode(text) == tok.encode(text)
        assert again.decode(tok.encode(text)) == tok.decode(tok.encode(text))
    # Checkpoints store to_dict(): it must be plain JSON.
    assert json.loads(json.dumps(tok.to_dict())) == tok.to_dict()


def test_unknown_saved_type_is_a_clear_error(tmp_path):
    path = tmp_path / "tok.json"
    path.write_text('{"type": "sentencepiece-v9"}')
    with pytest.raises(DataError, match="newer version"):
        load_tokenizer(path)
