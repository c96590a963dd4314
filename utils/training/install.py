"""Cell 1.1's installer: make ``utils.training`` importable as the exact library the notebook was
built with, install only what the runtime lacks, and stop with a message a person can act on.

The notebook carries the library (a zip, xz-compressed, base64) and its hash. The cell checks the
payload's SHA-256, unpacks it under the temp folder and loads this file *by path*, under a private
name, before any of the package can be imported; so this module is stdlib only and imports
nothing from the package (floor 1). It also serves people who want another version on purpose:
from git (a branch, tag or commit SHA) or from a ``.whl``/``.zip`` on Google Drive.

Every failure raises :class:`InstallError`: "Run all" stops at cell 1.1 instead of running later
cells against a half-installed library, and the message says what failed and what to do.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.metadata as metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

ROUTES = ("bundled", "git", "drive")
# Colab's own builds stay: another torch or numpy in a running kernel breaks imports until a
# restart, and a CUDA torch is gigabytes.
NEVER_INSTALL = ("torch", "numpy")
REQUIREMENTS = "requirements-training.txt"
TEMP_PREFIX = "transformer-training-"  # every folder this module makes under the temp folder
DRIVE_MOUNT_ENV = "TRANSFORMER_TRAINING_DRIVE_MOUNT"  # tests point the Drive mount elsewhere
DEFAULT_DRIVE_MOUNT = "/content/drive"
WORKSPACE_FOLDER = "TransformerTraining"  # under MyDrive, the same folder the workspace uses
TOOL_TIMEOUT = 900  # seconds for one git or pip command: fail rather than hang "Run all"
TAIL_CHARS = 1500

Runner = Callable[..., subprocess.CompletedProcess]


class InstallError(RuntimeError):
    """The library could not be made ready; the message says what failed and what to do."""

    def _render_traceback_(self) -> list[str]:
        # IPython (and Colab) show this instead of a traceback: the frames say nothing a person
        # can act on, the message does.
        return [f"{type(self).__name__}: {self}"]


# ---------------------------------------------------------------------- what "the library" is


def library_files(package_dir: str | Path) -> list[str]:
    """The package's ``.py`` files, relative and sorted: what the hash and the payload cover."""
    package_dir = Path(package_dir)
    found = []
    for path in package_dir.rglob("*.py"):
        rel = path.relative_to(package_dir)
        if path.is_file() and not any(p == "__pycache__" or p.startswith(".") for p in rel.parts):
            found.append(rel.as_posix())
    return sorted(found)


def library_hash(package_dir: str | Path) -> str:
    """A content hash of the library's ``.py`` files (names and bytes), the same for a clone, an
    unpacked payload or a pip install of the same source: what "the same library" means here."""
    package_dir = Path(package_dir)
    digest = hashlib.sha256()
    for rel in library_files(package_dir):
        digest.update(rel.encode() + b"\0")
        digest.update(hashlib.sha256((package_dir / rel).read_bytes()).digest())
    return digest.hexdigest()


def library_version(package_dir: str | Path) -> str:
    """From the checkout's pyproject.toml, else "unknown" (a wheel's version comes from pip)."""
    pyproject = Path(package_dir).parent.parent / "pyproject.toml"
    project = pyproject.read_text(errors="replace") if pyproject.is_file() else ""
    match = re.search(r'^version\s*=\s*"([^"]+)"', project.partition("[project]")[2], re.M)
    return match[1] if match else "unknown"


def importable_library() -> Path | None:
    """Where ``import utils.training`` would load from right now, found without importing
    anything (importing ``utils`` to ask would pin whatever ``utils`` comes first)."""
    loaded = sys.modules.get("utils.training")
    if loaded is not None and getattr(loaded, "__file__", None):
        return Path(loaded.__file__).resolve().parent
    parent = sys.modules.get("utils")
    if parent is not None:
        locations = list(getattr(parent, "__path__", None) or [])
    else:
        try:
            spec = importlib.util.find_spec("utils")
        except (ImportError, ValueError):
            return None
        if spec is None or spec.submodule_search_locations is None:
            return None
        locations = list(spec.submodule_search_locations)
    spec = importlib.machinery.PathFinder.find_spec("training", locations)
    if spec is None or not spec.origin or not spec.origin.endswith("__init__.py"):
        return None
    return Path(spec.origin).resolve().parent


