"""Repository checks: complete topic folders, honest committed notebooks, links, scoreboard, no data."""

from __future__ import annotations

import ast
import inspect
import json
import re
import subprocess
from pathlib import Path

import nbformat
import pytest

import common
from common import papers
from common.results import PAPER_KEYS, render_readme, source_sha256
from common.runtime import REPO_ROOT
from common.topics import TOPICS, existing_topics, topic_dir

EXISTING = existing_topics()
OUTLINE = ["## Why it mattered", "## The problem before it", "## The idea", "## Implementation", "## Check",
           "## Experiment", "## Result", "## What came next"]


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True)
    return out.stdout.split() if out.returncode == 0 else []


def test_at_least_one_topic_exists():
    assert EXISTING, "no topic folder has its module yet"


@pytest.mark.parametrize("folder,module", [(t[0], t[1]) for t in EXISTING])
def test_topic_folder_is_complete(folder, module):
    d = topic_dir(folder)
    assert (d / "notes.ipynb").exists(), f"{folder}: notes.ipynb missing"
    section = folder.split("/")[0]
    assert (REPO_ROOT / "tests" / section / f"test_{module}.py").exists(), f"{folder}: tests missing"
    assert folder in {p.topic for p in papers.load_papers()}, f"{folder}: no papers.toml entry"
    res = d / "results.json"
    assert res.exists(), f"{folder}: results.json missing (the notebook's common.record writes it)"
    data = json.loads(res.read_text())
    assert data["topic"] == folder and data["claim"] and data["paper"]["values"] is not None
    runs = {s: r for s, r in data["runs"].items() if s in ("cpu", "gpu")}
    assert runs, f"{folder}: no cpu or gpu run recorded"
    for run in runs.values():
        assert isinstance(run["claim_holds"], bool) and run["metrics"] and run["seconds"] is not None


@pytest.mark.parametrize("folder", [t[0] for t in EXISTING])
def test_results_carry_provenance(folder):
    data = json.loads((topic_dir(folder) / "results.json").read_text())
    missing = [k for k in PAPER_KEYS if not data["paper"].get(k)]
    assert not missing, f"{folder}: the paper entry lacks {missing} (re-run the notebook with the current record())"
    for s, run in data["runs"].items():
        for key in ("dataset", "seeds", "spread", "headline", "source_sha256"):
            assert key in run, f"{folder} [{s}]: results.json lacks {key!r}: re-run the notebook"
        assert run["seeds"] and all(isinstance(x, int) for x in run["seeds"])
        if len(run["seeds"]) > 1:
            assert run["spread"], f"{folder} [{s}]: {len(run['seeds'])} seeds but no spread"
        for k, (lo, hi) in run["spread"].items():
            assert k in run["metrics"] and lo <= hi, f"{folder} [{s}]: bad spread for {k}"


@pytest.mark.parametrize("folder", [t[0] for t in EXISTING])
def test_results_belong_to_the_committed_code(folder):
    data = json.loads((topic_dir(folder) / "results.json").read_text())
    now = source_sha256(topic_dir(folder))
    stale = [s for s, run in data["runs"].items() if run.get("source_sha256") != now]
    assert not stale, (f"{folder}: its module or notebook code changed after the recorded {', '.join(stale)} run; "
                       f"re-run the notebook (make run TOPIC={folder}) and commit its outputs")


@pytest.mark.parametrize("folder", [t[0] for t in EXISTING])
def test_a_gpu_result_has_its_notebook_with_the_same_code(folder):
    data = json.loads((topic_dir(folder) / "results.json").read_text())
    gpu_nb = topic_dir(folder) / "notes.gpu.ipynb"
    if "gpu" not in data["runs"]:
        assert not gpu_nb.exists(), f"{folder}: notes.gpu.ipynb without a gpu result"
        return
    assert gpu_nb.exists(), f"{folder}: a gpu result but no notes.gpu.ipynb showing the run behind it"
    code = [[c.source for c in nbformat.read(d, as_version=4).cells if c.cell_type == "code"]
            for d in (gpu_nb, topic_dir(folder) / "notes.ipynb")]
    assert code[0] == code[1], f"{folder}: notes.gpu.ipynb's code differs from notes.ipynb's"


@pytest.mark.parametrize("folder", [t[0] for t in EXISTING])
def test_notebook_links_the_paper_online_before_the_local_pdf(folder):
    nb = nbformat.read(topic_dir(folder) / "notes.ipynb", as_version=4)
    title = next(c.source for c in nb.cells if c.cell_type == "markdown")
    for paper in (p for p in papers.load_papers() if p.topic == folder):
        online = title.find(f"]({paper.url})")
        assert online >= 0, f"{folder}: the title cell does not link {paper.title!r} online ({paper.url})"
        local = title.find(f"]({paper.pdf})") if f"]({paper.pdf})" in title else title.find(f"](./{paper.pdf})")
        assert local < 0 or online < local, f"{folder}: link {paper.title!r} online before its local PDF"


