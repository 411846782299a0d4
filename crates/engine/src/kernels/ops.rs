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
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: avx512f detected.
        return unsafe { super::x86::sum_exp_avx512(x, m) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        // SAFETY: avx2, fma and f16c detected.
        return unsafe { super::x86::sum_exp_avx2(x, m) };
    }
    sum_exp_scalar(x, m)
}

fn sum_exp_scalar(x: &[f32], m: f32) -> f64 {
    x.iter().map(|&v| (v as f64 - m as f64).exp()).sum()
}

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

    #[test]
    fn vector_exp_sum_matches_the_f64_one() {
        // A vocabulary-sized row of logits over a wide range, with a remainder past the 16s.
        let x: Vec<f32> = (0..151_939)
            .map(|i| ((i as f32 * 0.618_034).fract() - 0.8) * 40.0)
            .collect();
        let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let want = sum_exp_scalar(&x, m);
        let mut y = x.clone();
        y[77] = f32::NAN;
        // Every vector path this processor can run, not only the one `sum_exp` picks.
        type SumExp = fn(&[f32], f32) -> f64;
        let mut paths: Vec<(&str, SumExp)> = vec![("picked", sum_exp)];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                // SAFETY: avx2, fma and f16c detected.
                paths.push(("avx2", |x, m| unsafe {
                    super::super::x86::sum_exp_avx2(x, m)
                }));
            }
            if has!("avx512f") {
                // SAFETY: avx512f detected.
                paths.push(("avx512", |x, m| unsafe {
                    super::super::x86::sum_exp_avx512(x, m)
                }));
            }
        }
        for (name, f) in paths {
            let got = f(&x, m);
            assert!((got - want).abs() <= 1e-6 * want, "{name}: {got} vs {want}");
            assert!(f(&y, m).is_nan(), "{name}: a NaN logit must give NaN");
            assert!(f(&[], 0.0) == 0.0, "{name}");
            // Fewer values than one vector: the scalar remainder alone.
            let short = f(&x[..5], m);
            let short_want = sum_exp_scalar(&x[..5], m);
            assert!((short - short_want).abs() <= 1e-9 * short_want, "{name}");
        }
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
