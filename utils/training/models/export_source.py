"""An export's files before any of them runs: fetched from a Gist (and cached) or found in a
folder, then read - config.json parsed, the model class chosen by static analysis, files hashed.

Colab sessions drop their network and their VM at awkward moments, so a fetched Gist is written
to a cache folder (on Drive, when the caller passes one there) and a rerun uses it: a pinned
revision never changes, so it is never fetched twice; an unpinned one is fetched again (the
author may have fixed something) but falls back to the newest cached copy, loudly, when GitHub
cannot be reached. Every failure names its cause and the offline alternative (a folder).
Nothing here executes model.py: what is shown to the user before they trust it must not depend on
running it.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import hashlib
import http.client
import json
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PersonFacing
from ..workspace import atomic_dir

GITHUB_API = "https://api.github.com"
USER_AGENT = "transformer-training (+https://github.com)"
REQUIRED_FILES = ("model.py", "config.json")
# config.json keys that name the class to build, in the order they are consulted.
CLASS_KEYS = ("model_name", "class_name", "architectures")
_MODULE_BASES = {"nn.Module", "torch.nn.Module", "Module"}
# Gist ids are hex: 32 characters today, 20 for older ones, digits only for the oldest.
_GIST_ID_RE = re.compile(r"[0-9a-fA-F]{5,40}")
_REVISION_RE = re.compile(r"[0-9a-fA-F]{40}")
_GIST_HOSTS = ("gist.github.com", "gist.githubusercontent.com")
_OFFLINE_HINT = ("or open the Gist in a browser, download model.py and config.json into a folder "
                 "and load that folder instead (model_source='folder')")


class ModelLoadError(PersonFacing, ValueError):
    """An exported model that cannot be fetched, read, built or trained; the message says the fix.

    A ValueError subclass so callers that already catch ValueError keep working.
    """


class GistUnavailableError(ModelLoadError):
    """GitHub could not be asked right now (offline, timed out, rate limited): a cached copy may do."""

    def __init__(self, message: str, short: str) -> None:
        super().__init__(message)
        self.short = short  # a few words for the "using the cached copy" note


@dataclass(frozen=True)
class ModelSource:
    """A parsed ``source`` argument: what to load, before anything is read or fetched."""

    kind: str  # "gist" | "folder"
    gist_id: str = ""
    revision: str = ""  # a pinned Gist revision (40 hex), or "" for the latest
    folder: Path | None = None

    def describe(self) -> str:
        if self.kind == "folder":
            return f"folder {self.folder}"
        return f"Gist {self.gist_id}" + (f" @ {self.revision[:10]}" if self.revision else "")


def _gist_from_url(url: str) -> tuple[str, str]:
    parsed = urllib.parse.urlparse(url if "://" in url else f"https://{url}")
    parts = [p for p in parsed.path.split("/") if p]
    if parsed.netloc.lower() not in _GIST_HOSTS or not parts:
        raise ModelLoadError(f"{url!r} is not a Gist URL: expected "
                             "https://gist.github.com/<user>/<id> (optionally /<revision>).")
    if len(parts) == 1:  # gist.github.com/<id>
        gist_id, rest = parts[0], []
    else:
        gist_id, rest = parts[1], parts[2:]
    gist_id = gist_id.removesuffix(".git")
    if rest[:1] == ["raw"]:  # gist.githubusercontent.com/<user>/<id>/raw/<revision>/<file>
        rest = rest[1:]
    revision = rest[0] if rest and _REVISION_RE.fullmatch(rest[0]) else ""
    if not _GIST_ID_RE.fullmatch(gist_id):
        raise ModelLoadError(f"Cannot find a Gist id in {url!r}: expected "
                             "https://gist.github.com/<user>/<id>, where <id> is hexadecimal.")
    return gist_id.lower(), revision.lower()


def parse_source(source: str | os.PathLike[str], revision: str | None = None) -> ModelSource:
    """Decide whether ``source`` is a folder, a Gist URL or a Gist id, without touching the network.

    An existing folder wins over an id-looking name, so a folder called ``abc123`` stays a folder.
    """
    text = str(source).strip()
    if not text:
        raise ModelLoadError("No model source given: pass a Gist id, a Gist URL or a folder "
                             "holding model.py and config.json.")
    path = Path(text).expanduser()
    pinned = (revision or "").strip().lower()
    if pinned and not _REVISION_RE.fullmatch(pinned):
        raise ModelLoadError(f"revision {revision!r} is not a Gist revision: use the 40-character "
                             "hex id shown under the Gist's 'Revisions' tab, or leave it empty.")
    if path.is_dir():
        if pinned:
            raise ModelLoadError(f"revision={revision!r} only applies to Gists, but {text!r} is "
                                 "a local folder: drop the revision.")
        return ModelSource("folder", folder=path.resolve())
    if "gist." in text.lower() or "://" in text:
        gist_id, url_revision = _gist_from_url(text)
    elif _GIST_ID_RE.fullmatch(text):
        gist_id, url_revision = text.lower(), ""
    elif path.exists():
        raise ModelLoadError(f"{text!r} is a file, not a folder: give the folder that holds "
                             "model.py and config.json.")
    else:
        raise ModelLoadError(f"{text!r} is neither an existing folder nor a Gist id or URL. Give "
                             "the folder holding model.py + config.json (check the path), a Gist "
                             "URL like https://gist.github.com/<user>/<id>, or the hex Gist id.")
    if pinned and url_revision and pinned != url_revision:
        raise ModelLoadError(f"The URL pins revision {url_revision} but revision={revision!r} was "
                             "also given: keep one of them.")
    return ModelSource("gist", gist_id=gist_id, revision=pinned or url_revision)


def _reset_text(headers: Any) -> str:
    reset = headers.get("X-RateLimit-Reset") if headers is not None else None
    if reset and str(reset).isdigit():
        when = dt.datetime.fromtimestamp(int(reset)).astimezone()
        minutes = max(0, round((int(reset) - time.time()) / 60))
        return f"it resets at {when:%H:%M %Z} (in about {minutes} min)"
    retry = headers.get("Retry-After") if headers is not None else None
    if retry and str(retry).isdigit():
        return f"GitHub asks to retry in {retry} s"
    return "it resets within the hour"


def _http_error(err: urllib.error.HTTPError, what: str, url: str) -> ModelLoadError:
    headers = err.headers
    remaining = headers.get("X-RateLimit-Remaining") if headers is not None else None
    if err.code == 404:
        return ModelLoadError(f"{what} not found (is it secret/deleted? check the id). GitHub "
                              f"answered 404 for {url}.")
    if err.code == 429 or (err.code == 403 and str(remaining).strip() == "0"):
        return GistUnavailableError(
            f"GitHub's API rate limit is used up for this machine (60 requests an hour without a "
            f"login), so {what} cannot be fetched now; {_reset_text(headers)}. Wait until then, "
            + _OFFLINE_HINT + ".", short="GitHub's rate limit is used up")
    return ModelLoadError(f"GitHub refused to return {what}: HTTP {err.code} {err.reason} for "
                          f"{url}. Try again later, " + _OFFLINE_HINT + ".")


def fetch_gist(source: ModelSource, *, api_base: str = GITHUB_API,
               timeout: float = 10.0) -> dict[str, Any]:
    """GET the Gist's JSON from the API; every failure becomes a ModelLoadError in plain words."""
    url = f"{api_base.rstrip('/')}/gists/{source.gist_id}"
    url += f"/{source.revision}" if source.revision else ""
    request = urllib.request.Request(url, headers={
        "Accept": "application/vnd.github+json", "User-Agent": USER_AGENT,
        "X-GitHub-Api-Version": "2022-11-28"})
    what = source.describe()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        raise _http_error(err, what, url) from err
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or err
        raise GistUnavailableError(
            f"Cannot reach GitHub to fetch {what} ({reason}; waited up to {timeout:g} s). Check "
            "the internet connection and try again, " + _OFFLINE_HINT + ".",
            short=f"cannot reach GitHub: {reason}") from err
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"GitHub's answer for {what} was not valid JSON ({err}); the API or "
                             f"a proxy returned something else. Try again later, "
                             + _OFFLINE_HINT + ".") from err
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise ModelLoadError(f"GitHub's answer for {what} has no 'files' listing; it does not "
                             f"look like a Gist. Check the id, " + _OFFLINE_HINT + ".")
    return data


