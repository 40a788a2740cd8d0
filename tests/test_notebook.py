"""notebooks/quickstart.ipynb runs top to bottom (nbclient, a real Jupyter kernel) on a tiny
setting: install cell skipped (saejax imports), training, plots, top-activating patches, export."""

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end-to-end runs: the full suite only, not `-m "not slow"`

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEJAX_QUICKSTART_STEPS", "30")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    assert not [out for out in outputs if out.get("output_type") == "error"]
    text = "".join(out.get("text", "") for out in outputs if out.get("output_type") == "stream")
    assert "same codes: True" in text and "dead latents" in text
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) >= 4  # training curves, density, atoms, top-activating grid
    assert os.environ.get("SAEJAX_QUICKSTART_STEPS") == "30"
