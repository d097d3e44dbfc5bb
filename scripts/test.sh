#!/usr/bin/env bash
# Install, then run the whole test suite (what CI runs). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec ${PYTHON:-python3} -m pytest tests -q -rs --durations=15 "$@"
