#!/usr/bin/env bash
# Command 2: set up .venv/, then lint, run the test suite, build the whole book strictly (every
# chapter executed, Sphinx warnings as errors), and check the rendered pages in headless Chromium. Runs every
# step even after a failure, prints a summary, and exits non-zero if any step failed. Work that keeps about
# one core busy runs beside other such work (this is a 2-core machine); what measures time runs alone.
#
#   bash scripts/run_tests.sh
#   PYTEST_ARGS="-k book -x" bash scripts/run_tests.sh    # extra arguments for pytest
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Python writes the bytecode of a module it compiles, so that the next process finds it: setup_env.sh
# installs without compiling (pip --no-compile), and a machine that sets PYTHONDONTWRITEBYTECODE would
# otherwise compile every imported module in every one of this run's processes (measured: importing the
# usual modules takes 13 s of CPU each time without the bytecode, 6 s with it).
unset PYTHONDONTWRITEBYTECODE

names=()
results=()
times=()
cpus=()
# cpu_now: the seconds all cores together have been busy and idle since boot (/proc/stat; "" elsewhere)
cpu_now() {
    [[ -r /proc/stat ]] && awk -v hz="$(getconf CLK_TCK)" \
        '/^cpu /{ printf "%d %d", ($2 + $3 + $4 + $7 + $8 + $9) / hz, ($5 + $6) / hz }' /proc/stat
}
step_start() {  # the wall clock and the CPU counters at the start of a step
    t=$SECONDS
    cpu0="$(cpu_now)"
}
record() {  # record NAME STATUS SECONDS [CPU0]: the machine's busy and idle CPU seconds since CPU0
    names+=("$1")
    results+=("$2")
    times+=("$3")
    local b0 i0 b1 i1
    if [[ -n "${4:-}" ]] && read -r b0 i0 <<<"$4" && read -r b1 i1 <<<"$(cpu_now)"; then
        cpus+=("CPU busy $((b1 - b0)) s, idle $((i1 - i0)) s")
    else
        cpus+=("")
    fi
}

step_start
bash scripts/setup_env.sh
setup_status=$?
record "environment set-up" "$setup_status" $((SECONDS - t)) "$cpu0"
if [[ "$setup_status" != "0" ]]; then
    echo "run_tests.sh: environment set-up failed; nothing was tested" >&2
    exit 1
fi

export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# 1. lint and format --------------------------------------------------------------------------------------
# ruff check (lint) on the Python code, and ruff format --check on the code and the chapters' code cells:
# a file that `ruff format` would change fails this step (run `ruff format` on it).
lint_paths=()
for p in anatomy tests benches scripts _ext setup.py; do
    [[ -e "$p" ]] && lint_paths+=("$p")
done
echo "== ruff check ${lint_paths[*]}"
step_start
ruff check "${lint_paths[@]}"
record "ruff check" $? $((SECONDS - t)) "$cpu0"
echo "== ruff format --check ${lint_paths[*]} chapters the_answer.ipynb"
step_start
ruff format --check "${lint_paths[@]}" chapters the_answer.ipynb
record "ruff format --check" $? $((SECONDS - t)) "$cpu0"

