"""notebooks/quickstart.ipynb runs top to bottom (at test size) in a fresh Python kernel."""
from __future__ import annotations

import json
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def _with_parameters(nb, nbformat, **params):
  """Inserts a cell overriding the `parameters`-tagged cell's values after it (papermill style)."""
  index = next((i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])),
               None)
  assert index is not None, f"{NOTEBOOK} has no cell tagged 'parameters'"
  source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
  cell = nbformat.v4.new_code_cell(source)
  cell.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(index + 1, cell)
  return nb


@pytest.mark.slow
def test_quickstart_notebook_runs_at_test_size(tmp_path, synthetic_cache):
  nbformat = pytest.importorskip("nbformat", reason="nbformat not installed (pip install '.[test]')")
  nbclient = pytest.importorskip("nbclient", reason="nbclient not installed (pip install '.[test]')")
  pytest.importorskip("ipykernel", reason="ipykernel not installed: no python3 kernel to run the "
                      "notebook (pip install '.[test]')")
  pytest.importorskip("matplotlib", reason="matplotlib not installed (pip install '.[test]')")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nb = _with_parameters(nb, nbformat, WORKDIR=str(tmp_path / "run"), TINY=True, NUM_STEPS=2,
                        CACHE_DIR=str(synthetic_cache), NUM_QUERIES=1, TOP_K=2,
                        EXPORT_DIR=str(tmp_path / "export"))
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(REPO / "notebooks")}})
  client.execute()
  outputs = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.get("outputs", []) if o.get("output_type") == "stream")
  assert "held-out pairs" in outputs and "exported embeddings" in outputs
  images = sum(1 for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
  assert images >= 3  # loss curve, a retrieval example, a heat-map sheet
  assert (tmp_path / "export" / "encoder_config.json").is_file()
  rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "loss" in r] == [1, 2]


def test_committed_notebook_has_no_outputs():
  nbformat = pytest.importorskip("nbformat", reason="nbformat not installed (pip install '.[test]')")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
      "clear the outputs before committing notebooks/quickstart.ipynb")
