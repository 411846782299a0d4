//! x86-64 SIMD kernels: the AVX2 + FMA + F16C ones (x86-64-v3) here and the AVX2 packed-row
//! kernel in [`packed_avx2`], the AVX-512 VNNI integer ones in [`vnni`], the other AVX-512 ones
//! in [`avx512`]. Callers check [`super::CpuCaps`] first.

use std::arch::x86_64::*;

use super::{BlockQ8, Q4_0_BYTES, Q8_0_BYTES};

mod avx512;
mod packed_avx2;
mod vnni;

pub use avx512::*;
pub use packed_avx2::*;
pub use vnni::*;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// [`exp512`] on 8 lanes with AVX2 and FMA: the same reduction and polynomial, the power of two
/// built in the exponent bits (AVX2 has no `vscalefps`); arguments clamped to [-87, 88].
#[target_feature(enable = "avx2,fma")]
#[inline]
pub fn exp256(x: __m256) -> __m256 {
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.0)),
        _mm256_set1_ps(88.0),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    // n is in [-126, 127] after the clamp: 2^n is a normal float.
    let two_n = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(p, _mm256_castsi256_ps(two_n))
}

/// [`exp_pass_avx512`] on 8 lanes, with [`exp256`].
///
/// # Safety
/// As for [`exp_pass_avx512`]; AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_pass_avx2<const STORE: bool>(
    x: *const f32,
    n: usize,
    m: f32,
    out: *mut f32,
) -> f64 {
    let (mv, lo) = (_mm256_set1_ps(m), _mm256_set1_ps(super::ops::EXP_FLOOR));
    let mut total = 0f64;
    let mut nan = _mm256_setzero_ps();
    let mut i = 0;
    while i < n {
        let end = (i + 256).min(n);
        let mut acc = _mm256_setzero_ps();
        while i + 8 <= end {
            // SAFETY: i + 8 <= n values at `x` (and room at `out` with STORE).
            let d = _mm256_sub_ps(unsafe { _mm256_loadu_ps(x.add(i)) }, mv);
            nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(d, d));
            let e = _mm256_and_ps(exp256(d), _mm256_cmp_ps::<_CMP_GE_OQ>(d, lo));
            if STORE {
                // SAFETY: as above.
                unsafe { _mm256_storeu_ps(out.add(i), e) };
            }
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        // SAFETY: avx2, fma and (implied by the callers' checks) f16c are available.
        total += unsafe { hsum(acc) } as f64;
        // SAFETY: i < end <= n; `wrapping_add`: `out` is null without STORE.
        total += unsafe {
            super::ops::exp_pass_scalar::<STORE>(x.add(i), end - i, m, out.wrapping_add(i))
        };
        i = end;
    }
    if _mm256_movemask_ps(nan) != 0 {
        f64::NAN
    } else {
        total
    }
}

/// `gate ← silu(gate) · up`, 8 lanes at a time ([`silu_mul_avx512`] without AVX-512).
#[target_feature(enable = "avx2,fma")]
pub fn silu_mul_avx2(gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let mut i = 0;
    let one = _mm256_set1_ps(1.0);
    // SAFETY: every access stays below n.
    unsafe {
        while i + 8 <= n {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let u = _mm256_loadu_ps(up.as_ptr().add(i));
            let e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let s = _mm256_div_ps(g, _mm256_add_ps(one, e));
            _mm256_storeu_ps(gate.as_mut_ptr().add(i), _mm256_mul_ps(s, u));
            i += 8;
        }
    }
    for (g, u) in gate[i..n].iter_mut().zip(&up[i..n]) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_scale(p: *const u8) -> f32 {
    // SAFETY: the caller points at the two scale bytes of a block.
    let bits = unsafe { std::ptr::read_unaligned(p as *const u16) };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Quantizes activations to 8 bits in blocks of 32, as `quantize_row_q8` does (multiplier
/// `127 / amax`, rounding half to even, like ggml's AVX code), 8 values per instruction.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row_q8(x: &[f32], out: &mut [BlockQ8]) {
    let sign = _mm256_set1_ps(-0.0);
    for (blk, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
        // SAFETY: xs holds 32 values.
        unsafe {
            let v = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(xs.as_ptr().add(o)));
            let mut m = _mm256_setzero_ps();
            for v in v {
                m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v));
            }
            let amax = hmax(m);
            let d = amax / 127.0;
            let id = _mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
            blk.d = d;
            let sum = store_rounded_q8(&mut blk.qs, v, id);
            blk.s = d * sum as f32;
        }
    }
}

