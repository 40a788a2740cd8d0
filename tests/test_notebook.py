"""The notebooks run top to bottom (nbclient, a real Jupyter kernel) on tiny settings, install cells
skipped (saejax imports): quickstart.ipynb (training, plots, top-activating patches, export) and
language_model.ipynb (on a tiny random Gemma-3: splice, absorption, probing, steering, dashboards)."""

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
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's workdir (tempfile.mkdtemp)
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


LANGUAGE_NOTEBOOK = NOTEBOOK.parent / "language_model.ipynb"


def test_language_model_notebook_trains_judges_and_steers(tmp_path, monkeypatch):
    """notebooks/language_model.ipynb on a tiny random Gemma-3 (its parameters cell followed by one that
    points the config at it and shrinks every size): splice, absorption, probing, steering, dashboards."""
    pytest.importorskip("tokenizers")
    from test_stream import LETTER_WORDS, TEXTS, tiny_gemma

    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's workdir (tempfile.mkdtemp)
    model_dir = tiny_gemma(tmp_path / "gemma", words=LETTER_WORDS)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS))
    notebook = nbformat.read(LANGUAGE_NOTEBOOK, as_version=4)
    at = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(at + 1, nbformat.v4.new_code_cell(f"""
config.model.name, config.model.layer, config.model.text_glob = {str(model_dir)!r}, 1, {str(corpus)!r}
config.model.context_length, config.model.eval_texts, config.model.absorption_words = 32, 8, 520
config.model.probing_snippets, config.model.dashboard_latents = 20, 2
config.data.buffer_contexts, config.data.forward_batch = 64, 4
config.sae.d_sae, config.sae.k = 64, 4
config.train.batch_size, config.train.steps, config.train.log_every, config.train.eval_rows = 32, 20, 10, 200
config.log.tensorboard = False
"""))
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    errors = [out for out in outputs if out.get("output_type") == "error"]
    assert not errors, errors[0].get("traceback")
    text = "".join(out.get("text", "") for out in outputs if out.get("output_type") == "stream")
    for expected in ("held-out FVU", "recovered", "letters scored: absorption rate", "dense probe",
                     "KL(steered || clean)", "dashboards/index.html"):
        assert expected in text, expected
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) >= 2  # the absorption plot and one per probing task
