"""docs/quickstart.ipynb runs top to bottom (a tiny budget), as a Colab user would run it."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "quickstart.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("KERAS_SUPCON_NOTEBOOK_TINY", "1")
    monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.outputs if out.output_type == "stream")
    assert "kNN accuracy:" in text and "kernel sparsity: 0.5" in text, text[-3000:]
    assert "max |SavedModel - Keras| probability:" in text
    # the figure cell shows the t-SNE figure
    assert any(out.output_type in ("display_data", "execute_result") and "image/png" in out.data
               for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
    accuracy = float(text.split("'accuracy': ")[1].split(",")[0].rstrip("}"))
    assert accuracy > 0.5, text[-3000:]   # chance is 0.1; one epoch at 8x8 pixels