NOTEBOOKS = [(t[0], "notes.ipynb") for t in EXISTING] + [
    (t[0], "notes.gpu.ipynb") for t in EXISTING if (topic_dir(t[0]) / "notes.gpu.ipynb").exists()]


@pytest.mark.parametrize("folder,name", NOTEBOOKS)
def test_committed_notebook_is_one_real_run(folder, name):
    nb = nbformat.read(topic_dir(folder) / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    counts = [c.execution_count for c in code]
    assert None not in counts and counts == list(range(1, len(code) + 1)), f"execution counts {counts}"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{folder}: error outputs {[e.ename for e in errors]}"
    header = "".join(o.get("text", "") for o in code[0].outputs)
    want = "gpu" if name == "notes.gpu.ipynb" else "(cpu|gpu)"
    assert re.search(rf"scale\s+: {want}", header), f"{folder}/{name}: first cell must print the run header at {want} scale"
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert markdown.lstrip().startswith("# ")
    positions = [markdown.find(h) for h in OUTLINE]
    assert -1 not in positions, f"{folder}: missing outline sections {[h for h, p in zip(OUTLINE, positions) if p < 0]}"
    assert positions == sorted(positions), f"{folder}: outline sections out of order"
    assert "common.record(" in "\n".join(c.source for c in code)
    assert not re.search(r"claim_holds\s*=\s*True\b", "\n".join(c.source for c in code))


def _links(text: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'(?:href|src)="([^"]+)"', text)


def _markdown_sources() -> list[tuple[Path, str]]:
    out = []
    for rel in _tracked() or [str(p.relative_to(REPO_ROOT)) for p in REPO_ROOT.glob("**/*.md")]:
        p = REPO_ROOT / rel
        if p.suffix == ".md" and p.exists():
            out.append((p, p.read_text()))
        elif p.suffix == ".ipynb" and p.exists():
            nb = nbformat.read(p, as_version=4)
            out.append((p, "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")))
    return out


def test_relative_links_resolve():
    pdfs = {(REPO_ROOT / p.topic / p.pdf).resolve() for p in papers.load_papers()}
    # The README's story may link a planned topic's notebook ahead of it; it resolves when the topic lands.
    planned = {(REPO_ROOT / t[0] / "notes.ipynb").resolve() for t in TOPICS if t not in EXISTING}
    broken = []
    for path, text in _markdown_sources():
        for link in _links(text):
            if re.match(r"^(https?:|mailto:|#|data:|attachment:)", link):
                continue
            target = (path.parent / link.split("#")[0]).resolve()
            if path.name == "README.md" and target in planned:
                continue
            if not target.exists() and target not in pdfs:  # PDFs are fetched by `make papers`
                broken.append(f"{path.relative_to(REPO_ROOT)} -> {link}")
    assert not broken, "broken relative links:\n" + "\n".join(broken)


def test_readme_scoreboard_and_index_are_current():
    readme = REPO_ROOT / "README.md"
    assert render_readme(readme.read_text()) == readme.read_text(), "README is stale: run `make scoreboard`"


def test_readme_quick_start_is_two_commands():
    text = (REPO_ROOT / "README.md").read_text()
    assert "make run" in text and "make test" in text


def test_no_dataset_files_committed():
    tracked = _tracked()
    bad = [f for f in tracked if f.startswith("data/") or re.search(r"(idx\d-ubyte|\.gz$|\.zip$|\.tar$|\.pdf$)", f)]
    assert not bad, f"dataset or paper files must not be committed: {bad}"
    big = [f for f in tracked if (REPO_ROOT / f).exists() and (REPO_ROOT / f).stat().st_size > 5_000_000]
    assert not big, f"files over 5 MB committed: {big}"


def _public_defs(path: Path):
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            yield node
            if isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, ast.FunctionDef) and not sub.name.startswith("_"):
                        yield sub


def test_every_public_function_has_a_docstring():
    files = list((REPO_ROOT / "common").glob("*.py")) + [topic_dir(t[0]) / f"{t[1]}.py" for t in EXISTING]
    missing = [f"{f.relative_to(REPO_ROOT)}:{n.lineno} {n.name}" for f in files for n in _public_defs(f)
               if not ast.get_docstring(n)]
    assert not missing, "public functions without a docstring:\n" + "\n".join(missing)


def test_common_exports_are_documented():
    for name in common.__all__:
        obj = getattr(common, name)
        assert inspect.getdoc(obj), f"common.{name} has no docstring"
