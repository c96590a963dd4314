"""Command line: ``python -m utils.training train|demo|search|runs|dashboard|export|run-notebook``.

The same library the notebook uses, without a notebook: for a terminal, a script or a job queue.
"""

# The whole command line is this file: COMMANDS maps each command to the function that runs it,
# and each add_<command>_command builds its subparser. The functions call the library and print.

from __future__ import annotations

import argparse
import errno
import os
import sys
import sysconfig
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pandas as pd

from .checkpoints import CheckpointError
from .dashboard import TrainingDashboard
from .data import DataError
from .experiment_db import ExperimentDB, ExperimentDBError, RunNotFoundError
from .export import ExportError, export_archive, human_size
from .hardware import DistributedSetupError, distributed, end_distributed
from .history import run_comparison_table
from .models import ModelLoadError
from .notebook_run import run_notebook
from .plot_style import PlotError
from .run import TrainingSession, validate_config
from .search import SearchError, SearchSpaceError, run_search
from .trainer import TrainingDivergedError, TrainingOutOfMemoryError, TrainingResult
from .training_config import ConfigError, TrainingConfig
from .workspace import UnsafeNameError, Workspace, WorkspaceError, check_name

NOTEBOOK = Path(__file__).resolve().parents[2] / "training.ipynb"


