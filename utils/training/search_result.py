"""A stored study: where it lives, reopening it, and what it found.

Kept apart from ``search.py`` (which runs studies) because a study is also what
``load_search`` reopens days later, in a session that never ran a trial. Where a study lives
(:func:`open_storage`): by default ``<workspace>/search/<study>.db``, live on local disk and
copied to Drive (:class:`~.workspace.LiveSQLite`); or, for several workers, a storage named
directly (:data:`STORAGE_FORMS`): a SQLite file for one machine, Optuna's journal file for a
shared file system, a PostgreSQL or MySQL server for several machines. What it found:
:class:`SearchResult`, as settings, a config to train, a table and figures.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
import sqlite3
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import sqlalchemy
from matplotlib.ticker import MaxNLocator
from optuna.storages._heartbeat import BaseHeartbeat  # what RDBStorage's heartbeat implements
from optuna.trial import TrialState

from . import metric_names as M
from .plot_style import epoch_axis
from .search_space import SearchError, apply_params
from .training_config import TrainingConfig
from .workspace import LiveSQLite, UnsafeNameError, Workspace, atomic_write

try:
    from optuna.storages.journal import JournalFileBackend
except ImportError:  # Optuna 3.x named it JournalFileStorage
    from optuna.storages import JournalFileStorage as JournalFileBackend

SEARCH_DIR = "search"  # <workspace>/search/<study>.db and results/search/<study>/*.png
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A trial's user attr, and how tables show that failed trial: the status its DB run gets too.
INTERRUPTED = M.INTERRUPTED
# A trial's user attr: created by a worker when other workers already had the total in hand,
# and ended at once (failed, shown as "skipped"); it never trained and has no DB run.
SKIPPED = "skipped"
HEARTBEAT_SECONDS = 60  # a worker that stops beating for GRACE_SECONDS left a zombie trial
GRACE_SECONDS = 180
SQLITE_TIMEOUT = 60  # seconds a worker waits for another's SQLite write lock before failing
STORAGE_FORMS = (
    "sqlite:///search/<study>.db: a SQLite file in the workspace (path relative to it), for "
    "several workers on one machine",
    "journal:search/<study>.journal: Optuna's journal file in the workspace, for workers on "
    "several machines that share a file system such as NFS",
    "postgresql+psycopg2://user:password@host/database or "
    "mysql+pymysql://user:password@host/database: a database server, for workers on several "
    "machines",
)
_SERVER_RE = re.compile(r"(postgresql|mysql|mariadb)(\+\w+)?://.+")
_DRIVERS = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'",
            "MySQLdb": "mysqlclient", "pymysql": "pymysql", "mariadb": "mariadb"}


# --------------------------------------------------------------------------- storage


def study_path(workspace: Workspace, study_name: str) -> Path:
    """Where the study's file lives in the workspace (on Drive: the copy that survives)."""
    return workspace.path_in(SEARCH_DIR, study_name, ".db", what="study name")


def _files(workspace: Workspace, study_name: str) -> LiveSQLite:
    """The study's live file (local disk) and its kept copy (the workspace, maybe Drive)."""
    return LiveSQLite.in_workspace(workspace, study_path(workspace, study_name))


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's INFO lines and experimental-feature warnings are noise next to our own lines."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(previous)


@dataclass
class StudyStorage:
    """Where one study lives: Optuna's storage and, for the default study file, its live copy
    and the kept copy (on Drive) that :meth:`sync` refreshes after every trial."""

    storage: optuna.storages.BaseStorage
    where: str  # for messages: a path, or a server URL without its password
    files: LiveSQLite | None = None
    sqlite: Path | None = None  # the SQLite file Optuna opens, if it is one
    machines: str = "one"  # who may share it: "one" machine, or "several"

    def sync(self) -> None:
        if self.files is not None:
            self.files.backup()  # consistent even while another worker writes to it

    def creation_lock(self) -> contextlib.AbstractContextManager:
        """Workers creating one SQLite study at the same moment can crash (FACTS.md): they
        take turns. Servers and journal files handle that themselves."""
        if self.sqlite is None:
            return contextlib.nullcontext()
        return LiveSQLite(self.sqlite, self.sqlite).creation_lock()


def _bad_storage(spec: str | None, why: str) -> SearchError:
    """A storage that cannot be used; ``spec`` None: the default study file."""
    if spec is None:
        return SearchError(f"The search study file cannot be used: {why}. Move it away (or "
                           "pass another study name) and run again.")
    shown = re.sub(r"//[^/]*@", "//***@", spec)  # never print a password
    forms = "\n".join(f"  {form}" for form in STORAGE_FORMS)
    return SearchError(f"storage {shown!r}: {why}. Accepted forms:\n{forms}")


