//! AVX2 + FMA + F16C kernels (x86-64-v3). Callers check `CpuCaps::avx2` first.

use std::arch::x86_64::*;

use super::{BlockQ8, Q4_0_BYTES, Q8_0_BYTES};

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_scale(p: *const u8) -> f32 {
    // SAFETY: the caller points at the two scale bytes of a block.
    let bits = unsafe { std::ptr::read_unaligned(p as *const u16) };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Quantizes activations to 8 bits in blocks of 32, as `quantize_row_q8` does (rounding half
/// away from zero, like ggml), 8 values per instruction.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row_q8(x: &[f32], out: &mut [BlockQ8]) {
    let sign = _mm256_set1_ps(-0.0);
    let half = _mm256_set1_ps(0.5);
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
            let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            blk.d = d;
            let mut sum = _mm256_setzero_si256();
            for (k, v) in v.into_iter().enumerate() {
                let y = _mm256_mul_ps(v, id);
                // Round half away from zero: truncate(y + copysign(0.5, y)).
                let r = _mm256_add_ps(y, _mm256_or_ps(half, _mm256_and_ps(sign, y)));
                let q = _mm256_cvttps_epi32(r);
                sum = _mm256_add_epi32(sum, q);
                let mut lanes = [0i32; 8];
                _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, q);
                for (o, l) in blk.qs[8 * k..8 * k + 8].iter_mut().zip(lanes) {
                    *o = l as i8;
                }
            }
            let mut lanes = [0i32; 8];
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, sum);
            blk.s = d * lanes.iter().sum::<i32>() as f32;
        }
    }
}

unsafe fn hmax(v: __m256) -> f32 {
    // SAFETY: plain register arithmetic; only called from avx2 functions.
    unsafe {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
        _mm_cvtss_f32(m)
    }
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

/// Four consecutive F16 rows (`row_bytes` apart, `cols` a multiple of 16) against one token,
/// one row after the other so the weights are one forward stream (as in the packed kernel;
/// interleaving the four rows 64 bytes at a time streamed slower), with the same L2 prefetch.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub unsafe fn dot4_f16_avx512(row: *const u8, row_bytes: usize, x: &[f32]) -> [f32; 4] {
    // SAFETY: the caller guarantees four rows of `cols` f16 values at `row`, `row_bytes` apart.
    unsafe { std::array::from_fn(|i| stream_f16_row(row.add(i * row_bytes), x)) }
}

