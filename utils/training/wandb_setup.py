"""Weights & Biases: find the API key, start a run, and never let W&B hold training up.

``init_wandb`` always returns something with ``.log``, ``.summary``, ``.finish`` and ``.id``: a
real W&B run (online or offline) or, when tracking is off, a :class:`DisabledRun` that does
nothing. Callers never write ``if use_wandb:``.

Where the key comes from, in order: the ``WANDB_API_KEY`` environment variable, Colab's Secrets
(the key icon in Colab's left bar), ``~/.netrc`` (what ``wandb login`` writes), and only when a
person is at the keyboard a hidden prompt. No key, an empty answer, a headless run or no network
all mean *offline*: the run is written to disk and can be uploaded later with ``wandb sync``.
Before going online a 3 s probe checks that the W&B server answers, so no network costs seconds,
not W&B's retries, and W&B never reports a key "configured" for a run that then goes offline.

``setup_wandb`` runs in the notebook's W&B cell: it looks for the key there (asking there, if it
must), says whether runs will log online or offline and why, and keeps the key in memory for
``init_wandb``, which starts the run when training starts (the run needs the experiment DB row
and, on a resume, the W&B run id from the checkpoint, so it cannot start earlier).

The key is handed to ``wandb.init`` through its settings, so it is never printed, never written
to ``~/.netrc``, the config, the database or the W&B config, and never put into ``os.environ``
(where ``!env`` in a notebook would show it).
"""

from __future__ import annotations

import getpass
import netrc
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .network import answers
from .workspace import in_colab, notebook_kernel

if TYPE_CHECKING:
    from .training_config import TrainingConfig

KEY_ENV = "WANDB_API_KEY"
# Without a bound, wandb.init retries an unreachable server for about 100 s (FACTS.md). With
# init_timeout=15 and no network, init_wandb was offline and training after 26 s (measured).
INIT_TIMEOUT_S = 15.0
# Colab's userdata raises these; we cannot import the classes outside Colab, so we look them up
# on the module by name and catch only those.
_COLAB_SECRET_ERRORS = ("SecretNotFoundError", "NotebookAccessError", "TimeoutException")
_we_set_offline = False  # True when WANDB_MODE=offline in os.environ is our doing, not the user's
# The key setup_wandb found (and where from), kept in memory only, so that starting the run
# later neither asks again nor looks elsewhere. Never printed, never written.
_remembered: tuple[str, str] | None = None
PROBE_TIMEOUT_S = 3.0
DEFAULT_BASE_URL = "https://api.wandb.ai"


class DisabledRun:
    """The stand-in for a W&B run when tracking is off: what the tracker uses, doing nothing."""

    id: str | None = None
    step = 0

    def __init__(self) -> None:
        self.summary: dict[str, Any] = {}

    def log(self, data: dict[str, Any], step: int | None = None) -> None:
        pass

    def finish(self, exit_code: int | None = None) -> None:
        pass

    def __repr__(self) -> str:
        return "DisabledRun()"


def _say(message: str) -> None:
    print(f"W&B: {message}")


def _colab_secret() -> tuple[str | None, str | None]:
    """(key, None) from Colab's Secrets, or (None, why not); (None, None) outside Colab."""
    if not in_colab():
        return None, None
    try:
        from google.colab import userdata  # type: ignore[import-not-found]
    except ImportError:
        return None, None
    known = tuple(
        cls for cls in (getattr(userdata, name, None) for name in _COLAB_SECRET_ERRORS)
        if isinstance(cls, type) and issubclass(cls, BaseException)
    )
    try:
        value = userdata.get(KEY_ENV)
    except known as exc:
        kind = type(exc).__name__
        if kind == "SecretNotFoundError":
            return None, f"no {KEY_ENV} secret in Colab (add it under the key icon in the left bar)"
        if kind == "NotebookAccessError":
            return None, (f"this notebook has no access to the {KEY_ENV} secret (switch on "
                          "'Notebook access' for it under the key icon in the left bar)")
        return None, f"reading the {KEY_ENV} Colab secret failed ({kind})"
    value = (value or "").strip()
    return (value, None) if value else (None, f"the {KEY_ENV} Colab secret is empty")


def can_prompt() -> bool:
    """True only when someone can answer a prompt: a terminal on stdin, or a Jupyter/Colab
    kernel whose frontend accepts input (nbclient and papermill do not; getpass would raise
    StdinNotImplementedError there)."""
    kernel = notebook_kernel()
    if kernel is not None:
        return bool(getattr(kernel, "_allow_stdin", False))
    stdin = sys.stdin
    return bool(stdin is not None and stdin.isatty())


