//! The other AVX-512 kernels: f32 tiles for dense prefill, bf16 conversion and tiles, and the
//! vector `exp` and SiLU.

use super::*;

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
pub(super) fn transpose16_u32(r: [__m512i; 16]) -> [__m512i; 16] {
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

/// Dequantizes a packed row of any layout (see `packed.rs`) straight to bf16, keeping the packed
/// order: within superblock `si`, value `64s + 4l + j` is value `4s + j` of block `16si + l`.
/// A dot product only needs both operands in one order, so prompt kernels permute the
/// activations the same way instead of unshuffling the weights. Writes 512 values per
/// superblock of the row's `blocks` blocks (zero for a tail superblock's missing lanes).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512bf16")]
pub unsafe fn packed_row_to_bf16(
    layout: crate::kernels::packed::Layout,
    row: *const u8,
    blocks: usize,
    out: *mut u16,
) {
    use super::vnni::Geo;
    // SAFETY: the caller guarantees a packed row of `blocks` blocks at `row` and room for
    // 512 values per superblock at `out`.
    unsafe {
        let sbb = layout.superblock_bytes();
        let (full, tail) = (blocks / 16, blocks % 16);
        for si in 0..full {
            superblock_to_bf16::<false>(layout, row.add(si * sbb), Geo::FULL, out.add(si * 512));
        }
        if tail > 0 {
            let (sb, o) = (row.add(full * sbb), out.add(full * 512));
            superblock_to_bf16::<true>(layout, sb, Geo::tail(tail), o);
        }
    }
}

/// One superblock of [`packed_row_to_bf16`] (a tail if `TAIL`; see `vnni::superblock_dots` for
/// the attributes).
// Not `inline(always)` (which excludes target features): its closures must be compiled with
// the features, or the intrinsics in them become calls.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn superblock_to_bf16<const TAIL: bool>(
    layout: crate::kernels::packed::Layout,
    sb: *const u8,
    g: super::vnni::Geo,
    o: *mut u16,
) {
    use crate::kernels::packed::Layout;
    // SAFETY: as for `packed_row_to_bf16`.
    unsafe {
        let g = if TAIL { g } else { super::vnni::Geo::FULL };
        let offset = _mm512_set1_epi32(match layout.body() {
            Layout::Q4 => 8,
            Layout::Q4M | Layout::Q5M | Layout::Q2 => 0,
            Layout::Q6 => 32,
            Layout::Q3 => 4,
            Layout::Q5 => 16,
            _ => 128,
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
        let (d, m) = packed_head(layout, sb, g);
        let sc: [__m512; 4] = std::array::from_fn(|c| _mm512_permutexvar_ps(idx[c], d));
        let mn: [__m512; 4] = std::array::from_fn(|c| _mm512_permutexvar_ps(idx[c], m));
        // Q2's half blocks' offsets (zeros for the other layouts, unused).
        let off: [[__m512; 4]; 2] = if layout.half_mins() {
            let (o0, o1) = super::vnni::packed_offsets(sb, g);
            [o0, o1].map(|o| std::array::from_fn(|c| _mm512_permutexvar_ps(idx[c], o)))
        } else {
            [[_mm512_setzero_ps(); 4]; 2]
        };
        let q = sb.add(layout.head_bytes_n(g.n));
        for s in 0..8 {
            let bytes = if layout == Layout::Q6 {
                super::vnni::q6_operand(q, s, g)
            } else if layout == Layout::Q3 {
                super::vnni::q3_operand(q, s, g)
            } else if layout == Layout::Q2 {
                super::vnni::q2_operand(q, s, g)
            } else if layout.five_bit() {
                super::vnni::q5_operand(q, s, g)
            } else if layout.grid() {
                super::vnni::iq4_operand(q, s, g)
            } else if layout.nibbles() {
                let v = super::vnni::load_step(q.add(g.v * (s / 2)), g);
                if s % 2 == 0 {
                    _mm512_and_si512(v, low)
                } else {
                    _mm512_and_si512(_mm512_srli_epi16(v, 4), low)
                }
            } else {
                super::vnni::load_step(q.add(g.v * s), g)
            };
            let parts = [
                _mm512_extracti32x4_epi32::<0>(bytes),
                _mm512_extracti32x4_epi32::<1>(bytes),
                _mm512_extracti32x4_epi32::<2>(bytes),
                _mm512_extracti32x4_epi32::<3>(bytes),
            ];
            for (c, part) in parts.into_iter().enumerate() {
                let v = _mm512_sub_epi32(_mm512_cvtepu8_epi32(part), offset);
                let f = match layout.body() {
                    // Values 0..16 under the first half's scale and offset, 16..32 the second's.
                    Layout::Q2 => {
                        let (sh, oh) = if s >= 4 { (mn, off[1]) } else { (sc, off[0]) };
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), sh[c], oh[c])
                    }
                    Layout::Q4M | Layout::Q5M => {
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), sc[c], mn[c])
                    }
                    // Steps 4..8 are values 16..32, under the second scale.
                    Layout::Q6 | Layout::Q3 if s >= 4 => {
                        _mm512_mul_ps(_mm512_cvtepi32_ps(v), mn[c])
                    }
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

/// Σ exp(x − m) over the `n` values at `x` with [`exp512`] (relative error about 2e-7 per
/// term), 16 lanes summed in f32 over 256 values at a time and those sums in f64; NaN if any
/// x − m is NaN (as the scalar sum would be, where `exp512`'s clamping would hide it). Terms
/// below [`super::super::ops::EXP_FLOOR`] count as 0. With `STORE` each term is also written
/// to `out`, which may be `x` itself (each value is read before its place is written).
///
/// # Safety
/// `n` values readable at `x`, and with `STORE` writable at `out`; AVX-512F.
#[target_feature(enable = "avx512f")]
pub unsafe fn exp_pass_avx512<const STORE: bool>(
    x: *const f32,
    n: usize,
    m: f32,
    out: *mut f32,
) -> f64 {
    let (mv, lo) = (
        _mm512_set1_ps(m),
        _mm512_set1_ps(super::super::ops::EXP_FLOOR),
    );
    let mut total = 0f64;
    let mut nan: __mmask16 = 0;
    let mut i = 0;
    while i < n {
        let end = (i + 256).min(n);
        let mut acc = _mm512_setzero_ps();
        while i + 16 <= end {
            // SAFETY: i + 16 <= n values at `x` (and room at `out` with STORE).
            let d = _mm512_sub_ps(unsafe { _mm512_loadu_ps(x.add(i)) }, mv);
            nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(d, d);
            let e = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_GE_OQ>(d, lo), exp512(d));
            if STORE {
                // SAFETY: as above.
                unsafe { _mm512_storeu_ps(out.add(i), e) };
            }
            acc = _mm512_add_ps(acc, e);
            i += 16;
        }
        total += _mm512_reduce_add_ps(acc) as f64;
        // SAFETY: i < end <= n; `wrapping_add`: `out` is null without STORE.
        total += unsafe {
            super::super::ops::exp_pass_scalar::<STORE>(x.add(i), end - i, m, out.wrapping_add(i))
        };
        i = end;
    }
    if nan != 0 { f64::NAN } else { total }
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
