"""Command line: ``python -m utils.training train|demo|search|runs|dashboard|export|run-notebook``.

The same library the notebook uses, without a notebook: for a terminal, a script or a job queue.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

from .checkpoints import CheckpointError
from .data import DataError
from .experiment_db import ExperimentDB, ExperimentDBError, RunNotFoundError
from .export import ExportError, add_export_command, add_runs_command
from .hardware import validate_for_hardware
from .live_plotting import PlotError
from .models import ModelLoadError
from .notebook import parse_sets, run_notebook
from .search import SearchError, SearchSpaceError, add_search_command
from .session import TrainingSession
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


def _build_config(args: argparse.Namespace) -> TrainingConfig:
    config = TrainingConfig.load(args.config) if args.config else TrainingConfig()
    if args.set:
        config = config.apply_overrides(args.set)
    # Machine-aware: refuses fp16 on a CPU or a model too big before the workspace exists.
    return validate_for_hardware(config)


def _run(config: TrainingConfig, args: argparse.Namespace) -> tuple[TrainingResult, Workspace]:
    """Train with the experiment DB and the dashboard, exactly as the notebook does."""
    workspace = Workspace.setup(args.workspace)
    with ExperimentDB.open_for_workspace(workspace) as db:
        session = TrainingSession.create(config.validate(), workspace, db=db,
                                         trust=getattr(args, "trust", False),
                                         progress=not args.no_progress)
        result = session.fit()
        if result.history:
            session.save_dashboard(show=False)
    return result, workspace


def _cmd_train(args: argparse.Namespace) -> int:
    result, _ = _run(_build_config(args), args)
    print(f"Checkpoints: {result.checkpoint_dir}")
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


def _cmd_dashboard(args: argparse.Namespace) -> int:
    """Redraw a stored run's dashboard from the experiment DB (no checkpoint needed)."""
    from .dashboard import TrainingDashboard

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utils.training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config field (repeatable), e.g. --set epochs=3")
        p.add_argument("--workspace", metavar="DIR",
                       help="workspace folder (default: Drive in Colab, else ./workspace)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p_train = sub.add_parser("train", help="train from a config JSON file")
    p_train.add_argument("--config", metavar="FILE", help="a TrainingConfig JSON (default: defaults)")
    common(p_train)
    p_train.set_defaults(func=_cmd_train)

    p_train.add_argument("--trust", action="store_true",
                         help="allow running a Transformer Builder Gist's model.py")

    p_demo = sub.add_parser("demo", help="run the notebook on built-in defaults (no network)")
    p_demo.add_argument("--set", action="append", metavar="NAME=VALUE",
                        help="change a notebook form field, e.g. --set epochs=5")
    p_demo.add_argument("--workspace", metavar="DIR", help="workspace folder (default ./workspace)")
    p_demo.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    p_demo.set_defaults(func=_cmd_demo)

    add_search_command(sub)
    add_runs_command(sub)
    add_export_command(sub)

    p_dash = sub.add_parser("dashboard", help="draw a stored run's 6-panel dashboard")
    p_dash.add_argument("run", help="run id or name (see `runs`)")
    p_dash.add_argument("--workspace", metavar="DIR", help="workspace folder")
    p_dash.add_argument("--output", metavar="PATH", help=".png, .pdf or .svg "
                        "(default results/<run>_dashboard.png)")
    p_dash.set_defaults(func=_cmd_dashboard)

    p_nb = sub.add_parser("run-notebook", help="execute training.ipynb with a Jupyter kernel, "
                          "filling in its @param form fields first")
    p_nb.add_argument("--set", action="append", metavar="NAME=VALUE",
                      help="a form field's value (repeatable), e.g. --set data_source=synthetic")
    p_nb.add_argument("--output", metavar="PATH", help="where to save the executed notebook")
    p_nb.add_argument("--notebook", default=str(NOTEBOOK), help="the notebook to run")
    p_nb.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    p_nb.set_defaults(func=_cmd_run_notebook)
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
        _check_names(args)
        return args.func(args)
    except RunNotFoundError as exc:
        # The library's message names the Python call; at a shell, name the command.
        where = f" --workspace {args.workspace}" if getattr(args, "workspace", None) else ""
        hint = f"`python -m utils.training runs{where}` lists them (with their ids)"
        print(f"error: {RunNotFoundError(exc.run, exc.path, hint)}", file=sys.stderr)
        return 2
    except (ConfigError, DataError, CheckpointError, TrainingDivergedError, ModelLoadError,
            ExperimentDBError, SearchError, SearchSpaceError, ExportError, PlotError,
            TrainingOutOfMemoryError, WorkspaceError) as exc:
        # Errors a person caused or can fix: the message says what to do; a traceback would bury it.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A full disk, a read-only mount, a missing permission: the machine, not the input.
        print(f"error: {os_error_message(exc, args.command)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted. Run the same command again to resume from the last checkpoint.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
