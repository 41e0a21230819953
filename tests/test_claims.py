"""The claims registry (anatomy.claims): keys carry the chapter's slug, never its number; the number comes
from the chapter's place in _toc.yml (or, in an installed wheel, from the index setup.py writes from it), so
a chapter inserted before others renames no key, no claims file and no test."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from anatomy import claims
from anatomy.experiments import answer

ROOT = Path(__file__).resolve().parents[1]
CLAIMS_DIR = ROOT / "anatomy" / "claims"
TOC_TEXT = (ROOT / "_toc.yml").read_text(encoding="utf-8")


@pytest.fixture
def toc_from(monkeypatch):
    """Point anatomy.claims at another _toc.yml and/or index (None: absent); its cache is cleared around."""

    def use(toc: Path | None, index: Path | None = None):
        monkeypatch.setattr(claims, "TOC", toc if toc is not None else ROOT / "no_such_toc.yml")
        monkeypatch.setattr(claims, "INDEX", index if index is not None else ROOT / "no_such_index.json")
        claims.chapters.cache_clear()

    yield use
    claims.chapters.cache_clear()


def _declared_keys(path: Path) -> list[str]:
    """The keys that a claims module passes to claim(...), read from its source."""
    keys = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "claim" and node.args:
            keys.append(node.args[0].value)
    return keys


def _notebook_keys(path: Path) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    return re.findall(r"claims\.(?:check|get)\(\s*[\"']([^\"']+)[\"']", code)


def test_chapters_are_numbered_by_their_place_in_the_table_of_contents():
    found = claims.chapters()
    pages = claims.toc_pages(TOC_TEXT)
    assert [c.page for c in found.values()] == pages and len(found) == len(pages) >= 13
    assert [c.number for c in found.values()] == list(range(1, len(pages) + 1))
    for slug, c in found.items():
        assert c.slug == slug and c.page.startswith("chapters/") and c.page.endswith("_" + slug)
        assert (ROOT / f"{c.page}.ipynb").exists(), c.page


def test_every_claims_module_belongs_to_a_chapter_and_its_keys_carry_the_slug():
    modules = sorted(p for p in CLAIMS_DIR.glob("*.py") if not p.name.startswith("_"))
    assert modules
    registered = {c.key for c in claims.all_claims()}
    declared = []
    for path in modules:
        assert path.stem in claims.chapters(), f"{path.name}: no chapter {path.stem!r} in _toc.yml"
        keys = _declared_keys(path)
        assert keys, f"{path.name} declares no claim"
        assert all(k.startswith(path.stem + ".") for k in keys), (path.name, keys)
        declared += keys
    assert sorted(declared) == sorted(registered)
    assert not any(re.match(r"ch\d\d\.", k) for k in registered), "a key still carries a chapter number"
    assert all(c.chapter == claims.chapters()[c.slug].number for c in claims.all_claims())


def test_each_notebook_checks_only_its_own_registered_claims():
    checked = 0
    for c in claims.chapters().values():
        for key in _notebook_keys(ROOT / f"{c.page}.ipynb"):
            claims.get(key)  # KeyError if the notebook names a claim that is not registered
            assert key.startswith(c.slug + "."), f"{c.page} checks {key}, a claim of another chapter"
            checked += 1
    assert checked >= 40


def test_claim_refuses_a_numbered_or_malformed_key():
    common = dict(seeds=("000",), claim="c", verdict="supported", measure="m")
    for bad in ("no_dot", "Three_families.x", "a.b.c", "", 7):
        with pytest.raises(ValueError, match="key"):
            claims.claim(bad, **common)
    with pytest.raises(TypeError):
        claims.claim("three_families.x", chapter=1, **common)  # the number is no longer stored
    with pytest.raises(ValueError, match="twice"):
        claims.claim(claims.all_claims()[0].key, **common)


def test_inserting_a_chapter_renames_nothing(tmp_path, toc_from):
    """A chapter inserted before chapter 2 in _toc.yml: every key stays, the later chapters' numbers move."""
    before = {c.key: c.chapter for c in claims.all_claims()}
    toc = tmp_path / "_toc.yml"
    first = claims.chapters()["three_families"].page
    toc.write_text(
        TOC_TEXT.replace(f"- file: {first}\n", f"- file: {first}\n      - file: chapters/02_new\n")
    )
    toc_from(toc)
    after = {c.key: c.chapter for c in claims.all_claims()}
    assert after.keys() == before.keys()
    assert all(after[k] == n + (n >= 2) for k, n in before.items())
    assert claims.chapters()["new"].number == 2 and answer.chapter_page("new") == "chapters/02_new"
    assert [c.key for c in claims.all_claims()][0].startswith("three_families.")


def test_the_wheels_index_gives_the_same_chapters_and_none_gives_slugs(tmp_path, toc_from):
    """Without _toc.yml (an installed wheel) the numbers come from the index that setup.py writes; with
    neither, claims have no number and the scoreboard names their chapters by slug."""
    from_toc = claims.chapters()
    index = tmp_path / "_chapters.json"
    index.write_text(json.dumps({"pages": claims.toc_pages(TOC_TEXT)}))
    toc_from(None, index)
    assert claims.chapters() == from_toc
    toc_from(None, None)
    assert claims.chapters() == {}
    registry = claims.all_claims()
    assert {c.chapter for c in registry} == {None} and registry == sorted(registry, key=lambda c: c.key)
    rows = [(c, "recorded", "replicated") for c in registry]
    assert ">record<" in answer.scoreboard_table(rows)
    point = {
        "lead": "L",
        "sentence": "S",
        "key": registry[0].key,
        "slug": registry[0].slug,
        "chapter": None,
        "verdict": registry[0].verdict,
    }
    assert "href" not in answer.answer_html([point]) and registry[0].slug in answer.answer_html([point])


def test_setup_py_writes_the_index_from_the_table_of_contents(tmp_path):
    """setup.py's build step, run on its own: the wheel's index lists the numbered chapters of _toc.yml."""
    import importlib.util

    from setuptools import Distribution

    spec = importlib.util.spec_from_file_location("_setup_for_tests", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not as __main__: defines the build step, runs no setup()
    cmd = module.BuildPyWithChapters(Distribution({"packages": []}))
    cmd.initialize_options()
    cmd.build_lib = str(tmp_path)
    cmd.finalize_options()
    cmd.run()
    written = json.loads((tmp_path / "anatomy" / "claims" / "_chapters.json").read_text(encoding="utf-8"))
    assert written["pages"] == claims.toc_pages(TOC_TEXT)
