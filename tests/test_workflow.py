"""The publishing workflow (.github/workflows/book.yml) and the local script that does what it does.

* Every workflow file validates against GitHub's workflow schema (``check-jsonschema --builtin-schema
  vendor.github-workflows``; the schema ships inside the check-jsonschema package, nothing is downloaded),
  and a broken copy is rejected, so the check can fail.
* The workflow does what the README promises: it sets up with ``scripts/setup_env.sh`` and PyTorch's CPU
  index, caches the environment and the model conversion cache, builds and tests with
  ``scripts/deploy_build.sh`` (the same command a maintainer runs locally, so both produce the same
  ``_build/html``), uploads ``_build/html``, and deploys with GitHub's official Pages actions only on a push
  to main: a pull request builds but does not deploy.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import book_toc  # _ext/ is on sys.path (tests/conftest.py): the pages of _toc.yml
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
BOOK = ROOT / ".github" / "workflows" / "book.yml"


def _check_jsonschema(schema: str, *files: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("check_jsonschema", reason="pip install check-jsonschema (scripts/setup_env.sh does)")
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _workflow() -> dict:
    data = yaml.safe_load(BOOK.read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as the boolean True
    if True in data:
        data["on"] = data.pop(True)
    return data


def _steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def _uses(job: dict) -> list[str]:
    return [s["uses"] for s in _steps(job) if "uses" in s]


def _runs(job: dict) -> str:
    return "\n".join(s.get("run", "") for s in _steps(job))


def test_workflows_exist():
    assert BOOK in WORKFLOWS, "no .github/workflows/book.yml"


def test_workflows_match_githubs_schema():
    proc = _check_jsonschema("vendor.github-workflows", *WORKFLOWS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_check_can_fail(tmp_path):
    """The same check rejects a workflow with a job that has no runs-on and a misspelt key."""
    text = BOOK.read_text(encoding="utf-8")
    broken = text.replace("    runs-on: ubuntu-latest\n", "    run-on: ubuntu-latest\n")
    assert broken != text
    path = tmp_path / "broken.yml"
    path.write_text(broken, encoding="utf-8")
    proc = _check_jsonschema("vendor.github-workflows", path)
    assert proc.returncode != 0, "check-jsonschema accepted a job without runs-on"


def test_pushes_to_main_deploy_and_pull_requests_only_build():
    wf = _workflow()
    on = wf["on"]
    assert on["push"]["branches"] == ["main"]
    assert "pull_request" in on
    build, deploy = wf["jobs"]["build"], wf["jobs"]["deploy"]
    assert deploy["needs"] == "build"
    condition = deploy["if"].replace(" ", "")
    assert "github.event_name=='push'" in condition and "github.ref=='refs/heads/main'" in condition
    assert "actions/deploy-pages@" in " ".join(_uses(deploy))
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    # the workflow's default token can only read; only the deploy job may write to Pages
    assert wf["permissions"] == {"contents": "read"}
    assert "deploy-pages" not in " ".join(_uses(build))
    configure = [s for s in _steps(build) if "actions/configure-pages@" in s.get("uses", "")]
    assert configure and "refs/heads/main" in configure[0].get("if", ""), "configure-pages: on main only"
    upload = [s for s in _steps(build) if "actions/upload-pages-artifact@" in s.get("uses", "")]
    assert upload and upload[0]["with"]["path"] == "_build/html"


def test_the_build_job_uses_the_readmes_setup_and_the_local_script():
    build = _workflow()["jobs"]["build"]
    runs = _runs(build)
    assert "bash scripts/setup_env.sh" in runs
    assert "bash scripts/deploy_build.sh" in runs
    # nothing else builds or tests: what the workflow publishes is what the local script produces
    for command in ("jupyter-book", "pytest", "build_book.sh", "run_tests.sh", "pip install"):
        assert command not in runs, f"the workflow runs {command} itself; put it in scripts/deploy_build.sh"
    env = build.get("env", {})
    assert env.get("TORCH_INDEX_URL", "").endswith("/whl/cpu"), "PyTorch's CPU build, not PyPI's CUDA build"
    assert str(env.get("PYTHON", "")).startswith("python3.1")
    container = build.get("container", {})
    assert isinstance(container, dict) and container.get("image", "").startswith("python:3.1")
    # Chromium (the PDF, the browser test) needs more shared memory than Docker's default 64 MB /dev/shm
    shm = re.search(r"--shm-size[= ](\d+)([gm])", container.get("options", ""))
    assert shm and int(shm.group(1)) * (1024 if shm.group(2) == "g" else 1) >= 1024, "container --shm-size"
    assert build.get("timeout-minutes", 0) <= 90


def test_the_environment_and_the_model_cache_are_cached():
    steps = _steps(_workflow()["jobs"]["build"])

    def cache_steps(kind):
        found = [s for s in steps if f"actions/cache/{kind}@" in s.get("uses", "")]
        return {s["with"]["path"].split("\n")[0]: s for s in found}

    restores, saves = cache_steps("restore"), cache_steps("save")
    assert {".venv", "~/.cache/anatomy", "~/.cache/anatomy/colab-env"} <= set(restores)
    names = [s.get("name", s.get("uses")) for s in steps]
    deploy = next(i for i, s in enumerate(steps) if "deploy_build.sh" in s.get("run", ""))
    for path, restore in restores.items():
        save = saves.get(path)
        primary = f"${{{{ steps.{restore['id']}.outputs.cache-primary-key }}}}"
        assert save and save["with"]["key"] == primary, path
        assert save["with"]["path"] == restore["with"]["path"], path
        # saved even when a later step (or, for what the build fills, the tests) fails
        assert names.index(save["name"]) < deploy or "always()" in save["if"], path
    assert "!~/.cache/anatomy/colab-env" in restores["~/.cache/anatomy"]["with"]["path"]
    assert "restore-keys" not in restores["~/.cache/anatomy/colab-env"]["with"]  # old copies never pile up
    paths = {path: s["with"]["key"] for path, s in restores.items()}
    # the environment's key changes with every input of scripts/setup_env.sh's own stamp
    setup = (ROOT / "scripts" / "setup_env.sh").read_text(encoding="utf-8")
    stamp = re.search(r"cat (.*?) \| sha256sum", setup)
    assert stamp, "scripts/setup_env.sh no longer hashes its inputs with `cat ... | sha256sum`"
    for name in stamp.group(1).split():
        assert f"'{name}'" in paths[".venv"], f"the .venv cache key does not hash {name}"
    assert "anatomy/pretrained.py" in paths["~/.cache/anatomy"]


def test_the_local_script_runs_the_tests_the_build_and_the_site_checks():
    script = (ROOT / "scripts" / "deploy_build.sh").read_text(encoding="utf-8")
    assert "bash scripts/run_tests.sh" in script  # set-up, lint, tests, strict build, rendered checks
    assert "scripts/check_site.py" in script
    if shutil.which("bash"):
        proc = subprocess.run(["bash", "-n", str(ROOT / "scripts" / "deploy_build.sh")], capture_output=True)
        assert proc.returncode == 0, proc.stderr
    # run_tests.sh builds the book with the strict flags
    build = (ROOT / "scripts" / "build_book.sh").read_text(encoding="utf-8")
    assert "--warningiserror" in build and "--nitpick" in build


def test_only_pushes_to_main_write_anything():
    """Every job that can write (Pages, the Colab editions' branch) runs on a push to main only."""
    for name, job in _workflow()["jobs"].items():
        writes = {k for k, v in (job.get("permissions") or {}).items() if v == "write"}
        if writes:
            condition = job.get("if", "").replace(" ", "")
            assert "github.event_name=='push'" in condition and "refs/heads/main" in condition, name
            assert job.get("needs") == "build", f"{name} must wait for the build and its tests"
    colab = _workflow()["jobs"]["colab-editions"]
    assert "gh-pages" in _runs(colab) and "pub/colab" in _runs(colab)


def test_the_build_executes_chapters_side_by_side_but_timed_ones_alone():
    """scripts/execute_chapters.py (run by build_book.sh before the build) puts every notebook of the table of
    contents in one group: a notebook that glues wall-clock values runs alone, one that reads the other
    chapters' records (the scoreboard, the answer page) is left to the build, after them; and the build
    reads the cache it fills through a copy of _config.yml, whose own mode stays `force`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_execute_chapters", ROOT / "scripts" / "execute_chapters.py"
    )
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    groups = ex.plan()
    every = [p for paths in groups.values() for p in paths]
    assert sorted(every) == sorted(ex.toc_notebooks()) and len(every) == len(set(every))
    for path in every:
        timed = "timed=True" in ex._code(path).replace(" ", "")
        if path in groups["alone"]:
            assert timed, f"{path.name} runs alone but glues no wall-clock value"
        elif path in groups["together"]:
            assert not timed, f"{path.name} glues wall-clock values but runs beside another chapter"
            assert not ex.READS_RECORDS.search(ex._code(path)), (
                f"{path.name} reads the other chapters' records"
            )
    names = {p.relative_to(ROOT).with_suffix("").as_posix() for p in groups["build"]}
    assert {book_toc.scoreboard(ROOT), "the_answer"} <= names  # the scoreboard found by its role
    script = (ROOT / "scripts" / "build_book.sh").read_text(encoding="utf-8")
    assert "scripts/execute_chapters.py" in script and 'execute_notebooks="cache"' in script
    assert "--config" in script
