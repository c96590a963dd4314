"""Where a search study lives, for one worker or many.

By default ``<workspace>/search/<study>.db``: Optuna's RDB storage on SQLite, live on the VM's
local disk and copied to Drive after every trial (:class:`~.workspace.LiveSQLite`), since SQLite
locking on Drive is unreliable. For several workers, a storage named directly
(:data:`STORAGE_FORMS`): a SQLite file for one machine, Optuna's journal file for a shared file
system, a PostgreSQL or MySQL server for several machines. File paths stay in the workspace.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import sqlite3
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages._heartbeat import BaseHeartbeat  # what RDBStorage's heartbeat implements
from optuna.trial import TrialState

from .search_space import SearchError
from .workspace import LiveSQLite, UnsafeNameError, Workspace

try:
    from optuna.storages.journal import JournalFileBackend
except ImportError:  # Optuna 3.x named it JournalFileStorage
    from optuna.storages import JournalFileStorage as JournalFileBackend

SEARCH_DIR = "search"  # <workspace>/search/<study>.db and results/search/<study>/*.png
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


def study_files(workspace: Workspace, study_name: str) -> LiveSQLite:
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
        files = study_files(workspace, study_name)
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
