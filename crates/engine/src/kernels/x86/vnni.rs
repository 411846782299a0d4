//! AVX-512 VNNI integer kernels: four Q8_0/Q4_0 rows per call, and the packed superblock rows
//! (`packed.rs`) for decode and the 2×4 prefill tiles.

use super::*;

/// Four Q8_0 rows against one activation row: the activation loads are shared and the four
/// rows give the core independent chains. `dpbusd` needs an unsigned operand, so the sign of
/// each weight moves onto the activation.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot4_q8_0_vnni(w: *const u8, row_bytes: usize, x: &[BlockQ8]) -> [f32; 4] {
    let mut acc = [_mm256_setzero_ps(); 4];
    // SAFETY: the caller guarantees 4 rows of x.len() blocks at `w` with stride `row_bytes`.
    unsafe {
        for (b, xb) in x.iter().enumerate() {
            let xq = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            for (r, acc) in acc.iter_mut().enumerate() {
                let blk = w.add(r * row_bytes + b * Q8_0_BYTES);
                let wq = _mm256_loadu_si256(blk.add(2) as *const __m256i);
                let aw = _mm256_abs_epi8(wq);
                let sx = _mm256_sign_epi8(xq, wq);
                let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, sx);
                let d = _mm256_set1_ps(f16_scale(blk) * xb.d);
                *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot), *acc);
            }
        }
        [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
    }
}

/// Four Q4_0 rows against one activation row. Nibbles stay unsigned (0..15) for `dpbusd`; the
/// `-8` offset is applied once per block through the activation block sum `s`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot4_q4_0_vnni(w: *const u8, row_bytes: usize, x: &[BlockQ8]) -> [f32; 4] {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut corr = [0f32; 4];
    let m4 = _mm_set1_epi8(0x0f);
    // SAFETY: the caller guarantees 4 rows of x.len() blocks at `w` with stride `row_bytes`.
    unsafe {
        for (b, xb) in x.iter().enumerate() {
            let xq = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
            for r in 0..4 {
                let blk = w.add(r * row_bytes + b * Q4_0_BYTES);
                let raw = _mm_loadu_si128(blk.add(2) as *const __m128i);
                let lo = _mm_and_si128(raw, m4);
                let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
                let q = _mm256_set_m128i(hi, lo);
                let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, xq);
                let dw = f16_scale(blk);
                acc[r] =
                    _mm256_fmadd_ps(_mm256_set1_ps(dw * xb.d), _mm256_cvtepi32_ps(dot), acc[r]);
                corr[r] += dw * xb.s;
            }
        }
        [
            hsum(acc[0]) - 8.0 * corr[0],
            hsum(acc[1]) - 8.0 * corr[1],
            hsum(acc[2]) - 8.0 * corr[2],
            hsum(acc[3]) - 8.0 * corr[3],
        ]
    }
}

/// Where a superblock's vectors lie: a whole superblock has 64-byte steps and 16 lanes; a row's
/// tail (`packed.rs`) has `4n`-byte steps and `n` lanes, read with masked loads that leave the
/// other lanes zero. Kernels pass [`Geo::FULL`] as a constant, so whole superblocks keep plain
/// loads and constant offsets.
#[derive(Clone, Copy)]
pub(super) struct Geo {
    /// Bytes of a step's vector.
    pub v: usize,
    /// Lanes.
    pub n: usize,
    pub mask: __mmask16,
}

impl Geo {
    pub const FULL: Geo = Geo {
        v: 64,
        n: 16,
        mask: 0xffff,
    };

    /// A tail of `n` lanes (1..16).
    pub fn tail(n: usize) -> Geo {
        Geo {
            v: 4 * n,
            n,
            mask: ((1u32 << n) - 1) as __mmask16,
        }
    }

    #[inline(always)]
    pub fn full(self) -> bool {
        self.mask == 0xffff
    }
}

/// One step's vector (16 lanes of 4 bytes) at `p`.
#[inline(always)]
pub(super) unsafe fn load_step(p: *const u8, g: Geo) -> __m512i {
    // SAFETY: the caller guarantees `g.v` bytes at `p`; masked-off lanes are not read.
    unsafe {
        if g.full() {
            _mm512_loadu_si512(p as *const __m512i)
        } else {
            _mm512_maskz_loadu_epi32(g.mask, p as *const i32)
        }
    }
}

/// Step `st`'s low 4 bits in a plane of nibbles (steps `2u` and `2u + 1` share chunk `u`),
/// not yet masked: the bits above them are the other step's.
#[inline(always)]
unsafe fn nibble_step(quants: *const u8, st: usize, g: Geo) -> __m512i {
    // SAFETY: the caller guarantees the nibble plane at `quants`.
    unsafe {
        let z = load_step(quants.add(g.v * (st / 2)), g);
        if st.is_multiple_of(2) {
            z
        } else {
            _mm512_srli_epi16::<4>(z)
        }
    }
}

/// Step `st`'s 64 bytes of an I4 or I4K superblock (`packed.rs`): IQ4's grid values + 128, looked
/// up from the nibble indices with one byte shuffle.
#[inline(always)]
pub(super) unsafe fn iq4_operand(quants: *const u8, st: usize, g: Geo) -> __m512i {
    // SAFETY: the caller guarantees a packed I4 superblock's quants at `quants`.
    unsafe {
        let lut = _mm512_broadcast_i32x4(_mm_loadu_si128(
            crate::kernels::packed::IQ4_LUT_U8.as_ptr() as *const __m128i,
        ));
        let idx = _mm512_and_si512(nibble_step(quants, st, g), _mm512_set1_epi8(0x0f));
        _mm512_shuffle_epi8(lut, idx)
    }
}

