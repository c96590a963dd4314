"""Write training.ipynb from the cells below: the notebook is generated, never edited by hand.

    python build_notebook.py           # write training.ipynb
    python build_notebook.py --check   # exit 1 when training.ipynb differs (CI runs this)

Cells are data: sections of markdown and code. Every code cell is a Colab form (`# @title` first
line + `cellView: form` metadata); every user choice is an `@param` line. Cells call the library;
no loop, SQL or plotting code lives here. Output is deterministic: stable ids, no outputs.

The notebook carries its library: cell 1.1 holds ``utils/training`` (with ``utils/__init__.py``
and ``requirements-training.txt``) as one base64 line of an xz-compressed zip, with fixed dates,
modes and order so the same source always gives the same bytes. A notebook uploaded alone to Colab
therefore runs the exact library it was generated with; ``--check`` also fails when that copy is
stale.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import io
import lzma
import re
import sys
import zipfile
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from utils.training.install import (
    NEVER_INSTALL,
    REQUIREMENTS,
    library_files,
    library_hash,
    library_version,
    normalize,
    parse_requirements,
)

ROOT = Path(__file__).resolve().parent
NOTEBOOK = ROOT / "training.ipynb"
PACKAGE = ROOT / "utils" / "training"
PAYLOAD_MARK = "<<library payload>>"  # the line of cell 1.1 that build() fills in
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date zip can store: no build time leaks in


def md(text: str) -> dict:
    return {"kind": "markdown", "source": text.strip("\n")}


def code(title: str, body: str) -> dict:
    source = f'# @title {title} {{ display-mode: "form" }}\n' + body.strip("\n")
    return {"kind": "code", "source": source}


def header(number: int, title: str, text: str) -> dict:
    return md(f'<a id="section-{number}"></a>\n## {number}. {title}\n\n{text.strip()}')


SECTIONS: list[tuple[str, list[dict]]] = [
    ("Quick start", [
        md("""
# Train a transformer in Colab

Fill in the forms, then **Runtime > Run all**. You get a trained model, checkpoints on Google
Drive that survive a disconnect (run all again and it resumes exactly where it stopped), a live
loss plot, a 6-panel dashboard, a SQLite history of every run (and Weights & Biases if you want
it) and, optionally, an Optuna hyperparameter search.

- **Data** from Hugging Face datasets, files on your Drive, an upload, a cached earlier run, or
  synthetic data with a known best-possible loss.
- **Model**: the built-in GPT, or your own from Transformer Builder (a Gist or a folder).
- **Fast loop**: bf16 or fp16 chosen from the GPU, gradient accumulation and clipping, warmup +
  cosine, `torch.compile` if you want it.
"""),
        md("""