def check_storage(spec: str | None) -> tuple[str, str] | None:
    """``(kind, rest)`` for a storage spec: ("sqlite" | "journal", path) or ("server", URL);
    None for the default. Only the form is judged here (before a workspace exists); the path
    is judged against the workspace by :func:`open_storage`."""
    if spec is None:
        return None
    text = str(spec).strip()
    if text.startswith("sqlite:"):
        kind, rest = "sqlite", text.removeprefix("sqlite:")
        if not rest.startswith("///"):
            raise _bad_storage(text, "a SQLite URL is sqlite:/// followed by a file path")
        rest = rest[3:]
    elif text.startswith("journal:"):
        kind, rest = "journal", text.removeprefix("journal:").removeprefix("//")
    elif _SERVER_RE.fullmatch(text):
        return "server", text
    else:
        why = ("SQLAlchemy spells it postgresql://" if text.startswith("postgres://")
               else "not a storage this search can use")
        raise _bad_storage(text, why)
    if not rest or rest == ":memory:" or "?" in rest:
        raise _bad_storage(text, "name a file (an in-memory study cannot be shared, and a URL "
                           "takes no ?options here)")
    if ".." in Path(rest).parts:
        raise _bad_storage(text, "the file must stay inside the workspace (no '..')")
    return kind, rest


def _workspace_file(workspace: Workspace | None, spec: str, kind: str, rest: str) -> Path:
    """The file a sqlite:/journal: spec names: inside the workspace, never on Drive."""
    if workspace is None:
        raise _bad_storage(spec, "a file storage lives in a workspace: pass one (run_search's "
                           "workspace=, or --workspace)")
    if workspace.on_drive:
        raise _bad_storage(spec, "the workspace is on Google Drive, where SQLite locking is "
                           "unreliable and Drive does not merge two machines' writes to one file."
                           " Leave the storage out (the study then lives on local disk and is "
                           "copied to Drive after every trial), or use a database server")
    path = Path(rest) if Path(rest).is_absolute() else workspace.root / rest
    if not path.resolve().is_relative_to(workspace.root.resolve()):
        raise _bad_storage(spec, f"{path} is not inside the workspace {workspace.root}; give a "
                           "path relative to it")
    try:
        path = workspace.path_in(path.parent, path.name, what=f"{kind} file name")
    except UnsafeNameError as exc:
        raise _bad_storage(spec, str(exc)) from None
    if path.resolve() == workspace.db_path.resolve():
        raise _bad_storage(spec, f"{path} is the experiment history; name another file")
    if path.is_dir():
        raise _bad_storage(spec, f"{path} is a folder; name a file in it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _check_sqlite_file(path: Path, spec: str | None) -> None:
    """Refuse a file that is not an Optuna study before Optuna adds its tables to it."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as handle:
        if handle.read(16) != b"SQLite format 3\x00":
            raise _bad_storage(spec, f"{path} is not a SQLite database; name another file")
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=SQLITE_TIMEOUT)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master "
                                                 "WHERE type = 'table'")}
    finally:
        conn.close()
    if tables and "alembic_version" not in tables:
        raise _bad_storage(spec, f"{path} holds other tables ({', '.join(sorted(tables)[:5])}),"
                           " not an Optuna study; name another file")


def _check_journal_file(path: Path, spec: str) -> None:
    """Refuse a file that is not an Optuna journal before Optuna appends to it."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as handle:
        first = handle.readline(4096)
    try:
        ours = "op_code" in json.loads(first)
    except (ValueError, TypeError):
        ours = False
    if not ours:
        raise _bad_storage(spec, f"{path} is not an Optuna journal file; name another file")


def _sqlite(path: Path, spec: str | None) -> optuna.storages.RDBStorage:
    # The heartbeat marks a trial whose worker died (a disconnect mid-trial) as failed, so it
    # is retried instead of sitting in "running" forever. The timeout makes workers queue for
    # the write lock instead of failing with "database is locked". Under the lock, another
    # worker's half-created tables are never seen (FACTS.md: creating them at once can crash).
    try:
        with LiveSQLite(path, path).creation_lock(), quiet_optuna():
            _check_sqlite_file(path, spec)
            return optuna.storages.RDBStorage(
                f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT}},
                heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise _bad_storage(spec, f"{path} cannot be used as a study ({_first_line(exc)})") from None


