"""Run training.ipynb top to bottom with a real kernel, as *Run all* in Colab would (on CPU, fast
mode, synthetic data), then check what it left behind, and that a second run of the same
notebook reports the finished run instead of training again. The kernel starts in a folder where
``utils`` is not importable, so cell 1.1 installs the library the notebook carries."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import nbformat
import pytest
from helpers import outputs_text

from utils.training.__main__ import parse_sets
from utils.training.experiment_db import ExperimentDB
from utils.training.notebook_run import run_notebook, set_params
from utils.training.training_config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
FORM = {
    "data_source": "synthetic", "run_name": "nb-run", "use_drive": False, "download": False,
    "n_layers": 1, "n_heads": 2, "d_model": 32, "block_size": 32, "batch_size": 16,
    "synthetic_tokens": 20000, "synthetic_vocab": 32, "mode": "fast", "epochs": 2,
}


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    home = tmp_path_factory.mktemp("nb")
    mp = pytest.MonkeyPatch()
    mp.setenv("TRANSFORMER_TRAINING_HOME", str(home / "ws"))  # the kernel inherits it
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("TMPDIR", str(home / "tmp"))  # where cell 1.1 unpacks the library it carries
    mp.delenv("PYTHONPATH", raising=False)  # nothing but the notebook provides `utils`
    (home / "tmp").mkdir()
    try:
        first = run_notebook(ROOT / "training.ipynb", FORM, output=home / "first.ipynb",
                             timeout=600, cwd=home)
        second = run_notebook(ROOT / "training.ipynb", FORM, output=home / "second.ipynb",
                              timeout=600, cwd=home)
    finally:
        mp.undo()
    return home / "ws", nbformat.read(first, as_version=4), nbformat.read(second, as_version=4)


@pytest.mark.slow
def test_run_all_trains_and_leaves_every_artifact(executed):
    ws, first, _ = executed
    text = outputs_text(first)
    assert "ERROR" not in text and "Traceback" not in text
    assert "unpacked from this notebook into" in text and str(ws.parent / "tmp") in text
    assert "Found a checkpoint" not in text and "starting from scratch" in text
    with ExperimentDB(ws / "experiments.db", verbose=False) as db:
        runs = db.list_runs()
        assert list(runs["name"]) == ["nb-run"]
        assert runs.iloc[0]["status"] == "completed" and runs.iloc[0]["epochs"] == 2
    assert any((ws / "checkpoints" / "nb-run").glob("step-*.pt"))
    assert (ws / "checkpoints" / "nb-run" / "tokenizer.json").is_file()
    assert (ws / "results" / "nb-run_dashboard.png").stat().st_size > 50_000
    assert (ws / "results" / "nb-run_metrics.csv").read_text().count("\n") == 3  # header + 2
    assert json.loads((ws / "configs" / "nb-run.json").read_text())["epochs"] == 2
    bundle = ws / "results" / "bundles" / "nb-run"
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= {
        p.name for p in bundle.iterdir()}
    with zipfile.ZipFile(ws / "results" / "archives" / "nb-run.zip") as archive:
        names = archive.namelist()
    assert "nb-run/nb-run_dashboard.png" in names and "nb-run/bundle/model.safetensors" in names


@pytest.mark.slow
def test_run_all_again_reports_the_finished_run(executed):
    ws, _, second = executed
    text = outputs_text(second)
    assert "ERROR" not in text
    assert "already finished its 2 epochs: nothing to train" in text
    with ExperimentDB(ws / "experiments.db", verbose=False) as db:
        assert len(db.list_runs()) == 1  # the same run row, not a second one


@pytest.mark.slow
def test_no_output_a_person_cannot_act_on(executed):
    _, first, _ = executed
    text = outputs_text(first)
    for noise in ("Warning", "warn(", "IProgress not found", "Dropping empty rows"):
        assert noise not in text, noise


@pytest.mark.slow
def test_run_all_with_a_step_budget_evaluates_on_its_cadence(tmp_path, monkeypatch):
    """Cell 3.2's budget choice end to end: 60 optimizer steps, evaluated every 20, inside an
    epoch cap that would allow more; the database holds the validation points at 20, 40, 60."""
    monkeypatch.setenv("TRANSFORMER_TRAINING_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    (tmp_path / "tmp").mkdir()
    form = {**FORM, "run_name": "nb-steps", "epochs": 0, "budget": "steps", "budget_amount": 60,
            "eval_every_steps": 20}
    done = run_notebook(ROOT / "training.ipynb", form, output=tmp_path / "steps.ipynb",
                        timeout=600, cwd=tmp_path)
    text = outputs_text(nbformat.read(done, as_version=4))
    assert "ERROR" not in text and "Traceback" not in text
    assert "Budget: 60 steps (at most 3 epochs); evaluation every 20 steps." in text
    assert "max_steps=60 decides the run's length" in text and "for 60 optimizer steps" in text
    with ExperimentDB(tmp_path / "ws" / "experiments.db", verbose=False) as db:
        runs = db.list_runs()
        assert list(runs["name"]) == ["nb-steps"]
        val = db.get_metrics("nb-steps", "val/loss")
    assert list(val["step"]) == [20, 40, 60]
    assert (tmp_path / "ws" / "results" / "nb-steps_dashboard.png").stat().st_size > 50_000


def test_set_params_replaces_form_values_with_their_types():
    source = 'lr = 0.001  # @param {type:"number"}\nname = "a"  # @param {type:"string"}\nx = 1'
    new, used = set_params(source, {"lr": "0.5", "name": "b c"})
    assert used == {"lr", "name"}
    assert new.splitlines()[0] == 'lr = 0.5  # @param {type:"number"}'
    assert new.splitlines()[1] == "name = 'b c'  # @param {type:\"string\"}"
    assert new.splitlines()[2] == "x = 1"
    flag, _ = set_params('on = False  # @param {type:"boolean"}', {"on": "yes"})
    assert flag.startswith("on = True")
    with pytest.raises(ConfigError, match="epochs = 'many'"):
        set_params('epochs = 3  # @param {type:"integer"}', {"epochs": "many"})


def test_unknown_form_field_is_rejected_before_running(tmp_path):
    with pytest.raises(ConfigError, match="no_such_field"):
        run_notebook(ROOT / "training.ipynb", {"no_such_field": "1"}, output=tmp_path / "x.ipynb")
    with pytest.raises(ConfigError, match="name=value"):
        parse_sets(["epochs"])
