"""run_notebook(echo=True) prints a cell's output while the cell runs, not when it ends: a long
training cell must not be minutes of silence in a terminal."""

from __future__ import annotations

import sys

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from utils.training.notebook_run import run_notebook

CELL = """# @title Slow cell { display-mode: "form" }
import pathlib, sys, time
print("first line", flush=True)
print("a warning on stderr", file=sys.stderr, flush=True)
go = pathlib.Path({go!r})
deadline = time.monotonic() + 30
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
print("second line:", "streamed" if go.exists() else "NOT streamed", end="")
"""


class Terminal:
    """Stands in for sys.stdout; creates `go` when the first line shows, which the running
    cell waits for. Only an echo that streams can let the cell finish early."""

    def __init__(self, go):
        self.go, self.text = go, ""

    def write(self, text: str) -> int:
        self.text += text
        if "first line" in self.text and not self.go.exists():
            self.go.write_text("seen")
        return len(text)

    def flush(self) -> None:
        pass


def test_echo_streams_output_while_the_cell_runs(tmp_path, monkeypatch):
    go = tmp_path / "go"
    nb = new_notebook(cells=[new_code_cell(CELL.replace("{go!r}", repr(str(go))))])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    path = tmp_path / "slow.ipynb"
    nbformat.write(nb, path)
    terminal = Terminal(go)
    monkeypatch.setattr(sys, "stdout", terminal)
    run_notebook(path, output=tmp_path / "out.ipynb", timeout=120, cwd=tmp_path, echo=True)
    lines = terminal.text.splitlines()
    assert lines.index("[Slow cell]") < lines.index("    first line")  # the title comes first
    assert "    a warning on stderr" in lines  # stderr too (W&B writes there)
    assert "    second line: streamed" in lines  # the partial last line is flushed at the end
