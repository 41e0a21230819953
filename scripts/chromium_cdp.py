"""Headless Chromium for the book's checks, driven through the DevTools protocol (standard library only).

Used by tests/test_browser.py (every page as a reader's browser shows it) and scripts/screenshots.py
(screenshots and a quick check of every page). Chromium is driven over a pipe (``--remote-debugging-pipe``:
JSON messages separated by NUL bytes on file descriptors 3 and 4), so no browser download and no websocket
package are needed: only the system's ``chromium`` (Debian's; ``ANATOMY_CHROMIUM`` names another).

Why not Playwright: its Python package does drive /usr/bin/chromium offline (``executable_path``, checked
with playwright 1.65.2 and Chromium 156), but Playwright supports only the browser build it ships, while
the system Chromium is updated by the distribution on its own schedule; and it would add 165 MB (installed;
its own Node.js runtime) to the development tools, for the dozen stable protocol methods used here.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import html.parser
import http.server
import io
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_ext"))
import headless_chromium  # noqa: E402  (standard library only: the executable and the shared flags)
from headless_chromium import find_chromium  # noqa: E402, F401  (for screenshots.py and tests/test_browser.py)

MAX_SHOT_HEIGHT = 40000  # px; longer pages are cut there (the screenshot is an artifact, not a check)
SKIP_PAGES = {"genindex.html", "search.html", "index.html"}  # index.html only redirects


def site_pages(site: Path) -> list[str]:
    """The built book's pages (paths relative to `site`), without Sphinx's own and the redirect."""
    if not site.is_dir():
        return []
    return sorted(
        p.relative_to(site).as_posix()
        for p in site.rglob("*.html")
        if "_static" not in p.parts
        and "_sources" not in p.parts
        and p.relative_to(site).as_posix() not in SKIP_PAGES
    )


@contextlib.contextmanager
def serve(site: Path):
    """Serve `site` from 127.0.0.1 in a thread, quietly; yields the base URL (ending in /)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(site), **kwargs)

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


# ------------------------------------------------------------------------------ a small CDP client


