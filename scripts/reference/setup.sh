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
# AMX is off: on the project's VMs the CPU advertises AMX but ggml's AMX path crashes (SIGSEGV in
# decode for every quantized type), while every AVX-512 extension it uses (VNNI, BF16, VBMI) works.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
$PIP install --no-binary llama-cpp-python "$LLAMA_PIN"

"$VENV/bin/python" - <<'PY'
import torch, transformers, safetensors, numpy, gguf, llama_cpp, openai
print("torch", torch.__version__, "transformers", transformers.__version__,
      "numpy", numpy.__version__, "llama_cpp", llama_cpp.__version__, "openai", openai.__version__)
PY
echo "ok: source $VENV/bin/activate"
