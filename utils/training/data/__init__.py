"""Data: sources -> text -> tokenizer -> token ids on disk (memmap) -> LM blocks -> resumable loaders."""

from .cache import cache_key, read_cache
from .errors import DataError
from .loaders import (
    BlockDataset,
    EpochSampler,
    ResumableBatchSampler,
    TokenData,
    count_blocks,
    load_token_data,
    make_dataloaders,
)
from .sources import Source, hub_reachable, is_token_cache, load_text_data, resolve_source
from .synthetic import MarkovChain, synthetic_text_data
from .tokenizer import (
    ByteTokenizer,
    CharTokenizer,
    HFTokenizer,
    IdentityTokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
    tokenizer_from_dict,
)

__all__ = [
    "BlockDataset",
    "ByteTokenizer",
    "CharTokenizer",
    "DataError",
    "EpochSampler",
    "HFTokenizer",
    "IdentityTokenizer",
    "MarkovChain",
    "ResumableBatchSampler",
    "Source",
    "TokenData",
    "Tokenizer",
    "build_tokenizer",
    "cache_key",
    "count_blocks",
    "hub_reachable",
    "is_token_cache",
    "load_text_data",
    "load_token_data",
    "load_tokenizer",
    "make_dataloaders",
    "read_cache",
    "resolve_source",
    "synthetic_text_data",
    "tokenizer_from_dict",
]
