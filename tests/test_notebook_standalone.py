"""training.ipynb needs nothing but itself: uploaded alone to Colab, cell 1.1 unpacks the library
it carries; a git ref or a package on Drive installs another version on purpose; a conflicting
or damaged library stops cell 1.1 with a message that says what to do.

Colab is played by tests/fake_colab (a fake ``google.colab`` on the kernel's PYTHONPATH) and by
processes started in empty folders, where ``utils`` is not importable, exactly as in Colab.
"""

from __future__ import annotations

import base64
import io
import lzma
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
from helpers import outputs_text

from utils.training import install
from utils.training.experiment_db import ExperimentDB
from utils.training.notebook_run import run_notebook, set_params

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "training.ipynb"
FAKE_COLAB = ROOT / "tests" / "fake_colab"
GIT = ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com",
       "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"]
# A form as a person would fill it for a first try: synthetic data, one epoch, a tiny model,
# Drive on and the download on (both played by the fake google.colab), the default install.
FORM = {
    "data_source": "synthetic", "run_name": "standalone", "use_drive": True, "download": True,
    "n_layers": 1, "n_heads": 2, "d_model": 32, "block_size": 32, "batch_size": 16,
    "synthetic_tokens": 20000, "synthetic_vocab": 32, "mode": "fast", "epochs": 1,
}
PROBE = "\nimport utils.training as _lib\nprint('LIBRARY FILE', _lib.__file__)\n"


