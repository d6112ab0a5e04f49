"""The static site (common.site) and its browser check (scripts/browser_check.py).

The tests marked ``site`` build the whole site once (about 20 s) and follow every internal link;
they need the ``site`` extra and are run by ``make site-test`` (CI does), not by ``make test``.
The others are quick unit tests of the pieces and run everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import urllib.request
from pathlib import Path

import pytest

from common import papers, site
from common.runtime import REPO_ROOT
from common.topics import SECTIONS, TOPICS

_spec = importlib.util.spec_from_file_location("browser_check", REPO_ROOT / "scripts" / "browser_check.py")
browser_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(browser_check)


def _has_site_extra() -> bool:
    return importlib.util.find_spec("jupyter_server_mathjax") is not None


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not _has_site_extra():
        pytest.skip(site.INSTALL_HINT)
    out = tmp_path_factory.mktemp("site") / "site"
    return site.build(out)


# --- quick unit tests -----------------------------------------------------------------------

def test_github_slug_matches_githubs_anchors():
    assert site.github_slug("Scoreboard") == "scoreboard"
    assert site.github_slug("What came next") == "what-came-next"
    assert site.github_slug("The idea: (backprop) 1986!") == "the-idea-backprop-1986"


def test_site_path_maps_repository_paths_to_pages():
    dnn = "01-deep-neural-networks/01-dnn"
    assert site.site_path("README.md") == "index.html"
    assert site.site_path(f"{dnn}/notes.ipynb") == f"{dnn}/notes.html"
    assert site.site_path(f"{dnn}/dnn.py") == f"{dnn}/dnn.py.html"
    assert site.site_path(dnn) == f"{dnn}/notes.html"
    assert site.site_path("01-deep-neural-networks") == "01-deep-neural-networks/index.html"
    assert site.site_path(f"{dnn}/results.json") == f"{dnn}/results.json"
    assert site.site_path("common") == "common/index.html"


def test_write_redirect_sends_a_folder_url_to_its_notes(tmp_path):
    page = tmp_path / "01-dnn" / "index.html"
    site.write_redirect(page, "notes.html", "Backpropagation <1986>")
    text = page.read_text()
    assert '<meta http-equiv="refresh" content="0; url=notes.html">' in text and 'href="notes.html"' in text
    assert "Backpropagation &lt;1986&gt;" in text
    for bad in ["", "https://example.org/", "/abs/notes.html"]:
        with pytest.raises(ValueError):
            site.write_redirect(page, bad, "x")


def test_relative_url_between_pages():
    assert site.relative_url("a/b/notes.html", "a/c/notes.html") == "../b/notes.html"
    assert site.relative_url("index.html", "a/b/notes.html") == "../../index.html"
    assert site.relative_url("a/x.html", "index.html") == "a/x.html"


def test_present_topics_follows_the_folders(tmp_path):
    first, second = TOPICS[0][0], TOPICS[-1][0]
    for folder in (first, second):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "notes.ipynb").write_text("{}")
    assert [t[0] for t in site.present_topics(tmp_path)] == [first, second]
    assert len(site.present_topics(REPO_ROOT)) >= 29


def test_mathjax_dir_says_how_to_install_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "jupyter_server_mathjax", None)  # import fails as if not installed
    with pytest.raises(site.SiteError, match="make site"):
        site.mathjax_dir()


def test_build_refuses_a_folder_it_did_not_make(tmp_path):
    if not _has_site_extra():
        pytest.skip(site.INSTALL_HINT)
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(site.SiteError, match="not a site"):
        site.build(tmp_path)
    assert (tmp_path / "precious.txt").exists()


def test_check_site_finds_broken_links_and_remote_assets(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "page.html").write_text(
        '<html><body><h1 id="top">t</h1><a href="../index.html">home</a><a href="#top">top</a>'
        '<a href="missing.html">x</a><a href="../index.html#nowhere">y</a>'
        '<script src="https://cdn.example.org/x.js"></script><a href="https://example.org">ok</a></body></html>')
    (tmp_path / "index.html").write_text('<html><body><a href="a/page.html#top">p</a></body></html>')
    problems = site.check_site(tmp_path)
    assert len(problems) == 3, problems
    assert any("missing.html does not resolve" in p for p in problems)
    assert any("no anchor #nowhere" in p for p in problems)
    assert any("cdn.example.org" in p for p in problems)


def test_main_reports_problems_in_its_exit_code(monkeypatch, tmp_path, capsys):
    (tmp_path / "index.html").write_text('<html><body><a href="gone.html">x</a></body></html>')
    monkeypatch.setattr(site, "build", lambda out: site.BuildReport(out=tmp_path, pages=["index.html"]))
    assert site.main(["--out", str(tmp_path)]) == 1
    assert "gone.html does not resolve" in capsys.readouterr().err
    (tmp_path / "index.html").write_text("<html><body>fine</body></html>")
    assert site.main(["--out", str(tmp_path)]) == 0


def test_browser_check_serves_the_site_locally_and_stops(tmp_path):
    (tmp_path / "index.html").write_text("hello")
    with browser_check.serve(tmp_path) as base:
        assert base.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(base + "index.html", timeout=10) as r:
            assert r.read() == b"hello"
    with pytest.raises(OSError):
        urllib.request.urlopen(base + "index.html", timeout=2)


def test_browser_check_lists_pages_without_mathjax(tmp_path):
    for rel in ("index.html", "a/notes.html", "static/mathjax/x.html", "static/site.css"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    assert browser_check.site_pages(tmp_path) == ["a/notes.html", "index.html"]


def test_browser_check_summarize_counts_each_category():
    counts = browser_check.summarize({"a.html": [("math", "x"), ("console", "y")], "b.html": [("math", "z")]})
    assert counts["math"] == 2 and counts["console"] == 1 and counts["image"] == 0


def test_browser_check_ensure_chromium_skips_apt_when_installed(monkeypatch, tmp_path):
    for name in ("chromium", "chromedriver"):
        (tmp_path / name).write_text("")
    monkeypatch.setattr(browser_check, "CHROMIUM", str(tmp_path / "chromium"))
    monkeypatch.setattr(browser_check, "CHROMEDRIVER", str(tmp_path / "chromedriver"))
    monkeypatch.setattr(browser_check.subprocess, "run", lambda *a, **k: pytest.fail("apt-get was called"))
    browser_check.ensure_chromium()


class _FakeDriver:
    """Stands in for selenium's driver: one page with a broken image, raw TeX and a console error."""

    def get(self, url):
        self.url = url

    def execute_script(self, script):
        if "getAttribute('data-math')" in script and "images" not in script:
            return "done"
        return {"images": ["x.png"], "errors": 0, "rendered": 3, "raw": ["$x$"], "math": "done"}

    def get_log(self, kind):
        if kind == "browser":
            return [{"level": "SEVERE", "message": "boom"}, {"level": "INFO", "message": "fine"}]
        sent = {"method": "Network.requestWillBeSent", "params": {"requestId": "1", "request": {"url": "https://cdn.x/y.js"}}}
        return [{"message": json.dumps({"message": sent})}]


