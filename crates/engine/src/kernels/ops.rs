//! The small operations of a decoder layer. They touch activations only (kilobytes per token),
//! so plain loops are enough; the weight-bound work is in `matmul`.

use serde::{Deserialize, Serialize};

/// RMSNorm as Hugging Face computes it: `x / sqrt(mean(x²) + ε) · w`, in f32.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (o, xr) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in o.iter_mut().zip(xr).zip(w) {
            *o = v * inv * g;
        }
    }
}

/// cos/sin of the rotary angles for `n` positions starting at `pos`, `[n][head_dim/2]` each.
/// Frequencies are computed in f32 like transformers so logits agree to the last digits.
pub struct RopeTable {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub half: usize,
}

impl RopeTable {
    /// Plain rotary frequencies `θ^(-2i/head_dim)`.
    pub fn new(theta: f32, head_dim: usize, pos: usize, n: usize) -> Self {
        let inv: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        Self::with_inv_freq(&inv, pos, n)
    }

    /// Positions `pos .. pos + n` for the given inverse frequencies (one per dimension pair).
    pub fn with_inv_freq(inv: &[f32], pos: usize, n: usize) -> Self {
        let half = inv.len();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in pos..pos + n {
            for f in inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        RopeTable { cos, sin, half }
    }
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeStyle {
    /// Hugging Face layout: dimension `i` rotates with `i + head_dim/2`.
    Neox,
    /// GPT-J layout: dimension `2i` rotates with `2i+1`. llama.cpp's converter permutes the Q and K
    /// weights of Llama models into this layout, so Llama GGUF files need it.
    Interleaved,
}

/// Rotates every head of `x` (`[n][heads·head_dim]`) in place.
pub fn rope(x: &mut [f32], heads: usize, head_dim: usize, table: &RopeTable, style: RopeStyle) {
    rope_from(x, heads, head_dim, table, style, 0)
}

/// [`rope`] for rows that start at row `first` of the table (a slice of a larger batch).
pub fn rope_from(
    x: &mut [f32],
    heads: usize,
    head_dim: usize,
    table: &RopeTable,
    style: RopeStyle,
    first: usize,
) {
    let half = head_dim / 2;
    for (t, row) in x.chunks_exact_mut(heads * head_dim).enumerate() {
        let t = t + first;
        let cos = &table.cos[t * half..(t + 1) * half];
        let sin = &table.sin[t * half..(t + 1) * half];
        for h in row.chunks_exact_mut(head_dim) {
            match style {
                RopeStyle::Neox => {
                    for i in 0..half {
                        let (a, b) = (h[i], h[i + half]);
                        h[i] = a * cos[i] - b * sin[i];
                        h[i + half] = b * cos[i] + a * sin[i];
                    }
                }
                RopeStyle::Interleaved => {
                    for i in 0..half {
                        let (a, b) = (h[2 * i], h[2 * i + 1]);
                        h[2 * i] = a * cos[i] - b * sin[i];
                        h[2 * i + 1] = b * cos[i] + a * sin[i];
                    }
                }
            }
        }
    }
}

/// Σ exp(x − m) over `x`: with the AVX-512 or AVX2 vector `exp` where the processor has it (within
/// about 1e-6 of the f64 sum, relative), else in f64. For the log-probability reported with
/// each generated token, whose exact f64 sum over a 150k-entry vocabulary took about a twentieth
/// of a small model's decode step; scoring (`sampling::log_sum_exp`) keeps the f64 sum.
pub fn sum_exp(x: &[f32], m: f32) -> f64 {
    // SAFETY: `x.len()` values at `x`; nothing is written.
    unsafe { exp_pass::<false>(x.as_ptr(), x.len(), m, std::ptr::null_mut()) }
}

/// `x ← exp(x)` (0 below about −87, where f32 leaves its normal range), returning Σ exp(x) as
/// [`sum_exp`] does: temperature sampling's softmax over the whole vocabulary at every step,
/// where an f64 `exp` per token was a visible share of a small model's decode step.
pub fn exp_in_place(x: &mut [f32]) -> f64 {
    let p = x.as_mut_ptr();
    // SAFETY: `x.len()` values readable and writable at `p`; each is read before it is written.
    unsafe { exp_pass::<true>(p, x.len(), 0.0, p) }
}

/// Σ exp(x − m) over the `n` values at `x`, each term also written to `out` with `STORE` (the
/// kernels of `x86` on the vector paths).
///
/// # Safety
/// `n` values readable at `x`, and with `STORE` writable at `out` (which may be `x`).
unsafe fn exp_pass<const STORE: bool>(x: *const f32, n: usize, m: f32, out: *mut f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: avx512f detected; the caller guarantees the memory.
        return unsafe { super::x86::exp_pass_avx512::<STORE>(x, n, m, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        // SAFETY: avx2, fma and f16c detected; the caller guarantees the memory.
        return unsafe { super::x86::exp_pass_avx2::<STORE>(x, n, m, out) };
    }
    // SAFETY: as the caller guarantees.
    unsafe { exp_pass_scalar::<STORE>(x, n, m, out) }
}

/// [`exp_pass`] in f64, one value at a time: the portable path, the vector ones' remainders and
/// the tests' reference.
///
/// # Safety
/// As for [`exp_pass`].
pub(super) unsafe fn exp_pass_scalar<const STORE: bool>(
    x: *const f32,
    n: usize,
    m: f32,
    out: *mut f32,
) -> f64 {
    let mut total = 0f64;
    for j in 0..n {
        // SAFETY: j < n.
        let d = unsafe { *x.add(j) } - m;
        let e = if d < EXP_FLOOR { 0.0 } else { (d as f64).exp() };
        if STORE {
            // SAFETY: j < n.
            unsafe { *out.add(j) = e as f32 };
        }
        total += e;
    }
    total
}

/// Below this, `exp` is taken as 0: f32's normal range ends about here, and the vector `exp`s
/// clamp their argument to it, so that they would give about 1.6e-38 for anything smaller (at
/// temperature 1e-40 every token but the likeliest would keep that much).
pub const EXP_FLOOR: f32 = -87.0;

/// `gate ← silu(gate) · up`, the SwiGLU activation.
pub fn silu_mul(caps: super::CpuCaps, gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if caps.avx512vnni {
        // SAFETY: avx512f detected (implied by avx512vnni).
        return unsafe { super::x86::silu_mul_avx512(gate, up) };
    }
    #[cfg(target_arch = "x86_64")]
    if caps.avx2 {
        // SAFETY: avx2 and fma detected (`CpuCaps::avx2`).
        return unsafe { super::x86::silu_mul_avx2(gate, up) };
    }
    let _ = caps;
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every exp pass this processor can run (not only the one `sum_exp` picks) against the
    /// f64 one: the sum, and with STORE each term.
    #[test]
    fn vector_exp_passes_match_the_f64_one() {
        // A vocabulary-sized row of logits over a wide range, with a remainder past the 16s, and
        // values below the floor, down to −∞.
        let mut x: Vec<f32> = (0..151_939)
            .map(|i| ((i as f32 * 0.618_034).fract() - 0.8) * 40.0)
            .collect();
        x[5] = f32::NEG_INFINITY;
        x[6] = -300.0;
        let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let want_terms: Vec<f32> = x
            .iter()
            .map(|&v| {
                if v - m < EXP_FLOOR {
                    0.0
                } else {
                    ((v - m) as f64).exp() as f32
                }
            })
            .collect();
        // SAFETY: `x.len()` values; nothing written.
        let want =
            unsafe { exp_pass_scalar::<false>(x.as_ptr(), x.len(), m, std::ptr::null_mut()) };
        let naive: f64 = x.iter().map(|&v| ((v - m) as f64).exp()).sum();
        assert!((want - naive).abs() <= 1e-12 * naive);
        type Pass = unsafe fn(*const f32, usize, f32, *mut f32) -> f64;
        let mut paths: Vec<(&str, Pass, Pass)> =
            vec![("picked", exp_pass::<false>, exp_pass::<true>)];
        #[cfg(target_arch = "x86_64")]
        {
            use super::super::x86;
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                paths.push((
                    "avx2",
                    x86::exp_pass_avx2::<false>,
                    x86::exp_pass_avx2::<true>,
                ));
            }
            if has!("avx512f") {
                paths.push((
                    "avx512",
                    x86::exp_pass_avx512::<false>,
                    x86::exp_pass_avx512::<true>,
                ));
            }
        }
        let mut y = x.clone();
        y[77] = f32::NAN;
        for (name, sum, store) in paths {
            // SAFETY (all calls): the lengths given are those of the slices, `out` is null
            // without STORE; the features were detected above.
            let got = unsafe { sum(x.as_ptr(), x.len(), m, std::ptr::null_mut()) };
            assert!((got - want).abs() <= 1e-6 * want, "{name}: {got} vs {want}");
            let mut terms = vec![f32::NAN; x.len()];
            let stored = unsafe { store(x.as_ptr(), x.len(), m, terms.as_mut_ptr()) };
            assert!(
                (stored - want).abs() <= 1e-6 * want,
                "{name}: {stored} vs {want}"
            );
            for (i, (a, b)) in terms.iter().zip(&want_terms).enumerate() {
                assert!((a - b).abs() <= 1e-6 * b, "{name}: term {i}: {a} vs {b}");
            }
            let nan = unsafe { sum(y.as_ptr(), y.len(), m, std::ptr::null_mut()) };
            assert!(nan.is_nan(), "{name}: a NaN logit must give NaN");
            let empty = unsafe { sum(x.as_ptr(), 0, 0.0, std::ptr::null_mut()) };
            assert!(empty == 0.0, "{name}");
            // Fewer values than one vector: the scalar remainder alone.
            let short = unsafe { sum(x.as_ptr(), 5, m, std::ptr::null_mut()) };
            let short_want =
                unsafe { exp_pass_scalar::<false>(x.as_ptr(), 5, m, std::ptr::null_mut()) };
            assert!((short - short_want).abs() <= 1e-9 * short_want, "{name}");
        }
        // In place, as the sampler calls it: the same terms.
        let mut z: Vec<f32> = x.iter().map(|&v| v - m).collect();
        let total = exp_in_place(&mut z);
        assert!((total - want).abs() <= 1e-6 * want);
        assert!(
            z.iter()
                .zip(&want_terms)
                .all(|(a, b)| (a - b).abs() <= 1e-6 * b)
        );
        assert!((sum_exp(&x, m) - want).abs() <= 1e-6 * want);
    }

    #[test]
    fn vector_silu_matches_the_scalar_one() {
        let g: Vec<f32> = (0..1003).map(|i| (i as f32 - 500.0) * 0.05).collect();
        let u: Vec<f32> = (0..1003).map(|i| 1.0 + (i % 7) as f32 * 0.1).collect();
        use super::super::CpuCaps;
        let mut want = g.clone();
        silu_mul(CpuCaps::portable(), &mut want, &u);
        let detected = CpuCaps::detect();
        // The AVX2 path too where the processor would take the AVX-512 one.
        let mut caps = vec![detected];
        if detected.avx2 {
            caps.push(CpuCaps::avx2_only());
        }
        for c in caps {
            let mut got = g.clone();
            silu_mul(c, &mut got, &u);
            for ((a, b), x) in got.iter().zip(&want).zip(&g) {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "{}: silu({x}): {a} vs {b}",
                    c.describe()
                );
            }
        }
    }
}
