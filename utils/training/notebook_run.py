"""Executing ``training.ipynb`` headless: fill in its ``@param`` form fields, then run every cell
with a real Jupyter kernel, exactly as a person editing the forms and pressing *Run all* would.

The command line's ``demo`` and ``run-notebook`` and the notebook tests run it this way.
"""

from __future__ import annotations

import ast
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .training_config import ConfigError

PARAM_LINE = re.compile(r"^(?P<name>[A-Za-z_]\w*) = (?P<value>.+?)(?P<rest>  # @param .+)$")


def set_params(source: str, values: Mapping[str, Any]) -> tuple[str, set[str]]:
    """Replace the literal of each ``name = value  # @param`` line named in ``values``."""
    used: set[str] = set()
    lines = []
    for line in source.splitlines():
        match = PARAM_LINE.match(line)
        if match and match["name"] in values:
            old = ast.literal_eval(match["value"])
            new = _coerce(match["name"], values[match["name"]], old)
            line = f"{match['name']} = {new!r}{match['rest']}"
            used.add(match["name"])
        lines.append(line)
    return "\n".join(lines), used


class _Echo:
    """Prints a running notebook to a terminal as the kernel sends it: each code cell's title
    when the cell starts, then its printed lines (stdout and stderr) and errors as they arrive.

    Printing the title first also puts anything the kernel's child processes write straight to
    the terminal (W&B's service does) under the cell that was running, not the one before it.
    """

    def __init__(self) -> None:
        self.partial: dict[str, str] = {}  # stream name -> text after its last newline

    def start(self, cell: Any, cell_index: int, **_: Any) -> None:
        self.flush()
        if cell.cell_type != "code":
            return
        first = cell.source.strip().splitlines()[0] if cell.source.strip() else f"cell {cell_index}"
        print(f"[{first.removeprefix('# @title ').split(' {')[0]}]", flush=True)

    def message(self, msg: Mapping[str, Any]) -> None:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            name = content.get("name", "stdout")
            text = self.partial.pop(name, "") + content.get("text", "")
            *lines, rest = text.split("\n")
            for line in lines:
                self._line(line)
            if rest:
                self.partial[name] = rest
        elif kind == "error":
            self.flush()
            print(f"    {content.get('ename')}: {content.get('evalue')}", flush=True)

    def flush(self, **_: Any) -> None:
        for rest in self.partial.values():
            self._line(rest)
        self.partial.clear()

    @staticmethod
    def _line(line: str) -> None:
        # A carriage return redraws the line (a text progress bar): show what it ended as.
        shown = line.rsplit("\r", 1)[-1].rstrip()
        print(f"    {shown}", flush=True)


def _client(nb: Any, echo: bool, **kwargs: Any) -> Any:
    """nbclient's NotebookClient; with ``echo``, one that prints each output message the moment
    it arrives (its ``output`` handler runs once per message), not when the cell ends."""
    from nbclient import NotebookClient

    if not echo:
        return NotebookClient(nb, **kwargs)
    printer = _Echo()

    class EchoingClient(NotebookClient):
        def output(self, outs: list[Any], msg: dict[str, Any], display_id: str | None,
                   cell_index: int) -> Any:
            out = super().output(outs, msg, display_id, cell_index)
            printer.message(msg)
            return out

    # on_cell_executed runs once the cell's last output is in (on_cell_complete, despite its
    # name, runs as soon as the code is sent).
    return EchoingClient(nb, on_cell_start=printer.start, on_cell_executed=printer.flush,
                         **kwargs)


def _coerce(name: str, value: Any, old: Any) -> Any:
    """Give a ``--set`` string the type of the form field it replaces."""
    if not isinstance(value, str) or isinstance(old, str):
        return value
    try:
        if isinstance(old, bool):
            lowered = value.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return lowered in ("true", "1", "yes")
        if isinstance(old, int):
            return int(value)
        if isinstance(old, float):
            return float(value)
    except ValueError as exc:
        takes = ("true or false (or yes/no, 1/0)" if isinstance(old, bool)
                 else "a whole number" if isinstance(old, int) else "a number")
        example = str(old).lower() if isinstance(old, bool) else repr(old)
        raise ConfigError(
            [f"{name} = {value!r}: the form field takes {takes}, e.g. --set {name}={example}"],
            header="Bad --set value",
        ) from exc
    return value


def run_notebook(
    notebook: str | Path,
    values: Mapping[str, Any] | None = None,
    output: str | Path | None = None,
    timeout: int = 1800,
    cwd: str | Path | None = None,
    echo: bool = False,
) -> Path:
    """Execute the notebook top to bottom with a real kernel and save the executed copy.
    ``echo`` prints each cell's title when it starts and its printed output as it arrives
    (for terminals: a 14-minute training cell shows its epochs as they finish)."""
    import nbformat
    from nbclient.exceptions import CellExecutionError

    notebook = Path(notebook)
    nb = nbformat.read(notebook, as_version=4)
    values = dict(values or {})
    used: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source, found = set_params(cell.source, values)
            used |= found
    unknown = set(values) - used
    if unknown:
        raise ConfigError([f"{name}: no form field of that name in {notebook.name}"
                           for name in sorted(unknown)], header="Bad --set value")
    output = Path(output) if output else notebook.with_name(notebook.stem + ".executed.ipynb")
    client = _client(nb, echo, timeout=timeout, kernel_name="python3",
                     resources={"metadata": {"path": str(cwd or notebook.parent)}})
    started = time.monotonic()
    try:
        client.execute()
    except CellExecutionError:
        nbformat.write(nb, output)
        print(f"A cell failed; the executed notebook (with the error) is at {output}")
        raise
    nbformat.write(nb, output)
    print(f"Executed {notebook.name} in {time.monotonic() - started:.0f}s -> {output}")
    return output