def install_cell() -> str:
    """Cell 1.1 exactly as the committed notebook has it."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code")


def cell_value(name: str) -> str:
    return re.search(rf'^{name} = "([^"]*)"', install_cell(), re.MULTILINE)[1]


def unpack_payload(dest: Path) -> Path:
    """The files the notebook carries, written to ``dest`` (a checkout of that library)."""
    archive = lzma.decompress(base64.b64decode(cell_value("LIBRARY")))
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        zf.extractall(dest)
    return dest


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh Colab-like process: no PYTHONPATH (so no ``utils``), its own
    temp folder (where cell 1.1 unpacks and clones), no network for W&B."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env.update(TMPDIR=str(tmp_path / "tmp"), WANDB_MODE="offline", PYTHONDONTWRITEBYTECODE="1")
    env.update(extra)
    return env


def run_cell(tmp_path: Path, values: dict[str, str] | None = None, *, source: str | None = None,
             **env: str) -> subprocess.CompletedProcess:
    """Cell 1.1 with form ``values`` in a new ``python`` started in an empty folder (plain
    Python: no IPython needed), followed by a probe printing where ``utils.training`` came from."""
    cell, used = set_params(source or install_cell(), values or {})
    assert used == set(values or {})
    folder = tmp_path / "content"
    folder.mkdir(exist_ok=True)
    script = tmp_path / "cell_1_1.py"
    script.write_text(cell + PROBE)
    return subprocess.run([sys.executable, str(script)], cwd=folder, capture_output=True,
                          text=True, env=clean_env(tmp_path, **env), timeout=300)


def library_file(result: subprocess.CompletedProcess) -> Path:
    assert result.returncode == 0, result.stdout + result.stderr
    return Path(re.search(r"^LIBRARY FILE (.+)$", result.stdout, re.MULTILINE)[1])


def failure(result: subprocess.CompletedProcess) -> str:
    """The message of the exception that stopped the cell; nothing after it ran."""
    assert result.returncode != 0, result.stdout
    assert "LIBRARY FILE" not in result.stdout
    return result.stderr


# ---------------------------------------------------------------------- the notebook alone


@pytest.mark.slow
def test_notebook_alone_runs_all_as_in_colab(tmp_path, monkeypatch):
    content = tmp_path / "content"
    content.mkdir()
    shutil.copy(NOTEBOOK, content / "training.ipynb")
    env = clean_env(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import utils"], cwd=content, env=env,
                           capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'utils'" in probe.stderr

    drive, downloads = tmp_path / "drive", tmp_path / "downloads"
    for name, value in {**env, "PYTHONPATH": str(FAKE_COLAB), "FAKE_COLAB_DRIVE": str(drive),
                        install.DRIVE_MOUNT_ENV: str(drive),
                        "TRANSFORMER_TRAINING_HOME": str(tmp_path / "local-ws"),
                        "FAKE_COLAB_DOWNLOADS": str(downloads)}.items():
        monkeypatch.setenv(name, value)  # the kernel inherits them
    monkeypatch.delenv("PYTHONSTARTUP", raising=False)
    executed = run_notebook(content / "training.ipynb", FORM, output=tmp_path / "executed.ipynb",
                            timeout=600, cwd=content)
    nb = nbformat.read(executed, as_version=4)
    text = outputs_text(nb, tracebacks=True)

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "every code cell ran"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert "Traceback" not in text and "ERROR" not in text
    unpacked = tmp_path / "tmp" / f"transformer-training-{cell_value('LIBRARY_SHA256')[:12]}"
    assert f"unpacked from this notebook into {unpacked}" in text
    assert (unpacked / "utils" / "training" / "install.py").is_file()

    # Drive is played by the fake; the workspace goes there when it honours the mount override
    # (see test_fake_drive_mount_is_honoured_by_the_workspace), else to the local folder.
    on_drive = "(Google Drive" in text
    ws = drive / "MyDrive" / "TransformerTraining" if on_drive else tmp_path / "local-ws"
    assert f"Workspace: {ws}" in text
    with ExperimentDB(ws / "experiments.db", verbose=False) as db:
        runs = db.list_runs()
        assert list(runs["name"]) == ["standalone"]
        assert runs.iloc[0]["status"] == "completed" and runs.iloc[0]["epochs"] == 1
    assert any((ws / "checkpoints" / "standalone").glob("step-*.pt"))
    assert (ws / "results" / "standalone_dashboard.png").stat().st_size > 50_000
    bundle = ws / "results" / "bundles" / "standalone"
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in bundle.iterdir()}
    assert (downloads / "standalone.zip").is_file()  # files.download() got the archive


def test_fake_drive_mount_is_honoured_by_the_workspace(tmp_path):
    drive = tmp_path / "drive"
    code = ("from utils.training.workspace import Workspace\n"
            "ws = Workspace.setup()\nprint('ROOT', ws.root, ws.on_drive)\n")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
        env=clean_env(tmp_path, PYTHONPATH=os.pathsep.join([str(FAKE_COLAB), str(ROOT)]),
                      FAKE_COLAB_DRIVE=str(drive), **{install.DRIVE_MOUNT_ENV: str(drive)},
                      TRANSFORMER_TRAINING_HOME=str(tmp_path / "local")))
    assert f"ROOT {drive / 'MyDrive' / 'TransformerTraining'} True" in result.stdout, result.stdout


# ---------------------------------------------------------------------- the bundled route


def test_damaged_payload_stops_the_cell(tmp_path):
    source = install_cell()
    payload = cell_value("LIBRARY")
    middle = len(payload) // 2
    flipped = "A" if payload[middle] != "A" else "B"
    damaged = source.replace(payload, payload[:middle] + flipped + payload[middle + 1:])
    message = failure(run_cell(tmp_path, source=damaged))
    assert "The library inside cell 1.1 is damaged" in message
    assert "fresh copy of training.ipynb" in message
    assert not list((tmp_path / "tmp").glob("transformer-training-*"))  # nothing unpacked


def test_a_different_importable_library_stops_the_cell(tmp_path):
    other = tmp_path / "other"
    (other / "utils" / "training").mkdir(parents=True)
    (other / "utils" / "__init__.py").write_text("")
    (other / "utils" / "training" / "__init__.py").write_text('"""Someone else\'s library."""\n')
    message = failure(run_cell(tmp_path, PYTHONPATH=str(other)))
    assert "InstallError: A different training library is already importable from" in message
    assert str(other / "utils" / "training") in message
    assert install.library_hash(other / "utils" / "training")[:12] in message
    assert cell_value("LIBRARY_HASH")[:12] in message
    assert f"version {cell_value('LIBRARY_VERSION')}" in message
    assert "What to do" in message and 'install_from = "git"' in message


def test_a_non_library_utils_package_does_not_get_in_the_way(tmp_path):
    """Plenty of projects have a top-level ``utils``: without ``training`` in it, it is not ours,
    and the bundled copy goes first on sys.path."""
    other = tmp_path / "other"
    (other / "utils").mkdir(parents=True)
    (other / "utils" / "__init__.py").write_text("")
    found = library_file(run_cell(tmp_path, PYTHONPATH=str(other)))
    assert found.is_relative_to(tmp_path / "tmp")


