"""Train a transformer from a Colab notebook (or a shell) on a tested library.

The public names, nothing else; see DESIGN.md for what each floor of the package does. Names are
imported on first use (PEP 562), so importing one light module (the config, the plots) does not
pull in torch, datasets and optuna, and the command line starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "apply_budget": ".notebook",
    "apply_mode": ".notebook",
    "build_model": ".models",
    "build_tokenizer": ".data",
    "ByteTokenizer": ".data",
    "Callback": ".callbacks",
    "CheckpointError": ".checkpoints",
    "CheckpointManager": ".checkpoints",
    "choose_precision": ".hardware",
    "comparison_table": ".history",
    "ConfigError": ".training_config",
    "DataChoice": ".notebook",
    "DataError": ".data",
    "download": ".export",
    "estimate_training_time": ".run",
    "ExperimentDB": ".experiment_db",
    "ExperimentDBError": ".experiment_db",
    "export_archive": ".export",
    "export_bundle": ".export",
    "export_run": ".notebook",
    "export_summary": ".export",
    "ExportedModel": ".models",
    "ExportError": ".export",
    "generate": ".models",
    "GPT": ".models",
    "GPTConfig": ".models",
    "init_wandb": ".wandb_setup",
    "LivePlotter": ".live_plotting",
    "load_bundle": ".export",
    "load_checkpoint": ".checkpoints",
    "load_exported_model": ".models",
    "load_text_data": ".data",
    "load_token_data": ".data",
    "load_tokenizer": ".data",
    "make_dataloaders": ".data",
    "MarkovChain": ".data",
    "MetricsTracker": ".metrics_tracker",
    "model_from_config": ".models",
    "ModelLoadError": ".models",
    "plot_run_comparison": ".history",
    "Precision": ".hardware",
    "prepare": ".run",
    "Prepared": ".run",
    "run_comparison_table": ".history",
    "run_notebook": ".notebook_run",
    "run_search": ".search",
    "SearchError": ".search",
    "SearchResult": ".search",
    "SearchSpaceError": ".search",
    "seed_everything": ".checkpoints",
    "setup_wandb": ".wandb_setup",
    "show_recent_runs": ".history",
    "show_run_comparison": ".history",
    "show_search_results": ".notebook",
    "TimeEstimate": ".run",
    "TokenData": ".data",
    "Trainer": ".trainer",
    "TrainingConfig": ".training_config",
    "TrainingDashboard": ".dashboard",
    "TrainingDivergedError": ".trainer",
    "TrainingOutOfMemoryError": ".hardware",
    "TrainingResult": ".trainer",
    "TrainingSession": ".run",
    "validate_config": ".run",
    "Workspace": ".workspace",
}

def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = sorted(_WHERE)
