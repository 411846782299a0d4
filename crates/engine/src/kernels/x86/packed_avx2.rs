//! The packed superblock rows (`packed.rs`) on AVX2 alone: the decode kernel of processors
//! without AVX-512 VNNI, most laptops and desktops.
//!
//! A superblock's 16 blocks sit in the 16 32-bit lanes of a 64-byte step; here each step is two
//! 256-bit halves (blocks 0..8 and 8..16) and `vpdpbusd` becomes `vpmaddubsw` + `vpmaddwd`.
//! `vpmaddubsw` saturates its 16-bit pair sums, so the unsigned operand must stay small: nibbles
//! (Q4, Q4M) and 5-bit values (Q5, Q5M, rebuilt from their planes) are used as they are, and their pair sums are added in 16 bits
//! over as many steps as cannot overflow before one `vpmaddwd` widens them; the layouts whose
//! bytes are signed values stored + 128 (Q8, Q6) would overflow, so they are turned back into
//! signed bytes and multiplied with llama.cpp's sign trick, which also makes their activation
//! offset terms unnecessary. The prompt tile for Q6 takes its unsigned 6-bit values instead,
//! two steps per 16-bit sum, with the offset from the activations' sums (`tile2x4_wide_avx2`).

use super::vnni::{PREFETCH_AHEAD, layout_of};
use super::*;
use crate::kernels::packed::Layout;

/// Four consecutive packed rows against one token, one row after the other (one forward
/// stream, as the VNNI kernel reads them). `slack`: at least [`TAIL_SLACK`] readable bytes of
/// the same buffer follow the fourth row (the first three always have the next row after them).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot4_packed_avx2<const L: u8>(
    row: *const u8,
    row_bytes: usize,
    blocks: usize,
    xq: *const i8,
    xd: *const f32,
    xso: [*const f32; 2],
    slack: bool,
) -> [f32; 4] {
    // SAFETY: the caller guarantees four packed rows of `blocks` blocks, `row_bytes` apart, at
    // `row`, the slack it claims after them, and 512 quants and 16 factors per superblock at
    // xq, xd, xso.
    unsafe {
        std::array::from_fn(|i| {
            let slack = i < 3 || slack;
            dot_packed_avx2::<L>(row.add(i * row_bytes), blocks, xq, xd, xso, slack)
        })
    }
}

/// How far past a row's end the decode kernel may read when told it has slack: a tail's
/// 32-byte halves start inside the tail, so at most 31 bytes beyond it.
pub const TAIL_SLACK: usize = 32;

/// Room for any layout's whole superblock.
pub const SB_ROOM: usize = 576;

/// Where a superblock's vectors lie, as `vnni::Geo`: a whole superblock has 64-byte steps; a
/// row's tail of `n` lanes `4n`-byte steps (each 256-bit half holds lanes `8h..8h+8` at byte
/// `32h` of a step either way), read with masked loads, or with whole ones where `over` says
/// the bytes past the tail may be read: the lanes past it then hold whatever follows, whose
/// integer sums (finite, and against the zeros `PackedActs` pads superblocks with) meet
/// factors that stay masked to zero, since a stray f16 could be a NaN. The decode kernel
/// passes [`G2::FULL`] as a constant for whole superblocks.
#[derive(Clone, Copy)]
struct G2 {
    v: usize,
    n: usize,
    over: bool,
}

impl G2 {
    const FULL: G2 = G2 {
        v: 64,
        n: 16,
        over: false,
    };

    #[inline(always)]
    fn full(self) -> bool {
        self.n == 16
    }

    /// Lanes of half `h` present.
    #[inline(always)]
    fn lanes(self, h: usize) -> usize {
        self.n.saturating_sub(8 * h).min(8)
    }
}

/// Half `h` of a step's vector at `p` (32 bytes at `p + 32h`), zero past the tail's lanes.
#[inline(always)]
unsafe fn load_half(p: *const u8, h: usize, g: G2) -> __m256i {
    // SAFETY: the caller guarantees the step's `g.v` bytes at `p`; masked lanes are not read.
    unsafe {
        if g.full() || g.over {
            _mm256_loadu_si256(p.add(32 * h) as *const __m256i)
        } else {
            let m = _mm256_cmpgt_epi32(
                _mm256_set1_epi32(g.lanes(h) as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            );
            _mm256_maskload_epi32(p.add(32 * h) as *const i32, m)
        }
    }
}

/// The tail superblock of `n` lanes at `p` widened into `buf` as a whole one (the layout
/// `packed::widen_tail` writes): these kernels read whole superblocks only. Masked loads and
/// whole-vector stores: per-lane copies became `memcpy` calls (LLVM's loop idioms), and with
/// `widen_tail`'s slice copies the AVX2 decode of files with a tail in every row ran at about
/// half its speed.
///
/// # Safety
/// `p` must point at a packed tail superblock of `n` (1..16) lanes in `layout`; AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn widen_tail_into(layout: Layout, p: *const u8, n: usize, buf: &mut [u8; SB_ROOM]) {
    use crate::kernels::packed::{Head, K_SUPER, SB};
    *buf = [0; SB_ROOM];
    let o = buf.as_mut_ptr();
    // SAFETY: the caller guarantees the tail's bytes at `p`. Reads cover whole 4-byte lanes
    // of a section, which may run up to 3 bytes into the next section of the same tail
    // (zeroed again below); writes stay inside a whole superblock's 64-byte vectors.
    unsafe {
        let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        // `k` 4-byte lanes (at most 16) from `from` to `to`, the rest of the 64 bytes zero.
        let lanes = |to: usize, from: usize, k: usize| {
            for h in 0..k.div_ceil(8) {
                let m = _mm256_cmpgt_epi32(_mm256_set1_epi32((k - 8 * h) as i32), idx);
                let v = _mm256_maskload_epi32(p.add(from + 32 * h) as *const i32, m);
                _mm256_storeu_si256(o.add(to + 32 * h) as *mut __m256i, v);
            }
        };
        // `bytes` bytes from `from` to `to`, the bytes after them in the last lane zeroed.
        let bytes = |to: usize, from: usize, len: usize| {
            lanes(to, from, len.div_ceil(4));
            for b in len..len.div_ceil(4) * 4 {
                o.add(to + b).write_volatile(0);
            }
        };
        match layout.head() {
            Head::F16 => bytes(0, 0, 2 * n),
            Head::F16Pair => {
                bytes(0, 0, 2 * n);
                bytes(2 * SB, 2 * n, 2 * n);
            }
            Head::KScaleMin => lanes(0, 0, layout.head_bytes() / 4),
            Head::KScale8 => {
                lanes(0, 0, K_SUPER / 4);
                bytes(K_SUPER, K_SUPER, n);
            }
            Head::KHalves => {
                lanes(0, 0, K_SUPER / 4);
                bytes(K_SUPER, K_SUPER, n);
                bytes(K_SUPER + SB, K_SUPER + n, n);
            }
            Head::KHalvesMin => {
                lanes(0, 0, 2 * K_SUPER / 4);
                bytes(2 * K_SUPER, 2 * K_SUPER, n);
                bytes(2 * K_SUPER + SB, 2 * K_SUPER + n, n);
            }
        }
        let (hw, hn) = (layout.head_bytes(), layout.head_bytes_n(n));
        for v in 0..(layout.superblock_bytes() - hw) / 64 {
            lanes(hw + 64 * v, hn + 4 * n * v, n);
        }
    }
}

/// `Σ` over the 4-byte groups of 32 unsigned × signed byte pairs, in 16 bits (the caller bounds
/// how many it adds before widening).
#[inline(always)]
unsafe fn pairs(w: __m256i, x: __m256i) -> __m256i {
    // SAFETY: register arithmetic; avx2 is enabled in every caller.
    unsafe { _mm256_maddubs_epi16(w, x) }
}

/// Sums adjacent 16-bit lanes into the eight 32-bit lanes (one per block).
#[inline(always)]
unsafe fn widen(v: __m256i) -> __m256i {
    // SAFETY: as above.
    unsafe { _mm256_madd_epi16(v, _mm256_set1_epi16(1)) }
}

/// Signed bytes stored + 128 times signed activations, summed per 4-byte group.
#[inline(always)]
unsafe fn signed_dot(z: __m256i, x: __m256i) -> __m256i {
    // SAFETY: as above.
    unsafe {
        let w = _mm256_xor_si256(z, _mm256_set1_epi8(0x80u8 as i8));
        let aw = _mm256_sign_epi8(w, w);
        widen(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, w)))
    }
}