# ---------------------------------------------------------------------- requirements


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_REQUIREMENT = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*\(?(?P<spec>[^;()]*?)\)?\s*"
    r"(?:;\s*(?P<marker>.+))?$"
)


def parse_requirements(lines: Iterable[str]) -> list[tuple[str, str]]:
    """``(name, specifier)`` for each requirement that applies here; pip options, URLs and
    extras-only lines are left out (this installer never needs them)."""
    found = []
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-") or "://" in line:
            continue
        match = _REQUIREMENT.match(line)
        if not match:
            print(f"Skipped a requirement this installer cannot read: {line!r}")
            continue
        if match["marker"] and not _marker_applies(match["marker"]):
            continue
        found.append((match["name"], re.sub(r"\s+", "", match["spec"])))
    return found


def _marker_applies(marker: str) -> bool:
    if "extra" in marker:  # optional extras (dev, docs) are never what a notebook needs
        return False
    try:
        from packaging.markers import Marker

        return Marker(marker).evaluate()
    except (ImportError, ValueError):  # cannot tell: assume it applies
        return True


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def satisfies(version: str, spec: str) -> bool:
    """Does an installed ``version`` meet ``spec`` (e.g. ``">=0.16,<2"``)? Without ``packaging``
    (or for a spec it cannot read) "installed at all" counts: a wrong "yes" costs a clear error
    later, a wrong "no" an install that may replace something the session already imported."""
    try:
        from packaging.specifiers import SpecifierSet

        return not spec or SpecifierSet(spec).contains(version, prereleases=True)
    except (ImportError, ValueError):  # no packaging; InvalidSpecifier / InvalidVersion
        return True