### Contents
1. [Setup and Drive workspace](#section-1)
2. [Data loading](#section-2)
3. [Training configuration](#section-3)
4. [W&B tracking](#section-4)
5. [Training](#section-5)
6. [Analysis](#section-6)
7. [Export and results](#section-7)
8. [Advanced: hyperparameter search](#section-8)
"""),
        md("""
### Requirements and GPU notes
- **Runtime > Change runtime type > GPU.** A T4 trains in fp16 with a gradient scaler; L4, A100
  and H100 use bf16. Without a GPU everything still runs on the CPU, slowly (pick *fast* mode).
- Google Drive keeps checkpoints, the experiment database and results in
  `MyDrive/TransformerTraining/`. If Drive can't be mounted the notebook says so and uses a local
  folder, which a disconnect wipes.
- The notebook needs nothing but itself: cell 1.1 unpacks the training library it carries (the
  exact version it was built with, checked by its SHA-256) and installs only what Colab lacks.
  Nothing here reinstalls Colab's own `torch` or `numpy`.
"""),
    ]),
    ("Setup", [
        header(1, "Setup and Drive workspace", "The notebook carries its training library: "
               "cell 1.1 checks it, unpacks it and installs only what Colab lacks. Then mount "
               "Drive and open the experiment history."),
        code("1.1 Install the training library", f"""
# @markdown This notebook carries its own training library: this cell checks it, unpacks it and
# @markdown installs only what this runtime lacks (never `torch` or `numpy`). Keep `bundled`
# @markdown unless you want another version on purpose: `git` clones `git_url` at `git_ref` (a
# @markdown branch, tag or full commit SHA); `drive` installs `drive_package`, a `.whl` or `.zip`
# @markdown in `MyDrive/TransformerTraining/`.
install_from = "bundled"  # @param ["bundled", "git", "drive"]
git_url = ""  # @param {{type:"string"}}
git_ref = ""  # @param {{type:"string"}}
drive_package = ""  # @param {{type:"string"}}
{PAYLOAD_MARK}
import base64, hashlib, importlib.util, io, lzma, os, tempfile, zipfile
if hashlib.sha256(LIBRARY.encode()).hexdigest() != LIBRARY_SHA256:
    raise RuntimeError("The library inside cell 1.1 is damaged (its SHA-256 does not match). "
                       "Get a fresh copy of training.ipynb and upload that.")
_home = os.path.join(tempfile.gettempdir(), "transformer-training-" + LIBRARY_SHA256[:12])
if not os.path.isdir(_home):  # unpacked under a temp name, then renamed: never half there
    _tmp = tempfile.mkdtemp(prefix=".transformer-training-")
    zipfile.ZipFile(io.BytesIO(lzma.decompress(base64.b64decode(LIBRARY)))).extractall(_tmp)
    os.rename(_tmp, _home)
# The installer is loaded by path under a private name, so `utils` is not half-imported.
_spec = importlib.util.spec_from_file_location(
    "_transformer_training_install", os.path.join(_home, "utils", "training", "install.py"))
_install = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_install)
_install.install_library(_home, LIBRARY_VERSION, LIBRARY_HASH, install_from=install_from,
                         git_url=git_url, git_ref=git_ref, drive_package=drive_package)
from utils.training import (
    DataChoice, ExperimentDB, TrainingConfig, TrainingSession, Workspace, apply_budget,
    estimate_training_time, export_run, export_summary, run_search, show_recent_runs,
    show_run_comparison, show_search_results, validate_config,
)
"""),
        code("1.2 Mount Drive and create the workspace", """
use_drive = True  # @param {type:"boolean"}
workspace = Workspace.setup(mount_drive=use_drive)
"""),
        code("1.3 Experiment history", """
db = ExperimentDB.open_for_workspace(workspace)
show_recent_runs(db)
"""),
    ]),
    ("Data", [
        header(2, "Data loading", "Choose a source in the first cell; each cell below does its "
               "work only for the source you chose, so *Run all* always works."),
        code("2.1 Data source choice (and the Hugging Face dataset)", """
data_source = "huggingface"  # @param ["huggingface", "drive", "upload", "local", "synthetic"]
text_column = ""  # @param {type:"string"}
max_samples = 0  # @param {type:"integer"}
# @markdown For every source: `text_column` is the column of a table (.csv, .json/.jsonl, .parquet,
# @markdown a Hub dataset) to train on; empty = `text`, or the only text column.
# @markdown `max_samples` caps the documents per split for quick runs (0 = all).
dataset_name = "wikitext"  # @param {type:"string"}
dataset_config = "wikitext-2-raw-v1"  # @param {type:"string"}
data = DataChoice(data_source, max_samples=max_samples, text_column=text_column)
data.use("huggingface", dataset_name=dataset_name, dataset_config=dataset_config,
         workspace=workspace)
"""),
        code("2.2 Files on Google Drive", """
drive_path = "datasets/*.txt"  # @param {type:"string"}
# @markdown A file, folder or glob, relative to the workspace or absolute (`/content/drive/MyDrive/...`).
data.use("drive", data_path=drive_path, workspace=workspace)
"""),
        code("2.3 Upload a file", """
# @markdown Colab asks for the file once; it is kept in the workspace so a re-run does not ask again.
upload_new = False  # @param {type:"boolean"}
# @markdown Tick `upload_new` to choose another file (untick it afterwards), or set `upload_path`
# @markdown to a file already on this machine or on Drive.
upload_path = ""  # @param {type:"string"}
data.use("upload", data_path=upload_path, ask_again=upload_new, workspace=workspace)
"""),
        code("2.4 Local file or cached tokens", """
local_path = ""  # @param {type:"string"}
# @markdown A text/csv/json/parquet file or folder, or a cached tokenized dataset under `datasets/`.
data.use("local", data_path=local_path, workspace=workspace)
"""),
        code("2.5 Synthetic data with a known best loss", """
synthetic_tokens = 200000  # @param {type:"integer"}
synthetic_vocab = 64  # @param {type:"integer"}
synthetic_order = 1  # @param [1, 2, 3]
data.use("synthetic", synthetic_tokens=synthetic_tokens, vocab_size=synthetic_vocab,
         synthetic_order=synthetic_order, workspace=workspace)
"""),
    ]),
    ("Configuration", [
        header(3, "Training configuration", "Hyperparameters, a time estimate measured on this "
               "runtime, and the validated summary."),
        code("3.1 Hyperparameters", """
run_name = "gpt-run"  # @param {type:"string"}
tokenizer = "bpe"  # @param ["bpe", "char", "byte"] {allow-input: true}
# @markdown `bpe` learns a vocabulary of `vocab_size` from your data; or give the path of a `tokenizer.json`.
vocab_size = 8192  # @param {type:"integer"}
# @markdown **Model** (built-in GPT; an exported model brings its own sizes)
n_layers = 4  # @param {type:"integer"}
n_heads = 4  # @param {type:"integer"}
d_model = 256  # @param {type:"integer"}
block_size = 256  # @param {type:"integer"}
dropout = 0.0  # @param {type:"slider", min:0, max:0.5, step:0.05}
# @markdown **Optimisation**
learning_rate = 0.001  # @param {type:"number"}
batch_size = 32  # @param {type:"integer"}
grad_accum_steps = 1  # @param {type:"integer"}
warmup_ratio = 0.05  # @param {type:"slider", min:0, max:0.5, step:0.01}
weight_decay = 0.1  # @param {type:"number"}
max_grad_norm = 1.0  # @param {type:"number"}
precision = "auto"  # @param ["auto", "bf16", "fp16", "fp32"]
compile_model = False  # @param {type:"boolean"}
seed = 1337  # @param {type:"integer"}
# @markdown **Checkpoints** (on Drive; a re-run resumes from the newest)
checkpoint_every_epochs = 1  # @param {type:"integer"}
checkpoint_every_minutes = 20.0  # @param {type:"number"}
early_stopping_patience = 0  # @param {type:"integer"}
# @markdown **Samples** printed after each epoch
sample_prompt = ""  # @param {type:"string"}
config = TrainingConfig(
    run_name=run_name, tokenizer=tokenizer, vocab_size=vocab_size, n_layers=n_layers,
    n_heads=n_heads, d_model=d_model, block_size=block_size, dropout=dropout,
    learning_rate=learning_rate, batch_size=batch_size, grad_accum_steps=grad_accum_steps,
    warmup_ratio=warmup_ratio, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
    precision=precision, compile=compile_model, seed=seed,
    checkpoint_every_epochs=checkpoint_every_epochs,
    checkpoint_every_minutes=checkpoint_every_minutes,
    early_stopping_patience=early_stopping_patience, sample_prompt=sample_prompt,
).replace(**data.settings)
"""),
        code("3.2 Training budget and time estimate", """
mode = "fast"  # @param ["fast", "balanced", "quality"]
# @markdown fast: up to 5 epochs; balanced: up to 15; quality: more. `epochs = 0` uses the mode's default.
epochs = 0  # @param {type:"integer"}
# @markdown **Budget**: how long the run is. `epochs` fits a few MB of text; on a big corpus count
# @markdown optimizer `steps` or training `tokens` (`budget_amount` of them), and `epochs` only caps the run.
budget = "epochs"  # @param ["epochs", "steps", "tokens"]
budget_amount = 0  # @param {type:"integer"}
# @markdown Evaluate every N optimizer steps (and at the end); 0 = at each epoch end.
eval_every_steps = 0  # @param {type:"integer"}
# @markdown The estimate times the built-in GPT at these sizes; an exported model (section 5) may differ.
config = apply_budget(config, mode, budget, budget_amount, epochs=epochs,
                      eval_every_steps=eval_every_steps)
estimate = estimate_training_time(config, workspace)
"""),
        code("3.3 Validated summary (saved to configs/)", """
config = validate_config(config, workspace)  # judged once: training takes it as it is
display(config)
print(f"Saved to {workspace.config_file(config.run_name)}")
"""),
    ]),
    ("Tracking", [
        header(4, "W&B tracking", "Optional. Without a key (or without network) W&B runs "
               "offline and tells you how to sync later; the SQLite history is always kept."),
        code("4.1 Weights & Biases", """
use_wandb = False  # @param {type:"boolean"}
wandb_project = "transformer-training"  # @param {type:"string"}
wandb_entity = ""  # @param {type:"string"}
wandb_tags = ""  # @param {type:"string"}
wandb_notes = ""  # @param {type:"string"}
# @markdown The API key comes from Colab's Secrets (`WANDB_API_KEY`) or a prompt here; it is never
# @markdown saved. This cell says whether runs will log online or offline, and how to upload them
# @markdown later; the W&B run itself starts with training (5.2).
config = config.replace(use_wandb=use_wandb, wandb_project=wandb_project,
                        wandb_entity=wandb_entity, wandb_tags=wandb_tags, wandb_notes=wandb_notes)
from utils.training import setup_wandb
wandb_mode = setup_wandb(config, workspace)
"""),
    ]),
    ("Training", [
        header(5, "Training", "Load the model, prepare data and optimizer (resuming if this run "
               "has a checkpoint), then train with a live plot."),
        code("5.1 Model", """
model_source = "builtin"  # @param ["builtin", "gist", "folder"]
model_ref = ""  # @param {type:"string"}
# @markdown For a Gist: its id or URL. Loading a Gist **runs its code**: read it, then tick the box.
trust_remote_code = False  # @param {type:"boolean"}
config = config.replace(model_source=model_source, model_ref=model_ref)
"""),
        code("5.2 Initialise training", """
session = TrainingSession.create(config, workspace, db=db, trust=trust_remote_code)
"""),
        code("5.3 Train", """
result = session.fit()
"""),
    ]),
    ("Analysis", [
        header(6, "Analysis", "The dashboard, the best epoch, the metric table and GPU use."),
        code("6.1 Training dashboard", """
dashboard_path = session.save_dashboard()
"""),
        code("6.2 Best epoch", """
best = session.best_epoch_report()
"""),
        code("6.3 Metrics table and CSV", """
metrics_csv = session.save_metrics_csv()
display(session.tracker.get_summary().round(4))
"""),
        code("6.4 GPU utilisation", """
session.show_hardware_report()
"""),
    ]),
    ("Export", [
        header(7, "Export and results", "What is in the workspace, the model bundle and "
               "archive, and how this run compares with earlier ones."),
        code("7.1 Workspace summary", """
display(export_summary(workspace))
"""),
        code("7.2 Model bundle, archive and download", """
download = True  # @param {type:"boolean"}
archive = export_run(session, download=download)
"""),
        code("7.3 Compare runs", """
compare_last = 5  # @param {type:"integer"}
show_run_comparison(db, last=compare_last)
"""),
    ]),
    ("Advanced", [
        header(8, "Advanced: hyperparameter search", "Optuna with pruning; every trial is a run "
               "in the experiment history. Off by default."),
        code("8.1 Hyperparameter search", """
run_search_now = False  # @param {type:"boolean"}
n_trials = 10  # @param {type:"integer"}
timeout_minutes = 30  # @param {type:"integer"}
search = None
if run_search_now:
    search = run_search(config, workspace, db=db, n_trials=n_trials, timeout=timeout_minutes * 60)
"""),
        code("8.2 Search results", """
train_best = False  # @param {type:"boolean"}
show_search_results(search, train_best=train_best, workspace=workspace, db=db)
"""),
        md("""
### Summary and next steps
- Everything is in your Drive under `MyDrive/TransformerTraining/`: `checkpoints/<run>`,
  `configs/<run>.json`, `results/` (dashboard, metrics CSV, bundles) and `experiments.db`.
- **Disconnected?** Reconnect and *Run all*: training resumes from the newest checkpoint.
- **Train longer**: raise `epochs` (section 3) and run again with the same `run_name`.
- **A new experiment**: change `run_name`.
- The same library runs from a shell: `python -m utils.training train --config configs/<run>.json`.
"""),
    ]),
]


def cell_id(index: int, source: str) -> str:
    # Stable across builds (no random uuids), unique, and changes only when the cell does.
    return f"c{index:02d}-" + hashlib.sha1(source.encode()).hexdigest()[:8]


# ---------------------------------------------------------------------- the library payload


def library_members() -> dict[str, bytes]:
    """What cell 1.1 carries, by path in the archive: exactly what the notebook imports."""
    requirements = (ROOT / REQUIREMENTS).read_text()
    refused = [name for name, _ in parse_requirements(requirements.splitlines())
               if normalize(name) in NEVER_INSTALL]
    if refused:
        raise SystemExit(f"{REQUIREMENTS} lists {', '.join(refused)}: the notebook never installs "
                         "torch or numpy (Colab's own builds must stay). Remove them.")
    members = {"utils/__init__.py": (ROOT / "utils" / "__init__.py").read_bytes(),
               REQUIREMENTS: requirements.encode()}
    for rel in library_files(PACKAGE):
        members[f"utils/training/{rel}"] = (PACKAGE / rel).read_bytes()
    return dict(sorted(members.items()))


def library_archive(members: dict[str, bytes]) -> bytes:
    """A stored zip (fixed order, dates and modes) compressed by xz as a whole, so the output is
    byte-stable and about a quarter of the source's size."""
    return _archive(tuple(members.items()))


@functools.lru_cache(maxsize=4)
def _archive(members: tuple[tuple[str, bytes], ...]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.create_system = 3  # unix, whatever system builds it
            info.external_attr = 0o100644 << 16
            archive.writestr(info, data)
    return lzma.compress(buffer.getvalue(), format=lzma.FORMAT_XZ, preset=9)


def archive_members(archive: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(lzma.decompress(archive))) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def payload_lines(archive: bytes) -> str:
    text = base64.b64encode(archive).decode()
    return "\n".join([
        f'LIBRARY_VERSION = "{library_version(PACKAGE)}"',
        f'LIBRARY_HASH = "{library_hash(PACKAGE)}"  # SHA-256 of the library\'s .py files',
        f'LIBRARY_SHA256 = "{hashlib.sha256(text.encode()).hexdigest()}"  # of the line below',
        "# utils/training, utils/__init__.py and requirements-training.txt: zip, xz, base64.",
        f'LIBRARY = "{text}"',
    ])


def embedded_archive(notebook_text: str) -> bytes | None:
    """The archive inside a written notebook (its JSON escapes the quotes), or None."""
    match = re.search(r'LIBRARY = \\"([A-Za-z0-9+/=]+)\\"', notebook_text)
    return base64.b64decode(match[1]) if match else None


def build(archive: bytes | None = None) -> nbformat.NotebookNode:
    """``archive``: the payload's bytes when they must be given (``--check`` reuses the committed
    ones when only the compressor's output differs); by default built from the library."""
    payload = payload_lines(archive or library_archive(library_members()))
    cells = []
    for _, section in SECTIONS:
        for spec in section:
            index = len(cells)
            if spec["kind"] == "markdown":
                cell = new_markdown_cell(spec["source"])
            else:
                source = spec["source"].replace(PAYLOAD_MARK, payload)
                cell = new_code_cell(source, metadata={"cellView": "form"})
            cell["id"] = cell_id(index, cell["source"])
            cells.append(cell)
    nb = new_notebook(cells=cells)
    nb.metadata = {
        "accelerator": "GPU",
        "colab": {"provenance": [], "gpuType": "T4"},
        "kernelspec": {"display_name": "Python 3", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb


def render(archive: bytes | None = None) -> str:
    return nbformat.writes(build(archive)) + "\n"


def is_current(current: str) -> bool:
    """Does the written notebook match the generator? The text must be equal; only when the
    payload alone differs and holds the very same files (another xz version compresses them to
    other bytes) is the notebook rendered again around its own payload and compared."""
    if current == render():
        return True
    archive = embedded_archive(current)
    if archive is None:
        return False
    try:
        same_files = archive_members(archive) == library_members()
    except (lzma.LZMAError, zipfile.BadZipFile, ValueError):
        return False
    return same_files and current == render(archive)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if training.ipynb is stale")
    args = parser.parse_args(argv)
    if args.check:
        current = NOTEBOOK.read_text() if NOTEBOOK.exists() else ""
        if not is_current(current):
            print(f"{NOTEBOOK.name} is out of date (its cells or the library it carries): run "
                  "`python build_notebook.py`.")
            return 1
        print(f"{NOTEBOOK.name} matches the generator and carries the current library.")
        return 0
    nb = build()
    NOTEBOOK.write_text(nbformat.writes(nb) + "\n")
    print(f"Wrote {NOTEBOOK.name}: {len(nb.cells)} cells, carrying library version "
          f"{library_version(PACKAGE)} ({NOTEBOOK.stat().st_size // 1024} KiB).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