/// Half `h` of step `st`'s low 4 bits in a plane of nibbles (steps `2u` and `2u + 1` share
/// 64-byte chunk `u`), not yet masked.
#[inline(always)]
unsafe fn nibble_half(quants: *const u8, st: usize, h: usize, g: G2) -> __m256i {
    // SAFETY: the caller points at the nibble plane.
    unsafe {
        let z = load_half(quants.add(g.v * (st / 2)), h, g);
        if st.is_multiple_of(2) {
            z
        } else {
            _mm256_srli_epi16::<4>(z)
        }
    }
}

/// Half `h` (lanes `8h..8h+8`) of step `st` of a Q6 superblock's quants (`packed.rs`) in the
/// form of the signed-byte layouts, value + 128: the 6-bit value + 96.
#[inline(always)]
unsafe fn q6_stored_half(quants: *const u8, st: usize, h: usize, g: G2) -> __m256i {
    // SAFETY: the caller points at a packed Q6 superblock's quants.
    unsafe {
        let lo = nibble_half(quants, st, h, g);
        let hv = load_half(quants.add(4 * g.v + g.v * (st / 4)), h, g);
        // Bits 2k, 2k+1 of each byte to bits 4, 5 (bits carried across bytes are masked off).
        let hv = match st % 4 {
            0 => _mm256_slli_epi16::<4>(hv),
            1 => _mm256_slli_epi16::<2>(hv),
            2 => hv,
            _ => _mm256_srli_epi16::<2>(hv),
        };
        let q = _mm256_or_si256(
            _mm256_and_si256(lo, _mm256_set1_epi8(0x0f)),
            _mm256_and_si256(hv, _mm256_set1_epi8(0x30)),
        );
        _mm256_add_epi8(q, _mm256_set1_epi8(96))
    }
}

/// Half `h` of step `st` of a Q3 superblock's 3-bit values 0..7 (`packed.rs`): Q2's values |
/// bit `st` of the bit plane << 2.
#[inline(always)]
unsafe fn q3_half(quants: *const u8, st: usize, h: usize, g: G2) -> __m256i {
    // SAFETY: the caller points at a packed Q3 superblock's quants.
    unsafe {
        let lo = q2_half(quants, st, h, g);
        // Bit st of each byte to bit 2 (bits carried across bytes are masked off), as in
        // `vnni::q3_operand`: the half by a shift whose count need not be a constant, the step in
        // it by an immediate.
        let hv = load_half(quants.add(2 * g.v), h, g);
        let hv = _mm256_srl_epi16(hv, _mm_cvtsi64_si128(4 * (st / 4) as i64));
        let hv = match st % 4 {
            0 => _mm256_slli_epi16::<2>(hv),
            1 => _mm256_slli_epi16::<1>(hv),
            2 => hv,
            _ => _mm256_srli_epi16::<1>(hv),
        };
        _mm256_or_si256(lo, _mm256_and_si256(hv, _mm256_set1_epi8(0x04)))
    }
}

/// Half `h` of step `st` of a Q2 superblock's 2-bit values 0..3 (`packed.rs`): bits
/// `2(st % 4)`, `2(st % 4) + 1` of 2-bit chunk `st / 4`.
#[inline(always)]
unsafe fn q2_half(quants: *const u8, st: usize, h: usize, g: G2) -> __m256i {
    // SAFETY: the caller points at a packed Q2 (or Q3) superblock's quants.
    unsafe {
        let c = load_half(quants.add(g.v * (st / 4)), h, g);
        let lo = match st % 4 {
            0 => c,
            1 => _mm256_srli_epi16::<2>(c),
            2 => _mm256_srli_epi16::<4>(c),
            _ => _mm256_srli_epi16::<6>(c),
        };
        _mm256_and_si256(lo, _mm256_set1_epi8(0x03))
    }
}

/// Half `h` of step `st` of a Q5, Q5M or Q5K superblock's quants (`packed.rs`): the 5-bit
/// values 0..31.
#[inline(always)]
unsafe fn q5_half(quants: *const u8, st: usize, h: usize, g: G2) -> __m256i {
    // SAFETY: the caller points at a packed 5-bit superblock's quants.
    unsafe {
        let lo = nibble_half(quants, st, h, g);
        let hv = load_half(quants.add(4 * g.v), h, g);
        // Bit st of each byte to bit 4 (bits carried across bytes are masked off).
        let hv = match st {
            0 => _mm256_slli_epi16::<4>(hv),
            1 => _mm256_slli_epi16::<3>(hv),
            2 => _mm256_slli_epi16::<2>(hv),
            3 => _mm256_slli_epi16::<1>(hv),
            4 => hv,
            5 => _mm256_srli_epi16::<1>(hv),
            6 => _mm256_srli_epi16::<2>(hv),
            _ => _mm256_srli_epi16::<3>(hv),
        };
        _mm256_or_si256(
            _mm256_and_si256(lo, _mm256_set1_epi8(0x0f)),
            _mm256_and_si256(hv, _mm256_set1_epi8(0x10)),
        )
    }
}

/// Half `h` of step `st` of an I4 or I4K superblock's quants: IQ4's grid values + 128 (the
/// signed-byte layouts' form), looked up from the nibble indices.
#[inline(always)]
unsafe fn iq4_stored_half(quants: *const u8, st: usize, h: usize, g: G2) -> __m256i {
    // SAFETY: the caller points at a packed I4 superblock's quants.
    unsafe {
        let lut = _mm256_broadcastsi128_si256(_mm_loadu_si128(
            crate::kernels::packed::IQ4_LUT_U8.as_ptr() as *const __m128i,
        ));
        let idx = _mm256_and_si256(nibble_half(quants, st, h, g), _mm256_set1_epi8(0x0f));
        _mm256_shuffle_epi8(lut, idx)
    }
}

/// The two factors (`packed::head_factors`) of lanes `8h..8h+8`.
#[inline(always)]
unsafe fn head_half(layout: Layout, sb: *const u8, h: usize, g: G2) -> (__m256, __m256) {
    use crate::kernels::packed::{Head, K_SUPER, SIX_BYTES};
    // SAFETY: the caller points at a packed superblock's head.
    unsafe {
        let f16 = |o: usize| {
            let v = if g.full() {
                _mm_loadu_si128(sb.add(o) as *const __m128i)
            } else {
                // Whole 4-byte lanes, then the f16 values past the tail's lanes zeroed (one may
                // have come from the next section).
                let k = g.lanes(h) as i32;
                let m = _mm_cmpgt_epi32(_mm_set1_epi32((k + 1) / 2), _mm_setr_epi32(0, 1, 2, 3));
                let v = _mm_maskload_epi32(sb.add(o) as *const i32, m);
                let keep = _mm_cmpgt_epi16(
                    _mm_set1_epi16(k as i16),
                    _mm_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7),
                );
                _mm_and_si128(v, keep)
            };
            _mm256_cvtph_ps(v)
        };
        match layout.head() {
            Head::F16 => {
                let s = f16(16 * h);
                (s, s)
            }
            Head::F16Pair => (f16(16 * h), f16(2 * g.n + 16 * h)),
            // Lanes 8h..8h+8 are one K-quant block: super-factor h (and 2 + h for a second).
            Head::KScaleMin => {
                let at = 2 * K_SUPER;
                (
                    _mm256_mul_ps(k_super(sb, h), six_bit_half(sb.add(at), h)),
                    _mm256_mul_ps(k_super(sb, 2 + h), six_bit_half(sb.add(at + SIX_BYTES), h)),
                )
            }
            Head::KScale8 => {
                let d = _mm256_mul_ps(k_super(sb, h), i8_half(sb.add(K_SUPER), h));
                (d, d)
            }
            Head::KHalves => {
                // A K-quant block is 8 lanes: a tail has whole halves (`g.n` 8 here).
                let d = k_super(sb, h);
                (
                    _mm256_mul_ps(d, i8_half(sb.add(K_SUPER), h)),
                    _mm256_mul_ps(d, i8_half(sb.add(K_SUPER + g.n), h)),
                )
            }
            Head::KHalvesMin => {
                let (d, at) = (k_super(sb, h), 2 * K_SUPER);
                (
                    _mm256_mul_ps(d, nibble_half_factors::<0>(sb.add(at), h)),
                    _mm256_mul_ps(d, nibble_half_factors::<0>(sb.add(at + g.n), h)),
                )
            }
        }
    }
}

/// The offsets (`packed::head_offsets`) of lanes `8h..8h+8`'s two half blocks, for a layout
/// with `Layout::half_mins` (Q2: `−dmin · min`).
#[inline(always)]
unsafe fn offsets_half(sb: *const u8, h: usize, g: G2) -> (__m256, __m256) {
    use crate::kernels::packed::K_SUPER;
    // SAFETY: the caller points at a `KHalvesMin` head.
    unsafe {
        let (m, at) = (k_super(sb, 2 + h), 2 * K_SUPER);
        (
            _mm256_mul_ps(m, nibble_half_factors::<4>(sb.add(at), h)),
            _mm256_mul_ps(m, nibble_half_factors::<4>(sb.add(at + g.n), h)),
        )
    }
}