class _JournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with the heartbeat its RDB storage has: without one, a trial
    whose worker died (a lost machine, a kill) stays "running" for ever and keeps its place in
    ``n_trials``. The beat is a trial system attribute in each worker's wall-clock time, so
    machines sharing the file need clocks within ``GRACE_SECONDS`` of each other (NTP does)."""

    _BEAT = "search:heartbeat"

    def __init__(self, path: Path) -> None:
        super().__init__(JournalFileBackend(str(path)))
        self._interval, self._grace = HEARTBEAT_SECONDS, GRACE_SECONDS

    def record_heartbeat(self, trial_id: int) -> None:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            self.set_trial_system_attr(trial_id, self._BEAT, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return [t._trial_id for t in running
                if now - t.system_attrs.get(self._BEAT, now) > self._grace]

    def get_heartbeat_interval(self) -> int | None:
        return self._interval

    def get_heartbeat_stale_trial_callback(self) -> None:
        return None

    def get_failed_trial_callback(self) -> None:  # Optuna < 4.9's name for the above
        return None


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def _server(url: str) -> optuna.storages.RDBStorage:
    """A PostgreSQL/MySQL study database. Workers started together may race to create its
    tables; the loser's error is retried once the tables exist."""
    try:
        shown = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError as exc:
        raise _bad_storage(url, f"not a database URL ({exc})") from None
    for attempt in range(5):
        try:
            with quiet_optuna():
                return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS,
                                                  grace_period=GRACE_SECONDS)
        except ImportError as exc:
            module = getattr(exc.__cause__, "name", None) or getattr(exc, "name", None) or "?"
            package = _DRIVERS.get(module, module)
            raise SearchError(f"storage {shown}: its database driver ({module}) is not "
                              f"installed. Install it on every worker (pip install {package}) "
                              "and run again.") from None
        except (KeyError, IndexError, ValueError) as exc:  # Optuna formats the URL with {}
            raise _bad_storage(shown, f"the URL could not be read ({exc}); percent-encode "
                               "characters such as { } @ : / in the password") from None
        except sqlalchemy.exc.SQLAlchemyError as exc:
            text = _first_line(exc)
            racing = any(s in text.lower() for s in ("already exists", "duplicate", "unique"))
            if racing and attempt < 4:
                time.sleep(0.5 + random.random())
                continue
            raise SearchError(f"Cannot use the study database {shown}: {text}. Check that the "
                              "server is running and reachable from this machine, and the user, "
                              "password and database name; then run again.") from None
    raise AssertionError("unreachable")


def open_storage(workspace: Workspace | None, study_name: str,
                 storage: str | None = None) -> StudyStorage:
    """The study's storage: ``storage`` (see :data:`STORAGE_FORMS`) used directly, or by
    default the workspace's ``search/<study>.db`` (live on local disk, kept on Drive), or
    memory without a workspace."""
    parsed = check_storage(storage)
    if parsed is None:
        if workspace is None:
            return StudyStorage(optuna.storages.InMemoryStorage(), "memory (no workspace)")
        files = _files(workspace, study_name)
        files.live.parent.mkdir(parents=True, exist_ok=True)
        if files.restore():
            print(f"Restored search study {study_name!r} from {files.kept} to local disk.")
        return StudyStorage(_sqlite(files.live, None), str(files.kept), files, files.live)
    kind, rest = parsed
    if kind == "server":
        server = _server(rest)
        return StudyStorage(server, sqlalchemy.engine.make_url(rest).render_as_string(
            hide_password=True), machines="several")
    path = _workspace_file(workspace, str(storage), kind, rest)
    if kind == "sqlite":
        return StudyStorage(_sqlite(path, str(storage)), str(path), sqlite=path)
    _check_journal_file(path, str(storage))
    return StudyStorage(_JournalStorage(path), str(path), machines="several")


# --------------------------------------------------------------------------- the result


def state_name(trial: optuna.trial.FrozenTrial) -> str:
    """Optuna's state, except that a trial stopped by Ctrl-C (or not needed) says so instead
    of "fail"."""
    if trial.state == TrialState.FAIL and trial.user_attrs.get(INTERRUPTED):
        return INTERRUPTED
    if trial.state == TrialState.FAIL and trial.user_attrs.get(SKIPPED):
        return SKIPPED
    return trial.state.name.lower()


