"""Errors a person can cause show in a notebook as their message alone, not a traceback."""

from __future__ import annotations

import pytest

from utils.training.checkpoints import CheckpointError
from utils.training.data import DataError
from utils.training.db_schema import ExperimentDBError
from utils.training.errors import PersonFacing, TrainingInterrupted
from utils.training.export import ExportError
from utils.training.metrics_tracker import TrackingError
from utils.training.models import ModelLoadError
from utils.training.plot_style import PlotError
from utils.training.search_space import SearchError, SearchSpaceError
from utils.training.trainer import TrainingDivergedError, TrainingOutOfMemoryError
from utils.training.training_config import ConfigError
from utils.training.workspace import UnsafeNameError, WorkspaceError

ERRORS = [CheckpointError, DataError, ExperimentDBError, ExportError, PlotError, TrackingError,
          ModelLoadError, SearchError, SearchSpaceError, TrainingDivergedError,
          TrainingOutOfMemoryError, ConfigError, UnsafeNameError, WorkspaceError]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_every_person_facing_error_renders_as_its_message(error):
    assert issubclass(error, PersonFacing)


def test_ipython_shows_the_message_without_frames(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.user_ns["ConfigError"] = ConfigError
    shell.run_cell("def deep():\n    raise ConfigError(['lr = -1: must be > 0'])\ndeep()")
    out = capsys.readouterr()
    text = out.out + out.err
    assert "ConfigError" in text and "lr = -1: must be > 0" in text
    assert "deep()" not in text and "Traceback" not in text


def test_an_interrupt_is_still_a_keyboard_interrupt():
    with pytest.raises(KeyboardInterrupt):
        raise TrainingInterrupted("saved")
    assert not issubclass(TrainingInterrupted, Exception)  # `except Exception` must not eat it
