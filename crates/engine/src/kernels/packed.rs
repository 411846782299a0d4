//! A load-time repacking of Q4_0 and Q8_0 matrices for the AVX-512 VNNI kernels.
//!
//! In ggml's layout each 32-weight block carries its own f16 scale in front of its quants, so a
//! SIMD kernel converts and broadcasts one scale per block, per row and per token: about 13
//! instructions per block, which leaves Q4_0 decode instruction-bound well below the memory
//! bandwidth, and makes an integer prompt kernel no faster than f32 FMA.
//!
//! The packed layout groups 16 blocks into a *superblock* and interleaves them so that 32-bit
//! lane `l` of every 64-byte vector belongs to block `l`: step `s` (0..8) holds bytes
//! `4s..4s+4` of each of the 16 blocks. Eight `vpdpbusd` then leave each block's exact integer
//! dot product in its own lane, and one conversion and one FMA apply all 16 scales, which sit
//! together (one f16 vector) at the head of the superblock. Per 16 blocks that is 8 dot
//! instructions plus 4, instead of 16 × 13.
//! - Q4_0: step `2u` is the low nibbles and step `2u + 1` the high nibbles of the 64-byte
//!   chunk `u`, so one load, a shift and two masks feed two steps; nibbles stay unsigned
//!   (0..15) and the 8 is taken off once per block through the activation block sums.
//! - Q8_0: quants are stored offset by 128 (unsigned), the operand `vpdpbusd` wants, and the
//!   offset is taken off the same way.
//!
//! A superblock has the byte count of 16 ggml blocks (288 for Q4_0, 544 for Q8_0); a row whose
//! block count is not a multiple of 16 ends with a superblock padded with zero scales.

use crate::WeightType;

use super::{BlockQ8, QK, f16_bits_to_f32};

/// Version of this layout, part of the key of the packed-weights file (`loader::packcache`):
/// change it with any change to the bytes `pack_row` writes.
pub const LAYOUT_VERSION: u32 = 1;

/// Blocks per superblock (one per 32-bit lane of a 512-bit vector).
pub const SB: usize = 16;
/// Dot-product steps per superblock (4 bytes of each block per step).
pub const STEPS: usize = QK / 4;

/// Whether a matrix of this type and width can be packed.
pub fn packable(dtype: WeightType, cols: usize) -> bool {
    matches!(dtype, WeightType::Q4_0 | WeightType::Q8_0) && cols > 0 && cols.is_multiple_of(QK)
}

/// Bytes of one superblock (equal to 16 ggml blocks).
pub fn superblock_bytes(dtype: WeightType) -> usize {
    SB * dtype.type_size()
}

/// Superblocks per row of `cols` columns.
pub fn superblocks(cols: usize) -> usize {
    (cols / QK).div_ceil(SB)
}

/// Bytes of one packed row.
pub fn row_bytes(dtype: WeightType, cols: usize) -> usize {
    superblocks(cols) * superblock_bytes(dtype)
}

/// Repacks one row from ggml's layout (`src`, `cols / 32` blocks) into `out` (`row_bytes`).
pub fn pack_row(dtype: WeightType, src: &[u8], out: &mut [u8]) {
    let tb = dtype.type_size();
    out.fill(0);
    for (si, d) in out.chunks_exact_mut(superblock_bytes(dtype)).enumerate() {
        let (scales, quants) = d.split_at_mut(2 * SB);
        for l in 0..SB {
            let Some(blk) = src.get((si * SB + l) * tb..(si * SB + l + 1) * tb) else {
                break;
            };
            scales[2 * l..2 * l + 2].copy_from_slice(&blk[..2]);
            let qs = &blk[2..];
            match dtype {
                WeightType::Q4_0 => {
                    // ggml: value i < 16 is the low nibble of byte i, value i + 16 the high one.
                    let nib = |i: usize| {
                        if i < 16 {
                            qs[i] & 0x0f
                        } else {
                            qs[i - 16] >> 4
                        }
                    };
                    for u in 0..STEPS / 2 {
                        for j in 0..4 {
                            quants[64 * u + 4 * l + j] = nib(8 * u + j) | (nib(8 * u + 4 + j) << 4);
                        }
                    }
                }
                _ => {
                    for s in 0..STEPS {
                        for j in 0..4 {
                            quants[64 * s + 4 * l + j] = qs[4 * s + j] ^ 0x80;
                        }
                    }
                }
            }
        }
    }
}

