"""Taking a run home: what the workspace holds, a model bundle per run, a zip, a download.

A bundle (``results/bundles/<run>/``) is what someone needs to use a trained model without the
workspace, or this library: the built-in GPT as a Hugging Face GPT-2 folder (``config.json``,
``model.safetensors``, ``generation_config.json``, ``tokenizer.json``), which ``transformers``
loads by itself; a Transformer Builder model as its own ``model.py`` and ``config.json`` beside
the weights, which plain torch loads. Either way the README's snippet uses nothing of ours, the
weights are safetensors (no pickle) and ``training_config.json`` keeps the run's settings.
:func:`load_bundle` reads a bundle back into this library; it runs a bundle's ``model.py`` only
with ``trust=True``, after showing each file's SHA-256.

Weights come from the run's best checkpoint (else its newest), because that is the model the
run's reported val loss belongs to. Floor 6: wiring over checkpoints, models, data and the DB.
"""

from __future__ import annotations

import math
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from .checkpoints import CheckpointError, CheckpointManager, checkpoint_files, load_checkpoint
from .dashboard import TrainingDashboard
from .data import load_tokenizer, tokenizer_from_dict
from .data.tokenizer import save_tokenizer
from .errors import PersonFacing
from .experiment_db import ExperimentDB, ExperimentDBError, RunNotFoundError
from .metrics_tracker import NoDatabase
from .models import ModelLoadError, build_model, load_exported_model, parse_source
from .models.export_source import default_cache_dir, file_hashes, read_config
from .models.gpt import gpt_config
from .models.hf_gpt2 import (
    TRANSFORMERS_SNIPPET,
    WEIGHTS,
    GPT2ConversionError,
    load_gpt2_folder,
    save_gpt2_folder,
)
from .models.standalone import torch_snippet
from .models.weights import load_weights, save_weights
from .run import TrainingSession
from .training_config import TrainingConfig
from .workspace import (
    ARCHIVES,
    BUNDLES,
    Workspace,
    atomic_dir,
    in_colab,
    is_temp_name,
)

__all__ = [
    "ExportError", "download", "export_archive", "export_bundle", "export_summary",
    "human_size", "load_bundle",
]

MODEL_SOURCE_DIR = "model_source"  # an exported model's own model.py + config.json
TRAINING_CONFIG = "training_config.json"  # the run's TrainingConfig; config.json is the model's
# The files of results/ that belong to a run's archive, by kind (workspace.RESULT_SUFFIXES):
# matching on "<run>_" alone would also take run "a_b"'s files for run "a". The executed demo
# notebook ("notebook") stays out: it is the demo's output, not the run's.
ARCHIVED_RESULTS = ("dashboard", "live", "metrics", "batches")
KINDS = ("checkpoints", "configs", "results", "bundles", "archives", "datasets", "database",
         "other")


class ExportError(PersonFacing, ValueError):
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


def _files(root: Path) -> list[Path]:
    """Every finished file under ``root``, skipping half-written ones (temp names)."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not is_temp_name(d))
        found += [Path(folder) / n for n in sorted(names) if not is_temp_name(n)]
    return found


def export_summary(workspace: Workspace) -> pd.DataFrame:
    """The workspace's files by kind (count, size, folder), plus a total row."""
    root = Path(workspace.root)
    counts = {k: [0, 0] for k in KINDS}
    for path in _files(root):
        entry = counts[_kind(path.relative_to(root))]
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


def _run_and_workspace(run: str | TrainingSession, workspace: Workspace | None
                       ) -> tuple[str, Workspace, TrainingSession | None]:
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
    """The run's newest best checkpoint, else its newest periodic one."""
    folder = workspace.run_dir(run, create=False)
    chosen = CheckpointManager(folder, create=False).best_or_latest()
    if chosen is not None:
        return chosen
    runs = sorted(p.name for p in workspace.checkpoints.iterdir() if p.is_dir() and
                  checkpoint_files(p)) if workspace.checkpoints.exists() else []
    hint = ("Search trials keep no checkpoints (unless run_search(keep_trial_checkpoints="
            "True)): train the search's best_config and export that run." if "-trial-" in run
            else "Train it first (checkpoints are saved every epoch).")
    raise ExportError(f"Run {run!r} has no checkpoint in {folder}; runs with checkpoints: "
                      f"{', '.join(runs) or 'none'}. {hint}")