def missing_requirements(requirements: Sequence[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """(what pip should install, torch/numpy requirements that are unmet but never installed)."""
    install, refused = [], []
    for name, spec in requirements:
        version = installed_version(name)
        if version is not None and satisfies(version, spec):
            continue
        (refused if normalize(name) in NEVER_INSTALL else install).append(f"{name}{spec}")
    return install, refused


def _distribution_versions() -> dict[str, str]:
    versions = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            versions[normalize(name)] = dist.version
    return versions


def ensure_requirements(requirements: Sequence[tuple[str, str]], run: Runner = subprocess.run) -> None:
    """pip-install only what is missing or too old; pip does not run at all when nothing is."""
    install, refused = missing_requirements(requirements)
    for requirement in refused:
        print(f"Not installing {requirement}: this notebook never replaces torch or numpy (on "
              "Colab the preinstalled builds are the right ones). Install it yourself if this "
              "runtime really lacks it.")
    if not install:
        print("Dependencies: everything needed is already installed.")
        return
    print(f"Installing what this runtime lacks: {', '.join(install)}")
    before = _distribution_versions()
    # Pins keep pip from "upgrading" torch or numpy to satisfy something it installs.
    pins = [f"{name}=={before[name]}" for name in NEVER_INSTALL if name in before]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix=TEMP_PREFIX, delete=False) as fh:
        fh.write("\n".join(pins) + "\n")
    try:
        _tool([sys.executable, "-m", "pip", "install", "--quiet", "--no-input",
               "--disable-pip-version-check", "--constraint", fh.name, *install],
              what=f"pip could not install {', '.join(install)}",
              advice="Check that this runtime is online and run this cell again, or install them "
                     f"yourself (!pip install {' '.join(install)}) and run this cell again.",
              run=run)
    finally:
        os.unlink(fh.name)
    importlib.invalidate_caches()
    _stop_if_restart_needed(before, _distribution_versions())


def _stop_if_restart_needed(before: dict[str, str], after: dict[str, str]) -> None:
    changed = {name: (before[name], after[name]) for name in before
               if name in after and before[name] != after[name]}
    if not changed:
        return
    modules: dict[str, list[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            if normalize(dist) in changed and module in sys.modules:
                modules.setdefault(normalize(dist), []).append(module)
    if not modules:
        print("Updated: " + ", ".join(f"{n} {a} -> {b}" for n, (a, b) in sorted(changed.items())))
        return
    lines = [f"  {name} {changed[name][0]} -> {changed[name][1]} (already imported: "
             f"{', '.join(sorted(mods))})" for name, mods in sorted(modules.items())]
    raise InstallError(
        "pip updated packages that this session had already imported:\n" + "\n".join(lines)
        + "\nPython keeps the old versions loaded, so the next cells would mix old and new code.\n"
        "What to do: Runtime > Restart session, then Runtime > Run all. Nothing is installed "
        "twice: this cell then finds everything in place."
    )


# ---------------------------------------------------------------------- running git and pip


def _mask(text: str) -> str:
    """Never echo a token someone put into a URL."""
    return re.sub(r"(://)[^/@\s]+@", r"\1***@", text)


def _tool(cmd: Sequence[str], *, what: str, advice: str, cwd: Path | None = None,
          run: Runner = subprocess.run) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # a private repo fails, it never hangs
    try:
        result = run(list(cmd), cwd=cwd, capture_output=True, text=True, env=env,
                     timeout=TOOL_TIMEOUT)
    except FileNotFoundError as exc:
        raise InstallError(f"{what}: {cmd[0]} is not installed on this runtime. {advice}") from exc
    except subprocess.TimeoutExpired as exc:
        raise InstallError(f"{what}: no answer after {TOOL_TIMEOUT}s. {advice}") from exc
    if result.returncode != 0:
        tail = (result.stderr or result.stdout or "").strip()[-TAIL_CHARS:]
        raise InstallError(f"{what}:\n{_mask(tail)}\n{advice}")
    return result


# ---------------------------------------------------------------------- importing it


def _temp_root() -> Path:
    return Path(tempfile.gettempdir()).resolve()


def _same(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _import_from(root: Path | None, expected: Path) -> Path:
    """Import ``utils.training`` and check it comes from ``expected``. ``root`` goes first on
    sys.path (None: the package is in site-packages); folders an earlier run of this cell put
    there are taken off, so switching routes cannot leave an old copy in front."""
    ours, keep = str(_temp_root() / TEMP_PREFIX), os.path.realpath(expected.parent.parent)
    sys.path[:] = [p for p in sys.path if not p or os.path.realpath(p) == keep
                   or not os.path.realpath(p).startswith(ours)]
    if root is not None:
        sys.path[:] = [p for p in sys.path if not (p and _same(p, root))]
        sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    loaded = sys.modules.get("utils.training")
    if loaded is not None and not _same(Path(loaded.__file__).parent, expected):
        raise InstallError(
            f"This session already imported utils.training from {Path(loaded.__file__).parent}, "
            f"and Python cannot swap a loaded library for the one at {expected}.\n"
            "What to do: Runtime > Restart session, then run this cell first."
        )
    parent = sys.modules.get("utils")
    if loaded is None and parent is not None and not any(
            _same(p, expected.parent) for p in getattr(parent, "__path__", None) or []):
        where = getattr(parent, "__file__", None) or list(getattr(parent, "__path__", []))
        raise InstallError(
            f"Another package called utils (from {where}) is already imported in this session "
            "and hides the training library.\n"
            "What to do: Runtime > Restart session, then run this cell before anything else."
        )
    try:
        module = importlib.import_module("utils.training")
    except Exception as exc:  # whatever the library raises while importing, say where it was
        raise InstallError(
            f"Importing the training library from {expected} failed: {type(exc).__name__}: "
            f"{exc}\nWhat to do: Runtime > Restart session and run this cell again; if it fails "
            'again, set install_from = "bundled".'
        ) from exc
    actual = Path(module.__file__).resolve().parent
    if not _same(actual, expected):
        raise InstallError(
            f"utils.training was imported from {actual}, not from {expected}: another copy comes "
            "first on sys.path.\nWhat to do: remove that copy (or take its folder off sys.path), "
            "then Runtime > Restart session and run this cell again."
        )
    return actual


def _conflict(existing: Path, version: str, expected_hash: str) -> InstallError:
    return InstallError(
        f"A different training library is already importable from {existing}\n"
        f"  that one:      version {library_version(existing)}, hash "
        f"{library_hash(existing)[:12]}\n"
        f"  this notebook: version {version}, hash {expected_hash[:12]}\n"
        "Mixing them breaks later cells, so this cell stopped. What to do, one of:\n"
        "  - open the notebook that belongs to that library (in its checkout, rebuild it with "
        "`python build_notebook.py`);\n"
        "  - remove the other copy (`pip uninstall transformer-training`, or take its folder off "
        "sys.path), then Runtime > Restart session and run all again;\n"
        '  - or use that library on purpose: set install_from = "git" or "drive".'
    )


def _report(package: Path, where: str, version: str, expected_hash: str,
            their_version: str = "") -> None:
    theirs, their_version = library_hash(package), their_version or library_version(package)
    if theirs == expected_hash:
        print(f"Library ready: version {their_version} from {where}, the same files as the copy "
              f"inside this notebook (hash {theirs[:12]}).")
        return
    print(f"Library ready: version {their_version} (hash {theirs[:12]}) from {where}.\n"
          f"Note: this notebook was built with version {version} (hash {expected_hash[:12]}). "
          "You chose this one, so the notebook goes on; if a later cell fails with an unknown "
          'name or argument, set install_from = "bundled" and use Runtime > Restart session.')


# ---------------------------------------------------------------------- the three routes


def install_library(home: str | Path, version: str, expected_hash: str, *,
                    install_from: str = "bundled", git_url: str = "", git_ref: str = "",
                    drive_package: str = "") -> Path:
    """Cell 1.1's one call. ``home`` is where the cell unpacked its payload (this file's own
    checkout); returns the folder ``utils.training`` is imported from."""
    home = Path(home)
    route = install_from.strip().lower()
    if route not in ROUTES:
        raise InstallError(f"install_from = {install_from!r}: choose one of {', '.join(ROUTES)}.")
    bundled = home / "utils" / "training"
    if library_hash(bundled) != expected_hash:
        shutil.rmtree(home, ignore_errors=True)
        raise InstallError(
            f"The library unpacked at {home} was changed after this notebook unpacked it. It has "
            "been removed: run this cell again to unpack a fresh copy."
        )
    bundled_requirements = parse_requirements((home / REQUIREMENTS).read_text().splitlines())
    if route == "git":
        root = clone(git_url, git_ref)
        return _use_folder(root, f"{_mask(git_url.strip())} at {git_ref.strip() or 'its default branch'}",
                           version, expected_hash, bundled_requirements)
    if route == "drive":
        return _use_drive(drive_package, version, expected_hash, bundled_requirements)
    existing = importable_library()
    if existing is not None and not _same(existing, bundled):
        if library_hash(existing) != expected_hash:
            raise _conflict(existing, version, expected_hash)
        ensure_requirements(bundled_requirements)
        _import_from(None, existing)
        print(f"Library ready: using the copy already importable from {existing} (version "
              f"{library_version(existing)}, the same files as this notebook's, hash "
              f"{expected_hash[:12]}).")
        return existing
    ensure_requirements(bundled_requirements)
    package = _import_from(home, bundled)
    print(f"Library ready: version {version} (hash {expected_hash[:12]}), unpacked from this "
          f"notebook into {home}.")
    return package


def _use_folder(root: Path, where: str, version: str, expected_hash: str,
                fallback: list[tuple[str, str]]) -> Path:
    """A checkout (a clone or an unpacked zip): its requirements, then import it from there."""
    package = root / "utils" / "training"
    if not (package / "__init__.py").is_file():
        raise InstallError(
            f"{where} has no utils/training/__init__.py, so it is not this project's library "
            "(or that version predates it). What to do: check the repository and the ref, or set "
            'install_from = "bundled".'
        )
    requirements = root / REQUIREMENTS
    ensure_requirements(parse_requirements(requirements.read_text().splitlines())
                        if requirements.is_file() else fallback)
    package = _import_from(root, package)
    _report(package, where, version, expected_hash)
    return package


def clone(url: str, ref: str = "") -> Path:
    """Clone ``url`` and check out ``ref`` (a branch, tag or full commit SHA; ``--branch`` takes
    no SHA, so: clone, then checkout, then fetch the ref itself if the clone lacks it). The
    checkout appears under its final name only when complete; a second run reuses it."""
    url, ref = url.strip(), ref.strip()
    if not url:
        raise InstallError(
            'install_from = "git" needs git_url (the repository: an https URL or a path on this '
            "machine) and, to pin a version, git_ref (a branch, tag or full commit SHA)."
        )
    shown = f"{_mask(url)} at {ref or 'its default branch'}"
    key = hashlib.sha256(f"{url}\n{ref}".encode()).hexdigest()[:12]
    dest = _temp_root() / f"{TEMP_PREFIX}git-{key}"
    git = ["git", "-c", "advice.detachedHead=false"]
    if dest.is_dir():
        commit = _tool([*git, "rev-parse", "HEAD"], cwd=dest, what="git rev-parse failed",
                       advice=f"Delete {dest} and run this cell again.").stdout.strip()
        print(f"Reusing the clone of {shown} at {dest} (commit {commit[:12]}); delete that folder "
              "to fetch again.")
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=f".{TEMP_PREFIX}git-", dir=_temp_root()))
    try:
        _tool([*git, "clone", "--quiet", url, str(tmp)], what=f"git clone {_mask(url)} failed",
              advice="What to do: check git_url. It must be a repository this runtime can reach "
                     "without a password (a public https URL, or a path on this machine); for a "
                     'private one, put a .zip of it on Drive and use install_from = "drive".')
        if ref:
            try:
                _tool([*git, "checkout", "--quiet", ref], cwd=tmp, what="", advice="")
            except InstallError:
                advice = (f"What to do: check git_ref {ref!r}: a branch or tag of {_mask(url)}, "
                          "or a full 40-character commit SHA.")
                _tool([*git, "fetch", "--quiet", "origin", ref], cwd=tmp, advice=advice,
                      what=f"git_ref {ref!r} is not a branch, tag or commit of {_mask(url)}")
                _tool([*git, "checkout", "--quiet", "FETCH_HEAD"], cwd=tmp, advice=advice,
                      what=f"git could not check out {ref!r}")
        commit = _tool([*git, "rev-parse", "HEAD"], cwd=tmp, what="git rev-parse failed",
                       advice="Run this cell again.").stdout.strip()
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Cloned {shown} (commit {commit[:12]}) into {dest}.")
    return dest


def drive_file(drive_package: str) -> Path:
    """The package's path on Drive: relative to MyDrive/TransformerTraining/, or an absolute
    path under MyDrive; never outside it. Mounts Drive (Colab) when it is not mounted yet."""
    text = drive_package.strip()
    mount = Path(os.environ.get(DRIVE_MOUNT_ENV, "").strip() or DEFAULT_DRIVE_MOUNT)
    my_drive = mount / "MyDrive"
    if not text:
        raise InstallError(
            'install_from = "drive" needs drive_package: a .whl or .zip of the library in '
            f"MyDrive/{WORKSPACE_FOLDER}/ (e.g. packages/transformer_training-0.1.0-py3-none-any.whl)."
        )
    path = Path(text)
    if ".." in path.parts:
        raise InstallError(f"drive_package = {text!r}: '..' is not allowed; give a path inside "
                           f"MyDrive/{WORKSPACE_FOLDER}/ or an absolute path under {my_drive}/.")
    if path.is_absolute() and not path.is_relative_to(my_drive):
        raise InstallError(f"drive_package = {text!r} is outside Google Drive: give a path under "
                           f"{my_drive}/ or one relative to {my_drive / WORKSPACE_FOLDER}/.")
    if not path.is_absolute():
        path = my_drive / WORKSPACE_FOLDER / path
    if not my_drive.is_dir():
        _mount_drive(mount)
    if not path.is_file():
        raise InstallError(f"No file at {path}. What to do: copy the .whl or .zip into "
                           f"MyDrive/{WORKSPACE_FOLDER}/ and set drive_package to its path there.")
    if path.suffix not in (".whl", ".zip"):
        raise InstallError(
            f"drive_package = {text!r}: give a .whl (`pip wheel --no-deps .` in a checkout) or a "
            ".zip of the repository (GitHub's Code > Download ZIP)."
        )
    return path


def _mount_drive(mount: Path) -> None:
    try:
        from google.colab import drive  # type: ignore[import-not-found]
    except ImportError as exc:
        raise InstallError(
            f"Google Drive is not mounted at {mount} and this runtime is not Colab, so this cell "
            f'cannot mount it. What to do: use install_from = "bundled" or "git" (or set '
            f"${DRIVE_MOUNT_ENV} to the folder that holds MyDrive)."
        ) from exc
    try:
        drive.mount(str(mount))
    # Colab raises several unrelated types here (ValueError, MessageError, TimeoutError).
    except Exception as exc:
        raise InstallError(
            f"Mounting Google Drive failed ({type(exc).__name__}: {exc}). What to do: run this "
            'cell again and allow access when Colab asks, or use install_from = "bundled".'
        ) from exc
    if not (mount / "MyDrive").is_dir():
        raise InstallError(f"Google Drive was mounted but {mount / 'MyDrive'} is missing: run this "
                           'cell again, or use install_from = "bundled".')


def _use_drive(drive_package: str, version: str, expected_hash: str,
               fallback: list[tuple[str, str]]) -> Path:
    path = drive_file(drive_package)
    if path.suffix == ".zip":
        return _use_folder(_unpack_zip(path), str(path), version, expected_hash, fallback)
    # A wheel: only the wheel itself (--no-deps, so pip never pulls torch); then what it needs.
    dist = normalize(path.name.split("-")[0])
    loaded = importable_library() if "utils.training" in sys.modules else None
    loaded_hash = library_hash(loaded) if loaded is not None else None
    _tool([sys.executable, "-m", "pip", "install", "--quiet", "--no-input", "--no-deps",
           "--force-reinstall", "--disable-pip-version-check", str(path)],
          what=f"pip could not install {path.name}",
          advice="What to do: check that the file is a wheel of this project (`pip wheel --no-deps "
                 '.` in a checkout), or set install_from = "bundled".')
    importlib.invalidate_caches()
    try:
        installed = metadata.distribution(dist)
    except metadata.PackageNotFoundError as exc:
        raise InstallError(f"{path.name} installed no distribution called {dist!r}: is it a "
                           "wheel of this project?") from exc
    init = Path(str(installed.locate_file("utils/training/__init__.py")))
    if not init.is_file():
        raise InstallError(f"{path.name} does not contain utils/training: it is not this "
                           'project\'s library. Set install_from = "bundled".')
    package = init.resolve().parent
    if loaded is not None and _same(loaded, package) and library_hash(package) != loaded_hash:
        raise InstallError("The wheel replaced the library this session had already imported. "
                           "What to do: Runtime > Restart session, then run all again.")
    ensure_requirements(parse_requirements(metadata.requires(dist) or []))
    package = _import_from(None, package)
    _report(package, str(path), version, expected_hash, installed.version)
    return package


def _unpack_zip(path: Path) -> Path:
    """Unpack under the temp folder (once per file content); return the folder holding utils/."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    dest = _temp_root() / f"{TEMP_PREFIX}drive-{digest}"
    if not dest.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=f".{TEMP_PREFIX}drive-", dir=_temp_root()))
        try:
            with zipfile.ZipFile(path) as archive:
                archive.extractall(tmp)  # zipfile drops absolute and ".." member paths
            os.rename(tmp, dest)
        except zipfile.BadZipFile as exc:
            raise InstallError(f"{path} is not a readable zip ({exc}). What to do: upload it "
                               "again, or set install_from = \"bundled\".") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    # GitHub's "Download ZIP" puts everything in one top folder (repo-main/).
    for candidate in (dest, *sorted(p for p in dest.iterdir() if p.is_dir())):
        if (candidate / "utils" / "training" / "__init__.py").is_file():
            return candidate
    return dest
