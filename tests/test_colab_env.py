"""The chapters in an environment built from Colab's pinned package versions, set up by their own setup cells.

``scripts/colab_env.py`` builds (once, cached) a virtual environment from ``tests/colab/colab-cpu.txt``,
the package list Google publishes for Colab's CPU runtime: numpy 2.1.3, transformers 5.15, IPython 7.34,
ipykernel 6.17, ipywidgets 7.7.1, Sphinx 8.2.3 and the rest at Colab's versions. Two differences, both
forced by this machine: its Python (Colab runs 3.13) and its torch CPU build (Colab's 2.11.0+cpu wheel is
for Python 3.13). Each test run makes a throw-away overlay on top of it (installs land there; the cached
base stays as Colab ships it). Then:

* ``test_setup_cells_change_nothing_colab_has``: every chapter's setup-cell install line runs (the
  repository's address replaced by a clone of the committed HEAD, GitHub being unreachable here), and no
  package the environment had before changes version; a new package that Colab also has must come at
  Colab's version. The install times are printed (the first line installs everything; later ones find it
  installed).
* ``test_chapter_runs_in_colab``: chapters (``COLAB_ENV_CHAPTERS``: comma-separated paths, or ``all``;
  default: chapter 1, which loads SmolLM2 and MiniLM and has a live explorer, chapter 5, which trains
  small models and has one, and the scoreboard; found by slug and role, ``book_toc``) run in a kernel of
  that environment from an empty working directory, with ``google.colab`` importable so the setup cell
  really runs, and every ``explore_live`` explorer's controls moved once (``anatomy.book.drive_live``) under
  Colab's ipywidgets 7.
  ``COLAB_ENV_NOTEBOOKS=DIR`` takes the notebooks from DIR instead of chapters/ (e.g. copies transformed by
  scripts/sync_setup_cells.py).

Cost: the first run builds the base environment (a few minutes, mostly downloads); later runs reuse it.
SmolLM2's converted weights are kept in the environment's cache folder between runs, as a reader's are
between chapters.

Each chapter run is also that chapter's second execution for the determinism check: with
``ANATOMY_SECOND_RUNS`` set (scripts/run_tests.sh), its glued values are saved there and compared after
the build with the build's (tests/test_determinism.py), so tests/test_colab_style.py does not run it again.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import book_toc  # _ext/ is on sys.path (tests/conftest.py): the pages of _toc.yml
import pytest

ROOT = Path(__file__).resolve().parents[1]
# by slug and by role, not by number: inserting a chapter changes none of the three
DEFAULT_CHAPTERS = [
    f"{book_toc.chapter('three_families', ROOT)}.ipynb",
    f"{book_toc.chapter('order_without_positions', ROOT)}.ipynb",
    f"{book_toc.scoreboard(ROOT)}.ipynb",
]

pytestmark = [pytest.mark.book, pytest.mark.slow]


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


colab_env = _module("colab_env", ROOT / "scripts" / "colab_env.py")
book_report = _module("book_report", ROOT / "scripts" / "book_report.py")

STARTUP = """\
# Colab imports google.colab in every kernel before the first cell; the chapters' setup cells test for it.
import google.colab
"""
STUB = '"""Stand-in for Colab\'s google.colab package (tests/test_colab_env.py): importable, and empty."""\n'

RUNNER = """\
import json, sys, time
sys.path.insert(0, {ext!r})
import nbclient_poll
nbclient_poll.apply()
import nbformat
from nbclient import NotebookClient
nb = nbformat.read({nb!r}, as_version=4)
client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={{"metadata": {{"path": {cwd!r}}}}})
times = []
with client.setup_kernel():
    for i, cell in enumerate(nb.cells):
        t = time.perf_counter()
        client.execute_cell(cell, i)
        times.append(time.perf_counter() - t)
nbformat.write(nb, {out!r})
print(json.dumps(times))
"""


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _chapters() -> list[str]:
    wanted = os.environ.get("COLAB_ENV_CHAPTERS", ",".join(DEFAULT_CHAPTERS)).strip()
    if wanted == "all":
        return [str(p.relative_to(ROOT)) for p in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))]
    return [c for c in wanted.split(",") if c]


def _notebook_path(chapter: str) -> Path:
    where = os.environ.get("COLAB_ENV_NOTEBOOKS")
    return Path(where) / Path(chapter).name if where else ROOT / chapter


