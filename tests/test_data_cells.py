"""The data cells of section 2, run as written in build_notebook.py (with form values filled in
the way run-notebook fills them), against files the test writes: what a person sets in a form
must reach the library."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import datasets
import pandas as pd
import pytest

import build_notebook
from utils.training.data import DataError, load_text_data
from utils.training.notebook import DataChoice
from utils.training.notebook_run import set_params
from utils.training.training_config import TrainingConfig


@pytest.fixture(autouse=True)
def hf_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def data_cells() -> list[str]:
    (section,) = [cells for name, cells in build_notebook.SECTIONS if name == "Data"]
    return [c["source"] for c in section if c["kind"] == "code"]


def run_data_cells(workspace, **form) -> DataChoice:
    namespace = {"DataChoice": DataChoice, "workspace": workspace}
    used: set[str] = set()
    for source in data_cells():
        source, found = set_params(source, form)
        used |= found
        exec(compile(source, "<data cell>", "exec"), namespace)  # noqa: S102 - our own cells
    assert used == set(form), f"no form field {set(form) - used}"
    return namespace["data"]


def two_text_columns(path):
    pd.DataFrame({"title": [f"title {i}" for i in range(8)],
                  "body": [f"the body of document {i}" for i in range(8)]}).to_csv(path, index=False)


@pytest.mark.parametrize("source, field", [("local", "local_path"), ("drive", "drive_path"),
                                           ("upload", "upload_path")])
def test_text_column_reaches_every_source(workspace, tmp_path, source, field):
    path = tmp_path / "table.csv"
    two_text_columns(path)
    data = run_data_cells(workspace, data_source=source, text_column="body", **{field: str(path)})
    assert data.settings["text_column"] == "body"
    texts = load_text_data(TrainingConfig().replace(**data.settings), workspace)
    assert all(t.startswith("the body") for t in texts["train"]["text"])


def test_the_error_for_two_text_columns_names_the_field_that_works(workspace, tmp_path):
    path = tmp_path / "table.csv"
    two_text_columns(path)
    with pytest.raises(DataError, match=r"set text_column \(in the notebook: the field under "
                       r"data_source in cell 2\.1"):
        run_data_cells(workspace, data_source="local", local_path=str(path))
    first = data_cells()[0]
    # That field is in the cell the message names, beside data_source.
    assert first.startswith("# @title 2.1 ") and "\ntext_column = " in first


@pytest.fixture
def colab_upload(tmp_path, monkeypatch):
    """Colab's upload dialog as tests/fake_colab plays it (the files in $FAKE_COLAB_UPLOAD are
    "chosen"); returns a function that chooses one file. Only for this test: google.colab is
    put in sys.modules by monkeypatch, so later tests see no Colab."""
    fake = Path(__file__).parent / "fake_colab" / "google" / "colab" / "files.py"
    spec = importlib.util.spec_from_file_location("google.colab.files", fake)
    files = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(files)
    monkeypatch.setitem(sys.modules, "google.colab", types.SimpleNamespace(files=files))
    monkeypatch.setitem(sys.modules, "google.colab.files", files)
    monkeypatch.chdir(tmp_path)  # Colab also saves each upload in the working directory
    chosen = tmp_path / "chosen"
    monkeypatch.setenv("FAKE_COLAB_UPLOAD", str(chosen))

    def choose(name: str, text: str) -> None:
        chosen.mkdir(exist_ok=True)
        for old in chosen.iterdir():
            old.unlink()
        (chosen / name).write_text(text)

    return choose


def test_the_file_uploaded_last_is_reused_even_when_its_bytes_were_kept_before(
        workspace, colab_upload):
    a_text = "\n".join(f"alpha document number {i}" for i in range(20))
    b_text = "\n".join(f"beta document number {i}" for i in range(20))
    kept = workspace.datasets / "uploads"
    colab_upload("a.txt", a_text)
    assert run_data_cells(workspace, data_source="upload").settings["data_path"] == str(
        kept / "a.txt")
    a_stamp = (kept / "a.txt").stat().st_mtime_ns
    colab_upload("b.txt", b_text)
    data = run_data_cells(workspace, data_source="upload", upload_new=True)
    assert data.settings["data_path"] == str(kept / "b.txt")
    colab_upload("a.txt", a_text)  # A again, the same bytes: kept as it was
    data = run_data_cells(workspace, data_source="upload", upload_new=True)
    assert data.settings["data_path"] == str(kept / "a.txt")
    assert (kept / "a.txt").stat().st_mtime_ns == a_stamp  # its token cache key holds

    again = run_data_cells(workspace, data_source="upload", upload_new=False, upload_path="")
    assert again.settings["data_path"] == str(kept / "a.txt")  # the newest upload is A
    texts = load_text_data(TrainingConfig().replace(**again.settings), workspace)
    assert texts["train"][0]["text"].startswith("alpha")