/// The signed quant of value `i` (0..32) of lane `l` in a packed superblock.
fn packed_quant(dtype: WeightType, quants: &[u8], l: usize, i: usize) -> i32 {
    match dtype {
        WeightType::Q4_0 => {
            let byte = quants[64 * (i / 8) + 4 * l + i % 4];
            let n = if i % 8 < 4 { byte & 0x0f } else { byte >> 4 };
            n as i32 - 8
        }
        _ => (quants[64 * (i / 4) + 4 * l + i % 4] ^ 0x80) as i8 as i32,
    }
}

fn packed_scale(scales: &[u8], l: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([scales[2 * l], scales[2 * l + 1]]))
}

/// Dequantizes one packed row to `out` (`cols` values).
pub fn dequantize_row(dtype: WeightType, src: &[u8], out: &mut [f32]) {
    let sbb = superblock_bytes(dtype);
    for (si, s) in src.chunks_exact(sbb).enumerate() {
        let (scales, quants) = s.split_at(2 * SB);
        for l in 0..SB {
            let Some(o) = out.get_mut((si * SB + l) * QK..(si * SB + l + 1) * QK) else {
                return;
            };
            let d = packed_scale(scales, l);
            for (i, o) in o.iter_mut().enumerate() {
                *o = d * packed_quant(dtype, quants, l, i) as f32;
            }
        }
    }
}

/// Portable dot product of one packed row with quantized activations: the reference for the
/// SIMD kernels, with the same integer products per block.
pub fn dot_row(dtype: WeightType, row: &[u8], x: &[BlockQ8]) -> f32 {
    let sbb = superblock_bytes(dtype);
    let mut acc = 0f32;
    for (si, s) in row.chunks_exact(sbb).enumerate() {
        let (scales, quants) = s.split_at(2 * SB);
        for l in 0..SB {
            let Some(xb) = x.get(si * SB + l) else {
                break;
            };
            let dot: i32 = (0..QK)
                .map(|i| packed_quant(dtype, quants, l, i) * xb.qs[i] as i32)
                .sum();
            acc += packed_scale(scales, l) * xb.d * dot as f32;
        }
    }
    acc
}

/// One token's activations laid out like a packed superblock: per superblock 8 steps of 64
/// quants (lane `l` = block `l`), then the kernels' per-lane factors: `d` (block scale) and
/// `so` (block scale × quant sum × the weights' offset, 8 or 128). Missing blocks of a padded
/// superblock are zeros.
#[derive(Clone, Debug)]
pub struct PackedActs {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub so: Vec<f32>,
}

impl PackedActs {
    pub fn new(x: &[BlockQ8], dtype: WeightType) -> Self {
        let nsb = x.len().div_ceil(SB);
        let offset = if dtype == WeightType::Q4_0 {
            8.0
        } else {
            128.0
        };
        let mut qs = vec![0i8; nsb * SB * QK];
        let mut d = vec![0f32; nsb * SB];
        let mut so = vec![0f32; nsb * SB];
        for (b, xb) in x.iter().enumerate() {
            let (si, l) = (b / SB, b % SB);
            for s in 0..STEPS {
                let at = si * SB * QK + 64 * s + 4 * l;
                qs[at..at + 4].copy_from_slice(&xb.qs[4 * s..4 * s + 4]);
            }
            d[b] = xb.d;
            so[b] = xb.s * offset;
        }
        Self { qs, d, so }
    }

    /// Zero activations (pads a tile of tokens).
    pub fn zeros(superblocks: usize) -> Self {
        Self {
            qs: vec![0; superblocks * SB * QK],
            d: vec![0.0; superblocks * SB],
            so: vec![0.0; superblocks * SB],
        }
    }
}
