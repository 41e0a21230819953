"""Packaging hook (the metadata is in pyproject.toml): the wheel carries the chapters' order.

In a checkout, ``anatomy.claims.chapters()`` numbers the chapters by their place in ``_toc.yml``, which sits
next to the package. An installed wheel (Colab) has no ``_toc.yml``, so the build writes the list of chapter
pages it reads there into the wheel as ``anatomy/claims/_chapters.json``, with the same function
(``anatomy.claims.toc_pages``, the book's one reader of ``_toc.yml``, loaded from its file: the build needs
neither PyYAML nor torch). ``MANIFEST.in`` puts ``_toc.yml`` into the sdist, so a wheel built from the sdist
gets it too.
"""

import importlib.util
import json
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithChapters(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads _toc.yml itself
            return
        path = HERE / "anatomy" / "claims" / "__init__.py"
        spec = importlib.util.spec_from_file_location("_claims_for_build", path)
        claims = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = claims  # its dataclasses look their module up there
        spec.loader.exec_module(claims)  # its module level imports the standard library only
        pages = claims.toc_pages((HERE / "_toc.yml").read_text(encoding="utf-8"))
        if not pages:
            raise RuntimeError("_toc.yml lists no numbered chapter")
        target = Path(self.build_lib) / "anatomy" / "claims" / "_chapters.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({"from": "_toc.yml", "pages": pages}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":  # as setuptools.build_meta runs it (tests/test_claims.py imports the class)
    setup(cmdclass={"build_py": BuildPyWithChapters})