/// Step `st`'s 64 unsigned bytes of a Q6 superblock's quants (`packed.rs`): the 6-bit values,
/// low nibble | high bit pair << 4.
#[inline(always)]
pub(super) unsafe fn q6_operand(quants: *const u8, st: usize, g: Geo) -> __m512i {
    // SAFETY: the caller guarantees a packed Q6 superblock's quants at `quants`.
    unsafe {
        let lo = nibble_step(quants, st, g);
        let h = load_step(quants.add(4 * g.v + g.v * (st / 4)), g);
        // Bits 2k, 2k+1 of each byte to bits 4, 5; the 16-bit shifts carry bits across bytes,
        // which the masks below drop.
        let h = match st % 4 {
            0 => _mm512_slli_epi16::<4>(h),
            1 => _mm512_slli_epi16::<2>(h),
            2 => h,
            _ => _mm512_srli_epi16::<2>(h),
        };
        // lo | (h & 0x30) in one instruction: truth table 0xF8 = a | (b & c) for a = lo,
        // b = h, c = 0x30.
        let lo = _mm512_and_si512(lo, _mm512_set1_epi8(0x0f));
        _mm512_ternarylogic_epi32::<0xF8>(lo, h, _mm512_set1_epi8(0x30))
    }
}

/// Step `st`'s 64 unsigned bytes of a Q3 superblock's quants (`packed.rs`): the 3-bit values,
/// Q2's values | bit `st` of the bit plane << 2.
#[inline(always)]
pub(super) unsafe fn q3_operand(quants: *const u8, st: usize, g: Geo) -> __m512i {
    // SAFETY: the caller guarantees a packed Q3 superblock's quants at `quants`.
    unsafe {
        let lo = q2_operand(quants, st, g);
        // Bit st of each byte to bit 2 (bits carried across bytes are masked off): past the
        // half's 4 bits by a shift whose count need not be a constant (the prompt tile's loop
        // over the halves), then the step's place in its half by an immediate.
        let h = load_step(quants.add(2 * g.v), g);
        let h = _mm512_srl_epi16(h, _mm_cvtsi64_si128(4 * (st / 4) as i64));
        let h = match st % 4 {
            0 => _mm512_slli_epi16::<2>(h),
            1 => _mm512_slli_epi16::<1>(h),
            2 => h,
            _ => _mm512_srli_epi16::<1>(h),
        };
        // lo | (h & 0x04), as in `q6_operand`.
        _mm512_ternarylogic_epi32::<0xF8>(lo, h, _mm512_set1_epi8(0x04))
    }
}

/// Step `st`'s 64 unsigned bytes of a Q2 superblock's quants (`packed.rs`): the 2-bit values,
/// bits `2(st % 4)`, `2(st % 4) + 1` of 2-bit chunk `st / 4`.
#[inline(always)]
pub(super) unsafe fn q2_operand(quants: *const u8, st: usize, g: Geo) -> __m512i {
    // SAFETY: the caller guarantees a packed Q2 (or Q3) superblock's quants at `quants`.
    unsafe {
        let c = load_step(quants.add(g.v * (st / 4)), g);
        let lo = match st % 4 {
            0 => c,
            1 => _mm512_srli_epi16::<2>(c),
            2 => _mm512_srli_epi16::<4>(c),
            _ => _mm512_srli_epi16::<6>(c),
        };
        _mm512_and_si512(lo, _mm512_set1_epi8(0x03))
    }
}

/// Step `st`'s operand of a layout whose lanes' halves have their own scales (Q6, Q3, Q2).
#[inline(always)]
pub(super) unsafe fn halves_operand<const L: u8>(quants: *const u8, st: usize, g: Geo) -> __m512i {
    // SAFETY: the caller guarantees a packed Q6, Q3 or Q2 superblock's quants at `quants`.
    unsafe {
        if L == L_Q3 {
            q3_operand(quants, st, g)
        } else if L == L_Q2 {
            q2_operand(quants, st, g)
        } else {
            q6_operand(quants, st, g)
        }
    }
}

/// Step `st`'s 64 unsigned bytes of a Q5, Q5M or Q5K superblock's quants (`packed.rs`): the
/// 5-bit values, low nibble | bit `st` of the bit plane << 4.
#[inline(always)]
pub(super) unsafe fn q5_operand(quants: *const u8, st: usize, g: Geo) -> __m512i {
    // SAFETY: the caller guarantees a packed 5-bit superblock's quants at `quants`.
    unsafe {
        let lo = nibble_step(quants, st, g);
        let h = load_step(quants.add(4 * g.v), g);
        // Bit st of each byte to bit 4 (bits carried across bytes are masked off).
        let h = match st {
            0 => _mm512_slli_epi16::<4>(h),
            1 => _mm512_slli_epi16::<3>(h),
            2 => _mm512_slli_epi16::<2>(h),
            3 => _mm512_slli_epi16::<1>(h),
            4 => h,
            5 => _mm512_srli_epi16::<1>(h),
            6 => _mm512_srli_epi16::<2>(h),
            _ => _mm512_srli_epi16::<3>(h),
        };
        let lo = _mm512_and_si512(lo, _mm512_set1_epi8(0x0f));
        // lo | (h & 0x10), as in `q6_operand`.
        _mm512_ternarylogic_epi32::<0xF8>(lo, h, _mm512_set1_epi8(0x10))
    }
}

/// The `STEPS` dot-product operands of one packed superblock row, handed to `f` in order:
/// the byte layouts load them, the nibble ones split each 64-byte chunk into low and high
/// nibbles, the 3-, 5- and 6-bit ones join their planes, I4 looks its indices up in the grid.
#[inline(always)]
pub(super) unsafe fn for_each_operand(
    layout: crate::kernels::packed::Layout,
    quants: *const u8,
    g: Geo,
    mut f: impl FnMut(usize, __m512i),
) {
    // SAFETY: the caller guarantees a packed superblock's quants at `quants`.
    unsafe {
        if layout == crate::kernels::packed::Layout::Q6 {
            for st in 0..8 {
                f(st, q6_operand(quants, st, g));
            }
        } else if layout == crate::kernels::packed::Layout::Q3 {
            for st in 0..8 {
                f(st, q3_operand(quants, st, g));
            }
        } else if layout.five_bit() {
            for st in 0..8 {
                f(st, q5_operand(quants, st, g));
            }
        } else if layout.grid() {
            for st in 0..8 {
                f(st, iq4_operand(quants, st, g));
            }
        } else if layout.nibbles() {
            let m4 = _mm512_set1_epi8(0x0f);
            for u in 0..4 {
                let z = load_step(quants.add(g.v * u), g);
                f(2 * u, _mm512_and_si512(z, m4));
                f(2 * u + 1, _mm512_and_si512(_mm512_srli_epi16(z, 4), m4));
            }
        } else {
            for s in 0..8 {
                f(s, load_step(quants.add(g.v * s), g));
            }
        }
    }
}

