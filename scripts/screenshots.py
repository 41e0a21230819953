#!/usr/bin/env python3
"""Open every page of the built book in headless Chromium, save screenshots, and check what a reader sees.

Run after `bash scripts/build_book.sh`:

    python3 scripts/screenshots.py                   # every page of _build/html -> _build/screenshots/*.png
    python3 scripts/screenshots.py intro chapters/01_three_families   # some pages only

The pages are served from 127.0.0.1 by `http.server` in a thread. The book ships its own MathJax
(`_ext/local_mathjax.py`), so math is typeset offline, exactly as a reader's browser would do it.
Chromium is driven by `scripts/chromium_cdp.py`, the same client as tests/test_browser.py (one browser for
all pages); the screenshot is the page as a reader scrolls through it, stitched into one PNG.

Besides the PNGs it checks, for each page: that Chromium rendered it, that every <img> loaded, that
math (if any) was typeset by MathJax, and that links to other pages of the book point to files (and
#fragments) that exist. It exits 1 if any check fails, and 2 if Chromium is missing
(`apt-get install chromium`). tests/test_browser.py checks much more (script errors, links, explorers,
alt text, a phone in dark mode); this is the quick look.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from chromium_cdp import Chromium, broken_internal_links, find_chromium, serve, site_pages  # noqa: E402

# After load (and MathJax's typesetting, when the page uses it): what the reader would see.
PROBE = r"""
(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  await Promise.all([...document.images].map(i => i.complete ? null : new Promise(r => {
    i.addEventListener("load", r, {once: true}); i.addEventListener("error", r, {once: true}); })));
  const imgs = [...document.querySelectorAll("img")];
  return {imgs: imgs.length, broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length,
          math: document.querySelectorAll("mjx-container").length,
          untypeset: document.querySelectorAll(".math:not(:has(mjx-container))").length,
          mathjax: !!(window.MathJax && MathJax.startup)};
})()
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pages", nargs="*", help="pages without .html (default: every page)")
    parser.add_argument("--site", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "screenshots")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900, help="the window's height (the PNG is the page)")
    args = parser.parse_args(argv)

    site = args.site.resolve()
    if not (site / "intro.html").exists() and not (site / "index.html").exists():
        print(f"screenshots: no built book in {site}; run bash scripts/build_book.sh first", file=sys.stderr)
        return 1
    exe = find_chromium()
    if exe is None:
        print("screenshots: chromium not found (apt-get install chromium)", file=sys.stderr)
        return 2
    pages = [f"{p.removesuffix('.html')}.html" for p in args.pages] or site_pages(site)
    missing = [p for p in pages if not (site / p).exists()]
    if missing:
        print(f"screenshots: pages not found: {missing}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)

    failures = 0
    with serve(site) as base, tempfile.TemporaryDirectory(prefix="anatomy-chromium-") as tmp:
        browser = Chromium(exe, Path(tmp) / "profile")
        try:
            for rel in pages:
                png = args.out / (rel.removesuffix(".html").replace("/", "__") + ".png")
                problems = []
                try:
                    browser.open(base + urllib.parse.quote(rel), width=args.width, height=args.height)
                    seen = browser.evaluate(PROBE)
                    browser.screenshot(png)
                except Exception as exc:  # noqa: BLE001 - a timeout (queue.Empty) or a protocol error
                    seen = {}
                    problems.append(f"the page did not finish loading ({exc})")
                if seen.get("broken"):
                    problems.append(f"{seen['broken']} image(s) did not load")
                if seen.get("untypeset"):
                    problems.append(f"{seen['untypeset']} math element(s) not typeset")
                links = broken_internal_links(site / rel, site)
                if links:
                    problems.append(f"broken local links: {links[:5]}")
                status = "ok" if not problems else "FAIL: " + "; ".join(problems)
                failures += bool(problems)
                shown = " ".join(f"{k}={int(v)}" for k, v in seen.items())
                print(f"{rel:45s} {shown or '-':50s} {status}", flush=True)
        finally:
            browser.close()
    print(f"screenshots in {args.out}; {len(pages) - failures}/{len(pages)} pages passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