/// Lanes `8h..8h+8` of the 4-bit fields at bit `SHIFT` of the bytes at `p`, as f32.
#[inline(always)]
unsafe fn nibble_half_factors<const SHIFT: i32>(p: *const u8, h: usize) -> __m256 {
    // SAFETY: the caller guarantees the lanes' bytes at `p`; avx2 is enabled in every caller.
    unsafe {
        let b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8 * h) as *const __m128i));
        let v = _mm256_and_si256(_mm256_srli_epi32::<SHIFT>(b), _mm256_set1_epi32(0x0f));
        _mm256_cvtepi32_ps(v)
    }
}

/// Lanes `8h..8h+8` of the i8 multipliers at `p` as f32.
#[inline(always)]
unsafe fn i8_half(p: *const u8, h: usize) -> __m256 {
    // SAFETY: the caller guarantees the lanes' bytes at `p`; avx2 is enabled in every caller.
    unsafe {
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
            p.add(8 * h) as *const __m128i
        )))
    }
}

/// Super-factor `i` (f16 `i` of the head at `sb`) in all 8 lanes.
#[inline(always)]
unsafe fn k_super(sb: *const u8, i: usize) -> __m256 {
    // SAFETY: the caller points at a K head (at least 8 bytes); f16c and avx2 are enabled in
    // every caller.
    unsafe {
        let f = _mm_cvtph_ps(_mm_loadl_epi64(sb as *const __m128i));
        _mm256_permutevar8x32_ps(_mm256_castps128_ps256(f), _mm256_set1_epi32(i as i32))
    }
}

/// Lanes `8h..8h+8` of the 6-bit fields (`packed::six_bit`) of the 12 bytes at `p`, as f32.
/// Reads 16 bytes (quants follow every head).
#[inline(always)]
unsafe fn six_bit_half(p: *const u8, h: usize) -> __m256 {
    use crate::kernels::packed::six_bit;
    // SAFETY: the caller guarantees 16 readable bytes at `p`; avx2 is enabled in every caller.
    unsafe {
        let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i));
        let ctl = _mm256_loadu_si256(six_bit::SHUFFLE.as_ptr().add(32 * h) as *const __m256i);
        let top = _mm256_loadu_si256(six_bit::TO_TOP.as_ptr().add(8 * h) as *const __m256i);
        let t = _mm256_sllv_epi32(_mm256_shuffle_epi8(v, ctl), top);
        _mm256_cvtepi32_ps(_mm256_srli_epi32::<26>(t))
    }
}

/// Superblocks `s0..s0 + count` of a row, the first at `w`, against the activations' same
/// superblocks, added to `acc`, with geometry `g` (a tail if `tail`). A macro, expanded in
/// [`dot_packed_avx2`]: as a function with the kernel's target features it was not inlined into
/// the row loop, and the 1.5B Q4_K_M decode on AVX2 ran at 0.89x.
macro_rules! superblock_dots_avx2 {
    ($l:expr, $tail:expr, $w:expr, $s0:expr, $count:expr, $xq:expr, $xd:expr, $xso:expr, $g:expr, $acc:expr) => {{
        #[allow(clippy::type_complexity)]
        let (w, s0, count, xq, xd, xso, g): (*const u8, usize, usize, *const i8, *const f32, [*const f32; 2], G2) =
            ($w, $s0, $count, $xq, $xd, $xso, $g);
        let acc: &mut [__m256; 2] = $acc;
        let layout = layout_of($l);
        let sbb = layout.superblock_bytes_n(g.n);
        let hb = layout.head_bytes_n(g.n);
        let m4 = _mm256_set1_epi8(0x0f);
        let mut acc_r = *acc;
        for i in 0..count {
            let (ws, s, acc) = (w.add(i * sbb), s0 + i, &mut acc_r);
            let x = xq.add(s * 512);
            let a = ws.wrapping_add(PREFETCH_AHEAD);
            for o in (0..sbb).step_by(64) {
                _mm_prefetch::<_MM_HINT_T1>(a.wrapping_add(o) as *const i8);
            }
            let q = ws.add(hb);
            for (h, acc) in acc.iter_mut().enumerate() {
                // A tail of at most 8 lanes has nothing in the second half.
                if $tail && g.lanes(h) == 0 {
                    continue;
                }
                let ld = |p: *const u8| load_half(p, h, g);
                let xs =
                    |step: usize| _mm256_loadu_si256(x.add(64 * step + 32 * h) as *const __m256i);
                // p[0]: the block sums (Q6, Q3: of values 0..16), p[1]: their values 16..32.
                let mut p = [_mm256_setzero_si256(); 2];
                match layout.body() {
                    Layout::Q4 | Layout::Q4M => {
                        // 8 steps of nibble pairs: at most 8 · 2 · 15 · 127 in 16 bits.
                        let mut s16 = _mm256_setzero_si256();
                        for u in 0..4 {
                            let z = ld(q.add(g.v * u));
                            let lo = _mm256_and_si256(z, m4);
                            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(z), m4);
                            s16 = _mm256_add_epi16(s16, pairs(lo, xs(2 * u)));
                            s16 = _mm256_add_epi16(s16, pairs(hi, xs(2 * u + 1)));
                        }
                        p[0] = widen(s16);
                    }
                    Layout::Q5 | Layout::Q5M => {
                        // 5-bit values: four steps fit in 16 bits (4 · 2 · 31 · 127).
                        for half in 0..2 {
                            let mut s16 = _mm256_setzero_si256();
                            for st in 4 * half..4 * half + 4 {
                                s16 = _mm256_add_epi16(s16, pairs(q5_half(q, st, h, g), xs(st)));
                            }
                            p[0] = _mm256_add_epi32(p[0], widen(s16));
                        }
                    }
                    // 3-bit values: a half block's four steps in 16 bits (4 · 2 · 7 · 127); the − 4
                    // comes off through `so` and `so2`, as Q6's − 32 does in the prompt tile.
                    Layout::Q3 => {
                        for (c, half) in p.iter_mut().enumerate() {
                            let mut s16 = _mm256_setzero_si256();
                            for st in 4 * c..4 * c + 4 {
                                s16 = _mm256_add_epi16(s16, pairs(q3_half(q, st, h, g), xs(st)));
                            }
                            *half = widen(s16);
                        }
                    }
                    // 2-bit values: a half block's four steps in 16 bits (4 · 2 · 3 · 127); the
                    // mins come off through `so` and `so2`.
                    Layout::Q2 => {
                        for (c, half) in p.iter_mut().enumerate() {
                            let mut s16 = _mm256_setzero_si256();
                            for st in 4 * c..4 * c + 4 {
                                s16 = _mm256_add_epi16(s16, pairs(q2_half(q, st, h, g), xs(st)));
                            }
                            *half = widen(s16);
                        }
                    }
                    // Q8, Q6 (`body` is never Q4K, Q5K or Q8X).
                    _ => {
                        for st in 0..8 {
                            let (c, z) = if layout == Layout::Q6 {
                                (st / 4, q6_stored_half(q, st, h, g))
                            } else if layout.grid() {
                                (0, iq4_stored_half(q, st, h, g))
                            } else {
                                (0, ld(q.add(g.v * st)))
                            };
                            p[c] = _mm256_add_epi32(p[c], signed_dot(z, xs(st)));
                        }
                    }
                }
                let (sw, mw) = head_half(layout, ws, h, g);
                let xdv = _mm256_loadu_ps(xd.add(s * 16 + 8 * h));
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p[0]), _mm256_mul_ps(sw, xdv), *acc);
                match layout.body() {
                    Layout::Q6 => {
                        let f = _mm256_mul_ps(mw, xdv);
                        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p[1]), f, *acc);
                    }
                    // The second half's products, then both halves' − 4: `so` and `so2` hold
                    // 4 · d · Σq of each half.
                    Layout::Q3 => {
                        let f = _mm256_mul_ps(mw, xdv);
                        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p[1]), f, *acc);
                        let so = _mm256_loadu_ps(xso[0].add(s * 16 + 8 * h));
                        let so2 = _mm256_loadu_ps(xso[1].add(s * 16 + 8 * h));
                        *acc = _mm256_fnmadd_ps(sw, so, *acc);
                        *acc = _mm256_fnmadd_ps(mw, so2, *acc);
                    }
                    // The second half's products, then both halves' mins: `so` and `so2` hold
                    // −d · Σq of each half.
                    Layout::Q2 => {
                        let f = _mm256_mul_ps(mw, xdv);
                        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p[1]), f, *acc);
                        let (o0, o1) = offsets_half(ws, h, g);
                        let so = _mm256_loadu_ps(xso[0].add(s * 16 + 8 * h));
                        let so2 = _mm256_loadu_ps(xso[1].add(s * 16 + 8 * h));
                        *acc = _mm256_fnmadd_ps(o0, so, *acc);
                        *acc = _mm256_fnmadd_ps(o1, so2, *acc);
                    }
                    // Q4's implied − 8, Q5's − 16 and Q4M/Q5M's offsets: `so` holds 8 · d · Σq,
                    // 16 · d · Σq or −d · Σq.
                    Layout::Q4 | Layout::Q4M | Layout::Q5 | Layout::Q5M => {
                        let so = _mm256_loadu_ps(xso[0].add(s * 16 + 8 * h));
                        *acc = _mm256_fnmadd_ps(mw, so, *acc);
                    }
                    _ => {}
                }
            }
        }
        *acc = acc_r;
    }};
}

