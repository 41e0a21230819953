"""Every `module.name` that the package, the chapters and the benches use names something that exists.

A function moved to another module (as when a module is split) leaves callers that still say
`old_module.name`; ruff cannot see that, and a caller that runs only in one chapter, or only in the
scoreboard's quick check of a claim, would fail only there. This reads the source instead: wherever a name
is bound to an `anatomy` module by an import (`from anatomy.experiments import capacity`,
`import anatomy.cost as cost`), every `capacity.x` read from it must be an attribute of that module.
"""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest
from test_layout import from_module

ROOT = Path(__file__).resolve().parents[1]


def _sources() -> list[tuple[str, str]]:
    out = []
    for folder in ("anatomy", "benches", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            out.append((str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")))
    for path in [*sorted((ROOT / "chapters").glob("*.ipynb")), *sorted(ROOT.glob("*.ipynb"))]:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        # IPython magics and shell lines are not Python: each becomes `pass` at its own indentation
        lines = [
            ln[: len(ln) - len(ln.lstrip())] + "pass" if ln.lstrip().startswith(("%", "!")) else ln
            for cell in code
            for ln in cell.splitlines()
        ]
        out.append((str(path.relative_to(ROOT)), "\n".join(lines)))
    return out


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _module_names(tree: ast.AST, package: str) -> dict[str, str]:
    """Local name -> anatomy module it is bound to, for every import in the tree."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("anatomy") and a.asname:
                    bound[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            base = from_module(node, package)  # relative imports inside the package as absolute names
            if not base.startswith("anatomy"):
                continue
            for a in node.names:
                full = f"{base}.{a.name}"
                if _is_module(full):
                    bound[a.asname or a.name] = full
    return bound


def _uses(path: str, text: str) -> list[tuple[str, str, str, int]]:
    """(local name, module, attribute, line) for every `name.attr` read where name is an anatomy module."""
    tree = ast.parse(text)
    package = ".".join(Path(path).with_suffix("").parts[:-1]) if path.startswith("anatomy") else ""
    bound = _module_names(tree, package)
    uses = [
        (node.value.id, bound[node.value.id], node.attr, node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in bound
        and isinstance(node.ctx, ast.Load)
    ]
    # `from anatomy.x import name` (lazy ones in function bodies and relative ones too) where name is not a
    # module itself
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (module := from_module(node, package)).startswith("anatomy"):
            uses += [
                (a.name, module, a.name, node.lineno)
                for a in node.names
                if a.name != "*" and not _is_module(f"{module}.{a.name}")
            ]
    return uses


SOURCES = _sources()


@pytest.mark.parametrize("path,text", SOURCES, ids=[p for p, _ in SOURCES])
def test_every_module_attribute_used_exists(path, text):
    missing = []
    for local, module, attr, line in _uses(path, text):
        if not hasattr(importlib.import_module(module), attr):
            missing.append(f"line {line}: {local}.{attr} ({module} has no {attr!r})")
    assert not missing, f"{path} uses names that do not exist:\n" + "\n".join(missing)


def test_the_check_sees_a_moved_name():
    # the failure this file exists for: a name that moved out of the module the caller imports
    text = "from anatomy.experiments import capacity\n\ncapacity.compute_optimal(1e21)\n"
    (use,) = _uses("anatomy/claims/x.py", text)
    assert use == ("capacity", "anatomy.experiments.capacity", "compute_optimal", 3)
    assert not hasattr(importlib.import_module(use[1]), use[2])
    lazy = "def f():\n    from anatomy.experiments.capacity import chinchilla_loss\n"
    (use,) = _uses("anatomy/claims/x.py", lazy)
    assert use[1:] == ("anatomy.experiments.capacity", "chinchilla_loss", 2)
    assert not hasattr(importlib.import_module(use[1]), use[2])
    # relative imports inside the package resolve too
    (use,) = _uses("anatomy/experiments/x.py", "from . import capacity\ncapacity.table_params(2, 1)\n")
    assert use[1] == "anatomy.experiments.capacity"
    (use,) = _uses("anatomy/claims/x.py", "from ..experiments.capacity import compute_optimal\n")
    assert use[1:3] == ("anatomy.experiments.capacity", "compute_optimal")