/// One F16 row against one token: four independent FMA chains over 64 values per step.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
unsafe fn stream_f16_row(w: *const u8, x: &[f32]) -> f32 {
    let cols = x.len();
    // SAFETY: the caller guarantees `cols` f16 values at `w`; `cols` is a multiple of 16.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut c = 0;
        while c + 64 <= cols {
            let a = w.wrapping_add(2 * c + PREFETCH_AHEAD);
            _mm_prefetch::<_MM_HINT_T1>(a as *const i8);
            _mm_prefetch::<_MM_HINT_T1>(a.wrapping_add(64) as *const i8);
            for k in 0..2 {
                let h = _mm512_loadu_si512(w.add(2 * c + 64 * k) as *const __m512i);
                let lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
                let hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(h));
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
            acc[0] = _mm512_fmadd_ps(_mm512_cvtph_ps(h), x0, acc[0]);
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

/// A 4-row × 2-token tile of f32 dot products: 6 loads feed 8 FMAs, so prefill on dense weights
/// runs near the FMA limit instead of the load limit. `w` holds 4 rows of `k` values.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub unsafe fn dot4x2_f32_avx512(w: &[f32], k: usize, x0: &[f32], x1: &[f32]) -> [[f32; 4]; 2] {
    let mut a = [[_mm512_setzero_ps(); 4]; 2];
    let mut i = 0;
    // SAFETY: w holds 4·k values, x0 and x1 at least k each; loads stay below k.
    unsafe {
        while i + 16 <= k {
            let xa = _mm512_loadu_ps(x0.as_ptr().add(i));
            let xb = _mm512_loadu_ps(x1.as_ptr().add(i));
            let [a0, a1] = &mut a;
            for (r, (s0, s1)) in a0.iter_mut().zip(a1.iter_mut()).enumerate() {
                let wr = _mm512_loadu_ps(w.as_ptr().add(r * k + i));
                *s0 = _mm512_fmadd_ps(wr, xa, *s0);
                *s1 = _mm512_fmadd_ps(wr, xb, *s1);
            }
            i += 16;
        }
        let mut out = [[0f32; 4]; 2];
        for t in 0..2 {
            for r in 0..4 {
                out[t][r] = _mm512_reduce_add_ps(a[t][r]);
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

/// The `STEPS` dot-product operands of one packed superblock row, handed to `f` in order:
/// Q8_0 loads them, Q4_0 splits each 64-byte chunk into low and high nibbles.
#[inline(always)]
unsafe fn for_each_operand(q4: bool, quants: *const u8, mut f: impl FnMut(usize, __m512i)) {
    // SAFETY: the caller guarantees a packed superblock's quants at `quants`.
    unsafe {
        if q4 {
            let m4 = _mm512_set1_epi8(0x0f);
            for u in 0..4 {
                let z = _mm512_loadu_si512(quants.add(64 * u) as *const __m512i);
                f(2 * u, _mm512_and_si512(z, m4));
                f(2 * u + 1, _mm512_and_si512(_mm512_srli_epi16(z, 4), m4));
            }
        } else {
            for s in 0..8 {
                f(s, _mm512_loadu_si512(quants.add(64 * s) as *const __m512i));
            }
        }
    }
}

/// Bytes ahead of the row being read that the decode kernel prefetches (measured with
/// `kernel_speed`: 4 to 16 KiB all do; nothing, or L1 instead of L2, is slower).
const PREFETCH_AHEAD: usize = 8192;

/// The packed layouts as const parameters of the decode kernels (see `packed::Layout`).
pub const L_Q8: u8 = 0;
pub const L_Q4: u8 = 1;
pub const L_Q4M: u8 = 2;
pub const L_Q6: u8 = 3;
pub const L_Q8M: u8 = 4;

pub fn layout_code(l: super::packed::Layout) -> u8 {
    use super::packed::Layout;
    match l {
        Layout::Q8 => L_Q8,
        Layout::Q4 => L_Q4,
        Layout::Q4M => L_Q4M,
        Layout::Q6 => L_Q6,
        Layout::Q8M => L_Q8M,
    }
}

const fn layout_of(code: u8) -> super::packed::Layout {
    use super::packed::Layout;
    match code {
        L_Q8 => Layout::Q8,
        L_Q4 => Layout::Q4,
        L_Q4M => Layout::Q4M,
        L_Q6 => Layout::Q6,
        _ => Layout::Q8M,
    }
}

/// The 16 lanes' scales and the factors of the activation offsets: for Q8 and Q4 both are the
/// f16 scales, for Q4M and Q8M the f32 scales and offsets of the head, for Q6 the f32 scales
/// of the two half blocks.
#[inline(always)]
unsafe fn packed_head(l: super::packed::Layout, sb: *const u8) -> (__m512, __m512) {
    // SAFETY: the caller guarantees a packed superblock's head at `sb`.
    unsafe {
        if !matches!(l, super::packed::Layout::Q4 | super::packed::Layout::Q8) {
            (
                _mm512_loadu_ps(sb as *const f32),
                _mm512_loadu_ps(sb.add(64) as *const f32),
            )
        } else {
            let sw = _mm512_cvtph_ps(_mm256_loadu_si256(sb as *const __m256i));
            (sw, sw)
        }
    }
}

/// Four consecutive packed rows against one token, one row after the other.
///
/// Reading the rows in turn makes the weights one forward stream: interleaving four rows
/// superblock by superblock (which loads each activation operand once for the four) jumped
/// between four places a row apart, and streamed 7% slower on two cores here (26.5 against
/// 28.6 GB/s over 1.5 GB; the activations stay in L1 either way).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot4_packed_vnni<const L: u8>(
    row: *const u8,
    row_bytes: usize,
    superblocks: usize,
    xq: *const i8,
    xd: *const f32,
    xso: [*const f32; 2],
) -> [f32; 4] {
    // SAFETY: the caller guarantees four rows of `superblocks` packed superblocks, `row_bytes`
    // apart, at `row`, and 512 quants and 16 factors per superblock at xq, xd, xso.
    unsafe {
        std::array::from_fn(|i| {
            dot_packed_vnni::<L>(row.add(i * row_bytes), superblocks, xq, xd, xso)
        })
    }
}

/// One packed row (see `packed.rs`) against one token's packed activations, the decode
/// kernel: per superblock 8 `vpdpbusd` in two independent chains (low and high nibbles for
/// Q4 and Q4M, even and odd steps for Q8) leave the 16 block sums in 16 lanes, then one
/// multiply and two FMAs apply the scales and the offsets; the lines 8 KiB ahead are
/// requested into L2 as it goes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_packed_vnni<const L: u8>(
    w: *const u8,
    superblocks: usize,
    xq: *const i8,
    xd: *const f32,
    xso: [*const f32; 2],
) -> f32 {
    // SAFETY: the caller guarantees `superblocks` packed superblocks at `w`, and 512 quants
    // and 16 factors per superblock at xq, xd, xso.
    unsafe {
        let layout = const { layout_of(L) };
        let sbb = const { layout_of(L).superblock_bytes() };
        let hb = const { layout_of(L).head_bytes() };
        let mut acc = _mm512_setzero_ps();
        for s in 0..superblocks {
            let x = xq.add(s * 512);
            let ws = w.add(s * sbb);
            // The hardware prefetcher alone leaves Q4_0 decode well below a plain read's
            // bandwidth here; asking for the lines 8 KiB ahead into L2 closes most of the gap.
            // `wrapping_add`: prefetches past the end of the matrix are harmless, but must not
            // be pointer arithmetic out of bounds.
            let a = ws.wrapping_add(PREFETCH_AHEAD);
            for o in (0..sbb).step_by(64) {
                _mm_prefetch::<_MM_HINT_T1>(a.wrapping_add(o) as *const i8);
            }
            let mut p = [_mm512_setzero_si512(); 2];
            if layout.nibbles() {
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
                    let z = _mm512_loadu_si512(ws.add(hb + 64 * u) as *const __m512i);
                    p[0] = _mm512_dpbusd_epi32(p[0], _mm512_and_si512(z, m4), x0);
                    p[1] = _mm512_dpbusd_epi32(p[1], _mm512_and_si512(z, mh), x1);
                }
                p[1] = _mm512_srai_epi32::<4>(p[1]);
            } else {
                for st in 0..8 {
                    let xv = _mm512_loadu_si512(x.add(64 * st) as *const __m512i);
                    let z = _mm512_loadu_si512(ws.add(hb + 64 * st) as *const __m512i);
                    // Q6: the chains are the two half blocks, each with its own scale.
                    let c = if L == L_Q6 { st / 4 } else { st % 2 };
                    p[c] = _mm512_dpbusd_epi32(p[c], z, xv);
                }
            }
            let (sw, mw) = packed_head(layout, ws);
            let xdv = _mm512_loadu_ps(xd.add(s * 16));
            let so = _mm512_loadu_ps(xso[0].add(s * 16));
            if L == L_Q6 {
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[0]), _mm512_mul_ps(sw, xdv), acc);
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[1]), _mm512_mul_ps(mw, xdv), acc);
                acc = _mm512_fnmadd_ps(sw, so, acc);
                acc = _mm512_fnmadd_ps(mw, _mm512_loadu_ps(xso[1].add(s * 16)), acc);
            } else {
                let d = _mm512_mul_ps(sw, xdv);
                let sum = _mm512_add_epi32(p[0], p[1]);
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), d, acc);
                acc = _mm512_fnmadd_ps(mw, so, acc);
            }
        }
        _mm512_reduce_add_ps(acc)
    }
}