def demo_form() -> dict[str, object]:
    """Form values for a notebook run that needs no network and finishes in a few minutes on a
    laptop CPU: a small byte-level GPT on the Python standard library's own source, a real
    corpus every machine has."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return {
        "run_name": "demo", "use_drive": False, "download": False,
        "data_source": "local", "local_path": str(stdlib / "[a-c]*.py"), "max_samples": 40,
        "tokenizer": "byte", "n_layers": 4, "n_heads": 4, "d_model": 128, "block_size": 128,
        "batch_size": 16, "learning_rate": 0.002, "mode": "fast", "epochs": 3,
        "sample_prompt": "def ",
    }


def parse_sets(pairs: list[str] | None) -> dict[str, str]:
    """``--set name=value`` pairs as a dict of strings; the notebook runner gives them types."""
    values = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError([f"{pair!r}: write --set name=value"], header="Bad --set value")
        values[name.strip()] = value
    return values


def _load_config(args: argparse.Namespace) -> TrainingConfig:
    config = TrainingConfig.load(args.config) if args.config else TrainingConfig()
    return config.apply_overrides(args.set) if args.set else config


def _build_config(args: argparse.Namespace) -> TrainingConfig:
    # Machine-aware: refuses fp16 on a CPU or a model too big before the workspace exists.
    return validate_config(_load_config(args))


def _run(config: TrainingConfig, args: argparse.Namespace) -> tuple[TrainingResult, Workspace]:
    """Train with the experiment DB and the dashboard, exactly as the notebook does."""
    main = distributed().is_main  # under torchrun rank 0 alone creates and writes files
    workspace = Workspace.setup(args.workspace, verbose=main, create=main)
    with (ExperimentDB.open_for_workspace(workspace) if main else nullcontext()) as db:
        session = TrainingSession.create(config, workspace, db=db,
                                         trust=getattr(args, "trust", False),
                                         progress=not args.no_progress)
        result = session.fit()
        if result.history and main:
            session.save_dashboard(show=False)
    return result, workspace


# ---------------------------------------------------------------------- the commands


def _cmd_train(args: argparse.Namespace) -> int:
    dist = distributed()  # launched by torchrun: join the process group first
    result, _ = _run(_build_config(args), args)
    if dist.is_main:
        print(f"Checkpoints: {result.checkpoint_dir}")
    end_distributed()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The notebook itself, run top to bottom by a real kernel with the demo's form values."""
    values = {**demo_form(), **parse_sets(args.set)}
    name = check_name(values["run_name"])  # before anything is written
    workspace = Workspace.setup(args.workspace, mount_drive=False)
    os.environ["TRANSFORMER_TRAINING_HOME"] = str(workspace.root)  # the kernel inherits it
    os.environ.setdefault("WANDB_MODE", "offline")
    output = workspace.result(name, "notebook")
    run_notebook(NOTEBOOK, values, output=output, timeout=args.timeout, echo=True)
    print(
        f"\nDemo finished. Everything it wrote is under {workspace.root}:\n"
        f"  executed notebook: {output}\n"
        f"  dashboard:         {workspace.result(name, 'dashboard')}\n"
        f"  checkpoints:       {workspace.run_dir(name, create=False)}\n"
        f"  config:            {workspace.config_file(name)}\n"
        "Run it again and it reports the finished run; add --set epochs=5 to continue it."
    )
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    """One search worker. Several may run at once on one study (--storage), each on its own
    device; the last to finish writes the best config that counts (or run it again after)."""
    try:
        config = _load_config(args)
        workspace = Workspace.setup(args.workspace)
        result = run_search(
            config, workspace, n_trials=args.trials, timeout=args.timeout,
            study_name=args.study, sampler_seed=args.seed, prune=not args.no_prune,
            trial_epochs=args.trial_epochs, storage=args.storage, device=args.device,
        )
        print(result.trials.to_string(index=False))
        if result.still_running and not result.has_completed:
            print(f"No trial has completed yet; {result.still_running} are running in other "
                  "workers. The last worker to finish writes the best config (or run this "
                  "command again once they are done).")
            return 0
        best = result.best_config
    except (SearchError, SearchSpaceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = best.save(workspace.configs)
    for figure in result.save_figures().values():
        print(f"Figure: {figure}")
    print(f"Best config: {path}\nTrain it with: python -m utils.training train --config {path}")
    return 0


def _runs_table(db: ExperimentDB, limit: int, study: str | None) -> pd.DataFrame:
    """The newest runs. "minutes" is training time over all of a run's sessions (its summary's
    ``elapsed``): the wall time since it was created would count the days between a
    disconnect and the resume. A run without that number (killed before any summary) shows
    its wall time."""
    runs = db.list_runs(limit=limit, study=study)
    best = "best_val_loss"
    summaries = [db.get_run(int(run_id))["summary"] or {} for run_id in runs["id"]]
    trained = pd.Series([s.get("elapsed") for s in summaries], index=runs.index, dtype="float64")
    minutes = trained.fillna(runs["duration_s"]) / 60
    return pd.DataFrame({
        "id": runs["id"], "name": runs["name"], "status": runs["status"],
        "started": runs["created"].dt.strftime("%Y-%m-%d %H:%M"),
        "epochs": runs["epochs"], "best val loss": runs[best].round(4),
        "minutes": minutes.round(1), "study": runs["study"].fillna(""),
        "tags": [", ".join(t) for t in runs["tags"]],
    })


def _cmd_runs(args: argparse.Namespace) -> int:
    workspace = Workspace.setup(args.workspace, verbose=False)
    with ExperimentDB.open_for_workspace(workspace, verbose=False) as db:
        table = _runs_table(db, args.last, args.study)
        if table.empty:
            print(f"No runs yet in {workspace.db_path}.")
            return 0
        print(table.to_string(index=False))
        if args.compare:
            compared = run_comparison_table(db, last=args.last)
            print("\n" + compared.to_string(index=False))
            if compared.attrs.get("caveat"):
                print(f"Caution: {compared.attrs['caveat']}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    workspace = Workspace.setup(args.workspace)
    try:
        with ExperimentDB.open_for_workspace(workspace, verbose=False) as db:
            archive = export_archive(args.run, workspace, db, trust=args.trust)  # bundle first
    except (ExportError, UnsafeNameError) as exc:
        print(f"error{_rank_tag()}: {exc}", file=sys.stderr)
        return 2
    bundle = workspace.bundle_dir(args.run)
    print(f"Bundle:  {bundle}\nArchive: {archive} ({human_size(archive.stat().st_size)})")
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    """Redraw a stored run's dashboard from the experiment DB (no checkpoint needed)."""
    workspace = Workspace.setup(args.workspace)
    with ExperimentDB.open_for_workspace(workspace) as db:
        run = _find_run(db, args.run)
        if args.output:
            output = Path(args.output)
        else:
            try:
                output = workspace.result(run["name"], "dashboard")
            except UnsafeNameError as exc:
                raise UnsafeNameError(f"{exc}. Run {run['id']}'s name cannot name its dashboard "
                                      "file: pass --output PATH") from None
        dashboard = TrainingDashboard.from_db(db, run["id"])
    print(f"Dashboard of run {run['id']} ({run['name']}, {run['status']}): {dashboard.save(output)}")
    return 0


def _find_run(db: ExperimentDB, text: str) -> dict[str, Any]:
    """A run by id ("3") or by name (its newest run), as the help says; an id wins."""
    if text.isdecimal():
        try:
            return db.get_run(int(text))
        except RunNotFoundError:
            pass
    return db.get_run(text)


def _cmd_run_notebook(args: argparse.Namespace) -> int:
    run_notebook(args.notebook, parse_sets(args.set), output=args.output, timeout=args.timeout,
                 echo=True)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": _cmd_train, "demo": _cmd_demo, "search": _cmd_search, "runs": _cmd_runs,
    "export": _cmd_export, "dashboard": _cmd_dashboard, "run-notebook": _cmd_run_notebook,
}


# ---------------------------------------------------------------------- the subparsers


def _command(subparsers: Any, name: str, help: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help)
    p.set_defaults(func=COMMANDS[name])
    return p


def _config_arguments(p: argparse.ArgumentParser) -> None:
    """What every command that builds a TrainingConfig takes."""
    p.add_argument("--config", metavar="FILE", help="a TrainingConfig JSON (default: defaults)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field (repeatable), e.g. --set epochs=3")
    p.add_argument("--workspace", metavar="DIR",
                   help="workspace folder (default: Drive in Colab, else ./workspace)")


def add_train_command(subparsers: Any) -> argparse.ArgumentParser:
    """``python -m utils.training train --config FILE --set KEY=VALUE ...``"""
    p = _command(subparsers, "train", "train from a config JSON file")
    _config_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--trust", action="store_true",
                   help="allow running a Transformer Builder Gist's model.py")
    return p


