"""Taking results home: what the workspace holds, a model bundle per run, a zip, run tables.

A bundle (``results/bundles/<run>/``) is what someone needs to use a trained model without the
workspace: the weights as safetensors (no pickle, so loading never runs code), the TrainingConfig,
the tokenizer and a README whose snippet loads it and generates text with :func:`load_bundle`.
Weights come from the run's best checkpoint (else its newest), because that is the model the
run's reported val loss belongs to. Floor 6: wiring over checkpoints, models, data and the DB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from . import metric_names as M
from .checkpoints import CheckpointError, load_checkpoint
from .data import load_tokenizer, tokenizer_from_dict
from .models import build_model, generate, load_exported_model, parse_source
from .training_config import TrainingConfig
from .workspace import Workspace, atomic_dir, in_colab, is_temp_name

__all__ = [
    "ExportError", "add_export_command", "add_runs_command", "download", "export_archive",
    "export_bundle", "export_summary", "generate_text", "human_size", "load_bundle",
    "run_comparison_table",
]

BUNDLES = "bundles"
ARCHIVES = "archives"
MODEL_SOURCE_DIR = "model_source"  # an exported model's own model.py + config.json
WEIGHTS = "model.safetensors"
# The files a session writes to results/ for a run, by suffix: matching on "<run>_" alone would
# also take run "a_b"'s files for run "a".
RESULT_SUFFIXES = ("_dashboard.png", "_live.png", "_metrics.csv", "_batches.csv")
KINDS = ("checkpoints", "configs", "results", "bundles", "archives", "datasets", "database",
         "other")


class ExportError(ValueError):
    """A run or bundle that cannot be exported or loaded; the message says what to do."""


# --------------------------------------------------------------------------- summary


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _kind(rel: Path) -> str:
    top = rel.parts[0]
    if top == "results" and len(rel.parts) > 2 and rel.parts[1] in (BUNDLES, ARCHIVES):
        return rel.parts[1]
    if top in ("checkpoints", "configs", "results", "datasets"):
        return top
    if top == "search" or rel.name.startswith("experiments.db"):
        return "database"
    return "other"


def _of_run(rel: Path, run: str) -> bool:
    parts = rel.parts
    return ((parts[0] == "checkpoints" and len(parts) > 2 and parts[1] == run)
            or (parts[0] == "configs" and rel.name == f"{run}.json")
            or (parts[:2] == ("results", BUNDLES) and len(parts) > 3 and parts[2] == run)
            or (parts[:2] == ("results", ARCHIVES) and rel.name == f"{run}.zip")
            or (parts[0] == "results" and len(parts) == 2
                and rel.name in {run + suffix for suffix in RESULT_SUFFIXES}))


def _files(root: Path) -> list[Path]:
    """Every finished file under ``root``, skipping half-written ones (temp names)."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not is_temp_name(d))
        found += [Path(folder) / n for n in sorted(names) if not is_temp_name(n)]
    return found


