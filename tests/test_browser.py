"""The built book, as a reader's browser shows it: every page opened in headless Chromium.

For each page of ``_build/html``: math is typeset by MathJax (no raw TeX left in the text), every image
loads, no JavaScript error or failed local request, no broken internal link (files and #fragments), no
live-kernel widget left in the static page, every ``book.explore`` figure works without a kernel (a
control is changed and another frame appears), every figure has real alt text (not its file path, not a
Python repr of its parameters), and every "chapter N" in the text is a link to chapter N. Each page is
also opened in a 400 px wide window in dark mode: it must not scroll sideways, and its text, outputs and
tables must keep a readable contrast (>= 4.5:1, WCAG AA) against their background. A full-page
screenshot of each page is saved in
``_build/screenshots/`` as an artifact. The book ships its own MathJax (``_ext/local_mathjax.py``), so
the pages are served as built, from 127.0.0.1, and nothing is fetched from outside.

Chromium is driven through the DevTools protocol over a pipe by ``scripts/chromium_cdp.py`` (shared with
``scripts/screenshots.py``), so no browser download and no websocket package are needed: only Debian's
``chromium``.

The book must be built first (``bash scripts/build_book.sh``); ``scripts/run_tests.sh`` runs this file
after the build with ``ANATOMY_REQUIRE_BOOK=1``, which turns "not built" or "no chromium" into failures
instead of skips.
"""

from __future__ import annotations

import base64
import os
import queue
import re
import sys
import tempfile
import threading
import urllib.parse
from concurrent.futures import Future
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import book_toc  # noqa: E402  (_ext/ is on sys.path: tests/conftest.py)
from chromium_cdp import Chromium, broken_internal_links, find_chromium, serve, site_pages  # noqa: E402

SITE = Path(os.environ.get("ANATOMY_BOOK_HTML", ROOT / "_build" / "html"))
SHOTS = ROOT / "_build" / "screenshots"
HOME = f"{book_toc.pages(ROOT)[0]}.html"  # the root page of _toc.yml (the introduction)
REQUIRED = os.environ.get("ANATOMY_REQUIRE_BOOK") == "1"

pytestmark = pytest.mark.book


def _missing(reason: str):
    if REQUIRED:
        pytest.fail(reason)
    pytest.skip(reason)


def _pages() -> list[str]:
    return site_pages(SITE)


# ------------------------------------------------------------------------------------ page checks

