"""The install files agree with each other: Colab gets what it lacks and never torch or numpy."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# COLAB.md: preinstalled on every Colab runtime (torch and numpy must never be reinstalled).
COLAB_PREINSTALLED = {"torch", "numpy", "pandas", "matplotlib", "seaborn", "datasets",
                      "tokenizers", "tqdm", "nbformat"}


def names(lines: list[str]) -> set[str]:
    return {re.split(r"[<>=!\[ ;]", line.strip(), maxsplit=1)[0].lower()
            for line in lines if line.strip() and not line.lstrip().startswith("#")}


def test_colab_requirements_cover_what_colab_lacks_and_never_torch_or_numpy():
    colab = names((ROOT / "requirements-training.txt").read_text().splitlines())
    assert not colab & {"torch", "numpy"}
    block = re.search(r"^dependencies = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(),
                      re.S | re.M)[1]
    runtime = names(re.findall(r'"([^"]+)"', block))
    missing = runtime - colab - COLAB_PREINSTALLED
    assert not missing, f"add to requirements-training.txt: {sorted(missing)}"


def test_local_installs_pin_the_cpu_torch():
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "--constraint constraints.txt" in makefile