def _high_fd(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


_HIDE_STICKY = r"""
(() => {
  const style = document.createElement("style");
  style.id = "anatomy-shot-style";
  style.textContent = ".bd-header, .bd-header-article, .bd-sidebar-primary, .bd-sidebar-secondary, " +
                      ".header-article, .bd-sidebar { opacity: 0 !important; transition: none !important; }";
  document.head.appendChild(style);
})()
"""


class Chromium:
    """Headless Chromium with the DevTools protocol on a pipe; one page (target) at a time."""

    def __init__(self, exe: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The child's ends are moved to fds >= 10 first: the shell redirections below would clobber
        # them if os.pipe() had returned 3 or 4 (it does when pytest captures output); bash, not dash,
        # because dash only redirects single-digit fds.
        to_browser_r, from_browser_w = (_high_fd(to_browser_r), _high_fd(from_browser_w))
        flags = [
            *headless_chromium.flags(profile),
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        # the protocol pipe must be fds 3 (browser reads) and 4 (browser writes)
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}', exe, *flags],
            pass_fds=(to_browser_r, from_browser_w),
            stdout=subprocess.DEVNULL,
            stderr=None if os.environ.get("ANATOMY_CDP_DEBUG") else subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._inbox: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.session: str | None = None

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self._inbox.put(None)
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._inbox.put(json.loads(message))

    def _pump(self, timeout: float) -> dict | None:
        message = self._inbox.get(timeout=timeout)
        if message is None:
            raise RuntimeError("chromium closed the DevTools pipe")
        if "id" not in message:
            self.events.append(message)
        return message

    def send(self, method: str, params: dict | None = None, *, timeout: float = 60.0, session: bool = True):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._pump(max(0.01, deadline - time.monotonic()))
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def wait_for(self, method: str, timeout: float = 60.0) -> dict:
        for event in self.events:
            if event.get("method") == method and event.get("sessionId") == self.session:
                return event
        deadline = time.monotonic() + timeout
        while True:
            event = self._pump(max(0.01, deadline - time.monotonic()))
            if event.get("method") == method and event.get("sessionId") == self.session:
                return event

    def evaluate(self, expression: str, timeout: float = 60.0):
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(
        self, url: str, width: int = 1280, height: int = 900, *, mobile: bool = False, dark: bool = False
    ) -> None:
        """A fresh tab at url, with load events and errors recorded from the start.

        mobile: a phone's viewport handling; dark: the reader's system asks for dark mode
        (``prefers-color-scheme: dark``, which the theme's default "auto" mode follows).
        """
        if self.session:
            self.send("Target.closeTarget", {"targetId": self._target}, session=False)
        self.events.clear()
        self._target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send(
            "Target.attachToTarget", {"targetId": self._target, "flatten": True}, session=False
        )["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )
        self.send(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]},
        )
        self.send("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired")

    def screenshot(self, path: Path) -> None:
        """The page as a reader scrolls through it, one window at a time, stitched into one PNG.

        Not one capture with ``captureBeyondViewport``: that enlarges the window to the whole page, and
        sphinx-book-theme then lays a long page out wider than the window (shifted sideways, the sidebar
        out of view), which is not what a reader sees. After the first window the sticky header and
        sidebars are hidden, so that they neither repeat down the image nor cover the text.
        """
        from PIL import Image  # matplotlib's dependency, so present wherever the book builds

        size = self.evaluate(
            "({width: document.documentElement.clientWidth, window: innerHeight, "
            "height: document.documentElement.scrollHeight})"
        )
        height = min(size["height"], MAX_SHOT_HEIGHT)
        page = Image.new("RGB", (size["width"], height), "white")
        y = 0
        while y < height:
            top = self.evaluate(
                f"window.scrollTo(0, {y}); new Promise(r => requestAnimationFrame("
                "() => requestAnimationFrame(() => r(Math.round(window.scrollY)))))"
            )
            data = self.send("Page.captureScreenshot", {"format": "png"}, timeout=120)["data"]
            page.paste(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), (0, top))
            if y == 0:
                self.evaluate(_HIDE_STICKY)
            if top + size["window"] >= size["height"]:
                break
            y = top + size["window"]
        self.evaluate("document.getElementById('anatomy-shot-style')?.remove(); window.scrollTo(0, 0)")
        page.save(path)

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False, timeout=10)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_browser)


# ------------------------------------------------------------------------------------------ links


class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)
            if value and (
                (tag == "a" and name == "href")
                or (tag in ("img", "script", "link") and name in ("src", "href"))
            ):
                self.links.append(value)


_ANCHORS: dict[Path, _Anchors] = {}


def _anchors(path: Path) -> _Anchors:
    if path not in _ANCHORS:
        parser = _Anchors()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        _ANCHORS[path] = parser
    return _ANCHORS[path]


def broken_internal_links(page: Path, site: Path) -> list[str]:
    """Local links of `page` whose file is missing, or whose #fragment names no id in the target."""
    problems = []
    for href in _anchors(page).links:
        parsed = urllib.parse.urlparse(href)
        if parsed.scheme or parsed.netloc or href.startswith(("data:", "mailto:", "javascript:")):
            continue
        target = (page.parent / urllib.parse.unquote(parsed.path)).resolve() if parsed.path else page
        if target.is_dir():
            target = target / "index.html"
        if not target.exists():
            shown = target.relative_to(site) if site in target.parents else target
            problems.append(f"{href} (no file {shown})")
        elif parsed.fragment and target.suffix == ".html":
            fragment = urllib.parse.unquote(parsed.fragment)
            if fragment not in _anchors(target).ids:
                problems.append(f"{href} (no id {fragment!r} in {target.name})")
    return sorted(set(problems))
