"""Data: sources -> token ids -> LM blocks -> resumable DataLoaders."""

from .errors import DataError
from .loaders import (
    BlockDataset,
    ResumableBatchSampler,
    TokenData,
    load_token_data,
    make_dataloaders,
    pack_blocks,
)
from .synthetic import MarkovChain, synthetic_token_data
from .text import local_token_data, read_local_texts
from .tokenizer import ByteTokenizer, IdentityTokenizer, Tokenizer, load_tokenizer

__all__ = [
    "BlockDataset",
    "ByteTokenizer",
    "DataError",
    "IdentityTokenizer",
    "MarkovChain",
    "ResumableBatchSampler",
    "TokenData",
    "Tokenizer",
    "load_token_data",
    "load_tokenizer",
    "local_token_data",
    "make_dataloaders",
    "pack_blocks",
    "read_local_texts",
    "synthetic_token_data",
]