/// Two packed rows × four tokens: each weight operand feeds four `vpdpbusd`, each activation
/// operand two, so the nibble unpacking and the loads are shared and the kernel runs on the dot
/// instructions (64 multiply-adds each, about five times f32 FMA on this class of processor).
/// `rows[i]` points at row i, `xq/xd/xso[t]` at token t's packed activations.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn tile2x4_packed_vnni<const L: u8>(
    rows: [*const u8; 2],
    superblocks: usize,
    xq: [*const i8; 4],
    xd: [*const f32; 4],
    xso: [[*const f32; 2]; 4],
) -> [[f32; 2]; 4] {
    // SAFETY: as for `dot_packed_vnni`, for both rows and all four tokens.
    unsafe {
        // The layout is a constant: with it a run-time value, choosing between the two sets of
        // Q6 accumulators kept all of them in memory, which cost Q4_0 prompts a third.
        let layout = const { layout_of(L) };
        let (sbb, hb, q4) = const {
            (
                layout_of(L).superblock_bytes(),
                layout_of(L).head_bytes(),
                layout_of(L).nibbles(),
            )
        };
        let q6 = L == L_Q6;
        let mut acc = [[_mm512_setzero_ps(); 2]; 4];
        for s in 0..superblocks {
            let mut p = [[_mm512_setzero_si512(); 2]; 4];
            // Q6's values 16..32 (steps 4..8), under their own scale.
            let mut p2 = [[_mm512_setzero_si512(); 2]; 4];
            let w0 = rows[0].add(s * sbb);
            let w1 = rows[1].add(s * sbb);
            let mut ops1 = [_mm512_setzero_si512(); 8];
            for_each_operand(q4, w1.add(hb), |step, wq| ops1[step] = wq);
            for_each_operand(q4, w0.add(hb), |step, wq0| {
                let wq1 = ops1[step];
                for t in 0..4 {
                    let xv = _mm512_loadu_si512(xq[t].add(s * 512 + 64 * step) as *const __m512i);
                    if q6 && step >= 4 {
                        p2[t][0] = _mm512_dpbusd_epi32(p2[t][0], wq0, xv);
                        p2[t][1] = _mm512_dpbusd_epi32(p2[t][1], wq1, xv);
                    } else {
                        p[t][0] = _mm512_dpbusd_epi32(p[t][0], wq0, xv);
                        p[t][1] = _mm512_dpbusd_epi32(p[t][1], wq1, xv);
                    }
                }
            });
            let heads = [packed_head(layout, w0), packed_head(layout, w1)];
            for t in 0..4 {
                let d = _mm512_loadu_ps(xd[t].add(s * 16));
                let so = _mm512_loadu_ps(xso[t][0].add(s * 16));
                for r in 0..2 {
                    let (sw, mw) = heads[r];
                    let f = _mm512_mul_ps(sw, d);
                    acc[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[t][r]), f, acc[t][r]);
                    if q6 {
                        let f2 = _mm512_mul_ps(mw, d);
                        acc[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p2[t][r]), f2, acc[t][r]);
                        acc[t][r] = _mm512_fnmadd_ps(sw, so, acc[t][r]);
                        let so2 = _mm512_loadu_ps(xso[t][1].add(s * 16));
                        acc[t][r] = _mm512_fnmadd_ps(mw, so2, acc[t][r]);
                    } else {
                        acc[t][r] = _mm512_fnmadd_ps(mw, so, acc[t][r]);
                    }
                }
            }
        }
        let mut out = [[0f32; 2]; 4];
        for (o, a) in out.iter_mut().zip(acc) {
            for (o, a) in o.iter_mut().zip(a) {
                *o = _mm512_reduce_add_ps(a);
            }
        }
        out
    }
}

