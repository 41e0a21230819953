"""The headless Chromium the book starts: which executable, and the flags every start of it shares
(standard library only).

``_ext/publish.py`` prints the book's PDF with it at build time, and ``scripts/chromium_cdp.py`` drives it
for the browser checks and the screenshots (scripts import it with ``_ext/`` on ``sys.path``). Each adds
only the flags of its own job (printing to a PDF; the DevTools pipe).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome")  # Debian's, Ubuntu's older name, Google's


def find_chromium() -> str | None:
    """The Chromium executable: ``$ANATOMY_CHROMIUM``, else chromium, chromium-browser or google-chrome."""
    for name in (os.environ.get("ANATOMY_CHROMIUM"), *NAMES):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def flags(profile: Path | str) -> list[str]:
    """The flags of every headless Chromium the book starts: no sandbox (containers, root), no GPU, no
    network of its own (updates, sync, QUIC), no first-run screens, sound or extensions, and `profile`
    as its throwaway user-data folder."""
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--mute-audio",
        "--disable-extensions",
        f"--user-data-dir={profile}",
    ]