/// Bytes ahead of the row being read that the prompt tiles and the AVX2 decode kernels
/// prefetch into L2 (measured with `kernel_speed` on 4 KiB pages: 4 to 16 KiB all do;
/// nothing, or L1 instead of L2, is slower).
pub(super) const PREFETCH_AHEAD: usize = 8192;

/// Bytes ahead that the AVX2 half-precision decode kernel requests into L2 (the AVX-512 ones
/// take theirs from `CpuCaps::ahead`). The distances that suited 4 KiB pages are not those that
/// suit huge pages, where the weights are; this one was chosen on huge pages
/// (docs/benchmarks.md, "Prefetch distance on huge pages").
pub(super) const DECODE_PREFETCH_L2: usize = 3072;

/// The packed layouts as const parameters of the decode kernels (see `packed::Layout`).
pub const L_Q8: u8 = 0;
pub const L_Q4: u8 = 1;
pub const L_Q4M: u8 = 2;
pub const L_Q6: u8 = 3;
pub const L_Q5M: u8 = 4;
pub const L_Q4K: u8 = 5;
pub const L_Q5K: u8 = 6;
pub const L_I4K: u8 = 7;
pub const L_Q5: u8 = 8;
pub const L_I4: u8 = 9;
pub const L_Q3: u8 = 10;
pub const L_Q2: u8 = 11;

pub fn layout_code(l: crate::kernels::packed::Layout) -> u8 {
    use crate::kernels::packed::Layout;
    match l {
        Layout::Q8 => L_Q8,
        Layout::Q4 => L_Q4,
        Layout::Q4M => L_Q4M,
        Layout::Q6 => L_Q6,
        Layout::Q5M => L_Q5M,
        Layout::Q4K => L_Q4K,
        Layout::Q5K => L_Q5K,
        Layout::I4K => L_I4K,
        Layout::Q5 => L_Q5,
        Layout::I4 => L_I4,
        Layout::Q3 => L_Q3,
        Layout::Q2 => L_Q2,
    }
}

pub(super) const fn layout_of(code: u8) -> crate::kernels::packed::Layout {
    use crate::kernels::packed::Layout;
    match code {
        L_Q8 => Layout::Q8,
        L_Q4 => Layout::Q4,
        L_Q4M => Layout::Q4M,
        L_Q6 => Layout::Q6,
        L_Q5M => Layout::Q5M,
        L_Q4K => Layout::Q4K,
        L_Q5K => Layout::Q5K,
        L_I4K => Layout::I4K,
        L_Q5 => Layout::Q5,
        L_Q3 => Layout::Q3,
        L_Q2 => Layout::Q2,
        _ => Layout::I4,
    }
}

/// The 16 lanes' two factors (`packed::head_factors`): scale and offset, the scales of the two
/// half blocks (Q6), or the scale twice (Q8, Q4).
#[inline(always)]
pub(super) unsafe fn packed_head(
    l: crate::kernels::packed::Layout,
    sb: *const u8,
    g: Geo,
) -> (__m512, __m512) {
    use crate::kernels::packed::{Head, K_SUPER, SIX_BYTES};
    // SAFETY: the caller guarantees a packed superblock's head at `sb`, with quants after it.
    unsafe {
        // `g.n` f16 values; zeros (zero scales) past them.
        let f16 = |o: usize| {
            _mm512_cvtph_ps(if g.full() {
                _mm256_loadu_si256(sb.add(o) as *const __m256i)
            } else {
                _mm256_maskz_loadu_epi16(g.mask, sb.add(o) as *const i16)
            })
        };
        match l.head() {
            Head::F16 => {
                let sw = f16(0);
                (sw, sw)
            }
            Head::F16Pair => (f16(0), f16(2 * g.n)),
            Head::KScaleMin => {
                // [d of lanes 0..8, of 8..16, −dmin of lanes 0..8, of 8..16].
                let f = k_super(_mm_loadl_epi64(sb as *const __m128i));
                let hi = _mm512_add_epi32(K_LO, _mm512_set1_epi32(2));
                let at = 2 * K_SUPER;
                (
                    _mm512_mul_ps(_mm512_permutexvar_ps(K_LO, f), six_bit_factors(sb.add(at))),
                    _mm512_mul_ps(
                        _mm512_permutexvar_ps(hi, f),
                        six_bit_factors(sb.add(at + SIX_BYTES)),
                    ),
                )
            }
            Head::KScale8 => {
                let d = _mm512_mul_ps(k_scale(sb), i8_factors(sb.add(K_SUPER), g));
                (d, d)
            }
            Head::KHalves => {
                let d = k_scale(sb);
                (
                    _mm512_mul_ps(d, i8_factors(sb.add(K_SUPER), g)),
                    _mm512_mul_ps(d, i8_factors(sb.add(K_SUPER + g.n), g)),
                )
            }
            Head::KHalvesMin => {
                let d = k_scale(sb);
                let at = 2 * K_SUPER;
                (
                    _mm512_mul_ps(d, nibble_factors::<0>(sb.add(at), g)),
                    _mm512_mul_ps(d, nibble_factors::<0>(sb.add(at + g.n), g)),
                )
            }
        }
    }
}

