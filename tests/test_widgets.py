"""``book.explore_live`` in a real kernel, under ipywidgets 8 (JupyterLab; this environment) and 7 (Colab).

A notebook with several live explorers (sliders, drop-downs, a one-option control, a render that fails
for one value) runs in a fresh kernel through nbclient, with ``_ext/nbclient_poll.py`` applied as the book
build and the Colab tests apply it; after each explorer a cell moves its controls
(``book.drive_live``). ipywidgets 7.7.1 comes from the Colab-pinned environment of
``scripts/colab_env.py`` (built once and cached; tests/test_colab_env.py uses the same one).

The chapters' own explorers are driven in tests/test_colab_env.py (Colab's ipywidgets 7) and in
tests/test_colab_style.py (this environment's ipywidgets 8), where the chapters run anyway.

Widget cells used to make nbclient wait for the whole cell timeout now and then (nbclient issue 312: the
kernel's reply was there, the asynchronous poll of the shell socket did not wake up; measured here: 1 run
in 4 of six explorer cells took the full 60 s timeout in one cell). With the poll in short slices no cell
may take more than `SLOW` seconds. A missed wake-up happens only sometimes, so a run without the fix can
pass this check; it is a guard, and the timings of every run are printed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLOW = 20.0  # seconds: a stalled cell takes the full timeout (60 s here)

pytestmark = [pytest.mark.book]

CELLS = [
    """\
import matplotlib.pyplot as plt
from anatomy import book
SEED = book.setup()

def render(depth, mask):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot(range(depth + 1), color=book.COLORS[mask])
    ax.set_title(f"{mask}, depth {depth}")
    return fig

def picky(k):
    if k == 3:
        raise ValueError("no frame for k=3")
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.bar([0], [k])
    return fig
""",
    'book.explore_live(render, depth=[1, 2, 4, 8], mask=["causal", "bidirectional", "prefix"]);',
    "w = book.explore_live(render, depth=[2], mask=['causal'])",  # one-option controls
    "print('RECORD', book.drive_live())",
    "book.explore_live(picky, k=[1, 2, 3]);",
    "try:\n    book.drive_live()\nexcept RuntimeError as exc:\n    print('FAILED', exc)",
    "print('EMPTY', book.drive_live())",
]

RUNNER = """\
import json, sys, time
sys.path.insert(0, {ext!r})
import nbclient_poll
nbclient_poll.apply()
import nbformat
from nbclient import NotebookClient
nb = nbformat.v4.new_notebook()
nb.cells = [nbformat.v4.new_code_cell(s) for s in json.loads({cells!r})]
client = NotebookClient(nb, timeout=60, kernel_name="python3")
times = []
with client.setup_kernel():
    for i, cell in enumerate(nb.cells):
        t = time.perf_counter()
        client.execute_cell(cell, i)
        times.append(round(time.perf_counter() - t, 2))
import ipywidgets
out = ["".join(o.get("text", "") for o in c.outputs if o.output_type == "stream") for c in nb.cells]
errors = [o.get("ename") for c in nb.cells for o in c.outputs if o.output_type == "error"]
print(json.dumps({{"times": times, "out": out, "errors": errors, "ipywidgets": ipywidgets.__version__}}))
"""


def _run(python: str, env: dict) -> dict:
    cells = json.dumps(CELLS)
    code = RUNNER.format(ext=str(ROOT / "_ext"), cells=cells)
    proc = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, env=env, timeout=900, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(result: dict, major: str) -> None:
    print(f"ipywidgets {result['ipywidgets']}: cell times {result['times']} s")
    assert result["ipywidgets"].startswith(major + "."), result["ipywidgets"]
    assert not result["errors"], result["errors"]
    record = result["out"][3]
    assert "RECORD [{" in record, record
    # two explorers: the 4 x 3 one (its first render, then last and first option of each control) and the
    # one-option one (its first render and one re-render per control)
    assert "'params': ['depth', 'mask'], 'renders': 5" in record, record
    assert "'params': ['depth', 'mask'], 'renders': 3" in record, record
    assert "FAILED explore_live: render failed for {'k': 3}: ValueError: no frame for k=3" in result["out"][5]
    assert result["out"][6].strip() == "EMPTY []"
    slow = [t for t in result["times"][1:] if t > SLOW]
    assert not slow, f"widget cells took {slow} s: the nbclient stall is back ({result['times']})"


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_WAIT_POLICY="PASSIVE", **extra)
    return env


@pytest.mark.slow
def test_explore_live_under_ipywidgets_8():
    pytest.importorskip("ipywidgets")
    _check(_run(sys.executable, _env()), "8")


@pytest.mark.slow
def test_explore_live_under_colab_ipywidgets_7(tmp_path):
    spec = importlib.util.spec_from_file_location("colab_env", ROOT / "scripts" / "colab_env.py")
    colab_env = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(colab_env)
    base = colab_env.base_env(log=print)
    # the work tree's package on the path: this test is about explore_live, not about installing it
    env = _env(PYTHONPATH=str(ROOT), JUPYTER_DATA_DIR=str(tmp_path / "jupyter"), JUPYTER_PATH="")
    _check(_run(str(base / "bin" / "python"), env), "7")


CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_live_explorers_are_executed_by_the_build(chapter):
    """No explore_live cell is tagged skip-execution (scripts/sync_setup_cells.py removes the tag).

    The build runs them under ipywidgets 8, with _ext/nbclient_poll.py against the stall.
    """
    nb = json.loads(chapter.read_text(encoding="utf-8"))
    skipped = [
        i
        for i, c in enumerate(nb["cells"])
        if c["cell_type"] == "code"
        and "explore_live(" in "".join(c["source"])
        and "skip-execution" in c.get("metadata", {}).get("tags", [])
    ]
    assert not skipped, f"{chapter.name}: explore_live cells {skipped} are tagged skip-execution"