/// `round_half_even(v · scale)` of 32 values into `qs`, clamped as ggml clamps Q8_K quants
/// (a no-op for Q8_0, whose products stay within ±127); returns their sum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store_rounded_q8(qs: &mut [i8; 32], v: [__m256; 4], scale: __m256) -> i32 {
    let (lo, hi) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
    let q = v.map(|v| {
        let y = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(v, scale),
        );
        _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(y, lo), hi))
    });
    // The two packs interleave the 128-bit lanes; the permutation puts the 32 bytes back in order.
    let b = _mm256_packs_epi16(
        _mm256_packs_epi32(q[0], q[1]),
        _mm256_packs_epi32(q[2], q[3]),
    );
    let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: qs is 32 bytes.
    unsafe { _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, b) };
    let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// ggml's Q8_K quantization as `super::quantize_row_q8k` writes it, 8 values per instruction.
/// The scalar version's `round_ties_even` is a libm call without SSE4.1 in the baseline
/// target, and was a fifth of a 512-token prefill on a K-quant file (perf).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row_q8k(x: &[f32], out: &mut [BlockQ8]) {
    let sign = _mm256_set1_ps(-0.0);
    for (xs, bs) in x.chunks_exact(256).zip(out.chunks_exact_mut(8)) {
        // SAFETY: xs holds 256 values.
        unsafe {
            let mut m = _mm256_setzero_ps();
            for o in (0..256).step_by(8) {
                m = _mm256_max_ps(
                    m,
                    _mm256_andnot_ps(sign, _mm256_loadu_ps(xs.as_ptr().add(o))),
                );
            }
            let amax = hmax(m);
            if amax == 0.0 {
                bs.iter_mut().for_each(|b| *b = BlockQ8::default());
                continue;
            }
            // The scale's sign is that of the first value of largest magnitude, as in ggml.
            let max = *xs.iter().find(|v| v.abs() == amax).unwrap_or(&amax);
            let iscale = -127.0 / max;
            let d = 1.0 / iscale;
            let sc = _mm256_set1_ps(iscale);
            for (b, xb) in bs.iter_mut().zip(xs.chunks_exact(32)) {
                let v = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(xb.as_ptr().add(o)));
                let sum = store_rounded_q8(&mut b.qs, v, sc);
                b.d = d;
                b.s = d * sum as f32;
            }
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    _mm_cvtss_f32(m)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32_bytes(w: &[u8], x: &[f32]) -> f32 {
    let n = (w.len() / 4).min(x.len());
    let p = w.as_ptr() as *const f32;
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    // SAFETY: every load stays below n; loadu tolerates misalignment.
    unsafe {
        while i + 16 <= n {
            a0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(p.add(i)),
                _mm256_loadu_ps(x.as_ptr().add(i)),
                a0,
            );
            a1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(p.add(i + 8)),
                _mm256_loadu_ps(x.as_ptr().add(i + 8)),
                a1,
            );
            i += 16;
        }
        let mut s = hsum(_mm256_add_ps(a0, a1));
        while i < n {
            s += std::ptr::read_unaligned(p.add(i)) * x[i];
            i += 1;
        }
        s
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16(w: &[u8], x: &[f32]) -> f32 {
    let n = (w.len() / 2).min(x.len());
    let p = w.as_ptr();
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    // SAFETY: every load stays below n elements.
    unsafe {
        while i + 16 <= n {
            let w0 = _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i) as *const __m128i));
            let w1 = _mm256_cvtph_ps(_mm_loadu_si128(p.add(2 * i + 16) as *const __m128i));
            a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x.as_ptr().add(i)), a0);
            a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.as_ptr().add(i + 8)), a1);
            i += 16;
        }
        let mut s = hsum(_mm256_add_ps(a0, a1));
        while i < n {
            s += f16_scale(p.add(2 * i)) * x[i];
            i += 1;
        }
        s
    }
}

