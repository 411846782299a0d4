#!/usr/bin/env bash
# Creates the Python reference environment at <repo>/.venv-ref and installs
# scripts/reference/requirements.txt into it.
#
#   bash scripts/reference/setup.sh          # then: source .venv-ref/bin/activate
#
# Notes:
# - Only PyPI is used. torch's default PyPI wheel on Linux x86_64 is a CUDA build
#   (pulls nvidia-* wheels, a few GB); it works on CPU-only machines as is.
#   Set TORCH_SKIP_CUDA_DEPS=1 to install torch with --no-deps (saves ~3 GB; the
#   CUDA libs are then missing, which is fine for CPU use as long as torch imports).
# - llama-cpp-python is compiled locally (vendors llama.cpp; 10+ minutes on 2 cores).
#   cmake/ninja come from PyPI as build dependencies (scikit-build-core).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv-ref}"
REQ="$ROOT/scripts/reference/requirements.txt"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install --upgrade pip wheel setuptools

# Everything except llama-cpp-python first (binary wheels, fast).
grep -v -E '^\s*(#|$)' "$REQ" | grep -v '^llama-cpp-python' > "$VENV/.req-binary.txt"
if [ "${TORCH_SKIP_CUDA_DEPS:-0}" = "1" ]; then
  TORCH_PIN="$(grep '^torch==' "$VENV/.req-binary.txt")"
  $PIP install --no-deps "$TORCH_PIN"
  $PIP install filelock typing-extensions sympy networkx fsspec
  grep -v '^torch==' "$VENV/.req-binary.txt" > "$VENV/.req-rest.txt"
  $PIP install -r "$VENV/.req-rest.txt"
else
  $PIP install -r "$VENV/.req-binary.txt"
fi

# llama-cpp-python: built from the sdist.
LLAMA_PIN="$(grep '^llama-cpp-python' "$REQ")"
# shellcheck source=llama_cpp_env.sh
source "$ROOT/scripts/reference/llama_cpp_env.sh"
$PIP install --no-binary llama-cpp-python "$LLAMA_PIN"

"$VENV/bin/python" - <<'PY'
import torch, transformers, safetensors, numpy, gguf, llama_cpp, openai
print("torch", torch.__version__, "transformers", transformers.__version__,
      "numpy", numpy.__version__, "llama_cpp", llama_cpp.__version__, "openai", openai.__version__)
PY
echo "ok: source $VENV/bin/activate"
