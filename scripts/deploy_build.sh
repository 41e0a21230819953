#!/usr/bin/env bash
# What the publishing workflow (.github/workflows/book.yml) runs before it uploads _build/html to GitHub
# Pages, as one local command, so that a maintainer gets the same site the workflow deploys:
#
#   bash scripts/deploy_build.sh
#
# 1. scripts/run_tests.sh: set up .venv/ (scripts/setup_env.sh), ruff, the tests, the strict build of the
#    whole book (every chapter executed; _ext/publish.py adds sitemap.xml, robots.txt, the executed
#    notebooks behind the download buttons, and the PDF printed by Chromium), then the rendered-book
#    checks (headless Chromium, Colab-style runs);
# 2. checks that _build/html is a complete site: the pages, the sitemap, the PDF, and a base URL that
#    matches _config.yml's repository.url.
#
# Exits non-zero if any step fails. The workflow caches .venv/ and ~/.cache/anatomy between runs.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

status=0
bash scripts/run_tests.sh || status=$?

echo "== the site in _build/html"
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || PY=python3
if ! "$PY" scripts/check_site.py _build/html; then
    status=1
fi
if [[ "$status" != "0" ]]; then
    echo "deploy_build.sh: FAILED; nothing to publish" >&2
    exit "$status"
fi
echo "deploy_build.sh: _build/html is ready to publish"