/// Four consecutive F16 (or, `BF16`, bf16: Hugging Face checkpoints' usual type, widened by a
/// zero-extension and a shift) rows (`row_bytes` apart, `cols` a multiple of 16) against one
/// token, one row after the other so the weights are one forward stream (as in the packed
/// kernel; interleaving the four rows 64 bytes at a time streamed slower), the lines `ahead`
/// bytes on requested into L2.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub unsafe fn dot4_half_avx512<const BF16: bool>(
    row: *const u8,
    row_bytes: usize,
    x: &[f32],
    ahead: usize,
) -> [f32; 4] {
    // SAFETY: the caller guarantees four rows of `cols` half values at `row`, `row_bytes` apart.
    unsafe { std::array::from_fn(|i| stream_half_row::<BF16>(row.add(i * row_bytes), x, ahead)) }
}

/// [`dot4_half_avx512`] with AVX2 alone: the same forward stream and L2 prefetch, in 256-bit
/// steps.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot4_half_avx2<const BF16: bool>(
    row: *const u8,
    row_bytes: usize,
    x: &[f32],
) -> [f32; 4] {
    // SAFETY: the caller guarantees four rows of `cols` half values at `row`, `row_bytes` apart.
    unsafe { std::array::from_fn(|i| stream_half_row_avx2::<BF16>(row.add(i * row_bytes), x)) }
}

/// 8 half-precision values (bf16 when `BF16`, else f16) as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen8<const BF16: bool>(h: __m128i) -> __m256 {
    if BF16 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    } else {
        _mm256_cvtph_ps(h)
    }
}

/// One F16 (or, `BF16`, bf16) row against one token with AVX2: four independent FMA chains
/// over 32 values (one cache line) per step.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn stream_half_row_avx2<const BF16: bool>(w: *const u8, x: &[f32]) -> f32 {
    let cols = x.len();
    // SAFETY: the caller guarantees `cols` 2-byte values at `w`; `cols` is a multiple of 16.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut c = 0;
        while c + 32 <= cols {
            _mm_prefetch::<_MM_HINT_T1>(w.wrapping_add(2 * c + DECODE_PREFETCH_L2) as *const i8);
            for (k, a) in acc.iter_mut().enumerate() {
                let h = _mm_loadu_si128(w.add(2 * (c + 8 * k)) as *const __m128i);
                let xv = _mm256_loadu_ps(x.as_ptr().add(c + 8 * k));
                *a = _mm256_fmadd_ps(widen8::<BF16>(h), xv, *a);
            }
            c += 32;
        }
        while c < cols {
            let h = _mm_loadu_si128(w.add(2 * c) as *const __m128i);
            acc[0] = _mm256_fmadd_ps(
                widen8::<BF16>(h),
                _mm256_loadu_ps(x.as_ptr().add(c)),
                acc[0],
            );
            c += 8;
        }
        hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ))
    }
}

/// 16 half-precision values (bf16 when `BF16`, else f16) as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn widen16<const BF16: bool>(h: __m256i) -> __m512 {
    if BF16 {
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    } else {
        _mm512_cvtph_ps(h)
    }
}

