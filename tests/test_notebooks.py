"""Execute every tutorial notebook and check that each paired ``.ipynb`` matches its ``.py``.

The ``notebooks/NN_name.py`` files (jupytext py:percent) are the source of truth; the paired
``.ipynb`` files are generated from them without outputs (``jupytext --to ipynb``).  Each
notebook runs top to bottom in a fresh ``python3`` kernel, in a temporary working directory,
with matplotlib's inline backend (figures become outputs; no window); any cell error fails
the test.

With ``$MLDS_EXECUTED_NOTEBOOKS`` set to a folder, each executed notebook is also written
there with its outputs (``NN_name.ipynb``): CI builds the documentation site from those
copies (``docs/hooks.py``) instead of running every notebook a second time.

The kernel is ipykernel's ``python3`` spec; jupyter_client launches its ``python`` argv as
``sys.executable``, so the kernel runs this interpreter (this venv), which is asserted below.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
SOURCES = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT_S = 300


def _ids(paths):
    return [p.stem for p in paths]


def test_notebooks_exist():
    assert SOURCES, f"no notebooks/NN_*.py found in {NOTEBOOK_DIR}"


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=_ids(SOURCES))
def test_notebook_executes(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    nb = jupytext.read(source)
    # Check first that the kernel will be this interpreter, not some other python3 on PATH.
    nb.cells.insert(0, nbformat.v4.new_code_cell(
        f"import sys\nassert sys.executable == {sys.executable!r}, sys.executable"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.chdir(tmp_path)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    elapsed = time.perf_counter() - t0
    print(f"{source.name}: executed in {elapsed:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
    folder = os.environ.get("MLDS_EXECUTED_NOTEBOOKS")
    if folder:
        del nb.cells[0]  # the interpreter check: not part of the notebook, nor its count
        for cell in nb.cells:
            if cell.cell_type == "code" and cell.get("execution_count"):
                cell.execution_count -= 1
                for out in cell.outputs:
                    if out.get("execution_count"):
                        out.execution_count -= 1
        Path(folder).mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, Path(folder) / f"{source.stem}.ipynb")


@pytest.mark.parametrize("source", SOURCES, ids=_ids(SOURCES))
def test_ipynb_in_sync_and_without_outputs(source: Path):
    ipynb = source.with_suffix(".ipynb")
    assert ipynb.exists(), (
        f"{ipynb.name} is missing: run `jupytext --to ipynb notebooks/{source.name}`")
    from_py = jupytext.read(source)
    from_ipynb = jupytext.read(ipynb)
    cells_py = [(c.cell_type, c.source) for c in from_py.cells]
    cells_ipynb = [(c.cell_type, c.source) for c in from_ipynb.cells]
    assert cells_ipynb == cells_py, (
        f"{ipynb.name} is out of sync with {source.name}: run "
        f"`jupytext --to ipynb notebooks/{source.name}`")
    formats = from_ipynb.metadata.get("jupytext", {}).get("formats", "")
    assert "py:percent" in formats, f"{ipynb.name} is not paired with the .py (formats={formats!r})"
    for i, cell in enumerate(from_ipynb.cells):
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{ipynb.name} cell {i} has stored outputs"
            assert cell.get("execution_count") is None, f"{ipynb.name} cell {i} has a count"
