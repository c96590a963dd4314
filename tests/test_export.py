"""Export: workspace summary, model bundles (loaded by a stranger), archives, run tables."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from utils.training.__main__ import add_export_command, add_runs_command
from utils.training.checkpoints import load_checkpoint
from utils.training.experiment_db import ExperimentDB
from utils.training.export import (
    ExportError,
    download,
    export_archive,
    export_bundle,
    export_summary,
    human_size,
    load_bundle,
)
from utils.training.history import run_comparison_table
from utils.training.models import ModelLoadError
from utils.training.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


def run_as_a_stranger(bundle: Path, where: Path) -> subprocess.CompletedProcess:
    """The README's python snippet, run from an empty folder where `utils` cannot be imported."""
    snippet = re.search(r"```python\n(.*?)```", (bundle / "README.md").read_text(), re.S).group(1)
    assert "utils" not in snippet
    where.mkdir()
    (where / "snippet.py").write_text(snippet)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    no_utils = subprocess.run([sys.executable, "-c", "import utils"], cwd=where, env=env,
                              capture_output=True, text=True, timeout=60)
    assert no_utils.returncode != 0 and "No module named 'utils'" in no_utils.stderr
    done = subprocess.run([sys.executable, "snippet.py"], cwd=where, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _train(config, workspace, db=None, dashboard=True):
    from utils.training.run import TrainingSession

    session = TrainingSession.create(config, workspace, db=db, live_plot=False, progress=False,
                                     verbose=False)
    session.fit()
    if dashboard:
        session.save_dashboard(show=False)
    return session


@pytest.fixture(scope="module")
def trained(tmp_path_factory, request):
    """One workspace with two finished runs (different learning rates) and their DB rows."""
    from utils.training.training_config import TrainingConfig

    torch.set_num_threads(1)
    workspace = Workspace.setup(tmp_path_factory.mktemp("export") / "ws", mount_drive=False,
                                verbose=False)
    base = dict(seed=7, data_source="synthetic", vocab_size=16, synthetic_tokens=4000,
                n_layers=1, n_heads=2, d_model=32, block_size=16, batch_size=8, epochs=2,
                learning_rate=3e-3, warmup_ratio=0.1, precision="fp32", sample_tokens=0,
)
    with ExperimentDB.open_for_workspace(workspace, verbose=False) as db:
        session = _train(TrainingConfig(run_name="tiny", **base).validate(), workspace, db)
        _train(TrainingConfig(run_name="tiny_lr", **{**base, "learning_rate": 1e-3}).validate(),
               workspace, db, dashboard=False)
    return workspace, session


def test_bundle_holds_best_weights_once_and_loads(trained):
    workspace, session = trained
    bundle = export_bundle(session)
    assert bundle == workspace.results / "bundles" / "tiny"
    assert sorted(p.name for p in bundle.iterdir()) == [  # a Hugging Face GPT-2 folder
        "README.md", "config.json", "generation_config.json", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json", "training_config.json"]

    best = sorted((workspace.checkpoints / "tiny").glob("best-step-*.pt"))[-1]
    assert best.name in (bundle / "README.md").read_text()
    with safe_open(str(bundle / "model.safetensors"), framework="pt") as weights:
        keys = set(weights.keys())  # noqa: SIM118
    assert "transformer.wte.weight" in keys and "lm_head.weight" not in keys  # tied: stored once

    model, tokenizer, config = load_bundle(bundle)
    assert config.run_name == "tiny" and not model.training
    assert model.lm_head.weight is model.tok_emb.weight  # still tied after loading
    expected = load_checkpoint(best)["model"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_bundle_readme_snippet_runs_without_this_library(trained, tmp_path):
    workspace, _ = trained
    bundle = export_bundle("tiny", workspace)
    assert "from transformers import AutoModelForCausalLM" in (bundle / "README.md").read_text()
    done = run_as_a_stranger(bundle, tmp_path / "elsewhere")
    ids = done.stdout.split()  # synthetic ids as words: the context (16) filled from "<start>"
    assert len(ids) == 16 and all(0 <= int(i) < 16 for i in ids)


def test_archive_holds_what_the_summary_says(trained):
    workspace, _ = trained
    archive = export_archive("tiny", workspace)
    assert archive == workspace.results / "archives" / "tiny.zip"
    with zipfile.ZipFile(archive) as zf:
        members = {info.filename: info.file_size for info in zf.infolist()}
    assert {"tiny/bundle/model.safetensors", "tiny/bundle/README.md", "tiny/tiny_dashboard.png",
            "tiny/tiny_metrics.csv", "tiny/tiny_batches.csv", "tiny/tiny.json"} <= set(members)
    assert not any("tiny_lr" in name for name in members)  # another run's files stay out


def test_workspace_summary_groups_files_and_skips_temp_files(trained):
    workspace, _ = trained
    (workspace.datasets / ".half.bin.tmp-1-abc").write_bytes(b"x" * 100)  # a write in flight
    summary = export_summary(workspace).set_index("kind")
    assert list(summary.index) == ["checkpoints", "configs", "results", "bundles", "archives",
                                   "datasets", "database", "other", "total"]
    assert summary.loc["configs", "files"] == 2 and summary.loc["database", "files"] >= 1
    kinds = summary.drop(index="total")
    assert summary.loc["total", "bytes"] == kinds["bytes"].sum()
    assert summary.loc["total", "files"] == kinds["files"].sum()
    assert summary.loc["checkpoints", "size"] == human_size(summary.loc["checkpoints", "bytes"])
    assert human_size(512) == "512 B" and human_size(1536) == "1.5 KB"


def test_missing_run_and_incomplete_bundle_are_clear_errors(trained, tmp_path):
    workspace, _ = trained
    with pytest.raises(ExportError, match=r"'nope' has no checkpoint.*runs with checkpoints: "
                                          r"tiny, tiny_lr"):
        export_bundle("nope", workspace)
    with pytest.raises(ExportError, match="needs the workspace"):
        export_bundle("tiny")
    with pytest.raises(ExportError, match="model.safetensors, config.json, tokenizer.json"):
        load_bundle(tmp_path)
    with pytest.raises(ExportError, match="Nothing to download"):
        download(tmp_path / "missing.zip")


def test_bundles_of_the_older_layout_still_load(trained, tmp_path):
    """Before the GPT-2 layout: config.json was the TrainingConfig, weights had our names and
    tokenizer.json was our {"type": ...} wrapper."""
    from utils.training.models.weights import save_weights

    workspace, session = trained
    best = sorted((workspace.checkpoints / "tiny").glob("best-step-*.pt"))[-1]
    state = load_checkpoint(best)
    old = tmp_path / "old"
    old.mkdir()
    save_weights(old / "model.safetensors", state["model"])
    session.config.save(old / "config.json")
    (old / "tokenizer.json").write_text(json.dumps(state["tokenizer"]))
    model, tokenizer, config = load_bundle(old)
    assert config.run_name == "tiny" and tokenizer.vocab_size == 16
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state["model"][name]), name


def test_builtin_bundle_with_a_text_tokenizer_generates_text_for_a_stranger(tmp_path):
    from utils.training.training_config import TrainingConfig

    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(6):
        (texts / f"{i}.txt").write_text("the cat sat on the mat. " * 20 + f"story {i}\n")
    workspace = Workspace.setup(tmp_path / "ws", mount_drive=False, verbose=False)
    config = TrainingConfig(run_name="chars", data_source="local", data_path=str(texts),
                            tokenizer="char", seed=2, n_layers=1, n_heads=2, d_model=32,
                            block_size=32, batch_size=8, epochs=1, precision="fp32",
                            sample_tokens=0, sample_prompt="the ").validate()
    bundle = export_bundle(_train(config, workspace, dashboard=False))
    text = run_as_a_stranger(bundle, tmp_path / "elsewhere").stdout
    # Sampled until the end-of-document token (decoded as a line break) or the context is full.
    assert text.startswith("the ") and len(text) > len("the \n")
    assert set(text) <= set("the cat sat on the mat. story 012345\n")  # no <unk>, no padding


def test_download_outside_colab_prints_the_path(trained, capsys):
    workspace, _ = trained
    archive = export_archive("tiny", workspace)
    assert download(archive) == archive
    assert str(archive) in capsys.readouterr().out


def test_comparison_table_shows_what_differs(trained):
    workspace, _ = trained
    with ExperimentDB.open_for_workspace(workspace, verbose=False) as db:
        table = run_comparison_table(db)
        only = run_comparison_table(db, run_ids=["tiny_lr"])
    assert list(table["run"]) == ["tiny", "tiny_lr"]  # oldest first
    assert list(table["learning_rate"]) == [3e-3, 1e-3]
    assert "n_layers" not in table.columns and "run_name" not in table.columns
    assert {"id", "status", "best val/loss", "epochs", "train time (s)", "tokens/s"} <= set(
        table.columns)
    assert (table["epochs"] == 2).all() and (table["best val/loss"] < 3).all()
    assert list(only["run"]) == ["tiny_lr"]


def test_cli_runs_and_export(trained, capsys):
    workspace, _ = trained
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_runs_command(sub)
    add_export_command(sub)
    args = parser.parse_args(["runs", "--workspace", str(workspace.root), "--compare"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "tiny_lr" in out and "completed" in out and "learning_rate" in out

    args = parser.parse_args(["export", "tiny", "--workspace", str(workspace.root)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "Archive:" in out and (workspace.results / "archives" / "tiny.zip").is_file()

    args = parser.parse_args(["export", "nope", "--workspace", str(workspace.root)])
    assert args.func(args) == 2
    assert "no checkpoint" in capsys.readouterr().err


_MODEL_PY = textwrap.dedent("""
    import torch
    from torch import nn

    class TinyLM(nn.Module):
        def __init__(self, vocab_size, d_model, block_size):
            super().__init__()
            self.emb = nn.Embedding(vocab_size, d_model)
            self.pos = nn.Embedding(block_size, d_model)
            self.head = nn.Linear(d_model, vocab_size, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, input_ids):
            pos = torch.arange(input_ids.shape[1], device=input_ids.device)
            return self.head(self.emb(input_ids) + self.pos(pos))
""")


def test_exported_model_bundle_ships_its_code(tmp_path, capsys):
    from utils.training.training_config import TrainingConfig

    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "model.py").write_text(_MODEL_PY)
    (folder / "config.json").write_text('{"vocab_size": 257, "d_model": 16, "block_size": 16}')
    workspace = Workspace.setup(tmp_path / "ws", mount_drive=False, verbose=False)
    config = TrainingConfig(run_name="builder", model_source="folder", model_ref=str(folder),
                            seed=3, data_source="synthetic", vocab_size=16,
                            synthetic_tokens=3000, block_size=16, batch_size=8, epochs=1,
                            precision="fp32", sample_tokens=0).validate()
    session = _train(config, workspace, dashboard=False)
    bundle = export_bundle(session)
    assert sorted(p.name for p in (bundle / "model_source").iterdir()) == ["config.json",
                                                                           "model.py"]
    digest = hashlib.sha256((folder / "model.py").read_bytes()).hexdigest()
    with pytest.raises(ModelLoadError, match="trust=True") as refused:
        load_bundle(bundle)  # the bundle's model.py would run: not without consent
    assert digest in str(refused.value)
    model, tokenizer, loaded = load_bundle(bundle, trust=True)
    assert digest in capsys.readouterr().out  # shown before it ran
    assert loaded.model_source == "folder"
    readme = (bundle / "README.md").read_text()
    assert "model_source/" in readme and digest in readme

    # Exported again from the run name alone (no session): the same plain-torch README.
    assert export_bundle("builder", workspace) == bundle
    assert (bundle / "README.md").read_text() == readme
    done = run_as_a_stranger(bundle, tmp_path / "elsewhere")
    assert len(done.stdout.split()) > 8