/// One F16 (or, `BF16`, bf16) row against one token: four independent FMA chains over 64
/// values per step, the lines `ahead` bytes on requested into L2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn stream_half_row<const BF16: bool>(w: *const u8, x: &[f32], ahead: usize) -> f32 {
    let cols = x.len();
    // SAFETY: the caller guarantees `cols` 2-byte values at `w`; `cols` is a multiple of 16.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut c = 0;
        while c + 64 <= cols {
            let a = w.wrapping_add(2 * c + ahead);
            _mm_prefetch::<_MM_HINT_T1>(a as *const i8);
            _mm_prefetch::<_MM_HINT_T1>(a.wrapping_add(64) as *const i8);
            for k in 0..2 {
                let h = _mm512_loadu_si512(w.add(2 * c + 64 * k) as *const __m512i);
                let lo = widen16::<BF16>(_mm512_castsi512_si256(h));
                let hi = widen16::<BF16>(_mm512_extracti64x4_epi64::<1>(h));
                let x0 = _mm512_loadu_ps(x.as_ptr().add(c + 32 * k));
                let x1 = _mm512_loadu_ps(x.as_ptr().add(c + 32 * k + 16));
                acc[2 * k] = _mm512_fmadd_ps(lo, x0, acc[2 * k]);
                acc[2 * k + 1] = _mm512_fmadd_ps(hi, x1, acc[2 * k + 1]);
            }
            c += 64;
        }
        while c < cols {
            let h = _mm256_loadu_si256(w.add(2 * c) as *const __m256i);
            let x0 = _mm512_loadu_ps(x.as_ptr().add(c));
            acc[0] = _mm512_fmadd_ps(widen16::<BF16>(h), x0, acc[0]);
            c += 16;
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s)
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_bf16(w: &[u8], x: &[f32]) -> f32 {
    let n = (w.len() / 2).min(x.len());
    let p = w.as_ptr();
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    // SAFETY: every load stays below n elements.
    unsafe {
        while i + 16 <= n {
            let r0 = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(2 * i) as *const __m128i));
            let r1 = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(2 * i + 16) as *const __m128i));
            let w0 = _mm256_castsi256_ps(_mm256_slli_epi32(r0, 16));
            let w1 = _mm256_castsi256_ps(_mm256_slli_epi32(r1, 16));
            a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x.as_ptr().add(i)), a0);
            a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.as_ptr().add(i + 8)), a1);
            i += 16;
        }
        let mut s = hsum(_mm256_add_ps(a0, a1));
        while i < n {
            let b = std::ptr::read_unaligned(p.add(2 * i) as *const u16);
            s += f32::from_bits((b as u32) << 16) * x[i];
            i += 1;
        }
        s
    }
}

