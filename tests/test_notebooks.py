"""Every topic's notes notebook runs top to bottom at smoke scale in a fresh kernel."""

from __future__ import annotations

import pytest

from common.notebooks import error_outputs, run_notebook
from common.topics import existing_topics, topic_dir

NOTEBOOKS = [t[0] for t in existing_topics() if (topic_dir(t[0]) / "notes.ipynb").exists()]


@pytest.mark.notebook
@pytest.mark.parametrize("folder", NOTEBOOKS)
def test_notebook_runs_at_smoke_scale(folder):
    nb = run_notebook(topic_dir(folder) / "notes.ipynb", scale="smoke", save=False, timeout=300)
    assert error_outputs(nb) == []
    header = "".join(o.get("text", "") for o in nb.cells[next(i for i, c in enumerate(nb.cells)
                                                               if c.cell_type == "code")].outputs)
    assert "scale   : smoke" in header
