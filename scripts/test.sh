#!/usr/bin/env bash
# Install, then run the whole test suite (what CI runs). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# A headless Chromium for the inspector's browser test (tests/test_inspect.py): Playwright's own
# download, else the distribution's package (root only); without either that one test is skipped.
${PYTHON:-python3} -m playwright install chromium >/dev/null 2>&1 || command -v chromium-headless-shell >/dev/null \
  || { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq \
       && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium-headless-shell; } \
  || echo "[test] no headless Chromium: the inspector's browser test will be skipped"
exec ${PYTHON:-python3} -m pytest tests -q -rs --durations=15 "$@"
