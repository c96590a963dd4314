"""Data layer: the Markov chain's known answer, exact block arithmetic, resumable order, sources."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from utils.training.data import (
    BlockDataset,
    ByteTokenizer,
    DataError,
    IdentityTokenizer,
    MarkovChain,
    ResumableBatchSampler,
    count_blocks,
    load_token_data,
    load_tokenizer,
    make_dataloaders,
)


def config(**kw) -> SimpleNamespace:
    base = dict(
        data_source="synthetic",
        data_path="",
        dataset_name="",
        dataset_config="",
        text_column="",
        vocab_size=32,
        synthetic_order=1,
        synthetic_tokens=20_000,
        seed=0,
        val_fraction=0.1,
        max_samples=0,
        tokenizer="byte",
        block_size=16,
        batch_size=4,
    )
    base.update(kw)
    return SimpleNamespace(**base)


# --- Markov chain ---------------------------------------------------------------------------


@pytest.mark.parametrize("vocab,order", [(32, 1), (64, 1), (16, 2)])
def test_entropy_rate_matches_empirical_estimate(vocab, order):
    chain = MarkovChain(vocab, order=order, seed=3)
    tokens = chain.sample(200_000, seed=4)
    empirical = -chain.log_probs(tokens).mean()
    assert empirical == pytest.approx(chain.entropy_rate(), rel=0.02)
    assert 0.5 < chain.entropy_rate() < 2.5  # learnable, but not trivial


def test_chain_and_sample_are_deterministic():
    a, b = MarkovChain(32, seed=1), MarkovChain(32, seed=1)
    assert np.array_equal(a.next_probs, b.next_probs)
    assert np.array_equal(a.sample(1000, seed=5), b.sample(1000, seed=5))
    assert not np.array_equal(a.sample(1000, seed=5), a.sample(1000, seed=6))
    assert a.entropy_rate() != MarkovChain(32, seed=2).entropy_rate()


def test_order_two_chain_samples_in_range():
    chain = MarkovChain(64, order=2, seed=0)
    x = chain.sample(5000, seed=0)
    assert x.dtype == np.int64 and x.shape == (5000,)
    assert x.min() >= 0 and x.max() < 64
    assert chain.stationary_distribution().sum() == pytest.approx(1.0)


def test_too_many_contexts_is_a_clear_error():
    with pytest.raises(DataError, match="contexts"):
        MarkovChain(256, order=3)


def test_synthetic_token_data_has_independent_splits_and_known_entropy():
    data = load_token_data(config(vocab_size=32, synthetic_tokens=10_000, val_fraction=0.2))
    assert data.train_ids.dtype == np.uint16 and data.train_ids.size == 8000  # never int64
    assert data.val_ids.size == 2000
    assert not np.array_equal(data.train_ids[:2000], data.val_ids)
    assert data.tokenizer.vocab_size == 32 and data.known_entropy > 0


# --- blocks, sampler, loaders --------------------------------------------------------------


def test_blocks_shift_by_one_and_target_every_token_once():
    ids = np.arange(103, dtype=np.uint16)
    blocks = BlockDataset(ids, 10)
    assert len(blocks) == 10 == count_blocks(103, 10)  # 102 targets fit, the tail is dropped
    x, y = blocks[torch.arange(10)]
    assert x.dtype == y.dtype == torch.int64 and x.shape == (10, 10)
    assert torch.equal(y, x + 1)
    assert torch.equal(torch.sort(y.flatten()).values, torch.arange(1, 101))
    assert torch.equal(x[1:, 0], y[:-1, -1])  # the shared boundary token
    xi, yi = blocks[3]
    assert torch.equal(xi, torch.arange(30, 40)) and torch.equal(yi, torch.arange(31, 41))
    assert torch.equal(blocks[-1][0], blocks[9][0])
    with pytest.raises(IndexError):
        blocks[torch.tensor([2, 10])]


def test_blocks_too_short_says_the_numbers():
    with pytest.raises(DataError, match=r"10 tokens.*block_size=16.*17"):
        BlockDataset(np.arange(10), 16)
    with pytest.raises(DataError, match=r"validation split has 0 tokens"):
        make_dataloaders(np.arange(100), np.arange(0), 16, 2, seed=0)


def epoch(sampler: ResumableBatchSampler) -> list[list[int]]:
    return [b.tolist() for b in sampler]


def test_sampler_order_depends_only_on_seed_and_epoch():
    s = ResumableBatchSampler(50, 8, seed=7)
    s.set_epoch(2)
    first = epoch(s)
    torch.manual_seed(123)  # the global RNG must not matter
    s.set_epoch(2)
    assert epoch(s) == first
    assert epoch(ResumableBatchSampler(50, 8, seed=8)) != epoch(ResumableBatchSampler(50, 8, 7))
    s.set_epoch(3)
    assert epoch(s) != first
    assert sorted(sum(first, [])) == list(range(50))  # every item once per epoch
    assert len(first) == len(s) == 7 and len(first[-1]) == 2


def test_sampler_resumes_mid_epoch_exactly():
    s = ResumableBatchSampler(40, 4, seed=1, drop_last=True)
    s.set_epoch(5)
    full = epoch(s)
    s.set_epoch(5, start_batch=3)
    assert epoch(s) == full[3:]

    # Interrupt after 4 batches, checkpoint, resume in a fresh sampler.
    s.set_epoch(5)
    it = iter(s)
    seen = [next(it).tolist() for _ in range(4)]
    state = s.state_dict()
    assert all(type(v) is int for v in state.values())
    resumed = ResumableBatchSampler(40, 4, seed=999, drop_last=True)
    resumed.load_state_dict(state)
    assert seen + epoch(resumed) == full
    assert resumed.state_dict()["epoch"] == 6  # finished epoch 5, moved on
    with pytest.raises(DataError, match="batch_size"):
        ResumableBatchSampler(40, 5, seed=1).load_state_dict(state)


def test_sampler_rank_shards_are_disjoint_and_equal_sized():
    shards = [
        sum(epoch(ResumableBatchSampler(10, 2, seed=0, drop_last=True, rank=r, world_size=3)), [])
        for r in range(3)
    ]
    assert all(len(s) == 2 for s in shards)  # 10 // 3 = 3 items -> one full batch of 2
    flat = sum(shards, [])
    assert len(set(flat)) == len(flat)
    padded = [ResumableBatchSampler(10, 2, seed=0, rank=r, world_size=3) for r in range(3)]
    assert {len(p) for p in padded} == {2}
    assert set(sum((sum(epoch(p), []) for p in padded), [])) == set(range(10))


def test_make_dataloaders_yields_shifted_long_batches():
    train, val = make_dataloaders(torch.arange(1000), torch.arange(200), 16, 8, seed=0)
    x, y = next(iter(train))
    assert x.dtype == torch.long and x.shape == (8, 16) and y.shape == (8, 16)
    assert torch.equal(y, x + 1)
    assert len(train) == 7  # 62 blocks, drop_last
    train.sampler.set_epoch(1)
    assert not torch.equal(next(iter(train))[0], x)
    vx = torch.cat([b[0] for b in val])
    assert vx.shape == (12, 16) and torch.equal(vx[:, 0], torch.arange(0, 192, 16))  # in order


def test_iterating_loaders_does_not_touch_global_rng():
    train, val = make_dataloaders(torch.arange(1000), torch.arange(200), 16, 8, seed=0)
    state = torch.random.get_rng_state()
    list(train), list(val)
    assert torch.equal(torch.random.get_rng_state(), state)


# --- tokenizers and local text --------------------------------------------------------------


def test_byte_tokenizer_round_trips_unicode(tmp_path):
    tok = ByteTokenizer()
    text = "naïve café — 日本語 🚀\n\ttabs"
    assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == 257 and tok.eos_id == 256
    assert isinstance(load_tokenizer(tok.save(tmp_path / "tok.json")), ByteTokenizer)
    ident = IdentityTokenizer(32)
    assert ident.decode([3, 17]) == "3 17" and ident.encode("3 17") == [3, 17]
    assert load_tokenizer(ident.save(tmp_path / "id.json")).vocab_size == 32


def test_local_token_data_puts_eos_between_documents(tmp_path):
    for i in range(5):
        (tmp_path / f"doc{i}.txt").write_text(f"document {i} " * 5)
    data = load_token_data(config(data_source="local", data_path=str(tmp_path), val_fraction=0.2))
    eos = data.tokenizer.eos_id
    assert int((data.train_ids == eos).sum()) == 4 and int((data.val_ids == eos).sum()) == 1
    assert int(data.train_ids[-1]) == eos
    docs = data.tokenizer.decode(data.train_ids.tolist()).strip("\n").split("\n")
    assert len(docs) == 4 and all(d.startswith("document ") for d in docs)


def test_local_single_document_splits_its_tail(tmp_path):
    (tmp_path / "one.txt").write_text("x" * 999)
    data = load_token_data(config(data_source="local", data_path=str(tmp_path), val_fraction=0.1))
    # 899 + 100 characters, each part ending in EOS.
    assert data.train_ids.size == 900 and data.val_ids.size == 101


def test_unknown_data_source_is_a_clear_error():
    with pytest.raises(DataError, match="synthetic"):
        load_token_data(config(data_source="ftp"))
