"""The browsable static site (``make site``): README, every topic's notebook and the scoreboard, offline.

The site is built from the committed files only: notebooks are converted with their committed
outputs (never re-executed), the README and its scoreboard are rendered from Markdown, and
the navigation is generated from :data:`common.topics.SECTIONS` and :data:`common.topics.TOPICS`
for whichever topic folders exist. Nothing is fetched at build time or at view time: math is
rendered by the MathJax 2 that the ``jupyter-server-mathjax`` package ships (copied into
``static/mathjax``), and search is a small script over an index written next to the pages.

The site mirrors the repository's layout, so the relative links written for GitHub keep their
shape: ``README.md`` becomes ``index.html``, ``x/notes.ipynb`` becomes ``x/notes.html``, a module
``x/dnn.py`` becomes the highlighted page ``x/dnn.py.html``, a topic folder link goes to its
notes, a section folder link to the section's page, a local paper PDF (git-ignored, fetched by
``make papers``) to the paper's PDF online, and any other linked file is copied as it is.

Run ``python -m common.site [--out DIR]``; it builds, checks every internal link and exits
non-zero on a problem.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import posixpath
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .papers import PAPERS_TOML, Paper, load_papers
from .results import SCOREBOARD_MARKERS
from .runtime import REPO_ROOT
from .topics import SECTIONS, TOPICS

SITE_DIR = REPO_ROOT / "site"
SITE_TITLE = "Deep learning history"
MARKER = ".dlh-site"  # written into a built site, so a rebuild only ever deletes a folder it made
SKIP_DIRS = {".git", ".venv", "data", "site", "node_modules", "__pycache__"}
_EXTERNAL = re.compile(r"^([a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)  # http:, mailto:, data:, //host ...
_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")

INSTALL_HINT = ("the site needs the 'site' extra: run `make site`, or install it with "
                "`.venv/bin/pip install -e '.[site]' -c constraints.txt`")


class SiteError(RuntimeError):
    """A site build that cannot go on (a missing extra, an output folder that is not a site)."""


@dataclass
class BuildReport:
    """What a build produced: pages written (site paths), files copied, broken links and the seconds taken."""

    out: Path
    pages: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    seconds: float = 0.0


def mathjax_dir() -> Path:
    """The MathJax 2 tree shipped by ``jupyter-server-mathjax``; :class:`SiteError` says how to install it."""
    try:
        import jupyter_server_mathjax
    except ImportError as exc:
        raise SiteError(INSTALL_HINT) from exc
    path = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (path / "MathJax.js").exists():
        raise SiteError(f"jupyter-server-mathjax at {path} has no MathJax.js; {INSTALL_HINT}")
    return path


def github_slug(text: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def present_topics(root: Path = REPO_ROOT) -> list[tuple[str, str, str, int]]:
    """The planned topics (in :data:`TOPICS` order) whose ``notes.ipynb`` exists under ``root``."""
    return [t for t in TOPICS if (root / t[0] / "notes.ipynb").exists()]


def site_path(target: str, root: Path = REPO_ROOT) -> str:
    """The site path (posix, from the site root) that stands for the repository path ``target``.

    ``target`` is a normalised posix path from the repository root ('' or '.' for the root
    itself), which must exist: ``README.md`` -> ``index.html``, ``*.ipynb`` and other ``*.md``
    -> ``*.html``, ``*.py`` -> ``*.py.html``, a topic folder -> its ``notes.html``, any other
    folder -> its ``index.html`` (a section's page, or a listing), anything else keeps its path.
    """
    target = "" if target in ("", ".") else target.strip("/")
    path = root / target
    topics = {t[0] for t in TOPICS}
    if target in SECTIONS:  # a section's page is generated even before its folder exists
        return f"{target}/index.html"
    if path.is_dir():
        if target in topics and (path / "notes.ipynb").exists():
            return f"{target}/notes.html"
        return posixpath.join(target, "index.html")
    if target == "README.md":
        return "index.html"
    stem, ext = posixpath.splitext(target)
    if ext in (".ipynb", ".md"):
        return stem + ".html"
    if ext == ".py":
        return target + ".html"
    return target


def relative_url(to: str, page: str) -> str:
    """The relative URL from the site page ``page`` to the site path ``to`` (both posix, from the root)."""
    return posixpath.relpath(to, posixpath.dirname(page) or ".")


class _Builder:
    """One build: a queue of repository paths to render, and the pages written so far."""

    def __init__(self, out: Path, root: Path):
        from nbconvert import HTMLExporter

        self.out, self.root = out, root
        # The cells' code is highlighted by Pygments from our own files: sanitising that HTML again
        # (nbconvert's clean_html, via bleach) took a third of the build and changes nothing.
        self.exporter = HTMLExporter(template_name="lab", filters={"clean_html": lambda text: text})
        self.papers = load_papers(root / PAPERS_TOML.name) if (root / PAPERS_TOML.name).exists() else []
        self.report = BuildReport(out=out)
        self.queue: list[str] = []
        self.done: set[str] = set()
        self.search: list[dict] = []
        self.notebook_css: str | None = None
        self.titles = {t[0]: t[2] for t in TOPICS}

    # --- converting -------------------------------------------------------------------------
    def notebook_body(self, nb) -> str:
        """HTML of a notebook's cells (lab classes), keeping its stylesheet once for the whole site."""
        doc, _ = self.exporter.from_notebook_node(nb)
        head, _, rest = doc.partition("<main>")
        if self.notebook_css is None:
            self.notebook_css = "\n".join(re.findall(r"<style[^>]*>(.*?)</style>", head, re.DOTALL))
        return rest.rpartition("</main>")[0]

    def markdown_body(self, text: str) -> str:
        """HTML of Markdown text, rendered the way a notebook's Markdown cell is (math kept for MathJax)."""
        import nbformat

        nb = nbformat.v4.new_notebook()
        nb.cells.append(nbformat.v4.new_markdown_cell(text))
        return self.notebook_body(nb)

    def source_body(self, path: Path) -> str:
        """HTML of a source file, highlighted by Pygments."""
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import get_lexer_for_filename
        from pygments.util import ClassNotFound

        text = path.read_text(errors="replace")
        try:
            lexer = get_lexer_for_filename(path.name, text)
        except ClassNotFound:
            from pygments.lexers import TextLexer

            lexer = TextLexer()
        rel = path.relative_to(self.root).as_posix()
        code = highlight(text, lexer, HtmlFormatter(cssclass="highlight source", linenos="inline"))
        return f'<h1 id="{html.escape(github_slug(rel))}">{html.escape(rel)}</h1>\n{code}'

    # --- links ------------------------------------------------------------------------------
    def paper_for(self, folder: str, name: str) -> Paper | None:
        """The paper whose local PDF is ``name`` (in ``folder`` first, else anywhere)."""
        hits = [p for p in self.papers if p.pdf == name]
        return next((p for p in hits if p.topic == folder), hits[0] if hits else None)

    def rewrite_links(self, root_el, source_dir: str, page: str, label: str) -> None:
        """Point every relative ``href``/``src`` under ``root_el`` at the built file, queueing what it needs."""
        for tag in root_el.iter("a", "img", "source"):
            attr = "href" if tag.tag == "a" else "src"
            link = (tag.get(attr) or "").strip()
            if not link or link.startswith("#") or _EXTERNAL.match(link):
                continue
            parts = urlsplit(link)
            target = posixpath.normpath(posixpath.join(source_dir, unquote(parts.path)))
            frag = f"#{parts.fragment}" if parts.fragment else ""
            if target.startswith("..") or target.split("/")[0] in SKIP_DIRS:
                self.report.broken.append(f"{label}: {link} (outside the site)")
                continue
            if target.endswith(".pdf"):
                paper = self.paper_for(posixpath.dirname(target), posixpath.basename(target))
                if paper is not None:
                    tag.set(attr, paper.pdf_url)
                    continue
            if not (self.root / target).exists():
                self.report.broken.append(f"{label}: {link} (no {target} in the repository)")
                continue
            self.enqueue(target)
            tag.set(attr, relative_url(site_path(target, self.root), page) + frag)

    def enqueue(self, target: str) -> None:
        """Schedule the repository path ``target`` to be rendered or copied (once)."""
        if target not in self.done:
            self.done.add(target)
            self.queue.append(target)

    # --- pages ------------------------------------------------------------------------------
    def nav(self, page: str) -> str:
        """The navigation: home, scoreboard, search, then each section with its planned topics."""
        def link(to: str, text: str) -> str:
            cls = ' class="current"' if to == page else ""
            return f'<a href="{relative_url(to, page)}"{cls}>{html.escape(text)}</a>'

        items = [f"<li>{link('index.html', 'Home')}</li>", f"<li>{link('scoreboard.html', 'Scoreboard')}</li>",
                 f"<li>{link('search.html', 'Search')}</li>"]
        for key, title in SECTIONS.items():
            topics = []
            for folder, _, name, year in TOPICS:
                if not folder.startswith(key + "/"):
                    continue
                if (self.root / folder / "notes.ipynb").exists():
                    topics.append(f"<li>{link(f'{folder}/notes.html', f'{name} ({year})')}</li>")
                else:
                    topics.append(f'<li class="planned">{html.escape(name)} ({year}, planned)</li>')
            items.append(f'<li class="section">{link(f"{key}/index.html", title)}<ul>{"".join(topics)}</ul></li>')
        return f'<ul class="nav">{"".join(items)}</ul>'

    def write_page(self, page: str, title: str, body: str, source_dir: str, label: str, index: bool = True) -> None:
        """Wrap ``body`` in the site's layout, fix its links and heading anchors, index it, write it."""
        root_el = _parse(body)
        _github_anchors(root_el)
        self.rewrite_links(root_el, source_dir, page, label)
        if index:
            self.search.extend(_search_entries(root_el, page, title))
        rel = relative_url("static", page) + "/"
        doc = PAGE.format(title=html.escape(title), site=html.escape(SITE_TITLE), static=rel,
                          home=relative_url("index.html", page), search=relative_url("search.html", page),
                          nav=self.nav(page), body=_serialize(root_el), mathjax=MATHJAX_CONFIG)
        dest = self.out / page
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(doc)
        self.report.pages.append(page)

    def topic_header(self, folder: str, page: str) -> str:
        """A box above a topic's notes: its papers (online and PDF), its module and its results."""
        rows = []
        for p in self.papers:
            if p.topic == folder:
                rows.append(f'<li><a href="{html.escape(p.url)}">{html.escape(p.title)}</a> '
                            f'({html.escape(p.authors)}, {p.year}) · <a href="{html.escape(p.pdf_url)}">PDF</a></li>')
        files = []
        module = next((t[1] for t in TOPICS if t[0] == folder), None)
        for name in (f"{module}.py", "results.json"):
            if (self.root / folder / name).exists():
                files.append(f'<a href="{name}">{name}</a>')
        papers = f"<ul>{''.join(rows)}</ul>" if rows else ""
        return (f'<div class="topic-box"><strong>Papers</strong>{papers}'
                f'<p><strong>Code and results</strong>: {" · ".join(files)}</p></div>')

    def render(self, target: str) -> None:
        """Render or copy one queued repository path."""
        import nbformat

        path = self.root / target
        page = site_path(target, self.root)
        source_dir = posixpath.dirname(target) if not path.is_dir() else target
        if target in SECTIONS:
            self.section_page(target)
        elif path.is_dir():
            if target in {t[0] for t in TOPICS}:
                self.enqueue(f"{target}/notes.ipynb")
            else:
                self.listing_page(target)
        elif target == "README.md":
            self.write_page(page, SITE_TITLE, self.markdown_body(path.read_text()), "", target)
        elif path.suffix == ".ipynb":
            nb = nbformat.read(path, as_version=4)
            title = _first_heading(nb) or target
            body = self.notebook_body(nb)
            if posixpath.dirname(target) in {t[0] for t in TOPICS}:
                body = self.topic_header(posixpath.dirname(target), page) + body
            self.write_page(page, title, body, source_dir, target)
        elif path.suffix == ".md":
            self.write_page(page, target, self.markdown_body(path.read_text()), source_dir, target)
        elif path.suffix == ".py":
            self.write_page(page, target, self.source_body(path), source_dir, target)
        else:
            dest = self.out / page
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            self.report.copied.append(page)

    def section_page(self, key: str) -> None:
        """A section's page: its topics in order, each with its year and papers; planned ones marked."""
        page = f"{key}/index.html"
        parts = [f'<h1 id="{github_slug(SECTIONS[key])}">{html.escape(SECTIONS[key])}</h1><ul class="topics">']
        for folder, _, name, year in TOPICS:
            if not folder.startswith(key + "/"):
                continue
            papers = "; ".join(f'<a href="{html.escape(p.url)}">{html.escape(p.title)}</a> ({p.year})'
                               for p in self.papers if p.topic == folder)
            if (self.root / folder / "notes.ipynb").exists():
                head = f'<a href="{posixpath.basename(folder)}/notes.ipynb">{html.escape(name)}</a> ({year})'
            else:
                head = f"{html.escape(name)} ({year}, planned)"
            parts.append(f"<li>{head}<br><small>{papers}</small></li>")
        parts.append("</ul>")
        self.write_page(page, SECTIONS[key], "".join(parts), key, page)

    def listing_page(self, target: str) -> None:
        """A plain listing of a linked folder that is neither a section nor a topic."""
        page = site_path(target, self.root)
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in (self.root / target).iterdir()
                       if not p.name.startswith(".") and p.name not in SKIP_DIRS and not p.name.endswith(".pyc"))
        items = "".join(f'<li><a href="{html.escape(n)}">{html.escape(n)}</a></li>' for n in names)
        self.write_page(page, target or SITE_TITLE, f"<h1>{html.escape(target)}/</h1><ul>{items}</ul>", target, page)

    def scoreboard_page(self) -> None:
        """The scoreboard: the README's table between the scoreboard markers, on a page of its own."""
        text = (self.root / "README.md").read_text() if (self.root / "README.md").exists() else ""
        start, end = SCOREBOARD_MARKERS
        table = text.split(start, 1)[1].split(end, 1)[0] if start in text and end in text else "(no scoreboard yet)"
        md = ("# Scoreboard\n\nEach topic's headline claim, measured at the scale shown (from its `results.json`; "
              "the same table as in the [README](README.md#scoreboard)).\n\n" + table.strip() + "\n")
        self.write_page("scoreboard.html", "Scoreboard", self.markdown_body(md), "", "scoreboard")

    def search_page(self) -> None:
        """The search page and its index (a script, so it also works opened from disk)."""
        body = ('<h1 id="search">Search</h1><form class="big-search" action="search.html">'
                '<input type="search" name="q" placeholder="Words to find" aria-label="Search"></form>'
                '<div id="search-results"></div><script src="static/search-index.js"></script>'
                '<script src="static/search.js"></script>')
        self.write_page("search.html", "Search", body, "", "search", index=False)


