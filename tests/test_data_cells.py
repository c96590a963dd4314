"""The data cells of section 2, run as written in build_notebook.py (with form values filled in
the way run-notebook fills them), against files the test writes: what a person sets in a form
must reach the library."""

from __future__ import annotations

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
