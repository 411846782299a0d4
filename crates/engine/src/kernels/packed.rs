//! A load-time repacking of Q4_0, Q4_1, Q5_0, Q8_0 and Q4_K matrices for the AVX-512 VNNI
//! kernels.
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
//! A superblock has the byte count of 16 ggml blocks (288 for Q4_0, 544 for Q8_0). A row whose
//! block count is not a multiple of 16 ends with a *tail* superblock of the `n` blocks left:
//! the same layout with every 64-byte vector cut to its first `4n` bytes (`n` lanes), and each
//! per-lane vector of the head cut to its first `n` entries ([`Layout::superblock_bytes_n`]).
//! Kernels read it with masked loads, or widen it back to a whole superblock with zero scales
//! ([`widen_tail`]). Rows 576 or 896 wide (SmolLM2-135M, Qwen2.5-0.5B) are 18 and 28 blocks:
//! padded to whole superblocks they took 1024 columns' bytes, 1.78 and 1.14 times the file's.
//!
//! Other types are rewritten, without loss, into one of the other kernel layouts ([`Layout`]):
//! - Q5_0 into *Q5*: its 5-bit values (0..31, the − 16 taken off through the activation sums
//!   as Q4's − 8) in two planes, the low 4 bits in Q4's nibble order and the fifth bit of step
//!   `s` as bit `s` of a 64-byte chunk; the kernel rebuilds each step's bytes with a shift and
//!   one ternary-logic instruction. 22 bytes per 32 weights, as in the file (the first version
//!   stored them as Q8_0's bytes, 34);
//! - Q4_1 into *Q4M*: Q4_0's nibble order, with a head of 16 f16 scales and 16 f16 offsets,
//!   value = scale · nibble + offset; Q4_K into *Q4K*, the same nibbles under a *K head*;
//! - Q5_1 into *Q5M*: Q5's planes under Q4M's head (value = scale · q + offset); Q5_K into
//!   *Q5K*, the same planes under a K head;
//! - IQ4_NL into *I4*: its 4-bit indices in Q4's nibble order, which the kernels turn into the
//!   non-linear grid's values (+ 128, as Q8 stores them) with one byte shuffle per step; IQ4_XS
//!   into *I4K*, the same under a K head (scale `d · (ls − 32)`);
//! - Q6_K into *Q6*: its 6-bit values (0..63, the − 32 taken off through the activation sums)
//!   in two planes, the low 4 bits in Q4's nibble order and the high 2 bits of steps `4v..4v+4`
//!   as bit pairs `2k, 2k+1` of a 64-byte chunk `v`; the kernel rebuilds each step's bytes with
//!   a shift and one ternary-logic instruction. Its K head's two factors scale values 0..16 and
//!   16..32 of each block (Q6_K scales groups of 16); steps 0..4 and 4..8 go to the two dot
//!   chains the kernel keeps anyway, and the activations carry a quant sum per half block.
//! - Q3_K into *Q3*: Q6's head and half blocks, with 3-bit values (0..7, the − 4 taken off
//!   through the activation sums as Q6's − 32) in a 2-bit plane and a bit plane: the low 2 bits
//!   of steps `4c..4c+4` as bit pairs `2k, 2k+1` of a 64-byte chunk `c` (Q6's high-bit plane),
//!   the third bit of step `s` as bit `s` of one more chunk (Q5's bit plane). 14.25 bytes per
//!   32 weights against the file's 13.75 (the i8 scales take 2 bytes where Q3_K's 6-bit ones
//!   take 1.5).
//! - Q2_K into *Q2*: its 2-bit values (0..3) in Q3's 2-bit plane, under a head with a scale
//!   and a min per half block, as the file stores them: the f16 super-scale and super-min of
//!   each K-quant block, then per lane a byte `scale | min << 4` for each half block (value =
//!   `d · scale · q − dmin · min`). 10.5 bytes per 32 weights, the file's. The min is applied
//!   through the activations' half-block sums, as Q4_1's offset through the block sums.
//!
//! The *K heads* keep the K-quants' own two-level scales instead of 16 products: a K-quant
//! block of 256 values is 8 of our blocks, so lanes 0..8 and 8..16 of a superblock each share
//! one f16 super-scale (`d`, and `−dmin` for the offsets), and each lane has a small integer
//! multiplier: Q4_K's and Q5_K's 6-bit scales and mins as 6-bit fields, as the file stores
//! them ([`six_bit`]), IQ4_XS's 6-bit scales and Q6_K's 8-bit ones as bytes. The kernels
//! multiply them out once per superblock (one byte shuffle and two shifts rebuild 16 six-bit
//! fields), and the products are those of ggml's dequantizer bit for
//! bit (an f16 times an integer below 2^8 is exact in f32). A whole superblock then has the
//! file's bytes exactly (Q4K 18 per 32 weights, Q5K 22, Q6 26.25) or close to them (I4K 17.25
//! against 17). The earlier K head, four f32 super-factors and a byte per multiplier, took 19,
//! 23, 27 and 19: decode streams every byte.

use crate::WeightType;

use super::dequant::IQ4_VALUES;
use super::{BlockQ8, QK, f16_bits_to_f32};

/// Version of this layout, part of the key of the packed-weights file (`loader::packcache`):
/// change it with any change to the bytes `pack_row` writes.
pub const LAYOUT_VERSION: u32 = 10;

/// Blocks per superblock (one per 32-bit lane of a 512-bit vector).
pub const SB: usize = 16;
/// Dot-product steps per superblock (4 bytes of each block per step).
pub const STEPS: usize = QK / 4;

/// The byte layouts the packed kernels read (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Signed bytes stored + 128, one f16 scale per block: Q8_0.
    Q8,
    /// Unsigned nibbles with an implied − 8, one f16 scale per block: Q4_0.
    Q4,
    /// Unsigned nibbles, an f16 scale and an f16 offset per block: Q4_1.
    Q4M,
    /// Q4M's nibbles under a K head (scale and offset per block): Q4_K.
    Q4K,
    /// 6-bit values in a nibble plane and a 2-bit plane, under a K head (a scale per half
    /// block): Q6_K.
    Q6,
    /// Nibble indices into IQ4's grid, one f16 scale per block: IQ4_NL.
    I4,
    /// I4's indices under a K head: IQ4_XS.
    I4K,
    /// 5-bit values in a nibble plane and a bit plane with an implied − 16, one f16 scale per
    /// block: Q5_0.
    Q5,
    /// Q5's planes, unsigned, an f16 scale and an f16 offset per block: Q5_1.
    Q5M,
    /// Q5M's planes under a K head: Q5_K.
    Q5K,
    /// 3-bit values in a 2-bit plane and a bit plane, under Q6's head: Q3_K.
    Q3,
    /// 2-bit values in Q3's 2-bit plane, under a K head with a scale and a min per half
    /// block: Q2_K.
    Q2,
}

/// How a superblock's head stores its 16 lanes' two factors (scale and offset, or the scales
/// of the two half blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// 16 f16 scales; the second factor is the scale again.
    F16,
    /// 16 f16 scales, then 16 f16 second factors.
    F16Pair,
    /// Q4_K's and Q5_K's two levels: f16 super-factors `d` of lanes 0..8 and of lanes 8..16,
    /// then `−dmin` of the same, then the 16 lanes' 6-bit scales and their 6-bit mins (12 bytes
    /// each, [`six_bit`]); scale = `d · sc`, offset = `−dmin · m`. The same 32 bytes in a tail.
    KScaleMin,
    /// IQ4_XS's: f16 `d` of lanes 0..8 and 8..16, then the lanes' multipliers `ls − 32` as i8
    /// (cut to `n` in a tail); both factors are `d · multiplier`. Bytes, not 6-bit fields: the
    /// IQ4 kernels spend the shift ports on their nibbles already, and unpacking the fields
    /// cost more decode time than the 4 bytes per superblock it saved.
    KScale8,
    /// Q6_K's: f16 `d` of lanes 0..8 and 8..16, then 16 i8 scales of the first half blocks
    /// and 16 of the second (cut to `n` each in a tail of `n` lanes).
    KHalves,
    /// Q2_K's: f16 `d` of lanes 0..8 and 8..16, then `−dmin` of the same, then 16 bytes
    /// `scale | min << 4` (4-bit fields) of the first half blocks and 16 of the second (cut to
    /// `n` each in a tail); the halves' scales `d · scale`, their offsets `−dmin · min`
    /// ([`head_offsets`]).
    KHalvesMin,
}

/// Bytes of the super-factors of a K head: f16 values for lanes 0..8 and 8..16.
pub const K_SUPER: usize = 4;
/// Bytes of 16 six-bit fields.
pub const SIX_BYTES: usize = 12;