def gist_files(data: dict[str, Any], source: ModelSource) -> dict[str, str]:
    """The code and config files of a Gist's JSON, refusing any the API cut short."""
    files = data["files"]
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise ModelLoadError(f"{source.describe()} has no {' or '.join(missing)} (it holds: "
                             f"{', '.join(sorted(files)) or 'nothing'}). A Transformer Builder "
                             "export needs both model.py and config.json.")
    out: dict[str, str] = {}
    for name, info in files.items():
        # Only code and config matter; a big README or image must not block the model.
        if not name.endswith((".py", ".json")) or "/" in name or name.startswith("."):
            continue
        if not isinstance(info, dict):
            raise ModelLoadError(f"{source.describe()}: the entry for {name} is malformed.")
        if info.get("truncated"):
            raise ModelLoadError(
                f"{name} in {source.describe()} is too large for the GitHub API (it returned a "
                "truncated copy, which would not run). Download the Gist's files into a folder "
                "and load that folder instead (model_source='folder').")
        content = info.get("content")
        if not isinstance(content, str):
            raise ModelLoadError(f"{source.describe()}: GitHub returned no content for {name}.")
        out[name] = content
    return out


def revision_of(data: dict[str, Any]) -> str:
    """The revision the API answered with (the newest entry of its history)."""
    history = data.get("history")
    if isinstance(history, list) and history and isinstance(history[0], dict):
        version = str(history[0].get("version", ""))
        if _REVISION_RE.fullmatch(version):
            return version.lower()
    return ""


