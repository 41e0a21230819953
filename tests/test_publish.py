"""The book as a publication: one repository address, licences, citation, and a releasable package.

* ``scripts/set_repository.py OWNER/REPO`` run on a copy of the repository leaves no copy of the old
  address anywhere (links, badges, package metadata, citation, Colab setup cells), and everything the build
  derives (launch, repository and issue buttons, ``html_baseurl``) follows ``_config.yml``.
* LICENSE (MIT, the code) and LICENSE-TEXT (CC BY 4.0, the text); CITATION.cff valid against the Citation
  File Format schema; one version in pyproject.toml, CITATION.cff and the introduction's "How to cite".
* ``_ext/publish.py``'s pieces: the Pages address, author-year bibliography labels, chapter references,
  the print page for the PDF.
* (slow) ``python -m build`` of a clean clone of HEAD gives a wheel and an sdist that pass
  ``twine check --strict``; the wheel, installed into a fresh folder, runs a chapter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import book_toc  # _ext/ is on sys.path (tests/conftest.py): the one reader of _toc.yml
import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = "https://github.com/anatomy-book/why-decoder-only"


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


address = _module(ROOT / "_ext" / "book_address.py", "_book_address_for_tests")
set_repository = _module(ROOT / "scripts" / "set_repository.py", "_set_repository_for_tests")


def _config(root: Path = ROOT) -> dict:
    return yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))


def _project(root: Path = ROOT) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]


# ------------------------------------------------------------------------------------ the address


def test_pages_url_is_derived_from_the_repository():
    assert (
        address.pages_url("https://github.com/alice/why-decoder-only")
        == "https://alice.github.io/why-decoder-only/"
    )
    assert address.pages_url("https://github.com/Alice/Book/") == "https://alice.github.io/Book/"
    assert address.pages_url("https://github.com/alice/alice.github.io") == "https://alice.github.io/"
    for bad in (
        "http://github.com/a/b",
        "https://gitlab.com/a/b",
        "https://github.com/a",
        "https://github.com/a/b/c",
        "https://github.com/-a/b",
        "a/b",
    ):
        with pytest.raises(ValueError):
            address.pages_url(bad)


def test_set_repository_accepts_owner_repo_or_url():
    assert set_repository.normalise("alice/book") == "https://github.com/alice/book"
    assert set_repository.normalise("https://github.com/alice/book/") == "https://github.com/alice/book"
    with pytest.raises(ValueError):
        set_repository.normalise("not a repo")


def _copy_of_the_repository(dest: Path) -> Path:
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """A copy of the repository after `set_repository.py someone-else/another-book`, and the old address."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git to list the repository's files")
    copy = _copy_of_the_repository(tmp_path_factory.mktemp("moved"))
    old = set_repository.current_url(copy)
    proc = subprocess.run(
        [sys.executable, "scripts/set_repository.py", "someone-else/another-book"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return copy, old


def test_changing_the_address_leaves_no_copy_of_the_old_one(moved):
    copy, old = moved
    new = "https://github.com/someone-else/another-book"
    assert set_repository.current_url(copy) == new
    olds = [old, address.pages_url(old).rstrip("/"), old.removeprefix("https://")]
    left = []
    for path in copy.rglob("*"):
        if path.is_file() and path.suffix in set_repository.TEXT_SUFFIXES:
            text = path.read_text(encoding="utf-8", errors="replace")
            left += [f"{path.relative_to(copy)}: {o}" for o in olds if o in text]
    assert not left, f"copies of the old address left after set_repository.py: {left}"
    project = _project(copy)
    assert project["urls"]["Repository"] == new
    assert project["urls"]["Homepage"] == "https://someone-else.github.io/another-book/"
    assert project["urls"]["Issues"] == new + "/issues"
    cff = yaml.safe_load((copy / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["repository-code"] == new and cff["url"] == "https://someone-else.github.io/another-book/"


def test_changing_the_address_changes_every_setup_cell(moved):
    copy, _ = moved
    chapters = sorted((copy / "chapters").glob("*.ipynb"))
    assert chapters
    for nb_path in chapters:
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
        setup = next("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        assert "git+https://github.com/someone-else/another-book@" in setup, f"{nb_path.name}: {setup}"
    sync = copy / "scripts" / "sync_setup_cells.py"
    if sync.exists():  # the setup cells are exactly the template's, for the new address
        proc = subprocess.run(
            [sys.executable, str(sync), "--check"], cwd=copy, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_changing_the_address_changes_every_button_and_the_base_url(moved):
    """What Jupyter Book hands Sphinx from the moved _config.yml: buttons and base URL follow it."""
    pytest.importorskip("jupyter_book")
    from jupyter_book.config import get_final_config

    copy, _ = moved
    config, *_ = get_final_config(
        user_yaml=copy / "_config.yml", sourcedir=copy, cli_config={"latex_individualpages": False}
    )
    theme = config["html_theme_options"]
    assert theme["repository_url"] == "https://github.com/someone-else/another-book"
    assert theme["use_repository_button"] and theme["use_issues_button"]
    assert theme["launch_buttons"]["colab_url"]
    assert not config.get("html_baseurl")  # empty here: _ext/publish.py derives it at build time ...
    publish = _module(copy / "_ext" / "publish.py", "_publish_moved")

    class Conf:  # ... from the repository url, as Sphinx's config-inited sees it
        html_theme_options = theme
        html_baseurl = ""

    publish._config_inited(None, Conf)
    assert Conf.html_baseurl == "https://someone-else.github.io/another-book/"


def test_the_address_is_set_in_one_place():
    """Every copy in this repository agrees with _config.yml (and the README says how to change it)."""
    url = _config()["repository"]["url"].rstrip("/")
    assert _project()["urls"]["Repository"] == url
    assert _project()["urls"]["Homepage"] == address.pages_url(url)
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["repository-code"] == url and cff["url"] == address.pages_url(url)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "scripts/set_repository.py OWNER/REPO" in readme
    for path in [ROOT / "README.md", ROOT / "intro.md", ROOT / "CONTRIBUTING.md"]:
        for other in re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", path.read_text(encoding="utf-8")):
            owner_repo = other.removeprefix("https://github.com/")
            if owner_repo.split("/")[0] == url.split("/")[-2]:
                assert other.rstrip(".") == url or other.startswith(url), f"{path.name}: {other} is not {url}"


# ---------------------------------------------------------------------------- licences and citation


def test_licences():
    code = (ROOT / "LICENSE").read_text(encoding="utf-8")
    text = (ROOT / "LICENSE-TEXT").read_text(encoding="utf-8")
    assert code.startswith("MIT License") and "Permission is hereby granted" in code
    assert "Creative Commons Attribution 4.0 International Public License" in text
    assert "Section 1 -- Definitions." in text and "Section 8 -- Interpretation." in text  # the whole code
    project = _project()
    assert project["license"] == "MIT"
    assert set(project["license-files"]) == {"LICENSE", "LICENSE-TEXT"}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "CC BY 4.0" in readme and "MIT" in readme


def test_citation_file_is_valid_and_matches_the_package():
    pytest.importorskip("check_jsonschema", reason="pip install check-jsonschema (scripts/setup_env.sh does)")
    cff_path = ROOT / "CITATION.cff"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.citation-file-format",
            str(cff_path),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cff = yaml.safe_load(cff_path.read_text(encoding="utf-8"))
    project = _project()
    assert str(cff["version"]) == project["version"]
    assert set(cff["license"]) == {"MIT", "CC-BY-4.0"}
    intro = (ROOT / "intro.md").read_text(encoding="utf-8")
    assert "## How to cite" in intro and f"version {project['version']}" in intro
    assert "How to cite" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_citation_check_can_fail(tmp_path):
    pytest.importorskip("check_jsonschema")
    broken = tmp_path / "CITATION.cff"
    text = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    broken.write_text(text.replace("cff-version: 1.2.0", "cff-version: 1.2.0\ndate-released: yesterday"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.citation-file-format",
            str(broken),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0


def test_package_metadata():
    project = _project()
    assert project["name"] == "why-decoder-only"  # "anatomy" is another project on PyPI
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["requires-python"] == ">=3.11"
    assert "Programming Language :: Python :: 3.11" in project["classifiers"]
    assert {"Homepage", "Repository", "Issues"} <= set(project["urls"])


# ------------------------------------------------------------------------------ the build extension


@pytest.fixture(scope="module")
def publish():
    pytest.importorskip("sphinx")
    return _module(ROOT / "_ext" / "publish.py", "_publish_for_tests")


def test_bibliography_labels_are_author_year(publish):
    from pybtex.database import Entry, Person
    from pybtex.plugin import find_plugin

    def entry(key, authors, year):
        e = Entry("article", fields={"title": key, "year": year, "journal": "J"})
        e.persons["author"] = [Person(a) for a in authors]
        e.key = key
        return e

    entries = [
        entry("d", ["Devlin, Jacob", "Chang, Ming-Wei", "Lee, Kenton"], "2019"),
        entry("k", ["Kaplan, Jared", "McCandlish, Sam"], "2020"),
        entry("r", ["Radford, Alec"], "2018"),
        entry("b1", ["Brown, Tom", "Mann, Ben", "Ryder, Nick"], "2020"),
        entry("b2", ["Brown, Tom", "Other, Ann", "Third, Bo"], "2020"),
        entry("v", ["von Platen, Patrick"], "2021"),
    ]
    publish._register_bibliography_style()  # what the extension's setup() does
    style = find_plugin("pybtex.style.formatting", "authoryear")()
    labels = list(style.label_style.format_labels(entries))
    assert labels == [
        "Devlin et al., 2019",
        "Kaplan and McCandlish, 2020",
        "Radford, 2018",
        "Brown et al., 2020a",
        "Brown et al., 2020b",
        "von Platen, 2021",
    ]
    config = _config()["sphinx"]["config"]
    assert config["bibtex_default_style"] == "authoryear"
    assert config["bibtex_reference_style"] == "author_year"


def test_chapter_references_pattern(publish):
    found = [
        m.group(0)
        for m in publish._CHAPTER_REF.finditer(
            "chapter 6 looks; Chapter 2 ended; chapters 6 and 7; chapters 8-10; "
            "the chapter's end; chapter 1's"
        )
    ]
    assert found == ["chapter 6", "Chapter 2", "chapters 6 and 7", "chapters 8-10", "chapter 1"]


def test_the_print_page_holds_every_article_with_root_relative_links(publish, tmp_path):
    (tmp_path / "chapters").mkdir()
    page = (
        '<html><head><title>t</title><link href="{p}_static/x.css"></head><body>'
        '<article class="bd-article"><h1>{h}</h1><img src="{p}_images/a.png"></article></body></html>'
    )
    (tmp_path / "intro.html").write_text(page.format(p="", h="Intro"))
    (tmp_path / "chapters" / "01_a.html").write_text(page.format(p="../", h="One"))
    out = publish.print_page(tmp_path, ["intro", "chapters/01_a"])
    assert out.count('<article class="bd-article">') == 2
    assert out.index("Intro") < out.index("One")
    assert 'src="_images/a.png"' in out and "../" not in out
    assert "break-before: page" in out


# ------------------------------------------------------------------------------- the package itself


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """wheel and sdist built by `python -m build` from a clean clone of HEAD (no build isolation: offline)."""
    pytest.importorskip("build", reason="pip install build (scripts/setup_env.sh does)")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git to clone HEAD")
    base = tmp_path_factory.mktemp("dist")
    clone = base / "repo"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{ROOT}", str(clone)], check=True)
    out = base / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(clone)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return wheels[0], sdists[0], clone


@pytest.mark.slow
def test_wheel_and_sdist_pass_twine_check(dist):
    pytest.importorskip("twine", reason="pip install twine (scripts/setup_env.sh does)")
    wheel, sdist, clone = dist
    version = tomllib.loads((clone / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert wheel.name == f"why_decoder_only-{version}-py3-none-any.whl"
    proc = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "anatomy/__init__.py" in names and not any(n.startswith(("tests/", "chapters/")) for n in names)
    assert any(n.endswith("licenses/LICENSE-TEXT") for n in names)
    # the chapters' order, which setup.py writes from _toc.yml (anatomy.claims.chapters() reads it in Colab)
    index = json.loads(zipfile.ZipFile(wheel).read("anatomy/claims/_chapters.json"))
    toc = yaml.safe_load((clone / "_toc.yml").read_text(encoding="utf-8"))  # a reader other than setup.py's
    numbered = [c["file"] for part in toc["parts"] if part.get("numbered") for c in part["chapters"]]
    assert index["pages"] == book_toc.chapters(clone) == numbered and index["pages"]


def wheel_chapter() -> str:
    """The chapter run on the installed wheel (``PUBLISH_CHAPTER``; tests/test_colab_style.py asks too)."""
    return os.environ.get("PUBLISH_CHAPTER") or f"{book_toc.chapter('attention_rank', ROOT)}.ipynb"


@pytest.mark.slow
def test_the_installed_wheel_runs_a_chapter(dist, tmp_path):
    """The wheel installed (no editable link, no work tree) in a fresh folder; one chapter run on it."""
    pytest.importorskip("nbclient")
    wheel, _, clone = dist
    site = tmp_path / "site"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            "--target",
            str(site),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # one of the quickest chapters, and one that loads both pretrained models through the package
    chapter = wheel_chapter()
    nb = json.loads((clone / chapter).read_text(encoding="utf-8"))
    # after each live explorer a cell moves its controls, as tests/test_colab_style.py does: this run is the
    # chapter's second execution for the determinism check (saved below), so that file skips the chapter
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
    nb["cells"].append(
        {
            "cell_type": "code",
            "metadata": {},
            "execution_count": None,
            "outputs": [],
            "source": "import anatomy, importlib.metadata as m\nfrom anatomy import claims\n"
            "print('FROM', anatomy.__file__, m.version('why-decoder-only'))\n"
            "print('CHAPTERS', len(claims.chapters()))",
        }
    )
    work = tmp_path / "work"  # nothing in it but the notebook
    work.mkdir()
    (work / "chapter.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
    runner = (
        f"import sys\nsys.path.insert(0, {str(ROOT / '_ext')!r})\n"
        "import nbclient_poll\nnbclient_poll.apply()  # no whole-timeout stall after a missed wake-up\n"
        "import nbformat\nfrom nbclient import NotebookClient\n"
        "nb = nbformat.read('chapter.ipynb', as_version=4)\n"
        "resources = {'metadata': {'path': '.'}}\n"
        "NotebookClient(nb, timeout=600, kernel_name='python3', resources=resources).execute()\n"
        "nbformat.write(nb, 'executed.ipynb')\n"
        "print(''.join(o.get('text', '') for o in nb.cells[-1].outputs))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", runner], cwd=work, env=env, capture_output=True, text=True, timeout=900
    )
    log = (run.stderr or run.stdout)[-4000:]
    assert run.returncode == 0, f"{chapter} failed on the installed wheel:\n{log}"
    where = re.search(r"FROM (\S+) (\S+)", run.stdout)
    assert where, run.stdout[-2000:]
    assert Path(where.group(1)).resolve().is_relative_to(site.resolve()), f"imported from {where.group(1)}"
    assert where.group(2) == _project(clone)["version"]
    numbered = re.search(r"CHAPTERS (\d+)", run.stdout)  # from the wheel's index: no _toc.yml there
    assert numbered and int(numbered.group(1)) >= 13, run.stdout[-2000:]
    import nbformat

    executed = nbformat.read(work / "executed.ipynb", as_version=4)
    driven = sum(
        "DRIVEN [{" in "".join(o.get("text", "") for o in c.get("outputs", [])) for c in executed.cells
    )
    assert driven == live, f"{chapter}: {live} live explorers, {driven} driven"
    # with ANATOMY_SECOND_RUNS set (scripts/run_tests.sh), tests/test_determinism.py compares what this run
    # glued with the build's values after the build
    _module(ROOT / "scripts" / "book_report.py", "_book_report_for_publish").save_second_run(
        executed, chapter, clone, by="tests/test_publish.py (the installed wheel)"
    )


def test_figures_without_a_caption_paragraph_have_caption_metadata():
    """scripts/figure_captions.py has been run: the listed figure cells carry their caption and alt text."""
    figures = _module(ROOT / "scripts" / "figure_captions.py", "_figure_captions_for_tests")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "figure_captions.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, (
        f"{proc.stdout}run `python3 scripts/figure_captions.py` (it only adds cell metadata)"
    )
    for rel, cells in figures.FIGURES.items():
        for name, alt, caption in cells.values():
            assert name.startswith("fig-") and len(alt) > 40 and len(caption) > 60, (rel, name)
            assert not re.search(r"\d+\.\d{2,}", caption), f"{name}: a measured number typed into a caption"


def test_chapter_numbers_follow_the_table_of_contents():
    """With numbered chapters the reader sees each chapter's number from its place in _toc.yml, and the
    build links "chapter N" to the chapter numbered N there; the prose writes "chapter N" after the file's
    NN_ prefix. Both must agree, or "chapter 12" in the text would name another chapter than the one headed
    "12." (rename the files, or reorder _toc.yml, and fix the prose)."""
    numbered = book_toc.chapters(ROOT)  # the numbered parts' chapters (tests/test_toc.py checks it)
    assert numbered, "no chapter in _toc.yml"
    wrong = []
    for position, file in enumerate(numbered, start=1):
        m = re.match(r"chapters/(\d\d)_", file)
        if m and int(m.group(1)) != position:
            wrong.append(f"{file} is chapter {position} in _toc.yml")
    assert not wrong, "; ".join(wrong)


def test_check_site_wants_a_colab_edition_without_myst(tmp_path):
    """scripts/check_site.py fails a chapter without a clean edition."""
    spec = importlib.util.spec_from_file_location("_check_site", ROOT / "scripts" / "check_site.py")
    check_site = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_site)
    root, site = tmp_path / "repo", tmp_path / "html"
    (root / "chapters").mkdir(parents=True)
    shutil.copy(ROOT / "_config.yml", root / "_config.yml")
    (root / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: chapters/01_x\n")
    cells = [
        {"cell_type": "markdown", "metadata": {}, "source": "# X"},
        {"cell_type": "code", "metadata": {}, "source": "1", "outputs": [], "execution_count": None},
    ]
    (root / "chapters" / "01_x.ipynb").write_text(json.dumps({"cells": cells}))
    (site / "chapters").mkdir(parents=True)
    (site / "_sources" / "chapters").mkdir(parents=True)
    for page in ("index.html", "intro.html", "chapters/01_x.html"):
        (site / page).write_text("<html></html>")
    executed = [cells[0], dict(cells[1], outputs=[{"output_type": "stream", "name": "stdout", "text": "1"}])]
    (site / "_sources" / "chapters" / "01_x.ipynb").write_text(json.dumps({"cells": executed}))

    def colab_problems():
        return [p for p in check_site.problems(site, root) if "Colab" in p or "MyST" in p]

    assert len(colab_problems()) == 1 and "no Colab edition colab/chapters/01_x.ipynb" in colab_problems()[0]
    (site / "colab" / "chapters").mkdir(parents=True)
    edition = site / "colab" / "chapters" / "01_x.ipynb"
    for myst in ("Ratio {glue:text}`r`.", "As {cite:p}`key` found.", ":::{dropdown} Solution 1\nx\n:::"):
        edition.write_text(json.dumps({"cells": [dict(cells[0], source=myst), cells[1]]}))
        assert len(colab_problems()) == 1 and "still holds MyST" in colab_problems()[0], myst
    clean = dict(cells[0], source="Ratio 0.5 ([Devlin, 2019](u)).")
    edition.write_text(json.dumps({"cells": [clean, cells[1]]}))
    assert colab_problems() == []
