"""Tokens on disk: the memmap path gives exactly what the old in-RAM path gave.

The in-RAM path (int64 ids, a contiguous copy of every block, the whole sample drawn at once,
the tokenized rows concatenated in memory) lives on here as a reference implementation, so the
comparison keeps running after the library dropped it.
"""

from __future__ import annotations

import json
import math
import uuid
from array import array
from bisect import bisect_right
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from datasets import Dataset, Features, Sequence, Value
from torch.utils.data import DataLoader

from utils.training import metric_names as M
from utils.training import run as run_module
from utils.training.data import (
    ByteTokenizer,
    DataError,
    IdentityTokenizer,
    MarkovChain,
    ResumableBatchSampler,
    TokenData,
    build_tokenizer,
    load_text_data,
    load_token_data,
    make_dataloaders,
    read_cache,
)
from utils.training.data import cache as cache_module
from utils.training.data import loaders as loaders_module
from utils.training.data.cache import encode_split, fill_in_memory, split_path, write_cache
from utils.training.data.synthetic import synthetic_id_chunks, synthetic_text_data
from utils.training.training_config import TrainingConfig

# --------------------------------------------------------------------- the old in-RAM path


def ref_pack_blocks(ids: torch.Tensor, block_size: int) -> torch.Tensor:
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    n_blocks = (ids.numel() - 1) // block_size
    return ids[: n_blocks * block_size + 1].unfold(0, block_size + 1, block_size).contiguous()


class RefBlocks(torch.utils.data.Dataset):
    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, idx):
        rows = self.blocks[idx]
        return rows[..., :-1].contiguous(), rows[..., 1:].contiguous()


def ref_make_dataloaders(train_ids, val_ids, block_size, batch_size, seed, *, pin_memory=False,
                         drop_last=True, rank=0, world_size=1):
    train_ids = torch.as_tensor(np.asarray(train_ids).astype(np.int64))
    val_ids = torch.as_tensor(np.asarray(val_ids).astype(np.int64))
    train_blocks = ref_pack_blocks(train_ids, block_size)
    val_blocks = ref_pack_blocks(val_ids, block_size)
    train_sampler = ResumableBatchSampler(
        len(train_blocks), batch_size, seed, shuffle=True,
        drop_last=drop_last and len(train_blocks) >= batch_size * world_size,
        rank=rank, world_size=world_size)
    val_sampler = ResumableBatchSampler(len(val_blocks), batch_size, seed, shuffle=False,
                                        rank=rank, world_size=world_size, pad=False)

    def loader(blocks, sampler):
        return DataLoader(RefBlocks(blocks), batch_size=None, sampler=sampler, num_workers=0,
                          generator=torch.Generator())

    return loader(train_blocks, train_sampler), loader(val_blocks, val_sampler)