def _first_heading(nb) -> str | None:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", cell.source, re.MULTILINE)
            if m:
                return re.sub(r"[*_`]", "", m.group(1)).strip()
    return None


def _parse(body: str):
    """An lxml element (a ``div``) holding the HTML fragment ``body``."""
    import lxml.html

    parser = lxml.html.HTMLParser(huge_tree=True, encoding="utf-8")
    return lxml.html.fragment_fromstring(body.encode(), create_parent="div", parser=parser)


def _serialize(root_el) -> str:
    """The HTML inside the wrapper ``div`` made by :func:`_parse`."""
    import lxml.html

    inner = (html.escape(root_el.text) if root_el.text else "")
    return inner + "".join(lxml.html.tostring(child, encoding="unicode") for child in root_el)


def _text(el) -> str:
    return "".join(el.itertext())


def _github_anchors(root_el) -> None:
    """Give headings GitHub's anchors (so ``#scoreboard`` works on GitHub and here) and fix their ¶ links."""
    seen: dict[str, int] = {}
    for h in root_el.iter(*_HEADINGS):
        anchor = next((a for a in h.iter("a") if "anchor-link" in (a.get("class") or "")), None)
        text = _text(h).removesuffix(_text(anchor)) if anchor is not None else _text(h)
        slug = github_slug(text) or "section"
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        h.set("id", slug if n == 0 else f"{slug}-{n}")
        if anchor is not None:
            anchor.set("href", "#" + h.get("id"))


