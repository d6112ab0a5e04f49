"""papers.toml is complete and valid; PDF fetching works against a local server (never the network)."""

from __future__ import annotations

import pytest

from common import papers
from common.topics import TOPICS


def test_papers_toml_covers_every_topic():
    entries = papers.load_papers()
    assert len(entries) >= 45
    assert {p.topic for p in entries} == {t[0] for t in TOPICS}
    assert len({(p.topic, p.pdf) for p in entries}) == len(entries)  # no file name used twice in a folder
    assert all(p.url.startswith("http") and p.pdf_url.startswith("http") and 1950 < p.year < 2030 for p in entries)


def test_load_papers_rejects_bad_entries(tmp_path):
    bad = tmp_path / "papers.toml"
    bad.write_text('[[paper]]\ntopic = "01-deep-neural-networks/01-dnn"\ntitle = "x"\n')
    with pytest.raises(ValueError, match="lacks"):
        papers.load_papers(bad)
    bad.write_text('[[paper]]\ntopic = "99-nope/01-x"\ntitle = "x"\nauthors = "a"\nyear = 2000\n'
                   'url = "http://x"\npdf_url = "http://x"\npdf = "x.pdf"\n')
    with pytest.raises(ValueError, match="unknown topic"):
        papers.load_papers(bad)


def _paper(base, path, pdf):
    return papers.Paper("01-deep-neural-networks/01-dnn", "T", "A", 2000, base + "/landing", base + path, pdf)


def test_fetch_pdf_html_and_404(http_server, tmp_path, capsys):
    base, routes = http_server
    routes["/ok.pdf"] = (200, b"%PDF-1.4\n" + b"x" * 100_000)
    routes["/landing.pdf"] = (200, b"<html>please log in</html>")
    items = [_paper(base, "/ok.pdf", "ok.pdf"), _paper(base, "/landing.pdf", "html.pdf"),
             _paper(base, "/missing.pdf", "missing.pdf")]
    (tmp_path / "01-deep-neural-networks" / "01-dnn").mkdir(parents=True)
    failures = papers.fetch_all(items, root=tmp_path)
    out = capsys.readouterr().out
    folder = tmp_path / "01-deep-neural-networks" / "01-dnn"
    assert failures == 2
    assert papers.is_pdf(folder / "ok.pdf")
    assert not (folder / "html.pdf").exists() and not (folder / "missing.pdf").exists()
    assert not list(folder.glob("*.part"))
    assert "not a PDF" in out and "404" in out and "2 paper(s) could not be fetched" in out
    assert papers.fetch_pdf(items[0], root=tmp_path) == "present"  # skipped the second time


def test_fetch_all_skips_planned_topics(tmp_path, capsys):
    item = papers.Paper("05-image-generation/05-dall-e", "T", "A", 2021, "http://127.0.0.1:9/", "http://127.0.0.1:9/x.pdf",
                        "x.pdf")
    assert papers.fetch_all([item], root=tmp_path) == 0
    assert not (tmp_path / "05-image-generation").exists()