def format_params(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in values.items())


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial, target: int) -> str:
    """One line per finished trial: enough to follow a search without reading a table."""
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    state = state_name(trial)
    if trial.state == TrialState.PRUNED:
        epoch = trial.user_attrs.get("pruned_at_epoch") or trial.last_step
        state = f"pruned at epoch {epoch}"
    value = trial.value if trial.value is not None else (
        trial.intermediate_values.get(trial.last_step) if trial.last_step is not None else None)
    shown = f"val {value:.4f}" if value is not None else "no val loss"
    params = format_params(trial.user_attrs.get("config_changes", trial.params))
    seconds = trial.duration.total_seconds() if trial.duration else math.nan
    line = f"trial {trial.number} ({done}/{target}) {state}: {shown} | {params} | {seconds:.0f}s"
    with contextlib.suppress(ValueError):  # no completed trial yet
        line += f" | best {study.best_value:.4f} (trial {study.best_trial.number})"
    return line


@dataclass
class SearchResult:
    """A study and the config it searched around: best settings, trials table, figures."""

    study: optuna.Study
    base_config: TrainingConfig
    study_name: str
    workspace: Workspace | None = None
    interrupted: bool = False

    @property
    def still_running(self) -> int:
        """Trials running now (in other workers: this one's are done when it returns)."""
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    @property
    def has_completed(self) -> bool:
        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    @property
    def best_trial(self) -> optuna.trial.FrozenTrial:
        try:
            return self.study.best_trial
        except ValueError:
            raise SearchError(
                f"Study {self.study_name!r} has no completed trial yet (all were pruned, failed "
                "or not run): run the search again with more trials or a wider space."
            ) from None

    @property
    def best_value(self) -> float:
        return float(self.best_trial.value)

    @property
    def best_params(self) -> dict[str, Any]:
        """The settings the best trial trained with (n_heads included when it was adjusted)."""
        trial = self.best_trial
        return dict(trial.user_attrs.get("config_changes", trial.params))

    @property
    def best_config(self) -> TrainingConfig:
        """The base config with the best settings, full epochs, named ``<study>-best``."""
        config, _ = apply_params(self.base_config, self.best_params)
        return config.replace(run_name=f"{self.study_name}-best").validate()

    @property
    def trials(self) -> pd.DataFrame:
        rows = []
        for t in self.study.get_trials(deepcopy=False):
            rows.append({
                "number": t.number, "state": state_name(t), "value": t.value,
                **t.user_attrs.get("config_changes", t.params),
                "epochs": len(t.intermediate_values),
                "duration_s": t.duration.total_seconds() if t.duration else math.nan,
                "run_id": t.user_attrs.get("run_id"), "run_name": t.user_attrs.get("run_name"),
            })
        return pd.DataFrame(rows)

    def summary(self) -> str:
        counts = pd.Series([state_name(t) for t in self.study.trials]).value_counts()
        states = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no trials"
        line = f"Study {self.study_name!r}: {states}."
        try:
            best = self.best_trial
        except SearchError as exc:
            return f"{line}\n{exc}"
        return (f"{line}\nBest: trial {best.number}, val loss {best.value:.4f} with "
                f"{format_params(self.best_params)}.")

    def __str__(self) -> str:
        return self.summary()

    def figures(self) -> dict[str, Any]:
        """Optuna's matplotlib plots as {name: Figure}, labelled for this search (validation
        loss, whole epochs) instead of Optuna's generic "Objective Value" and "Step"; the ones
        the study cannot draw yet are left out with a printed reason. Optuna's global style
        change is undone afterwards."""
        import matplotlib
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ovm

        trials = self.study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        out: dict[str, Any] = {}
        with warnings.catch_warnings(), matplotlib.rc_context():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if complete:
                out["optimization_history"] = ovm.plot_optimization_history(self.study).figure
            else:
                print("No completed trial yet, so no optimisation history to plot.")
            varied = {k for t in complete for k in t.params
                      if len({json.dumps(u.params.get(k)) for u in complete}) > 1}
            if len(complete) >= 2 and varied:
                out["param_importances"] = ovm.plot_param_importances(self.study).figure
            else:
                print(f"Parameter importances need at least 2 completed trials with different "
                      f"settings (this study has {len(complete)} completed).")
            if any(t.intermediate_values for t in trials):
                out["intermediate_values"] = ovm.plot_intermediate_values(self.study).figure
            else:
                print("No trial reported a val loss yet, so no learning curves to plot.")
        _label(out, trials)
        for figure in out.values():
            plt.close(figure)  # detached from pyplot: a notebook shows them only when asked
        return out

    def save_figures(self, directory: str | Path | None = None, dpi: int = 120) -> dict[str, Path]:
        """PNG files, written atomically; default ``<workspace>/results/search/<study>/``."""
        if directory is None:
            if self.workspace is None:
                raise SearchError("save_figures() needs a directory when the search had no "
                                  "workspace")
            directory = self.workspace.path_in(self.workspace.results / SEARCH_DIR,
                                               self.study_name, what="study name")
        folder = Path(directory)
        saved = {}
        for name, figure in self.figures().items():
            saved[name] = atomic_write(folder / f"{name}.png", lambda tmp, f=figure: f.savefig(
                tmp, format="png", dpi=dpi, bbox_inches="tight"))
        return saved