# 2. tests -----------------------------------------------------------------------------------------------
# Tests set torch to 2 threads, so two xdist workers on this 2-core machine only compete (measured: -n 2 was
# no faster). Exit code 5 means no tests were collected, which counts as a failure.
# The checks of the rendered book (tests/test_browser.py, tests/test_determinism.py) and the Colab-style
# runs (tests/test_colab_style.py, whose glued values are compared with the build's) need the build of
# step 3: the Colab-style runs save their values until then, the rest runs after it, in step 4.
# Every chapter is executed a second time once and its glued values compared with the build's: the
# chapters that tests/test_busy_cpu.py (8-10), tests/test_colab_env.py (1, 5, 13) and tests/test_publish.py
# (4, from the built wheel) execute here anyway save what they glued in ANATOMY_SECOND_RUNS, the other
# chapters run Colab-style at nice 19 from here to step 4 (COLAB_CHAPTERS=unclaimed) and save theirs there
# too, and step 4 compares every record with the build's values (tests/test_determinism.py).
# Six pytest processes. First the busy-CPU chapters (tests/test_busy_cpu.py) with nothing beside them but
# LIGHT, two processes of tests that start no kernel (the Triton interpreter tests
# among them), whose threads its LoadKeeper counts as competition, topping up with busy loops in the same session
# (see tests/test_busy_cpu.py: Jupyter kernels run in sessions of their own, and the scheduler's autogroups
# share CPU between sessions first, so the chapter competes with one session, as it did with the busy loops
# alone; beside the other tests and the Colab-style runs it would compete with each of their kernels, far
# more: tried in aca0bed on the loaded shared machine, chapter 10 took 229 s instead of ~46 s). Two
# processes, because the keeper wants one competing thread per core: one process of mostly single-threaded
# tests left a core to a busy loop (~50 CPU-seconds of a run), two leave it to tests; they carry about the
# busy-CPU chapters' own time of work (~110 s of CPU on one core's share) and go on beside the next
# processes if they need longer. Then the rest of the tests beside the files that
# run chapters in environments of their own (the Colab-pinned one, the built wheel), each in a process of
# its own (one after the other they were the step's longest pole: ~180 s and ~40 s of mostly one core).
AFTER_BUILD=(tests/test_browser.py tests/test_determinism.py tests/test_colab_style.py tests/test_colab_edition.py)
BUSY=(tests/test_busy_cpu.py)
BESIDE=(tests/test_colab_env.py tests/test_publish.py)
# tests/test_triton.py runs its Triton interpreter tests in a child process (TRITON_INTERPRET=1), and fails
# unless that child ran them all; none of these files starts a Jupyter kernel. CPU-seconds alone (measured
# 2026-12-03): triton 38 (in child processes), layout 4, doc_references 4, speculative 10, objectives 8;
# data 20 (1 since test_data converts the plays once more, not 38 times), properties 13, module_attributes 5,
# bad_inputs 12, model 7. Those alone finished 23-32 s before the busy-CPU chapters (clean-clone CI of
# 78dd217: 94 and 85 s against 117 s), leaving that time of each core to the keeper's busy loops; the three
# files of SmolLM2 tests that follow (no kernel either; in that run, beside the other tests: inference_economics
# ~27 s, packed ~26 s, pretrained ~57 s) fill it with useful work instead, and what outlasts the busy-CPU
# chapters goes on beside the next step's processes (the machine stays busy either way).
LIGHT_A=(tests/test_triton.py tests/test_layout.py tests/test_doc_references.py tests/test_speculative.py
    tests/test_objectives.py tests/test_inference_economics.py)
LIGHT_B=(tests/test_data.py tests/test_properties.py tests/test_module_attributes.py tests/test_bad_inputs.py
    tests/test_model.py tests/test_packed.py tests/test_pretrained.py)
LIGHT=("${LIGHT_A[@]}" "${LIGHT_B[@]}")
export ANATOMY_SECOND_RUNS="$ROOT/_build/second_runs"
rm -rf "$ANATOMY_SECOND_RUNS"
LOGS="$(mktemp -d)"
trap 'rm -rf "$LOGS"' EXIT

# pytest_parts NAME STATUS...: the status of a step run as several pytest processes. Exit code 5 (no tests
# collected) fails the step when every part collected nothing, or when any part did without PYTEST_ARGS
# (with PYTEST_ARGS, e.g. -k, a part may legitimately select nothing).
pytest_parts() {
    local name="$1" all5=1 worst=0 code
    shift
    for code in "$@"; do
        [[ "$code" != "5" ]] && all5=0
        if [[ "$code" == "5" && -z "${PYTEST_ARGS:-}" ]] || [[ "$code" != "0" && "$code" != "5" ]]; then
            worst="$code"
        fi
    done
    if [[ "$all5" == "1" ]]; then
        worst=5
    fi
    if [[ "$worst" == "5" ]]; then
        echo "run_tests.sh: $name collected no tests; that counts as a failure" >&2
    fi
    return "$worst"
}

echo "== pytest tests"
step_start
# --durations: the slowest tests are listed, so the cost of each is visible in every run's log
echo "== pytest ${LIGHT_A[*]} and, in another process, ${LIGHT_B[*]} (output below)"
# shellcheck disable=SC2086
python -m pytest "${LIGHT_A[@]}" --durations=30 ${PYTEST_ARGS:-} >"$LOGS/light_a.log" 2>&1 &
light_a_pid=$!
# shellcheck disable=SC2086
python -m pytest "${LIGHT_B[@]}" --durations=30 ${PYTEST_ARGS:-} >"$LOGS/light_b.log" 2>&1 &
light_b_pid=$!
echo "== pytest ${BUSY[*]} (the busy-CPU chapters, beside ${LIGHT[*]} only)"
# shellcheck disable=SC2086
python -m pytest "${BUSY[@]}" --durations=30 ${PYTEST_ARGS:-}
busy_status=$?
# From here on, every chapter that no test of this step executes a second time is executed the way Colab
# runs it (tests/test_colab_style.py, COLAB_CHAPTERS=unclaimed: the package installed from the committed
# HEAD, an empty working directory), at nice 19 (which, with autogroups, binds only their pytest process:
# each kernel runs in a session of its own and competes as an equal with the other sessions); they use the
# CPU the rest leaves idle (while one of the two pytest processes below has finished, and in step 3's
# Sphinx phase) and a share of the rest; while step 3 executes the chapters that glue wall-clock times
# they are stopped (scripts/execute_chapters.py). They need the build only to compare their glued values
# with it, so they save them (COLAB_SAVE_ONLY) for tests/test_determinism.py to compare in step 4; their
# other checks run as they go.
echo "== Colab-style chapter runs (tests/test_colab_style.py, nice 19, until step 4; output there)"
tc=$SECONDS
ANATOMY_REQUIRE_BOOK=1 COLAB_CHAPTERS=unclaimed COLAB_SAVE_ONLY=1 nice -n 19 \
    python -m pytest tests/test_colab_style.py -k test_chapter_runs_from_an_installed_package \
    --durations=30 >"$LOGS/colab.log" 2>&1 &
