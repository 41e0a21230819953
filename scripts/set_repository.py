#!/usr/bin/env python3
"""Change the book's repository address everywhere, from the one place it is set.

    python3 scripts/set_repository.py OWNER/REPO              # e.g. alice/why-decoder-only
    python3 scripts/set_repository.py https://github.com/OWNER/REPO
    python3 scripts/set_repository.py --show                  # print the address and what derives from it

``_config.yml``'s ``repository.url`` is the one source. At build time the book derives from it the launch
(Colab), repository and issue buttons, and ``html_baseurl`` (GitHub Pages serves the book at
``https://OWNER.github.io/REPO/``; ``_ext/publish.py``). Files that cannot read ``_config.yml`` keep a copy,
and this command rewrites every copy:

* ``_config.yml`` itself;
* every tracked text file that names the old repository or its Pages address (pyproject.toml's URLs,
  CITATION.cff, README.md's links and badges, CONTRIBUTING.md, intro.md, ...);
* the chapters' Colab setup cells and ``anatomy/book/__init__.py``'s constants, through
  ``scripts/sync_setup_cells.py`` (which writes them from the template, reading ``_config.yml``), when that
  script exists.

Then commit the changes. ``tests/test_publish.py`` runs this command on a copy of the repository and checks
that no copy of the old address is left. Standard library only (the setup-cell script needs PyYAML).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".md", ".toml", ".cff", ".yml", ".yaml", ".py", ".sh", ".txt", ".cfg", ".ipynb", ".json", ""}
sys.path.insert(0, str(ROOT / "_ext"))
import book_address  # noqa: E402  (standard library only)


def current_url(root: Path = ROOT) -> str:
    url = book_address.repository_url(root)
    if url is None:  # nothing to replace: the address must be set by hand first
        raise SystemExit(f"{root / '_config.yml'}: no repository: url: line found")
    return url


def normalise(arg: str) -> str:
    arg = arg.strip().rstrip("/")
    url = arg if arg.startswith("https://") else f"https://github.com/{arg}"
    owner, repo = book_address.repository_parts(url)  # ValueError for anything that is not OWNER/REPO
    return f"https://github.com/{owner}/{repo}"


def tracked_files(root: Path) -> list[Path]:
    """The repository's files (git ls-files when it is a git work tree, else every file but .venv/_build)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "_build", "node_modules", "__pycache__"}
        names = [
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and not skip.intersection(p.relative_to(root).parts)
        ]
    return [root / n for n in names if (root / n).suffix in TEXT_SUFFIXES and (root / n).is_file()]


def replacements(old: str, new: str) -> list[tuple[str, str]]:
    pages_url = book_address.pages_url
    pairs = [
        (old, new),
        (pages_url(old), pages_url(new)),
        (pages_url(old).rstrip("/"), pages_url(new).rstrip("/")),
    ]
    # URLs without the scheme (badges, pip's git+https is covered by the first pair)
    pairs.append((old.removeprefix("https://"), new.removeprefix("https://")))
    return [(a, b) for a, b in pairs if a != b]


def set_repository(new: str, root: Path = ROOT, sync_cells: bool = True) -> list[Path]:
    """Point every copy of the address at `new` (https://github.com/OWNER/REPO); return the files changed."""
    old = current_url(root)
    changed: list[Path] = []
    config = root / "_config.yml"
    text = config.read_text(encoding="utf-8")
    text = book_address.URL_LINE.sub(lambda m: m.group(1) + new + m.group(3), text, count=1)
    if text != config.read_text(encoding="utf-8"):
        config.write_text(text, encoding="utf-8")
        changed.append(config)
    pairs = replacements(old, new)
    sync = root / "scripts" / "sync_setup_cells.py"
    for path in tracked_files(root):
        if path == config or path.resolve() == Path(__file__).resolve():
            continue
        try:
            body = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        updated = body
        for a, b in pairs:
            updated = updated.replace(a, b)
        if updated != body:
            path.write_text(updated, encoding="utf-8")
            changed.append(path)
    if sync_cells and sync.exists():
        # the setup cells and anatomy/book/__init__.py's constants, from the template and the new
        # _config.yml. The template lives in anatomy/book/__init__.py, which imports torch: use the
        # project's .venv when there is one.
        # The text replacement above has already moved every copy, so a failure here is only a warning.
        venv = root / ".venv" / "bin" / "python"
        python = str(venv) if venv.exists() else sys.executable
        proc = subprocess.run([python, str(sync)], cwd=root, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(
                f"note: scripts/sync_setup_cells.py did not run ({last}); the setup cells' addresses were "
                "replaced as text. After `bash scripts/setup_env.sh`, check them with "
                "`.venv/bin/python scripts/sync_setup_cells.py --check`.",
                file=sys.stderr,
            )
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", nargs="?", help="OWNER/REPO or https://github.com/OWNER/REPO")
    parser.add_argument("--show", action="store_true", help="print the address and what derives from it")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    old = current_url(args.root)
    if args.show or not args.repository:
        print(f"repository: {old}\nbook (GitHub Pages): {book_address.pages_url(old)}\nissues: {old}/issues")
        return 0 if args.show else 2
    try:
        new = normalise(args.repository)
    except ValueError as exc:
        parser.error(str(exc))
    if new == old:
        print(f"already {new}; nothing to change")
        return 0
    changed = set_repository(new, args.root)
    print(f"{old} -> {new}")
    for path in changed:
        print(f"  updated {path.relative_to(args.root) if path.is_relative_to(args.root) else path}")
    print("review with `git diff`, then commit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