def add_demo_command(subparsers: Any) -> argparse.ArgumentParser:
    """``python -m utils.training demo``: the notebook on built-in defaults."""
    p = _command(subparsers, "demo", "run the notebook on built-in defaults (no network)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="change a notebook form field, e.g. --set epochs=5")
    p.add_argument("--workspace", metavar="DIR", help="workspace folder (default ./workspace)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    return p


def add_search_command(subparsers: Any) -> argparse.ArgumentParser:
    """``python -m utils.training search --config FILE --trials N --timeout S ...``"""
    p = _command(subparsers, "search", "Optuna search around a config (resumable; several "
                 "workers may share one study with --storage)")
    _config_arguments(p)
    p.add_argument("--trials", type=int, default=10, metavar="N",
                   help="total trials the study should have (finished ones count, all workers "
                   "together)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="stop starting new trials after S seconds")
    p.add_argument("--study", metavar="NAME", help="study name (default: the config's run_name)")
    p.add_argument("--seed", type=int, default=None,
                   help="sampler seed (give each parallel worker its own)")
    p.add_argument("--trial-epochs", type=int, default=None, metavar="E",
                   help="epochs per trial (default: the config's epochs)")
    p.add_argument("--no-prune", action="store_true", help="never stop a trial early")
    p.add_argument("--storage", metavar="URL",
                   help="where the study lives, shared by every worker: sqlite:///search/S.db "
                   "(one machine), journal:search/S.journal (a shared file system such as NFS; "
                   "paths are inside the workspace), postgresql://... or mysql+pymysql://... "
                   "(several machines). Default: search/<study>.db, copied to Drive in Colab")
    p.add_argument("--device", metavar="DEVICE",
                   help="this worker's device: cpu, cuda or cuda:N (default: the first GPU "
                   "CUDA_VISIBLE_DEVICES leaves visible, else the CPU)")
    return p


def add_runs_command(subparsers: Any) -> argparse.ArgumentParser:
    """``python -m utils.training runs``: the experiment database as a table."""
    p = _command(subparsers, "runs", "list the runs in the experiment database")
    p.add_argument("--last", type=int, default=20, metavar="N", help="newest N runs (default 20)")
    p.add_argument("--study", metavar="NAME", help="only the trials of this search study")
    p.add_argument("--compare", action="store_true",
                   help="also show the settings that differ between them")
    p.add_argument("--workspace", metavar="DIR", help="workspace folder")
    return p


def add_export_command(subparsers: Any) -> argparse.ArgumentParser:
    """``python -m utils.training export RUN``: bundle + zip archive of a run."""
    p = _command(subparsers, "export", "write a run's model bundle and zip archive")
    p.add_argument("run", metavar="RUN", help="the run name")
    p.add_argument("--workspace", metavar="DIR", help="workspace folder")
    p.add_argument("--trust", action="store_true",
                   help="a Gist model's run: let its model.py run once to write the README")
    return p


def add_dashboard_command(subparsers: Any) -> argparse.ArgumentParser:
    """``python -m utils.training dashboard RUN``: redraw a stored run's dashboard."""
    p = _command(subparsers, "dashboard", "draw a stored run's 6-panel dashboard")
    p.add_argument("run", help="run id or name (see `runs`)")
    p.add_argument("--workspace", metavar="DIR", help="workspace folder")
    p.add_argument("--output", metavar="PATH", help=".png, .pdf or .svg "
                   "(default results/<run>_dashboard.png)")
    return p


def add_run_notebook_command(subparsers: Any) -> argparse.ArgumentParser:
    """``python -m utils.training run-notebook --set NAME=VALUE ...``"""
    p = _command(subparsers, "run-notebook", "execute training.ipynb with a Jupyter kernel, "
                 "filling in its @param form fields first")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="a form field's value (repeatable), e.g. --set data_source=synthetic")
    p.add_argument("--output", metavar="PATH", help="where to save the executed notebook")
    p.add_argument("--notebook", default=str(NOTEBOOK), help="the notebook to run")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utils.training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_train_command, add_demo_command, add_search_command, add_runs_command,
                add_export_command, add_dashboard_command, add_run_notebook_command):
        add(sub)
    return parser


# What an OSError's errno means for someone at a shell, and what to do about it.
_OS_ADVICE = {
    errno.ENOSPC: "The disk is full: free some space (old checkpoints under checkpoints/, token "
                  "caches under datasets/) or pass --workspace DIR on a disk with room",
    getattr(errno, "EDQUOT", -1): "The disk quota is used up: free some space or pass "
                                  "--workspace DIR elsewhere",
    errno.EACCES: "Permission denied: make it writable, or pass --workspace DIR with a folder "
                  "you can write to",
    errno.EPERM: "Not permitted: make it writable, or pass --workspace DIR with a folder you "
                 "can write to",
    errno.EROFS: "The file system is read-only: pass --workspace DIR with a writable folder",
    errno.ENOENT: "It does not exist: check the path",
    errno.EISDIR: "A folder is where a file should be: move the folder or choose another path",
    errno.ENOTDIR: "A file is where a folder should be: move the file or choose another path",
}


def os_error_message(exc: OSError, command: str) -> str:
    """One paragraph for a failed file operation: what failed, on which path, what to do."""
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    where = f" on {' -> '.join(paths)}" if paths else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = f" [Errno {exc.errno}]" if exc.errno else ""
    advice = _OS_ADVICE.get(exc.errno or 0, "Check the path, its permissions and the free space")
    return (f"`{command}` failed{where}: {reason}{code}. {advice}, then run the same command "
            "again (finished checkpoints and the experiment history are kept).")


def _check_names(args: argparse.Namespace) -> None:
    """Names that become paths, refused before any command runs or writes anything: export's
    RUN names results/bundles/<RUN>/, search's --study names search/<study>.db."""
    if args.command == "export":
        check_name(args.run)
    if args.command == "search" and args.study is not None:
        check_name(args.study, "study name")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except Exception as exc:  # a bug or the machine: torchrun shows the traceback, we the rank
        if _rank_tag():
            print(f"error{_rank_tag()}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        raise


def _rank_tag() -> str:
    """" on rank R of N" under torchrun, where every rank prints its own failure; else ""."""
    world = os.environ.get("WORLD_SIZE", "1")
    return f" on rank {os.environ.get('RANK', '?')} of {world}" if world != "1" else ""


def _main(args: argparse.Namespace) -> int:
    if os.environ.get("WORLD_SIZE", "1") != "1" and args.command != "train":
        if os.environ.get("RANK", "0") == "0":  # one line, not one per rank
            print(f"error: under torchrun only `train` runs; `{args.command}` runs in one "
                  f"process: python -m utils.training {args.command} ... (a search takes "
                  "several workers instead: README, 'Several workers on one study').",
                  file=sys.stderr)
        return 2
    try:
        _check_names(args)
        return args.func(args)
    except RunNotFoundError as exc:
        # The library's message names the Python call; at a shell, name the command.
        where = f" --workspace {args.workspace}" if getattr(args, "workspace", None) else ""
        hint = f"`python -m utils.training runs{where}` lists them (with their ids)"
        print(f"error{_rank_tag()}: {RunNotFoundError(exc.run, exc.path, hint)}", file=sys.stderr)
        return 2
    except (ConfigError, DataError, CheckpointError, TrainingDivergedError, ModelLoadError,
            ExperimentDBError, SearchError, SearchSpaceError, ExportError, PlotError,
            TrainingOutOfMemoryError, WorkspaceError, DistributedSetupError) as exc:
        # Errors a person caused or can fix: the message says what to do; a traceback would bury it.
        print(f"error{_rank_tag()}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A full disk, a read-only mount, a missing permission: the machine, not the input.
        print(f"error{_rank_tag()}: {os_error_message(exc, args.command)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted. Run the same command again to resume from the last checkpoint.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
