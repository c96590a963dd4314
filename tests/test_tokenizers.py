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


# --- what the files are: plain Hugging Face tokenizer.json, whatever the kind ------------------


def every_kind(kind, bpe, tmp_path):
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer.train(CORPUS)
    if kind == "identity":
        return IdentityTokenizer(50)
    if kind == "bpe":
        return bpe
    make_tokenizer_json(tmp_path / "user.json")
    return HFTokenizer.from_file(tmp_path / "user.json")


@pytest.mark.parametrize("kind", ["byte", "char", "identity", "bpe", "file"])
def test_saved_file_is_a_plain_hugging_face_tokenizer_with_our_ids(kind, bpe, tmp_path):
    tok = every_kind(kind, bpe, tmp_path)
    path = tok.save(tmp_path / "run" / "tokenizer.json")
    assert "type" not in json.loads(path.read_text())  # no wrapper around it
    core = CoreTokenizer.from_file(str(path))
    texts = ["3 17 42", "0 49"] if kind == "identity" else TRICKY[:-1] + CORPUS[:4]
    for text in texts:
        ids = tok.encode(text)
        assert core.encode(text, add_special_tokens=False).ids == ids, text
        if kind != "char" or text in CORPUS:  # char: unseen characters decode to U+FFFD
            assert core.decode(ids, skip_special_tokens=False) == tok.decode(ids) == text
    assert core.get_vocab_size() == tok.vocab_size
    # Beside it, tokenizer_config.json names the end-of-document token for the next reader.
    config = json.loads(path.with_name("tokenizer_config.json").read_text())
    assert config.get("eos_token") == (None if kind == "identity" else tok.eos_token
                                       if isinstance(tok, HFTokenizer) else "<|endoftext|>")


def test_char_and_byte_files_decode_like_ours_outside_the_text_too(tmp_path):
    char = CharTokenizer.train(["abc\n"])
    core = CoreTokenizer.from_file(str(char.save(tmp_path / "c.json")))
    ids = [char.eos_id, *char.encode("abQ"), char.eos_id]
    assert core.decode(ids, skip_special_tokens=False) == char.decode(ids) == "\nab\ufffd\n"
    byte = ByteTokenizer()
    core = CoreTokenizer.from_file(str(byte.save(tmp_path / "b.json")))
    ids = [104, 256, 0xE6, 0x97, 105]  # EOS, then a cut UTF-8 sequence
    assert core.decode(ids, skip_special_tokens=False) == byte.decode(ids) == "h\n\ufffdi"
    # A literal "<|endoftext|>" in the text is its bytes / characters, as our encode makes it.
    text = "x<|endoftext|>y"
    assert core.encode(text, add_special_tokens=False).ids == byte.encode(text)


def test_a_file_that_only_looks_like_ours_stays_a_hugging_face_tokenizer(tmp_path):
    chars = CharTokenizer.train(["abc"]).to_hf()
    chars.add_special_tokens(["<|endoftext|>"])  # an added token: its ids may differ from ours
    chars.save(str(tmp_path / "tokenizer.json"))
    assert isinstance(load_tokenizer(tmp_path / "tokenizer.json"), HFTokenizer)


@pytest.mark.parametrize("kind", ["byte", "char", "identity", "bpe"])
def test_old_wrapper_files_still_load(kind, bpe, tmp_path):
    """Checkpoint folders and token caches written before the plain format hold {"type": ...}."""
    tok = every_kind(kind, bpe, tmp_path)
    old = tmp_path / "tokenizer.json"
    old.write_text(json.dumps(tok.to_dict()))
    text = "3 17 42" if kind == "identity" else CORPUS[2]
    for again in (load_tokenizer(old), build_tokenizer(cfg(tokenizer=str(old)), [])):
        assert type(again) is type(tok) and again.encode(text) == tok.encode(text)
        assert (again.vocab_size, again.eos_id) == (tok.vocab_size, tok.eos_id)


@pytest.mark.parametrize("kind", ["bpe", "char", "byte"])
def test_a_runs_tokenizer_is_reused_by_the_next_run(kind, workspace, tmp_path):
    """Run 2 gives tokenizer=<run 1's checkpoints/<run>/tokenizer.json> and gets its ids."""
    from utils.training.run import prepare

    data = tmp_path / "texts"
    data.mkdir()
    for i, text in enumerate(CORPUS[:8]):
        (data / f"{i}.txt").write_text(text)
    base = dict(data_source="local", data_path=str(data), val_fraction=0.25, vocab_size=300,
                block_size=8, batch_size=2, n_layers=1, n_heads=2, d_model=16, seed=1)
    first = prepare(TrainingConfig(run_name="first", tokenizer=kind, **base), workspace)
    saved = workspace.run_dir("first") / "tokenizer.json"
    second = prepare(TrainingConfig(run_name="second", tokenizer=str(saved), **base), workspace)
    assert not second.data.from_cache  # tokenized again, by the file
    assert type(second.data.tokenizer) is type(first.data.tokenizer)
    assert second.data.train_ids.tolist() == first.data.train_ids.tolist()
    assert second.data.val_ids.tolist() == first.data.val_ids.tolist()


@pytest.mark.parametrize("content", ['{"version": "1.0", "model": {"type": "BPE", "vocab": ',
                                     "\xff\xfe binary", '["a", "list"]', ""])
def test_a_garbled_tokenizer_file_names_the_file_and_the_fix(content, tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(content, encoding="latin-1")
    for load in (lambda: load_tokenizer(path),
                 lambda: build_tokenizer(cfg(tokenizer=str(path)), [])):
        with pytest.raises(DataError) as info:
            load()
        message = str(info.value)
        assert str(path) in message and "not a Hugging Face tokenizer.json file" in message
        assert "Point tokenizer at a Hugging Face tokenizer.json" in message
        assert "Expecting" not in message and "char " not in message  # no bare JSON parse error
