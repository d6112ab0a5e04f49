"""The papers of every topic (``papers.toml``) and fetching their PDFs into the topic folders."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import tomllib

from .runtime import REPO_ROOT
from .topics import TOPICS

PAPERS_TOML = REPO_ROOT / "papers.toml"
_FIELDS = ("topic", "title", "authors", "year", "url", "pdf_url", "pdf")


@dataclass(frozen=True)
class Paper:
    """One paper: its topic folder, citation fields, landing page, PDF URL and local file name."""

    topic: str
    title: str
    authors: str
    year: int
    url: str
    pdf_url: str
    pdf: str


def load_papers(path: Path = PAPERS_TOML) -> list[Paper]:
    """Read and validate ``papers.toml`` (every field present, known topic, ``.pdf`` file names)."""
    data = tomllib.loads(Path(path).read_text())
    folders = {t[0] for t in TOPICS}
    papers = []
    for i, entry in enumerate(data.get("paper", [])):
        missing = [f for f in _FIELDS if f not in entry]
        if missing:
            raise ValueError(f"{path}: paper #{i + 1} ({entry.get('title', '?')}) lacks {missing}")
        if entry["topic"] not in folders:
            raise ValueError(f"{path}: paper {entry['title']!r} names unknown topic {entry['topic']!r}")
        if not entry["pdf"].endswith(".pdf") or "/" in entry["pdf"]:
            raise ValueError(f"{path}: pdf must be a bare file name ending in .pdf, got {entry['pdf']!r}")
        papers.append(Paper(**{f: entry[f] for f in _FIELDS}))
    return papers


def is_pdf(path: Path) -> bool:
    """Whether a file starts with the ``%PDF`` magic bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(5).startswith(b"%PDF")
    except OSError:
        return False


def fetch_pdf(paper: Paper, root: Path = REPO_ROOT, timeout: float = 60.0) -> str:
    """Download one paper's PDF into its topic folder; return ``"present"`` or ``"fetched"``.

    Raises ``RuntimeError`` with the reason when the download fails or is not a PDF (an HTML
    landing page, say); nothing is left behind then.
    """
    from .progress import progress

    dest = root / paper.topic / paper.pdf
    if dest.exists() and is_pdf(dest):
        return "present"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        req = urllib.request.Request(paper.pdf_url, headers={"User-Agent": "Mozilla/5.0 (dl-history)"})
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            first = resp.read(1 << 16)
            if not first.startswith(b"%PDF"):
                raise RuntimeError(f"response is not a PDF (starts with {first[:15]!r})")
            with progress(total=total, unit="B", unit_scale=True, desc=paper.pdf, leave=False) as bar:
                out.write(first)
                bar.update(len(first))
                while block := resp.read(1 << 16):
                    out.write(block)
                    bar.update(len(block))
        os.replace(tmp, dest)
        return "fetched"
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise RuntimeError(f"{paper.pdf_url}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def fetch_all(papers: list[Paper] | None = None, root: Path = REPO_ROOT, only_existing: bool = True) -> int:
    """Fetch every paper's PDF; print a line each and the failures at the end; return the failure count.

    With ``only_existing`` (the default) papers of planned topics whose folder does not exist yet
    are skipped.
    """
    papers = load_papers() if papers is None else papers
    failures = []
    for p in papers:
        if only_existing and not (root / p.topic).is_dir():
            continue
        try:
            status = fetch_pdf(p, root)
            print(f"{status:8s} {p.topic}/{p.pdf}")
        except RuntimeError as exc:
            failures.append((p, str(exc)))
            print(f"FAILED   {p.topic}/{p.pdf}")
    if failures:
        print(f"\n{len(failures)} paper(s) could not be fetched:")
        for p, why in failures:
            print(f"  {p.topic}/{p.pdf}: {why}\n    get it by hand from {p.url}")
    return len(failures)