def _install_line(setup: str) -> str:
    lines = [ln.strip() for ln in setup.splitlines() if "pip install" in ln]
    assert len(lines) == 1, f"expected one install line in the setup cell, got {lines}"
    return lines[0]


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git repository to clone the committed package from")
    t0 = time.perf_counter()
    # one builder at a time (base_env locks): scripts/run_tests.sh runs this file in two pytest-xdist
    # workers, beside tests/test_widgets.py, which asks for the same environment
    base = colab_env.base_env(log=print)
    base_s = time.perf_counter() - t0
    tmp = tmp_path_factory.mktemp("colab_env")
    clone = tmp / "repo"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{ROOT}", str(clone)], check=True)
    overlay = colab_env.overlay_env(base, tmp / "overlay")
    ipython_dir = tmp / "ipython"
    (ipython_dir / "profile_default" / "startup").mkdir(parents=True)
    (ipython_dir / "profile_default" / "startup" / "00-fake-colab.py").write_text(STARTUP)
    # a real (empty) package, so that importlib.util.find_spec("google.colab") works as in Colab
    # (accelerate and huggingface_hub ask); `google` stays a namespace package
    stub = colab_env._site(overlay) / "google" / "colab"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(STUB)
    cache = colab_env.cache_root() / "anatomy-cache"  # converted SmolLM2 weights, kept between runs
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "ANATOMY_RESULTS", "PYTHONHOME")
    }
    env.update(
        PATH=f"{overlay / 'bin'}:{os.environ.get('PATH', '')}",
        VIRTUAL_ENV=str(overlay),
        IPYTHONDIR=str(ipython_dir),
        JUPYTER_DATA_DIR=str(tmp / "jupyter-data"),
        JUPYTER_PATH="",
        ANATOMY_CACHE=str(cache),
        OMP_WAIT_POLICY="PASSIVE",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        MPLBACKEND="module://matplotlib_inline.backend_inline",
    )
    env.pop("MPLBACKEND")
    print(f"colab env: base ready in {base_s:.0f} s ({base.name}), overlay {overlay}")
    return {
        "base": base,
        "overlay": overlay,
        "clone": clone,
        "env": env,
        "tmp": tmp,
        "before": colab_env.versions(overlay),
    }


def book_distribution() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["name"]


def _local(line: str, clone: Path) -> str:
    """The install line with the repository's GitHub address replaced by the local clone of HEAD."""
    new = re.sub(r'"([\w.-]+)\[([\w,]+)\] @ git\+https://[^"]+"', rf'"\1[\2] @ file://{clone}"', line)
    assert new != line, f"no '<package>[...] @ git+https://...' requirement in {line!r}"
    return new


def test_setup_cells_change_nothing_colab_has(colab):
    pins = colab_env.read_pins()
    lines: dict[str, list[str]] = {}  # install line -> the chapters whose setup cell runs it
    for path in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(_notebook_path(str(path.relative_to(ROOT))).read_text(encoding="utf-8"))
        setup = _source(next(c for c in nb["cells"] if c["cell_type"] == "code"))
        line = _install_line(setup)
        assert line.startswith("!"), f"{path.name}: the install line must be a shell line: {line!r}"
        lines.setdefault(line, []).append(path.stem[:2])
    times = {}
    for line, chapters in lines.items():  # each distinct line once (several chapters share one)
        t = time.perf_counter()
        proc = subprocess.run(
            ["bash", "-c", _local(line, colab["clone"])[1:]],
            env=colab["env"],
            cwd=colab["tmp"],
            capture_output=True,
            text=True,
        )
        times["chapters " + ",".join(chapters)] = round(time.perf_counter() - t, 1)
        assert proc.returncode == 0, f"chapters {chapters}: {line}\n{proc.stderr[-3000:]}"
    print("setup-cell install times (s), first line from scratch:", json.dumps(times))
    before, after = colab["before"], colab_env.versions(colab["overlay"])
    changed = {n: f"{before[n]} -> {after.get(n)}" for n in before if after.get(n) != before[n]}
    assert not changed, f"the setup cells changed packages Colab has: {changed}"
    added = {n: v for n, v in after.items() if n not in before}
    off_colab = {n: f"Colab {pins[n]}, installed {v}" for n, v in added.items() if n in pins and pins[n] != v}
    assert not off_colab, f"the setup cells installed other versions of packages Colab has: {off_colab}"
    ours = colab_env.normalize(book_distribution())
    assert ours in added and "gguf" in added, f"installed: {sorted(added)}"
    unwanted = sorted(n for n in added if n.startswith(("jupyter-book", "sphinx", "myst")))
    assert not unwanted, f"the setup cells installed book-building packages: {unwanted}"
    print("packages the setup cells added:", json.dumps(added))


