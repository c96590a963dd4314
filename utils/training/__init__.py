"""Train a transformer from a Colab notebook (or a shell) on a tested library.

The public names, nothing else; see DESIGN.md for what each floor of the package does.
"""

from .callbacks import Callback
from .checkpoints import CheckpointError, CheckpointManager, load_checkpoint, seed_everything
from .dashboard import TrainingDashboard, comparison_table, plot_run_comparison
from .data import (
    ByteTokenizer,
    DataError,
    MarkovChain,
    TokenData,
    build_tokenizer,
    load_text_data,
    load_token_data,
    load_tokenizer,
    make_dataloaders,
)
from .experiment_db import ExperimentDB, ExperimentDBError
from .export import (
    ExportError,
    download,
    export_archive,
    export_bundle,
    export_summary,
    generate_text,
    load_bundle,
    run_comparison_table,
)
from .hardware import Precision, choose_precision
from .live_plotting import LivePlotter
from .metrics_tracker import MetricsTracker
from .models import (
    GPT,
    ExportedModel,
    GPTConfig,
    ModelLoadError,
    build_model,
    generate,
    load_exported_model,
    model_from_config,
)
from .notebook import (
    DataChoice,
    apply_mode,
    export_run,
    run_notebook,
    show_recent_runs,
    show_run_comparison,
    show_search_results,
)
from .pipeline import Prepared, prepare
from .search import SearchError, SearchResult, SearchSpaceError, run_search
from .session import TimeEstimate, TrainingSession, estimate_training_time
from .trainer import Trainer, TrainingDivergedError, TrainingResult
from .training_config import ConfigError, TrainingConfig
from .wandb_setup import init_wandb
from .workspace import Workspace

__all__ = [
    "GPT",
    "ByteTokenizer",
    "Callback",
    "CheckpointError",
    "CheckpointManager",
    "ConfigError",
    "DataChoice",
    "DataError",
    "ExperimentDB",
    "ExperimentDBError",
    "ExportError",
    "ExportedModel",
    "GPTConfig",
    "LivePlotter",
    "MarkovChain",
    "MetricsTracker",
    "ModelLoadError",
    "Precision",
    "Prepared",
    "SearchError",
    "SearchResult",
    "SearchSpaceError",
    "TimeEstimate",
    "TokenData",
    "Trainer",
    "TrainingConfig",
    "TrainingDashboard",
    "TrainingDivergedError",
    "TrainingResult",
    "TrainingSession",
    "Workspace",
    "apply_mode",
    "build_model",
    "build_tokenizer",
    "choose_precision",
    "comparison_table",
    "download",
    "estimate_training_time",
    "export_archive",
    "export_bundle",
    "export_run",
    "export_summary",
    "generate",
    "generate_text",
    "init_wandb",
    "load_bundle",
    "load_checkpoint",
    "load_exported_model",
    "load_text_data",
    "load_token_data",
    "load_tokenizer",
    "make_dataloaders",
    "model_from_config",
    "plot_run_comparison",
    "prepare",
    "run_comparison_table",
    "run_notebook",
    "run_search",
    "seed_everything",
    "show_recent_runs",
    "show_run_comparison",
    "show_search_results",
]