/// Rounds f32 to bf16 (nearest even), 16 values per instruction; `src` and `dst` hold `n`
/// values, `n` a multiple of 16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub unsafe fn f32_to_bf16(src: *const f32, dst: *mut u16, n: usize) {
    // SAFETY: the caller guarantees n values at src and room for n at dst.
    unsafe {
        let mut i = 0;
        while i < n {
            let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.add(i)));
            _mm256_storeu_si256(
                dst.add(i) as *mut __m256i,
                std::mem::transmute::<__m256bh, __m256i>(v),
            );
            i += 16;
        }
    }
}

/// Rewrites 16 rows of bf16 values (row `i` at `src + i·stride`, `k` values each, `k` a
/// multiple of 32) into the pair layout of an AMX B operand: for each value pair `p < k/2`, the
/// 16 rows' `(v[2p], v[2p+1])` side by side, 64 bytes per pair. A 16 × 16 transpose of 32-bit
/// pairs per 32 values.
#[target_feature(enable = "avx512f")]
pub unsafe fn rows_to_pairs16(src: *const u16, stride: usize, k: usize, dst: *mut u16) {
    // SAFETY: the caller guarantees 16 rows of k values at src (stride `stride` values) and room
    // for 16·k values at dst.
    unsafe {
        let mut p0 = 0;
        while p0 < k / 2 {
            let r: [__m512i; 16] = std::array::from_fn(|i| {
                _mm512_loadu_si512(src.add(i * stride + 2 * p0) as *const __m512i)
            });
            let t = transpose16_u32(r);
            for (j, v) in t.iter().enumerate() {
                _mm512_storeu_si512(dst.add((p0 + j) * 32) as *mut __m512i, *v);
            }
            p0 += 16;
        }
    }
}

