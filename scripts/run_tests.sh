#!/usr/bin/env bash
# Command 2: set up .venv/, then lint, run the test suite, build the whole book strictly (every
# chapter executed, Sphinx warnings as errors), and check the rendered pages in headless Chromium. Runs every step even after a failure, prints a summary,
# and exits non-zero if any step failed.
#
#   bash scripts/run_tests.sh
#   PYTEST_ARGS="-k book -x" bash scripts/run_tests.sh    # extra arguments for pytest
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ! bash scripts/setup_env.sh; then
    echo "run_tests.sh: environment set-up failed; nothing was tested" >&2
    exit 1
fi

export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

names=()
results=()
times=()
record() {  # record NAME STATUS SECONDS
    names+=("$1")
    results+=("$2")
    times+=("$3")
}

# 1. lint and format --------------------------------------------------------------------------------------
# ruff check (lint) on the Python code, and ruff format --check on the code and the chapters' code cells:
# a file that `ruff format` would change fails this step (run `ruff format` on it).
lint_paths=()
for p in anatomy tests benches scripts _ext setup.py; do
    [[ -e "$p" ]] && lint_paths+=("$p")
done
echo "== ruff check ${lint_paths[*]}"
t=$SECONDS
ruff check "${lint_paths[@]}"
record "ruff check" $? $((SECONDS - t))
echo "== ruff format --check ${lint_paths[*]} chapters the_answer.ipynb"
t=$SECONDS
ruff format --check "${lint_paths[@]}" chapters the_answer.ipynb
record "ruff format --check" $? $((SECONDS - t))

# 2. tests -----------------------------------------------------------------------------------------------
# One process: tests set torch to 2 threads, so two xdist workers on this 2-core machine only compete
# (measured: -n 2 was no faster). Exit code 5 means no tests were collected, which counts as a failure.
# The checks of the rendered book (tests/test_browser.py, tests/test_determinism.py) and the Colab-style
# runs (tests/test_colab_style.py, which compare their glued values with the build's) need the build of
# step 3, so they run after it, in step 4.
# Every chapter is executed a second time once and its glued values compared with the build's: the
# chapters that tests/test_busy_cpu.py (8-10), tests/test_colab_env.py (1, 5, 13) and tests/test_publish.py
# (4, from the built wheel) execute here anyway save what they glued in ANATOMY_SECOND_RUNS, and step 4
# compares those records (tests/test_determinism.py) and runs only the other chapters Colab-style
# (COLAB_CHAPTERS=unrecorded).
AFTER_BUILD=(tests/test_browser.py tests/test_determinism.py tests/test_colab_style.py tests/test_colab_edition.py)
export ANATOMY_SECOND_RUNS="$ROOT/_build/second_runs"
rm -rf "$ANATOMY_SECOND_RUNS"
echo "== pytest tests"
t=$SECONDS
# --durations: the slowest tests are listed, so the cost of each is visible in every run's log
# shellcheck disable=SC2086
python -m pytest tests "${AFTER_BUILD[@]/#/--ignore=}" --durations=30 ${PYTEST_ARGS:-}
status=$?
if [[ "$status" == "5" ]]; then
    echo "run_tests.sh: pytest collected no tests; that counts as a failure" >&2
fi
record "pytest tests" "$status" $((SECONDS - t))

# 3. strict book build -----------------------------------------------------------------------------------
echo "== strict book build (every chapter executed, warnings are errors)"
t=$SECONDS
bash scripts/build_book.sh --no-setup
record "book build" $? $((SECONDS - t))

# 4. the rendered book, as a reader sees it ----------------------------------------------------------------
# Every page in headless Chromium (math, images, JS errors, links, static explorers; screenshots in
# _build/screenshots/); the glued values of step 2's chapter runs compared with the build's; then every
# other chapter executed a second time the way Colab runs it (the package installed from the committed
# HEAD, an empty working directory), its glued values compared with the build's (determinism). With
# ANATOMY_REQUIRE_BOOK=1 a missing build or a missing chromium fails instead of skipping.
echo "== rendered book checks (${AFTER_BUILD[*]})"
t=$SECONDS
ANATOMY_REQUIRE_BOOK=1 DETERMINISM_CHAPTERS=none COLAB_CHAPTERS=unrecorded \
    python -m pytest "${AFTER_BUILD[@]}" --durations=30
record "rendered book checks" $? $((SECONDS - t))

# summary ------------------------------------------------------------------------------------------------
echo
echo "== summary"
failed=0
for i in "${!names[@]}"; do
    if [[ "${results[$i]}" == "0" ]]; then
        word="PASS"
    else
        word="FAIL (exit ${results[$i]})"
        failed=1
    fi
    printf '  %-40s %-14s %5ss\n' "${names[$i]}" "$word" "${times[$i]}"
done
if [[ "$failed" == "0" ]]; then
    echo "all steps passed"
else
    echo "some steps FAILED"
fi
exit "$failed"