/// One packed row of `blocks` blocks against one token's packed activations; see the module
/// comment. Lines 8 KiB ahead are requested into L2 as for the VNNI kernel. With `slack` (at
/// least [`TAIL_SLACK`] readable bytes of the same buffer after the row) a tail is read with
/// whole loads: masked loads at every step slowed the rows with a tail.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_packed_avx2<const L: u8>(
    w: *const u8,
    blocks: usize,
    xq: *const i8,
    xd: *const f32,
    xso: [*const f32; 2],
    slack: bool,
) -> f32 {
    // SAFETY: the caller guarantees a packed row of `blocks` blocks at `w`, the slack it
    // claims after it, and 512 quants and 16 factors per superblock at xq, xd, xso, zero past
    // the row's blocks.
    unsafe {
        let sbb = const { layout_of(L).superblock_bytes() };
        let (full, tail) = (blocks / 16, blocks % 16);
        let mut acc = [_mm256_setzero_ps(); 2];
        superblock_dots_avx2!(L, false, w, 0, full, xq, xd, xso, G2::FULL, &mut acc);
        if tail > 0 {
            let (v, n, at) = (4 * tail, tail, w.add(full * sbb));
            // Two expansions, so that `over` is a constant in each.
            if slack {
                let g = G2 { v, n, over: true };
                superblock_dots_avx2!(L, true, at, full, 1, xq, xd, xso, g, &mut acc);
            } else {
                let g = G2 { v, n, over: false };
                superblock_dots_avx2!(L, true, at, full, 1, xq, xd, xso, g, &mut acc);
            }
        }
        hsum(_mm256_add_ps(acc[0], acc[1]))
    }
}

/// The two weight rows of a prompt tile.
#[derive(Clone, Copy)]
pub struct TileRows {
    /// The packed rows.
    pub at: [*const u8; 2],
    /// Their tails widened into whole superblocks by [`widen_tail_into`] (once per row by the
    /// caller, not in every tile), read where the rows end in a tail.
    pub tails: [*const u8; 2],
    /// Whether this is the first pass over the rows (the first group of tokens). It requests
    /// the weights' lines [`PREFETCH_AHEAD`] bytes on into L2 as they are read, as the VNNI
    /// tile does: the first pass streams them from memory, and a batch of a few tokens
    /// (continuous batching) is bound by that stream as one token is; later passes find them
    /// in the caches. It also unpacks the K heads into `heads`, which later passes read.
    pub first: bool,
    /// Room for the rows' K-head factors, two entries per superblock (null: unpacked in the
    /// tile every time): unpacking a K head's 6-bit fields again for every four tokens was a
    /// measurable share of the tile's time. They are filled on the first pass rather than in
    /// a pass of their own, which waited on memory (docs/benchmarks.md, "The AVX2 prompt
    /// tiles' K heads, and 5- and 6-bit rows against eight tokens").
    pub heads: [*mut [f32; 16]; 2],
}

impl TileRows {
    /// Both rows' quants of superblock `s` (the tails' where `s == full`, the whole
    /// superblocks' count), their lines ahead requested first on the first pass.
    ///
    /// # Safety
    /// Superblock `s` must exist in both rows of layout `L`, and the tails where `s == full`.
    #[inline(always)]
    unsafe fn quants<const L: u8>(self, s: usize, full: usize) -> [*const u8; 2] {
        let (sbb, hb) = const { (layout_of(L).superblock_bytes(), layout_of(L).head_bytes()) };
        if self.first {
            // A row given twice (one row against eight tokens, an odd last row) is requested once.
            let distinct = if self.at[1] == self.at[0] { 1 } else { 2 };
            for &r in &self.at[..distinct] {
                // `wrapping_add`: past the end of the matrix the requests are harmless but must
                // not be pointer arithmetic out of bounds.
                let a = r.wrapping_add(s * sbb + PREFETCH_AHEAD);
                for o in (0..sbb).step_by(64) {
                    // SAFETY: a prefetch reads nothing and cannot fault.
                    unsafe { _mm_prefetch::<_MM_HINT_T1>(a.wrapping_add(o) as *const i8) };
                }
            }
        }
        // SAFETY: the caller guarantees superblock `s` (or the tails).
        unsafe {
            if s == full {
                self.tails.map(|t| t.add(hb))
            } else {
                self.at.map(|r| r.add(s * sbb + hb))
            }
        }
    }

    /// Row `r`'s two factors of half `h` of superblock `s` (`head_half`), unpacked from `head`
    /// (and kept where `heads` has room, on the first pass) or read back.
    ///
    /// # Safety
    /// As for [`TileRows::quants`]; `head` must point at that superblock's head, `heads[r]`
    /// (where not null) hold two entries per superblock of the row, filled by an earlier pass
    /// unless this one fills them.
    #[inline(always)]
    unsafe fn factors(
        self,
        layout: Layout,
        r: usize,
        s: usize,
        h: usize,
        head: *const u8,
    ) -> (__m256, __m256) {
        // SAFETY: as the caller guarantees.
        unsafe {
            let f = self.heads[r];
            if f.is_null() {
                return head_half(layout, head, h, G2::FULL);
            }
            let p = f.add(2 * s + h) as *mut f32;
            if self.first {
                let (a, b) = head_half(layout, head, h, G2::FULL);
                _mm256_storeu_ps(p, a);
                _mm256_storeu_ps(p.add(8), b);
                (a, b)
            } else {
                (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
            }
        }
    }
}

/// Whether the AVX2 prompt tiles take a layout's head factors precomputed: the K heads of two
/// factors, whose fields cost shuffles, shifts and conversions to unpack (IQ4_XS's single
/// factor measured no faster precomputed).
pub const fn precomputed_heads(layout: Layout) -> bool {
    use crate::kernels::packed::Head;
    matches!(layout.head(), Head::KScaleMin | Head::KHalves)
}

/// Two packed rows × four tokens, the prompt kernel: each unpacked weight operand feeds four
/// products and each activation operand two, as in the VNNI tile, with the products summed as
/// in [`dot_packed_avx2`] (so every path gives the same integer sums per block). The 8-bit
/// products do 32 multiply-adds per instruction where the f32 tiles do 8.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile2x4_packed_avx2<const L: u8>(
    rows: TileRows,
    blocks: usize,
    xq: [*const i8; 4],
    xd: [*const f32; 4],
    xso: [[*const f32; 2]; 4],
    xio: [*const i32; 4],
) -> [[f32; 2]; 4] {
    // SAFETY: as for `dot_packed_avx2`, for both rows and all four tokens; where `blocks` is
    // not a whole number of superblocks, `rows.tails` hold the rows' tails widened.
    unsafe {
        match const { layout_of(L).body() } {
            Layout::Q4 | Layout::Q4M => {
                return tile2x4_nibbles_avx2::<L>(rows, blocks, xq, xd, xso);
            }
            Layout::Q5 | Layout::Q5M | Layout::Q6 | Layout::Q3 | Layout::Q2 => {
                return tile2x4_wide_avx2::<L>(rows, blocks, xq, xd, xso, xio);
            }
            _ => {}
        }
        let layout = const { layout_of(L) };
        let hb = const { layout_of(L).head_bytes() };
        let zero = _mm256_setzero_si256();
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        let full = blocks / 16;
        for s in 0..blocks.div_ceil(16) {
            let w = rows.quants::<L>(s, full);
            for h in 0..2 {
                let ldw = |r: usize, off: usize| {
                    _mm256_loadu_si256(w[r].add(off + 32 * h) as *const __m256i)
                };
                let ldx = |t: usize, step: usize| {
                    _mm256_loadu_si256(xq[t].add(s * 512 + 64 * step + 32 * h) as *const __m256i)
                };
                let mut p = [[zero; 2]; 4];
                // Q8 and I4, signed bytes stored + 128 (the other layouts returned above).
                for st in 0..8 {
                    let z = if layout.grid() {
                        [
                            iq4_stored_half(w[0], st, h, G2::FULL),
                            iq4_stored_half(w[1], st, h, G2::FULL),
                        ]
                    } else {
                        [ldw(0, 64 * st), ldw(1, 64 * st)]
                    };
                    let sw = z.map(|z| _mm256_xor_si256(z, _mm256_set1_epi8(0x80u8 as i8)));
                    let aw = sw.map(|v| _mm256_sign_epi8(v, v));
                    for (t, d) in p.iter_mut().enumerate() {
                        let x = ldx(t, st);
                        for r in 0..2 {
                            let v = widen(pairs(aw[r], _mm256_sign_epi8(x, sw[r])));
                            d[r] = _mm256_add_epi32(d[r], v);
                        }
                    }
                }
                let heads = [
                    head_half(layout, w[0].sub(hb), h, G2::FULL),
                    head_half(layout, w[1].sub(hb), h, G2::FULL),
                ];
                for t in 0..4 {
                    let d = _mm256_loadu_ps(xd[t].add(s * 16 + 8 * h));
                    for (r, &(sw, _)) in heads.iter().enumerate() {
                        let a = &mut acc[t][r];
                        *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p[t][r]), _mm256_mul_ps(sw, d), *a);
                    }
                }
            }
        }
        tile_sums(acc)
    }
}

