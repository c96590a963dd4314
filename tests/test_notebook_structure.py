"""The notebook is generated; these tests make its old failure modes impossible to ship: stale
JSON, forms Colab won't render, names used before a cell defines them, drift from the library."""

from __future__ import annotations

import ast
import builtins
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import build_notebook  # noqa: E402

NB = build_notebook.build()
CODE = [c for c in NB.cells if c.cell_type == "code"]
MARKDOWN = [c for c in NB.cells if c.cell_type == "markdown"]

PARAM = re.compile(r"^(?P<name>[A-Za-z_]\w*) = (?P<value>.+?)  # @param (?P<spec>.+)$")


def without_payload(cell_source: str) -> str:
    """Cell 1.1 minus its one payload line (base64 text, which no code-style rule applies to)."""
    return "\n".join(line for line in cell_source.splitlines()
                     if not line.startswith("LIBRARY = "))


def python_source(cell_source: str) -> str:
    """The cell as IPython would run it: `!shell` lines become function calls."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(cell_source)


def test_committed_notebook_matches_generator():
    result = subprocess.run([sys.executable, "build_notebook.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generation_is_deterministic():
    assert build_notebook.render() == build_notebook.render()
    ids = [c.id for c in NB.cells]
    assert len(set(ids)) == len(ids)


def test_valid_nbformat_without_outputs():
    nbformat.validate(NB)
    assert all(c.outputs == [] and c.execution_count is None for c in CODE)


def test_36_cells_12_markdown_24_code_in_quick_start_plus_8_sections():
    assert (len(NB.cells), len(MARKDOWN), len(CODE)) == (36, 12, 24)
    assert len(build_notebook.SECTIONS) == 9  # quick start + 8 numbered
    expected_code = [0, 3, 5, 3, 1, 3, 4, 3, 2]
    actual = [sum(c["kind"] == "code" for c in cells) for _, cells in build_notebook.SECTIONS]
    assert actual == expected_code


def test_table_of_contents_anchors_resolve():
    toc = MARKDOWN[1].source
    links = re.findall(r"\]\(#([\w-]+)\)", toc)
    assert len(links) == 8
    anchors = set()
    for cell in MARKDOWN:
        anchors |= set(re.findall(r'<a (?:id|name)="([\w-]+)"></a>', cell.source))
    assert set(links) <= anchors
    for number in range(1, 9):  # each section header carries its own anchor and number
        assert any(f'id="section-{number}"' in c.source and f"## {number}." in c.source
                   for c in MARKDOWN)


def test_every_code_cell_is_a_colab_form():
    for cell in CODE:
        first = cell.source.splitlines()[0]
        assert re.fullmatch(r'# @title .+ \{ display-mode: "form" \}', first), first
        assert cell.metadata.get("cellView") == "form"


@pytest.mark.parametrize("cell", CODE, ids=lambda c: c.source.splitlines()[0][9:40])
def test_param_lines_parse_as_colab_expects(cell):
    for line in cell.source.splitlines():
        if "# @param" not in line:
            continue
        match = PARAM.match(line)
        assert match, f"not a Colab form field: {line!r}"
        value = ast.literal_eval(match["value"])  # a plain literal, never an expression
        spec = match["spec"]
        if spec.startswith("["):
            options = ast.literal_eval(spec[: spec.index("]") + 1])
            if "allow-input" not in spec:
                assert value in options, line
        else:
            kind = re.search(r'type:"(\w+)"', spec)[1]
            expected = {"string": str, "integer": int, "number": (int, float),
                        "boolean": bool, "slider": (int, float)}[kind]
            assert isinstance(value, expected) and not (kind == "integer" and isinstance(value, bool)), line


@pytest.mark.parametrize("cell", CODE, ids=lambda c: c.source.splitlines()[0][9:40])
def test_code_cells_parse(cell):
    ast.parse(python_source(cell.source))


def test_code_cells_are_ruff_clean(tmp_path):
    """Linted as one module in cell order, the way a kernel sees them (names flow between cells)."""
    header = "from IPython import get_ipython  # noqa: F401\nfrom IPython.display import display\n"
    body = "\n\n".join(python_source(c.source) for c in CODE)
    (tmp_path / "notebook_cells.py").write_text(header + body)
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run(
        [str(ruff), "check", "--no-cache", "--isolated", "--select", "E9,F,B,W", "--line-length",
         "110", str(tmp_path)], capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout


def test_cells_hold_no_loops_sql_or_plotting():
    for cell in CODE:
        tree = ast.parse(python_source(cell.source))
        for node in ast.walk(tree):
            assert not isinstance(node, (ast.For, ast.While, ast.AsyncFor)), cell.source
        text = without_payload(cell.source).lower()
        assert not re.search(r"\bselect\b.+\bfrom\b|\binsert\s+into\b|\bcreate\s+table\b", text)
        assert "plt." not in text and "matplotlib" not in text and ".plot(" not in text


def test_names_are_defined_before_use():
    """Walk the cells in order, as Run all does: every name a cell reads must come from an
    earlier cell, the same cell (above), the library's public names, IPython or builtins."""
    defined = set(dir(builtins)) | {"display", "get_ipython"}
    for cell in CODE:
        tree = ast.parse(python_source(cell.source))
        stores, loads = set(), []
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                (stores.add(node.id) if isinstance(node.ctx, ast.Store) else loads.append(node.id))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                stores |= {(a.asname or a.name).split(".")[0] for a in node.names}
        missing = {n for n in loads if n not in defined and n not in stores}
        assert not missing, f"{cell.source.splitlines()[0]}: uses {sorted(missing)} before definition"
        defined |= stores