/// Transposes a 16 × 16 matrix of 32-bit values held one row per register.
#[target_feature(enable = "avx512f")]
fn transpose16_u32(r: [__m512i; 16]) -> [__m512i; 16] {
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    let mut u = [_mm512_setzero_si512(); 16];
    for i in 0..4 {
        let b = 4 * i;
        u[b] = _mm512_unpacklo_epi64(t[b], t[b + 2]);
        u[b + 1] = _mm512_unpackhi_epi64(t[b], t[b + 2]);
        u[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);
        u[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);
    }
    let mut v = [_mm512_setzero_si512(); 16];
    for h in 0..2 {
        let b = 8 * h;
        for i in 0..4 {
            v[b + i] = _mm512_shuffle_i32x4::<0x88>(u[b + i], u[b + 4 + i]);
            v[b + 4 + i] = _mm512_shuffle_i32x4::<0xdd>(u[b + i], u[b + 4 + i]);
        }
    }
    let mut w = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        w[i] = _mm512_shuffle_i32x4::<0x88>(v[i], v[8 + i]);
        w[8 + i] = _mm512_shuffle_i32x4::<0xdd>(v[i], v[8 + i]);
    }
    w
}

/// A 4-row × 4-token tile of bf16 dot products (`vdpbf16ps`: 32 multiply-adds per
/// instruction, twice f32 FMA): 8 loads feed 16 of them. `w` holds 4 rows and `x` 4 tokens of
/// `k` bf16 values each (row stride `k`), `k` a multiple of 32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub unsafe fn tile4x4_bf16(w: *const u16, x: *const u16, k: usize) -> [[f32; 4]; 4] {
    // SAFETY: the caller guarantees 4·k values at w and at x.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        let ld = |p: *const u16| {
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p as *const __m512i))
        };
        let mut i = 0;
        while i < k {
            let wv = [
                ld(w.add(i)),
                ld(w.add(k + i)),
                ld(w.add(2 * k + i)),
                ld(w.add(3 * k + i)),
            ];
            for (t, row) in acc.iter_mut().enumerate() {
                let xv = ld(x.add(t * k + i));
                for (a, wv) in row.iter_mut().zip(wv) {
                    *a = _mm512_dpbf16_ps(*a, wv, xv);
                }
            }
            i += 32;
        }
        let mut out = [[0f32; 4]; 4];
        for (o, a) in out.iter_mut().zip(acc) {
            for (o, a) in o.iter_mut().zip(a) {
                *o = _mm512_reduce_add_ps(a);
            }
        }
        out
    }
}

