"""What the notebook's cells call, and how to run the notebook without Colab.

Each helper here is a few lines of wiring that a cell would otherwise hold: choosing a data source
across several form cells, applying a training mode, showing tables. Keeping them here keeps the
cells thin and tested. ``run_notebook`` executes ``training.ipynb`` with a real Jupyter kernel
after filling in ``@param`` values, exactly as a person editing the forms would.
"""

from __future__ import annotations

import ast
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .training_config import MODES, ConfigError, TrainingConfig, mode_for_epochs

PARAM_LINE = re.compile(r"^(?P<name>[A-Za-z_]\w*) = (?P<value>.+?)(?P<rest>  # @param .+)$")


def show(obj: Any) -> None:
    """Display in a notebook (figures, tables, HTML cards); print elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython ships with the dev and Colab installs
        print(obj)
        return
    if get_ipython() is not None:
        display(obj)
    else:
        print(obj)


# ---------------------------------------------------------------------- data source cells


class DataChoice:
    """The data source picked in the first data cell; the later cells each ``use`` their source
    and only the chosen one does any work, so *Run all* runs every cell without surprises.

    ``max_samples`` and ``text_column`` are chosen beside the source because every source uses
    them: a CSV from Drive or an upload has columns just as a Hub dataset has."""

    def __init__(self, source: str, max_samples: int = 0, text_column: str = "") -> None:
        from .training_config import DATA_SOURCES

        if source not in DATA_SOURCES:
            raise ConfigError([f"data_source = {source!r}: choose one of {', '.join(DATA_SOURCES)}"])
        self.source = source
        self.settings: dict[str, Any] = {"data_source": source, "max_samples": max_samples,
                                         "text_column": str(text_column).strip()}

    def use(self, source: str, workspace: Any = None, preview: bool = True, *,
            ask_again: bool = False, **settings: Any) -> None:
        """``ask_again`` (the upload cell's upload_new): open the upload dialog even though an
        earlier upload is kept."""
        if source != self.source:
            print(f"Skipped: data_source is {self.source!r}.")
            return
        self.settings.update(settings)
        if source == "upload":
            from .data.sources import find_upload

            # Resolved once, here: the later cells (estimate, training, search) then read this
            # file instead of each looking for "the newest upload" again.
            kept = find_upload(workspace, str(self.settings.get("data_path", "")),
                               ask_again=ask_again, field="upload_path")
            self.settings["data_path"] = str(kept)
        if preview:
            self.preview(workspace)

    def preview(self, workspace: Any = None, rows: int = 3) -> None:
        """Load the text now so a wrong path or column fails here, next to its form."""
        from .data.sources import read_source, resolve_source

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

    def _use_cache(self, folder: Any) -> None:
        """Cached tokens bring their tokenizer: the config takes its kind and vocab_size (over
        the form's) so what is saved and logged is what trains."""
        from .data.cache import made_with, read_cache

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


def show_recent_runs(db: Any, limit: int = 10) -> None:
    runs = db.list_runs(limit=limit)
    if runs.empty:
        print("No runs yet: this will be the first in the experiment history.")
    else:
        show(runs)


# ---------------------------------------------------------------------- results cells


def export_run(session: Any, download: bool = True) -> Path:
    """Bundle (weights, config, tokenizer, README) and a zip with the dashboard and metrics."""
    from .export import download as start_download
    from .export import export_archive

    archive = export_archive(session, session.workspace, session.db)
    print(f"Archive: {archive}")
    if download:
        start_download(archive)
    return archive


def show_run_comparison(db: Any, last: int = 5) -> None:
    """The last runs side by side: a table of what differed and their validation curves."""
    from .dashboard import plot_run_comparison
    from .export import run_comparison_table

    runs = db.list_runs(limit=last)
    if runs.empty:
        print("No runs to compare yet.")
        return
    table = run_comparison_table(db, last=last)
    caveat = table.attrs.get("caveat")  # runs with different tokenizers
    if caveat:
        print(f"Caution: {caveat}")
    show(table)
    ids = list(runs["id"])[::-1]
    if len(ids) > 1:
        show(plot_run_comparison(db.compare_runs(ids), caveat=caveat))


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
    from .session import TrainingSession

    session = TrainingSession.create(search.best_config, workspace, db=db)
    session.fit()
    return session


# ---------------------------------------------------------------------- running the notebook


def set_params(source: str, values: Mapping[str, Any]) -> tuple[str, set[str]]:
    """Replace the literal of each ``name = value  # @param`` line named in ``values``."""
    used: set[str] = set()
    lines = []
    for line in source.splitlines():
        match = PARAM_LINE.match(line)
        if match and match["name"] in values:
            old = ast.literal_eval(match["value"])
            new = _coerce(match["name"], values[match["name"]], old)
            line = f"{match['name']} = {new!r}{match['rest']}"
            used.add(match["name"])
        lines.append(line)
    return "\n".join(lines), used


class _Echo:
    """Prints a running notebook to a terminal as the kernel sends it: each code cell's title
    when the cell starts, then its printed lines (stdout and stderr) and errors as they arrive.

    Printing the title first also puts anything the kernel's child processes write straight to
    the terminal (W&B's service does) under the cell that was running, not the one before it.
    """

    def __init__(self) -> None:
        self.partial: dict[str, str] = {}  # stream name -> text after its last newline

    def start(self, cell: Any, cell_index: int, **_: Any) -> None:
        self.flush()
        if cell.cell_type != "code":
            return
        first = cell.source.strip().splitlines()[0] if cell.source.strip() else f"cell {cell_index}"
        print(f"[{first.removeprefix('# @title ').split(' {')[0]}]", flush=True)

    def message(self, msg: Mapping[str, Any]) -> None:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            name = content.get("name", "stdout")
            text = self.partial.pop(name, "") + content.get("text", "")
            *lines, rest = text.split("\n")
            for line in lines:
                self._line(line)
            if rest:
                self.partial[name] = rest
        elif kind == "error":
            self.flush()
            print(f"    {content.get('ename')}: {content.get('evalue')}", flush=True)

    def flush(self, **_: Any) -> None:
        for rest in self.partial.values():
            self._line(rest)
        self.partial.clear()

    @staticmethod
    def _line(line: str) -> None:
        # A carriage return redraws the line (a text progress bar): show what it ended as.
        shown = line.rsplit("\r", 1)[-1].rstrip()
        print(f"    {shown}", flush=True)


def _client(nb: Any, echo: bool, **kwargs: Any) -> Any:
    """nbclient's NotebookClient; with ``echo``, one that prints each output message the moment
    it arrives (its ``output`` handler runs once per message), not when the cell ends."""
    from nbclient import NotebookClient

    if not echo:
        return NotebookClient(nb, **kwargs)
    printer = _Echo()

    class EchoingClient(NotebookClient):
        def output(self, outs: list[Any], msg: dict[str, Any], display_id: str | None,
                   cell_index: int) -> Any:
            out = super().output(outs, msg, display_id, cell_index)
            printer.message(msg)
            return out

    # on_cell_executed runs once the cell's last output is in (on_cell_complete, despite its
    # name, runs as soon as the code is sent).
    return EchoingClient(nb, on_cell_start=printer.start, on_cell_executed=printer.flush,
                         **kwargs)


def _coerce(name: str, value: Any, old: Any) -> Any:
    """Give a ``--set`` string the type of the form field it replaces."""
    if not isinstance(value, str) or isinstance(old, str):
        return value
    try:
        if isinstance(old, bool):
            lowered = value.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return lowered in ("true", "1", "yes")
        if isinstance(old, int):
            return int(value)
        if isinstance(old, float):
            return float(value)
    except ValueError as exc:
        takes = ("true or false (or yes/no, 1/0)" if isinstance(old, bool)
                 else "a whole number" if isinstance(old, int) else "a number")
        example = str(old).lower() if isinstance(old, bool) else repr(old)
        raise ConfigError(
            [f"{name} = {value!r}: the form field takes {takes}, e.g. --set {name}={example}"],
            header="Bad --set value",
        ) from exc
    return value


def parse_sets(pairs: list[str] | None) -> dict[str, str]:
    values = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError([f"{pair!r}: write --set name=value"], header="Bad --set value")
        values[name.strip()] = value
    return values


def run_notebook(
    notebook: str | Path,
    values: Mapping[str, Any] | None = None,
    output: str | Path | None = None,
    timeout: int = 1800,
    cwd: str | Path | None = None,
    echo: bool = False,
) -> Path:
    """Execute the notebook top to bottom with a real kernel and save the executed copy.
    ``echo`` prints each cell's title when it starts and its printed output as it arrives
    (for terminals: a 14-minute training cell shows its epochs as they finish)."""
    import nbformat
    from nbclient.exceptions import CellExecutionError

    notebook = Path(notebook)
    nb = nbformat.read(notebook, as_version=4)
    values = dict(values or {})
    used: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source, found = set_params(cell.source, values)
            used |= found
    unknown = set(values) - used
    if unknown:
        raise ConfigError([f"{name}: no form field of that name in {notebook.name}"
                           for name in sorted(unknown)], header="Bad --set value")
    output = Path(output) if output else notebook.with_name(notebook.stem + ".executed.ipynb")
    client = _client(nb, echo, timeout=timeout, kernel_name="python3",
                     resources={"metadata": {"path": str(cwd or notebook.parent)}})
    started = time.monotonic()
    try:
        client.execute()
    except CellExecutionError:
        nbformat.write(nb, output)
        print(f"A cell failed; the executed notebook (with the error) is at {output}")
        raise
    nbformat.write(nb, output)
    print(f"Executed {notebook.name} in {time.monotonic() - started:.0f}s -> {output}")
    return output