def _newest_cached(gists_dir: Path, gist_id: str) -> Path | None:
    found = [p for p in gists_dir.glob(f"{gist_id}-*")
             if p.is_dir() and all((p / n).is_file() for n in REQUIRED_FILES)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "transformer-training-models"


def materialize_gist(source: ModelSource, *, cache_dir: Path | None, api_base: str,
                     timeout: float) -> tuple[Path, str, str]:
    """Make the Gist's files exist on disk; return (folder, revision, note about where they came from).

    Pinned revisions are immutable, so a cached copy is used without asking GitHub. Unpinned ones
    are refetched, and only "cannot reach GitHub" or a rate limit fall back to the newest cache,
    with a note printed even when the caller asked for quiet: the model may be out of date.
    """
    gists_dir = Path(cache_dir or default_cache_dir()) / "gists"
    if source.revision:
        cached = gists_dir / f"{source.gist_id}-{source.revision}"
        if all((cached / n).is_file() for n in REQUIRED_FILES):
            return cached, source.revision, f"cached copy in {cached}"
    try:
        data = fetch_gist(source, api_base=api_base, timeout=timeout)
    except GistUnavailableError as err:
        fallback = None if source.revision else _newest_cached(gists_dir, source.gist_id)
        if fallback is None:
            raise
        note = (f"NOTE: could not fetch {source.describe()} ({err.short}); using the copy cached "
                f"in {fallback}, which may be older than the Gist.")
        print(note)
        return fallback, fallback.name.split("-", 1)[1], note
    files = gist_files(data, source)
    revision = source.revision or revision_of(data) or "latest"
    dest = gists_dir / f"{source.gist_id}-{revision}"
    if dest.is_dir() and revision != "latest":
        with contextlib.suppress(OSError):
            os.utime(dest)  # mark it newest for the offline fallback
    else:
        if dest.is_dir():  # "latest" without a known revision: replace it wholesale
            shutil.rmtree(dest)
        with atomic_dir(dest) as tmp:  # all files appear at once (one rename), or none do
            for name, content in files.items():
                # newline="" keeps the bytes as GitHub sent them, so the SHA-256 is the Gist's.
                with open(tmp / name, "w", encoding="utf-8", newline="") as fh:
                    fh.write(content)
    return dest, revision, f"fetched from {api_base.rstrip('/')}, cached in {dest}"


# ----------------------------------------------------------------- reading the files, running nothing

def check_folder(src: ModelSource) -> Path:
    folder = src.folder
    assert folder is not None
    missing = [n for n in REQUIRED_FILES if not (folder / n).is_file()]
    if missing:
        held = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise ModelLoadError(f"Folder {folder} has no {' or '.join(missing)} (it holds: "
                             f"{held}). A Transformer Builder export needs model.py and "
                             "config.json side by side.")
    return folder


def read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: "
                             f"{err.msg}). Fix the file or export it again.") from err
    except UnicodeDecodeError as err:
        raise ModelLoadError(f"{path} is not UTF-8 text; export config.json again.") from err
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object of settings, not a "
                             f"{type(data).__name__}.")
    return data


