#!/usr/bin/env python3
"""Strip outputs, execution counts and editor metadata from notebooks, in place (standard library only).

Chapters are stored without outputs: the book build executes them, and diffs stay readable.

    python3 scripts/strip_outputs.py                     # every chapters/*.ipynb
    python3 scripts/strip_outputs.py path/to/a.ipynb dir/ # given notebooks, or every notebook in a folder
    python3 scripts/strip_outputs.py --check             # change nothing; exit 1 if any needs stripping

Kept: cell sources, cell ids, cell tags and other book metadata (`tags`, `mystnb`, `editable`,
`slideshow`), the kernel spec, and the language name. Removed: outputs, execution counts, timing and
collapse state, widget state, and the metadata that Colab, VS Code and JupyterLab add.

Why not nbstripout: on the stripped chapters ``nbstripout --keep-id`` writes the same bytes, but it works
from a list of keys to remove, so a notebook saved from Colab keeps Colab's cell metadata (``colab``,
``id``, ``outputId``, ``executionInfo``), VS Code's ``vscode``, the notebook's ``colab`` and
``accelerator`` and ``language_info.version`` unless each is named with ``--extra-keys``; without
``--keep-id`` it renumbers the cell ids, which the chapters keep. This script keeps a list of what the book
uses instead (checked with nbstripout 0.9.1), and needs nothing beyond the standard library.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CELL_METADATA_KEPT = {"tags", "mystnb", "editable", "deletable", "slideshow", "raw_mimetype"}
NOTEBOOK_METADATA_KEPT = {"kernelspec", "language_info", "mystnb", "jupytext"}
LANGUAGE_INFO_KEPT = {
    "name",
    "codemirror_mode",
    "file_extension",
    "mimetype",
    "nbconvert_exporter",
    "pygments_lexer",
}


def strip(nb: dict) -> dict:
    """Return the notebook `nb` (nbformat 4 JSON) without outputs and editor noise."""
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {})
        cell["metadata"] = {k: v for k, v in meta.items() if k in CELL_METADATA_KEPT}
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        else:
            cell.pop("outputs", None)
            cell.pop("execution_count", None)
            if cell.get("attachments") == {}:
                del cell["attachments"]
    meta = nb.get("metadata", {})
    kept = {k: v for k, v in meta.items() if k in NOTEBOOK_METADATA_KEPT}
    if isinstance(kept.get("language_info"), dict):
        kept["language_info"] = {k: v for k, v in kept["language_info"].items() if k in LANGUAGE_INFO_KEPT}
    nb["metadata"] = kept
    return nb


def dumps(nb: dict) -> str:
    """Serialise like Jupyter does (one-space indent, sorted keys, real Unicode, final newline)."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def notebooks(paths: list[str]) -> list[Path]:
    if not paths:
        return sorted((ROOT / "chapters").glob("*.ipynb"))
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts))
        elif p.suffix == ".ipynb" and p.exists():
            found.append(p)
        else:
            raise SystemExit(f"strip_outputs.py: {p} is not a notebook or a folder")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", help="notebooks or folders (default: chapters/*.ipynb)")
    parser.add_argument("--check", action="store_true", help="report notebooks that need stripping; exit 1")
    args = parser.parse_args(argv)

    dirty = []
    for path in notebooks(args.paths):
        text = path.read_text(encoding="utf-8")
        try:
            nb = json.loads(text)
        except json.JSONDecodeError as exc:
            print(f"{path}: not valid JSON ({exc})", file=sys.stderr)
            return 2
        if nb.get("nbformat") != 4:
            print(f"{path}: nbformat {nb.get('nbformat')} is not supported (expected 4)", file=sys.stderr)
            return 2
        new = dumps(strip(nb))
        if new != text:
            dirty.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    verb = "needs stripping" if args.check else "stripped"
    for path in dirty:
        print(f"{verb}: {path}")
    return 1 if (args.check and dirty) else 0


if __name__ == "__main__":
    sys.exit(main())
