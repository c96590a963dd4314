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
from .data.hub_stream import preview_hub
from .data.sources import read_source, resolve_source
from .data.text import count_rows, first_texts
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
        """Load the text now so a wrong path or column fails here, next to its form. A Hub
        dataset is streamed: only the rows shown are read, the download waits for training."""
        config = TrainingConfig().replace(**self.settings)
        source = resolve_source(config, workspace)
        if source.kind == "cache":
            self._use_cache(source.files[0])
            return
        if source.kind == "hub":
            head = preview_hub(source, config, rows)
            sizes, shown = f"{head.sizes}; the first rows, streamed", head.texts
        else:
            texts = read_source(source, config)
            sizes = ", ".join(f"{split}: {count_rows(ds)}" for split, ds in texts.items())
            shown = first_texts(texts["train"], rows)
        print(f"Data source {self.source!r}, {source.describe()}: {sizes}")
        for text in shown:
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


BUDGETS = ("epochs", "steps", "tokens")


def apply_budget(config: TrainingConfig, mode: str, budget: str = "epochs", amount: int = 0, *,
                 epochs: int = 0, eval_every_steps: int = 0) -> TrainingConfig:
    """Cell 3.2's one budget choice as config fields.

    ``epochs``: ``amount`` epochs, else ``epochs``, else the mode's default; no step or token
    budget. ``steps``/``tokens``: ``amount`` is ``max_steps``/``max_tokens`` and decides the
    run's length; ``epochs`` (else the mode's default) only caps it, so a big corpus never has
    to finish an epoch. ``eval_every_steps`` (0 = at each epoch end) applies to every budget."""
    problems = []
    if budget not in BUDGETS:
        problems.append(f"budget = {budget!r}: choose one of {', '.join(BUDGETS)}")
    if mode not in MODES:
        problems.append(f"mode = {mode!r}: choose one of {', '.join(MODES)}")
    for name, value in (("budget_amount", amount), ("epochs", epochs),
                        ("eval_every_steps", eval_every_steps)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(f"{name} = {value!r}: give a whole number >= 0")
    if not problems and budget != "epochs" and amount == 0:
        problems.append(f"budget_amount = 0: give the number of {budget} to train for, "
                        "or choose budget = 'epochs'")
    if not problems and budget == "epochs" and amount and epochs and amount != epochs:
        problems.append(f"budget_amount = {amount} but epochs = {epochs}: with budget = 'epochs' "
                        "give the number of epochs once (set the other to 0)")
    if problems:
        raise ConfigError(problems)
    if budget == "epochs":
        config = apply_mode(config, mode, epochs=amount or epochs)
        return config.replace(max_steps=0, max_tokens=0, eval_every_steps=eval_every_steps)
    cap = epochs or TrainingConfig.preset(mode).epochs
    config = config.replace(epochs=cap, eval_every_steps=eval_every_steps,
                            max_steps=amount if budget == "steps" else 0,
                            max_tokens=amount if budget == "tokens" else 0)
    when = f"every {eval_every_steps:,} steps" if eval_every_steps else "at each epoch end"
    print(f"Budget: {amount:,} {budget} (at most {cap} epochs); evaluation {when}.")
    return config


# ---------------------------------------------------------------------- results cells


def export_run(session: TrainingSession, download: bool = True) -> Path:
    """Bundle (weights, config, tokenizer, README) and a zip with the dashboard and metrics;
    then the command that carries this run on where one GPU is not enough."""
    archive = export_archive(session, session.workspace, session.db)
    print(f"Archive: {archive}")
    if download:
        start_download(archive)
    if session.workspace is not None:
        print(multi_gpu_command(session.config, session.workspace))
    return archive


def multi_gpu_command(config: TrainingConfig, workspace: Workspace) -> str:
    """How to carry this run on, on a machine with several GPUs: the same config, data cache,
    history and checkpoints, another launch command (README: "From Colab to a multi-GPU box")."""
    c = config
    per_step = c.batch_size * c.grad_accum_steps
    fewer = " (or divide grad_accum_steps by N)" if c.grad_accum_steps > 1 else ""
    return (
        f"\nTo go on with {c.run_name!r} on a machine with N GPUs: copy the folder "
        f"{workspace.root} there (its history, checkpoints and token cache carry on) and, from "
        "a checkout of this library, run\n"
        f"  torchrun --standalone --nproc_per_node N -m utils.training train "
        f"--config WORKSPACE/configs/{c.run_name}.json --workspace WORKSPACE\n"
        f"with WORKSPACE the copied folder. batch_size is per GPU: this run takes {per_step} "
        f"sequences a step, N GPUs would take {per_step} x N. To keep {per_step} (and resume "
        f"mid-epoch exactly), add --set batch_size={c.batch_size}/N{fewer}."
    )


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