def parse_model_py(path: Path) -> ast.Module:
    try:
        return ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as err:
        line = f": {err.text.strip()!r}" if err.text and err.text.strip() else ""
        raise ModelLoadError(f"{path} has a syntax error on line {err.lineno}{line} "
                             f"({err.msg}). Fix model.py, or export it again.") from err
    except ValueError as err:  # e.g. NUL bytes: not a Python file at all
        raise ModelLoadError(f"{path} is not Python source ({err}).") from err


def _module_classes(classes: dict[str, ast.ClassDef]) -> list[str]:
    """Classes whose bases are nn.Module, or (transitively) another such class of the file."""
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, node in classes.items():
            if name not in found and any(b in _MODULE_BASES or b in found
                                         for b in map(ast.unparse, node.bases)):
                found.add(name)
                changed = True
    return [name for name in classes if name in found]  # file order


def choose_class(tree: ast.Module, config: Mapping[str, Any], path: Path) -> tuple[str, str]:
    """(class name, how it was chosen), decided without running model.py."""
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    notes = []
    for key in CLASS_KEYS:
        value = config.get(key)
        if key == "architectures" and isinstance(value, list):
            value = value[0] if value else None
        if not isinstance(value, str) or not value:
            continue
        if value in classes:
            return value, f"named by config.json {key}"
        if key == "class_name":  # only ever means a class: a wrong one is an error, not a hint
            raise ModelLoadError(f"config.json class_name = {value!r}, but {path} defines no "
                                 f"such class (it has: {', '.join(classes) or 'no classes'}).")
        notes.append(f"config.json {key} {value!r} names no class in model.py")
    candidates = _module_classes(classes)
    if not candidates:
        raise ModelLoadError(
            f"{path} defines no nn.Module class (classes found: {', '.join(classes) or 'none'}). "
            "If the model class inherits from nn.Module indirectly, set \"model_name\": "
            "\"<ClassName>\" in config.json.")
    used: set[str] = set()
    for name, node in classes.items():
        used |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id != name}
    top = [name for name in candidates if name not in used]
    if len(top) != 1:
        listed = ", ".join(top or candidates)
        raise ModelLoadError(
            f"Cannot tell which class in {path} is the model: candidates are {listed}. Set "
            "\"model_name\": \"<ClassName>\" in config.json to choose one."
            + (f" ({'; '.join(notes)}.)" if notes else ""))
    how = "the one nn.Module class no other class uses"
    return top[0], how + (f"; {'; '.join(notes)}" if notes else "")


def file_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every code and config file, so the user can check what is about to run."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file() and p.suffix in (".py", ".json")}