/// The 16 lanes' offsets of their two half blocks (`packed::head_offsets`) for a layout with
/// `Layout::half_mins` (Q2: `−dmin · min`).
#[inline(always)]
pub(super) unsafe fn packed_offsets(sb: *const u8, g: Geo) -> (__m512, __m512) {
    // SAFETY: as for `half_offsets`.
    unsafe { (half_offsets(sb, g, 0), half_offsets(sb, g, 1)) }
}

/// The 16 lanes' offsets of half block `half` (0 or 1) of [`packed_offsets`].
#[inline(always)]
pub(super) unsafe fn half_offsets(sb: *const u8, g: Geo, half: usize) -> __m512 {
    use crate::kernels::packed::K_SUPER;
    // SAFETY: the caller guarantees a `KHalvesMin` head at `sb`.
    unsafe {
        let m = k_scale(sb.add(K_SUPER));
        _mm512_mul_ps(m, nibble_factors::<4>(sb.add(2 * K_SUPER + half * g.n), g))
    }
}

/// The 4-bit fields at bit `SHIFT` of the `g.n` bytes at `p`, as f32 (zeros past them).
#[inline(always)]
unsafe fn nibble_factors<const SHIFT: u32>(p: *const u8, g: Geo) -> __m512 {
    // SAFETY: the caller guarantees `g.n` bytes at `p`; the callers enable avx512bw.
    unsafe {
        let b = if g.full() {
            _mm_loadu_si128(p as *const __m128i)
        } else {
            _mm_maskz_loadu_epi8(g.mask, p as *const i8)
        };
        let v = _mm512_srli_epi32::<SHIFT>(_mm512_cvtepu8_epi32(b));
        _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0x0f)))
    }
}

/// `g.n` i8 multipliers at `p` as f32 (zeros past them).
#[inline(always)]
unsafe fn i8_factors(p: *const u8, g: Geo) -> __m512 {
    // SAFETY: the caller guarantees `g.n` bytes at `p`; the callers enable avx512bw.
    unsafe {
        let b = if g.full() {
            _mm_loadu_si128(p as *const __m128i)
        } else {
            _mm_maskz_loadu_epi8(g.mask, p as *const i8)
        };
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b))
    }
}

/// Lane `l`'s index of its super-factor in a K head: 0 for lanes 0..8, 1 for 8..16.
const K_LO: __m512i = unsafe {
    std::mem::transmute::<[i32; 16], __m512i>([0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
};

/// The super-scale of each lane of a K head with one super-factor per half (`KScale8`,
/// `KHalves`: two f16 values at `sb`).
#[inline(always)]
unsafe fn k_scale(sb: *const u8) -> __m512 {
    // SAFETY: the caller points at a K head; the callers enable avx512f and f16c.
    unsafe {
        let f = k_super(_mm_cvtsi32_si128((sb as *const i32).read_unaligned()));
        _mm512_permutexvar_ps(K_LO, f)
    }
}

/// A K head's f16 super-factors (the low 4 of `v`) as f32, in the low lanes.
#[inline(always)]
unsafe fn k_super(v: __m128i) -> __m512 {
    // SAFETY: register arithmetic; the callers enable avx512f and f16c.
    unsafe { _mm512_zextps128_ps512(_mm_cvtph_ps(v)) }
}

/// The 16 lanes' 6-bit fields (`packed::six_bit`) of the 12 bytes at `p`, as f32. Reads 16
/// bytes (the packed layouts have quants after the head).
#[inline(always)]
pub(super) unsafe fn six_bit_factors(p: *const u8) -> __m512 {
    use crate::kernels::packed::six_bit;
    // SAFETY: the caller guarantees 16 readable bytes at `p`.
    unsafe {
        let v = _mm512_broadcast_i32x4(_mm_loadu_si128(p as *const __m128i));
        let ctl = _mm512_loadu_si512(six_bit::SHUFFLE.as_ptr() as *const __m512i);
        let top = _mm512_loadu_si512(six_bit::TO_TOP.as_ptr() as *const __m512i);
        let t = _mm512_sllv_epi32(_mm512_shuffle_epi8(v, ctl), top);
        _mm512_cvtepi32_ps(_mm512_srli_epi32::<26>(t))
    }
}

/// Whether [`tiles2x4_packed_vnni`] takes a layout's head factors unpacked once per row
/// ([`unpack_heads_vnni`]): the K heads whose two factors (and Q2's offsets) take fields,
/// shuffles and conversions to unpack; the one-factor heads read their f16 values as they are.
pub const fn vnni_unpacked_heads(layout: crate::kernels::packed::Layout) -> bool {
    use crate::kernels::packed::Head;
    matches!(
        layout.head(),
        Head::KScaleMin | Head::KHalves | Head::KHalvesMin
    )
}

/// Floats per superblock of a row's unpacked head factors for [`tiles2x4_packed_vnni`]: both
/// factors' 16 lanes, and for a layout with `Layout::half_mins` (Q2) both halves' offsets.
pub const fn head_floats(layout: crate::kernels::packed::Layout) -> usize {
    if layout.half_mins() { 64 } else { 32 }
}

/// Floats of one row's unpacked head factors ([`head_floats`] per superblock, a tail
/// included).
pub const fn heads_len(layout: crate::kernels::packed::Layout, blocks: usize) -> usize {
    head_floats(layout) * blocks.div_ceil(16)
}

/// A packed row's head factors ([`packed_head`]) per superblock, tail included, into `out`
/// ([`heads_len`] floats): the K layouts' factors take a few shuffles, conversions and
/// multiplies per superblock, which a prompt tile otherwise pays again for every four tokens.
///
/// # Safety
/// `row` is a packed row of `blocks` blocks in layout `L`; `out` has room for
/// [`heads_len`]`(blocks)` floats for its layout.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn unpack_heads_vnni<const L: u8>(row: *const u8, blocks: usize, out: *mut f32) {
    // SAFETY: as the caller guarantees.
    unsafe {
        let layout = const { layout_of(L) };
        let sbb = layout.superblock_bytes();
        let (full, tail) = (blocks / 16, blocks % 16);
        for s in 0..full + usize::from(tail > 0) {
            let g = if s < full { Geo::FULL } else { Geo::tail(tail) };
            let (a, b) = packed_head(layout, row.add(s * sbb), g);
            let o = out.add(head_floats(layout) * s);
            _mm512_storeu_ps(o, a);
            _mm512_storeu_ps(o.add(16), b);
            if layout.half_mins() {
                let (c, d) = packed_offsets(row.add(s * sbb), g);
                _mm512_storeu_ps(o.add(32), c);
                _mm512_storeu_ps(o.add(48), d);
            }
        }
    }
}

/// Both rows' head factors of superblock `s`: read from `heads` ([`unpack_heads_vnni`]), or
/// unpacked from the rows' heads at `w`.
#[inline(always)]
unsafe fn row_heads<const PRE: bool>(
    layout: crate::kernels::packed::Layout,
    w: [*const u8; 2],
    g: Geo,
    heads: [*const f32; 2],
    s: usize,
) -> [(__m512, __m512); 2] {
    // SAFETY: the caller's (`tile_superblocks`); the callers enable avx512f.
    unsafe {
        if PRE {
            heads.map(|h| {
                (
                    _mm512_loadu_ps(h.add(head_floats(layout) * s)),
                    _mm512_loadu_ps(h.add(head_floats(layout) * s + 16)),
                )
            })
        } else {
            [packed_head(layout, w[0], g), packed_head(layout, w[1], g)]
        }
    }
}

/// Four consecutive packed rows against one token, one row after the other.
///
/// Reading the rows in turn makes the weights one forward stream: interleaving four rows
/// superblock by superblock (which loads each activation operand once for the four) jumped
/// between four places a row apart, and streamed 7% slower on two cores here (26.5 against
/// 28.6 GB/s over 1.5 GB; the activations stay in L1 either way). The rows share one call and
/// one horizontal reduction: most matrices of a small model are a few superblocks wide, and
/// a call and a reduction per row held the core on setup and on each row's last sum.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot4_packed_vnni<const L: u8>(
    row: *const u8,
    row_bytes: usize,
    blocks: usize,
    xq: *const i8,
    xd: *const f32,
    xso: [*const f32; 2],
    ahead: (usize, usize),
) -> [f32; 4] {
    // SAFETY: the caller guarantees four packed rows of `blocks` blocks, `row_bytes` apart, at
    // `row`, and 512 quants and 16 factors per (whole or tail) superblock at xq, xd, xso.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); 4];
        for (i, a) in acc.iter_mut().enumerate() {
            *a = row_lanes::<L>(row.add(i * row_bytes), blocks, xq, xd, xso, ahead);
        }
        reduce4(acc)
    }
}

