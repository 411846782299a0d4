#!/usr/bin/env bash
# System and Python dependencies of the end-to-end serve/chat tests (crates/cli/tests/serve_e2e.rs):
# tmux and curl for the chat and SSE tests, chromium for the headless check of the HTML report
# (crates/report/tests/chromium.rs), and the official `openai` SDK in a small venv at
# .venv-ci (the tests look for .venv-ci/bin/python, or $BAKEOFF_PYTHON), plus llama-cpp-python,
# numpy, safetensors and gguf there for the llama.cpp interop test (crates/cli/tests/quantize.rs).
# llama-cpp-python is compiled from its sdist: about 10 minutes on 2 cores the first time, then
# the wheel kept in ~/.cache/bakeoff/wheels or the existing install makes it instant. Safe to run
# twice.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v tmux >/dev/null || missing+=(tmux)
command -v curl >/dev/null || missing+=(curl)
command -v chromium >/dev/null || missing+=(chromium)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${missing[@]}"
fi

if [ ! -x .venv-ci/bin/python ]; then
    python3 -m venv .venv-ci
fi
.venv-ci/bin/python -m pip install --quiet --upgrade pip
.venv-ci/bin/python -m pip install --quiet "openai>=1.40"
.venv-ci/bin/python -c "import openai; print('openai', openai.__version__)"

# Pinned as in scripts/reference/requirements.txt.
pin() { grep "^$1==" scripts/reference/requirements.txt; }
.venv-ci/bin/python -m pip install --quiet "$(pin numpy)" "$(pin safetensors)" "$(pin gguf)"
# transformers' tokenizers (no torch) for crates/engine/tests/hf_tokenizer.rs.
.venv-ci/bin/python -m pip install --quiet "$(pin transformers)" "$(pin tokenizers)" "$(pin jinja2)"
if ! .venv-ci/bin/python -c "import llama_cpp" 2>/dev/null; then
    # shellcheck source=reference/llama_cpp_env.sh
    source scripts/reference/llama_cpp_env.sh
    # The wheel is built once per version and build flags and kept in the user's cache, so that a
    # fresh clone on the same machine (CI) installs it in seconds. Not pip's own wheel cache: that
    # is keyed on the sdist, not on CMAKE_ARGS, so a wheel built earlier with other flags (e.g.
    # ggml's AMX path, which crashes on these VMs) would be reused.
    key="$(pin llama-cpp-python)-$(printf '%s' "$CMAKE_ARGS" | sha256sum | cut -c1-16)"
    wheels="${XDG_CACHE_HOME:-$HOME/.cache}/bakeoff/wheels/$key"
    if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
        echo "building $(pin llama-cpp-python) (compiles llama.cpp, about 10 minutes on 2 cores)"
        mkdir -p "$wheels.tmp"
        .venv-ci/bin/python -m pip wheel --quiet --no-cache-dir --no-deps \
            --no-binary llama-cpp-python -w "$wheels.tmp" "$(pin llama-cpp-python)"
        rm -rf "$wheels" && mv "$wheels.tmp" "$wheels"
    fi
    .venv-ci/bin/python -m pip install --quiet "$wheels"/llama_cpp_python-*.whl
fi
.venv-ci/bin/python -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
# llama.cpp's vocabulary tests (crates/engine/tests/llama_vocab.rs), from the same sdist version.
PYTHON=.venv-ci/bin/python bash scripts/fetch-llama-vocab.sh

# lm-evaluation-harness (its API extra; no torch) in a venv of its own, so that its dependencies
# (datasets, pyarrow, scikit-learn, ...) do not move the pins above: crates/cli/tests/real_models.rs
# points it at `bakeoff serve` (scripts/lm_eval_parity.py). pip's cache makes a second install quick.
if [ ! -x .venv-lmeval/bin/python ]; then
    python3 -m venv .venv-lmeval
fi
if ! .venv-lmeval/bin/python -c "import lm_eval" 2>/dev/null; then
    .venv-lmeval/bin/python -m pip install --quiet --upgrade pip
    .venv-lmeval/bin/python -m pip install --quiet "lm-eval[api]==0.4.13"
fi
.venv-lmeval/bin/python -c "import lm_eval, importlib.metadata as m; print('lm_eval', m.version('lm-eval'))"