def _source_folder(config: TrainingConfig, session: TrainingSession | None,
                   workspace: Workspace) -> Path:
    """Where an exported (Transformer Builder) model's own files are."""
    info = getattr(getattr(session, "model", None), "source_info", None) or {}
    if info.get("folder"):
        return Path(info["folder"])
    src = parse_source(config.model_ref)
    if src.kind == "folder" and src.folder is not None:
        return Path(src.folder)
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


def _recipe(config: TrainingConfig, session: TrainingSession | None, folder: Path,
            vocab_size: int, trust: bool) -> dict[str, Any]:
    """How the exported model was built and called, for the README's plain-torch lines.

    The session's model recorded it when it was loaded; without a session the model is loaded
    once more from its files (a Gist's code then runs only with ``trust``).
    """
    info = getattr(getattr(session, "model", None), "source_info", None) or {}
    if "output" in info.get("recipe", {}):
        return info["recipe"]
    try:
        model = load_exported_model(str(folder), vocab_size=vocab_size, verbose=False,
                                    trust=trust, require_trust=config.model_source == "gist")
    except ModelLoadError as exc:
        raise ExportError(f"The bundle's README shows how to build the model with plain torch, "
                          f"which needs the model built once here: {exc}\nPass trust=True to "
                          "export_bundle (--trust on the command line), or the session.") from exc
    return model.source_info["recipe"]


_README = """# {run}

A language model trained with the TransformerTraining notebook: {model}, {params:,} parameters,
context {block} tokens, tokenizer: {tokenizer}.

- `{weights}`: the weights, from checkpoint `{checkpoint}` (epoch {epoch}, step {step}){loss}
- {model_files}
- `tokenizer.json`, `tokenizer_config.json`: the tokenizer, a Hugging Face file
- `{training}`: the settings it was trained with

## Load it and generate text

{needs} Point `BUNDLE` at this folder if you moved it.

```python
{snippet}```

{after}
"""


def _gpt2_part(tmp: Path, state: dict, config: TrainingConfig, tokenizer: Any,
               final: Path) -> dict[str, Any]:
    """The built-in GPT as a GPT-2 folder in ``tmp``; the README's words for it."""
    cfg = gpt_config(config, vocab_size=tokenizer.vocab_size)
    save_gpt2_folder(tmp, state, cfg, tokenizer.eos_id)
    return dict(
        model="the built-in GPT, saved as a Hugging Face GPT-2",
        params=sum(t.numel() for k, t in state.items() if k != "lm_head.weight"),  # tied
        model_files=f"`config.json`, `generation_config.json`: a Hugging Face GPT-2 "
                    f"(`GPT2LMHeadModel`); its vocabulary is padded from {cfg.vocab_size} to "
                    f"{cfg.padded_vocab_size} entries and generation never picks the padding",
        needs="Needs `torch` and `transformers` (`pip install transformers`), nothing else.",
        snippet=TRANSFORMERS_SNIPPET.format(path=str(final), prompt=config.sample_prompt),
        after=f'Or in one line: `pipeline("text-generation", model=BUNDLE)(prompt, '
              f"max_new_tokens=50)`. Keep prompt + new tokens within {config.block_size}, the "
              "context it was trained for.")


def _builder_part(tmp: Path, state: dict, config: TrainingConfig, tokenizer: Any, final: Path,
                  folder: Path, recipe: dict[str, Any]) -> dict[str, Any]:
    """A Transformer Builder model's weights and own files in ``tmp``; the README's words."""
    # model.py's own parameter names (no "inner."), so plain torch loads them into its class.
    params = save_weights(tmp / WEIGHTS, {k.removeprefix("inner."): v for k, v in state.items()})
    source = tmp / MODEL_SOURCE_DIR
    source.mkdir()
    for file in sorted(folder.iterdir()):
        if file.is_file() and file.suffix in (".py", ".json"):
            shutil.copyfile(file, source / file.name)
    eos = tokenizer.eos_id
    hashes = "\n".join(f"- `{MODEL_SOURCE_DIR}/{name}`: `{digest}`"
                       for name, digest in file_hashes(source).items())
    return dict(
        model=f"{config.model_source} model {config.model_ref} (class {recipe['class']})",
        params=params,
        model_files=f"`{MODEL_SOURCE_DIR}/`: the exported model's own `model.py` and "
                    "`config.json`",
        needs="Needs `torch`, `safetensors` and `tokenizers`, and runs the export's own "
              f"`{MODEL_SOURCE_DIR}/model.py`.",
        snippet=torch_snippet(recipe, read_config(source / "config.json"), bundle=str(final),
                              source_dir=MODEL_SOURCE_DIR, weights=WEIGHTS,
                              tokenizer="tokenizer.json", prompt=config.sample_prompt,
                              start_id=eos if eos is not None else 0,
                              block_size=config.block_size),
        after="`model.py` is code: it runs when you load the model, so read it first. Its "
              f"files' SHA-256:\n{hashes}")


