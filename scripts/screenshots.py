#!/usr/bin/env python3
"""Open every page of the built book in headless Chromium, save screenshots, and check what a reader sees.

Run after `bash scripts/build_book.sh`:

    python3 scripts/screenshots.py                   # every page of _build/html -> _build/screenshots/*.png
    python3 scripts/screenshots.py intro chapters/01_three_families   # some pages only

The pages are served from 127.0.0.1 by `http.server` in a thread. The book ships its own MathJax
(`_ext/local_mathjax.py`), so math is typeset offline, exactly as a reader's browser would do it.

Besides the PNGs it checks, for each page: that Chromium rendered it, that every <img> loaded, that
math (if any) was typeset by MathJax, and that links to other pages of the book point to files that
exist. It exits 1 if any check fails, and 2 if Chromium is missing (`apt-get install chromium`).
"""

from __future__ import annotations

import argparse
import html.parser
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_PAGES = {"genindex.html", "search.html", "index.html"}  # index.html only redirects to the root page
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
    "--mute-audio", "--disable-extensions",
]

# After load, this script writes what the page looks like into the title, where --dump-dom can read it.
PROBE = """<script>
window.addEventListener("load", function () {
  function report() {
    var imgs = document.querySelectorAll("img"), broken = 0;
    for (var i = 0; i < imgs.length; i++) if (!(imgs[i].complete && imgs[i].naturalWidth > 0)) broken++;
    var raw = document.querySelectorAll(".math:not(:has(mjx-container))").length;
    var typeset = document.querySelectorAll("mjx-container").length;
    document.title = "PROBE imgs=" + imgs.length + " broken=" + broken + " math=" + typeset
                     + " untypeset=" + raw + " mathjax=" + (window.MathJax && MathJax.startup ? 1 : 0);
  }
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(report, report);
  } else {
    report();
  }
});
</script>"""


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and ((tag == "a" and name == "href") or (tag in ("img", "script") and name == "src")):
                self.hrefs.append(value)


def broken_links(page: Path, site: Path) -> list[str]:
    """Local links and sources in `page` that point to files missing from `site`."""
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8", errors="replace"))
    missing = []
    for href in parser.hrefs:
        parsed = urllib.parse.urlparse(href)
        if parsed.scheme or parsed.netloc or href.startswith(("#", "data:", "mailto:", "javascript:")):
            continue
        target = (page.parent / urllib.parse.unquote(parsed.path)).resolve()
        if parsed.path and not target.exists():
            missing.append(href)
    return sorted(set(missing))


def make_handler(site: Path):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(site), **kwargs)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
            pass

        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            path = urllib.parse.urlparse(self.path).path
            if path.endswith(".html") or path.endswith("/"):
                target = site / urllib.parse.unquote(path.lstrip("/"))
                if target.is_dir():
                    target = target / "index.html"
                if target.is_file():
                    text = target.read_text(encoding="utf-8", errors="replace")
                    text = text.replace("</body>", PROBE + "</body>", 1)
                    return self._send(text.encode("utf-8"), "text/html; charset=utf-8")
            return super().do_GET()

        def _send(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def chromium(args: list[str], profile: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    exe = next((shutil.which(n) for n in (os.environ.get("ANATOMY_CHROMIUM"), "chromium", "chromium-browser",
                                          "google-chrome") if n and shutil.which(n)), None)
    assert exe is not None
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pages", nargs="*", help="pages without .html (default: every page)")
    parser.add_argument("--site", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "screenshots")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400)
    parser.add_argument("--budget", type=int, default=8000, help="virtual time (ms) for scripts and MathJax")
    args = parser.parse_args(argv)

    site = args.site.resolve()
    if not (site / "intro.html").exists() and not (site / "index.html").exists():
        print(f"screenshots: no built book in {site}; run bash scripts/build_book.sh first", file=sys.stderr)
        return 1
    if not any(shutil.which(n) for n in (os.environ.get("ANATOMY_CHROMIUM"), "chromium", "chromium-browser",
                                         "google-chrome") if n):
        print("screenshots: chromium not found (apt-get install chromium)", file=sys.stderr)
        return 2
    if args.pages:
        pages = [site / f"{p.removesuffix('.html')}.html" for p in args.pages]
    else:
        pages = sorted(p for p in site.rglob("*.html")
                       if "_static" not in p.parts and "_sources" not in p.parts
                       and p.relative_to(site).as_posix() not in SKIP_PAGES)
    missing = [p for p in pages if not p.exists()]
    if missing:
        print(f"screenshots: pages not found: {[str(p) for p in missing]}", file=sys.stderr)
        return 1

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(site))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    args.out.mkdir(parents=True, exist_ok=True)

    failures = 0
    try:
        with tempfile.TemporaryDirectory(prefix="anatomy-chromium-") as tmp:
            for page in pages:
                rel = page.relative_to(site).as_posix()
                url = base + urllib.parse.quote(rel)
                png = args.out / (rel.removesuffix(".html").replace("/", "__") + ".png")
                shot = chromium([f"--screenshot={png}", f"--window-size={args.width},{args.height}",
                                 f"--virtual-time-budget={args.budget}", url], Path(tmp) / "profile")
                profile = Path(tmp) / "profile"
                dom = chromium([f"--virtual-time-budget={args.budget}", "--dump-dom", url], profile)
                probe = ""
                if "<title>PROBE " in dom.stdout:
                    probe = dom.stdout.split("<title>PROBE ", 1)[1].split("</title>", 1)[0]
                fields = dict(item.split("=", 1) for item in probe.split()) if probe else {}
                problems = []
                if shot.returncode != 0 or not png.exists():
                    problems.append(f"no screenshot ({shot.stderr.strip()[-300:]})")
                if not fields:
                    problems.append("the page did not finish loading")
                else:
                    if fields["broken"] != "0":
                        problems.append(f"{fields['broken']} image(s) did not load")
                    if fields["untypeset"] != "0":
                        problems.append(f"{fields['untypeset']} math element(s) not typeset")
                links = broken_links(page, site)
                if links:
                    problems.append(f"broken local links: {links[:5]}")
                status = "ok" if not problems else "FAIL: " + "; ".join(problems)
                failures += bool(problems)
                print(f"{rel:45s} {probe or '-':60s} {status}")
    finally:
        server.shutdown()
        server.server_close()
    print(f"screenshots in {args.out}; {len(pages) - failures}/{len(pages)} pages passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