/// The lane sums of four vectors: halves, then quarters of all four at once, then within the
/// quarters.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn reduce4(a: [__m512; 4]) -> [f32; 4] {
    // [a0 q0+q2, a0 q1+q3, a1 q0+q2, a1 q1+q3] (q: 128-bit quarters), and the same of a2, a3.
    let x = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0x44>(a[0], a[1]),
        _mm512_shuffle_f32x4::<0xee>(a[0], a[1]),
    );
    let y = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0x44>(a[2], a[3]),
        _mm512_shuffle_f32x4::<0xee>(a[2], a[3]),
    );
    // Quarter k holds four partial sums of a_k.
    let z = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0x88>(x, y),
        _mm512_shuffle_f32x4::<0xdd>(x, y),
    );
    let z = _mm512_add_ps(z, _mm512_permute_ps::<0x4e>(z));
    let z = _mm512_add_ps(z, _mm512_permute_ps::<0xb1>(z));
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    let mut out = [0f32; 4];
    // SAFETY: `out` has room for the four floats stored.
    unsafe {
        _mm_storeu_ps(
            out.as_mut_ptr(),
            _mm512_castps512_ps128(_mm512_permutexvar_ps(idx, z)),
        )
    };
    out
}

/// One packed row (see `packed.rs`) of `blocks` blocks of 32 against one token's packed
/// activations, the decode kernel: per superblock 8 `vpdpbusd` in two independent chains (low
/// and high nibbles for Q4 and Q4M, even and odd steps for Q8) leave the 16 block sums in 16
/// lanes, then one multiply and two FMAs apply the scales and the offsets; the lines ahead
/// are requested into L2 and L1 as it goes, `ahead` bytes ahead (`(l2, l1)`, l1 0 for none).
/// A tail superblock takes the same path with masked loads.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_packed_vnni<const L: u8>(
    w: *const u8,
    blocks: usize,
    xq: *const i8,
    xd: *const f32,
    xso: [*const f32; 2],
    ahead: (usize, usize),
) -> f32 {
    // SAFETY: the caller guarantees a packed row of `blocks` blocks at `w`, and 512 quants and
    // 16 factors per superblock at xq, xd, xso.
    unsafe { _mm512_reduce_add_ps(row_lanes::<L>(w, blocks, xq, xd, xso, ahead)) }
}

/// [`dot_packed_vnni`] before its horizontal sum: the row's 16 lane sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn row_lanes<const L: u8>(
    w: *const u8,
    blocks: usize,
    xq: *const i8,
    xd: *const f32,
    xso: [*const f32; 2],
    ahead: (usize, usize),
) -> __m512 {
    // SAFETY: as for `dot_packed_vnni`.
    unsafe {
        let sbb = const { layout_of(L).superblock_bytes() };
        let (full, tail) = (blocks / 16, blocks % 16);
        let mut acc = _mm512_setzero_ps();
        let x = Acts1 { xq, xd, xso };
        acc = superblock_dots::<L, false>(w, 0, full, x, Geo::FULL, ahead, acc);
        if tail > 0 {
            let g = Geo::tail(tail);
            acc = superblock_dots::<L, true>(w.add(full * sbb), full, 1, x, g, ahead, acc);
        }
        acc
    }
}