def export_bundle(run: str | TrainingSession, workspace: Workspace | None = None,
                  db: ExperimentDB | NoDatabase | None = None, *, trust: bool = False) -> Path:
    """Write ``results/bundles/<run>/`` and return it; ``run`` is a run name or a session.

    The built-in GPT becomes a Hugging Face GPT-2 folder; a Transformer Builder model keeps its
    own ``model.py`` and ``config.json``. ``trust`` is needed only for a Gist's model exported
    without its session (building it once runs its code). The folder is built under a temp name
    and swapped in whole, so a disconnect never leaves half a bundle.
    """
    name, workspace, session = _run_and_workspace(run, workspace)
    db = db if db is not None else NoDatabase()  # no history: nothing is recorded
    checkpoint = _checkpoint(workspace, name)
    try:
        state = load_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise ExportError(f"Cannot export run {name!r}: {exc}") from exc
    config = TrainingConfig.from_dict(state["config"])
    checkpoints = CheckpointManager(workspace.run_dir(name, create=False), create=False)
    token_file = checkpoints.tokenizer_path
    try:  # a missing or damaged tokenizer.json is restored from the checkpoints' copy
        tokenizer = checkpoints.tokenizer()
    except CheckpointError as exc:
        raise ExportError(f"Cannot export run {name!r}: {exc}") from exc
    if tokenizer is None and state.get("tokenizer"):
        tokenizer = tokenizer_from_dict(state["tokenizer"])
    if tokenizer is None:
        raise ExportError(f"Run {name!r} saved no tokenizer ({token_file} is missing and the "
                          "checkpoint has none); train it again with this version.")
    if config.model_source != "builtin":
        folder = _source_folder(config, session, workspace)
        recipe = _recipe(config, session, folder, tokenizer.vocab_size, trust)

    final = workspace.bundle_dir(name)
    with atomic_dir(final, replace=True, within=workspace.results / BUNDLES) as tmp:
        config.save(tmp / TRAINING_CONFIG)
        save_tokenizer(tokenizer, tmp / "tokenizer.json", model_max_length=config.block_size)
        if config.model_source == "builtin":
            try:
                words = _gpt2_part(tmp, state["model"], config, tokenizer, final)
            except GPT2ConversionError as exc:
                raise ExportError(f"Cannot export run {name!r} as GPT-2: {exc}") from exc
        else:
            words = _builder_part(tmp, state["model"], config, tokenizer, final, folder, recipe)
        progress = state.get("progress", {})
        best = progress.get("best_val_loss", math.nan)
        (tmp / "README.md").write_text(_README.format(
            run=name, block=config.block_size, tokenizer=type(tokenizer).__name__,
            weights=WEIGHTS, checkpoint=checkpoint.name, training=TRAINING_CONFIG,
            epoch=progress.get("epoch", "?"), step=progress.get("global_step", "?"),
            loss=f"; best val loss {best:.4f}" if math.isfinite(best) else "", **words),
            encoding="utf-8")
    _log_artifact(db, name, "bundle", final / WEIGHTS)
    return final


def _log_artifact(db: ExperimentDB | NoDatabase, run: str, kind: str, path: Path) -> None:
    try:
        db.log_artifact(run, kind, path)
    except ExperimentDBError as exc:
        print(f"Note: {kind} not recorded in the experiment database: {exc}")


def _bundle_training_config(folder: Path) -> TrainingConfig:
    """The TrainingConfig of a bundle; bundles before the GPT-2 layout kept it in config.json."""
    path = folder / TRAINING_CONFIG
    return TrainingConfig.load(path if path.is_file() else folder / "config.json")