def export_summary(workspace: Workspace, run_name: str | None = None) -> pd.DataFrame:
    """The workspace's files by kind (count, size, folder), plus a total row.

    With ``run_name``, only that run's files: what :func:`export_archive` can take home.
    """
    root = Path(workspace.root)
    counts = {k: [0, 0] for k in KINDS}
    for path in _files(root):
        rel = path.relative_to(root)
        if run_name is not None and not _of_run(rel, run_name):
            continue
        entry = counts[_kind(rel)]
        entry[0] += 1
        entry[1] += path.stat().st_size
    where = {"checkpoints": workspace.checkpoints, "configs": workspace.configs,
             "results": workspace.results, "bundles": workspace.results / BUNDLES,
             "archives": workspace.results / ARCHIVES, "datasets": workspace.datasets,
             "database": root, "other": root}
    rows = [{"kind": k, "files": n, "size": human_size(b), "bytes": b, "path": str(where[k])}
            for k, (n, b) in counts.items()]
    total = sum(b for _, b in counts.values())
    rows.append({"kind": "total", "files": sum(n for n, _ in counts.values()),
                 "size": human_size(total), "bytes": total, "path": str(root)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- bundle


def _run_and_workspace(run: Any, workspace: Workspace | None) -> tuple[str, Workspace, Any]:
    """(run name, workspace, session or None) from a run name or a TrainingSession."""
    session = None if isinstance(run, str) else run
    if session is not None:
        name = session.config.run_name
        workspace = workspace if workspace is not None else session.workspace
    else:
        name = run
    if workspace is None:
        raise ExportError(f"Exporting run {name!r} needs the workspace that holds its "
                          "checkpoints; pass workspace=Workspace.setup(...)")
    return name, workspace, session


def _checkpoint(workspace: Workspace, run: str) -> Path:
    folder = workspace.checkpoints / run
    # Zero-padded step numbers: sorting the names sorts by step.
    best = sorted(folder.glob("best-step-*.pt"))
    periodic = sorted(folder.glob("step-*.pt"))
    if best or periodic:
        return (best or periodic)[-1]
    runs = sorted(p.name for p in workspace.checkpoints.iterdir() if p.is_dir() and any(
        p.glob("*.pt"))) if workspace.checkpoints.exists() else []
    hint = ("Search trials keep no checkpoints (unless run_search(keep_trial_checkpoints="
            "True)): train the search's best_config and export that run." if "-trial-" in run
            else "Train it first (checkpoints are saved every epoch).")
    raise ExportError(f"Run {run!r} has no checkpoint in {folder}; runs with checkpoints: "
                      f"{', '.join(runs) or 'none'}. {hint}")


def _unique_tensors(state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, str]]:
    """Tensors safetensors will accept, and {alias: name} for the tied ones.

    safetensors refuses tensors that share memory (a tied embedding and output head): a tensor
    identical to one already kept becomes an alias, any other overlap an independent copy."""
    kept: dict[tuple, str] = {}
    storages: set[int] = set()
    tensors, aliases = {}, {}
    for name, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        key = (ptr, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if key in kept:
            aliases[name] = kept[key]
            continue
        kept[key] = name
        shared = ptr in storages and tensor.numel() > 0
        storages.add(ptr)
        tensors[name] = tensor.clone() if shared else tensor.contiguous()
    return tensors, aliases


def _source_folder(config: TrainingConfig, session: Any, workspace: Workspace) -> Path:
    """Where an exported (Transformer Builder) model's own files are."""
    info = getattr(getattr(session, "model", None), "source_info", None) or {}
    if info.get("folder"):
        return Path(info["folder"])
    src = parse_source(config.model_ref)
    if src.kind == "folder" and src.folder is not None:
        return Path(src.folder)
    from .models.export_source import default_cache_dir

    # Training caches Gists in the workspace (they survive a new VM there); the temp cache is
    # where a bare load_exported_model call puts them. A pinned revision must match exactly.
    pattern = f"{src.gist_id}-{src.revision}" if src.revision else f"{src.gist_id}-*"
    cached = []
    for base in (workspace.root / "models", default_cache_dir()):
        cached = sorted((base / "gists").glob(pattern), key=lambda p: p.stat().st_mtime)
        if cached:
            break
    if not cached:
        raise ExportError(f"The files of Gist {src.gist_id} are not cached on this machine; "
                          "pass the TrainingSession to export_bundle, or load the model once "
                          "(model_from_config) so they are cached.")
    return cached[-1]


_README = """# {run}

A language model trained with the `utils.training` library (TransformerTraining notebook).

- model: {model}, {params:,} parameters, context {block} tokens
- weights: `{weights}` from checkpoint `{checkpoint}` (epoch {epoch}, step {step}){loss}
- `config.json`: the TrainingConfig it was trained with; `tokenizer.json`: its tokenizer{source}

## Load it and generate text

Needs PyTorch, safetensors and the `utils/training` package (the repository this notebook
came from) on the Python path. Point `BUNDLE` at this folder if you moved it.

```python
from utils.training.export import generate_text, load_bundle

BUNDLE = {path!r}
model, tokenizer, config = load_bundle(BUNDLE)
print(generate_text(model, tokenizer, prompt={prompt!r}, max_new_tokens=100))
```
"""


def export_bundle(run: Any, workspace: Workspace | None = None, db: Any = None) -> Path:
    """Write ``results/bundles/<run>/`` and return it; ``run`` is a run name or a session.

    The folder is built under a temp name and swapped in whole, so a disconnect never leaves
    half a bundle next to a README that promises a whole one.
    """
    name, workspace, session = _run_and_workspace(run, workspace)
    checkpoint = _checkpoint(workspace, name)
    try:
        state = load_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise ExportError(f"Cannot export run {name!r}: {exc}") from exc
    config = TrainingConfig.from_dict(state["config"])
    token_file = workspace.checkpoints / name / "tokenizer.json"
    if token_file.is_file():
        tokenizer = load_tokenizer(token_file)
    elif state.get("tokenizer"):
        tokenizer = tokenizer_from_dict(state["tokenizer"])
    else:
        raise ExportError(f"Run {name!r} saved no tokenizer ({token_file} is missing and the "
                          "checkpoint has none); train it again with this version.")
    tensors, aliases = _unique_tensors(state["model"])

    final = workspace.results / BUNDLES / name
    with atomic_dir(final, replace=True) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={
            "format": "pt", "aliases": json.dumps(aliases), "run_name": name,
            "checkpoint": checkpoint.name})
        config.save(tmp / "config.json")
        tokenizer.save(tmp / "tokenizer.json")
        source = ""
        if config.model_source != "builtin":
            folder = _source_folder(config, session, workspace)
            (tmp / MODEL_SOURCE_DIR).mkdir()
            for file in sorted(folder.iterdir()):
                if file.is_file() and file.suffix in (".py", ".json"):
                    shutil.copyfile(file, tmp / MODEL_SOURCE_DIR / file.name)
            source = f"; `{MODEL_SOURCE_DIR}/`: the exported model's own code and config"
        progress = state.get("progress", {})
        best = progress.get("best_val_loss", math.nan)
        params = sum(t.numel() for t in tensors.values())
        (tmp / "README.md").write_text(_README.format(
            run=name, weights=WEIGHTS, checkpoint=checkpoint.name, params=params,
            model="built-in GPT" if config.model_source == "builtin" else
            f"{config.model_source} {config.model_ref}",
            block=config.block_size, epoch=progress.get("epoch", "?"),
            step=progress.get("global_step", "?"), source=source, path=str(final),
            loss=f"; best val loss {best:.4f}" if math.isfinite(best) else "",
            prompt=config.sample_prompt), encoding="utf-8")
    _log_artifact(db, name, "bundle", final / WEIGHTS)
    return final


def _log_artifact(db: Any, run: str, kind: str, path: Path) -> None:
    if db is None:
        return
    from .experiment_db import ExperimentDBError

    try:
        db.log_artifact(run, kind, path)
    except ExperimentDBError as exc:
        print(f"Note: {kind} not recorded in the experiment database: {exc}")


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Any,
                                                                               TrainingConfig]:
    """(model in eval mode, tokenizer, config) from a bundle folder written by export_bundle."""
    folder = Path(path)
    missing = [n for n in (WEIGHTS, "config.json", "tokenizer.json")
               if not (folder / n).is_file()]
    if missing:
        raise ExportError(f"{folder} is not a complete model bundle: {', '.join(missing)} "
                          "missing. Export it again with export_bundle(run, workspace).")
    config = TrainingConfig.load(folder / "config.json")
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    if config.model_source == "builtin":
        model = build_model(config, vocab_size=tokenizer.vocab_size)
    else:
        model = load_exported_model(str(folder / MODEL_SOURCE_DIR),
                                    vocab_size=tokenizer.vocab_size, verbose=False)
    with safe_open(str(folder / WEIGHTS), framework="pt", device="cpu") as weights:
        aliases = json.loads((weights.metadata() or {}).get("aliases", "{}"))
        tensors = {key: weights.get_tensor(key) for key in weights.keys()}  # noqa: SIM118
    for alias, original in aliases.items():
        tensors[alias] = tensors[original]
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        detail = "; ".join(str(exc).splitlines()[1:3]).strip()
        raise ExportError(f"The weights in {folder / WEIGHTS} do not fit the model that "
                          f"config.json describes ({detail}); export the bundle again.") from exc
    return model.to(device).eval(), tokenizer, config


