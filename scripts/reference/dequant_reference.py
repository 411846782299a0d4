#!/usr/bin/env python3
"""Reference dequantization by gguf-py (`gguf.quants.dequantize`), for the bit-exact test of
bakeoff's dequantizers (crates/engine/tests/dequant_reference.rs).

    python scripts/reference/dequant_reference.py TYPE IN OUT

TYPE is a GGMLQuantizationType name (Q4_K, IQ4_XS, F16, ...); IN holds whole blocks of that
type; OUT receives the values as little-endian f32, in order.
"""
import sys

import numpy as np
from gguf import GGMLQuantizationType
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize


def main() -> None:
    name, src, dst = sys.argv[1:4]
    qtype = GGMLQuantizationType[name]
    _, type_size = GGML_QUANT_SIZES[qtype]
    data = np.fromfile(src, dtype=np.uint8)
    if data.size % type_size:
        sys.exit(f"{src}: {data.size} bytes is not a whole number of {type_size}-byte {name} blocks")
    out = dequantize(data.reshape((-1, type_size)), qtype)
    np.ascontiguousarray(out, dtype="<f4").tofile(dst)


if __name__ == "__main__":
    main()
