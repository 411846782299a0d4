#!/usr/bin/env python3
"""Quantizes a GGUF file with llama.cpp's own quantizer (llama-cpp-python's
`llama_model_quantize`, no importance matrix), as `llama-quantize SRC DST TYPE` does: the files
people download are written this way, in llama.cpp's per-tensor mixes (Q4_K_M keeps some
tensors in Q6_K, narrow rows fall back to Q5_0/Q8_0, ...).

    .venv-ci/bin/python scripts/llama_quantize.py SRC.gguf DST.gguf Q4_K_M [--threads 2]

TYPE is a llama.cpp file type name: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K_M, Q4_K_M, Q5_K_M,
Q6_K, IQ4_NL, IQ4_XS, ... (llama_cpp.LLAMA_FTYPE_MOSTLY_<TYPE>). Used with `bakeoff synth
--format gguf --quant f16` for the synthetic full-size files of docs/benchmarks.md.
"""
import argparse
import ctypes
import sys

import llama_cpp


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("type", help="llama.cpp file type, e.g. Q4_K_M")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pure", action="store_true", help="one type for every tensor (no mix)")
    a = ap.parse_args()
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{a.type.upper()}", None)
    if ftype is None:
        names = sorted(n[len("LLAMA_FTYPE_MOSTLY_"):] for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_MOSTLY_"))
        sys.exit(f"unknown llama.cpp file type {a.type!r}; known: {', '.join(names)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = a.threads
    params.pure = a.pure
    rc = llama_cpp.llama_model_quantize(a.src.encode(), a.dst.encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llama_model_quantize({a.src} -> {a.dst}, {a.type}) returned {rc}")
    print(a.dst)


if __name__ == "__main__":
    main()