/// Superblocks `s0..s0 + count` of a row, the first at `w`, against the activations' same
/// superblocks, added to `acc`: whole ones, or (`TAIL`) one tail of `g.n` lanes.
// Not `inline(always)` (which excludes target features): its closures must be compiled with
// the features, or the intrinsics in them become calls. `TAIL` a constant keeps the whole
// superblocks' loads plain and their offsets constant where it is not inlined.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn superblock_dots<const L: u8, const TAIL: bool>(
    w: *const u8,
    s0: usize,
    count: usize,
    x: Acts1,
    g: Geo,
    (l2, l1): (usize, usize),
    mut acc: __m512,
) -> __m512 {
    // SAFETY: as for `dot_packed_vnni`.
    unsafe {
        let Acts1 { xq, xd, xso } = x;
        let g = if TAIL { g } else { Geo::FULL };
        let stride = const { layout_of(L).superblock_bytes() };
        for i in 0..count {
            let (ws, s) = (w.add(i * stride), s0 + i);
            let layout = const { layout_of(L) };
            let sbb = layout.superblock_bytes_n(g.n);
            let hb = layout.head_bytes_n(g.n);
            let x = xq.add(s * 512);
            // The hardware prefetcher alone leaves decode well below a plain read's bandwidth
            // here; asking for the lines a few KiB ahead into L2 closes most of the gap, and
            // for those just ahead into L1 lets the loads stop waiting on L2 while the core
            // works on the superblock before.
            // `wrapping_add`: prefetches past the end of the matrix are harmless, but must not
            // be pointer arithmetic out of bounds.
            let a = ws.wrapping_add(l2);
            let near = ws.wrapping_add(l1);
            for o in (0..sbb).step_by(64) {
                _mm_prefetch::<_MM_HINT_T1>(a.wrapping_add(o) as *const i8);
                if l1 > 0 {
                    _mm_prefetch::<_MM_HINT_T0>(near.wrapping_add(o) as *const i8);
                }
            }
            let mut p = [_mm512_setzero_si512(); 2];
            if layout.nibbles() && !layout.grid() {
                // High nibbles are masked in place (16 × their value) and the sum shifted back
                // once per superblock, not shifted per operand: 512-bit shifts share port 0
                // with `vpdpbusd` on this class of processor, and the four shifts per
                // superblock held Q4_0 at 26 GB/s where Q8_0 streamed at 30 (TinyLlama decode
                // 1.13×). The products stay far inside i32 (4 × 240 × 128 per step).
                let m4 = _mm512_set1_epi8(0x0f);
                let mh = _mm512_set1_epi8(0xf0u8 as i8);
                for u in 0..4 {
                    let x0 = _mm512_loadu_si512(x.add(128 * u) as *const __m512i);
                    let x1 = _mm512_loadu_si512(x.add(128 * u + 64) as *const __m512i);
                    let z = load_step(ws.add(hb + g.v * u), g);
                    p[0] = _mm512_dpbusd_epi32(p[0], _mm512_and_si512(z, m4), x0);
                    p[1] = _mm512_dpbusd_epi32(p[1], _mm512_and_si512(z, mh), x1);
                }
                p[1] = _mm512_srai_epi32::<4>(p[1]);
            } else {
                for st in 0..8 {
                    let xv = _mm512_loadu_si512(x.add(64 * st) as *const __m512i);
                    let z = if layout.halves() {
                        halves_operand::<L>(ws.add(hb), st, g)
                    } else if layout.five_bit() {
                        q5_operand(ws.add(hb), st, g)
                    } else if layout.grid() {
                        iq4_operand(ws.add(hb), st, g)
                    } else {
                        load_step(ws.add(hb + g.v * st), g)
                    };
                    // Q6, Q3: the chains are the two half blocks, each with its own scale.
                    let c = if layout.halves() { st / 4 } else { st % 2 };
                    p[c] = _mm512_dpbusd_epi32(p[c], z, xv);
                }
            }
            let (sw, mw) = packed_head(layout, ws, g);
            let xdv = _mm512_loadu_ps(xd.add(s * 16));
            let so = _mm512_loadu_ps(xso[0].add(s * 16));
            if layout.halves() {
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[0]), _mm512_mul_ps(sw, xdv), acc);
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[1]), _mm512_mul_ps(mw, xdv), acc);
                // Q6's − 32 and Q3's − 4 are the scales times a constant (in `so`, `so2`); Q2's
                // mins have factors of their own.
                let (o0, o1) = if layout.half_mins() {
                    packed_offsets(ws, g)
                } else {
                    (sw, mw)
                };
                acc = _mm512_fnmadd_ps(o0, so, acc);
                acc = _mm512_fnmadd_ps(o1, _mm512_loadu_ps(xso[1].add(s * 16)), acc);
            } else {
                let d = _mm512_mul_ps(sw, xdv);
                let sum = _mm512_add_epi32(p[0], p[1]);
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), d, acc);
                acc = _mm512_fnmadd_ps(mw, so, acc);
            }
        }
        acc
    }
}

/// One token's packed activations (`PackedActs`): quants, block scales, float offsets (two
/// sets for Q6's half blocks).
#[derive(Clone, Copy)]
struct Acts1 {
    xq: *const i8,
    xd: *const f32,
    xso: [*const f32; 2],
}

/// Four tokens' packed activations (`PackedActs`): quants, block scales, float offsets (two
/// sets for Q6's half blocks), integer offsets.
#[derive(Clone, Copy)]
pub struct Acts {
    pub xq: [*const i8; 4],
    pub xd: [*const f32; 4],
    pub xso: [[*const f32; 2]; 4],
    pub xio: [*const i32; 4],
    /// Whether the tile requests the rows' lines ahead into L2: for the first group of tokens
    /// over a task's rows, which brings them from memory; the later groups find them in L2.
    pub fetch: bool,
}

/// Where [`tiles2x4_packed_vnni`] writes: row `r`, token `t` of four at `at + t · stride + r`,
/// the first `tokens` tokens of the four; `add` adds to what is there (a later stretch of
/// columns) instead of storing.
#[derive(Clone, Copy)]
pub struct TileOut {
    pub at: *mut f32,
    pub stride: usize,
    pub tokens: usize,
    pub add: bool,
}

