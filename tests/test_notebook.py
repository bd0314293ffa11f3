"""notebooks/quickstart.ipynb runs end to end (tiny budgets) and its code is what the README shows."""
from __future__ import annotations

import os
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def _code_lines() -> set:
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    return {line.strip() for cell in notebook.cells if cell.cell_type == "code" for line in cell.source.splitlines()}


def test_readme_recommend_code_is_the_notebooks():
    pytest.importorskip("nbformat")
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Recommend", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = {line.split("#")[0].strip() for line in block.splitlines()} - {""}
    missing = {line for line in code if not any(line in nb_line for nb_line in _code_lines())}
    assert not missing, f"README lines not in the notebook: {missing}"


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("IARN_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("IARN_JAX_TQDM", "0")
    client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = "\n".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                        for out in cell.get("outputs", []))
    assert "test RMSE" in outputs
    assert (tmp_path / "quickstart_model" / "manifest.json").exists()
    assert os.path.exists(tmp_path / "explanation.png") or "matplotlib" in outputs
