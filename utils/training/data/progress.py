"""Progress bars where they help: on big datasets, not for a few dozen rows."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import datasets

# Below this many rows a pass takes well under a second; a bar would only add noise to the cell.
BAR_MIN_ROWS = 20_000


@contextmanager
def progress_for(n_rows: int) -> Iterator[None]:
    """datasets' own bars for a long map/filter, silence for a short one."""
    quiet = n_rows < BAR_MIN_ROWS and not datasets.are_progress_bars_disabled()
    if quiet:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if quiet:
            datasets.enable_progress_bars()
