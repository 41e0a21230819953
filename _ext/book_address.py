"""The book's addresses, derived from the repository's (standard library only).

``repository_url(root)`` reads the one place the address is set, ``_config.yml``'s ``repository.url``; the
rest derive from it. ``_ext/publish.py`` and ``_ext/colab_edition.py`` use it at build time,
``scripts/set_repository.py`` when it rewrites the copies, ``scripts/check_site.py`` and
``scripts/sync_setup_cells.py`` and the tests to read it. Scripts import it with ``_ext/`` on ``sys.path``.
"""

from __future__ import annotations

import re
from urllib.parse import urlparse

# The ``url:`` line inside the top-level ``repository:`` block of _config.yml (comment lines between):
# group 1 is everything before the value, group 2 the value, group 3 the rest of the line. A regular
# expression rather than a YAML parser, so that scripts/set_repository.py can rewrite just that value and
# this module needs nothing beyond the standard library.
URL_LINE = re.compile(r"^(repository:\n(?:[ \t]+.*\n|[ \t]*#.*\n)*?[ \t]+url:[ \t]*)(\S+)(.*)$", re.M)


def repository_url(root=None) -> str | None:
    """``repository.url`` of ``root/_config.yml`` (quotes and a trailing slash removed), or None when the
    file has no such line; each caller decides what a missing address means for it."""
    from pathlib import Path

    root = Path(root) if root is not None else Path(__file__).resolve().parents[1]
    m = URL_LINE.search((root / "_config.yml").read_text(encoding="utf-8"))
    return m.group(2).strip("\"'").rstrip("/") if m else None


def repository_parts(url: str) -> tuple[str, str]:
    """``https://github.com/OWNER/REPO`` -> (OWNER, REPO); ValueError for anything else."""
    parsed = urlparse(str(url).strip().rstrip("/"))
    parts = [p for p in parsed.path.split("/") if p]
    if parsed.scheme != "https" or parsed.netloc.lower() != "github.com" or len(parts) != 2:
        raise ValueError(f"repository url must look like https://github.com/OWNER/REPO, got {url!r}")
    owner, repo = parts
    repo = repo.removesuffix(".git")
    if not (re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,38}", owner) and re.fullmatch(r"[A-Za-z0-9._-]+", repo)):
        raise ValueError(f"not a GitHub OWNER/REPO: {owner}/{repo}")
    return owner, repo


def pages_url(url: str) -> str:
    """Where GitHub Pages serves the book of repository `url` (a project site)."""
    owner, repo = repository_parts(url)
    host = f"{owner.lower()}.github.io"
    return f"https://{host}/" if repo.lower() == host else f"https://{host}/{repo}/"


def distribution(root=None) -> tuple[str, str]:
    """(name, version) of the book's package from pyproject.toml: what the Colab setup cells install."""
    from pathlib import Path

    import tomllib

    root = Path(root) if root is not None else Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return project["name"], project["version"]