def test_browser_check_check_page_sorts_problems_by_category():
    stats = browser_check.Counter()
    problems = browser_check.check_page(_FakeDriver(), "http://127.0.0.1:1/", "index.html", stats=stats)
    assert sorted(c for c, _ in problems) == ["console", "image", "math", "request"]
    assert stats["math"] == 3


def test_browser_check_main_needs_a_built_site(tmp_path, capsys):
    assert browser_check.main([str(tmp_path)]) == 2
    assert "make site" in capsys.readouterr().err


@pytest.mark.site
def test_browser_check_run_in_chromium(built):
    if not Path(browser_check.CHROMIUM).exists() or importlib.util.find_spec("selenium") is None:
        pytest.skip("needs Debian's chromium and the site-check extra: `make site-check`")
    findings = browser_check.run(built.out, limit=2)
    assert len(findings) >= 2


@pytest.mark.site
def test_build_picks_up_whatever_topics_exist(tmp_path):
    """A repository with only CLIP (one of the topics still being written) builds, links and navigates."""
    import nbformat

    if not _has_site_extra():
        pytest.skip(site.INSTALL_HINT)
    root, clip = tmp_path / "repo", "05-image-generation/04-clip"
    (root / clip).mkdir(parents=True)
    start, end = site.SCOREBOARD_MARKERS
    (root / "README.md").write_text(f"# Fake\n\n[CLIP]({clip}/notes.ipynb), [code]({clip}/clip.py)\n\n"
                                    f"## Scoreboard\n\n{start}\n| Topic |\n|---|\n| [CLIP]({clip}/notes.ipynb) |\n{end}\n")
    (root / "papers.toml").write_text((REPO_ROOT / "papers.toml").read_text())
    (root / clip / "clip.py").write_text('"""CLIP."""\n')
    (root / clip / "results.json").write_text("{}")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# CLIP\n\nLoss $\\mathcal{L}$; [paper](./radford-2021-clip.pdf), "
                                              "[back](../../README.md#scoreboard), [self](../04-clip/)")]
    nbformat.write(nb, root / clip / "notes.ipynb")
    out = tmp_path / "site"
    report = site.build(out, root=root)
    assert not report.broken + site.check_site(out)
    page = (out / clip / "notes.html").read_text()
    assert "https://arxiv.org/pdf/2103.00020" in page and 'href="../../index.html#scoreboard"' in page
    assert f'href="{clip}/notes.html"' in (out / "index.html").read_text()
    assert "(2021, planned)" in page  # DALL-E, not there yet, is listed but not linked
    assert (out / clip / "clip.py.html").exists() and (out / clip / "results.json").exists()