def load_bundle(path: str | Path, device: str | torch.device = "cpu", *,
                trust: bool = False) -> tuple[nn.Module, Any, TrainingConfig]:
    """(model in eval mode, tokenizer, TrainingConfig) from a bundle folder of export_bundle.

    A built-in GPT's bundle (a GPT-2 folder) loads without running any code. A Transformer
    Builder model's bundle holds its ``model.py``, which runs only with ``trust=True``, after
    each file's SHA-256 is shown. Bundles written before the GPT-2 layout load too.
    """
    folder = Path(path)
    source = folder / MODEL_SOURCE_DIR
    builtin = not (source / "model.py").is_file()
    needed = (WEIGHTS, "config.json", "tokenizer.json") if builtin else (
        WEIGHTS, "tokenizer.json", f"{MODEL_SOURCE_DIR}/config.json")
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        raise ExportError(f"{folder} is not a complete model bundle: {', '.join(missing)} "
                          "missing. Export it again with export_bundle(run, workspace).")
    config = _bundle_training_config(folder)
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    hf = read_config(folder / "config.json") if builtin else {}
    try:
        if "model_type" in hf:
            model = load_gpt2_folder(folder, hf)
            if model.vocab_size != tokenizer.vocab_size:
                raise GPT2ConversionError(f"its vocabulary is {model.vocab_size} tokens, its "
                                          f"tokenizer's {tokenizer.vocab_size}")
        else:
            tensors = load_weights(folder / WEIGHTS)
            if builtin:  # the older layout: config.json is the TrainingConfig, weights our names
                model = target = build_model(config, vocab_size=tokenizer.vocab_size)
            else:
                model = load_exported_model(str(source), vocab_size=tokenizer.vocab_size,
                                            trust=trust, require_trust=True, verbose=False)
                # Weights named "inner.*" are the older layout; now they are model.py's own names.
                prefixed = any(k.startswith("inner.") for k in tensors)
                target = model if prefixed else model.inner
            target.load_state_dict(tensors, strict=True)
    except GPT2ConversionError as exc:
        raise ExportError(f"{folder} cannot be loaded as the built-in GPT: {exc}") from exc
    except RuntimeError as exc:
        detail = "; ".join(str(exc).splitlines()[1:3]).strip()
        raise ExportError(f"The weights in {folder / WEIGHTS} do not fit the model its "
                          f"config.json describes ({detail}); export the bundle again.") from exc
    return model.to(device).eval(), tokenizer, config


# --------------------------------------------------------------------------- archive


def _dashboard(name: str, workspace: Workspace, config: TrainingConfig,
               db: ExperimentDB | NoDatabase) -> None:
    """The run's dashboard PNG, drawn from its metrics CSV (or the DB) when it is missing."""
    path = workspace.result(name, "dashboard")
    if path.is_file():
        return
    metrics = workspace.result(name, "metrics")
    batches = workspace.result(name, "batches")
    if metrics.is_file():
        history = pd.read_csv(batches) if batches.is_file() else None
        board = TrainingDashboard(pd.read_csv(metrics), history, run_name=name,
                                  config=config.to_dict())
    else:
        try:
            board = TrainingDashboard.from_db(db, name)
        except RunNotFoundError:  # no database, or none that holds the run
            print(f"Note: run {name!r} has no dashboard PNG, no metrics CSV and no history in an "
                  "experiment database; the archive goes without a dashboard.")
            return
    board.save(path)


def export_archive(run: str | TrainingSession, workspace: Workspace | None = None,
                   db: ExperimentDB | NoDatabase | None = None, *, trust: bool = False) -> Path:
    """``results/archives/<run>.zip``: bundle, dashboard, metrics CSVs and config, atomically."""
    name, workspace, _ = _run_and_workspace(run, workspace)
    db = db if db is not None else NoDatabase()  # no history: nothing is recorded or drawn from
    bundle = export_bundle(run, workspace, db, trust=trust)
    config = _bundle_training_config(bundle)
    members = [(f, f"{name}/bundle/{f.name}") for f in _files(bundle)
               if f.parent == bundle] + [(f, f"{name}/bundle/{MODEL_SOURCE_DIR}/{f.name}")
                                         for f in _files(bundle / MODEL_SOURCE_DIR)]
    _dashboard(name, workspace, config, db)
    extras = [workspace.result(name, kind) for kind in ARCHIVED_RESULTS]
    extras.append(workspace.config_file(name))
    members += [(f, f"{name}/{f.name}") for f in extras if f.is_file()]

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file, arcname in members:
                archive.write(file, arcname)

    path = workspace.atomic_write(workspace.archive(name), write)
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

