#!/usr/bin/env bash
# The test command of README.md (and of CI): installs what the end-to-end tests drive (tmux, curl,
# the official `openai` Python SDK in .venv-ci), then runs every test with those checks required,
# so a missing tool fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ci-python.sh
export BAKEOFF_E2E_REQUIRED=1
export BAKEOFF_PYTHON="$PWD/.venv-ci/bin/python"
cargo test --workspace "$@"
