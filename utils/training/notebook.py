"""What the notebook's cells call.

Each helper here is a few lines of wiring that a cell would otherwise hold: choosing a data source
across several form cells, applying a training mode, exporting a run, showing a search. Keeping
them here keeps the cells thin and tested. Running the notebook headless is notebook_run.py's job;
the history's tables and figures are history.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .data.cache import made_with, read_cache
from .data.sources import read_source, resolve_source
from .data.uploads import find_upload
from .export import download as start_download
from .export import export_archive
from .plot_style import show
from .run import TrainingSession
from .training_config import DATA_SOURCES, MODES, ConfigError, TrainingConfig, mode_for_epochs
from .workspace import Workspace

# ---------------------------------------------------------------------- data source cells


class DataChoice:
    """The data source picked in the first data cell; the later cells each ``use`` their source
    and only the chosen one does any work, so *Run all* runs every cell without surprises.

    ``max_samples`` and ``text_column`` are chosen beside the source because every source uses
    them: a CSV from Drive or an upload has columns just as a Hub dataset has."""

    def __init__(self, source: str, max_samples: int = 0, text_column: str = "") -> None:
        if source not in DATA_SOURCES:
            raise ConfigError([f"data_source = {source!r}: choose one of {', '.join(DATA_SOURCES)}"])
        self.source = source
        self.settings: dict[str, Any] = {"data_source": source, "max_samples": max_samples,
                                         "text_column": str(text_column).strip()}

    def use(self, source: str, workspace: Workspace | None = None, preview: bool = True, *,
            ask_again: bool = False, **settings: Any) -> None:
        """``ask_again`` (the upload cell's upload_new): open the upload dialog even though an
        earlier upload is kept."""
        if source != self.source:
            print(f"Skipped: data_source is {self.source!r}.")
            return
        self.settings.update(settings)
        if source == "upload":
            # Resolved once, here: the later cells (estimate, training, search) then read this
            # file instead of each looking for "the newest upload" again.
            kept = find_upload(workspace, str(self.settings.get("data_path", "")),
                               ask_again=ask_again, field="upload_path")
            self.settings["data_path"] = str(kept)
        if preview:
            self.preview(workspace)

    def preview(self, workspace: Workspace | None = None, rows: int = 3) -> None:
        """Load the text now so a wrong path or column fails here, next to its form."""
        config = TrainingConfig().replace(**self.settings)
        source = resolve_source(config, workspace)
        if source.kind == "cache":
            self._use_cache(source.files[0])
            return
        texts = read_source(source, config)
        sizes = ", ".join(f"{split}: {len(ds):,} rows" for split, ds in texts.items())
        print(f"Data source {self.source!r}, {source.describe()}: {sizes}")
        for text in texts["train"][:rows]["text"]:
            snippet = " ".join(str(text).split())[:100]
            print(f"  | {snippet}")

    def _use_cache(self, folder: Path) -> None:
        """Cached tokens bring their tokenizer: the config takes its kind and vocab_size (over
        the form's) so what is saved and logged is what trains."""
        cached = read_cache(folder)
        fixed = made_with(cached)
        self.settings.update(fixed)
        print(f"Data source {self.source!r}: cached tokens at {cached.path}: "
              f"{cached.train.size:,} train / {cached.val.size:,} validation tokens, made with "
              f"tokenizer {fixed['tokenizer']!r} (vocab_size {fixed['vocab_size']:,}); the run "
              "uses that tokenizer, whatever cell 3.1 says.")


# ---------------------------------------------------------------------- configuration cells


def apply_mode(config: TrainingConfig, mode: str, epochs: int = 0) -> TrainingConfig:
    """A mode's default number of epochs, or the user's own; says so when they disagree."""
    if mode not in MODES:
        raise ConfigError([f"mode = {mode!r}: choose one of {', '.join(MODES)}"])
    if epochs <= 0:
        epochs = TrainingConfig.preset(mode).epochs
    config = config.replace(epochs=epochs)
    if mode_for_epochs(epochs) != mode:
        print(f"Note: {epochs} epochs is {mode_for_epochs(epochs)!r} mode, not {mode!r}.")
    return config


# ---------------------------------------------------------------------- results cells


def export_run(session: TrainingSession, download: bool = True) -> Path:
    """Bundle (weights, config, tokenizer, README) and a zip with the dashboard and metrics."""
    archive = export_archive(session, session.workspace, session.db)
    print(f"Archive: {archive}")
    if download:
        start_download(archive)
    return archive


def show_search_results(search: Any, *, train_best: bool = False, workspace: Any = None,
                        db: Any = None) -> Any:
    """Trials table and Optuna's plots; optionally train the best configuration for real."""
    if search is None:
        print("No search this time (tick run_search_now in 8.1 to run one).")
        return None
    show(search.trials)
    for figure in search.figures().values():
        show(figure)
    if not train_best:
        print(f"Best: {search.summary()}\nTick train_best to train {search.best_config.run_name!r}.")
        return None
    session = TrainingSession.create(search.best_config, workspace, db=db)
    session.fit()
    return session

