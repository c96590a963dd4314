"""The mark of an error a person can cause and fix: in a notebook it shows as its message alone.

Our errors already say what was wrong and what to do; the traceback under them in Colab is a
screenful of library frames that hides the one line that matters. IPython (and so Colab and
Jupyter) renders an exception through its ``_render_traceback_`` when it has one. A shell
keeps the full traceback, and nothing else changes: this is a mixin, not a base class, so each
error keeps its standard type (``ValueError``, ``KeyboardInterrupt``...) for ``except`` clauses.
"""

from __future__ import annotations

RED, RESET = "\x1b[31m", "\x1b[0m"


class PersonFacing:
    """Mix into an exception whose message is the whole story."""

    def _render_traceback_(self) -> list[str]:
        return [f"{RED}{type(self).__name__}{RESET}: {self}"]


class TrainingInterrupted(PersonFacing, KeyboardInterrupt):
    """Interrupt (Ctrl-C, Colab's stop button) after the checkpoint was saved."""