def _label(figures: dict[str, Any], trials: list[optuna.trial.FrozenTrial]) -> None:
    """Say what Optuna's generic axes hold here: a trial's value is its best validation loss,
    and a trial reports once per epoch, so its steps are whole epochs."""
    if "optimization_history" in figures:
        ax = figures["optimization_history"].axes[0]
        ax.set_title("Validation loss of each trial (its best epoch)")
        ax.set_xlabel("trial")
        ax.set_ylabel("validation loss (lower is better)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _rename_legend(ax, {"Objective Value": "trial's validation loss",
                            "Best Value": "best so far"})
    if "param_importances" in figures:
        ax = figures["param_importances"].axes[0]
        ax.set_title("", loc="left")  # Optuna's title sits there
        ax.set_title("How much each setting mattered for validation loss")
        ax.set_xlabel("importance for validation loss (fANOVA; the bars sum to 1)")
        ax.set_ylabel("setting")
        if ax.get_legend() is not None:
            ax.get_legend().remove()  # one series, named "Objective Value": says nothing
    if "intermediate_values" in figures:
        ax = figures["intermediate_values"].axes[0]
        ax.set_title("Validation loss after each epoch, per trial")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation loss (lower is better)")
        epoch_axis(ax, [step for t in trials for step in t.intermediate_values])
        _rename_legend(ax, {f"Trial{t.number}": f"trial {t.number}" for t in trials})


def _rename_legend(ax: Any, names: dict[str, str]) -> None:
    """Rename legend entries (and their artists) in place, keeping Optuna's placement."""
    legend = ax.get_legend()
    if legend is None:
        return
    for text in legend.get_texts():
        text.set_text(names.get(text.get_text(), text.get_text()))
    for artist in [*ax.lines, *ax.collections, *ax.patches]:
        if artist.get_label() in names:
            artist.set_label(names[artist.get_label()])


def interrupted_message(study: optuna.Study, trials: list[int], n_trials: int,
                        kept: bool) -> str:
    """What Ctrl-C did to the search, and what running it again will do (nothing resumes)."""
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    if trials:
        files = "kept, but a new search will not use them" if kept else "deleted"
        what = (f"Search stopped during trial {trials[-1]}: that trial is recorded as failed "
                f"({INTERRUPTED}) and will not be continued (Optuna cannot resume a trial; its "
                f"checkpoints were {files}).")
    else:
        what = "Search stopped between trials."
    rerun = (f"Running the same call again starts new trials until {n_trials} are finished."
             if done < n_trials else "The planned trials are all finished.")
    return f"{what} {done} of {n_trials} trials are finished and kept. {rerun}"


def load_search(study_name: str, workspace: Workspace, storage: str | None = None) -> SearchResult:
    """Reopen a finished (or interrupted) search, e.g. in a new session: from the workspace's
    study file, or from ``storage`` when the search used one."""
    name = str(study_name)
    if storage is None:
        kept = study_path(workspace, name)
        if not kept.exists() and not _files(workspace, name).live.exists():
            found = sorted(p.stem for p in (workspace.root / SEARCH_DIR).glob("*.db"))
            raise SearchError(f"No search study {name!r} in {workspace.root / SEARCH_DIR}; "
                              f"studies there: {', '.join(found) or 'none'}")
    store = open_storage(workspace, name, storage)
    try:
        study = optuna.load_study(study_name=name, storage=store.storage)
    except KeyError:
        found = optuna.get_all_study_names(store.storage)
        raise SearchError(f"No search study {name!r} in {store.where}; studies there: "
                          f"{', '.join(found) or 'none'}") from None
    config = TrainingConfig.from_dict(study.user_attrs["base_config"])
    return SearchResult(study, config, name, workspace)
