"""Run notes notebooks headless, tidy their outputs, and show source code inside them."""

from __future__ import annotations

import inspect
import os
import re
import textwrap
from pathlib import Path

from .runtime import SCALES


class NotebookError(RuntimeError):
    """A notebook cell failed. The message starts with the cell's exception in plain words
    (``DataError: ...``); the cell's source and full traceback follow, without colour codes.
    ``summary`` holds that first part alone."""

    def __init__(self, message: str, summary: str = ""):
        super().__init__(message)
        self.summary = summary or message.split("\n", 1)[0]


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour codes (IPython tracebacks are coloured)."""
    return _ANSI.sub("", text)


def _failure_message(path: Path, nb, exc) -> tuple[str, str]:
    """(summary, full message) for a failed cell: the plain error first, then where and the traceback."""
    ename, evalue = getattr(exc, "ename", "") or "Error", getattr(exc, "evalue", "") or ""
    cell_no = next((i for i, c in enumerate(nb.cells, 1) if c.cell_type == "code"
                    and any(o.get("output_type") == "error" for o in c.get("outputs", []))), None)
    where = f"cell {cell_no} (counting markdown cells too)" if cell_no else "a cell"
    summary = f"{path.name}: {where} failed with {ename}: {strip_ansi(str(evalue))}"
    return summary, f"{summary}\n\n--- full traceback ---\n{strip_ansi(str(exc))}"


def _collapse_cr(text: str) -> str:
    """Keep what a terminal would show: for each line, the text after its last carriage return."""
    text = text.replace("\r\n", "\n")
    return "\n".join(line.rsplit("\r", 1)[-1] if "\r" in line else line for line in text.split("\n"))


def tidy_outputs(nb) -> None:
    """Merge consecutive stream outputs of a cell and collapse progress-bar carriage returns."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        merged = []
        for out in cell.get("outputs", []):
            if (out.get("output_type") == "stream" and merged
                    and merged[-1].get("output_type") == "stream" and merged[-1]["name"] == out["name"]):
                merged[-1]["text"] += out["text"]
            else:
                merged.append(out)
        for out in merged:
            if out.get("output_type") == "stream":
                out["text"] = _collapse_cr(out["text"])
        cell["outputs"] = merged


def run_notebook(path: str | Path, scale: str | None = None, timeout: int = 1800, save: bool = True,
                 kernel_name: str = "python3", output: str | Path | None = None):
    """Execute a notebook top to bottom in a fresh kernel, with its folder as working directory.

    ``scale`` sets ``DLH_SCALE`` for the kernel. With ``save`` the executed notebook (tidied
    outputs) replaces the file, or is written to ``output`` when given (e.g. ``notes.gpu.ipynb``
    for a gpu-scale run kept beside the committed cpu-scale one). A failing cell raises :class:`NotebookError` with that cell's
    source and error; the partly executed notebook is not saved.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = Path(path).resolve()
    if not path.exists():
        raise ValueError(f"no notebook at {path}")
    if scale is not None and scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}")
    nb = nbformat.read(path, as_version=4)
    old_env = dict(os.environ)
    if scale is not None:
        os.environ["DLH_SCALE"] = scale
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellExecutionError as exc:
        summary, message = _failure_message(path, nb, exc)
        raise NotebookError(message, summary) from None
    finally:
        os.environ.clear()
        os.environ.update(old_env)
    tidy_outputs(nb)
    if save:
        nbformat.write(nb, Path(output) if output is not None else path)
    return nb


def show_source(obj, title: str | None = None) -> None:
    """Show the source of a function, class or method: as Markdown in Jupyter, as plain text elsewhere.

    Returns nothing, so the source appears once in a notebook (no echoed string after it); use
    :func:`source_of` to get the text.
    """
    src = source_of(obj)
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            head = f"**{title}**\n\n" if title else ""
            display(Markdown(f"{head}```python\n{src.rstrip()}\n```"))
            return None
    except ImportError:
        pass
    print(src)
    return None


def source_of(obj) -> str:
    """The dedented source text of a function, class or method (``ValueError`` if it has none)."""
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (TypeError, OSError) as exc:
        raise ValueError(f"show_source: no source for {obj!r} ({exc})") from None


def error_outputs(nb) -> list[str]:
    """The error outputs of an executed notebook, one string per error (``ename: evalue``)."""
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.get("output_type") == "error"]