# Waits for MathJax (if the page loads it) and returns what the reader would see.
INSPECT = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  await new Promise(r => setTimeout(r, 300));
  const imgs = [...document.querySelectorAll("img")];
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0))
                     .map(i => (i.getAttribute("src") || "").slice(0, 80));
  const math = document.querySelectorAll(".math, .amsmath, div.math, span.math").length;
  const untypeset = [...document.querySelectorAll(".math, span.math, div.math")]
                     .filter(e => !e.querySelector("mjx-container")).length;
  // TeX left as text outside code: $$, \[ \] or \( \) delimiters, or \begin{...}
  const walker = document.createTreeWalker(document.querySelector("main") || document.body,
                                           NodeFilter.SHOW_TEXT);
  const raw = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (n.parentElement.closest("pre, code, script, style, mjx-container, textarea")) continue;
    const t = n.textContent;
    if (/\$\$|\\\[|\\\]|\\\(|\\\)|\\begin\{/.test(t)) raw.push(t.trim().slice(0, 80));
  }
  const widgets = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length;
  // Content wider than the window makes the whole page scroll sideways (the sidebar slides out of view).
  // Elements inside their own scroll box (wide code, wide math, wide tables) are fine; report the others.
  const width = document.documentElement.clientWidth;
  const inScrollBox = e => {
    for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX;
      if (o === "auto" || o === "scroll" || o === "hidden") return true;
    }
    return false;
  };
  const wide = document.documentElement.scrollWidth > width + 1
    ? [...document.querySelectorAll("main *")]
        .filter(e => e.getBoundingClientRect().right > width + 1 && !inScrollBox(e))
        .slice(0, 5).map(e => `${e.tagName.toLowerCase()}.${[...e.classList].join(".")}`
                                + ` (right edge ${Math.round(e.getBoundingClientRect().right)} px)`)
    : [];
  // Figures: alt text that describes, not the file path myst-nb falls back to, nor a parameter repr.
  const article = document.querySelector("article") || document.body;
  const bad_alt = [...article.querySelectorAll("img")].map(i => i.getAttribute("alt"))
    .filter(a => !a || !a.trim() || /(^|\/)_images\/|\.(png|jpe?g|gif|svg)$/i.test(a.trim())
                 || /^\w+=/.test(a.trim()))  // the repr book.explore writes: depth=1, mask='causal'
    .map(a => a === null ? "(no alt)" : JSON.stringify(a.slice(0, 60)));
  // "chapter N" in the prose must be a link (to chapter N); a page may name its own number unlinked.
  const own = ((document.querySelector("h1 .section-number") || {}).textContent || "").replace(/\D/g, "");
  const chapterText = [];
  const tw = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  for (let n = tw.nextNode(); n; n = tw.nextNode()) {
    const skip = "a, pre, code, script, style, mjx-container, h1, h2, h3, h4, h5, h6, .cell_input, "
                 + ".cell_output";
    if (n.parentElement.closest(skip)) continue;
    for (const m of n.textContent.matchAll(/\b[Cc]hapters?\s+(\d{1,2})\b/g)) {
      if (m[1] !== own) chapterText.push(n.textContent.slice(Math.max(0, m.index - 30), m.index + 15).trim());
    }
  }
  const chapterLinks = [...article.querySelectorAll("a.chapter-ref")]
    .filter(a => !/^\d+$/.test(a.textContent.trim()) || !a.getAttribute("href"))
    .map(a => a.outerHTML.slice(0, 80));
  return {images: imgs.length, broken, math, typeset: document.querySelectorAll("mjx-container").length,
          bad_alt, chapter_text: chapterText, bad_chapter_links: chapterLinks,
          colab_cell: [...article.querySelectorAll("pre")]
            .some(p => p.textContent.includes('"google.colab" in sys.modules')),
          page_width: document.documentElement.scrollWidth, window_width: width, wide,
          untypeset, raw, widgets, explorers: document.querySelectorAll(".anatomy-explore").length,
          mathjax: !!(window.MathJax && MathJax.startup)};
})()
"""

# Changes the first control of every explorer and reports the visible frame before and after.
EXPLORE = r"""
(async () => {
  const shown = root => [...root.querySelectorAll("img.anatomy-explore-frame")]
                          .filter(i => getComputedStyle(i).display !== "none");
  const out = [];
  for (const root of document.querySelectorAll(".anatomy-explore")) {
    const before = shown(root);
    const control = root.querySelector("input[type=range], select");
    const r = {id: root.id, frames: root.querySelectorAll("img.anatomy-explore-frame").length,
               visible_before: before.length, src_before: before.length ? before[0].src.slice(-64) : null,
               control: control ? control.tagName.toLowerCase() : null};
    if (control) {
      if (control.tagName === "SELECT") { control.selectedIndex = control.options.length - 1; }
      else { control.value = control.max; }
      control.dispatchEvent(new Event("input", {bubbles: true}));
      control.dispatchEvent(new Event("change", {bubbles: true}));
      await new Promise(res => setTimeout(res, 50));
      const after = shown(root);
      r.visible_after = after.length;
      r.src_after = after.length ? after[0].src.slice(-64) : null;
      r.loaded_after = after.length ? (after[0].complete && after[0].naturalWidth > 0) : false;
    }
    out.push(r);
  }
  return out;
})()
"""


# Messages that are not errors a reader meets, each with the reason it is ignored.
KNOWN_HARMLESS = [
    # pydata-sphinx-theme logs this with console.error on a reader's first visit (nothing stored in
    # localStorage yet) and then uses its default, "auto"; every fresh browser profile shows it.
    re.compile(r"^console\.error: Got invalid theme mode: \. Resetting to auto\.$"),
    # browsers ask every site for /favicon.ico on their own; the book has none
    re.compile(r"^failed request \S+/favicon\.ico: HTTP 404$"),
]


def _errors(events: list[dict], local_prefix: str) -> tuple[list[str], list[str]]:
    """(JavaScript errors and failed local requests, failed external requests) from recorded events."""
    errors, external = [], []
    urls = {}
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
        elif method == "Runtime.exceptionThrown":
            d = params["exceptionDetails"]
            text = d.get("exception", {}).get("description") or d.get("text", "")
            errors.append(f"uncaught exception: {text.splitlines()[0] if text else d}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            errors.append(f"console.error: {args[:200]}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            url = urls.get(params["requestId"], "?")
            item = f"{url[:120]}: {params.get('errorText')}"
            (errors if url.startswith(local_prefix) else external).append(f"failed request {item}")
        elif method == "Network.responseReceived" and params["response"].get("status", 200) >= 400:
            url = params["response"]["url"]
            item = f"failed request {url[:120]}: HTTP {params['response']['status']}"
            (errors if url.startswith(local_prefix) else external).append(item)
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            url = entry.get("url", "")
            if entry.get("source") == "network":  # already reported by the Network events
                continue
            errors.append(f"log error: {entry.get('text', '')[:200]} {url[:80]}")
    errors = [e for e in errors if not any(p.match(e) for p in KNOWN_HARMLESS)]
    return errors, external


# --------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def server():
    if not (SITE / HOME).exists():
        _missing(
            f"no built book in {SITE}: run `bash scripts/build_book.sh` first "
            "(scripts/run_tests.sh runs this test after the build)"
        )
    with serve(SITE) as base:
        yield base


def _reader_view(browser: Chromium, base: str, page: str) -> dict:
    """What test_page_renders_for_a_reader checks: the page at 1280 px, its explorers moved, a screenshot."""
    browser.open(base + urllib.parse.quote(page))
    seen = browser.evaluate(INSPECT)
    explorers = browser.evaluate(EXPLORE) if seen["explorers"] else []
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.screenshot(SHOTS / (page.removesuffix(".html").replace("/", "__") + ".png"))
    errors, external = _errors(browser.events, base)
    return {"seen": seen, "explorers": explorers, "errors": errors, "external": external}


def _phone_view(browser: Chromium, base: str, page: str) -> dict:
    """What test_page_on_a_phone_in_dark_mode checks: the page 400 px wide in dark mode, a screenshot."""
    browser.open(base + urllib.parse.quote(page), width=400, height=800, mobile=True, dark=True)
    seen = browser.evaluate(NARROW_DARK)
    SHOTS.mkdir(parents=True, exist_ok=True)
    data = browser.send("Page.captureScreenshot", {"format": "png"}, timeout=120)["data"]
    (SHOTS / (page.removesuffix(".html").replace("/", "__") + ".phone-dark.png")).write_bytes(
        base64.b64decode(data)
    )
    errors, _ = _errors(browser.events, base)
    return {"seen": seen, "errors": errors}


VIEWS = {"test_page_renders_for_a_reader": _reader_view, "test_page_on_a_phone_in_dark_mode": _phone_view}


@pytest.fixture(scope="module")
def views(server, request):
    """The views of every selected page test, taken ``ANATOMY_BROWSER_JOBS`` pages at a time (default 3),
    each by a headless Chromium of its own (one tab at a time, as before): a page spends most of its time
    waiting (MathJax, timers, the screenshot), so one browser keeps a core only about half busy.
    (test name, page) -> Future of the view; each test checks its own."""
    exe = find_chromium()
    if exe is None:
        _missing("chromium is not installed (apt-get install chromium; scripts/setup_env.sh does it)")
    wanted = [
        (item.originalname, item.callspec.params["page"])
        for item in request.session.items
        if item.module is sys.modules[__name__] and item.originalname in VIEWS and hasattr(item, "callspec")
    ]
    futures = {key: Future() for key in dict.fromkeys(wanted)}
    work: queue.Queue = queue.Queue()
    for key, future in futures.items():
        work.put((key, future))

    def worker() -> None:
        with tempfile.TemporaryDirectory(prefix="anatomy-cdp-") as tmp:
            try:
                browser = Chromium(exe, Path(tmp) / "profile")
                browser.send("Browser.getVersion", session=False, timeout=60)
            except Exception as exc:  # noqa: BLE001 - every page this worker takes reports it
                browser, failed = None, exc
            try:
                while True:
                    try:
                        (test, page), future = work.get_nowait()
                    except queue.Empty:
                        return
                    if not future.set_running_or_notify_cancel():
                        continue
                    try:
                        if browser is None:
                            raise RuntimeError(f"chromium did not start: {failed}")
                        future.set_result(VIEWS[test](browser, server, page))
                    except BaseException as exc:  # noqa: BLE001 - the test re-raises it
                        future.set_exception(exc)
            finally:
                if browser is not None:
                    browser.close()

    jobs = max(1, int(os.environ.get("ANATOMY_BROWSER_JOBS", "3")))
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(jobs, len(futures)))]
    for thread in threads:
        thread.start()
    try:
        yield futures
    finally:
        for future in futures.values():
            future.cancel()
        for thread in threads:
            thread.join(timeout=300)


PAGES = _pages()


@pytest.mark.parametrize("page", PAGES or ["(book not built)"])
def test_page_renders_for_a_reader(page, views):
    path = SITE / page
    if not path.exists():
        _missing(f"{page}: not in the built book")
    view = views["test_page_renders_for_a_reader", page].result()
    seen, explorers, errors, external = view["seen"], view["explorers"], view["errors"], view["external"]

    problems = []
    if seen["broken"]:
        problems.append(
            f"{len(seen['broken'])} of {seen['images']} images did not load: {seen['broken'][:3]}"
        )
    if seen["math"] and (seen["untypeset"] or not seen["typeset"]):
        problems.append(f"{seen['untypeset']} of {seen['math']} math elements were not typeset by MathJax")
    if seen["raw"]:
        problems.append(f"raw TeX left in the text: {seen['raw'][:3]}")
    if seen["page_width"] > seen["window_width"] + 1:
        problems.append(
            f"the page is {seen['page_width']} px wide in a {seen['window_width']} px window (it "
            f"scrolls sideways); too wide: {seen['wide'] or 'no single element found'}"
        )
    if seen["bad_alt"]:
        problems.append(
            f"{len(seen['bad_alt'])} figure(s) without real alt text (give the cell mystnb "
            f"image.alt / figure.caption metadata): {seen['bad_alt'][:3]}"
        )
    if seen["chapter_text"] or seen["bad_chapter_links"]:
        problems.append(
            f"chapter references that are not links: {seen['chapter_text'][:3]} "
            f"{seen['bad_chapter_links'][:3]}"
        )
    if seen["colab_cell"]:
        problems.append("the Colab setup cell is shown on the page (_ext/publish.py should hide it)")
    if seen["widgets"]:
        problems.append(
            f"{seen['widgets']} ipywidgets output(s) need a live kernel: tag the cell "
            "remove-cell and show book.explore instead"
        )
    problems += errors
    problems += [f"broken link: {x}" for x in broken_internal_links(path, SITE)]
    for x in explorers:
        if not (x["frames"] >= 1 and x["visible_before"] == 1):
            problems.append(f"explorer {x['id']}: {x['visible_before']} frames visible before any change")
        elif x["control"] and x["frames"] > 1:
            if x.get("visible_after") != 1 or not x.get("loaded_after"):
                problems.append(
                    f"explorer {x['id']}: after moving the control, {x.get('visible_after')} "
                    "frames visible (expected one loaded image)"
                )
            elif x["src_after"] == x["src_before"]:
                problems.append(f"explorer {x['id']}: moving the control did not change the image")
    if external:
        print(f"{page}: external resources unavailable (offline?): {external[:5]}")
    assert not problems, f"{page}:\n  " + "\n  ".join(problems)


def test_every_chapter_page_was_built():
    """Every chapter in _toc.yml has a page (a chapter that failed to build would be missing)."""
    if not (SITE / HOME).exists():
        _missing(f"no built book in {SITE}")
    if SITE != ROOT / "_build" / "html":
        pytest.skip(f"{SITE} is not this repository's build, so its pages need not match _toc.yml")
    missing = [p for p in book_toc.pages(ROOT) if not (SITE / f"{p}.html").exists()]
    assert not missing, f"pages missing from the built book: {missing}"


# ------------------------------------------------------------------------ a phone in dark mode

# Contrast of text against its effective background (WCAG 2 relative luminance), for the elements a reader
# reads: paragraphs, list items, table cells, captions, admonitions and cell outputs.
NARROW_DARK = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  await new Promise(r => setTimeout(r, 300));
  const parse = c => {
    const m = (c || "").match(/rgba?\(([^)]+)\)/);
    if (!m) return null;
    const v = m[1].split(",").map(x => parseFloat(x));
    return [v[0], v[1], v[2], v.length > 3 ? v[3] : 1];
  };
  const lin = x => { x /= 255; return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4; };
  const lum = ([r, g, b]) => 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
  const background = e => {
    for (let x = e; x; x = x.parentElement) {
      const c = parse(getComputedStyle(x).backgroundColor);
      if (c && c[3] > 0.5) return c;
    }
    return parse(getComputedStyle(document.body).backgroundColor) || [255, 255, 255, 1];
  };
  const low = [];
  let checked = 0;
  const article = document.querySelector("article") || document.body;
  const read = "p, li, td, th, dt, dd, figcaption, .admonition-title, .cell_output pre, .output pre, summary";
  for (const e of article.querySelectorAll(read)) {
    if (!e.offsetParent || !e.textContent.trim() || e.closest("mjx-container")) continue;
    const fg = parse(getComputedStyle(e).color), bg = background(e);
    if (!fg) continue;
    const a = lum(fg) + 0.05, b = lum(bg) + 0.05;
    const ratio = Math.max(a, b) / Math.min(a, b);
    checked++;
    const what = e.tagName.toLowerCase() + (e.className ? "." + String(e.className).split(" ")[0] : "");
    if (ratio < 4.5) low.push(`${what} ${ratio.toFixed(1)}:1 "${e.textContent.trim().slice(0, 40)}"`);
  }
  const width = document.documentElement.clientWidth;
  return {theme: document.documentElement.dataset.theme || "", checked, low: low.slice(0, 8),
          n_low: low.length, page_width: document.documentElement.scrollWidth, window_width: width};
})()
"""


