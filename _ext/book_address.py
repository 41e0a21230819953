"""The book's addresses, derived from the repository's (standard library only).

``_ext/publish.py`` uses it at build time, ``scripts/set_repository.py`` when it rewrites the copies.
"""

from __future__ import annotations

import re
from urllib.parse import urlparse


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
