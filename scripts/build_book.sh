#!/usr/bin/env bash
# Command 1: set up .venv/ (scripts/setup_env.sh), then execute every chapter and build the whole book
# into _build/html, strictly: a failing cell or any Sphinx warning makes the build, and this script, fail.
#
#   bash scripts/build_book.sh               # set up, then build
#   bash scripts/build_book.sh --no-setup    # build only (used by scripts/run_tests.sh after its own set-up)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

setup=1
for arg in "$@"; do
    case "$arg" in
        --no-setup) setup=0 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "build_book.sh: unknown argument $arg (expected --no-setup)" >&2; exit 2 ;;
    esac
done

if [[ "$setup" == "1" ]]; then
    bash scripts/setup_env.sh
fi

# Notebooks run in kernels started from this environment: put it first on PATH so that the `python3`
# kernel is .venv's Python, whatever else is installed on the machine.
export VIRTUAL_ENV="$ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
# OpenMP's default spin-waiting makes torch far slower on a shared 2-core machine; it must be set
# before the kernel processes start.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
# The pretrained models are read from installed packages; never try the network for them.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [[ ! -x "$VIRTUAL_ENV/bin/jupyter-book" ]]; then
    echo "build_book.sh: $VIRTUAL_ENV/bin/jupyter-book not found; run bash scripts/setup_env.sh" >&2
    exit 1
fi

# Every chapter's claims.check() records its numbers in this folder; the scoreboard (the last chapter), which
# the build executes after the chapters, shows them next to its own small replications. Fresh per build.
export ANATOMY_RESULTS="$ROOT/_build/claims"
rm -rf "$ANATOMY_RESULTS"

start=$SECONDS
jupyter-book clean --html . >/dev/null
# The chapters keep about one core busy each, so scripts/execute_chapters.py executes them two at a time
# (ANATOMY_BUILD_JOBS; those that glue wall-clock times alone, the scoreboard and the answer page left to the
# build) into a fresh jupyter-cache, and the build reads them from it: a copy of _config.yml whose
# execute_notebooks is `cache` instead of `force`. Every chapter is still executed at every build.
# ANATOMY_BUILD_JOBS=0: the build executes every chapter itself, one after the other (_config.yml as it is).
jobs="${ANATOMY_BUILD_JOBS:-2}"
config=()
executed=0
if [[ "$jobs" != "0" ]]; then
    cache="$ROOT/_build/.jupyter_cache"
    derived="$ROOT/_build/_config.cached-execution.yml"
    python scripts/execute_chapters.py --cache "$cache" --jobs "$jobs" || executed=$?
    python - "$derived" "$cache" <<'PY'
import sys
from pathlib import Path

import yaml

config = yaml.safe_load(Path("_config.yml").read_text(encoding="utf-8"))
config["execute"].update(execute_notebooks="cache", cache=sys.argv[2])
# jupyter-book finds local extensions relative to the config file, which is now in _build/
local = config["sphinx"].get("local_extensions") or {}
config["sphinx"]["local_extensions"] = {name: str(Path(path).resolve()) for name, path in local.items()}
Path(sys.argv[1]).write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
PY
    config=(--config "$derived")
fi
# --all re-reads every page, so warnings from unchanged pages are reported again; every chapter not in the
# cache is executed. -W turns warnings into errors, --keep-going reports all of them before failing, -n
# (nitpick) warns about every unresolved reference.
status=0
jupyter-book build . ${config[@]+"${config[@]}"} --all --warningiserror --nitpick --keep-going || status=$?
if [[ "$status" != "0" ]]; then
    echo "build_book.sh: the book build FAILED (exit $status) after $((SECONDS - start)) s; see the errors above" >&2
    exit "$status"
fi
if [[ "$executed" != "0" ]]; then
    echo "build_book.sh: scripts/execute_chapters.py FAILED before the build (see above; a chapter that failed" \
        "there and passed when the build executed it again is flaky)" >&2
    exit 1
fi
echo "build_book.sh: book built in $((SECONDS - start)) s: $ROOT/_build/html/index.html"
