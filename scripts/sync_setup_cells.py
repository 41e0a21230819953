"""Write every chapter's Colab setup cell from one template, and let the live explorations execute.

    python scripts/sync_setup_cells.py                 # rewrite chapters/*.ipynb in place
    python scripts/sync_setup_cells.py --check         # exit 1 and list what differs; change nothing
    python scripts/sync_setup_cells.py /tmp/copy/*.ipynb   # other notebooks (e.g. copies)

For each notebook:

* the first code cell becomes ``anatomy.book.setup_cell(...)``: one install line for the package with its
  ``colab`` extra, from the repository named in ``_config.yml`` (``repository.url`` and ``.branch``, the one
  place the address lives), followed by ``&& pip install -q --no-deps ...`` for the packages of
  ``anatomy.book.NO_DEPS_PACKAGES`` that the chapter's code uses;
* ``explore_live`` cells lose the ``skip-execution`` tag (they keep ``remove-cell``): the build's stall after
  widget cells is fixed by ``_ext/nbclient_poll.py``, so the book build executes them too.

It also keeps ``REPOSITORY_URL`` and ``REPOSITORY_BRANCH`` in ``anatomy/book/__init__.py`` equal to
``_config.yml``, and ``DISTRIBUTION`` equal to pyproject.toml's ``[project] name`` (the name pip installs).
Cell ids, metadata and the stored JSON layout (scripts/strip_outputs.py's) are preserved.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK_PY = ROOT / "anatomy" / "book" / "__init__.py"
sys.path.insert(0, str(ROOT / "_ext"))
import book_address  # noqa: E402  (standard library only: the one reader of repository.url)


def _book():
    spec = importlib.util.spec_from_file_location("_anatomy_book_for_sync", BOOK_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def repository(config: Path = ROOT / "_config.yml") -> tuple[str, str]:
    """(url, branch) of the book's repository, from _config.yml."""
    url = book_address.repository_url(config.parent)
    if url is None or not url.startswith("https://"):  # the setup cells cannot be written without it
        raise ValueError(f"{config}: repository.url must be an https URL, got {url!r}")
    repo = yaml.safe_load(config.read_text(encoding="utf-8")).get("repository") or {}
    return url, str(repo.get("branch") or "main")


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def dumps(nb: dict) -> str:
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def transform(nb: dict, url: str, branch: str, book=None) -> tuple[dict, list[str]]:
    """The notebook with its setup cell from the template and its live cells untagged; what changed."""
    book = book or _book()
    changes = []
    code = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    if not code:
        return nb, changes
    rest = "\n".join(_source(c) for c in code[1:])
    cell = book.setup_cell(book.needed_packages(rest), url=url, branch=branch).rstrip("\n")
    if _source(code[0]).rstrip("\n") != cell:
        code[0]["source"] = cell.splitlines(keepends=True)
        changes.append("setup cell")
    for c in code:
        tags = c.get("metadata", {}).get("tags", [])
        if "explore_live" in _source(c) and "skip-execution" in tags:
            tags.remove("skip-execution")
            changes.append("explore_live cell untagged skip-execution")
    return nb, changes


def distribution(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The package's distribution name ([project] name), which the setup cell installs."""
    import tomllib

    return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["name"]


def sync_book_py(url: str, branch: str, check: bool) -> list[str]:
    text = BOOK_PY.read_text(encoding="utf-8")
    new = re.sub(r'^REPOSITORY_URL = "[^"]*"', f'REPOSITORY_URL = "{url}"', text, count=1, flags=re.M)
    new = re.sub(r'^REPOSITORY_BRANCH = "[^"]*"', f'REPOSITORY_BRANCH = "{branch}"', new, count=1, flags=re.M)
    new = re.sub(r'^DISTRIBUTION = "[^"]*"', f'DISTRIBUTION = "{distribution()}"', new, count=1, flags=re.M)
    if new == text:
        return []
    if not check:
        BOOK_PY.write_text(new, encoding="utf-8")
    return ["anatomy/book/__init__.py: REPOSITORY_URL / REPOSITORY_BRANCH / DISTRIBUTION"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: chapters/[0-9][0-9]_*.ipynb")
    ap.add_argument("--check", action="store_true", help="report differences, change nothing")
    args = ap.parse_args(argv)
    url, branch = repository()
    problems = sync_book_py(url, branch, args.check)
    book = _book()
    paths = args.notebooks or sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
    for path in paths:
        text = path.read_text(encoding="utf-8")
        nb, changes = transform(json.loads(text), url, branch, book)
        if changes:
            problems.append(f"{path}: {', '.join(changes)}")
            if not args.check:
                path.write_text(dumps(nb), encoding="utf-8")
    verb = "differ" if args.check else "updated"
    for p in problems:
        print(f"{verb}: {p}")
    if not problems:
        print(f"all {len(paths)} notebooks already follow the template ({url}@{branch})")
    return 1 if (args.check and problems) else 0


if __name__ == "__main__":
    sys.exit(main())