/// The lane sums of a tile's eight accumulators, `[token][row]`: one transposing reduction
/// (three rounds of `vhaddps`, then the 128-bit halves added) instead of eight separate ones,
/// which LLVM left as calls through memory, a cost on short rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_sums(acc: [[__m256; 2]; 4]) -> [[f32; 2]; 4] {
    let [[a0, a1], [a2, a3], [a4, a5], [a6, a7]] = acc;
    let b0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    let b1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
    // b0 holds a0..a3's sums over lanes 0..4 then over lanes 4..8; b1 a4..a7's.
    let v = _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(b0, b1),
        _mm256_permute2f128_ps::<0x31>(b0, b1),
    );
    let mut out = [[0f32; 2]; 4];
    // SAFETY: `out` is eight contiguous f32.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr() as *mut f32, v) };
    out
}

/// [`tile2x4_packed_avx2`] for the nibble layouts (Q4, Q4M and Q4K), written so that the
/// sixteen AVX2 registers hold the hot loop: the eight 16-bit sums of a half superblock stay in
/// registers while each row's low and then high nibbles are multiplied against the four tokens'
/// activations, and the eight f32 totals, touched once per half superblock, live in memory
/// (volatile accesses, so that LLVM does not promote them and spill the hot sums instead). The
/// generic tile, with both nibble halves of both rows live at once, spilled in its inner loop
/// and ran no faster than the f32 tiles.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile2x4_nibbles_avx2<const L: u8>(
    rows: TileRows,
    blocks: usize,
    xq: [*const i8; 4],
    xd: [*const f32; 4],
    xso: [[*const f32; 2]; 4],
) -> [[f32; 2]; 4] {
    // SAFETY: as for `dot_packed_avx2`, for both rows and all four tokens.
    unsafe {
        let layout = const { layout_of(L) };
        let hb = const { layout_of(L).head_bytes() };
        let m4 = _mm256_set1_epi8(0x0f);
        let zero = _mm256_setzero_si256();
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        let accp = acc.as_mut_ptr() as *mut __m256;
        let (full, tail) = (blocks / 16, blocks % 16);
        for s in 0..blocks.div_ceil(16) {
            let w = rows.quants::<L>(s, full);
            // A widened tail of at most 8 blocks has nothing in the second half.
            let halves = if s == full && tail <= 8 { 1 } else { 2 };
            for h in 0..halves {
                let x = |t: usize, step: usize| {
                    _mm256_loadu_si256(xq[t].add(s * 512 + 64 * step + 32 * h) as *const __m256i)
                };
                // 8 steps of nibbles against bytes: at most 8 · 2 · 15 · 127 in 16 bits.
                let mut s16 = [[zero; 2]; 4];
                for u in 0..4 {
                    let z = [0, 1]
                        .map(|r| _mm256_loadu_si256(w[r].add(64 * u + 32 * h) as *const __m256i));
                    let lo = z.map(|z| _mm256_and_si256(z, m4));
                    for (t, s16) in s16.iter_mut().enumerate() {
                        let xv = x(t, 2 * u);
                        for r in 0..2 {
                            s16[r] = _mm256_add_epi16(s16[r], pairs(lo[r], xv));
                        }
                    }
                    let hi = z.map(|z| _mm256_and_si256(_mm256_srli_epi16::<4>(z), m4));
                    for (t, s16) in s16.iter_mut().enumerate() {
                        let xv = x(t, 2 * u + 1);
                        for r in 0..2 {
                            s16[r] = _mm256_add_epi16(s16[r], pairs(hi[r], xv));
                        }
                    }
                    // Each sum in a register here: without this LLVM reassociates the adds
                    // into trees whose partial sums no longer fit the sixteen registers.
                    for s16 in s16.iter_mut() {
                        for v in s16.iter_mut() {
                            std::arch::asm!(
                                "/* {0} */",
                                inout(ymm_reg) * v,
                                options(pure, nomem, nostack)
                            );
                        }
                    }
                }
                for r in 0..2 {
                    let (sw, mw) = rows.factors(layout, r, s, h, w[r].sub(hb));
                    for (t, s16) in s16.iter().enumerate() {
                        let d = _mm256_loadu_ps(xd[t].add(s * 16 + 8 * h));
                        let so = _mm256_loadu_ps(xso[t][0].add(s * 16 + 8 * h));
                        let a = accp.add(2 * t + r);
                        let v = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(widen(s16[r])),
                            _mm256_mul_ps(sw, d),
                            a.read_volatile(),
                        );
                        // Q4's implied − 8 and Q4M's offsets: `so` holds 8 · d · Σq or −d · Σq.
                        a.write_volatile(_mm256_fnmadd_ps(mw, so, v));
                    }
                }
            }
        }
        tile_sums(acc)
    }
}

/// Steps `2U` and `2U + 1` (half `h`) of a whole Q5, Q5M or Q5K superblock's quants at `q`:
/// the 5-bit values 0..31. The step pair is a constant, so that every shift is an immediate.
#[inline(always)]
unsafe fn q5_pair<const U: usize>(q: *const u8, h: usize) -> [__m256i; 2] {
    // SAFETY: the caller points at a whole packed 5-bit superblock's quants.
    unsafe {
        let (m4, m) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x10));
        let z = _mm256_loadu_si256(q.add(64 * U + 32 * h) as *const __m256i);
        let hv = _mm256_loadu_si256(q.add(256 + 32 * h) as *const __m256i);
        // Bits 2U and 2U + 1 of each byte to bit 4 (bits carried across bytes are masked off).
        let (b0, b1) = match U {
            0 => (_mm256_slli_epi16::<4>(hv), _mm256_slli_epi16::<3>(hv)),
            1 => (_mm256_slli_epi16::<2>(hv), _mm256_slli_epi16::<1>(hv)),
            2 => (hv, _mm256_srli_epi16::<1>(hv)),
            _ => (_mm256_srli_epi16::<2>(hv), _mm256_srli_epi16::<3>(hv)),
        };
        [
            _mm256_or_si256(_mm256_and_si256(z, m4), _mm256_and_si256(b0, m)),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(z), m4),
                _mm256_and_si256(b1, m),
            ),
        ]
    }
}

/// Steps `2U` and `2U + 1` (half `h`) of a whole Q6 superblock's quants at `q`: the 6-bit
/// values 0..63, without the + 96 of [`q6_stored_half`].
#[inline(always)]
unsafe fn q6_pair<const U: usize>(q: *const u8, h: usize) -> [__m256i; 2] {
    // SAFETY: the caller points at a whole packed Q6 superblock's quants.
    unsafe {
        let (m4, m) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x30));
        let z = _mm256_loadu_si256(q.add(64 * U + 32 * h) as *const __m256i);
        let hv = _mm256_loadu_si256(q.add(256 + 64 * (U / 2) + 32 * h) as *const __m256i);
        // Bits 2k, 2k + 1 of each byte (k = 2U mod 4 and the next) to bits 4, 5.
        let (b0, b1) = if U.is_multiple_of(2) {
            (_mm256_slli_epi16::<4>(hv), _mm256_slli_epi16::<2>(hv))
        } else {
            (hv, _mm256_srli_epi16::<2>(hv))
        };
        [
            _mm256_or_si256(_mm256_and_si256(z, m4), _mm256_and_si256(b0, m)),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(z), m4),
                _mm256_and_si256(b1, m),
            ),
        ]
    }
}

