"""The replay-analysis notebook runs top to bottom on the shared data (nbclient)."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "replay_analysis.ipynb"


def test_replay_notebook_runs(data_dir, monkeypatch, tmp_path):
    from nbclient import NotebookClient

    monkeypatch.setenv("THRIFTY_DATA_DIR", str(data_dir))
    monkeypatch.setenv("THRIFTY_HOME", str(tmp_path / "home"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    start = time.time()
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    elapsed = time.time() - start
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the frontier plot is not shown"
    text = "".join(o.get("text", "") for o in outputs)
    assert "best_fixed" in text and "oracle" in text and "AIQ recomputed" in text
    assert elapsed < 120, f"the notebook took {elapsed:.0f}s"