def _ask_for_key() -> str:
    print(f"W&B: paste your API key from https://wandb.ai/authorize (input is hidden), or press "
          f"Enter to log offline. Tip: store it as the {KEY_ENV} Colab secret to skip this.")
    try:
        return getpass.getpass("W&B API key: ").strip()
    except EOFError:
        return ""
    except Exception as exc:  # ipykernel's StdinNotImplementedError, matched by name
        if type(exc).__name__ == "StdinNotImplementedError":
            return ""
        raise


def _netrc_key(base_url: str) -> str | None:
    """The password ``wandb login`` stored for the server's host in ~/.netrc (or $NETRC)."""
    host = urlsplit(base_url).hostname
    path = os.environ.get("NETRC") or str(Path("~/.netrc").expanduser())
    if not host or not Path(path).is_file():
        return None
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (netrc.NetrcParseError, OSError):
        return None
    if entry is None:
        return None
    return (entry[2] or "").strip() or None


def find_api_key(interactive: bool | None = None,
                 base_url: str = DEFAULT_BASE_URL) -> tuple[str | None, str]:
    """(key, where it came from) or (None, why there is none). Never prints the key."""
    key = os.environ.get(KEY_ENV, "").strip()
    if key:
        return key, f"${KEY_ENV}"
    key, colab_problem = _colab_secret()
    if key:
        return key, f"the {KEY_ENV} Colab secret"
    key = _netrc_key(base_url)
    if key:
        return key, "~/.netrc (wandb login)"
    if interactive is None:
        interactive = can_prompt()
    if not interactive:
        looked = [f"${KEY_ENV} is not set", colab_problem or "", "~/.netrc has none (wandb login)"]
        return None, (f"no API key ({'; '.join(w for w in looked if w)}), and this run cannot ask "
                      "for one (nobody at the keyboard)")
    key = _ask_for_key()
    if not key:
        return None, "no API key entered"
    return key, "the prompt"