/// Where 16 lanes' 6-bit fields (Q4_K's and Q5_K's scales and mins) sit in their 12 bytes:
/// lane `l` is bits `6l..6l + 6` of the little-endian string, so a lane's field spans at most
/// two bytes, starting at byte
/// `six_bit::byte(l)`; the kernels gather each lane's 4 bytes from there with one byte shuffle
/// and shift its field to the top of the lane and back down.
pub mod six_bit {
    /// First byte of lane `l`'s field.
    pub const fn byte(l: usize) -> usize {
        6 * l / 8
    }

    /// Bit of that byte where the field starts.
    pub const fn bit(l: usize) -> usize {
        6 * l % 8
    }

    /// The byte-shuffle control putting bytes `byte(l)..byte(l) + 4` in 32-bit lane `l`
    /// (indices within a 128-bit lane that holds the 16 head bytes; at most `byte(15) + 3`,
    /// 14).
    pub const SHUFFLE: [u8; 64] = {
        let mut t = [0u8; 64];
        let mut i = 0;
        while i < 64 {
            t[i] = (byte(i / 4) + i % 4) as u8;
            i += 1;
        }
        t
    };

    /// Left shifts putting lane `l`'s field in bits 26..32 (a right shift by 26 then drops
    /// the other bits: two shifts, where a shift and a mask measured slower).
    pub const TO_TOP: [i32; 16] = {
        let mut t = [0i32; 16];
        let mut l = 0;
        while l < 16 {
            t[l] = 26 - bit(l) as i32;
            l += 1;
        }
        t
    };

    /// Lane `l`'s field of `s` (12 bytes), unsigned.
    pub fn get(s: &[u8], l: usize) -> u8 {
        let (b, k) = (byte(l), bit(l));
        let w = s[b] as u16 | (s.get(b + 1).copied().unwrap_or(0) as u16) << 8;
        ((w >> k) & 63) as u8
    }

    /// Sets lane `l`'s field of `s` (zero before) to the low 6 bits of `v`.
    pub fn set(s: &mut [u8], l: usize, v: u8) {
        let (b, k) = (byte(l), bit(l));
        let w = ((v & 63) as u16) << k;
        s[b] |= w as u8;
        if w >> 8 != 0 {
            s[b + 1] |= (w >> 8) as u8;
        }
    }
}

impl Layout {
    /// The layout a stored type is packed into, if any.
    pub fn of(dtype: WeightType) -> Option<Layout> {
        match dtype {
            WeightType::Q8_0 => Some(Layout::Q8),
            WeightType::IQ4_NL => Some(Layout::I4),
            WeightType::Q5_0 => Some(Layout::Q5),
            WeightType::Q4_0 => Some(Layout::Q4),
            WeightType::Q4_1 => Some(Layout::Q4M),
            WeightType::Q4K => Some(Layout::Q4K),
            WeightType::Q6K => Some(Layout::Q6),
            WeightType::IQ4_XS => Some(Layout::I4K),
            WeightType::Q5_1 => Some(Layout::Q5M),
            WeightType::Q5K => Some(Layout::Q5K),
            WeightType::Q3K => Some(Layout::Q3),
            WeightType::Q2K => Some(Layout::Q2),
            _ => None,
        }
    }

    /// The layout whose quants and arithmetic this one shares (they differ in the head only).
    pub const fn body(self) -> Layout {
        match self {
            Layout::Q4K => Layout::Q4M,
            Layout::Q5K => Layout::Q5M,
            Layout::I4K => Layout::I4,
            l => l,
        }
    }

    pub const fn head(self) -> Head {
        match self {
            Layout::Q8 | Layout::Q4 | Layout::Q5 | Layout::I4 => Head::F16,
            Layout::Q4M | Layout::Q5M => Head::F16Pair,
            Layout::Q4K | Layout::Q5K => Head::KScaleMin,
            Layout::I4K => Head::KScale8,
            Layout::Q6 | Layout::Q3 => Head::KHalves,
            Layout::Q2 => Head::KHalvesMin,
        }
    }

    /// Bytes of a whole superblock's head before its quants.
    pub const fn head_bytes(self) -> usize {
        self.head_bytes_n(SB)
    }

    /// Bytes of the head of a superblock of `n` lanes (a row's tail): each per-lane vector
    /// holds `n` entries; the K heads keep their super-factors, and their 6-bit strings whole.
    pub const fn head_bytes_n(self, n: usize) -> usize {
        match self.head() {
            Head::F16 => 2 * n,
            Head::F16Pair => 4 * n,
            Head::KScaleMin => 2 * (K_SUPER + SIX_BYTES),
            Head::KScale8 => K_SUPER + n,
            Head::KHalves => K_SUPER + 2 * n,
            Head::KHalvesMin => 2 * K_SUPER + 2 * n,
        }
    }

    pub const fn superblock_bytes(self) -> usize {
        self.superblock_bytes_n(SB)
    }

    /// Bytes of a superblock of `n` lanes: every 64-byte vector of the quants cut to `4n`.
    pub const fn superblock_bytes_n(self, n: usize) -> usize {
        self.head_bytes_n(n)
            + n * match self.body() {
                Layout::Q4 | Layout::Q4M | Layout::I4 => QK / 2,
                Layout::Q5 | Layout::Q5M => QK * 5 / 8,
                Layout::Q6 => QK * 3 / 4,
                Layout::Q3 => QK * 3 / 8,
                Layout::Q2 => QK / 4,
                _ => QK,
            }
    }

    /// Whether the quants are nibbles (two steps per 64-byte chunk): values for Q4, Q4M and Q4K,
    /// grid indices for I4 and I4K.
    pub const fn nibbles(self) -> bool {
        matches!(self.body(), Layout::Q4 | Layout::Q4M | Layout::I4)
    }

    /// Whether the nibbles are IQ4 grid indices.
    pub const fn grid(self) -> bool {
        matches!(self.body(), Layout::I4)
    }

    /// Whether the quants are 5-bit values in a nibble plane and a bit plane.
    pub const fn five_bit(self) -> bool {
        matches!(self.body(), Layout::Q5 | Layout::Q5M)
    }

    /// Whether the two factors scale the two half blocks (values 0..16 and 16..32) of each lane:
    /// Q6, Q3 and Q2, whose K-quants scale groups of 16.
    pub const fn halves(self) -> bool {
        matches!(self, Layout::Q6 | Layout::Q3 | Layout::Q2)
    }

    /// Whether the half blocks have offsets of their own ([`head_offsets`]) besides their
    /// scales: Q2 (Q2_K's mins). The activations' `so` and `so2` then hold `−d · Σq` of each
    /// half, and the kernels subtract `offset · so` as for Q4M.
    pub const fn half_mins(self) -> bool {
        matches!(self, Layout::Q2)
    }

    /// Whether the second factor is an offset added per block (value = scale · q + offset).
    pub const fn has_offset(self) -> bool {
        matches!(self.body(), Layout::Q4M | Layout::Q5M)
    }

    /// The factor of the activation block sums in [`PackedActs::so`]: the kernels subtract
    /// `scale · so` (Q4, Q8: the stored offset of the quants) or `offset · so` (Q4M, where
    /// `so = −s` so that the same instruction adds `offset · s`). For Q6, `so` and `so2` hold
    /// the two half blocks' sums.
    fn act_offset(self) -> f32 {
        match self.body() {
            Layout::Q4 => 8.0,
            Layout::Q5 => 16.0,
            Layout::Q4M | Layout::Q5M => -1.0,
            Layout::Q6 => 32.0,
            Layout::Q3 => 4.0,
            Layout::Q2 => -1.0,
            _ => 128.0,
        }
    }

    /// Integer offsets per superblock in [`PackedActs::io`]: one per lane, two for Q6's half
    /// blocks.
    pub const fn io_lanes(self) -> usize {
        if self.halves() { 2 * SB } else { SB }
    }

    fn of_packed(dtype: WeightType) -> Layout {
        Layout::of(dtype).unwrap_or_else(|| panic!("{dtype:?} has no packed layout"))
    }
}

/// Whether a matrix of this type and width can be packed.
pub fn packable(dtype: WeightType, cols: usize) -> bool {
    Layout::of(dtype).is_some() && cols > 0 && cols.is_multiple_of(dtype.block_size())
}

/// Bytes of one superblock (16 blocks of 32 values).
pub fn superblock_bytes(dtype: WeightType) -> usize {
    Layout::of_packed(dtype).superblock_bytes()
}

/// Superblocks per row of `cols` columns, a tail included.
pub fn superblocks(cols: usize) -> usize {
    (cols / QK).div_ceil(SB)
}

/// Bytes of one packed row.
pub fn row_bytes(dtype: WeightType, cols: usize) -> usize {
    let layout = Layout::of_packed(dtype);
    let blocks = cols / QK;
    (blocks / SB) * layout.superblock_bytes() + tail_bytes(layout, blocks % SB)
}