/// Signed 8-bit products of 32 pairs summed into eight i32 lanes. `maddubs` wants an unsigned
/// operand, so the sign of `w` moves onto `x` first (llama.cpp's trick).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mul_sum_i8(w: __m256i, x: __m256i) -> __m256i {
    let aw = _mm256_sign_epi8(w, w);
    let sx = _mm256_sign_epi8(x, w);
    _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), _mm256_set1_epi16(1))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0(w: &[u8], x: &[BlockQ8]) -> f32 {
    let nb = x.len().min(w.len() / Q8_0_BYTES);
    let p = w.as_ptr();
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut b = 0;
    // SAFETY: block b starts at b*34 and nb blocks fit in `w`.
    unsafe {
        while b + 2 <= nb {
            let b0 = p.add(b * Q8_0_BYTES);
            let b1 = p.add((b + 1) * Q8_0_BYTES);
            let s0 = mul_sum_i8(
                _mm256_loadu_si256(b0.add(2) as *const __m256i),
                _mm256_loadu_si256(x[b].qs.as_ptr() as *const __m256i),
            );
            let s1 = mul_sum_i8(
                _mm256_loadu_si256(b1.add(2) as *const __m256i),
                _mm256_loadu_si256(x[b + 1].qs.as_ptr() as *const __m256i),
            );
            a0 = _mm256_fmadd_ps(
                _mm256_set1_ps(f16_scale(b0) * x[b].d),
                _mm256_cvtepi32_ps(s0),
                a0,
            );
            a1 = _mm256_fmadd_ps(
                _mm256_set1_ps(f16_scale(b1) * x[b + 1].d),
                _mm256_cvtepi32_ps(s1),
                a1,
            );
            b += 2;
        }
        if b < nb {
            let b0 = p.add(b * Q8_0_BYTES);
            let s0 = mul_sum_i8(
                _mm256_loadu_si256(b0.add(2) as *const __m256i),
                _mm256_loadu_si256(x[b].qs.as_ptr() as *const __m256i),
            );
            a0 = _mm256_fmadd_ps(
                _mm256_set1_ps(f16_scale(b0) * x[b].d),
                _mm256_cvtepi32_ps(s0),
                a0,
            );
        }
        hsum(_mm256_add_ps(a0, a1))
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q4(p: *const u8) -> __m256i {
    // SAFETY: the caller points at 16 bytes of nibbles.
    let raw = unsafe { _mm_loadu_si128(p as *const __m128i) };
    let m4 = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(raw, m4);
    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
    _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_0(w: &[u8], x: &[BlockQ8]) -> f32 {
    let nb = x.len().min(w.len() / Q4_0_BYTES);
    let p = w.as_ptr();
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut b = 0;
    // SAFETY: block b starts at b*18 and nb blocks fit in `w`.
    unsafe {
        while b + 2 <= nb {
            let b0 = p.add(b * Q4_0_BYTES);
            let b1 = p.add((b + 1) * Q4_0_BYTES);
            let s0 = mul_sum_i8(
                unpack_q4(b0.add(2)),
                _mm256_loadu_si256(x[b].qs.as_ptr() as *const __m256i),
            );
            let s1 = mul_sum_i8(
                unpack_q4(b1.add(2)),
                _mm256_loadu_si256(x[b + 1].qs.as_ptr() as *const __m256i),
            );
            a0 = _mm256_fmadd_ps(
                _mm256_set1_ps(f16_scale(b0) * x[b].d),
                _mm256_cvtepi32_ps(s0),
                a0,
            );
            a1 = _mm256_fmadd_ps(
                _mm256_set1_ps(f16_scale(b1) * x[b + 1].d),
                _mm256_cvtepi32_ps(s1),
                a1,
            );
            b += 2;
        }
        if b < nb {
            let b0 = p.add(b * Q4_0_BYTES);
            let s0 = mul_sum_i8(
                unpack_q4(b0.add(2)),
                _mm256_loadu_si256(x[b].qs.as_ptr() as *const __m256i),
            );
            a0 = _mm256_fmadd_ps(
                _mm256_set1_ps(f16_scale(b0) * x[b].d),
                _mm256_cvtepi32_ps(s0),
                a0,
            );
        }
        hsum(_mm256_add_ps(a0, a1))
    }
}

/// The AVX2 version of [`dot4x2_f32_avx512`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot4x2_f32_avx2(w: &[f32], k: usize, x0: &[f32], x1: &[f32]) -> [[f32; 4]; 2] {
    let mut a = [[_mm256_setzero_ps(); 4]; 2];
    let mut i = 0;
    // SAFETY: as in the AVX-512 version.
    unsafe {
        while i + 8 <= k {
            let xa = _mm256_loadu_ps(x0.as_ptr().add(i));
            let xb = _mm256_loadu_ps(x1.as_ptr().add(i));
            let [a0, a1] = &mut a;
            for (r, (s0, s1)) in a0.iter_mut().zip(a1.iter_mut()).enumerate() {
                let wr = _mm256_loadu_ps(w.as_ptr().add(r * k + i));
                *s0 = _mm256_fmadd_ps(wr, xa, *s0);
                *s1 = _mm256_fmadd_ps(wr, xb, *s1);
            }
            i += 8;
        }
        let mut out = [[0f32; 4]; 2];
        for t in 0..2 {
            for r in 0..4 {
                out[t][r] = hsum(a[t][r]);
            }
        }
        while i < k {
            for r in 0..4 {
                out[0][r] += w[r * k + i] * x0[i];
                out[1][r] += w[r * k + i] * x1[i];
            }
            i += 1;
        }
        out
    }
}
