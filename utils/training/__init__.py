"""Train a transformer from a Colab notebook (or a shell) on a tested library.

The public names, nothing else; see DESIGN.md for what each floor of the package does.
"""

from .checkpoints import CheckpointError, CheckpointManager, load_checkpoint, seed_everything
from .data import (
    ByteTokenizer,
    DataError,
    MarkovChain,
    TokenData,
    load_token_data,
    make_dataloaders,
)
from .hardware import Precision, choose_precision
from .models import GPT, GPTConfig, build_model, generate
from .pipeline import Prepared, prepare, train
from .trainer import Callback, Trainer, TrainingDivergedError, TrainingResult
from .training_config import ConfigError, TrainingConfig
from .workspace import Workspace

__all__ = [
    "GPT",
    "ByteTokenizer",
    "Callback",
    "CheckpointError",
    "CheckpointManager",
    "ConfigError",
    "DataError",
    "GPTConfig",
    "MarkovChain",
    "Precision",
    "Prepared",
    "TokenData",
    "Trainer",
    "TrainingConfig",
    "TrainingDivergedError",
    "TrainingResult",
    "Workspace",
    "build_model",
    "choose_precision",
    "generate",
    "load_checkpoint",
    "load_token_data",
    "make_dataloaders",
    "prepare",
    "seed_everything",
    "train",
]
