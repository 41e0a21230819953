"""Serve MathJax from the built book itself instead of a CDN, so math renders offline too.

MathJax 3.2.2 comes from the PyPI package ``django-static-mathjax`` (no dependencies; Apache-2.0 MathJax
files under ``mathjax/static/mathjax``). At build time the parts the book uses (the TeX-to-CHTML bundle,
its TeX extensions, fonts and menu) are copied to ``_static/mathjax`` and ``mathjax_path`` points there.
Without the package the build keeps Sphinx's default CDN URL and says so.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)
PARTS = ("tex-chtml.js", "input", "output/chtml", "ui", "a11y", "adaptors", "sre")


def _copy_mathjax(app) -> None:
    if app.builder.format != "html":
        return
    spec = importlib.util.find_spec("mathjax")
    src = Path(spec.submodule_search_locations[0]) / "static" / "mathjax" / "es5" if spec else None
    if src is None or not (src / "tex-chtml.js").exists():
        logger.info("local_mathjax: django-static-mathjax not installed; MathJax will load from the CDN")
        return
    dest = Path(app.outdir) / "_static" / "mathjax"
    for part in PARTS:
        if (src / part).is_dir():
            shutil.copytree(src / part, dest / part, dirs_exist_ok=True)
        elif (src / part).exists():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / part, dest / part)
    app.config.mathjax_path = "mathjax/tex-chtml.js"


def setup(app):
    app.connect("builder-inited", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