/// [`tile2x4_packed_vnni`] for the row pairs `pairs` of a packed matrix of `rows` rows
/// (`row_bytes` apart, from `w`; an odd last row is paired with itself), written to `out`.
/// One call per group of four tokens: a call per pair spent a few percent of a prompt's
/// products on its arguments and its dispatch. With `PRE`, the rows' head factors are read
/// from `heads.0` ([`unpack_heads_vnni`] of each pair's two rows in turn, from the first
/// pair's, `heads.1` floats apart) instead of unpacked again for every group of tokens.
///
/// # Safety
/// As for [`tile2x4_packed_vnni`], for every row; `out` must have room for every (token, row)
/// written, and no other thread write them; with `PRE`, `heads` holds the factors of every
/// pair's rows.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn tiles2x4_packed_vnni<const L: u8, const PRE: bool>(
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    pairs: std::ops::Range<usize>,
    blocks: usize,
    x: Acts,
    heads: (*const f32, usize),
    out: TileOut,
) {
    // SAFETY: as the caller guarantees.
    unsafe {
        let (heads, per_row) = heads;
        let first = pairs.start;
        for pair in pairs {
            let r0 = 2 * pair;
            let r1 = (r0 + 1).min(rows - 1);
            let at = [w.add(r0 * row_bytes), w.add(r1 * row_bytes)];
            let h = if PRE {
                let h0 = heads.add(2 * (pair - first) * per_row);
                [h0, h0.add(per_row)]
            } else {
                [std::ptr::null(); 2]
            };
            let v = tile2x4_packed_vnni::<L, PRE>(at, blocks, x, h);
            for (dt, vt) in v.iter().enumerate().take(out.tokens) {
                for (i, val) in vt.iter().enumerate().take(r1 - r0 + 1) {
                    let o = out.at.add(dt * out.stride + r0 + i);
                    *o = if out.add { *o + *val } else { *val };
                }
            }
        }
    }
}

/// Two packed rows × four tokens: each weight operand feeds four `vpdpbusd`, each activation
/// operand two, so the nibble unpacking and the loads are shared and the kernel runs on the dot
/// instructions (64 multiply-adds each, about five times f32 FMA on this class of processor).
/// `rows[i]` points at row i (of `blocks` blocks), `x`'s pointers `[t]` at token t's packed
/// activations.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile2x4_packed_vnni<const L: u8, const PRE: bool>(
    rows: [*const u8; 2],
    blocks: usize,
    x: Acts,
    heads: [*const f32; 2],
) -> [[f32; 2]; 4] {
    // SAFETY: as for `dot_packed_vnni`, for both rows and all four tokens, and the layout's
    // integer offsets (`Layout::io_lanes`) per superblock at xio; with `PRE`, each row's
    // unpacked head factors at `heads`.
    unsafe {
        let sbb = const { layout_of(L).superblock_bytes() };
        let (full, tail) = (blocks / 16, blocks % 16);
        let mut acc = [[_mm512_setzero_ps(); 2]; 4];
        tile_superblocks::<L, false, PRE>(rows, 0, full, x, Geo::FULL, heads, &mut acc);
        if tail > 0 {
            let w = [rows[0].add(full * sbb), rows[1].add(full * sbb)];
            let g = Geo::tail(tail);
            tile_superblocks::<L, true, PRE>(w, full, 1, x, g, heads, &mut acc);
        }
        let mut out = [[0f32; 2]; 4];
        _mm256_storeu_ps(out.as_mut_ptr() as *mut f32, sums8(acc));
        out
    }
}