def server_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Does the W&B server answer an HTTP HEAD within ``timeout`` s (any status counts)? In a
    daemon thread, so a slow DNS lookup, which no socket timeout covers, cannot stretch it."""
    return answers(url, timeout)


def _base_url(wandb: Any) -> str:
    url = os.environ.get("WANDB_BASE_URL", "").strip()
    if not url:
        try:
            url = str(getattr(wandb.Settings(), "base_url", "") or "")
        except (ValueError, TypeError):  # a malformed WANDB_* setting; wandb.init reports it
            url = ""
    return url.rstrip("/") or DEFAULT_BASE_URL


def _unreachable(url: str, source: str) -> str:
    return (f"the W&B server {url} does not answer (no network?); the API key from {source} was "
            "not used")


def _first_line(exc: BaseException, secret: str | None) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if secret:
        text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _start_offline(wandb: Any, kwargs: dict[str, Any], reason: str, timeout: float) -> Any:
    global _we_set_offline
    # The environment, not just mode=: at exit wandb posts telemetry unless WANDB_MODE says
    # offline (FACTS.md), and that post would hang or fail without a network.
    if _env_mode() not in ("offline", "dryrun"):
        os.environ["WANDB_MODE"] = "offline"
        _we_set_offline = True
    try:
        run = wandb.init(mode="offline", settings=wandb.Settings(init_timeout=timeout), **kwargs)
    except (wandb.errors.Error, TimeoutError, OSError) as exc:
        _say(f"offline logging failed too ({_first_line(exc, None)}); training goes on without "
             "W&B. The SQLite history and CSV files are unaffected.")
        return DisabledRun()
    sync_dir = run.settings.sync_dir
    _say(f"logging offline ({reason}). The run is saved in {sync_dir}; to upload it later, run: "
         f"wandb login && wandb sync {sync_dir}")
    return run


def _env_mode() -> str:
    return os.environ.get("WANDB_MODE", "").strip().lower()


def _offline_by_env() -> bool:
    """WANDB_MODE=offline set by the user (not by an earlier run of ours that went offline)."""
    return _env_mode() in ("offline", "dryrun") and not _we_set_offline


def _wandb_module() -> Any:
    """The wandb package, or None (and a note saying why) when it is missing or disabled."""
    try:
        import wandb
    except ImportError:
        _say("use_wandb is on but the wandb package is missing (pip install wandb); training goes "
             "on without W&B.")
        return None
    if _env_mode() == "disabled":
        _say("WANDB_MODE=disabled is set in the environment; training goes on without W&B.")
        return None
    return wandb


def setup_wandb(
    config: TrainingConfig,
    workspace: Any = None,
    interactive: bool | None = None,
) -> str:
    """The W&B cell: find the key now (asking here, if a person must type it), keep it in memory
    for the run that training starts, and say what will happen: "online", "offline" (with why,
    and how to upload later) or "off". Starts no run and never prints the key."""
    global _remembered
    _remembered = None
    if not config.use_wandb:
        _say("off (tick use_wandb to use it). Every run is still kept in the experiment history.")
        return "off"
    wandb = _wandb_module()
    if wandb is None:
        return "off"
    folder = Path(workspace.root if workspace is not None else Path.cwd()) / "wandb"
    later = (f"Runs are saved under {folder}; upload one later with: wandb login && wandb sync "
             "<its folder> (printed when training starts).")
    if _offline_by_env():
        _say(f"runs will log offline: WANDB_MODE=offline is set in the environment. {later}")
        return "offline"
    url = _base_url(wandb)
    key, source = find_api_key(interactive, url)
    if key is None:
        how = (f"add it as the {KEY_ENV} Colab secret (key icon, left bar)" if in_colab()
               else f"set ${KEY_ENV} or run `wandb login`")
        _say(f"runs will log offline: {source}. {later} To log online, take your key from "
             f"https://wandb.ai/authorize, {how}, and run this cell again.")
        return "offline"
    _remembered = (key, source)
    if not server_reachable(url):
        _say(f"runs will log offline: {_unreachable(url, source)}. {later}")
        return "offline"
    where = "/".join(p for p in (config.wandb_entity, config.wandb_project) if p) or "W&B"
    _say(f"API key from {source}; runs will log online to {where} once training starts.")
    return "online"


def init_wandb(
    config: TrainingConfig,
    run_id: int | str | None = None,
    resume_id: str | None = None,
    directory: str | Path | None = None,
    interactive: bool | None = None,
    *,
    init_timeout: float = INIT_TIMEOUT_S,
) -> Any:
    """Start the W&B run for ``config``, or a :class:`DisabledRun` when ``use_wandb`` is off.

    ``run_id`` (the ExperimentDB run) goes into the W&B config so the two can be matched.
    ``resume_id`` continues an earlier W&B run (``MetricsTracker`` remembers it in checkpoints).
    ``directory`` holds the ``wandb/`` run folders (default: the current directory), with W&B's
    cache beside it instead of in ``~/.cache``. ``interactive`` overrides the detection of
    whether a person can be asked for the key.
    """
    global _we_set_offline
    if not config.use_wandb:
        return DisabledRun()
    wandb = _wandb_module()
    if wandb is None:
        return DisabledRun()

    folder = Path(directory if directory is not None else Path.cwd()).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_DIR", str(folder))
    os.environ.setdefault("WANDB_CACHE_DIR", str(folder / "wandb-cache"))
    os.environ.setdefault("WANDB_DATA_DIR", str(folder / "wandb-data"))
    run_config = config.to_dict()
    if run_id is not None:
        run_config["db_run_id"] = run_id
    kwargs: dict[str, Any] = {
        "project": config.wandb_project or None,
        "entity": config.wandb_entity or None,
        "name": config.run_name,
        "tags": list(config.wandb_tags) or None,
        "notes": config.wandb_notes or None,
        "config": run_config,
        "dir": str(folder),
        # A run left open by an interrupted cell is closed, not silently handed back to us.
        "reinit": "finish_previous",
    }
    if resume_id:
        kwargs.update(id=resume_id, resume="allow")

    if _offline_by_env():
        return _start_offline(wandb, kwargs, "WANDB_MODE=offline is set in the environment",
                              init_timeout)
    url = _base_url(wandb)
    key, source = _remembered if _remembered is not None else find_api_key(interactive, url)
    if key is None:
        return _start_offline(wandb, kwargs, source, init_timeout)
    if not server_reachable(url):
        return _start_offline(wandb, kwargs, _unreachable(url, source), init_timeout)
    if _we_set_offline:  # an earlier run in this kernel went offline; this one has a key
        os.environ.pop("WANDB_MODE", None)
        _we_set_offline = False
    try:
        run = wandb.init(
            mode="online", settings=wandb.Settings(api_key=key, init_timeout=init_timeout), **kwargs
        )
    except (wandb.errors.Error, TimeoutError, OSError) as exc:
        # Tear the half-started session down so the offline run starts clean and reads the
        # WANDB_MODE=offline that _start_offline sets.
        wandb.teardown()
        reason = f"could not start an online run: {_first_line(exc, key)}"
        return _start_offline(wandb, kwargs, reason, init_timeout)
    _say(f"logging online to {run.url} (key from {source}).")
    return run
