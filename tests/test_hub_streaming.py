"""A Hub dataset too large to download whole, streamed into the token file up to max_tokens.

Nothing touches the network: `datasets.load_dataset` is replaced by a fake whose splits count
the rows pulled from them, and the Hub probe answers yes.
"""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from datasets import Dataset

from utils.training.data import cache as cache_module
from utils.training.data import hub_stream as hub_stream_module
from utils.training.data import load_token_data
from utils.training.data import sources as sources_module
from utils.training.training_config import TrainingConfig

BATCH = 4  # rows per tokenizer call here, so "nothing beyond" can be checked to a few rows


class CountingSplit:
    """A streamed split: rows made on demand, counting how many were pulled."""

    features = None  # like a generator-backed IterableDataset: columns come from the first row

    def __init__(self, n: int, prefix: str = "doc") -> None:
        self.n, self.prefix, self.pulled = n, prefix, 0

    def row(self, i: int) -> dict:
        return {"id": i, "body": f"{self.prefix} {i}: " + "word " * (i % 7 + 1)}

    def __iter__(self):
        for i in range(self.n):
            self.pulled += 1
            yield self.row(i)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """Fake Hub: `hub.splits` is what load_dataset(..., streaming=True) returns."""
    state = type("Hub", (), {})()
    state.splits, state.calls = {}, []

    def fake_load_dataset(name, subset=None, streaming=False, **kwargs):
        state.calls.append((name, streaming))
        assert streaming, "with max_tokens a Hub dataset must be streamed, never downloaded"
        return state.splits

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(sources_module, "hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(sources_module.datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(cache_module, "ENCODE_ROWS", BATCH)
    monkeypatch.setattr(hub_stream_module, "STREAM_VAL_MIN_IDS", 0)
    return state


def cfg(**kw) -> TrainingConfig:
    base = dict(data_source="huggingface", dataset_name="some/huge", dataset_config="", seed=3, val_fraction=0.1,
                tokenizer="byte", block_size=8, max_tokens=5000)
    return TrainingConfig(**{**base, **kw})


def rows_for(split: CountingSplit, ids: int) -> int:
    """Rows whose byte ids (plus EOS each) reach `ids`."""
    total = 0
    for i in range(split.n):
        total += len(split.row(i)["body"].encode()) + 1
        if total >= ids:
            return i + 1
    return split.n


def test_stream_without_validation_split_takes_validation_from_the_head(hub, capsys):
    train = CountingSplit(100_000)
    hub.splits = {"train": train}
    data = load_token_data(cfg())
    assert hub.calls == [("some/huge", True)]
    assert data.train_ids.size == 5000 and data.val_ids.size == 500  # 10% of max_tokens
    # Only the rows those ids need were read: at most one tokenizer batch more per split (the
    # first row read once more to find the text column).
    assert train.pulled <= 1 + rows_for(train, 5500) + 2 * BATCH
    tok = data.tokenizer
    val_text = tok.decode(data.val_ids.tolist())
    train_text = tok.decode(data.train_ids.tolist())
    assert val_text.startswith("doc 0: word")
    first_train_doc = int(train_text.split(":")[0].split()[-1])
    last_val_doc = int(val_text.rsplit("doc ", 1)[1].split(":")[0])
    assert first_train_doc > last_val_doc  # the head went to validation, training skips it
    out = capsys.readouterr().out
    assert "Streamed Hugging Face dataset some/huge (max_tokens=5,000" in out
    assert "5,000 train ids" in out and "500 validation ids from the first" in out


def test_stream_with_a_validation_split_bounds_both(hub):
    train, val = CountingSplit(100_000), CountingSplit(100_000, prefix="held out")
    hub.splits = {"train": train, "validation": val}
    data = load_token_data(cfg(max_tokens=3000, val_fraction=0.2))
    assert data.train_ids.size == 3000 and data.val_ids.size == 600
    assert train.pulled <= 1 + rows_for(train, 3000) + BATCH
    assert val.pulled <= rows_for(val, 600) + BATCH
    assert data.tokenizer.decode(data.val_ids[:8].tolist()) == "held out"


def test_bpe_learns_from_the_stream_head_and_a_real_iterable_dataset_works(hub):
    docs = [f"document number {i} with some words" for i in range(50_000)]
    ds = Dataset.from_dict({"text": docs}).to_iterable_dataset()
    hub.splits = datasets.IterableDatasetDict(train=ds)
    data = load_token_data(cfg(tokenizer="bpe", vocab_size=300, max_tokens=2000))
    assert data.train_ids.size == 2000 and data.val_ids.size == 200
    assert data.tokenizer.vocab_size <= 300


def test_cache_key_holds_max_tokens(hub, workspace):
    train = CountingSplit(100_000)
    hub.splits = {"train": train}
    first = load_token_data(cfg(), workspace)
    assert not first.from_cache and first.train_ids.size == 5000
    again = load_token_data(cfg(), workspace)
    assert again.from_cache and again.cache_path == first.cache_path
    assert len(hub.calls) == 1  # the cache hit opened no stream
    bigger = load_token_data(cfg(max_tokens=8000), workspace)
    assert not bigger.from_cache and bigger.cache_path != first.cache_path
    assert bigger.train_ids.size == 8000


def test_without_max_tokens_the_hub_dataset_is_not_streamed(hub, monkeypatch):
    whole = Dataset.from_dict({"text": [f"doc {i}" for i in range(40)]})

    def fake_load_dataset(name, subset=None, streaming=False, **kwargs):
        assert not streaming
        return datasets.DatasetDict(train=whole)

    monkeypatch.setattr(sources_module.datasets, "load_dataset", fake_load_dataset)
    data = load_token_data(cfg(max_tokens=0))
    assert data.train_ids.size + data.val_ids.size == sum(len(f"doc {i}") + 1 for i in range(40))
    assert isinstance(data.train_ids, np.ndarray)


# --- the data cell's preview: the first rows, streamed ----------------------------------------


def preview(**settings):
    from utils.training.notebook import DataChoice

    data = DataChoice("huggingface")
    data.use("huggingface", dataset_name="some/huge", dataset_config="", **settings)


def test_the_preview_streams_only_the_rows_it_shows(hub, capsys):
    train, val = CountingSplit(100_000), CountingSplit(100_000, prefix="held out")
    hub.splits = {"train": train, "validation": val}
    preview()
    assert hub.calls == [("some/huge", True)]  # streamed (the fake refuses anything else)
    assert train.pulled <= 1 + 3 and val.pulled == 0  # the row naming the columns, and 3 shown
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("Data source 'huggingface', Hugging Face dataset some/huge: train, "
                      "validation; the first rows, streamed")
    assert out[1:] == ["  | doc 0: word", "  | doc 1: word word", "  | doc 2: word word word"]


def test_the_preview_gives_sizes_the_hub_knows_and_skips_empty_rows(hub, capsys):
    texts = ["", "  ", *(f"row {i}" for i in range(50))]
    ds = Dataset.from_dict({"text": texts}).to_iterable_dataset()
    ds.info.splits = datasets.SplitDict({"train": datasets.SplitInfo("train", num_examples=52)})
    hub.splits = datasets.IterableDatasetDict(train=ds)
    preview()
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("some/huge: train: 52 rows (validation is split off 'train' when "
                           "training); the first rows, streamed")
    assert out[1:] == ["  | row 0", "  | row 1", "  | row 2"]


def test_the_preview_of_a_hub_dataset_refuses_what_training_would(hub):
    from utils.training.data import DataError

    hub.splits = {"train": CountingSplit(10)}
    with pytest.raises(DataError, match=r"text_column='nope' is not a column.*\['id', 'body'\]"):
        preview(text_column="nope")
    empty = Dataset.from_dict({"text": [""] * 20, "n": list(range(20))}).to_iterable_dataset()
    hub.splits = datasets.IterableDatasetDict(train=empty)
    with pytest.raises(DataError, match="has no text: every row of column 'text' is empty"):
        preview()