/// Steps `2U` and `2U + 1` (half `h`) of a whole Q3 superblock's quants at `q`: the 3-bit
/// values 0..7.
#[inline(always)]
unsafe fn q3_pair<const U: usize>(q: *const u8, h: usize) -> [__m256i; 2] {
    // SAFETY: the caller points at a whole packed Q3 superblock's quants.
    unsafe {
        let (m2, m) = (_mm256_set1_epi8(0x03), _mm256_set1_epi8(0x04));
        let c = _mm256_loadu_si256(q.add(64 * (U / 2) + 32 * h) as *const __m256i);
        let hv = _mm256_loadu_si256(q.add(128 + 32 * h) as *const __m256i);
        // Bit pairs 4(U mod 2) and 4(U mod 2) + 2 of the 2-bit chunk to bits 0, 1; bits 2U and
        // 2U + 1 of the bit plane to bit 2 (bits carried across bytes are masked off).
        let (c0, c1) = if U.is_multiple_of(2) {
            (c, _mm256_srli_epi16::<2>(c))
        } else {
            (_mm256_srli_epi16::<4>(c), _mm256_srli_epi16::<6>(c))
        };
        let (b0, b1) = match U {
            0 => (_mm256_slli_epi16::<2>(hv), _mm256_slli_epi16::<1>(hv)),
            1 => (hv, _mm256_srli_epi16::<1>(hv)),
            2 => (_mm256_srli_epi16::<2>(hv), _mm256_srli_epi16::<3>(hv)),
            _ => (_mm256_srli_epi16::<4>(hv), _mm256_srli_epi16::<5>(hv)),
        };
        [
            _mm256_or_si256(_mm256_and_si256(c0, m2), _mm256_and_si256(b0, m)),
            _mm256_or_si256(_mm256_and_si256(c1, m2), _mm256_and_si256(b1, m)),
        ]
    }
}

/// Steps `2U` and `2U + 1` (half `h`) of a whole Q2 superblock's quants at `q`: the 2-bit
/// values 0..3.
#[inline(always)]
unsafe fn q2_pair<const U: usize>(q: *const u8, h: usize) -> [__m256i; 2] {
    // SAFETY: the caller points at a whole packed Q2 superblock's quants.
    unsafe {
        let m2 = _mm256_set1_epi8(0x03);
        let c = _mm256_loadu_si256(q.add(64 * (U / 2) + 32 * h) as *const __m256i);
        // Bit pairs 4(U mod 2) and 4(U mod 2) + 2 to bits 0, 1.
        let (c0, c1) = if U.is_multiple_of(2) {
            (c, _mm256_srli_epi16::<2>(c))
        } else {
            (_mm256_srli_epi16::<4>(c), _mm256_srli_epi16::<6>(c))
        };
        [_mm256_and_si256(c0, m2), _mm256_and_si256(c1, m2)]
    }
}

/// Lanes `8h..8h+8` of the i8 multipliers at `p` as i16 pairs, one multiplier in both halves of
/// each 32-bit lane: the second operand of `vpmaddwd`, which then scales and widens at once.
#[inline(always)]
unsafe fn i8_pairs_half(p: *const u8, h: usize) -> __m256i {
    // SAFETY: the caller guarantees the lanes' bytes at `p`; avx2 is enabled in every caller.
    unsafe {
        let v = _mm_loadl_epi64(p.add(8 * h) as *const __m128i);
        _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(v, v))
    }
}

/// Lanes `8h..8h+8` of the low 4-bit fields of the bytes at `p` (Q2's scales), each twice, as
/// 16-bit multipliers of step-pair sums (as [`i8_pairs_half`]).
#[inline(always)]
unsafe fn nibble_pairs_half(p: *const u8, h: usize) -> __m256i {
    // SAFETY: as for `i8_pairs_half`.
    unsafe {
        let v = _mm_and_si128(
            _mm_loadl_epi64(p.add(8 * h) as *const __m128i),
            _mm_set1_epi8(0x0f),
        );
        _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(v, v))
    }
}

/// [`tile2x4_packed_avx2`] for the 5- and 6-bit layouts (Q5, Q5M, Q5K and Q6) and Q3 and Q2, written for the
/// sixteen registers as [`tile2x4_nibbles_avx2`] is. The values are unsigned (Q6's without its
/// stored + 96), so each product is one `vpmaddubsw` without the sign trick; two steps' pair
/// sums fit 16 bits for either width, and one `vpmaddwd` per step pair widens them into eight
/// 32-bit sums per tile that stay in registers over a half superblock. For Q6 that `vpmaddwd`
/// multiplies by the blocks' i8 scales, so both of its half blocks add into one sum; the
/// offsets of the unsigned values come from the activations' sums: Q5's `io` starts the integer
/// sums, Q5M's and Q6's `so` (and `so2`) are subtracted in floats under their scales.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile2x4_wide_avx2<const L: u8>(
    rows: TileRows,
    blocks: usize,
    xq: [*const i8; 4],
    xd: [*const f32; 4],
    xso: [[*const f32; 2]; 4],
    xio: [*const i32; 4],
) -> [[f32; 2]; 4] {
    use crate::kernels::packed::K_SUPER;
    // SAFETY: as for `dot_packed_avx2`, for both rows and all four tokens; `xio` holds
    // `io_lanes` offsets per superblock where the layout has them.
    unsafe {
        let layout = const { layout_of(L) };
        let hb = const { layout_of(L).head_bytes() };
        // Q6 and Q3: a scale per half block.
        let q6 = layout.halves();
        let iol = layout.io_lanes();
        let zero = _mm256_setzero_si256();
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        let (full, tail) = (blocks / 16, blocks % 16);
        for s in 0..blocks.div_ceil(16) {
            let w = rows.quants::<L>(s, full);
            // A widened tail of at most 8 blocks has nothing in the second half.
            let halves = if s == full && tail <= 8 { 1 } else { 2 };
            for h in 0..halves {
                for r in 0..2 {
                    let head = w[r].sub(hb);
                    // The multipliers of each step pair's sums: Q6's block scales (values
                    // 0..16 in steps 0..4, 16..32 in steps 4..8), else ones.
                    let mul = if layout.half_mins() {
                        // Q2's scales, the low nibbles of the head's bytes.
                        let sc = head.add(2 * K_SUPER);
                        [nibble_pairs_half(sc, h), nibble_pairs_half(sc.add(16), h)]
                    } else if q6 {
                        let sc = head.add(K_SUPER);
                        [i8_pairs_half(sc, h), i8_pairs_half(sc.add(16), h)]
                    } else {
                        [_mm256_set1_epi16(1); 2]
                    };
                    // The activations' addresses hidden from LLVM per row: else it keeps the
                    // first row's loads for the second, in spilled registers.
                    let xs = xq.map(|p| {
                        let mut a = p.add(s * 512 + 32 * h) as usize;
                        // Not `pure`: a pure block is hoisted out of the row loop with the loads.
                        std::arch::asm!("/* {0} */", inout(reg) a, options(nomem, nostack));
                        a as *const i8
                    });
                    let x = |t: usize, step: usize| {
                        _mm256_loadu_si256(xs[t].add(64 * step) as *const __m256i)
                    };
                    let mut sums = [zero; 4];
                    if layout == Layout::Q5 {
                        // Q5's − 16 · Σq starts the integer sums.
                        for (t, s32) in sums.iter_mut().enumerate() {
                            *s32 =
                                _mm256_loadu_si256(xio[t].add(s * iol + 8 * h) as *const __m256i);
                        }
                    }
                    // Step pairs `$a` and `$b`, which share Q6's block scale.
                    macro_rules! step_quad {
                        ($a:literal, $b:literal) => {
                            let (za, zb) = if layout == Layout::Q3 {
                                (q3_pair::<$a>(w[r], h), q3_pair::<$b>(w[r], h))
                            } else if layout == Layout::Q2 {
                                (q2_pair::<$a>(w[r], h), q2_pair::<$b>(w[r], h))
                            } else if q6 {
                                (q6_pair::<$a>(w[r], h), q6_pair::<$b>(w[r], h))
                            } else {
                                (q5_pair::<$a>(w[r], h), q5_pair::<$b>(w[r], h))
                            };
                            let m = mul[$a / 2];
                            for (t, s32) in sums.iter_mut().enumerate() {
                                // A pair's sums: at most 2 · 2 · 63 · 128 in 16 bits.
                                let pa = _mm256_add_epi16(
                                    pairs(za[0], x(t, 2 * $a)),
                                    pairs(za[1], x(t, 2 * $a + 1)),
                                );
                                let pb = _mm256_add_epi16(
                                    pairs(zb[0], x(t, 2 * $b)),
                                    pairs(zb[1], x(t, 2 * $b + 1)),
                                );
                                let v = if q6 {
                                    _mm256_add_epi32(_mm256_madd_epi16(pa, m), _mm256_madd_epi16(pb, m))
                                } else {
                                    // Four steps of 5-bit values: at most 4 · 2 · 31 · 128.
                                    _mm256_madd_epi16(_mm256_add_epi16(pa, pb), m)
                                };
                                *s32 = _mm256_add_epi32(*s32, v);
                            }
                            // Each sum in a register (see `tile2x4_nibbles_avx2`).
                            for v in sums.iter_mut() {
                                std::arch::asm!(
                                    "/* {0} */",
                                    inout(ymm_reg) * v,
                                    options(pure, nomem, nostack)
                                );
                            }
                        };
                    }
                    step_quad!(0, 1);
                    step_quad!(2, 3);
                    // Q2: its halves' offsets, which its mins take the place of Q6's − 32 with.
                    let (sw, mw) = if layout.half_mins() {
                        offsets_half(head, h, G2::FULL)
                    } else {
                        rows.factors(layout, r, s, h, head)
                    };
                    // The integer sums' factor: Q6's super-scale (its block scales are in
                    // the sums), else the block scale.
                    let f = if q6 { k_super(head, h) } else { sw };
                    for (t, s32) in sums.iter().enumerate() {
                        let d = _mm256_loadu_ps(xd[t].add(s * 16 + 8 * h));
                        let a = &mut acc[t][r];
                        *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*s32), _mm256_mul_ps(f, d), *a);
                        let so = _mm256_loadu_ps(xso[t][0].add(s * 16 + 8 * h));
                        if q6 {
                            // The − 32 of both half blocks: `so`, `so2` hold 32 · d · Σq (Q3:
                            // 4 · d · Σq, Q2: −d · Σq).
                            let so2 = _mm256_loadu_ps(xso[t][1].add(s * 16 + 8 * h));
                            *a = _mm256_fnmadd_ps(sw, so, _mm256_fnmadd_ps(mw, so2, *a));
                        } else if layout.has_offset() {
                            // Q5M's offsets: `so` holds −d · Σq.
                            *a = _mm256_fnmadd_ps(mw, so, *a);
                        }
                    }
                }
            }
        }
        tile_sums(acc)
    }
}