@torch.no_grad()
def generate_text(model: nn.Module, tokenizer: Any, prompt: str = "", max_new_tokens: int = 100,
                  temperature: float = 0.8, top_k: int | None = None, seed: int = 0) -> str:
    """The prompt and a sampled continuation; seeded, so the same call gives the same text."""
    ids = tokenizer.encode(prompt) if prompt else []
    keep = 0  # decode the prompt with the continuation: tokenizers join tokens their own way
    if not ids:  # an empty prompt starts from end-of-document, as a fresh document would
        eos = getattr(tokenizer, "eos_id", None)
        ids, keep = [eos if isinstance(eos, int) and eos >= 0 else 0], 1
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out = generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                   generator=generator)
    return tokenizer.decode(out[0, keep:].tolist())


# --------------------------------------------------------------------------- archive


def _dashboard(name: str, workspace: Workspace, config: TrainingConfig, db: Any) -> None:
    """The run's dashboard PNG, drawn from its metrics CSV (or the DB) when it is missing."""
    from .dashboard import TrainingDashboard

    path = workspace.results / f"{name}_dashboard.png"
    if path.is_file():
        return
    metrics = workspace.results / f"{name}_metrics.csv"
    batches = workspace.results / f"{name}_batches.csv"
    if metrics.is_file():
        history = pd.read_csv(batches) if batches.is_file() else None
        board = TrainingDashboard(pd.read_csv(metrics), history, run_name=name,
                                  config=config.to_dict())
    elif db is not None:
        board = TrainingDashboard.from_db(db, name)
    else:
        print(f"Note: run {name!r} has no dashboard PNG and no metrics CSV; the archive goes "
              "without a dashboard.")
        return
    board.save(path)


