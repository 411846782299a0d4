#!/usr/bin/env bash
# Puts llama.cpp's vocabulary-only test files (models/ggml-vocab-*.gguf with their .gguf.inp /
# .gguf.out expected-token files) into a cache folder, for crates/engine/tests/llama_vocab.rs.
#
#   bash scripts/fetch-llama-vocab.sh            # into $BAKEOFF_VOCAB_CACHE or ~/.cache/bakeoff/llama-vocab
#
# They come from the llama-cpp-python source package on PyPI, at the version pinned in
# scripts/reference/requirements.txt (which vendors llama.cpp, tests included), so the expected
# ids are those of the llama.cpp bakeoff is compared with. Nothing is copied into the repository.
# A second run with the same version downloads nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${BAKEOFF_VOCAB_CACHE:-$HOME/.cache/bakeoff/llama-vocab}"
PY="${PYTHON:-python3}"
PIN="$(grep -E '^llama-cpp-python==' "$ROOT/scripts/reference/requirements.txt")"
VERSION="${PIN#llama-cpp-python==}"

if [ -f "$DEST/VERSION" ] && [ "$(cat "$DEST/VERSION")" = "$VERSION" ]; then
  echo "ok: $DEST already holds llama.cpp's vocabulary tests from llama-cpp-python $VERSION"
  exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# --no-binary for this package only: its build dependencies may come as wheels.
"$PY" -m pip download --quiet --no-deps --no-binary llama-cpp-python "$PIN" -d "$TMP"
SDIST="$TMP/llama_cpp_python-$VERSION.tar.gz"
[ -f "$SDIST" ] || { echo "error: pip did not produce $SDIST" >&2; exit 1; }

mkdir -p "$DEST"
tar -xzf "$SDIST" -C "$TMP" --wildcards "llama_cpp_python-$VERSION/vendor/llama.cpp/models/ggml-vocab-*"
n=$(find "$TMP/llama_cpp_python-$VERSION/vendor/llama.cpp/models" -name 'ggml-vocab-*' | wc -l)
[ "$n" -gt 0 ] || { echo "error: the sdist has no vendor/llama.cpp/models/ggml-vocab-* files" >&2; exit 1; }
cp "$TMP/llama_cpp_python-$VERSION/vendor/llama.cpp/models/"ggml-vocab-* "$DEST/"
echo "$VERSION" > "$DEST/VERSION"
echo "ok: $n files from llama-cpp-python $VERSION in $DEST"