colab_pid=$!
echo "== pytest ${BESIDE[*]} (each in a process of its own; output below, after the other tests)"
beside_pids=()
for f in "${BESIDE[@]}"; do
    # test_colab_env.py's four tests (~40-60 s of one core each) in two pytest-xdist workers: one after the
    # other they were the step's longest chain; each worker builds its own throw-away overlay environment
    workers=()
    [[ "$f" == tests/test_colab_env.py ]] && workers=(-n 2)
    # shellcheck disable=SC2086
    python -m pytest "$f" ${workers[@]+"${workers[@]}"} --durations=30 ${PYTEST_ARGS:-} \
        >"$LOGS/beside-$(basename "$f" .py).log" 2>&1 &
    beside_pids+=($!)
done
main_ignore=("${AFTER_BUILD[@]}" "${BUSY[@]}" "${BESIDE[@]}" "${LIGHT[@]}")
# shellcheck disable=SC2086
python -m pytest tests "${main_ignore[@]/#/--ignore=}" \
    --durations=30 ${PYTEST_ARGS:-}
unit_status=$?
beside_statuses=()
for i in "${!BESIDE[@]}"; do
    wait "${beside_pids[$i]}"
    beside_statuses+=($?)
    echo "== pytest ${BESIDE[$i]} (ran beside the other tests)"
    cat "$LOGS/beside-$(basename "${BESIDE[$i]}" .py).log"
done
wait "$light_a_pid"
light_a_status=$?
wait "$light_b_pid"
light_b_status=$?
echo "== pytest ${LIGHT_A[*]} (ran beside the busy-CPU chapters)"
cat "$LOGS/light_a.log"
echo "== pytest ${LIGHT_B[*]} (ran beside the busy-CPU chapters)"
cat "$LOGS/light_b.log"
pytest_parts "pytest tests" "$busy_status" "$light_a_status" "$light_b_status" "$unit_status" "${beside_statuses[@]}"
record "pytest tests" $? $((SECONDS - t)) "$cpu0"

# 3. strict book build -----------------------------------------------------------------------------------
echo "== strict book build (every chapter executed, warnings are errors)"
step_start
# the Colab-style runs are stopped while the chapters that glue wall-clock times execute (see
# scripts/execute_chapters.py), so that those times are measured with nothing beside them
ANATOMY_PAUSE_BESIDE_TIMED="${colab_pid:-}" bash scripts/build_book.sh --no-setup
record "book build" $? $((SECONDS - t)) "$cpu0"

# 4. the rendered book, as a reader sees it ----------------------------------------------------------------
# Every page in headless Chromium (math, images, JS errors, links, static explorers; screenshots in
# _build/screenshots/) while the Colab-style runs finish; then the glued values of every chapter's second
# run (step 2's, and the Colab-style runs') compared with the build's (determinism), and the rest of
# tests/test_colab_style.py (a chapter whose Colab-style run saved nothing, e.g. because it failed, runs
# again there, compared at once). With ANATOMY_REQUIRE_BOOK=1 a missing build or a missing chromium fails
# instead of skipping.
echo "== rendered book checks (${AFTER_BUILD[*]})"
step_start
export ANATOMY_REQUIRE_BOOK=1 DETERMINISM_CHAPTERS=none COLAB_CHAPTERS=unrecorded
python -m pytest tests/test_browser.py tests/test_colab_edition.py --durations=30
pages_status=$?
wait "$colab_pid"
colab_status=$?
echo "== Colab-style chapter runs (ran at nice 19 from step 2 on)"
cat "$LOGS/colab.log"
if [[ "$colab_status" == "5" ]]; then
    colab_status=0  # no chapter was left for them: the other tests execute every chapter a second time
fi
record "Colab-style chapter runs (nice 19)" "$colab_status" $((SECONDS - tc))
python -m pytest tests/test_determinism.py tests/test_colab_style.py --durations=30
checks_status=$?
unset ANATOMY_REQUIRE_BOOK DETERMINISM_CHAPTERS COLAB_CHAPTERS
PYTEST_ARGS="" pytest_parts "rendered book checks" "$pages_status" "$checks_status"
record "rendered book checks" $? $((SECONDS - t)) "$cpu0"

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
    printf '  %-44s %-14s %5ss  %s\n' "${names[$i]}" "$word" "${times[$i]}" "${cpus[$i]}"
done
if [[ "$failed" == "0" ]]; then
    echo "all steps passed"
else
    echo "some steps FAILED"
fi
exit "$failed"