/// Bytes of a tail of `n` lanes (none for 0).
fn tail_bytes(layout: Layout, n: usize) -> usize {
    if n == 0 {
        0
    } else {
        layout.superblock_bytes_n(n)
    }
}

/// The superblocks of a row of `blocks` blocks: byte offset and lane count of each.
fn superblock_spans(layout: Layout, blocks: usize) -> impl Iterator<Item = (usize, usize)> {
    let sbb = layout.superblock_bytes();
    (0..blocks.div_ceil(SB)).map(move |si| (si * sbb, (blocks - si * SB).min(SB)))
}

/// Offsets within a superblock of `n` lanes (a tail if `n < SB`): its quants, the start of a
/// step's 64-byte vector (`4n` bytes here), and the heads' second entries.
#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
}

impl Geom {
    /// Bytes of what is a 64-byte vector in a whole superblock.
    fn v(self) -> usize {
        4 * self.n
    }
}

/// Widens the tail superblock of `n` lanes at `src` into a whole one in `out`
/// (`superblock_bytes()`): the lanes past `n` get zero scales and zero quants, the layout of a
/// row padded to whole superblocks: the reference the AVX2 prompt tile's SIMD widening
/// (`x86::packed_avx2`) is tested against.
pub fn widen_tail(layout: Layout, n: usize, src: &[u8], out: &mut [u8]) {
    out.fill(0);
    let copy = |out: &mut [u8], to: usize, from: usize, len: usize| {
        out[to..to + len].copy_from_slice(&src[from..from + len])
    };
    match layout.head() {
        Head::F16 => copy(out, 0, 0, 2 * n),
        Head::F16Pair => {
            copy(out, 0, 0, 2 * n);
            copy(out, 2 * SB, 2 * n, 2 * n);
        }
        Head::KScaleMin => copy(out, 0, 0, layout.head_bytes()),
        Head::KScale8 => {
            copy(out, 0, 0, K_SUPER);
            copy(out, K_SUPER, K_SUPER, n);
        }
        Head::KHalves => {
            copy(out, 0, 0, K_SUPER);
            copy(out, K_SUPER, K_SUPER, n);
            copy(out, K_SUPER + SB, K_SUPER + n, n);
        }
        Head::KHalvesMin => {
            copy(out, 0, 0, 2 * K_SUPER);
            copy(out, 2 * K_SUPER, 2 * K_SUPER, n);
            copy(out, 2 * K_SUPER + SB, 2 * K_SUPER + n, n);
        }
    }
    let (hw, hn) = (layout.head_bytes(), layout.head_bytes_n(n));
    let vectors = (layout.superblock_bytes() - hw) / 64;
    for v in 0..vectors {
        copy(out, hw + 64 * v, hn + 4 * n * v, 4 * n);
    }
}

/// One block of 32 values as the layouts store it: the quants (signed for Q8 and Q6, grid
/// indices for I4, nibbles
/// for Q4 and Q4M, signed for Q5, unsigned for Q5M), the scale as f16 bits (Q8, Q4, Q5; Q4M and Q5M with
/// the offset's f16 bits), and for the K-quants the two factors as super-factor (f16 bits)
/// and multiplier: scale (or the first half's scale) `kf.0 · km.0`, offset (or the second
/// half's scale) `kf.1 · km.1`; for Q2_K, `kf` is `(d, −dmin)` and `km` the two half blocks'
/// bytes `scale | min << 4`.
#[cfg(test)]
struct Block32 {
    q: [i8; QK],
    scale16: u16,
    offset16: u16,
    kf: (u16, u16),
    km: (i8, i8),
}

fn f16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

/// Super-factors `(d, −dmin)` (f16 bits) and multipliers `(sc, m)` of group `g` of a Q4_K or
/// Q5_K block (`d dmin scales[12] …`): scale `d · sc` and offset `−dmin · m`, as ggml's
/// dequantizer computes them (its `d · sc · q − dmin · m`).
#[cfg(test)]
fn k4_factors(blk: &[u8], g: usize) -> ((u16, u16), (i8, i8)) {
    // Negating an f16 flips its sign bit, exactly.
    let (d, neg_dmin) = (f16_at(blk, 0), f16_at(blk, 2) ^ 0x8000);
    let (s, m) = super::dequant::scale_min_k4(&blk[4..16]);
    // 6-bit scales and mins: 0..63, exact in i8.
    ((d, neg_dmin), (s[g] as i8, m[g] as i8))
}

/// Writes one token's activations (`src`, whole blocks of 32) into `dst` in the packed order of
/// a superblock's values (value `4s + j` of block `16si + l` at `512si + 64s + 4l + j`), for the
/// bf16 prompt tiles that read packed rows in that order; `dst`'s padding is left as it is.
pub fn to_packed_order(src: &[f32], dst: &mut [f32]) {
    for (b, blk) in src.chunks_exact(QK).enumerate() {
        let (si, l) = (b / SB, b % SB);
        for s in 0..STEPS {
            let at = si * SB * QK + 64 * s + 4 * l;
            dst[at..at + 4].copy_from_slice(&blk[4 * s..4 * s + 4]);
        }
    }
}

