"""Every ``anatomy.x.y`` a docstring, the README, CONTRIBUTING.md or ARCHITECTURE.md names in backquotes
(``:mod:``/``:func:`` roles included) exists: a module moved or renamed leaves no reference behind."""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"`+~?(anatomy(?:\.[A-Za-z_]\w*)+)`+")


def _resolves(name: str) -> bool:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def _references():
    files = sorted((ROOT / "anatomy").rglob("*.py"))
    files += [ROOT / name for name in ("README.md", "CONTRIBUTING.md", "ARCHITECTURE.md")]
    for path in files:
        for match in NAME.finditer(path.read_text(encoding="utf-8")):
            yield path.relative_to(ROOT).as_posix(), match.group(1)


def test_the_scan_finds_references():
    refs = list(_references())
    assert len(refs) > 20  # not vacuous: docstrings name many modules
    assert ("anatomy/kernels/tiled.py", "anatomy.masks") in refs
    assert not _resolves("anatomy.plots") and not _resolves("anatomy.cost.no_such_name")


@pytest.mark.parametrize("where,name", sorted(set(_references())))
def test_named_module_or_object_exists(where, name):
    assert _resolves(name), f"{where} names {name}, which does not exist"