@pytest.mark.parametrize("chapter", _chapters())
def test_chapter_runs_in_colab(chapter, colab, tmp_path):
    source = _notebook_path(chapter)
    if not source.exists():
        pytest.skip(f"{source} does not exist")
    workdir = tmp_path / "content"  # Colab's /content: nothing in it but the notebook
    workdir.mkdir()
    nb = json.loads(source.read_text(encoding="utf-8"))
    cells = []
    for k, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            cell = dict(cell, outputs=[], execution_count=None)
            if not any(c["cell_type"] == "code" for c in cells):  # the setup cell
                cell["source"] = re.sub(
                    r'git\+https://[^"@]+@[\w./-]+', f"file://{colab['clone']}", _source(cell)
                )
        cells.append(cell)
        if cell["cell_type"] == "code" and "explore_live(" in _source(cell):
            cells.append(
                {
                    "cell_type": "code",
                    "metadata": {},
                    "outputs": [],
                    "execution_count": None,
                    "id": f"drive{k}",
                    "source": "from anatomy import book as _b\nprint('DRIVEN', _b.drive_live())",
                }
            )
    cells.append(
        {
            "cell_type": "code",
            "metadata": {},
            "outputs": [],
            "execution_count": None,
            "id": "where",
            "source": "import anatomy, ipywidgets, IPython\n"
            "print('WHERE', anatomy.__file__, ipywidgets.__version__, IPython.__version__)",
        }
    )
    nb["cells"] = cells
    nb_path = workdir / source.name
    nb_path.write_text(json.dumps(nb), encoding="utf-8")
    out = tmp_path / "executed.ipynb"
    runner = RUNNER.format(ext=str(ROOT / "_ext"), nb=str(nb_path), cwd=str(workdir), out=str(out))
    t = time.perf_counter()
    proc = subprocess.run(
        [str(colab["overlay"] / "bin" / "python"), "-c", runner],
        cwd=workdir,
        env=colab["env"],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t
    assert proc.returncode == 0, f"{chapter} failed in the Colab environment:\n{proc.stderr[-5000:]}"
    times = json.loads(proc.stdout.strip().splitlines()[-1])
    executed = json.loads(out.read_text(encoding="utf-8"))

    def text(cell):
        return "".join(
            o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
            for o in cell.get("outputs", [])
            if o.get("output_type") == "stream"
        )

    where = re.search(r"WHERE (\S+) (\S+) (\S+)", text(executed["cells"][-1]))
    assert where, "the last cell printed nothing"
    assert Path(where.group(1)).resolve().is_relative_to(colab["overlay"].resolve()), (
        f"anatomy came from {where.group(1)}, not from the setup cell's install"
    )
    assert where.group(2) == colab_env.read_pins()["ipywidgets"], f"ipywidgets {where.group(2)}"
    live = sum(
        "explore_live(" in _source(c)
        for c in nb["cells"]
        if c["cell_type"] == "code" and not _source(c).startswith("from anatomy import book as _b")
    )
    driven = sum(text(c).count("DRIVEN [{") for c in executed["cells"])
    assert driven == live, f"{chapter}: {live} explore_live cells, {driven} driven"
    setup_index = next(i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code")
    print(
        f"{chapter}: {seconds:.0f} s in the Colab environment (setup cell {times[setup_index]:.1f} s, "
        f"{live} live explorers driven, ipywidgets {where.group(2)}, IPython {where.group(3)})"
    )
    if not os.environ.get("COLAB_ENV_NOTEBOOKS"):
        # This is also the chapter's second execution (of the committed HEAD, cloned): after the build,
        # tests/test_determinism.py compares what it glued with the build's values when the build ran the
        # same code, and tests/test_colab_style.py skips the chapter (run_tests.sh sets ANATOMY_SECOND_RUNS).
        import nbformat

        book_report.save_second_run(
            nbformat.read(out, as_version=4), chapter, colab["clone"], by="tests/test_colab_env.py"
        )