def _search_entries(root_el, page: str, title: str) -> list[dict]:
    """One search entry per heading of a page: page title, heading, URL with anchor, and its text."""
    entries = [{"p": title, "h": "", "u": page, "t": []}]
    skip = {"script", "style"}
    for el in root_el.iter():
        if not isinstance(el.tag, str):  # comments
            if el.tail:
                entries[-1]["t"].append(el.tail)
            continue
        if el.tag in _HEADINGS and el.get("id"):
            entries.append({"p": title, "h": _text(el).rstrip("¶").strip(), "u": f"{page}#{el.get('id')}", "t": []})
        elif el.text and el.tag not in skip and not any(p.tag in _HEADINGS for p in el.iterancestors()):
            entries[-1]["t"].append(el.text)
        if el.tail and el.getparent() is not None and el.getparent().tag not in _HEADINGS:
            entries[-1]["t"].append(el.tail)
    out = []
    for e in entries:
        text = re.sub(r"\s+", " ", " ".join(e["t"])).strip()
        if text or e["h"]:
            out.append({**e, "t": text[:20000]})
    return out


def write_redirect(path: Path, to: str, title: str) -> None:
    """Write ``path`` as a small page that sends the browser on to the relative URL ``to`` (a typed topic-folder
    URL such as ``.../01-dnn/`` lands on its notes; every link in the site names the notes page itself)."""
    if not to or _EXTERNAL.match(to) or to.startswith("/"):
        raise ValueError(f"a redirect goes to a relative URL inside the site, got {to!r}")
    url, text = html.escape(to, quote=True), html.escape(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{text}</title>'
                    f'<meta http-equiv="refresh" content="0; url={url}"><link rel="canonical" href="{url}">'
                    f'<link rel="icon" href="data:,"></head>'
                    f'<body><p><a href="{url}">{text}</a></p></body></html>\n')