def ref_sample(chain: MarkovChain, n_tokens: int, seed: int) -> np.ndarray:
    """MarkovChain.sample as it was: the three draws whole, one list for the stream."""
    V, k, s = chain.vocab_size, chain.order, chain.support
    n = int(n_tokens)
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    ctx = int(rng.choice(chain.n_contexts, p=chain.stationary_distribution()))
    first = [(ctx // V ** (k - 1 - j)) % V for j in range(k)]
    n_loop = max(0, n - k)
    uniform_step = (rng.random(n_loop) < chain.smoothing).tolist()
    uniform_tok = rng.integers(0, V, size=n_loop).tolist()
    u = rng.random(n_loop).tolist()
    cum, succ = array("d"), array("q")
    cum.frombytes(np.cumsum(chain.next_probs, axis=1).astype(np.float64).tobytes())
    succ.frombytes(chain.next_tokens.astype(np.int64).tobytes())
    out = [0] * n_loop
    for i in range(n_loop):
        if uniform_step[i]:
            t = uniform_tok[i]
        else:
            base = ctx * s
            t = succ[bisect_right(cum, u[i], base, base + s - 1)]
        out[i] = t
        ctx = (ctx * V + t) % chain.n_contexts
    return np.asarray(first[:n] + out, dtype=np.int64)


def ref_encode_split(ds: Dataset, tokenizer) -> np.ndarray:
    """encode_split as it was: one batched map kept in memory, flattened at the end."""
    eos = tokenizer.eos_id
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.int32

    def encode(texts):
        ids = tokenizer.encode_batch(texts)
        if eos is not None:
            for row in ids:
                row.append(eos)
        return {"ids": ids}

    out = ds.map(encode, input_columns="text", batched=True, batch_size=1000,
                 remove_columns=ds.column_names,
                 features=Features({"ids": Sequence(Value(np.dtype(dtype).name))}),
                 keep_in_memory=True, load_from_cache_file=False,
                 new_fingerprint=uuid.uuid4().hex)
    flat = pc.list_flatten(out.data.column("ids"))
    chunks = [c.to_numpy(zero_copy_only=False) for c in flat.chunks]
    return np.concatenate(chunks).astype(dtype, copy=False) if chunks else np.empty(0, dtype)


def synth_config(**kw) -> TrainingConfig:
    base = dict(data_source="synthetic", vocab_size=32, synthetic_order=1, synthetic_tokens=20_000,
                seed=3, val_fraction=0.1, block_size=16, batch_size=4)
    base.update(kw)
    return TrainingConfig(**base)


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader)


def assert_same_batches(new, ref) -> None:
    assert len(new) == len(ref)
    for (x, y), (rx, ry) in zip(new, ref, strict=True):
        assert x.dtype == rx.dtype == torch.int64 and x.is_contiguous() and y.is_contiguous()
        assert torch.equal(x, rx) and torch.equal(y, ry)


def memmap_of(ids: np.ndarray, path: Path) -> np.memmap:
    ids.tofile(path)
    return np.memmap(path, dtype=ids.dtype, mode="r", shape=ids.shape)


# --------------------------------------------------------------------- batches


@pytest.mark.parametrize("n_tokens,block,batch,world,drop_last,dtype", [
    (1000, 16, 8, 1, True, np.uint16),
    (1001, 16, 8, 1, True, np.uint16),   # exactly one block's worth of tail: nothing dropped
    (1015, 10, 7, 1, False, np.uint16),  # a short last batch
    (5000, 32, 4, 3, True, np.uint32),
    (777, 8, 5, 2, False, np.uint32),    # DDP padding by wrap-around
])
def test_memmap_batches_are_bit_identical_to_in_ram_blocks(tmp_path, n_tokens, block, batch,
                                                           world, drop_last, dtype):
    rng = np.random.default_rng(n_tokens)
    high = 70_000 if dtype == np.uint32 else 65_536
    train = rng.integers(0, high, size=n_tokens).astype(dtype)
    val = rng.integers(0, high, size=n_tokens // 3).astype(dtype)
    train_mm, val_mm = memmap_of(train, tmp_path / "t.bin"), memmap_of(val, tmp_path / "v.bin")
    for rank in range(world):
        kw = dict(drop_last=drop_last, rank=rank, world_size=world)
        new_train, new_val = make_dataloaders(train_mm, val_mm, block, batch, seed=5, **kw)
        ref_train, ref_val = ref_make_dataloaders(train, val, block, batch, seed=5, **kw)
        assert new_train.dataset.ids.base is not None  # a view of the memmap, not a copy
        assert np.shares_memory(new_train.dataset.ids, train_mm)
        for _ in range(2):  # two epochs: the sampler moves on by itself
            assert_same_batches(batches(new_train), batches(ref_train))
            assert_same_batches(batches(new_val), batches(ref_val))
        # Stop after 2 batches, resume from the state in fresh loaders: the same rest.
        it = iter(new_train)
        next(it), next(it)
        state = new_train.sampler.state_dict()
        rest = list(it)
        resumed, _ = make_dataloaders(train_mm, val_mm, block, batch, seed=5, **kw)
        resumed.sampler.load_state_dict(state)
        ref_resumed, _ = ref_make_dataloaders(train, val, block, batch, seed=5, **kw)
        ref_resumed.sampler.load_state_dict(state)
        got = batches(resumed)
        assert_same_batches(got, rest)
        assert_same_batches(got, batches(ref_resumed))


def test_gathering_widens_only_the_batch(tmp_path):
    ids = memmap_of(np.arange(10_001, dtype=np.uint16), tmp_path / "ids.bin")
    train, _ = make_dataloaders(ids, ids, 100, 4, seed=0)
    assert train.dataset.ids.dtype == np.uint16  # the stream itself is never widened
    x, y = next(iter(train))
    assert x.dtype == torch.int64 and x.shape == (4, 100)


# --------------------------------------------------------------------- training


def test_training_on_the_memmap_is_bit_identical_to_the_in_ram_path(tiny_config, tmp_path,
                                                                    monkeypatch):
    from utils.training.workspace import Workspace

    config = tiny_config(dropout=0.1, grad_accum_steps=2, epochs=3)
    ws = Workspace.setup(tmp_path / "new", mount_drive=False, verbose=False)
    new = run_module.prepare(config, ws)
    assert isinstance(new.data.train_ids, np.memmap) and new.data.train_ids.dtype == np.uint16
    new_trainer = new.trainer(progress=False, verbose=False)
    new_trainer.fit()

    # The old path end to end: the synthetic rows tokenized as text, int64 in RAM, packed blocks.
    texts = load_text_data(config)
    tok = IdentityTokenizer(config.vocab_size)
    old_data = TokenData(
        train_ids=torch.from_numpy(ref_encode_split(texts["train"], tok).astype(np.int64)),
        val_ids=torch.from_numpy(ref_encode_split(texts["validation"], tok).astype(np.int64)),
        tokenizer=tok, known_entropy=new.data.known_entropy, source=new.data.source)
    assert np.array_equal(old_data.train_ids.numpy(), new.data.train_ids)
    monkeypatch.setattr(run_module, "make_dataloaders", ref_make_dataloaders)
    old = run_module.prepare(config, None, data=old_data)
    assert isinstance(old.train_loader.dataset, RefBlocks)
    old_trainer = old.trainer(progress=False, verbose=False)
    old_trainer.fit()

    a, b = new_trainer.raw_model.state_dict(), old_trainer.raw_model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"parameter {key} differs"
    rows = [(r[M.TRAIN_LOSS], r[M.VAL_LOSS]) for r in new_trainer.history]
    assert rows == [(r[M.TRAIN_LOSS], r[M.VAL_LOSS]) for r in old_trainer.history]
    assert len(rows) == 3


# --------------------------------------------------------------------- writing the ids


def test_sample_chunks_are_the_old_whole_sample():
    for vocab, order, n, seed in [(32, 1, 30_000, 4), (16, 2, 3, 1), (16, 2, 1, 1), (100, 3, 5000, 2),
                                  (8192, 1, 20_000, 7)]:
        chain = MarkovChain(vocab, order=order, seed=1)
        want = ref_sample(chain, n, seed)
        assert np.array_equal(chain.sample(n, seed), want)
        chunks = list(chain.sample_chunks(n, seed, chunk_tokens=999))
        assert max(len(c) for c in chunks) <= 999
        assert np.array_equal(np.concatenate(chunks), want)


@pytest.mark.parametrize("max_samples", [0, 3])
def test_synthetic_ids_are_the_tokenized_text_rows(max_samples):
    config = synth_config(synthetic_tokens=7000, max_samples=max_samples)
    from utils.training.data.sources import to_text_splits

    texts = to_text_splits(synthetic_text_data(config), config, "synthetic")
    tok = IdentityTokenizer(config.vocab_size)
    for split, (n, chunks) in synthetic_id_chunks(config).items():
        got = np.concatenate(list(chunks))
        assert n == got.size and np.array_equal(got, ref_encode_split(texts[split], tok))
    data = load_token_data(config)
    assert data.train_ids.size == (3 * 1024 if max_samples else 6300)


def corpus(n: int) -> list[str]:
    rng = np.random.default_rng(n)
    words = ["alpha", "beta", "gamma", "naïve", "café", "🚀", "\n", "  ", "x" * 40]
    return ["".join(rng.choice(words, size=int(rng.integers(1, 60)))) for _ in range(n)]


@pytest.mark.parametrize("kind", ["byte", "char", "bpe"])
def test_tokenizing_in_bounded_batches_writes_the_ids_of_the_old_one_shot_path(
        tmp_path, monkeypatch, kind):
    docs = corpus(300)
    ds = Dataset.from_dict({"text": docs})
    config = TrainingConfig(tokenizer=kind, vocab_size=300)
    tok = build_tokenizer(config, [docs])
    want = ref_encode_split(ds, tok)

    calls = []
    real = tok.encode_batch

    def spy(texts):
        calls.append((len(texts), sum(map(len, texts[:-1]))))  # the characters before the last
        return real(texts)

    monkeypatch.setattr(tok, "encode_batch", spy)
    monkeypatch.setattr(cache_module, "ENCODE_ROWS", 32)
    monkeypatch.setattr(cache_module, "ENCODE_CHARS", 500)
    n = encode_split(ds, tok, tmp_path / "ids.bin")
    got = np.fromfile(tmp_path / "ids.bin", dtype=np.uint16)
    assert n == got.size and np.array_equal(got, want)
    assert len(calls) > 300 // 32 and max(rows for rows, _ in calls) <= 32
    # A batch ends at the row that reaches the character budget.
    assert all(chars < 500 for _, chars in calls) and any(rows < 32 for rows, _ in calls[:-1])


def test_encode_split_stops_a_stream_at_max_ids(tmp_path):
    docs = corpus(200)
    stream = Dataset.from_dict({"text": docs}).to_iterable_dataset()
    tok = ByteTokenizer()
    want = ref_encode_split(Dataset.from_dict({"text": docs}), tok)
    assert encode_split(stream, tok, tmp_path / "all.bin") == want.size
    assert np.array_equal(np.fromfile(tmp_path / "all.bin", dtype=np.uint16), want)
    assert encode_split(stream, tok, tmp_path / "some.bin", max_ids=1234) == 1234
    assert np.array_equal(np.fromfile(tmp_path / "some.bin", dtype=np.uint16), want[:1234])


def test_encode_split_reads_a_split_in_order_through_an_index_mapping(tmp_path):
    docs = corpus(50)
    ds = Dataset.from_dict({"text": docs}).shuffle(seed=1).select(range(0, 50, 2))
    tok = ByteTokenizer()
    encode_split(ds, tok, tmp_path / "ids.bin")
    assert np.array_equal(np.fromfile(tmp_path / "ids.bin", dtype=np.uint16),
                          ref_encode_split(ds, tok))


def test_a_large_vocabulary_is_stored_as_uint32(workspace):
    tok = IdentityTokenizer(70_000)
    ids = np.arange(0, 70_000, 7, dtype=np.int64)

    def fill(folder: Path) -> None:
        for split in ("train", "validation"):
            cache_module.write_ids(iter([ids[:5000], ids[5000:]]), split_path(folder, split),
                                   np.dtype("<u4"))

    folder = write_cache(workspace.datasets, "big-vocab", fill, tok, {"fields": {}})
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["dtype"] == "uint32" and meta["format"] == 2 and meta["train_tokens"] == ids.size
    data = load_token_data(TrainingConfig(data_source="local", data_path=str(folder)))
    assert data.train_ids.dtype == np.uint32 and np.array_equal(data.train_ids, ids)
    x, _ = next(iter(make_dataloaders(data.train_ids, data.val_ids, 8, 2, seed=0)[1]))
    assert torch.equal(x[0], torch.from_numpy(ids[:8]))
    train, val = fill_in_memory(fill, tok.vocab_size)
    assert train.dtype == np.uint32 and np.array_equal(train, ids) and not isinstance(train,
                                                                                       np.memmap)
    with pytest.raises(DataError, match="do not fit"):
        cache_module.write_ids(iter([ids]), workspace.root / "x.bin", np.dtype("<u2"))


# --------------------------------------------------------------------- cache formats


def to_format_1(folder: Path, int32: bool = False) -> dict:
    """Rewrite a cache folder as format 1 wrote it: .npy streams (uint16, or int32 for big
    vocabularies), meta.json with format 1."""
    meta = json.loads((folder / "meta.json").read_text())
    for split, name in (("train", "train.npy"), ("validation", "validation.npy")):
        ids = np.fromfile(split_path(folder, split), dtype=np.uint16)
        np.save(folder / name, ids.astype(np.int32) if int32 else ids)
        split_path(folder, split).unlink()
    meta.update(format=1, dtype="int32" if int32 else "uint16")
    (folder / "meta.json").write_text(json.dumps(meta))
    return meta


@pytest.mark.parametrize("int32", [False, True])
def test_a_format_1_cache_is_read_exactly(workspace, monkeypatch, capsys, int32):
    config = synth_config(synthetic_tokens=5000)
    made = load_token_data(config, workspace)
    want_train, want_val = np.array(made.train_ids), np.array(made.val_ids)
    to_format_1(made.cache_path, int32=int32)

    def boom(*args, **kwargs):
        raise AssertionError("tokenization ran on a cache hit")

    for name in ("encode_split", "write_ids", "read_source"):
        monkeypatch.setattr(loaders_module, name, boom)
    again = load_token_data(config, workspace)  # found by its key, as before the new format
    assert again.from_cache and again.cache_path == made.cache_path
    assert again.train_ids.dtype == (np.int32 if int32 else np.uint16)
    assert isinstance(again.train_ids, np.memmap)  # mapped, not loaded
    assert np.array_equal(again.train_ids, want_train) and np.array_equal(again.val_ids, want_val)
    direct = load_token_data(TrainingConfig(data_source="local", data_path=str(made.cache_path)))
    assert np.array_equal(direct.val_ids, want_val)
    new = make_dataloaders(again.train_ids, again.val_ids, 16, 4, seed=1)
    ref = ref_make_dataloaders(want_train, want_val, 16, 4, seed=1)
    for n, r in zip(new, ref, strict=True):
        assert_same_batches(batches(n), batches(r))


def test_a_damaged_or_unknown_cache_is_refused_not_misread(workspace):
    config = synth_config(synthetic_tokens=5000)
    folder = load_token_data(config, workspace).cache_path
    train_bin = split_path(folder, "train")
    raw = train_bin.read_bytes()
    train_bin.write_bytes(raw[:-1])  # half an id
    with pytest.raises(DataError, match=r"damaged.*train\.bin holds"):
        read_cache(folder)
    train_bin.write_bytes(raw)
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "dtype": "int64"}))
    with pytest.raises(DataError, match="damaged.*dtype 'int64'"):
        read_cache(folder)
    (folder / "meta.json").write_text(json.dumps({**meta, "format": 3}))
    with pytest.raises(DataError, match="has format 3, this version reads 1 and 2; delete"):
        load_token_data(config, workspace)
    (folder / "meta.json").write_text(json.dumps(meta))
    old = to_format_1(folder)
    (folder / "meta.json").write_text(json.dumps({**old, "train_tokens": 1}))
    with pytest.raises(DataError, match=r"damaged.*train\.npy holds 4,500 ids"):
        read_cache(folder)
    np.save(folder / "train.npy", np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(DataError, match="damaged.*float32"):
        read_cache(folder)


def test_reopening_a_cache_maps_the_ids_and_reads_none(workspace, monkeypatch):
    folder = load_token_data(synth_config(), workspace).cache_path

    def no_reading(*args, **kwargs):
        raise AssertionError("the ids were read into memory")

    monkeypatch.setattr(np, "fromfile", no_reading)
    monkeypatch.setattr(np, "load", no_reading)
    cached = read_cache(folder)
    assert isinstance(cached.train, np.memmap) and cached.train.flags.writeable is False
    assert math.isclose(cached.train.size / 18_000, 1.0)


# --------------------------------------------------------------------- plain text in pieces
# The reference is how plain text files were tokenized before pieces: each file read whole as
# one document (empty ones skipped), a seeded split of the documents (or the tail of the only
# one), each document's ids then EOS.


def ref_text_ids(files: list[Path], config: TrainingConfig, tok=None):
    docs = [t for t in (f.read_bytes().decode("utf-8").removeprefix("\ufeff") for f in files)
            if t.strip()]
    if len(docs) >= 2:
        parts = Dataset.from_dict({"text": docs}).train_test_split(
            test_size=config.val_fraction, seed=config.seed)
        train, val = list(parts["train"]["text"]), list(parts["test"]["text"])
    else:
        text = docs[0]
        cut = int(len(text) * (1.0 - config.val_fraction))
        newline = text.rfind("\n", int(cut * 0.9), cut)
        cut = min(max(newline + 1 if newline != -1 else cut, 1), len(text) - 1)
        train, val = [text[:cut]], [text[cut:]]
    if config.max_samples:
        train, val = train[: config.max_samples], val[: config.max_samples]
    tok = tok or build_tokenizer(config, [train])
    return [np.concatenate([np.asarray([*tok.encode(d), tok.eos_id]) for d in split])
            for split in (train, val)]


def messy_text(rng: np.random.Generator, n_chars: int, blob: int = 0) -> str:
    """Paragraphs with every kind of break a cut could land on: blank lines (some holding
    spaces), CRLF, runs of spaces and tabs, a line thousands of characters long, non-ASCII."""
    words = ["alpha", "beta", "naïve", "café", "🚀", "x=1;", "don't", "42", "  ", "\t", "\n",
             "\n\n", "\n \n", "\r\n", "\n\n\n"]
    out, size = [], 0
    while size < n_chars:
        part = "".join(rng.choice(words, size=int(rng.integers(1, 400))).tolist())
        if rng.random() < 0.05:
            part += " ".join(["word"] * 2000)  # a long line: cut at a word break
        out.append(part)
        size += len(part)
    return "\ufeff" + "x" * blob + " ".join(out)


@pytest.mark.parametrize("pieces", [False, True], ids=["whole", "pieces"])
@pytest.mark.parametrize("kind", ["byte", "char", "bpe"])
@pytest.mark.parametrize("layout", ["folder", "one file", "max_samples"])
def test_small_text_files_give_the_ids_they_always_gave(tmp_path, monkeypatch, kind, layout,
                                                         pieces):
    """Small files are read whole as before; the same files read in (tiny) pieces give the
    very same ids, BPE merges included."""
    from utils.training.data import text as text_module

    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", tmp_path / "hf")
    if pieces:
        monkeypatch.setattr(text_module, "TEXT_IN_MEMORY_BYTES", 0)
        monkeypatch.setattr(text_module, "PIECE_CHARS", 24)
        monkeypatch.setattr(text_module, "READ_BYTES", 1000)  # reads end inside characters
    rng = np.random.default_rng(5)
    folder = tmp_path / "c"
    folder.mkdir()
    for i in range(1 if layout == "one file" else 7):
        (folder / f"d{i}.txt").write_bytes(messy_text(rng, 3000).encode())
    (folder / "empty.txt").write_text("")
    (folder / "blank.txt").write_text(" \n\n\t")
    config = TrainingConfig(data_source="local", data_path=str(folder), tokenizer=kind,
                            vocab_size=400, val_fraction=0.3, seed=3, block_size=8,
                            max_samples=2 if layout == "max_samples" else 0)
    data = load_token_data(config)
    want_train, want_val = ref_text_ids(sorted(folder.glob("*.txt")), config)
    assert np.array_equal(data.train_ids, want_train) and np.array_equal(data.val_ids, want_val)


def test_cutting_pieces_never_splits_what_a_byte_level_bpe_keeps_together():
    from utils.training.data.text import piece_ends

    def cut(text, size, final=True):
        ends = list(piece_ends(text, size, final))
        return [text[a:b] for a, b in zip([0, *ends], ends)], text[ends[-1]:]

    rng = np.random.default_rng(0)
    text = messy_text(rng, 200_000)
    tok = build_tokenizer(TrainingConfig(tokenizer="bpe", vocab_size=600), [[text[:50_000]]])
    for size in (7, 64, 1000):
        pieces, rest = cut(text, size)
        assert "".join(pieces) == text and rest == "" and len(pieces) > len(text) // (20 * size)
        assert all(not p[-1].isspace() for p in pieces[:-1])  # each cut precedes whitespace
        assert [i for p in pieces for i in tok.encode(p)] == tok.encode(text)
    # Text without whitespace for HARD_PIECES pieces is cut anyway, at the piece size.
    pieces, rest = cut("y" * 1000 + " z", 10, final=False)
    assert pieces[0] == "y" * 10 and "".join(pieces) + rest == "y" * 1000 + " z"


def test_a_large_text_file_is_tokenized_in_bounded_memory(tmp_path, workspace, monkeypatch):
    """The text path's peak (Python allocations: the text read, its pieces, the ids) stays at a
    few pieces' worth whatever the file's size, and the ids are those of the whole text."""
    import tracemalloc

    from utils.training.data import text as text_module

    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", tmp_path / "hf")
    # Reads, pieces and batches smaller than the real ones, so tens of MB show the bound.
    monkeypatch.setattr(text_module, "TEXT_IN_MEMORY_BYTES", 1 << 20)
    monkeypatch.setattr(text_module, "PIECE_CHARS", 1 << 12)
    monkeypatch.setattr(text_module, "READ_BYTES", 1 << 16)
    monkeypatch.setattr(text_module, "WRITE_ROWS", 16)
    monkeypatch.setattr(cache_module, "ENCODE_CHARS", 1 << 16)
    rng = np.random.default_rng(1)
    block = messy_text(rng, 1 << 20, blob=100_000)  # a stretch without whitespace: a hard cut
    peaks = {}
    for mb in (6, 30):
        path = tmp_path / f"big{mb}.txt"
        with open(path, "w", encoding="utf-8", newline="") as f:
            for i in range(mb):
                f.write(block.replace("alpha", f"alpha{i}", 1) if i else block)
        config = TrainingConfig(data_source="local", data_path=str(path), tokenizer="byte",
                                val_fraction=0.1, block_size=8)
        tracemalloc.start()
        data = load_token_data(config, workspace)
        peaks[mb] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        train, val = ref_text_ids([path], config, ByteTokenizer())
        assert np.array_equal(data.train_ids, train) and np.array_equal(data.val_ids, val)
        assert int((data.train_ids == 256).sum()) == 1  # one document: EOS once, at its end
    assert peaks[30] < path.stat().st_size / 15, peaks  # a 36 MB file: under 2.5 MB
    assert peaks[30] < 1.5 * peaks[6], peaks  # five times the text, not more memory


def test_one_document_in_pieces_is_split_where_the_whole_text_was(tmp_path, monkeypatch, capsys):
    """The validation tail of a single document, wherever the cut falls among its pieces (the
    first, the last, a piece boundary); and a non-byte-level tokenizer is told about pieces."""
    from tokenizers import Tokenizer as Core
    from tokenizers import models, pre_tokenizers

    from utils.training.data import HFTokenizer
    from utils.training.data import text as text_module

    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", tmp_path / "hf")
    monkeypatch.setattr(text_module, "TEXT_IN_MEMORY_BYTES", 0)
    path = tmp_path / "one.txt"
    path.write_text("".join(np.random.default_rng(2).choice(list("ab \n\n\t"), 300)) + "end")
    for size in (2, 5, 40, 1000):
        monkeypatch.setattr(text_module, "PIECE_CHARS", size)
        for vf in (0.01, 0.1, 0.5, 0.9):
            config = TrainingConfig(data_source="local", data_path=str(path), val_fraction=vf,
                                    tokenizer="byte", block_size=1)
            data = load_token_data(config)
            train, val = ref_text_ids([path], config, ByteTokenizer())
            assert np.array_equal(data.train_ids, train) and np.array_equal(data.val_ids, val)
    core = Core(models.WordLevel({"a": 0, "b": 1, "<|endoftext|>": 2, "[UNK]": 3}, "[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    capsys.readouterr()
    load_token_data(config, tokenizer=HFTokenizer(core, "<|endoftext|>"))
    assert "is not a byte-level tokenizer, so where the large text was cut" in capsys.readouterr().out
