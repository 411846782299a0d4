//! A load-time repacking of Q4_0 and Q8_0 matrices for the AVX-512 VNNI decode kernel.
//!
//! In ggml's layout each 32-weight block carries its own f16 scale in front of its quants, so a
//! SIMD kernel has to convert and broadcast one scale per block and per row: about 13
//! instructions per block, which leaves Q4_0 decode instruction-bound well below the memory
//! bandwidth. The packed layout groups 8 blocks into a *superblock* with the same byte count
//! (144 bytes for Q4_0, 272 for Q8_0), so memory traffic is unchanged, but:
//! - the 8 scales sit together, converted by one instruction, in the order in which the
//!   kernel's reduction tree produces the block sums (`SCALE_ORDER`);
//! - Q4_0 pairs of blocks share bytes (block 2i in the low nibbles, 2i+1 in the high ones), so
//!   one 32-byte load, a shift and a mask give 64 unsigned quants in the activation's order;
//! - Q8_0 quants are stored offset by 128 (unsigned), the operand `vpdpbusd` wants, and the
//!   offset is taken off once per block through the activation block sums, as Q4_0's 8 is.
//!
//! Packing needs `cols` to be a multiple of 256; other matrices keep ggml's layout.

use candle_core::quantized::GgmlDType;

use super::{BlockQ8, QK, f16_bits_to_f32};

/// Blocks per superblock.
pub const SB: usize = 8;
/// Columns per superblock.
pub const SB_COLS: usize = SB * QK;
/// Where block `i` of a superblock finds its scale: the reduction tree yields the sums of
/// blocks 0, 2, 4, 6 in one 128-bit lane and 1, 3, 5, 7 in another.
pub const SCALE_ORDER: [usize; SB] = [0, 2, 4, 6, 1, 3, 5, 7];

/// Whether a matrix of this type and width can be packed.
pub fn packable(dtype: GgmlDType, cols: usize) -> bool {
    matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q8_0) && cols > 0 && cols.is_multiple_of(SB_COLS)
}

/// Bytes of one superblock (equal to 8 ggml blocks).
pub fn superblock_bytes(dtype: GgmlDType) -> usize {
    SB * dtype.type_size()
}

/// The inverse of `SCALE_ORDER`: the slot of block `b`'s scale.
const POSITION: [usize; SB] = [0, 4, 1, 5, 2, 6, 3, 7];

fn position_of(block: usize) -> usize {
    POSITION[block]
}

/// Repacks one row (`cols / 256` superblocks) from ggml's layout into `out` (same length).
pub fn pack_row(dtype: GgmlDType, src: &[u8], out: &mut [u8]) {
    let tb = dtype.type_size();
    let sbb = superblock_bytes(dtype);
    for (s, d) in src.chunks_exact(sbb).zip(out.chunks_exact_mut(sbb)) {
        let (scales, quants) = d.split_at_mut(2 * SB);
        for b in 0..SB {
            let blk = &s[b * tb..(b + 1) * tb];
            let p = position_of(b);
            scales[2 * p..2 * p + 2].copy_from_slice(&blk[..2]);
        }
        match dtype {
            GgmlDType::Q4_0 => {
                for pair in 0..SB / 2 {
                    let b0 = &s[2 * pair * tb + 2..2 * pair * tb + 18];
                    let b1 = &s[(2 * pair + 1) * tb + 2..(2 * pair + 1) * tb + 18];
                    let (lo, hi) = quants[32 * pair..32 * (pair + 1)].split_at_mut(16);
                    for j in 0..16 {
                        // Weight j of a ggml block is the low nibble of byte j, weight j + 16
                        // the high nibble.
                        lo[j] = (b0[j] & 0x0f) | (b1[j] << 4);
                        hi[j] = (b0[j] >> 4) | (b1[j] & 0xf0);
                    }
                }
            }
            _ => {
                for b in 0..SB {
                    let q = &s[b * tb + 2..(b + 1) * tb];
                    for (o, &v) in quants[32 * b..32 * (b + 1)].iter_mut().zip(q) {
                        *o = v ^ 0x80;
                    }
                }
            }
        }
    }
}

/// The signed quant of weight `j` of block `b` in a packed superblock.
fn packed_quant(dtype: GgmlDType, quants: &[u8], b: usize, j: usize) -> i32 {
    match dtype {
        GgmlDType::Q4_0 => {
            let byte = quants[32 * (b / 2) + j];
            let n = if b.is_multiple_of(2) { byte & 0x0f } else { byte >> 4 };
            n as i32 - 8
        }
        _ => quants[32 * b + j] as i32 - 128,
    }
}

fn packed_scale(scales: &[u8], b: usize) -> f32 {
    let p = position_of(b);
    f16_bits_to_f32(u16::from_le_bytes([scales[2 * p], scales[2 * p + 1]]))
}

/// Dequantizes packed rows (whole superblocks) to f32.
pub fn dequantize_row(dtype: GgmlDType, src: &[u8], out: &mut [f32]) {
    let sbb = superblock_bytes(dtype);
    for (s, o) in src.chunks_exact(sbb).zip(out.chunks_exact_mut(SB_COLS)) {
        let (scales, quants) = s.split_at(2 * SB);
        for b in 0..SB {
            let d = packed_scale(scales, b);
            for j in 0..QK {
                o[b * QK + j] = d * packed_quant(dtype, quants, b, j) as f32;
            }
        }
    }
}

/// Portable dot product of one packed row with quantized activations: the reference for the
/// SIMD kernel, with the same integer products per block.
pub fn dot_row(dtype: GgmlDType, row: &[u8], x: &[BlockQ8]) -> f32 {
    let sbb = superblock_bytes(dtype);
    let mut acc = 0f32;
    for (s, xs) in row.chunks_exact(sbb).zip(x.chunks_exact(SB)) {
        let (scales, quants) = s.split_at(2 * SB);
        for (b, xb) in xs.iter().enumerate() {
            let dot: i32 = (0..QK)
                .map(|j| packed_quant(dtype, quants, b, j) * xb.qs[j] as i32)
                .sum();
            acc += packed_scale(scales, b) * xb.d * dot as f32;
        }
    }
    acc
}

/// Activations laid out for the packed kernel: all quants contiguous (so a 64-byte load covers
/// a pair of blocks), and per superblock the scales and scaled sums in `SCALE_ORDER`.
pub struct PackedActs {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
}

impl PackedActs {
    pub fn new(x: &[BlockQ8]) -> Self {
        let mut qs = Vec::with_capacity(x.len() * QK);
        let mut d = vec![0f32; x.len()];
        let mut s = vec![0f32; x.len()];
        for (i, b) in x.iter().enumerate() {
            qs.extend_from_slice(&b.qs);
            let at = i / SB * SB + position_of(i % SB);
            d[at] = b.d;
            s[at] = b.s;
        }
        Self { qs, d, s }
    }
}