@pytest.mark.parametrize("page", PAGES or ["(book not built)"])
def test_page_on_a_phone_in_dark_mode(page, views):
    """400 px wide, dark mode: no sideways scrolling, and readable text everywhere."""
    path = SITE / page
    if not path.exists():
        _missing(f"{page}: not in the built book")
    view = views["test_page_on_a_phone_in_dark_mode", page].result()
    seen, errors = view["seen"], view["errors"]

    problems = []
    if seen["theme"] != "dark":
        problems.append(f"the page did not switch to dark mode (data-theme={seen['theme']!r})")
    if seen["page_width"] > seen["window_width"] + 1:
        problems.append(
            f"the page is {seen['page_width']} px wide in a {seen['window_width']} px window "
            "(it scrolls sideways on a phone)"
        )
    if seen["n_low"]:
        problems.append(
            f"{seen['n_low']} of {seen['checked']} text elements are hard to read in dark mode "
            f"(contrast < 4.5:1): {seen['low']}"
        )
    problems += errors
    assert not problems, f"{page} (400 px, dark):\n  " + "\n  ".join(problems)


def test_the_built_site_is_complete():
    """What the workflow publishes: every page, sitemap.xml and robots.txt under the base URL derived from
    _config.yml, the whole-book PDF, and executed notebooks behind the download buttons
    (scripts/check_site.py, which scripts/deploy_build.sh runs too)."""
    if not (SITE / HOME).exists():
        _missing(f"no built book in {SITE}")
    if SITE != ROOT / "_build" / "html":
        pytest.skip(f"{SITE} is not this repository's build")
    import importlib.util

    spec = importlib.util.spec_from_file_location("_check_site", ROOT / "scripts" / "check_site.py")
    check_site = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_site)
    problems = check_site.problems(SITE)
    if problems and all("why-decoder-only.pdf" in p for p in problems) and find_chromium() is None:
        _missing("no chromium, so no PDF of the book")
    assert not problems, "the built site is incomplete:\n  " + "\n  ".join(problems)