/// Whether the AVX2 prompt tiles of rows of `blocks` blocks in a layout take one row against
/// eight tokens ([`tile1x8_wide_avx2`]) rather than two rows against four: the 5- and 6-bit
/// values cost about as many instructions to unpack as their products against four tokens
/// take, so eight tokens share them better, as long as the eight tokens' activations stay
/// in L1 (16 KiB of quants at 64 blocks; past that the 2x4 tile measured the faster).
pub const fn one_row_eight_tokens(layout: Layout, blocks: usize) -> bool {
    matches!(
        layout.body(),
        Layout::Q5 | Layout::Q5M | Layout::Q6 | Layout::Q3 | Layout::Q2
    ) && blocks <= 64
}

/// One packed row × eight tokens for the 5- and 6-bit layouts (Q5, Q5M, Q5K and Q6) and Q3 and Q2: as
/// [`tile2x4_wide_avx2`] does for each of its rows, against twice the tokens, so that each
/// step's unpacked values feed eight products. The row is `rows.at[0]` (with `tails[0]` and
/// `heads[0]`); the results are in token order. The half-superblock body repeats the 2x4
/// tile's on purpose: one function for both, inlined, compiled to much slower loops
/// (docs/benchmarks.md, "The AVX2 prompt tiles' K heads, and 5- and 6-bit rows against eight
/// tokens").
///
/// # Safety
/// As for [`tile2x4_packed_avx2`], for the first row of `rows` and all eight tokens.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile1x8_wide_avx2<const L: u8>(
    rows: TileRows,
    blocks: usize,
    xq: [*const i8; 8],
    xd: [*const f32; 8],
    xso: [[*const f32; 2]; 8],
    xio: [*const i32; 8],
) -> [f32; 8] {
    use crate::kernels::packed::K_SUPER;
    // SAFETY: as for `tile2x4_wide_avx2`, for one row and eight tokens.
    unsafe {
        let layout = const { layout_of(L) };
        let hb = const { layout_of(L).head_bytes() };
        // Q6 and Q3: a scale per half block.
        let q6 = layout.halves();
        let iol = layout.io_lanes();
        let zero = _mm256_setzero_si256();
        let mut acc = [_mm256_setzero_ps(); 8];
        let (full, tail) = (blocks / 16, blocks % 16);
        for s in 0..blocks.div_ceil(16) {
            let w = rows.quants::<L>(s, full)[0];
            // A widened tail of at most 8 blocks has nothing in the second half.
            let halves = if s == full && tail <= 8 { 1 } else { 2 };
            for h in 0..halves {
                let head = w.sub(hb);
                let mul = if layout.half_mins() {
                    // Q2's scales, the low nibbles of the head's bytes.
                    let sc = head.add(2 * K_SUPER);
                    [nibble_pairs_half(sc, h), nibble_pairs_half(sc.add(16), h)]
                } else if q6 {
                    let sc = head.add(K_SUPER);
                    [i8_pairs_half(sc, h), i8_pairs_half(sc.add(16), h)]
                } else {
                    [_mm256_set1_epi16(1); 2]
                };
                let x = |t: usize, step: usize| {
                    _mm256_loadu_si256(xq[t].add(s * 512 + 64 * step + 32 * h) as *const __m256i)
                };
                let mut sums = [zero; 8];
                if layout == Layout::Q5 {
                    // Q5's − 16 · Σq starts the integer sums.
                    for (t, s32) in sums.iter_mut().enumerate() {
                        *s32 = _mm256_loadu_si256(xio[t].add(s * iol + 8 * h) as *const __m256i);
                    }
                }
                // Step pairs `$a` and `$b`, which share Q6's block scale.
                macro_rules! step_quad {
                    ($a:literal, $b:literal) => {
                        let (za, zb) = if layout == Layout::Q3 {
                            (q3_pair::<$a>(w, h), q3_pair::<$b>(w, h))
                        } else if layout == Layout::Q2 {
                            (q2_pair::<$a>(w, h), q2_pair::<$b>(w, h))
                        } else if q6 {
                            (q6_pair::<$a>(w, h), q6_pair::<$b>(w, h))
                        } else {
                            (q5_pair::<$a>(w, h), q5_pair::<$b>(w, h))
                        };
                        let m = mul[$a / 2];
                        for (t, s32) in sums.iter_mut().enumerate() {
                            // A pair's sums: at most 2 · 2 · 63 · 128 in 16 bits.
                            let pa = _mm256_add_epi16(
                                pairs(za[0], x(t, 2 * $a)),
                                pairs(za[1], x(t, 2 * $a + 1)),
                            );
                            let pb = _mm256_add_epi16(
                                pairs(zb[0], x(t, 2 * $b)),
                                pairs(zb[1], x(t, 2 * $b + 1)),
                            );
                            let v = if q6 {
                                _mm256_add_epi32(_mm256_madd_epi16(pa, m), _mm256_madd_epi16(pb, m))
                            } else {
                                // Four steps of 5-bit values: at most 4 · 2 · 31 · 128.
                                _mm256_madd_epi16(_mm256_add_epi16(pa, pb), m)
                            };
                            *s32 = _mm256_add_epi32(*s32, v);
                        }
                        // Each sum in a register (see `tile2x4_nibbles_avx2`).
                        for v in sums.iter_mut() {
                            std::arch::asm!(
                                "/* {0} */",
                                inout(ymm_reg) * v,
                                options(pure, nomem, nostack)
                            );
                        }
                    };
                }
                step_quad!(0, 1);
                step_quad!(2, 3);
                // Q2: its halves' offsets, which its mins take the place of Q6's − 32 with.
                let (sw, mw) = if layout.half_mins() {
                    offsets_half(head, h, G2::FULL)
                } else {
                    rows.factors(layout, 0, s, h, head)
                };
                // The integer sums' factor: Q6's super-scale (its block scales are in the
                // sums), else the block scale.
                let f = if q6 { k_super(head, h) } else { sw };
                for (t, s32) in sums.iter().enumerate() {
                    let d = _mm256_loadu_ps(xd[t].add(s * 16 + 8 * h));
                    let a = &mut acc[t];
                    *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*s32), _mm256_mul_ps(f, d), *a);
                    let so = _mm256_loadu_ps(xso[t][0].add(s * 16 + 8 * h));
                    if q6 {
                        // The − 32 of both half blocks: `so`, `so2` hold 32 · d · Σq (Q3:
                        // 4 · d · Σq, Q2: −d · Σq).
                        let so2 = _mm256_loadu_ps(xso[t][1].add(s * 16 + 8 * h));
                        *a = _mm256_fnmadd_ps(sw, so, _mm256_fnmadd_ps(mw, so2, *a));
                    } else if layout.has_offset() {
                        // Q5M's offsets: `so` holds −d · Σq.
                        *a = _mm256_fnmadd_ps(mw, so, *a);
                    }
                }
            }
        }
        let [a0, a1, a2, a3, a4, a5, a6, a7] = acc;
        let v = tile_sums([[a0, a1], [a2, a3], [a4, a5], [a6, a7]]);
        [
            v[0][0], v[0][1], v[1][0], v[1][1], v[2][0], v[2][1], v[3][0], v[3][1],
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WeightType;
    use crate::kernels::packed;

    /// The AVX2 tile's widening writes the bytes of the portable `packed::widen_tail` (the
    /// layout of a row padded to whole superblocks), for every head kind and tail width.
    #[test]
    fn simd_widening_matches_the_portable_one() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        for (dtype, n) in [
            (WeightType::Q4_1, 2),
            (WeightType::Q8_0, 9),
            (WeightType::Q5_0, 12),
            (WeightType::Q4_0, 15),
            (WeightType::Q4K, 8),
            (WeightType::Q6K, 8),
            (WeightType::IQ4_XS, 8),
        ] {
            let layout = Layout::of(dtype).unwrap();
            let (_, row) = packed::tests::row_with_tail(dtype, n);
            let tail = &row[layout.superblock_bytes()..];
            let mut want = vec![0u8; layout.superblock_bytes()];
            packed::widen_tail(layout, n, tail, &mut want);
            let mut got = [0xffu8; SB_ROOM];
            // SAFETY: a packed tail of n lanes; AVX2 detected above.
            unsafe { widen_tail_into(layout, tail.as_ptr(), n, &mut got) };
            assert_eq!(&got[..want.len()], &want[..], "{dtype:?} tail of {n}");
        }
    }

    /// `rows` rows of `dtype` at `cols` in ggml's layout: candle's quantization where it has
    /// one, else random blocks whose leading f16 scale is 1/128 (IQ4_NL, IQ4_XS).
    fn ggml_rows(dtype: WeightType, rows: usize, cols: usize) -> Vec<u8> {
        let vals: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect();
        if let Some(t) = dtype.to_candle() {
            let x = candle_core::Tensor::from_slice(&vals, (rows, cols), &candle_core::Device::Cpu)
                .unwrap();
            return candle_core::quantized::QTensor::quantize(&x, t)
                .unwrap()
                .data()
                .unwrap()
                .to_vec();
        }
        let n = rows * cols / dtype.block_size() * dtype.type_size();
        let mut b: Vec<u8> = (0..n).map(|i| (i * 7919 % 251) as u8).collect();
        for blk in b.chunks_exact_mut(dtype.type_size()) {
            blk[..2].copy_from_slice(&half::f16::from_f32(1.0 / 128.0).to_le_bytes());
        }
        b
    }

    /// Each of four rows with the tail read by whole loads past its end (`slack`) and by masked
    /// loads, against activations that are zero past the row's blocks.
    fn with_and_without_slack<const L: u8>(
        pk: &[u8],
        pb: usize,
        blocks: usize,
        a: &packed::PackedActs,
    ) -> [[f32; 4]; 2] {
        let (xq, xd, xso) = (a.qs.as_ptr(), a.d.as_ptr(), [a.so.as_ptr(), a.so2.as_ptr()]);
        // SAFETY: four packed rows of `blocks` blocks and TAIL_SLACK bytes after them; the
        // activations cover whole superblocks; AVX2 detected by the caller.
        unsafe {
            let over = dot4_packed_avx2::<L>(pk.as_ptr(), pb, blocks, xq, xd, xso, true);
            let one: [f32; 4] = std::array::from_fn(|i| {
                dot_packed_avx2::<L>(pk.as_ptr().add(i * pb), blocks, xq, xd, xso, true)
            });
            assert_eq!(over.map(f32::to_bits), one.map(f32::to_bits));
            let masked: [f32; 4] = std::array::from_fn(|i| {
                dot_packed_avx2::<L>(pk.as_ptr().add(i * pb), blocks, xq, xd, xso, false)
            });
            [over, masked]
        }
    }

    /// A tail read with whole loads gives, bit for bit, what masked loads give, whatever the
    /// bytes past it hold (the next row, or garbage after the last one): every layout, tails of
    /// 2 to 12 blocks.
    #[test]
    fn whole_loads_past_a_tail_change_nothing() {
        if !std::arch::is_x86_feature_detected!("avx2")
            || !std::arch::is_x86_feature_detected!("fma")
            || !std::arch::is_x86_feature_detected!("f16c")
        {
            return;
        }
        use crate::kernels::x86::{
            L_I4, L_I4K, L_Q2, L_Q3, L_Q4, L_Q4K, L_Q4M, L_Q5, L_Q5K, L_Q5M, L_Q6, L_Q8,
        };
        for (dtype, cols) in [
            (WeightType::Q4_0, 800),
            (WeightType::Q4_1, 576),
            (WeightType::Q5_0, 896),
            (WeightType::Q5_1, 800),
            (WeightType::Q8_0, 576),
            (WeightType::IQ4_NL, 800),
            (WeightType::Q4K, 4864),
            (WeightType::Q5K, 768),
            (WeightType::Q6K, 4864),
            (WeightType::Q3K, 4864),
            (WeightType::Q2K, 4864),
            (WeightType::IQ4_XS, 768),
        ] {
            let bytes = ggml_rows(dtype, 4, cols);
            let (rb, pb) = (bytes.len() / 4, packed::row_bytes(dtype, cols));
            for fill in [0x00u8, 0xff, 0x7c] {
                let mut pk = vec![fill; 4 * pb + TAIL_SLACK];
                for (s, o) in bytes.chunks_exact(rb).zip(pk.chunks_exact_mut(pb)) {
                    packed::pack_row(dtype, s, o);
                }
                let x: Vec<f32> = (0..cols)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                    .collect();
                let mut q = vec![crate::kernels::BlockQ8::default(); cols / crate::kernels::QK];
                crate::kernels::quantize_row_q8(&x, &mut q);
                let a = packed::PackedActs::new(&q, dtype);
                let blocks = cols / crate::kernels::QK;
                let r = match crate::kernels::x86::layout_code(Layout::of(dtype).unwrap()) {
                    L_Q4 => with_and_without_slack::<L_Q4>(&pk, pb, blocks, &a),
                    L_Q8 => with_and_without_slack::<L_Q8>(&pk, pb, blocks, &a),
                    L_Q4M => with_and_without_slack::<L_Q4M>(&pk, pb, blocks, &a),
                    L_Q6 => with_and_without_slack::<L_Q6>(&pk, pb, blocks, &a),
                    L_Q3 => with_and_without_slack::<L_Q3>(&pk, pb, blocks, &a),
                    L_Q2 => with_and_without_slack::<L_Q2>(&pk, pb, blocks, &a),
                    L_Q4K => with_and_without_slack::<L_Q4K>(&pk, pb, blocks, &a),
                    L_Q5K => with_and_without_slack::<L_Q5K>(&pk, pb, blocks, &a),
                    L_I4K => with_and_without_slack::<L_I4K>(&pk, pb, blocks, &a),
                    L_Q5 => with_and_without_slack::<L_Q5>(&pk, pb, blocks, &a),
                    L_I4 => with_and_without_slack::<L_I4>(&pk, pb, blocks, &a),
                    L_Q5M => with_and_without_slack::<L_Q5M>(&pk, pb, blocks, &a),
                    c => panic!("layout code {c}"),
                };
                assert!(
                    r[1].iter().all(|v| v.is_finite() && *v != 0.0),
                    "{dtype:?}: {r:?}"
                );
                assert_eq!(
                    r[0].map(f32::to_bits),
                    r[1].map(f32::to_bits),
                    "{dtype:?} at {cols}, bytes past the rows {fill:#x}: {:?} vs {:?}",
                    r[0],
                    r[1]
                );
            }
        }
    }
}