/// Dequantizes a packed Q4_0 / Q8_0 row (see `packed.rs`) straight to bf16, keeping the packed
/// order: within superblock `si`, value `64s + 4l + j` is value `4s + j` of block `16si + l`.
/// A dot product only needs both operands in one order, so prompt kernels permute the
/// activations the same way instead of unshuffling the weights. Writes `superblocks · 512`
/// values (zero for a padded superblock's missing blocks, whose scales are zero).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512bf16")]
pub unsafe fn packed_row_to_bf16(
    layout: super::packed::Layout,
    row: *const u8,
    superblocks: usize,
    out: *mut u16,
) {
    use super::packed::Layout;
    // SAFETY: the caller guarantees `superblocks` packed superblocks at `row` and room for
    // 512 values per superblock at `out`.
    unsafe {
        let (sbb, hb, q4) = (
            layout.superblock_bytes(),
            layout.head_bytes(),
            layout.nibbles(),
        );
        let offset = _mm512_set1_epi32(match layout {
            Layout::Q8 | Layout::Q6 => 128,
            Layout::Q4 => 8,
            Layout::Q4M | Layout::Q8M => 0,
        });
        let low = _mm512_set1_epi8(0x0f);
        // Chunk c of a 64-byte step holds lanes 4c..4c+4, four values each.
        let idx: [__m512i; 4] = std::array::from_fn(|c| {
            let c = c as i32 * 4;
            _mm512_set_epi32(
                c + 3,
                c + 3,
                c + 3,
                c + 3,
                c + 2,
                c + 2,
                c + 2,
                c + 2,
                c + 1,
                c + 1,
                c + 1,
                c + 1,
                c,
                c,
                c,
                c,
            )
        });
        for si in 0..superblocks {
            let sb = row.add(si * sbb);
            let (d, m) = packed_head(layout, sb);
            let sc: [__m512; 4] = std::array::from_fn(|c| _mm512_permutexvar_ps(idx[c], d));
            let mn: [__m512; 4] = std::array::from_fn(|c| _mm512_permutexvar_ps(idx[c], m));
            let q = sb.add(hb);
            let o = out.add(si * 512);
            for s in 0..8 {
                let bytes = if q4 {
                    let v = _mm512_loadu_si512(q.add(64 * (s / 2)) as *const __m512i);
                    if s % 2 == 0 {
                        _mm512_and_si512(v, low)
                    } else {
                        _mm512_and_si512(_mm512_srli_epi16(v, 4), low)
                    }
                } else {
                    _mm512_loadu_si512(q.add(64 * s) as *const __m512i)
                };
                let parts = [
                    _mm512_extracti32x4_epi32::<0>(bytes),
                    _mm512_extracti32x4_epi32::<1>(bytes),
                    _mm512_extracti32x4_epi32::<2>(bytes),
                    _mm512_extracti32x4_epi32::<3>(bytes),
                ];
                for (c, part) in parts.into_iter().enumerate() {
                    let v = _mm512_sub_epi32(_mm512_cvtepu8_epi32(part), offset);
                    let f = match layout {
                        Layout::Q4M | Layout::Q8M => {
                            _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), sc[c], mn[c])
                        }
                        // Steps 4..8 are values 16..32, under the second scale.
                        Layout::Q6 if s >= 4 => _mm512_mul_ps(_mm512_cvtepi32_ps(v), mn[c]),
                        _ => _mm512_mul_ps(_mm512_cvtepi32_ps(v), sc[c]),
                    };
                    _mm256_storeu_si256(
                        o.add(64 * s + 16 * c) as *mut __m256i,
                        std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(f)),
                    );
                }
            }
        }
    }
}

/// `exp` of 16 lanes: Cody–Waite reduction by ln 2 and a degree-6 polynomial on |r| ≤ ln2/2,
/// relative error about 2e-7; arguments are clamped to [-87, 88], so the result is finite and
/// at least about 1e-38 (softmax weights and SiLU never need more).
#[target_feature(enable = "avx512f")]
#[inline]
pub fn exp512(x: __m512) -> __m512 {
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-87.0)),
        _mm512_set1_ps(88.0),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// `gate ← silu(gate) · up`, 16 lanes at a time (a scalar `exp` per element was about a tenth
/// of a TinyLlama prompt).
#[target_feature(enable = "avx512f")]
pub fn silu_mul_avx512(gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let mut i = 0;
    let one = _mm512_set1_ps(1.0);
    // SAFETY: every access stays below n.
    unsafe {
        while i + 16 <= n {
            let g = _mm512_loadu_ps(gate.as_ptr().add(i));
            let u = _mm512_loadu_ps(up.as_ptr().add(i));
            let e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
            let s = _mm512_div_ps(g, _mm512_add_ps(one, e));
            _mm512_storeu_ps(gate.as_mut_ptr().add(i), _mm512_mul_ps(s, u));
            i += 16;
        }
    }
    for (g, u) in gate[i..n].iter_mut().zip(&up[i..n]) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}