/// Block `b` (of 32 values) of a row stored as `dtype`, or None past the row's end.
#[cfg(test)]
fn source_block(dtype: WeightType, src: &[u8], b: usize) -> Option<Block32> {
    let mut k = Block32 {
        q: [0; QK],
        scale16: 0,
        offset16: 0,
        kf: (0, 0),
        km: (0, 0),
    };
    // ggml's Q4_0, Q4_1, Q5_0: value i < 16 is the low nibble of byte i, value i + 16 the high.
    let nib = |qs: &[u8], i: usize| {
        if i < 16 {
            qs[i] & 0x0f
        } else {
            qs[i - 16] >> 4
        }
    };
    match dtype {
        WeightType::Q8_0 => {
            let blk = src.get(b * 34..(b + 1) * 34)?;
            k.scale16 = f16_at(blk, 0);
            for (q, v) in k.q.iter_mut().zip(&blk[2..]) {
                *q = *v as i8;
            }
        }
        WeightType::Q5_0 => {
            let blk = src.get(b * 22..(b + 1) * 22)?;
            k.scale16 = f16_at(blk, 0);
            let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
            for (i, q) in k.q.iter_mut().enumerate() {
                let high = ((qh >> i) & 1) as u8;
                *q = (nib(&blk[6..], i) | (high << 4)) as i8 - 16;
            }
        }
        WeightType::Q4_0 => {
            let blk = src.get(b * 18..(b + 1) * 18)?;
            k.scale16 = f16_at(blk, 0);
            for (i, q) in k.q.iter_mut().enumerate() {
                *q = nib(&blk[2..], i) as i8;
            }
        }
        WeightType::Q4_1 => {
            let blk = src.get(b * 20..(b + 1) * 20)?;
            (k.scale16, k.offset16) = (f16_at(blk, 0), f16_at(blk, 2));
            for (i, q) in k.q.iter_mut().enumerate() {
                *q = nib(&blk[4..], i) as i8;
            }
        }
        WeightType::Q4K => {
            // 256 values: `d dmin scales[12] qs[128]`, group g's values in the low (g even) or
            // high nibbles of bytes 32·(g/2)..+32.
            let blk = src.get((b / 8) * 144..(b / 8 + 1) * 144)?;
            let g = b % 8;
            (k.kf, k.km) = k4_factors(blk, g);
            for (l, q) in k.q.iter_mut().enumerate() {
                *q = ((blk[16 + (g / 2) * 32 + l] >> (4 * (g % 2))) & 0x0f) as i8;
            }
        }
        WeightType::Q5_1 => {
            let blk = src.get(b * 24..(b + 1) * 24)?;
            (k.scale16, k.offset16) = (f16_at(blk, 0), f16_at(blk, 2));
            let qh = u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
            for (i, q) in k.q.iter_mut().enumerate() {
                *q = (nib(&blk[8..], i) | ((((qh >> i) & 1) as u8) << 4)) as i8;
            }
        }
        WeightType::Q5K => {
            // 256 values: `d dmin scales[12] qh[32] qs[128]`, Q4_K's groups with a fifth bit.
            let blk = src.get((b / 8) * 176..(b / 8 + 1) * 176)?;
            let g = b % 8;
            (k.kf, k.km) = k4_factors(blk, g);
            let (qh, qs) = (&blk[16..48], &blk[48..176]);
            for (l, q) in k.q.iter_mut().enumerate() {
                let lo = (qs[(g / 2) * 32 + l] >> (4 * (g % 2))) & 0x0f;
                *q = (lo | (((qh[l] >> g) & 1) << 4)) as i8;
            }
        }
        WeightType::IQ4_NL => {
            // The grid indices, under the block's f16 scale (the kernels look the values up).
            let blk = src.get(b * 18..(b + 1) * 18)?;
            k.scale16 = f16_at(blk, 0);
            for (i, q) in k.q.iter_mut().enumerate() {
                *q = nib(&blk[2..], i) as i8;
            }
        }
        WeightType::IQ4_XS => {
            // 256 values: `d scales_h scales_l[4] qs[128]`; group g's scale d · (6-bit − 32),
            // the head's one factor.
            let blk = src.get((b / 8) * 136..(b / 8 + 1) * 136)?;
            let g = b % 8;
            let d = f16_at(blk, 0);
            let scales_h = u16::from_le_bytes([blk[2], blk[3]]);
            let lo = (blk[4 + g / 2] >> (4 * (g % 2))) & 0x0f;
            let hi = ((scales_h >> (2 * g)) & 3) as u8;
            let m = (lo | (hi << 4)) as i8 - 32;
            (k.kf, k.km) = ((d, d), (m, m));
            for (i, q) in k.q.iter_mut().enumerate() {
                *q = nib(&blk[8 + 16 * g..], i) as i8;
            }
        }
        WeightType::Q6K => {
            // 256 values: `ql[128] qh[64] scales[16] d`, 16 groups of 16 with signed scales.
            let blk = src.get((b / 8) * 210..(b / 8 + 1) * 210)?;
            let (ql, qh, sc) = (&blk[..128], &blk[128..192], &blk[192..208]);
            let d = f16_at(blk, 208);
            let g = b % 8;
            (k.kf, k.km) = ((d, d), (sc[2 * g] as i8, sc[2 * g + 1] as i8));
            for (j, q) in k.q.iter_mut().enumerate() {
                let i = 32 * g + j;
                let (half, r) = (i / 128, i % 128);
                let lo = (ql[half * 64 + r % 64] >> (4 * (r / 64))) & 0x0f;
                let hi = (qh[half * 32 + r % 32] >> (2 * (r / 32))) & 3;
                *q = (lo | (hi << 4)) as i8 - 32;
            }
        }
        WeightType::Q3K => {
            // 256 values: `hmask[32] qs[64] scales[12] d`; value 128h + 32j + l is bits 2j, 2j+1
            // of qs[32h + l], less 4 where bit 4h + j of hmask[l] is clear; 16 groups of 16
            // with signed 6-bit scales.
            let blk = src.get((b / 8) * 110..(b / 8 + 1) * 110)?;
            let (hmask, qs) = (&blk[..32], &blk[32..96]);
            let sc = q3k_scales(&blk[96..108]);
            let d = f16_at(blk, 108);
            let g = b % 8;
            (k.kf, k.km) = ((d, d), (sc[2 * g], sc[2 * g + 1]));
            let (h, j) = (g / 4, g % 4);
            for (l, q) in k.q.iter_mut().enumerate() {
                let low = (qs[32 * h + l] >> (2 * j)) & 3;
                let high = (hmask[l] >> g) & 1;
                *q = (low | (high << 2)) as i8 - 4;
            }
        }
        WeightType::Q2K => {
            // 256 values: `scales[16] qs[64] d dmin`; value 128h + 32j + l is bits 2j, 2j+1
            // of qs[32h + l]; 16 groups of 16, each with a byte `scale | min << 4`.
            let blk = src.get((b / 8) * 84..(b / 8 + 1) * 84)?;
            let (sc, qs) = (&blk[..16], &blk[16..80]);
            let g = b % 8;
            k.kf = (f16_at(blk, 80), f16_at(blk, 82) ^ 0x8000);
            k.km = (sc[2 * g] as i8, sc[2 * g + 1] as i8);
            let (h, j) = (g / 4, g % 4);
            for (l, q) in k.q.iter_mut().enumerate() {
                *q = ((qs[32 * h + l] >> (2 * j)) & 3) as i8;
            }
        }
        other => panic!("{other:?} has no packed layout"),
    }
    Some(k)
}

/// Q3_K's 16 scales (`scales[12]`: low 4 bits in bytes 0..8, high 2 bits in bytes 8..12), less
/// 32: −32..31, as ggml's dequantizer uses them.
fn q3k_scales(sc: &[u8]) -> [i8; 16] {
    std::array::from_fn(|j| {
        let lo = (sc[j % 8] >> (4 * (j / 8))) & 0x0f;
        let hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
        (lo | (hi << 4)) as i8 - 32
    })
}

/// Writes block `l`'s factors into the head of a superblock of `g.n` lanes.
#[cfg(test)]
fn write_head(head: &mut [u8], kind: Head, g: Geom, l: usize, k: &Block32) {
    let n = g.n;
    match kind {
        Head::F16 => head[2 * l..2 * l + 2].copy_from_slice(&k.scale16.to_le_bytes()),
        Head::F16Pair => {
            head[2 * l..2 * l + 2].copy_from_slice(&k.scale16.to_le_bytes());
            head[2 * n + 2 * l..2 * n + 2 * l + 2].copy_from_slice(&k.offset16.to_le_bytes());
        }
        // Lanes 0..8 and 8..16 are one K-quant block each, with one set of super-factors.
        Head::KScaleMin => {
            let h = l / 8;
            head[2 * h..2 * h + 2].copy_from_slice(&k.kf.0.to_le_bytes());
            head[K_SUPER + 2 * h..K_SUPER + 2 * h + 2].copy_from_slice(&k.kf.1.to_le_bytes());
            let strings = &mut head[2 * K_SUPER..];
            six_bit::set(&mut strings[..SIX_BYTES], l, k.km.0 as u8);
            six_bit::set(&mut strings[SIX_BYTES..], l, k.km.1 as u8);
        }
        Head::KScale8 => {
            let h = l / 8;
            head[2 * h..2 * h + 2].copy_from_slice(&k.kf.0.to_le_bytes());
            head[K_SUPER + l] = k.km.0 as u8;
        }
        Head::KHalves => {
            let h = l / 8;
            head[2 * h..2 * h + 2].copy_from_slice(&k.kf.0.to_le_bytes());
            head[K_SUPER + l] = k.km.0 as u8;
            head[K_SUPER + n + l] = k.km.1 as u8;
        }
        Head::KHalvesMin => {
            let h = l / 8;
            head[2 * h..2 * h + 2].copy_from_slice(&k.kf.0.to_le_bytes());
            head[K_SUPER + 2 * h..K_SUPER + 2 * h + 2].copy_from_slice(&k.kf.1.to_le_bytes());
            head[2 * K_SUPER + l] = k.km.0 as u8;
            head[2 * K_SUPER + n + l] = k.km.1 as u8;
        }
    }
}

/// Repacks one row from ggml's layout (`src`, one row of `dtype`) into `out` (`row_bytes`).
pub fn pack_row(dtype: WeightType, src: &[u8], out: &mut [u8]) {
    match dtype {
        WeightType::Q4K => pack_row_q4k(src, out),
        WeightType::Q5K => pack_row_q5k(src, out),
        WeightType::Q6K => pack_row_q6k(src, out),
        WeightType::Q3K => pack_row_q3k(src, out),
        WeightType::Q2K => pack_row_q2k(src, out),
        WeightType::IQ4_XS => pack_row_iq4xs(src, out),
        WeightType::Q4_0
        | WeightType::Q4_1
        | WeightType::Q5_0
        | WeightType::Q5_1
        | WeightType::Q8_0
        | WeightType::IQ4_NL => pack_row_blocks(dtype, src, out),
        other => panic!("{other:?} has no packed layout"),
    }
}

