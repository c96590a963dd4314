"""Token ids -> language-model blocks -> DataLoaders whose order survives a restart.

The ids stay where they are (a read-only memory map of the token cache, see cache.py): a block
is index arithmetic over the stream, and each step gathers only its own batch, widened to int64
there and nowhere else. A run's memory therefore does not grow with the corpus.

Two things matter here and both are about resuming: the data order is a pure function of
(seed, epoch) drawn from private generators, so nothing else in the run (evaluation, sampling,
dropout) can shift it; and the sampler can start mid-epoch, so a resumed run sees exactly the
batches the interrupted one had left.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .cache import (
    SPLITS,
    CachedTokens,
    cache_key,
    encode_split,
    fill_in_memory,
    key_fields,
    made_with,
    read_cache,
    split_path,
    stream_dtype,
    write_cache,
    write_ids,
)
from .errors import DataError
from .hub_stream import TOKENIZER_SAMPLE_CHARS, open_hub_stream, stream_budget, streams_from_hub
from .sources import Source, is_token_cache, read_source, resolve_source
from .synthetic import synthetic_chain, synthetic_id_chunks
from .tokenizer import IdentityTokenizer, Tokenizer, build_tokenizer

if TYPE_CHECKING:
    from ..training_config import TrainingConfig
    from ..workspace import Workspace


@dataclass
class TokenData:
    """Everything a run needs from a data source, before it is cut into blocks."""

    # 1-D uint16/uint32 ids (int32 from a format-1 cache): a read-only memory map of the token
    # cache, or an array in RAM when there is no workspace. Never widened as a whole.
    train_ids: np.ndarray
    val_ids: np.ndarray
    tokenizer: Tokenizer
    known_entropy: float | None = None  # nats/token a perfect model reaches (synthetic only)
    source: str = ""
    cache_path: Path | None = None  # the token cache folder used or written, if any
    from_cache: bool = False  # True when no tokenization ran
    # Config fields these tokens fix whatever the config said (a cache folder named directly
    # brings its own tokenizer): the run records these values, so its config tells the truth.
    settings: dict[str, Any] = field(default_factory=dict)


def count_blocks(n_tokens: int, block_size: int, *, name: str = "token stream") -> int:
    """How many [block_size + 1] windows with stride block_size fit; the ragged tail is dropped.

    Consecutive blocks share their boundary token (last of one = first of the next), so every
    token after the first is a prediction target exactly once per epoch and nothing is wasted.
    """
    n_blocks = (n_tokens - 1) // block_size if n_tokens > 0 else 0
    if n_blocks < 1:
        raise DataError(
            f"The {name} has {n_tokens} tokens but one block of block_size={block_size} needs "
            f"{block_size + 1}. Use a smaller block_size or more data (e.g. more synthetic_tokens "
            "or a larger val_fraction for the validation split)."
        )
    return n_blocks


class BlockDataset(Dataset):
    """The blocks of a 1-D id stream, by index arithmetic: block i is
    ids[i * block_size : i * block_size + block_size + 1] (see `count_blocks`).

    Indexing with a whole batch of indices gathers the whole batch in one numpy op, reading only
    its rows from the memory map, and widens just those to int64. Used with
    DataLoader(batch_size=None, sampler=ResumableBatchSampler): each sampler item is a 1-D
    LongTensor of indices, so there is no per-sample __getitem__ and no collate step.
    """

    def __init__(self, ids: np.ndarray | torch.Tensor, block_size: int, *,
                 name: str = "token stream") -> None:
        # A CPU tensor shares its memory with .numpy(); a memmap stays a memmap (asarray views).
        ids = ids.numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        if ids.ndim != 1:
            raise ValueError(f"BlockDataset needs a 1-D id stream, got shape {ids.shape}.")
        self.ids, self.block_size = ids, int(block_size)
        self.n_blocks = count_blocks(ids.size, self.block_size, name=name)
        self._offsets = np.arange(self.block_size + 1, dtype=np.int64)

    def __len__(self) -> int:
        return self.n_blocks

    def __getitem__(self, idx: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = np.asarray(idx, dtype=np.int64)
        if blocks.size and (blocks.min() < -self.n_blocks or blocks.max() >= self.n_blocks):
            raise IndexError(f"block index out of range 0..{self.n_blocks - 1}")
        blocks = blocks % self.n_blocks  # negative indices count from the end, as tensors do
        starts = blocks[..., None] * self.block_size
        rows = torch.from_numpy(self.ids[starts + self._offsets].astype(np.int64))
        # Contiguous so consumers may .view() them (the shifted slices otherwise are not).
        return rows[..., :-1].contiguous(), rows[..., 1:].contiguous()


def _epoch_seed(seed: int, epoch: int) -> int:
    # SeedSequence mixes (seed, epoch) into well-spread bits: seeds 1 and 2 must not give
    # related permutations, and negative seeds are folded into the unsigned range.
    entropy = [seed & 0xFFFF_FFFF_FFFF_FFFF, epoch]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])


@runtime_checkable
class EpochSampler(Protocol):
    """A sampler whose order is chosen per epoch (torch's DistributedSampler): the trainer
    calls ``set_epoch`` before each epoch. Only :class:`ResumableBatchSampler` can also start
    in the middle of one."""

    def set_epoch(self, epoch: int) -> None: ...


class ResumableBatchSampler:
    """Yields 1-D LongTensor index batches; order depends only on (seed, epoch).

    Iterating runs the current epoch from `start_batch`, then moves on to the next epoch, so
    `state_dict()` taken at any point (between batches) says exactly where to resume. Calling
    `set_epoch(e)` before each epoch (the DistributedSampler habit) works too.

    Sharding for DDP: the epoch's permutation is padded by repeating its first items
    (drop_last=False) or truncated (drop_last=True) to a multiple of world_size, and rank r takes
    every world_size-th index from position r. Every rank then has the same number of batches,
    which DDP needs (a rank with one batch more would hang in all-reduce); padding repeats at
    most world_size - 1 items per epoch. drop_last also drops the last short batch. Evaluation
    needs no lockstep: with ``pad=False`` each item is on exactly one rank, so a validation loss
    summed over the ranks is the one-process loss.
    """

    def __init__(
        self,
        n_items: int,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
    ) -> None:
        if batch_size < 1 or n_items < 0:
            raise ValueError(f"Need batch_size >= 1 and n_items >= 0, got {batch_size}, {n_items}.")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..world_size-1 ({world_size=}).")
        self.n_items, self.batch_size, self.seed = int(n_items), int(batch_size), int(seed)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0
        self.start_batch = 0  # batches of `epoch` already handed out

    @property
    def items_per_rank(self) -> int:
        if self.drop_last:
            return self.n_items // self.world_size
        if not self.pad:  # the first n_items % world_size ranks hold one more
            return len(range(self.rank, self.n_items, self.world_size))
        return math.ceil(self.n_items / self.world_size)

    def __len__(self) -> int:
        """Batches in a full epoch for this rank (a resumed epoch yields fewer)."""
        if self.drop_last:
            return self.items_per_rank // self.batch_size
        return math.ceil(self.items_per_rank / self.batch_size)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's item order for `epoch` (all batches, before start_batch skipping)."""
        if self.shuffle:
            # A private generator: the global RNG (dropout, sampling, other libraries) can
            # neither change this order nor be changed by it.
            g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            perm = torch.randperm(self.n_items, generator=g)
        else:
            perm = torch.arange(self.n_items)
        if self.world_size > 1 and not self.pad:
            perm = perm[self.rank :: self.world_size]
        elif self.world_size > 1:
            total = self.items_per_rank * self.world_size
            if total > perm.numel():  # pad by wrapping around (tiny datasets may wrap twice)
                perm = perm.repeat(math.ceil(total / max(perm.numel(), 1)))
            perm = perm[:total][self.rank :: self.world_size]
        return perm

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch to iterate; start_batch > 0 skips batches a resumed run already saw."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} is not in 0..{len(self)} for this epoch.")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = self.epoch_indices(self.epoch)
        bs = self.batch_size
        for b in range(self.start_batch, len(self)):
            # Counted when handed out: a checkpoint taken after this batch is processed must
            # not replay it.
            self.start_batch = b + 1
            yield order[b * bs : (b + 1) * bs]
        self.epoch, self.start_batch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "start_batch": self.start_batch,
            "n_items": self.n_items,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("n_items", "batch_size"):
            if int(state[key]) != getattr(self, key):
                raise DataError(
                    f"Cannot resume the data order: the checkpoint had {key}={state[key]}, this "
                    f"run has {getattr(self, key)}. Resume with the same data, block_size and "
                    "batch_size, or start a fresh run."
                )
        self.seed = int(state["seed"])
        self.set_epoch(int(state["epoch"]), int(state["start_batch"]))