def build(out: Path = SITE_DIR, root: Path = REPO_ROOT) -> BuildReport:
    """Build the whole site from ``root`` into ``out`` and return what was written.

    ``out`` is emptied first, but only if it is empty or a site built here before (it holds
    the marker file), so a wrong ``--out`` cannot delete anything else.
    """
    t0 = time.perf_counter()
    out, root = Path(out), Path(root)
    mathjax = mathjax_dir()
    if out.exists():
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise SiteError(f"{out} exists and is not a site built by common.site; choose an empty folder")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("built by python -m common.site\n")
    b = _Builder(out, root)
    b.enqueue("README.md")
    for key in SECTIONS:  # every section has a page (the navigation links them all)
        b.enqueue(key)
    for folder, module, name, _ in present_topics(root):
        write_redirect(out / folder / "index.html", "notes.html", name)  # a typed folder URL lands on the notes
        for nb in sorted((root / folder).glob("*.ipynb")):
            b.enqueue(nb.relative_to(root).as_posix())
        if (root / folder / f"{module}.py").exists():
            b.enqueue(f"{folder}/{module}.py")
    while b.queue:
        b.render(b.queue.pop(0))
    b.scoreboard_page()
    b.search_page()
    static = out / "static"
    shutil.copytree(mathjax, static / "mathjax", ignore=shutil.ignore_patterns("*.md", "LICENSE"))
    (static / "notebook.css").write_text(b.notebook_css or "")
    (static / "site.css").write_text(SITE_CSS + _pygments_css())
    (static / "search.js").write_text(SEARCH_JS)
    (static / "search-index.js").write_text("window.DLH_SEARCH = " + json.dumps(b.search, ensure_ascii=False) + ";\n")
    b.report.seconds = time.perf_counter() - t0
    return b.report