# --- the built site ---------------------------------------------------------------------------

@pytest.mark.site
def test_every_expected_page_exists(built):
    out = built.out
    expected = ["index.html", "scoreboard.html", "search.html", "static/search-index.js", "static/mathjax/MathJax.js"]
    expected += [f"{key}/index.html" for key in SECTIONS]
    for folder, module, _, _ in site.present_topics():
        expected += [f"{folder}/notes.html", f"{folder}/{module}.py.html", f"{folder}/index.html"]
    missing = [p for p in expected if not (out / p).exists()]
    assert not missing, f"pages missing from the site: {missing}"
    assert 'url=notes.html"' in (out / site.present_topics()[0][0] / "index.html").read_text()  # folder URL -> notes


@pytest.mark.site
def test_every_internal_link_resolves(built):
    problems = built.broken + site.check_site(built.out)
    assert not problems, "\n".join(problems)


@pytest.mark.site
def test_links_written_for_github_are_rewritten(built):
    import lxml.html

    left = []
    for page in built.out.rglob("*.html"):
        if "mathjax" in page.parts:
            continue
        for a in lxml.html.parse(str(page)).getroot().iter("a"):
            href = a.get("href") or ""
            if not site._EXTERNAL.match(href) and href.split("#")[0].endswith((".ipynb", ".py", ".md", ".pdf")):
                left.append(f"{page.relative_to(built.out)}: {href}")
    assert not left, "links the site cannot serve:\n" + "\n".join(left)


@pytest.mark.site
def test_topic_pages_link_their_papers_and_next_topics(built):
    dnn = (built.out / "01-deep-neural-networks/01-dnn/notes.html").read_text()
    for p in papers.load_papers():
        if p.topic == "01-deep-neural-networks/01-dnn":
            assert p.url in dnn and p.pdf_url in dnn
    assert 'href="../02-cnn/notes.html"' in dnn or 'href="../../01-deep-neural-networks/02-cnn/notes.html"' in dnn
    home = (built.out / "index.html").read_text()
    assert 'href="01-deep-neural-networks/01-dnn/notes.html"' in home
    assert 'href="01-deep-neural-networks/01-dnn/dnn.py.html"' in home


@pytest.mark.site
def test_navigation_lists_every_section_and_topic(built):
    page = (built.out / "scoreboard.html").read_text()
    for title in SECTIONS.values():
        assert title in page
    for _, _, name, _ in TOPICS:
        assert name.replace("'", "&#39;") in page or name in page


@pytest.mark.site
def test_search_index_covers_every_page(built):
    text = (built.out / "static/search-index.js").read_text()
    entries = json.loads(text.removeprefix("window.DLH_SEARCH = ").rstrip().rstrip(";"))
    urls = {e["u"].split("#")[0] for e in entries}
    for folder, *_ in site.present_topics():
        assert f"{folder}/notes.html" in urls
    assert "index.html" in urls and "scoreboard.html" in urls
    assert any("backpropagation" in e["t"].lower() for e in entries)