@pytest.mark.slow
def test_the_same_library_already_importable_is_used(tmp_path):
    checkout = unpack_payload(tmp_path / "checkout")
    result = run_cell(tmp_path, PYTHONPATH=str(checkout))
    assert library_file(result) == checkout / "utils" / "training" / "__init__.py"
    assert f"using the copy already importable from {checkout / 'utils' / 'training'}" in result.stdout


def test_unknown_route_is_refused(tmp_path):
    cell = install_cell().replace('install_from = "bundled"', 'install_from = "pypi"')
    assert "install_from = 'pypi': choose one of bundled, git, drive" in failure(
        run_cell(tmp_path, source=cell))


# ---------------------------------------------------------------------- the git route


@pytest.fixture(scope="module")
def git_repo(tmp_path_factory):
    """A bare repository of the library the notebook carries: main (that library), a branch
    "changed" (one file edited), and a commit that no branch or tag reaches."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    base = tmp_path_factory.mktemp("git")
    work = unpack_payload(base / "work")
    (work / "pyproject.toml").write_text('[project]\nname = "transformer-training"\n'
                                         f'version = "{cell_value("LIBRARY_VERSION")}"\n')

    def git(*args: str, cwd: Path = work) -> str:
        return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True,
                              text=True).stdout.strip()

    git("init", "--quiet")
    git("add", "-A")
    git("commit", "--quiet", "-m", "library")
    main = git("rev-parse", "HEAD")
    git("checkout", "--quiet", "-b", "changed")
    with (work / "utils" / "training" / "__init__.py").open("a") as fh:
        fh.write("# changed on a branch\n")
    git("commit", "--quiet", "-am", "changed")
    git("checkout", "--quiet", "--detach", "main")
    (work / "requirements-training.txt").write_text("safetensors>=0.4\n")
    git("commit", "--quiet", "-am", "unreachable")
    hidden = git("rev-parse", "HEAD")
    bare = base / "library.git"
    git("clone", "--quiet", "--bare", str(work), str(bare), cwd=base)
    git("fetch", "--quiet", str(work), hidden, cwd=bare)  # present, but on no branch or tag:
    git("update-ref", "refs/hidden/x", hidden, cwd=bare)  # a clone does not fetch refs/hidden
    return bare, main, hidden


@pytest.mark.slow
def test_git_route_installs_a_commit_sha(tmp_path, git_repo):
    bare, main, _ = git_repo
    result = run_cell(tmp_path, {"install_from": "git", "git_url": str(bare), "git_ref": main})
    found = library_file(result)
    clones = list((tmp_path / "tmp").glob("transformer-training-git-*"))
    assert len(clones) == 1 and found == clones[0] / "utils" / "training" / "__init__.py"
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=clones[0], capture_output=True,
                          text=True).stdout.strip() == main
    assert f"(commit {main[:12]})" in result.stdout
    assert "the same files as the copy inside this notebook" in result.stdout
    again = run_cell(tmp_path, {"install_from": "git", "git_url": str(bare), "git_ref": main})
    assert library_file(again) == found and "Reusing the clone" in again.stdout


@pytest.mark.slow
def test_git_route_says_when_the_library_differs_from_the_notebook(tmp_path, git_repo):
    bare, _, _ = git_repo
    result = run_cell(tmp_path, {"install_from": "git", "git_url": str(bare),
                                 "git_ref": "changed"})
    assert library_file(result).parts[-4].startswith("transformer-training-git-")
    assert "Note: this notebook was built with version" in result.stdout
    assert cell_value("LIBRARY_HASH")[:12] in result.stdout


def test_git_route_fetches_a_commit_on_no_branch(tmp_path, git_repo):
    """``git clone --branch`` cannot take a SHA and a clone lacks unadvertised commits: the cell
    fetches the ref itself. (The import is left out: the other git tests do it.)"""
    bare, _, hidden = git_repo
    cell = install_cell().replace("from utils.training import (", "if False: (")
    url = bare.as_uri()  # file://: a real transport, as with a remote (a plain path hard-links)
    result = run_cell(tmp_path, {"install_from": "git", "git_url": url, "git_ref": hidden},
                      source=cell)
    found = library_file(result)
    assert (found.parents[2] / "requirements-training.txt").read_text() == "safetensors>=0.4\n"
    assert f"(commit {hidden[:12]})" in result.stdout


def test_git_route_bad_ref_says_what_to_use(tmp_path, git_repo):
    bare, _, _ = git_repo
    message = failure(run_cell(tmp_path, {"install_from": "git", "git_url": str(bare),
                                          "git_ref": "no-such-branch"}))
    assert "InstallError: git_ref 'no-such-branch' is not a branch, tag or commit of" in message
    assert "full 40-character commit SHA" in message
    assert "no-such-branch" in message.split("What to do")[0]  # git's own words are included
    assert not list((tmp_path / "tmp").glob("*git-*"))  # no half clone left behind


def test_git_route_bad_url_says_what_to_do(tmp_path):
    message = failure(run_cell(tmp_path, {"install_from": "git",
                                          "git_url": str(tmp_path / "missing.git")}))
    assert f"InstallError: git clone {tmp_path / 'missing.git'} failed" in message
    assert "does not exist" in message or "not a git repository" in message.lower()
    assert "check git_url" in message


def test_git_route_needs_a_url(tmp_path):
    assert 'install_from = "git" needs git_url' in failure(
        run_cell(tmp_path, {"install_from": "git"}))


def test_git_url_credentials_are_never_printed(tmp_path):
    message = failure(run_cell(tmp_path, {"install_from": "git",
                                          "git_url": "file://user:s3cret@/nonexistent/repo.git"}))
    assert "s3cret" not in message and "***@" in message


# ---------------------------------------------------------------------- the drive route


def drive_env(tmp_path: Path) -> dict[str, str]:
    return {install.DRIVE_MOUNT_ENV: str(tmp_path / "drive")}


@pytest.mark.slow
def test_drive_route_installs_a_repository_zip(tmp_path):
    checkout = unpack_payload(tmp_path / "transformer-training-main")
    folder = tmp_path / "drive" / "MyDrive" / "TransformerTraining" / "packages"
    folder.mkdir(parents=True)
    shutil.make_archive(str(folder / "library"), "zip", tmp_path, checkout.name)
    result = run_cell(tmp_path, {"install_from": "drive", "drive_package": "packages/library.zip"},
                      **drive_env(tmp_path))
    found = library_file(result)
    assert found.parts[-5].startswith("transformer-training-drive-")
    assert found.parts[-4] == "transformer-training-main"  # GitHub's zip has one top folder
    assert "the same files as the copy inside this notebook" in result.stdout


def test_drive_route_refuses_paths_outside_drive(tmp_path):
    for package, expected in [
        ("../secrets.zip", "'..' is not allowed"),
        ("/etc/library.zip", "is outside Google Drive"),
        ("library.tar.gz", "give a .whl"),
        ("", 'install_from = "drive" needs drive_package'),
    ]:
        (tmp_path / "drive" / "MyDrive" / "TransformerTraining").mkdir(parents=True, exist_ok=True)
        (tmp_path / "drive" / "MyDrive" / "TransformerTraining" / "library.tar.gz").write_text("x")
        message = failure(run_cell(tmp_path, {"install_from": "drive", "drive_package": package},
                                   **drive_env(tmp_path)))
        assert expected in message, (package, message)


def test_drive_route_mounts_drive_in_colab_and_names_a_missing_file(tmp_path):
    drive = tmp_path / "drive"
    result = run_cell(tmp_path, {"install_from": "drive", "drive_package": "pkg/lib.whl"},
                      PYTHONPATH=str(FAKE_COLAB), FAKE_COLAB_DRIVE=str(drive),
                      **drive_env(tmp_path))
    message = failure(result)
    assert f"Mounted at {drive}" in result.stdout
    assert f"No file at {drive / 'MyDrive' / 'TransformerTraining' / 'pkg' / 'lib.whl'}" in message


def test_drive_route_outside_colab_says_it_cannot_mount(tmp_path):
    message = failure(run_cell(tmp_path, {"install_from": "drive", "drive_package": "x.whl"},
                               **drive_env(tmp_path)))
    assert "is not mounted" in message and "not Colab" in message


# ---------------------------------------------------------------------- installing little


def test_requirements_parse_and_never_include_torch_or_numpy(monkeypatch):
    reqs = install.parse_requirements([
        "# a comment", "", "wandb>=0.16  # why", "optuna >= 3.4, <9", "torch>=2.1",
        "numpy", "pytest>=7; extra == 'dev'", "--index-url https://example.com",
        "foo[bar]>=1.0",
    ])
    assert reqs == [("wandb", ">=0.16"), ("optuna", ">=3.4,<9"), ("torch", ">=2.1"),
                    ("numpy", ""), ("foo", ">=1.0")]
    versions = {"wandb": "0.17.0", "optuna": "3.0.0", "torch": "2.0.0", "numpy": None, "foo": None}
    monkeypatch.setattr(install, "installed_version", versions.get)
    to_install, refused = install.missing_requirements(reqs)
    assert to_install == ["optuna>=3.4,<9", "foo>=1.0"]
    assert refused == ["torch>=2.1", "numpy"]


@pytest.mark.parametrize(("version", "spec", "ok"), [
    ("0.17.0", ">=0.16", True), ("0.15.9", ">=0.16", False), ("2.1.0+cu121", ">=2.1", True),
    ("12.535.1", ">=12.535", True), ("1.2", ">=1.2,<2", True), ("2.0", ">=1.2,<2", False),
    ("3.4.1", "!=3.4.1", False), ("1.0", "", True), ("1.0", ">=not-a-version", True),
])
def test_version_checks(version, spec, ok, monkeypatch):
    assert install.satisfies(version, spec) is ok
    monkeypatch.setitem(sys.modules, "packaging.specifiers", None)  # no packaging: installed = ok
    assert install.satisfies(version, spec) is True


def test_pip_runs_only_for_what_is_missing(monkeypatch, capsys):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    install.ensure_requirements([("pytest", ">=1"), ("torch", "")], run=fake_run)
    assert calls == [] and "already installed" in capsys.readouterr().out
    install.ensure_requirements([("pytest", ">=1"), ("surely-not-installed-xyz", ">=1")],
                                run=fake_run)
    (cmd,) = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"]
    assert cmd[-1] == "surely-not-installed-xyz>=1" and "--upgrade" not in cmd
    assert "--constraint" in cmd  # torch and numpy pinned to what is installed


def test_pip_failure_names_what_failed(monkeypatch):
    def failing(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    with pytest.raises(install.InstallError, match="(?s)pip could not install nope>=1.*"
                       "No matching distribution.*online"):
        install.ensure_requirements([("nope", ">=1")], run=failing)


def test_an_update_to_an_imported_package_asks_for_a_restart():
    before = {"pytest": "7.0.0", "somepkg": "1.0"}
    after = {"pytest": "8.0.0", "somepkg": "1.0", "newpkg": "2.0"}
    with pytest.raises(install.InstallError, match=r"(?s)pytest 7.0.0 -> 8.0.0 \(already "
                       r"imported: .*pytest.*Runtime > Restart session"):
        install._stop_if_restart_needed(before, after)
    install._stop_if_restart_needed({"somepkg": "1.0"}, after)  # nothing imported changed


def test_library_hash_is_about_content_not_place(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        (folder / "sub").mkdir(parents=True)
        (folder / "__init__.py").write_text("x = 1\n")
        (folder / "sub" / "m.py").write_text("y = 2\n")
    (b / "__pycache__").mkdir()
    (b / "__pycache__" / "junk.py").write_text("ignored")
    (b / "notes.txt").write_text("not code")
    assert install.library_hash(a) == install.library_hash(b)
    (b / "sub" / "m.py").write_text("y = 3\n")
    assert install.library_hash(a) != install.library_hash(b)
    assert install.library_files(a) == ["__init__.py", "sub/m.py"]


def test_install_error_shows_its_message_not_a_traceback_in_ipython():
    error = install.InstallError("what failed\nWhat to do: this")
    assert error._render_traceback_() == ["InstallError: what failed\nWhat to do: this"]
    assert isinstance(error, RuntimeError)


def test_installer_is_stdlib_only():
    """Cell 1.1 loads install.py before anything is installed: it may import only the standard
    library (``packaging`` and ``google.colab`` lazily, where their absence is handled)."""
    import ast

    tree = ast.parse(Path(install.__file__).read_text())
    lazy = {"packaging", "google"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: it is loaded by path, outside the package"
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or (top in lazy and node not in tree.body), name
