"""Open every page of the built site in headless Chromium and fail on what a reader would see broken.

``make site-check`` runs it after ``make site``: it installs Debian's ``chromium`` and
``chromium-driver`` when they are missing (needs root and the Debian package index), serves
``site/`` on 127.0.0.1 from a local ``http.server`` that stops with the script, and loads every
page. A page fails on

- a console error (or a JavaScript exception),
- a failed request: a network error, an HTTP status >= 400, or any request leaving 127.0.0.1,
- a missing image (``naturalWidth`` 0),
- math that MathJax did not process (it never finished, it reported an error, or raw TeX such
  as ``$x$`` or ``\\(x\\)`` is left in the page's text).

It is not part of CI (installing Chromium there is heavy); the link checks of ``tests/test_site.py``
are. Usage: ``python scripts/browser_check.py [SITE_DIR] [--limit N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

CATEGORIES = ("console", "request", "image", "math", "load")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# Runs in the page once MathJax is done: broken images, MathJax errors and raw TeX left in the text.
PAGE_PROBE = r"""
const images = [...document.images].filter(i => !i.complete || i.naturalWidth === 0)
  .map(i => (i.getAttribute('src') || '').slice(0, 80));
const errors = document.querySelectorAll('.MathJax_Error, .noError, merror').length;
const rendered = document.querySelectorAll('.MathJax, .MathJax_Display, .MathJax_SVG').length;
const raw = [];
const skip = new Set(['PRE', 'CODE', 'SCRIPT', 'STYLE', 'TEXTAREA', 'KBD', 'SAMP']);
const walker = document.createTreeWalker(document.querySelector('main') || document.body, NodeFilter.SHOW_TEXT, {
  acceptNode(n) {
    for (let p = n.parentElement; p; p = p.parentElement) {
      if (skip.has(p.tagName) || (p.className && String(p.className).includes('MathJax'))) return NodeFilter.FILTER_REJECT;
    }
    return NodeFilter.FILTER_ACCEPT;
  }
});
const tex = /\$\$|\$[^$\s][^$]*\$|\\\(|\\\[|\\begin\{/;
for (let n = walker.nextNode(); n; n = walker.nextNode()) {
  const m = n.textContent.match(tex);
  if (m) raw.push(n.textContent.slice(Math.max(0, m.index - 30), m.index + 50).replace(/\s+/g, ' '));
}
return {images, errors, rendered, raw, math: document.documentElement.getAttribute('data-math'),
        loaded: [...document.images].length - images.length};
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the site without logging each request to stderr, and remembers the failed ones."""

    failures: list[str] = []

    def log_message(self, fmt, *args):  # noqa: D401 - http.server's hook
        pass

    def log_request(self, code="-", size="-"):
        if str(code).isdigit() and int(code) >= 400:
            self.failures.append(f"{code} {self.path}")


@contextlib.contextmanager
def serve(directory: Path, timeout_s: float = 900.0):
    """Serve ``directory`` on 127.0.0.1 (a free port) in a thread; yields the base URL, stops on exit.

    The server also stops itself after ``timeout_s`` seconds, so it can never outlive a run.
    """
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    timer = threading.Timer(timeout_s, server.shutdown)
    timer.daemon = True
    timer.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        timer.cancel()
        server.shutdown()
        server.server_close()


def site_pages(site: Path) -> list[str]:
    """The site's HTML pages (posix paths from its root), without MathJax's own files."""
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")
                  if "mathjax" not in p.relative_to(site).parts)


def ensure_chromium() -> None:
    """Install Debian's chromium and chromium-driver with apt-get when either is missing."""
    if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists():
        return
    if shutil.which("apt-get") is None:
        raise SystemExit(f"{CHROMIUM} or {CHROMEDRIVER} is missing and there is no apt-get to install them")
    print("installing chromium and chromium-driver from Debian ...", flush=True)
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], check=True, env=env)


def summarize(findings: dict[str, list[tuple[str, str]]]) -> Counter:
    """Problems per category (``console``, ``request``, ``image``, ``math``, ``load``) from per-page findings."""
    counts = Counter({c: 0 for c in CATEGORIES})
    for problems in findings.values():
        for category, _ in problems:
            counts[category] += 1
    return counts


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-default-apps", "--disable-sync"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    return driver


def _network_problems(entries: list[dict], base: str) -> list[str]:
    urls, out = {}, []
    for entry in entries:
        msg = json.loads(entry["message"])["message"]
        params = msg.get("params", {})
        if msg.get("method") == "Network.requestWillBeSent":
            url = params["request"]["url"]
            urls[params["requestId"]] = url
            if not url.startswith((base, "data:", "blob:", "about:")):
                out.append(f"request leaves the site: {url[:120]}")
        elif msg.get("method") == "Network.loadingFailed" and not params.get("canceled"):
            out.append(f"failed: {urls.get(params['requestId'], '?')[:120]} ({params.get('errorText')})")
        elif msg.get("method") == "Network.responseReceived" and params["response"]["status"] >= 400:
            out.append(f"HTTP {params['response']['status']}: {params['response']['url'][:120]}")
    return out


def check_page(driver, base: str, page: str, math_wait_s: float = 30.0,
               stats: Counter | None = None) -> list[tuple[str, str]]:
    """Load one page and return its problems as ``(category, message)`` pairs.

    ``stats``, if given, counts what worked: ``math`` expressions rendered, ``images`` loaded.
    """
    problems: list[tuple[str, str]] = []
    try:
        driver.get(base + page)
    except Exception as exc:  # a page that does not load is a finding, not a crash
        return [("load", f"{type(exc).__name__}: {exc}")]
    deadline = time.monotonic() + math_wait_s
    while driver.execute_script("return document.documentElement.getAttribute('data-math')") != "done":
        if time.monotonic() > deadline:
            problems.append(("math", f"MathJax did not finish within {math_wait_s:.0f} s"))
            break
        time.sleep(0.1)
    probe = driver.execute_script(PAGE_PROBE)
    if stats is not None:
        stats.update(math=probe["rendered"], images=probe.get("loaded", 0))
    problems += [("image", f"image did not load: {src}") for src in probe["images"]]
    if probe["errors"]:
        problems.append(("math", f"{probe['errors']} MathJax error(s)"))
    problems += [("math", f"raw TeX left in the text: ...{snippet}...") for snippet in probe["raw"]]
    for entry in driver.get_log("browser"):
        if entry["level"] == "SEVERE":
            problems.append(("console", entry["message"][:300]))
    problems += [("request", msg) for msg in _network_problems(driver.get_log("performance"), base)]
    return problems


def run(site: Path, limit: int | None = None, screenshot: Path | None = None,
        stats: Counter | None = None) -> dict[str, list[tuple[str, str]]]:
    """Check every page of ``site`` (the first ``limit`` ones if given); return the problems by page.

    ``stats``, if given, adds up what worked (see :func:`check_page`).
    """
    ensure_chromium()
    pages = site_pages(site)[:limit]
    findings: dict[str, list[tuple[str, str]]] = {}
    with serve(site) as base:
        driver = _driver()
        try:
            for i, page in enumerate(pages, 1):
                problems = check_page(driver, base, page, stats=stats)
                findings[page] = problems
                print(f"[{i}/{len(pages)}] {page}: {'ok' if not problems else f'{len(problems)} problem(s)'}",
                      flush=True)
                for category, message in problems:
                    print(f"    {category}: {message}", flush=True)
            if screenshot is not None:
                driver.get(base + "index.html")
                driver.save_screenshot(str(screenshot))
        finally:
            driver.quit()
        for failure in _QuietHandler.failures:
            findings.setdefault("(server)", []).append(("request", f"served {failure}"))
    return findings


def main(argv: list[str] | None = None) -> int:
    """Command line: check the site and print the problems per category; exit 1 if there are any."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("site", nargs="?", type=Path, default=Path("site"), help="the built site (default: site/)")
    ap.add_argument("--limit", type=int, default=None, help="check only the first N pages")
    ap.add_argument("--screenshot", type=Path, default=None, help="save a screenshot of the home page here")
    args = ap.parse_args(argv)
    if not (args.site / "index.html").exists():
        print(f"no site at {args.site}: run `make site` first", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    stats = Counter()
    findings = run(args.site, args.limit, args.screenshot, stats)
    counts = summarize(findings)
    print(f"checked {len([p for p in findings if p != '(server)'])} pages in {time.perf_counter() - t0:.0f} s "
          f"({stats['math']} math expressions rendered, {stats['images']} images loaded); problems: "
          + ", ".join(f"{c}: {counts[c]}" for c in CATEGORIES))
    return 1 if sum(counts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