def export_archive(run: Any, workspace: Workspace | None = None, db: Any = None) -> Path:
    """``results/archives/<run>.zip``: bundle, dashboard, metrics CSVs and config, atomically."""
    name, workspace, _ = _run_and_workspace(run, workspace)
    bundle = export_bundle(run, workspace, db)
    config = TrainingConfig.load(bundle / "config.json")
    members = [(f, f"{name}/bundle/{f.name}") for f in _files(bundle)
               if f.parent == bundle] + [(f, f"{name}/bundle/{MODEL_SOURCE_DIR}/{f.name}")
                                         for f in _files(bundle / MODEL_SOURCE_DIR)]
    _dashboard(name, workspace, config, db)
    extras = [workspace.results / f"{name}{suffix}" for suffix in RESULT_SUFFIXES]
    extras.append(workspace.configs / f"{name}.json")
    members += [(f, f"{name}/{f.name}") for f in extras if f.is_file()]

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file, arcname in members:
                archive.write(file, arcname)

    path = workspace.atomic_write(workspace.results / ARCHIVES / f"{name}.zip", write)
    _log_artifact(db, name, "archive", path)
    return path


def download(path: str | Path) -> Path:
    """Start a browser download in Colab; elsewhere the file already is where you are."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"Nothing to download: {path} is not a file.")
    if in_colab():
        from google.colab import files  # type: ignore[import-not-found]

        files.download(str(path))
    else:
        print(f"Saved at {path} ({human_size(path.stat().st_size)})")
    return path


# --------------------------------------------------------------------------- runs


def run_comparison_table(db: Any, run_ids: Sequence[int | str] | None = None,
                         last: int = 5) -> pd.DataFrame:
    """Hyperparameters that differ between runs, best val loss, epochs, time and tokens/s.

    Default: the ``last`` runs in the database, oldest first (the order they were tried in).
    """
    from .dashboard import comparison_table, metrics_frames

    if run_ids is None:
        run_ids = list(db.list_runs(limit=last)["id"])[::-1]
    if not run_ids:
        raise ExportError("No runs to compare: the experiment database is empty.")
    entries, ids, statuses = [], [], []
    for run_id in run_ids:
        run = db.get_run(run_id)
        summary, _ = metrics_frames(db.get_metrics(run["id"]))
        entries.append({"name": run["name"], "config": run["config"], "summary": summary})
        ids.append(run["id"])
        statuses.append(run["status"])
    table = comparison_table(entries, metric=M.VAL_LOSS)
    table.insert(0, "id", ids)
    table.insert(2, "status", statuses)
    return table


def _runs_table(db: Any, limit: int, study: str | None) -> pd.DataFrame:
    runs = db.list_runs(limit=limit, study=study)
    best = "best_val_loss"
    minutes = runs["duration_s"] / 60
    return pd.DataFrame({
        "id": runs["id"], "name": runs["name"], "status": runs["status"],
        "started": runs["created"].dt.strftime("%Y-%m-%d %H:%M"),
        "epochs": runs["epochs"], "best val loss": runs[best].round(4),
        "minutes": minutes.round(1), "study": runs["study"].fillna(""),
        "tags": [", ".join(t) for t in runs["tags"]],
    })


def _open_db(workspace: Workspace) -> Any:
    from .experiment_db import ExperimentDB

    return ExperimentDB.open_for_workspace(workspace, verbose=False)


def _cmd_runs(args: argparse.Namespace) -> int:
    workspace = Workspace.setup(args.workspace, verbose=False)
    with _open_db(workspace) as db:
        table = _runs_table(db, args.last, args.study)
        if table.empty:
            print(f"No runs yet in {workspace.db_path}.")
            return 0
        print(table.to_string(index=False))
        if args.compare:
            print("\n" + run_comparison_table(db, last=args.last).to_string(index=False))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    workspace = Workspace.setup(args.workspace)
    try:
        with _open_db(workspace) as db:
            archive = export_archive(args.run, workspace, db)  # writes the bundle first
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bundle = workspace.results / BUNDLES / args.run
    print(f"Bundle:  {bundle}\nArchive: {archive} ({human_size(archive.stat().st_size)})")
    return 0


def add_runs_command(subparsers: Any) -> argparse.ArgumentParser:
    """``python -m utils.training runs``: the experiment database as a table."""
    p = subparsers.add_parser("runs", help="list the runs in the experiment database")
    p.add_argument("--last", type=int, default=20, metavar="N", help="newest N runs (default 20)")
    p.add_argument("--study", metavar="NAME", help="only the trials of this search study")
    p.add_argument("--compare", action="store_true",
                   help="also show the settings that differ between them")
    p.add_argument("--workspace", metavar="DIR", help="workspace folder")
    p.set_defaults(func=_cmd_runs)
    return p


def add_export_command(subparsers: Any) -> argparse.ArgumentParser:
    """``python -m utils.training export RUN``: bundle + zip archive of a run."""
    p = subparsers.add_parser("export", help="write a run's model bundle and zip archive")
    p.add_argument("run", metavar="RUN", help="the run name")
    p.add_argument("--workspace", metavar="DIR", help="workspace folder")
    p.set_defaults(func=_cmd_export)
    return p
