"""The command line (`python -m common ...`) gives clear errors for unknown topics and scales."""

from __future__ import annotations

import json

import nbformat
import pytest

from common.__main__ import main
from common.notebooks import NotebookError, run_notebook


def test_run_unknown_topic_lists_the_topics(capsys):
    assert main(["run", "no-such-topic"]) == 2
    err = capsys.readouterr().err
    assert "unknown topic" in err and "01-deep-neural-networks/01-dnn" in err and "05-image-generation/05-dall-e" in err


def test_run_unknown_scale_lists_valid_ones(capsys):
    assert main(["run", "01-dnn", "--scale", "huge"]) == 2
    assert "smoke, cpu, gpu" in capsys.readouterr().err


def test_failing_cell_exits_nonzero_and_shows_the_error(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise RuntimeError('boom in cell 2')")]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(NotebookError, match="boom in cell 2"):
        run_notebook(path, scale="smoke")
    assert nbformat.read(path, as_version=4).cells[0].outputs == []  # a failed run is not saved
    with pytest.raises(ValueError, match="unknown scale"):
        run_notebook(path, scale="big")


def test_list_shows_existing_and_planned_topics(capsys, monkeypatch):
    import common.topics as topics

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "01-deep-neural-networks/01-dnn" in out and "holds" in out and "planned" not in out  # all 31 exist
    monkeypatch.setattr(topics, "TOPICS", [*topics.TOPICS, ("05-image-generation/99-future", "future", "Future", 2030)])
    assert main(["list"]) == 0
    assert "05-image-generation/99-future" in (out := capsys.readouterr().out) and "planned" in out


def test_run_prints_recorded_result(tmp_path, monkeypatch, capsys):
    import common.__main__ as cli
    import common.topics as topics

    folder = tmp_path / "01-deep-neural-networks" / "01-dnn"
    folder.mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('hi')")]), folder / "notes.ipynb")
    (folder / "results.json").write_text(json.dumps({"claim": "c", "runs": {"cpu": {"claim_holds": True}}}))
    monkeypatch.setattr(topics, "topic_dir", lambda f: tmp_path / f)
    assert cli.main(["run", "01-dnn", "--scale", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "claim: c" in out and '"claim_holds": true' in out
    assert nbformat.read(folder / "notes.ipynb", as_version=4).cells[0].outputs[0]["text"] == "hi\n"


def test_gpu_copy_saves_beside_the_notebook(tmp_path, monkeypatch):
    import common.__main__ as cli
    import common.topics as topics

    folder = tmp_path / "01-deep-neural-networks" / "01-dnn"
    folder.mkdir(parents=True)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('hi')")]), folder / "notes.ipynb")
    monkeypatch.setattr(topics, "topic_dir", lambda f: tmp_path / f)
    assert cli.main(["run", "01-dnn", "--scale", "gpu", "--gpu-copy"]) == 0
    assert nbformat.read(folder / "notes.ipynb", as_version=4).cells[0].outputs == []  # the cpu-scale run stays
    assert nbformat.read(folder / cli.GPU_NOTEBOOK, as_version=4).cells[0].outputs[0]["text"] == "hi\n"