/// Four bytes at `i` of `b`, little-endian.
fn word(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Step pair `u`'s nibble-plane word of a lane whose 32 values are the low (`high` false) or
/// high nibbles of the 32 bytes `qs`: values 8u..8u + 4 in the low nibbles, 8u + 4..8u + 8 in
/// the high ones.
fn nibble_word(qs: &[u8], u: usize, high: bool) -> u32 {
    let (a, b) = (word(qs, 8 * u), word(qs, 8 * u + 4));
    if high {
        ((a >> 4) & 0x0f0f_0f0f) | (b & 0xf0f0_f0f0)
    } else {
        (a & 0x0f0f_0f0f) | ((b & 0x0f0f_0f0f) << 4)
    }
}

/// Writes `w` at byte `at` of `quants`, little-endian.
fn put(quants: &mut [u8], at: usize, w: u32) {
    quants[at..at + 4].copy_from_slice(&w.to_le_bytes());
}

/// Writes a Q4_K or Q5_K block's super-factors `(d, −dmin)` and its eight groups' 6-bit scales
/// and mins (`d dmin scales[12]`) into the head for lanes `l0..l0 + 8`.
fn k4_head(head: &mut [u8], l0: usize, blk: &[u8]) {
    let kb = l0 / 8;
    // Negating an f16 flips its sign bit, exactly.
    let (d, neg_dmin) = (f16_at(blk, 0), f16_at(blk, 2) ^ 0x8000);
    head[2 * kb..2 * kb + 2].copy_from_slice(&d.to_le_bytes());
    head[K_SUPER + 2 * kb..K_SUPER + 2 * kb + 2].copy_from_slice(&neg_dmin.to_le_bytes());
    let (sc, mn) = super::dequant::scale_min_k4(&blk[4..16]);
    let strings = &mut head[2 * K_SUPER..];
    for g in 0..8 {
        six_bit::set(&mut strings[..SIX_BYTES], l0 + g, sc[g]);
        six_bit::set(&mut strings[SIX_BYTES..], l0 + g, mn[g]);
    }
}

/// [`pack_row`] for Q4_K, four bytes at a time: the general path builds each value of each
/// block and places it, and Q4_K, most of a Q4_K_M file, is what a load without the
/// packed-weights file spends its time on.
fn pack_row_q4k(src: &[u8], out: &mut [u8]) {
    for_each_block(WeightType::Q4K, src, out, |head, quants, v, l0, blk| {
        k4_head(head, l0, blk);
        for g in 0..8 {
            let l = l0 + g;
            // Group g's values are the low (g even) or high nibbles of 32 bytes.
            let qs = &blk[16 + (g / 2) * 32..][..32];
            for u in 0..STEPS / 2 {
                put(quants, v * u + 4 * l, nibble_word(qs, u, g % 2 == 1));
            }
        }
    });
}

/// [`pack_row`] for Q5_K, four bytes at a time (see [`pack_row_q4k`]).
fn pack_row_q5k(src: &[u8], out: &mut [u8]) {
    for_each_block(WeightType::Q5K, src, out, |head, quants, v, l0, blk| {
        // `d dmin scales[12] qh[32] qs[128]`: Q4_K's groups, value t of group g with its fifth
        // bit at bit g of qh[t].
        k4_head(head, l0, blk);
        let (qh, qs) = (&blk[16..48], &blk[48..176]);
        for g in 0..8 {
            let l = l0 + g;
            let low = &qs[(g / 2) * 32..][..32];
            for u in 0..STEPS / 2 {
                put(quants, v * u + 4 * l, nibble_word(low, u, g % 2 == 1));
            }
            put(quants, 4 * v + 4 * l, bit_word(qh, g));
        }
    });
}

/// The bit plane's word of a block whose 32 fifth bits are the bits of `qh` (Q5_0's and Q5_1's
/// `qh`, value i's at bit i): byte j's bit s is bit 4s + j of `qh`.
fn fifth_bits(qh: u32) -> u32 {
    let mut w = 0u32;
    for s in 0..STEPS {
        // Bit j of the nibble to bit 8j: the four shifted copies the product adds do not
        // overlap, so nothing carries.
        w |= (((qh >> (4 * s)) & 0x0f).wrapping_mul(0x0020_4081) & 0x0101_0101) << s;
    }
    w
}

/// [`pack_row`] for the types of 32-value blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL), four
/// bytes at a time: Q5_0 and Q8_0 are most of llama.cpp's mix of the small Qwen models, Q4_1
/// all of SmolLM2's file.
fn pack_row_blocks(dtype: WeightType, src: &[u8], out: &mut [u8]) {
    let layout = Layout::of_packed(dtype);
    // Where the quants start in a block, and where Q5_0's and Q5_1's `qh` is.
    let (qs_at, qh_at) = match dtype {
        WeightType::Q4_0 | WeightType::IQ4_NL | WeightType::Q8_0 => (2, None),
        WeightType::Q4_1 => (4, None),
        WeightType::Q5_0 => (6, Some(2)),
        WeightType::Q5_1 => (8, Some(4)),
        other => unreachable!("{other:?} is not a type of 32-value blocks"),
    };
    for_each_block(dtype, src, out, |head, quants, v, l, blk| {
        let n = v / 4;
        head[2 * l..2 * l + 2].copy_from_slice(&blk[..2]);
        if layout.head() == Head::F16Pair {
            head[2 * n + 2 * l..2 * n + 2 * l + 2].copy_from_slice(&blk[2..4]);
        }
        let qs = &blk[qs_at..];
        if dtype == WeightType::Q8_0 {
            // Signed values are stored + 128.
            for s in 0..STEPS {
                put(quants, v * s + 4 * l, word(qs, 4 * s) ^ 0x8080_8080);
            }
            return;
        }
        // Value i < 16 is the low nibble of byte i, value i + 16 the high one; Q5_0's values,
        // stored + 16, are then the file's 5-bit ones.
        for u in 0..STEPS / 2 {
            put(quants, v * u + 4 * l, nibble_word(qs, u % 2, u >= 2));
        }
        if let Some(at) = qh_at {
            put(quants, 4 * v + 4 * l, fifth_bits(word(blk, at)));
        }
    });
}

/// Calls `f(head, quants, v, l0, blk)` for each block `blk` (the file's bytes) of a row of
/// `dtype`, with the head and quants of the superblock it is packed into (lanes `l0..l0 + w`,
/// `w` the block's values over 32: 8 for a K-quant block, else 1; `v` bytes per step vector:
/// `4n` in a tail of `n` lanes), after zeroing `out`.
fn for_each_block(
    dtype: WeightType,
    src: &[u8],
    out: &mut [u8],
    mut f: impl FnMut(&mut [u8], &mut [u8], usize, usize, &[u8]),
) {
    let layout = Layout::of_packed(dtype);
    let (ts, w) = (dtype.type_size(), dtype.block_size() / QK);
    out.fill(0);
    let blocks = src.len() / ts * w;
    debug_assert_eq!(out.len(), row_bytes(dtype, blocks * QK));
    for (si, (at, n)) in superblock_spans(layout, blocks).enumerate() {
        let sb = &mut out[at..at + layout.superblock_bytes_n(n)];
        let (head, quants) = sb.split_at_mut(layout.head_bytes_n(n));
        for b in 0..n / w {
            let blk = &src[(si * SB / w + b) * ts..][..ts];
            f(head, quants, Geom { n }.v(), w * b, blk);
        }
    }
}

/// [`pack_row`] for Q6_K, four bytes at a time (see [`pack_row_q4k`]; Q6_K is the rest of a
/// Q4_K_M file's matrices, its output among them).
fn pack_row_q6k(src: &[u8], out: &mut [u8]) {
    for_each_block(WeightType::Q6K, src, out, |head, quants, v, l0, blk| {
        // `ql[128] qh[64] scales[16] d`: value 32g + t of the block (t < 32) has its low 4 bits
        // in ql[64(g/4) + 32(g%2) + t] at bit 4((g%4)/2), its top 2 in qh[32(g/4) + t] at bit
        // 2(g%4), and values 32g..32g + 16 and 32g + 16..32g + 32 the scales 2g and 2g + 1. The
        // stored values are unsigned (value + 32), as the file's are.
        let (n, kb) = (v / 4, l0 / 8);
        let (ql, qh, sc) = (&blk[..128], &blk[128..192], &blk[192..208]);
        head[2 * kb..2 * kb + 2].copy_from_slice(&blk[208..210]);
        for g in 0..8 {
            let l = l0 + g;
            head[K_SUPER + l] = sc[2 * g];
            head[K_SUPER + n + l] = sc[2 * g + 1];
            let low = &ql[64 * (g / 4) + 32 * (g % 2)..][..32];
            for u in 0..STEPS / 2 {
                put(quants, v * u + 4 * l, nibble_word(low, u, (g % 4) / 2 == 1));
            }
            let top = &qh[32 * (g / 4)..][..32];
            for c in 0..2 {
                put(
                    quants,
                    4 * v + v * c + 4 * l,
                    two_bit_word(top, c, 2 * (g % 4)),
                );
            }
        }
    });
}

/// A 2-bit plane's word: chunk `c` of a lane holds steps 4c..4c + 4, step 4c + k in bits 2k,
/// 2k + 1, where value t of the lane is bits `shift`, `shift + 1` of `b[t]` (32 bytes).
fn two_bit_word(b: &[u8], c: usize, shift: usize) -> u32 {
    let mut w = 0u32;
    for k in 0..4 {
        w |= ((word(b, 16 * c + 4 * k) >> shift) & 0x0303_0303) << (2 * k);
    }
    w
}

/// A bit plane's word: byte j's bit s is value 4s + j's bit, bit `g` of `b[4s + j]` (32 bytes;
/// Q5_K's `qh`, Q3_K's `hmask`).
fn bit_word(b: &[u8], g: usize) -> u32 {
    let mut w = 0u32;
    for s in 0..STEPS {
        w |= ((word(b, 4 * s) >> g) & 0x0101_0101) << s;
    }
    w
}

/// [`pack_row`] for Q3_K, four bytes at a time (see [`pack_row_q4k`]).
fn pack_row_q3k(src: &[u8], out: &mut [u8]) {
    for_each_block(WeightType::Q3K, src, out, |head, quants, v, l0, blk| {
        // `hmask[32] qs[64] scales[12] d`: value t of group g has its low 2 bits at bit 2(g%4) of
        // qs[32(g/4) + t], its third at bit g of hmask[t]; stored as those 3 bits (value + 4).
        let (n, kb) = (v / 4, l0 / 8);
        let (hmask, qs) = (&blk[..32], &blk[32..96]);
        let sc = q3k_scales(&blk[96..108]);
        head[2 * kb..2 * kb + 2].copy_from_slice(&blk[108..110]);
        for g in 0..8 {
            let l = l0 + g;
            head[K_SUPER + l] = sc[2 * g] as u8;
            head[K_SUPER + n + l] = sc[2 * g + 1] as u8;
            let low = &qs[32 * (g / 4)..][..32];
            for c in 0..2 {
                put(quants, v * c + 4 * l, two_bit_word(low, c, 2 * (g % 4)));
            }
            put(quants, 2 * v + 4 * l, bit_word(hmask, g));
        }
    });
}

/// [`pack_row`] for Q2_K, four bytes at a time (see [`pack_row_q4k`]).
fn pack_row_q2k(src: &[u8], out: &mut [u8]) {
    for_each_block(WeightType::Q2K, src, out, |head, quants, v, l0, blk| {
        // `scales[16] qs[64] d dmin`: value t of group g is bits 2(g%4), 2(g%4) + 1 of
        // qs[32(g/4) + t]; each half group has a byte `scale | min << 4`.
        let (n, kb) = (v / 4, l0 / 8);
        let (sc, qs) = (&blk[..16], &blk[16..80]);
        let neg_dmin = f16_at(blk, 82) ^ 0x8000;
        head[2 * kb..2 * kb + 2].copy_from_slice(&blk[80..82]);
        head[K_SUPER + 2 * kb..K_SUPER + 2 * kb + 2].copy_from_slice(&neg_dmin.to_le_bytes());
        for g in 0..8 {
            let l = l0 + g;
            head[2 * K_SUPER + l] = sc[2 * g];
            head[2 * K_SUPER + n + l] = sc[2 * g + 1];
            let low = &qs[32 * (g / 4)..][..32];
            for c in 0..2 {
                put(quants, v * c + 4 * l, two_bit_word(low, c, 2 * (g % 4)));
            }
        }
    });
}

/// [`pack_row`] for IQ4_XS, four bytes at a time (see [`pack_row_q4k`]).
fn pack_row_iq4xs(src: &[u8], out: &mut [u8]) {
    for_each_block(WeightType::IQ4_XS, src, out, |head, quants, v, l0, blk| {
        // `d scales_h scales_l[4] qs[128]`: group g's multiplier is its 6-bit scale − 32 (low 4
        // bits in scales_l, top 2 in scales_h), its 32 grid indices nibbles of qs[16g..16g + 16].
        let kb = l0 / 8;
        head[2 * kb..2 * kb + 2].copy_from_slice(&blk[..2]);
        let scales_h = u16::from_le_bytes([blk[2], blk[3]]);
        for g in 0..8 {
            let l = l0 + g;
            let lo = (blk[4 + g / 2] >> (4 * (g % 2))) & 0x0f;
            let hi = ((scales_h >> (2 * g)) & 3) as u8;
            head[K_SUPER + l] = ((lo | (hi << 4)) as i8 - 32) as u8;
            let qs = &blk[8 + 16 * g..][..16];
            for u in 0..STEPS / 2 {
                put(quants, v * u + 4 * l, nibble_word(qs, u % 2, u >= 2));
            }
        }
    });
}

/// [`pack_row`] by way of each block's values ([`source_block`]), one value at a time: the
/// plain statement of every layout, which the word packers are tested against.
#[cfg(test)]
fn pack_row_values(dtype: WeightType, src: &[u8], out: &mut [u8]) {
    let layout = Layout::of_packed(dtype);
    out.fill(0);
    let blocks = src.len() / dtype.type_size() * dtype.block_size() / QK;
    debug_assert_eq!(out.len(), row_bytes(dtype, blocks * QK));
    for (si, (at, n)) in superblock_spans(layout, blocks).enumerate() {
        let g = Geom { n };
        let d = &mut out[at..at + layout.superblock_bytes_n(n)];
        let (head, quants) = d.split_at_mut(layout.head_bytes_n(n));
        let v = g.v();
        for l in 0..n {
            let Some(k) = source_block(dtype, src, si * SB + l) else {
                break;
            };
            write_head(head, layout.head(), g, l, &k);
            if layout.nibbles() {
                for u in 0..STEPS / 2 {
                    for j in 0..4 {
                        quants[v * u + 4 * l + j] =
                            k.q[8 * u + j] as u8 | ((k.q[8 * u + 4 + j] as u8) << 4);
                    }
                }
            } else if layout.five_bit() {
                // Q5_0's values are signed (− 16), Q5_1's and Q5_K's unsigned.
                let bias = if layout == Layout::Q5 { 16 } else { 0 };
                for s in 0..STEPS {
                    for j in 0..4 {
                        let q = (k.q[4 * s + j] + bias) as u8;
                        quants[v * (s / 2) + 4 * l + j] |= (q & 0x0f) << (4 * (s % 2));
                        quants[4 * v + 4 * l + j] |= (q >> 4) << s;
                    }
                }
            } else if layout == Layout::Q3 || layout == Layout::Q2 {
                // Q2's values are unsigned, Q3's signed (− 4); Q2 has no bit plane.
                let bias = if layout == Layout::Q3 { 4 } else { 0 };
                let u = k.q.map(|q| (q + bias) as u8);
                for s in 0..STEPS {
                    for j in 0..4 {
                        let q = u[4 * s + j];
                        quants[v * (s / 4) + 4 * l + j] |= (q & 3) << (2 * (s % 4));
                        if layout == Layout::Q3 {
                            quants[2 * v + 4 * l + j] |= (q >> 2) << s;
                        }
                    }
                }
            } else if layout == Layout::Q6 {
                let u = k.q.map(|q| (q + 32) as u8);
                for s in 0..STEPS {
                    for j in 0..4 {
                        let q = u[4 * s + j];
                        quants[v * (s / 2) + 4 * l + j] |= (q & 0x0f) << (4 * (s % 2));
                        quants[4 * v + v * (s / 4) + 4 * l + j] |= (q >> 4) << (2 * (s % 4));
                    }
                }
            } else {
                // Signed values are stored + 128.
                let flip = 0x80;
                for s in 0..STEPS {
                    for j in 0..4 {
                        quants[v * s + 4 * l + j] = (k.q[4 * s + j] as u8) ^ flip;
                    }
                }
            }
        }
    }
}

/// The quant of value `i` (0..32) of lane `l` in a packed superblock of `g.n` lanes: signed
/// (offset taken off) for Q8, Q6, Q5, Q4 and Q3, unsigned for Q4M, Q5M and Q2.
#[inline(always)]
fn packed_quant(layout: Layout, quants: &[u8], g: Geom, l: usize, i: usize) -> i32 {
    let (s, j, v) = (i / 4, i % 4, g.v());
    match layout.body() {
        Layout::Q6 => {
            let lo = (quants[v * (s / 2) + 4 * l + j] >> (4 * (s % 2))) & 0x0f;
            let hi = (quants[4 * v + v * (s / 4) + 4 * l + j] >> (2 * (s % 4))) & 3;
            (lo | (hi << 4)) as i32 - 32
        }
        Layout::Q3 => {
            let lo = (quants[v * (s / 4) + 4 * l + j] >> (2 * (s % 4))) & 3;
            let hi = (quants[2 * v + 4 * l + j] >> s) & 1;
            (lo | (hi << 2)) as i32 - 4
        }
        Layout::Q2 => ((quants[v * (s / 4) + 4 * l + j] >> (2 * (s % 4))) & 3) as i32,
        Layout::Q4 | Layout::Q4M | Layout::I4 => {
            let byte = quants[v * (i / 8) + 4 * l + i % 4];
            let n = if i % 8 < 4 { byte & 0x0f } else { byte >> 4 };
            match layout.body() {
                Layout::Q4 => n as i32 - 8,
                Layout::I4 => IQ4_VALUES[n as usize] as i32,
                _ => n as i32,
            }
        }
        Layout::Q5 | Layout::Q5M => {
            let lo = (quants[v * (s / 2) + 4 * l + j] >> (4 * (s % 2))) & 0x0f;
            let hi = (quants[4 * v + 4 * l + j] >> s) & 1;
            let u = (lo | (hi << 4)) as i32;
            if layout == Layout::Q5 { u - 16 } else { u }
        }
        _ => (quants[v * (i / 4) + 4 * l + i % 4] ^ 0x80) as i8 as i32,
    }
}

/// The two factors of lane `l` of a whole superblock's head: scale and offset (Q4M, Q4K, Q5M,
/// Q5K), the scales of the two halves (Q6, Q3, Q2), or the scale twice (Q8, Q4).
pub fn head_factors(layout: Layout, head: &[u8], l: usize) -> (f32, f32) {
    head_factors_n(layout, head, SB, l)
}

/// [`head_factors`] of a superblock of `n` lanes.
#[inline(always)]
fn head_factors_n(layout: Layout, head: &[u8], n: usize, l: usize) -> (f32, f32) {
    let f16 = |i: usize| f16_bits_to_f32(f16_at(head, i));
    let h = l / 8;
    match layout.head() {
        Head::F16 => {
            let d = f16(2 * l);
            (d, d)
        }
        Head::F16Pair => (f16(2 * l), f16(2 * n + 2 * l)),
        Head::KScaleMin => {
            let strings = &head[2 * K_SUPER..];
            (
                f16(2 * h) * six_bit::get(&strings[..SIX_BYTES], l) as f32,
                f16(K_SUPER + 2 * h) * six_bit::get(&strings[SIX_BYTES..], l) as f32,
            )
        }
        Head::KScale8 => {
            let d = f16(2 * h) * head[K_SUPER + l] as i8 as f32;
            (d, d)
        }
        Head::KHalves => (
            f16(2 * h) * head[K_SUPER + l] as i8 as f32,
            f16(2 * h) * head[K_SUPER + n + l] as i8 as f32,
        ),
        Head::KHalvesMin => (
            f16(2 * h) * (head[2 * K_SUPER + l] & 0x0f) as f32,
            f16(2 * h) * (head[2 * K_SUPER + n + l] & 0x0f) as f32,
        ),
    }
}

/// The offsets of lane `l`'s two half blocks in a whole superblock's head, for layouts with
/// [`Layout::half_mins`] (Q2: `−dmin · min`, exact as the scales are); zeros for the others.
pub fn head_offsets(layout: Layout, head: &[u8], l: usize) -> (f32, f32) {
    head_offsets_n(layout, head, SB, l)
}

/// [`head_offsets`] of a superblock of `n` lanes.
#[inline(always)]
fn head_offsets_n(layout: Layout, head: &[u8], n: usize, l: usize) -> (f32, f32) {
    if layout.head() != Head::KHalvesMin {
        return (0.0, 0.0);
    }
    let m = f16_bits_to_f32(f16_at(head, K_SUPER + 2 * (l / 8)));
    (
        m * (head[2 * K_SUPER + l] >> 4) as f32,
        m * (head[2 * K_SUPER + n + l] >> 4) as f32,
    )
}

/// Blocks of 32 values in a packed row of `bytes` bytes.
fn row_blocks(layout: Layout, bytes: usize) -> usize {
    let sbb = layout.superblock_bytes();
    let tail = (1..SB)
        .find(|&n| layout.superblock_bytes_n(n) == bytes % sbb)
        .unwrap_or(0);
    bytes / sbb * SB + tail
}

/// The superblocks of a packed row: each one's lane count, head and quants.
fn superblocks_of(layout: Layout, row: &[u8]) -> impl Iterator<Item = (Geom, &[u8], &[u8])> {
    superblock_spans(layout, row_blocks(layout, row.len())).map(move |(at, n)| {
        let sb = &row[at..at + layout.superblock_bytes_n(n)];
        let (head, quants) = sb.split_at(layout.head_bytes_n(n));
        (Geom { n }, head, quants)
    })
}

/// Dequantizes one packed row to `out` (`cols` values): the values of ggml's dequantizer.
pub fn dequantize_row(dtype: WeightType, src: &[u8], out: &mut [f32]) {
    let layout = Layout::of_packed(dtype);
    for (si, (g, head, quants)) in superblocks_of(layout, src).enumerate() {
        let Some(out) = out.get_mut(si * SB * QK..) else {
            return;
        };
        // Whole superblocks with constant offsets (prompts on narrow packed matrices
        // dequantize every row this way).
        if g.n == SB {
            dequantize_superblock(layout, Geom { n: SB }, head, quants, out);
        } else {
            dequantize_superblock(layout, g, head, quants, out);
        }
    }
}

#[inline(always)]
fn dequantize_superblock(layout: Layout, g: Geom, head: &[u8], quants: &[u8], out: &mut [f32]) {
    for l in 0..g.n {
        let Some(o) = out.get_mut(l * QK..(l + 1) * QK) else {
            return;
        };
        let (d, m) = head_factors_n(layout, head, g.n, l);
        let (o0, o1) = head_offsets_n(layout, head, g.n, l);
        for (i, o) in o.iter_mut().enumerate() {
            let q = packed_quant(layout, quants, g, l, i) as f32;
            *o = if layout.has_offset() {
                d * q + m
            } else if layout.half_mins() {
                // ggml's `dl · q − ml`: the product is exact, so the one rounding is ggml's.
                if i < QK / 2 { d * q + o0 } else { m * q + o1 }
            } else if layout.halves() && i >= QK / 2 {
                m * q
            } else {
                d * q
            };
        }
    }
}

/// Portable dot product of one packed row with quantized activations: the reference for the
/// SIMD kernels, with the same integer products per block.
pub fn dot_row(dtype: WeightType, row: &[u8], x: &[BlockQ8]) -> f32 {
    let layout = Layout::of_packed(dtype);
    let mut acc = 0f32;
    for (si, (g, head, quants)) in superblocks_of(layout, row).enumerate() {
        for l in 0..g.n {
            let Some(xb) = x.get(si * SB + l) else {
                break;
            };
            let dot = |r: std::ops::Range<usize>| -> f32 {
                r.map(|i| packed_quant(layout, quants, g, l, i) * xb.qs[i] as i32)
                    .sum::<i32>() as f32
            };
            let (d, m) = head_factors_n(layout, head, g.n, l);
            let (o0, o1) = head_offsets_n(layout, head, g.n, l);
            let sum = |r: std::ops::Range<usize>| -> f32 {
                xb.qs[r].iter().map(|&q| q as i32).sum::<i32>() as f32
            };
            acc += if layout.half_mins() {
                d * xb.d * dot(0..QK / 2)
                    + m * xb.d * dot(QK / 2..QK)
                    + o0 * xb.d * sum(0..QK / 2)
                    + o1 * xb.d * sum(QK / 2..QK)
            } else if layout.halves() {
                d * xb.d * dot(0..QK / 2) + m * xb.d * dot(QK / 2..QK)
            } else if layout.has_offset() {
                d * xb.d * dot(0..QK) + m * xb.s
            } else {
                d * xb.d * dot(0..QK)
            };
        }
    }
    acc
}

/// One token's activations laid out like a packed superblock: per superblock 8 steps of 64
/// quants (lane `l` = block `l`), then the kernels' per-lane factors: `d` (block scale) and
/// `so` (block scale × quant sum × the layout's `Layout::act_offset`; for Q6 and Q3 the sum of
/// values 0..16, with `so2` that of values 16..32). Missing blocks of a padded superblock are
/// zeros. `io` holds the same offsets in integers for the layouts whose offset is a constant
/// of the type (all but Q4M, Q5M and their K forms): `−offset · quant sum`, per superblock 16
/// lanes of whole blocks, or for Q6 and Q3 16 lanes of values 0..16 then 16 of values 16..32
/// ([`Layout::io_lanes`]); the VNNI prompt tile starts its integer sums there instead of
/// subtracting `so` in floats.
#[derive(Clone, Debug)]
pub struct PackedActs {
    pub qs: Lines<i8>,
    pub d: Lines<f32>,
    pub so: Lines<f32>,
    pub so2: Lines<f32>,
    pub io: Lines<i32>,
}

/// A cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// Element types whose all-zero bytes are the value zero.
pub trait ZeroBits: Copy {}
impl ZeroBits for i8 {}
impl ZeroBits for i32 {}
impl ZeroBits for f32 {}

/// A zero-initialized array on cache-line boundaries. The kernels read the activations a
/// 64-byte vector at a time; the heap aligns to 16 bytes, and on Zen 4 a vector load 16 bytes
/// off a 32-byte boundary takes the load slots of two (`kernel_speed`'s prompt tile on one
/// thread ran faster with the activations aligned).
#[derive(Clone)]
pub struct Lines<T: ZeroBits> {
    lines: Vec<Line>,
    len: usize,
    of: std::marker::PhantomData<T>,
}

impl<T: ZeroBits> Lines<T> {
    pub fn zeroed(len: usize) -> Self {
        let bytes = len * std::mem::size_of::<T>();
        Lines {
            lines: vec![Line([0; 64]); bytes.div_ceil(64)],
            len,
            of: std::marker::PhantomData,
        }
    }
}

impl<T: ZeroBits> std::ops::Deref for Lines<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the lines hold at least `len` values of T (sizes of 1 or 4 bytes, alignment
        // at most 64), every byte initialized, and zero bytes are a valid T (`ZeroBits`).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }
}

impl<T: ZeroBits> std::ops::DerefMut for Lines<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

impl<T: ZeroBits + std::fmt::Debug> std::fmt::Debug for Lines<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: ZeroBits + PartialEq> PartialEq for Lines<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl PackedActs {
    pub fn new(x: &[BlockQ8], dtype: WeightType) -> Self {
        let nsb = x.len().div_ceil(SB);
        let layout = Layout::of_packed(dtype);
        let offset = layout.act_offset();
        let mut qs = Lines::zeroed(nsb * SB * QK);
        let mut d = Lines::zeroed(nsb * SB);
        let mut so = Lines::zeroed(nsb * SB);
        let mut so2 = Lines::zeroed(nsb * SB);
        let iol = layout.io_lanes();
        let mut io = Lines::zeroed(nsb * iol);
        // Exact: the sums are of at most 32 quants, the offsets at most 128.
        let int_offset = offset as i32;
        let symmetric = !layout.has_offset();
        for (b, xb) in x.iter().enumerate() {
            let (si, l) = (b / SB, b % SB);
            for s in 0..STEPS {
                let at = si * SB * QK + 64 * s + 4 * l;
                qs[at..at + 4].copy_from_slice(&xb.qs[4 * s..4 * s + 4]);
            }
            d[b] = xb.d;
            if layout.halves() {
                let half = |r: std::ops::Range<usize>| xb.qs[r].iter().map(|&q| q as i32).sum();
                let (a, z): (i32, i32) = (half(0..QK / 2), half(QK / 2..QK));
                so[b] = xb.d * a as f32 * offset;
                so2[b] = xb.d * z as f32 * offset;
                io[si * iol + l] = -int_offset * a;
                io[si * iol + SB + l] = -int_offset * z;
            } else {
                so[b] = xb.s * offset;
                if symmetric {
                    let sum: i32 = xb.qs.iter().map(|&q| q as i32).sum();
                    io[si * iol + l] = -int_offset * sum;
                }
            }
        }
        Self { qs, d, so, so2, io }
    }

    /// Zero activations (pads a tile of tokens).
    pub fn zeros(superblocks: usize) -> Self {
        Self {
            qs: Lines::zeroed(superblocks * SB * QK),
            d: Lines::zeroed(superblocks * SB),
            so: Lines::zeroed(superblocks * SB),
            so2: Lines::zeroed(superblocks * SB),
            // Enough for any layout's `io_lanes`.
            io: Lines::zeroed(superblocks * 2 * SB),
        }
    }
}

/// IQ4's grid values + 128 (the unsigned form of the signed-byte layouts); the byte
/// shuffle that looks them up indexes 16 bytes within each 128-bit lane.
pub const IQ4_LUT_U8: [u8; 16] = {
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = (IQ4_VALUES[i] as i16 + 128) as u8;
        i += 1;
    }
    t
};

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The packed types of 32-value blocks.
    const BLOCK_TYPES: [WeightType; 6] = [
        WeightType::Q4_0,
        WeightType::Q4_1,
        WeightType::Q5_0,
        WeightType::Q5_1,
        WeightType::Q8_0,
        WeightType::IQ4_NL,
    ];

    /// A row's tail takes only its own lanes: the one-scale and scale-and-offset layouts are
    /// then exactly ggml's size at every width, the K-quants too but for a tail's head.
    #[test]
    fn packed_rows_are_the_size_of_ggml_rows() {
        for cols in [512, 576, 800, 896, 1536, 4864, 8960] {
            for dtype in BLOCK_TYPES {
                let ggml = cols / dtype.block_size() * dtype.type_size();
                assert_eq!(row_bytes(dtype, cols), ggml, "{dtype:?} {cols}");
            }
            if cols.is_multiple_of(256) {
                // Bytes over the file's per whole superblock (IQ4_XS's and Q3_K's i8
                // multipliers, 4 and 8 more than their 6-bit ones) and in a tail of one K-quant
                // block (the unused super-factors of the second, Q4_K's and Q5_K's 6-bit strings
                // of all 16 lanes, Q3_K's 16 scale bytes against 12, Q2_K's unused super-factors
                // of the second block).
                for (dtype, per_superblock, tail_extra) in [
                    (WeightType::Q4K, 0, 16),
                    (WeightType::Q5K, 0, 16),
                    (WeightType::Q6K, 0, 2),
                    (WeightType::Q3K, 8, 6),
                    (WeightType::Q2K, 0, 4),
                    (WeightType::IQ4_XS, 4, 4),
                ] {
                    let tail = if cols % 512 == 256 { tail_extra } else { 0 };
                    let want = cols / 256 * dtype.type_size() + cols / 512 * per_superblock + tail;
                    assert_eq!(row_bytes(dtype, cols), want, "{dtype:?} {cols}");
                }
            }
        }
    }

    /// A row of one whole superblock and a tail of `n` blocks: its bytes in the file's format
    /// (a fixed pattern) and packed.
    pub(crate) fn row_with_tail(dtype: WeightType, n: usize) -> (Vec<u8>, Vec<u8>) {
        let cols = (SB + n) * QK;
        let src: Vec<u8> = (0..cols / dtype.block_size() * dtype.type_size())
            .map(|i| (i * 7919 % 251) as u8)
            .collect();
        let mut row = vec![0u8; row_bytes(dtype, cols)];
        pack_row(dtype, &src, &mut row);
        (src, row)
    }

    /// The paths that pack four bytes at a time write what the general one does, for whole
    /// superblocks and tails.
    #[test]
    fn words_pack_as_values_do() {
        let packed = WeightType::ALL
            .into_iter()
            .filter(|&t| Layout::of(t).is_some());
        assert_eq!(packed.clone().count(), 12);
        for dtype in packed {
            for cols in [256usize, 512, 576, 768, 800, 896, 1536, 4864, 8960] {
                if !cols.is_multiple_of(dtype.block_size()) {
                    continue;
                }
                let src: Vec<u8> = (0..cols / dtype.block_size() * dtype.type_size())
                    .map(|i| (i * 7919 % 251) as u8)
                    .collect();
                let n = row_bytes(dtype, cols);
                let (mut a, mut b) = (vec![0xa5u8; n], vec![0x5au8; n]);
                pack_row(dtype, &src, &mut a);
                pack_row_values(dtype, &src, &mut b);
                assert_eq!(a, b, "{dtype:?} {cols}");
            }
        }
    }

    /// Widening a tail gives the superblock a row padded to whole superblocks had.
    #[test]
    fn a_widened_tail_is_the_padded_superblock() {
        for (dtype, n) in [
            (WeightType::Q4_1, 2),
            (WeightType::Q8_0, 9),
            (WeightType::Q5_0, 12),
            (WeightType::Q4K, 8),
            (WeightType::Q6K, 8),
            (WeightType::Q3K, 8),
            (WeightType::Q2K, 8),
            (WeightType::IQ4_XS, 8),
        ] {
            let layout = Layout::of(dtype).unwrap();
            let (src, row) = row_with_tail(dtype, n);
            let mut wide = vec![0u8; layout.superblock_bytes()];
            widen_tail(layout, n, &row[layout.superblock_bytes()..], &mut wide);
            // The padded layout: the tail's blocks packed into a whole superblock.
            let mut padded = vec![0u8; 2 * layout.superblock_bytes()];
            let mut src2 = src.clone();
            src2.resize(2 * SB * QK / dtype.block_size() * dtype.type_size(), 0);
            pack_row(dtype, &src2, &mut padded);
            let blocks_wide = &padded[layout.superblock_bytes()..];
            // Packing the zero blocks writes their (zero) scales; everything else must match.
            let mut d = vec![0f32; SB * QK];
            let mut e = vec![0f32; SB * QK];
            dequantize_row(dtype, &wide, &mut d);
            dequantize_row(dtype, blocks_wide, &mut e);
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&d[..n * QK]), bits(&e[..n * QK]), "{dtype:?}");
            assert!(d[n * QK..].iter().all(|&v| v == 0.0), "{dtype:?}");
        }
    }
}