/// The eight horizontal sums of `acc`, token-major, by one tree of shuffles and adds: eight
/// reductions of their own take three times the instructions, once per row pair, which on rows
/// of a few superblocks is a share of the tile.
#[inline(always)]
unsafe fn sums8(acc: [[__m512; 2]; 4]) -> __m256 {
    // SAFETY: register arithmetic; the callers enable avx512f.
    unsafe {
        let a = [
            acc[0][0], acc[0][1], acc[1][0], acc[1][1], acc[2][0], acc[2][1], acc[3][0], acc[3][1],
        ];
        // Each pair of vectors to 8 partial sums each, side by side.
        let b: [__m512; 4] = std::array::from_fn(|i| {
            let (x, y) = (a[2 * i], a[2 * i + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x44>(x, y),
                _mm512_shuffle_f32x4::<0xee>(x, y),
            )
        });
        // To 4 partial sums per vector: 128-bit lane k of c[h] holds vector 4h + k's.
        let c: [__m512; 2] = std::array::from_fn(|h| {
            let (x, y) = (b[2 * h], b[2 * h + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0x88>(x, y),
                _mm512_shuffle_f32x4::<0xdd>(x, y),
            )
        });
        let e = _mm512_add_ps(
            _mm512_unpacklo_ps(c[0], c[1]),
            _mm512_unpackhi_ps(c[0], c[1]),
        );
        // Lane 4k: vector k's sum, lane 4k + 1: vector 4 + k's.
        let f = _mm512_add_ps(e, _mm512_permute_ps::<0x4e>(e));
        let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm512_castps512_ps256(_mm512_permutexvar_ps(idx, f))
    }
}

/// Superblocks `s0..s0 + count` of two rows, the first at `rows`, against the same
/// superblocks of four tokens, added to `acc`: whole ones, or (`TAIL`) one tail of `g.n` lanes
/// (see [`superblock_dots`] for the attributes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_superblocks<const L: u8, const TAIL: bool, const PRE: bool>(
    rows: [*const u8; 2],
    s0: usize,
    count: usize,
    x: Acts,
    g: Geo,
    heads: [*const f32; 2],
    acc: &mut [[__m512; 2]; 4],
) {
    // SAFETY: as for `tile2x4_packed_vnni`.
    unsafe {
        let Acts {
            xq,
            xd,
            xso,
            xio,
            fetch,
        } = x;
        // Where the offset is a constant of the type, the integer sums start at
        // `−offset · Σ quants` (`PackedActs::io`) and no float multiply-add subtracts it: float
        // multiply-adds run on the ports of `vpdpbusd` on Zen 4 and Zen 5, and
        // the Q6 tile spent one on its offsets for every four dot instructions.
        let symmetric = const { !layout_of(L).has_offset() };
        let g = if TAIL { g } else { Geo::FULL };
        let stride = const { layout_of(L).superblock_bytes() };
        // Local accumulators: the caller's stay in memory when this is not inlined.
        let mut acc_r = *acc;
        for i in 0..count {
            let (s, w0, w1) = (s0 + i, rows[0].add(i * stride), rows[1].add(i * stride));
            let acc = &mut acc_r;
            // The layout is a constant: with it a run-time value, choosing between the two sets of
            // Q6 accumulators kept all of them in memory, which cost Q4_0 prompts a third.
            let layout = const { layout_of(L) };
            let (sbb, hb) = (layout.superblock_bytes_n(g.n), layout.head_bytes_n(g.n));
            // As in the decode kernel: a batch of a few tokens (continuous batching) is bound by
            // the weight stream, which stalled on its loads without the lines requested ahead.
            if fetch {
                for w in [w0, w1] {
                    let a = w.wrapping_add(PREFETCH_AHEAD);
                    for o in (0..sbb).step_by(64) {
                        _mm_prefetch::<_MM_HINT_T1>(a.wrapping_add(o) as *const i8);
                    }
                }
            }
            if layout.halves() {
                // Each half block under its own scale, one half after the other: with both
                // halves' sums live at once (16 accumulators beside the 8 sums and 8 operands)
                // the registers spilled, and Q6_K prompts ran at half of Q4_K's rate.
                let factors = row_heads::<PRE>(layout, [w0, w1], g, heads, s);
                // `half` picks the step range, the factor and each token's offset sums alike.
                #[allow(clippy::needless_range_loop)]
                for half in 0..2 {
                    let mut p: [[__m512i; 2]; 4] = std::array::from_fn(|t| {
                        let o = if layout.half_mins() {
                            _mm512_setzero_si512()
                        } else {
                            _mm512_loadu_si512(xio[t].add(s * 32 + 16 * half) as *const _)
                        };
                        [o, o]
                    });
                    // A loop, not `array::from_fn`: Q3's operand in its closure was compiled as
                    // a call per operand.
                    let mut ops1 = [_mm512_setzero_si512(); 4];
                    for (k, op) in ops1.iter_mut().enumerate() {
                        *op = halves_operand::<L>(w1.add(hb), 4 * half + k, g);
                    }
                    for (k, &wq1) in ops1.iter().enumerate() {
                        let step = 4 * half + k;
                        let wq0 = halves_operand::<L>(w0.add(hb), step, g);
                        for t in 0..4 {
                            let xv = _mm512_loadu_si512(
                                xq[t].add(s * 512 + 64 * step) as *const __m512i
                            );
                            p[t][0] = _mm512_dpbusd_epi32(p[t][0], wq0, xv);
                            p[t][1] = _mm512_dpbusd_epi32(p[t][1], wq1, xv);
                        }
                    }
                    for t in 0..4 {
                        let d = _mm512_loadu_ps(xd[t].add(s * 16));
                        for r in 0..2 {
                            let f = if half == 0 {
                                factors[r].0
                            } else {
                                factors[r].1
                            };
                            acc[t][r] = _mm512_fmadd_ps(
                                _mm512_cvtepi32_ps(p[t][r]),
                                _mm512_mul_ps(f, d),
                                acc[t][r],
                            );
                        }
                    }
                    // Q2's mins: a factor per row and half, against each token's half sums.
                    if layout.half_mins() {
                        let o = if PRE {
                            let at = 64 * s + 32 + 16 * half;
                            [0, 1].map(|r| _mm512_loadu_ps(heads[r].add(at)))
                        } else {
                            [half_offsets(w0, g, half), half_offsets(w1, g, half)]
                        };
                        for t in 0..4 {
                            let so = _mm512_loadu_ps(xso[t][half].add(s * 16));
                            for (r, &o) in o.iter().enumerate() {
                                acc[t][r] = _mm512_fnmadd_ps(o, so, acc[t][r]);
                            }
                        }
                    }
                }
                continue;
            }
            let mut p: [[__m512i; 2]; 4] = std::array::from_fn(|t| {
                let o = if symmetric {
                    _mm512_loadu_si512(xio[t].add(s * 16) as *const _)
                } else {
                    _mm512_setzero_si512()
                };
                [o, o]
            });
            let mut ops1 = [_mm512_setzero_si512(); 8];
            for_each_operand(layout, w1.add(hb), g, |step, wq| ops1[step] = wq);
            for_each_operand(layout, w0.add(hb), g, |step, wq0| {
                let wq1 = ops1[step];
                for t in 0..4 {
                    let xv = _mm512_loadu_si512(xq[t].add(s * 512 + 64 * step) as *const __m512i);
                    p[t][0] = _mm512_dpbusd_epi32(p[t][0], wq0, xv);
                    p[t][1] = _mm512_dpbusd_epi32(p[t][1], wq1, xv);
                }
            });
            let heads = row_heads::<PRE>(layout, [w0, w1], g, heads, s);
            for t in 0..4 {
                let d = _mm512_loadu_ps(xd[t].add(s * 16));
                for r in 0..2 {
                    let (sw, mw) = heads[r];
                    let f = _mm512_mul_ps(sw, d);
                    acc[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[t][r]), f, acc[t][r]);
                    if !symmetric {
                        let so = _mm512_loadu_ps(xso[t][0].add(s * 16));
                        acc[t][r] = _mm512_fnmadd_ps(mw, so, acc[t][r]);
                    }
                }
            }
        }
        *acc = acc_r;
    }
}