def _pygments_css() -> str:
    from pygments.formatters import HtmlFormatter

    return HtmlFormatter(style="default").get_style_defs(".source")


def check_site(out: Path) -> list[str]:
    """Every problem with the built site ``out``: internal links and assets that do not resolve.

    Looks at ``href``/``src`` of ``a``, ``link``, ``script``, ``img`` and ``source`` in every
    HTML file: relative ones must name a built file (and, for ``#anchor`` on an HTML page, an
    element with that id); scripts, stylesheets and images must never come from another host.
    """
    import lxml.html

    out = Path(out)
    problems: list[str] = []
    parsed: dict[Path, object] = {}
    ids: dict[Path, set[str]] = {}

    def doc_of(path: Path):
        if path not in parsed:
            parser = lxml.html.HTMLParser(huge_tree=True, encoding="utf-8")
            parsed[path] = lxml.html.document_fromstring(path.read_bytes(), parser=parser)
        return parsed[path]

    for page in sorted(out.rglob("*.html")):
        if "mathjax" in page.relative_to(out).parts:
            continue
        rel = page.relative_to(out).as_posix()
        for tag in doc_of(page).iter("a", "link", "script", "img", "source"):
            attr = "href" if tag.tag in ("a", "link") else "src"
            link = (tag.get(attr) or "").strip()
            if not link or link.startswith("data:"):
                continue
            if _EXTERNAL.match(link):
                if tag.tag != "a":
                    problems.append(f"{rel}: <{tag.tag}> loads {link} from outside the site")
                continue
            parts = urlsplit(link)
            target = page if not parts.path else (page.parent / unquote(parts.path))
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                problems.append(f"{rel}: {link} does not resolve")
            elif parts.fragment and target.suffix == ".html":
                if target not in ids:
                    ids[target] = {e.get("id") for e in doc_of(target).iter() if isinstance(e.tag, str) and e.get("id")}
                if unquote(parts.fragment) not in ids[target]:
                    problems.append(f"{rel}: {link} has no anchor #{parts.fragment}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Command line: build the site (default ``site/``), check its links, print a summary; 1 on problems."""
    ap = argparse.ArgumentParser(prog="python -m common.site", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=SITE_DIR, help="output folder (default: site/)")
    args = ap.parse_args(argv)
    try:
        report = build(args.out)
    except SiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problems = report.broken + check_site(report.out)
    print(f"built {len(report.pages)} pages and copied {len(report.copied)} files into {report.out} "
          f"in {report.seconds:.1f} s")
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    if not problems:
        print(f"all internal links resolve; open {os.path.relpath(report.out / 'index.html')} or serve the folder")
    return 1 if problems else 0


MATHJAX_CONFIG = r"""MathJax.Hub.Config({
  TeX: {extensions: ["AMSmath.js", "AMSsymbols.js", "noErrors.js", "noUndefined.js"]},
  tex2jax: {inlineMath: [["$", "$"], ["\\(", "\\)"]], displayMath: [["$$", "$$"], ["\\[", "\\]"]],
            processEscapes: true, processEnvironments: true},
  // The STIX-Web fonts are the ones jupyter-server-mathjax ships; no locally installed or image fonts.
  // MathJax_Blank is MathJax's font-loading probe: its default source, url(about:blank), is a request
  // Chrome refuses with a console error, while a missing local() font fails the same way silently.
  "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null,
               styles: {"@font-face": {"font-family": "MathJax_Blank", src: "local('MathJax_Blank')"}}},
  // The hidden MathML copy for screen readers asks Chrome for MathJax's TeX fonts, which are not shipped.
  menuSettings: {assistiveMML: false},
  messageStyle: "none"
});
MathJax.Hub.Queue(function () { document.documentElement.setAttribute("data-math", "done"); });"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title} · {site}</title>
<link rel="stylesheet" href="{static}notebook.css">
<link rel="stylesheet" href="{static}site.css">
<script type="text/x-mathjax-config">
{mathjax}
</script>
<script src="{static}mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"></script>
</head>
<body>
<header class="site-header"><a class="site-title" href="{home}">{site}</a>
<form class="site-search" action="{search}"><input type="search" name="q" placeholder="Search the notes"
 aria-label="Search"></form></header>
<div class="site-layout">
<nav class="site-nav">{nav}</nav>
<main class="site-main jp-Notebook" data-jp-theme-light="true">
{body}
</main>
</div>
</body>
</html>
"""

SITE_CSS = """
body { margin: 0; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
.site-header { display: flex; align-items: center; gap: 1em; padding: .5em 1em; background: #263238; }
.site-title { color: #fff; font-weight: bold; text-decoration: none; font-size: 1.1em; }
.site-search { margin-left: auto; }
.site-search input { padding: .3em .5em; width: 16em; }
.site-layout { display: flex; align-items: flex-start; }
.site-nav { flex: 0 0 17em; position: sticky; top: 0; max-height: 100vh; overflow-y: auto; padding: 1em;
            box-sizing: border-box; font-size: 14px; border-right: 1px solid #ddd; }
.site-nav ul { list-style: none; padding-left: 0; margin: 0; }
.site-nav ul ul { padding-left: 1em; margin-bottom: .6em; }
.site-nav li { margin: .15em 0; }
.site-nav .section > a { font-weight: bold; }
.site-nav a { text-decoration: none; color: #1565c0; }
.site-nav a.current { color: #000; font-weight: bold; }
.site-nav .planned { color: #999; }
.site-main { flex: 1 1 auto; min-width: 0; padding: 1em 2em; max-width: 70em; }
.jp-RenderedMarkdown pre { background: #f5f5f5; padding: .5em .8em; overflow-x: auto; }
.topic-box { border: 1px solid #ddd; background: #f7f9fb; padding: .5em 1em; margin-bottom: 1em; font-size: 14px; }
.topic-box ul { margin: .3em 0; }
.source pre { font-size: 13px; line-height: 1.35; overflow-x: auto; }
.big-search input { font-size: 1.1em; padding: .4em; width: 100%; max-width: 30em; }
#search-results li { margin-bottom: .8em; }
#search-results .snippet { color: #444; font-size: 14px; }
@media (max-width: 800px) { .site-layout { display: block; } .site-nav { position: static; max-height: none;
  border-right: none; } }
"""

SEARCH_JS = r"""// Full-text search over window.DLH_SEARCH (written by common.site): every word must occur.
(function () {
  var box = document.getElementById("search-results");
  if (!box || !window.DLH_SEARCH) return;
  var q = (new URLSearchParams(location.search).get("q") || "").trim();
  document.querySelectorAll('input[name="q"]').forEach(function (i) { i.value = q; });
  if (!q) { box.textContent = "Type words to find in the notes, the README and the code."; return; }
  var terms = q.toLowerCase().split(/\s+/).filter(Boolean);
  var hits = [];
  window.DLH_SEARCH.forEach(function (e) {
    var head = (e.p + " " + e.h).toLowerCase(), text = e.t.toLowerCase(), score = 0;
    for (var k = 0; k < terms.length; k++) {
      var t = terms[k], n = 0, i = text.indexOf(t);
      while (i >= 0 && n < 50) { n++; i = text.indexOf(t, i + t.length); }
      if (head.indexOf(t) >= 0) n += 20;
      if (n === 0) return;
      score += n;
    }
    hits.push([score, e]);
  });
  hits.sort(function (a, b) { return b[0] - a[0]; });
  var h = document.createElement("p");
  h.textContent = hits.length + " result" + (hits.length === 1 ? "" : "s") + " for \u201c" + q + "\u201d";
  box.appendChild(h);
  var ul = document.createElement("ol");
  hits.slice(0, 100).forEach(function (hit) {
    var e = hit[1], li = document.createElement("li"), a = document.createElement("a");
    a.href = e.u;
    a.textContent = e.h && e.h !== e.p ? e.p + " \u203a " + e.h : e.p;
    li.appendChild(a);
    var at = e.t.toLowerCase().indexOf(terms[0]);
    if (at >= 0) {
      var s = document.createElement("div");
      s.className = "snippet";
      s.textContent = (at > 80 ? "\u2026" : "") + e.t.slice(Math.max(0, at - 80), at + 160) + "\u2026";
      li.appendChild(s);
    }
    ul.appendChild(li);
  });
  box.appendChild(ul);
})();
"""

if __name__ == "__main__":
    sys.exit(main())