def make_dataloaders(
    train_ids: np.ndarray | torch.Tensor,
    val_ids: np.ndarray | torch.Tensor,
    block_size: int,
    batch_size: int,
    seed: int,
    *,
    pin_memory: bool = False,
    drop_last: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[DataLoader, DataLoader]:
    """Train (shuffled, resumable: `train_loader.sampler`) and validation (in order) loaders.

    The ids (a memory map of the token cache, an array or a CPU tensor) are used where they
    are: no copy of the stream is made. Yields (inputs, targets) int64 [B, block_size].
    num_workers=0 on purpose: a batch is a single gather of B rows (microseconds against a
    step), so worker processes would only add start-up time, pickling and RNG state to manage.
    drop_last applies to training only when there is at least one full batch per rank;
    validation keeps every block, each on one rank, so its loss covers all of it, once.
    """
    train_blocks = BlockDataset(train_ids, block_size, name="training split")
    val_blocks = BlockDataset(val_ids, block_size, name="validation split")
    train_sampler = ResumableBatchSampler(
        len(train_blocks),
        batch_size,
        seed,
        shuffle=True,
        drop_last=drop_last and len(train_blocks) >= batch_size * world_size,
        rank=rank,
        world_size=world_size,
    )
    val_sampler = ResumableBatchSampler(
        len(val_blocks), batch_size, seed, shuffle=False, rank=rank, world_size=world_size,
        pad=False,
    )
    # Pinning needs a GPU; asking for it without one only earns a warning per loader.
    pin = pin_memory and torch.cuda.is_available()

    def loader(blocks: BlockDataset, sampler: ResumableBatchSampler) -> DataLoader:
        # A private generator: every iter(DataLoader) draws a base seed from `generator`, which
        # would otherwise be the global RNG, so merely running evaluation would shift dropout.
        return DataLoader(
            blocks,
            batch_size=None,
            sampler=sampler,
            num_workers=0,
            pin_memory=pin,
            generator=torch.Generator(),
        )

    return loader(train_blocks, train_sampler), loader(val_blocks, val_sampler)


def load_token_data(config: TrainingConfig, workspace: Workspace | None = None,
                    tokenizer: Tokenizer | None = None) -> TokenData:
    """Text from config.data_source -> tokenizer -> one flat id stream per split.

    With a workspace the streams are tokenized batch by batch into a cache folder under
    workspace.datasets (see cache.py) and memory-mapped from there, and a second call with the
    same data settings opens them instead of tokenizing again. Without one nothing is kept on
    disk and the ids are held in RAM (2 or 4 bytes per token). ``tokenizer``: use this one
    instead of building one (a resumed run passes the tokenizer saved next to its checkpoints,
    so its ids keep their meaning even when the token cache is gone).
    """
    source = resolve_source(config, workspace)
    if source.kind == "cache":
        cached = read_cache(source.files[0])
        return _from_cache(cached, made_with(cached))
    key = cache_key(config, source)
    if workspace is not None and is_token_cache(workspace.datasets / key):
        return _from_cache(read_cache(workspace.datasets / key))

    known_entropy = None
    if source.kind == "synthetic":
        # The ids are the tokens: sampled chunk by chunk straight into the id files, the same
        # ids as tokenizing synthetic_text_data's rows, without the text.
        tokenizer = IdentityTokenizer(int(config.vocab_size))
        known_entropy = synthetic_chain(config).entropy_rate()
        dtype = stream_dtype(tokenizer.vocab_size)

        def fill(folder: Path) -> None:
            for split, (n, chunks) in synthetic_id_chunks(config).items():
                write_ids(chunks, split_path(folder, split), dtype, n, f"Sampling {split}")
    elif streams_from_hub(source, config):
        tokenizer, fill = _stream_fill(config, source, tokenizer)
    else:
        texts = read_source(source, config)
        if tokenizer is None:
            train_text = texts["train"]
            batches = (b["text"] for b in train_text.iter(batch_size=1000))
            tokenizer = build_tokenizer(config, batches)

        def fill(folder: Path) -> None:
            for split in SPLITS:
                encode_split(texts[split], tokenizer, split_path(folder, split),
                             f"Tokenizing {split}")

    folder = None
    if workspace is None:
        train, val = fill_in_memory(fill, tokenizer.vocab_size)
        print(f"tokenized {train.size + val.size:,} tokens (not cached: no workspace)")
    else:
        meta = {"source": source.describe(), "fields": key_fields(config, source),
                "tokenizer": repr(tokenizer), "known_entropy": known_entropy}
        folder = write_cache(workspace.datasets, key, fill, tokenizer, meta)
        cached = read_cache(folder)
        train, val = cached.train, cached.val
        print(f"tokenized {train.size + val.size:,} tokens, cached at {folder}")
    return TokenData(
        train_ids=train,
        val_ids=val,
        tokenizer=tokenizer,
        known_entropy=known_entropy,
        source=source.describe(),
        cache_path=folder,
        from_cache=False,
    )


def _stream_fill(config: TrainingConfig, source: Source, tokenizer: Tokenizer | None
                 ) -> tuple[Tokenizer, Callable[[Path], None]]:
    """A Hub dataset too large to download whole, streamed (max_tokens > 0): the train split is
    tokenized straight into the token file until max_tokens ids, the validation split (or, when
    there is none, the head of the train split, which training then skips) until
    `stream_budget`'s bound. Only the rows those ids need are read."""
    hub = open_hub_stream(source, config)
    n_train, n_val = stream_budget(config)
    if tokenizer is None:  # bpe and char learn from the stream's head; the others read nothing
        chars = min(TOKENIZER_SAMPLE_CHARS, max(4 * n_train, 1 << 20))
        tokenizer = build_tokenizer(config, hub.rows(hub.train_split).texts(chars))
    tok = tokenizer

    def fill(folder: Path) -> None:
        train_rows = hub.rows(hub.train_split)
        val_rows = train_rows if hub.val_split is None else hub.rows(hub.val_split)
        got_val = encode_split(val_rows, tok, split_path(folder, "validation"),
                               "Streaming validation", max_ids=n_val)
        got_train = encode_split(train_rows, tok, split_path(folder, "train"),
                                 "Streaming train", max_ids=n_train)
        val_from = (f"the {hub.val_split!r} split" if hub.val_split else
                    f"the first {val_rows.pulled:,} rows of {hub.train_split!r}")
        short = "" if got_train >= n_train else " (the split ended before max_tokens)"
        print(f"Streamed {source.describe()} (max_tokens={n_train:,}, not downloaded whole): "
              f"{got_train:,} train ids from {hub.train_split!r}{short}, {got_val:,} validation "
              f"ids from {val_from}.")

    return tokenizer, fill


def _from_cache(cached: CachedTokens, settings: dict[str, Any] | None = None) -> TokenData:
    meta = cached.meta
    print(f"loaded cached tokens from {cached.path} ({cached.train.size:,} train / "
          f"{cached.val.size:,} val tokens)")
    return TokenData(
        train_ids=cached.train,
        val_ids=cached.val,
        tokenizer=cached.tokenizer,
        known_entropy=meta.get("known_entropy"),
        source=str(meta.get("source", cached.path)),
        cache_path=cached.path,
        from_cache=True,
        settings=dict(settings or {}),
    )