def test_every_library_name_the_notebook_imports_exists():
    """The install cell imports what later cells use; each must be a public library name."""
    import utils.training as lib

    tree = ast.parse(python_source(CODE[0].source))
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                and n.module == "utils.training" for a in n.names]
    assert imported, "the install cell imports the library"
    for name in imported:
        assert name in lib.__all__ and hasattr(lib, name), name


# ---------------------------------------------------------------------- the library it carries


def install_cell_values() -> dict[str, str]:
    """The LIBRARY_* assignments of cell 1.1, as written."""
    return {m[1]: m[2] for m in re.finditer(r'^(LIBRARY\w*) = "([^"]*)"', CODE[0].source, re.M)}


def test_install_cell_carries_exactly_the_library():
    """What cell 1.1 unpacks is the library on disk: every .py file of utils/training, the
    package marker and the requirements, with the hash install.py computes at runtime."""
    import base64
    import hashlib

    from utils.training.install import library_files, library_hash, library_version

    values = install_cell_values()
    assert hashlib.sha256(values["LIBRARY"].encode()).hexdigest() == values["LIBRARY_SHA256"]
    members = build_notebook.archive_members(base64.b64decode(values["LIBRARY"]))
    package = ROOT / "utils" / "training"
    expected = {f"utils/training/{rel}": (package / rel).read_bytes()
                for rel in library_files(package)}
    expected["utils/__init__.py"] = (ROOT / "utils" / "__init__.py").read_bytes()
    expected["requirements-training.txt"] = (ROOT / "requirements-training.txt").read_bytes()
    assert members == expected
    assert "utils/training/install.py" in members and "utils/training/__init__.py" in members
    assert values["LIBRARY_HASH"] == library_hash(package)
    assert values["LIBRARY_VERSION"] == library_version(package) != "unknown"


def test_install_cell_is_plain_python_with_a_short_visible_part():
    """No `!` shell lines (it must also run under exec), no old repository URL, and everything
    but the one payload line fits on a screen."""
    source = CODE[0].source
    assert python_source(source) == source + "\n" or python_source(source) == source
    assert not any(line.lstrip().startswith(("!", "%")) for line in source.splitlines())
    assert "REPO_URL" not in source and "github.com" not in source
    visible = without_payload(source).splitlines()
    assert len(visible) <= 45 and max(len(line) for line in visible) <= 120
    assert sum(len(line) > 1000 for line in source.splitlines()) == 1
    assert 'install_from = "bundled"  # @param ["bundled", "git", "drive"]' in source


def test_check_accepts_the_same_files_compressed_differently():
    """Another xz version may compress the same files to other bytes: --check compares what the
    payload holds; a payload holding other files (or none) is stale."""
    import io
    import lzma
    import zipfile

    members = build_notebook.library_members()
    current = build_notebook.render()
    assert build_notebook.is_current(current)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    other = lzma.compress(buffer.getvalue(), preset=1)
    assert build_notebook.render(other) != current
    assert build_notebook.is_current(build_notebook.render(other))
    changed = dict(members, **{"utils/training/install.py": b"# stale\n"})
    stale = build_notebook.render(build_notebook.library_archive(changed))
    assert not build_notebook.is_current(stale)
    assert not build_notebook.is_current(current.replace("LIBRARY = ", "LIBRARY_X = "))


def test_build_refuses_torch_or_numpy_in_the_requirements(tmp_path, monkeypatch):
    (tmp_path / "requirements-training.txt").write_text("wandb>=0.16\nnumpy>=1.26\n")
    monkeypatch.setattr(build_notebook, "ROOT", tmp_path)
    with pytest.raises(SystemExit, match="numpy"):
        build_notebook.library_members()
