"""Checks of the HTML report (``affinitynet report``): the page's tags and links read as text, and
the page opened in a real browser, headless Chromium (the system's, Debian package ``chromium``)
driven by Playwright for Python.

Imported as ``from _report_checks import ...`` (pytest puts ``tests/`` on ``sys.path``). Where
Playwright or Chromium is missing, ``browser()`` skips the test with the reason; this is the
suite's only skip (``.ci/run`` installs Chromium, ``make test`` installs Playwright). Playwright's
own browser downloads are never used (``executable_path`` is the system browser).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LAPTOP = {"width": 1366, "height": 768}  # a common laptop screen

# what the page says about itself once loaded: every <img> (the <picture>'s chosen source for
# charts), how wide the document is, and which charts it shows
_INSPECT = """() => ({
  images: Array.from(document.images).map(i => ({src: i.currentSrc || i.src, complete: i.complete,
                                                   width: i.naturalWidth, chart: i.dataset.chart || null})),
  scrollWidth: document.documentElement.scrollWidth,
  innerWidth: window.innerWidth,
  background: getComputedStyle(document.body).backgroundColor,
})"""


# the charts of a report on a complete run
ALL_CHARTS = {"class-iou", "cam-sweep", "training-classifier", "training-affinity", "training-segmentation"}


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def page_tags(index: Path) -> list[tuple[str, dict[str, str]]]:
    """Every start tag of the page as (name, attributes)."""
    parser = _Tags()
    parser.feed(index.read_text())
    return parser.tags


def charts(tags: list[tuple[str, dict[str, str]]]) -> set[str]:
    return {a["data-chart"] for t, a in tags if t == "img" and "data-chart" in a}


def assert_self_contained(index: Path) -> list[Path]:
    """Every picture and link of the page is a file inside the report folder (so the page works
    offline and as a copied folder), and nothing is fetched from elsewhere: no scripts, no
    stylesheets, no absolute URLs. Returns the files referenced."""
    root = index.parent.resolve()
    files = []
    for tag, attrs in page_tags(index):
        assert tag not in ("script", "iframe", "object", "embed"), tag
        assert not (tag == "link" and attrs.get("rel") == "stylesheet"), attrs
        for key in ("src", "href", "srcset"):
            value = attrs.get(key)
            if value is None or value.startswith("#") or value == "data:,":
                continue
            assert "://" not in value and not value.startswith("/"), (tag, key, value)
            path = (root / unquote(value)).resolve()
            assert path.is_relative_to(root) and path.is_file(), (tag, key, value)
            files.append(path)
    return files


def chromium_path() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


@contextmanager
def browser() -> Iterator[Any]:
    """A headless system Chromium (a Playwright Browser); skips the test without one."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the browser test needs Playwright for Python (pip install playwright; `make test` installs it)")
    path = chromium_path()
    if path is None:
        pytest.skip("the browser test needs Chromium (apt-get install chromium; .ci/run installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def inspect_page(b: Any, index: Path, scheme: str, screenshot: Path) -> dict[str, Any]:
    """Open ``index`` (file:// URL) at laptop size in the ``scheme`` colour scheme ("light" or
    "dark"), wait for every image, save a full-page screenshot; returns what ``_INSPECT`` finds
    plus ``errors``: console errors, page errors and failed requests."""
    page = b.new_page(viewport=LAPTOP, color_scheme=scheme)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url} ({r.failure})"))
    page.goto(index.resolve().as_uri(), wait_until="load")  # "load": after every image
    found = page.evaluate(_INSPECT)
    page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    keep_artefact(screenshot)
    return {**found, "errors": errors}


def keep_artefact(path: Path) -> None:
    """Copy a test artefact (a screenshot) to $AFFINITYNET_ARTIFACTS when that is set."""
    target = os.environ.get("AFFINITYNET_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(target) / path.name)
