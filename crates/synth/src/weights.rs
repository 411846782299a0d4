//! Random weights, generated row by row in the Hugging Face layout and encoded straight into the
//! bytes of the requested storage type.
//!
//! Every row is a pure function of (seed, tensor name, row index): each row seeds its own cheap
//! generator. That makes rows independent, so they are generated in parallel and in chunks
//! (memory stays bounded for 150 M-element embeddings), the output does not depend on the thread
//! count, and a GGUF file can permute Llama's Q/K rows and still hold exactly the weights of the
//! Hugging Face folder written with the same seed.

use std::io::Write;

use half::{bf16, f16};
use rayon::prelude::*;

use super::SynthQuant;
use bakeoff_engine::kernels::{Q4_0_BYTES, Q8_0_BYTES, QK};
use bakeoff_engine::models::{DecoderConfig, layer_tensor_names};
use bakeoff_engine::{Error, Result};
use bakeoff_quantize::blocks::{quantize_q4_0, quantize_q8_0};
use bakeoff_quantize::gguf_write::llama_qk_source_row;

/// Standard deviation of the weight matrices and biases: transformers' `initializer_range`,
/// which keeps every projection's output near unit scale after RMSNorm.
const WEIGHT_STD: f32 = 0.02;
/// RMSNorm gains are drawn from `1 ± NORM_NOISE`: near identity, but not all equal, so a
/// kernel that ignored them would show in the logits.
const NORM_NOISE: f32 = 0.05;
/// Output bytes generated per parallel batch: large enough to keep both cores busy, small enough
/// that a 1.5 B-parameter model never needs more than this in memory at once.
const CHUNK_BYTES: usize = 32 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Init {
    /// Uniform, mean 0, std [`WEIGHT_STD`].
    Matrix,
    /// Uniform in `1 ± NORM_NOISE`.
    Norm,
    /// Uniform, mean 0, std [`WEIGHT_STD`].
    Bias,
}

/// One tensor to synthesize, in the Hugging Face layout.
#[derive(Clone, Debug)]
pub(super) struct Spec {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    /// Norms and biases: written with shape `[cols]`.
    pub one_d: bool,
    pub init: Init,
    seed: u64,
}

impl Spec {
    fn new(name: String, shape: &[usize], init: Init, seed: u64) -> Self {
        let (rows, cols, one_d) = match *shape {
            [n] => (1, n, true),
            [r, c] => (r, c, false),
            _ => (0, 0, false),
        };
        let seed = splitmix64(seed ^ fnv1a64(name.as_bytes()));
        Spec {
            name,
            rows,
            cols,
            one_d,
            init,
            seed,
        }
    }

    pub fn shape(&self) -> Vec<usize> {
        if self.one_d {
            vec![self.cols]
        } else {
            vec![self.rows, self.cols]
        }
    }

    pub fn elems(&self) -> usize {
        self.rows * self.cols
    }

    /// Fills `out` (one row, `cols` values) with row `r`'s values.
    pub fn fill_row(&self, r: usize, out: &mut [f32]) {
        let mut rng = WyRand(splitmix64(
            self.seed ^ (r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ));
        // Uniform on [-1, 1) has std 1/√3.
        let (center, half) = match self.init {
            Init::Matrix | Init::Bias => (0.0, WEIGHT_STD * 3f32.sqrt()),
            Init::Norm => (1.0, NORM_NOISE),
        };
        // Two 24-bit uniforms per 64-bit draw: the generator is the cost that matters here.
        for pair in out.chunks_mut(2) {
            let x = rng.next();
            pair[0] = center + half * unit24(x >> 40);
            if let Some(v) = pair.get_mut(1) {
                *v = center + half * unit24((x >> 16) & 0xFF_FFFF);
            }
        }
    }

    /// All values, row by row (tests and small tensors).
    #[cfg(test)]
    pub fn values(&self) -> Vec<f32> {
        let mut v = vec![0f32; self.elems()];
        for (r, row) in v.chunks_exact_mut(self.cols).enumerate() {
            self.fill_row(r, row);
        }
        v
    }
}

/// Every tensor of a model with config `cfg`, in load order (embedding, layers, final norm,
/// untied head), with Hugging Face names and shapes.
pub(super) fn specs(cfg: &DecoderConfig, seed: u64) -> Vec<Spec> {
    let h = cfg.hidden_size;
    let q = cfg.n_heads * cfg.head_dim;
    let kv = cfg.n_kv_heads * cfg.head_dim;
    let i = cfg.intermediate_size;
    let mut out = vec![Spec::new(
        "model.embed_tokens.weight".into(),
        &[cfg.vocab_size, h],
        Init::Matrix,
        seed,
    )];
    for l in 0..cfg.n_layers {
        for name in layer_tensor_names(l, cfg.qkv_bias) {
            let leaf = name.rsplit_once("layers.").map_or("", |(_, rest)| rest);
            let leaf = leaf.split_once('.').map_or("", |(_, rest)| rest);
            let (shape, init): (Vec<usize>, Init) = match leaf {
                "input_layernorm.weight" | "post_attention_layernorm.weight" => {
                    (vec![h], Init::Norm)
                }
                "self_attn.q_proj.weight" => (vec![q, h], Init::Matrix),
                "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => {
                    (vec![kv, h], Init::Matrix)
                }
                "self_attn.o_proj.weight" => (vec![h, q], Init::Matrix),
                "mlp.gate_proj.weight" | "mlp.up_proj.weight" => (vec![i, h], Init::Matrix),
                "mlp.down_proj.weight" => (vec![h, i], Init::Matrix),
                "self_attn.q_proj.bias" => (vec![q], Init::Bias),
                "self_attn.k_proj.bias" | "self_attn.v_proj.bias" => (vec![kv], Init::Bias),
                // layer_tensor_names and this table are kept in step; a new name is a bug here.
                _ => continue,
            };
            out.push(Spec::new(name, &shape, init, seed));
        }
    }
    out.push(Spec::new(
        "model.norm.weight".into(),
        &[h],
        Init::Norm,
        seed,
    ));
    if !cfg.tied_embeddings {
        out.push(Spec::new(
            "lm_head.weight".into(),
            &[cfg.vocab_size, h],
            Init::Matrix,
            seed,
        ));
    }
    out
}

/// Bytes of one row of `cols` values stored as `q`.
pub(super) fn row_bytes(q: SynthQuant, cols: usize) -> Result<usize> {
    let (block, bytes) = match q {
        SynthQuant::F32 => (1, 4),
        SynthQuant::F16 | SynthQuant::Bf16 => (1, 2),
        SynthQuant::Q8_0 => (QK, Q8_0_BYTES),
        SynthQuant::Q4_0 => (QK, Q4_0_BYTES),
    };
    if !cols.is_multiple_of(block) {
        return Err(Error::InvalidArgument(format!(
            "{q} stores rows in blocks of {block} values; a row of {cols} does not fit"
        )));
    }
    Ok(cols / block * bytes)
}

/// Writes `spec` as `q` to `w`, row `r` of the output holding row `permute(r)` of the Hugging
/// Face tensor. `on_bytes` is told about each written chunk (progress). Returns bytes written.
pub(super) fn write_tensor(
    w: &mut dyn Write,
    spec: &Spec,
    q: SynthQuant,
    permute: Option<usize>,
    on_bytes: &dyn Fn(u64),
) -> Result<u64> {
    let rb = row_bytes(q, spec.cols).map_err(|e| Error::tensor(&spec.name, e.to_string()))?;
    if let Some(n_head) = permute
        && (n_head == 0 || !spec.rows.is_multiple_of(2 * n_head))
    {
        return Err(Error::tensor(
            &spec.name,
            format!(
                "{} rows do not split into {n_head} heads of even size",
                spec.rows
            ),
        ));
    }
    let chunk_rows = (CHUNK_BYTES / rb.max(1)).clamp(1, spec.rows.max(1));
    let mut buf = vec![0u8; chunk_rows * rb];
    let mut written = 0u64;
    let mut start = 0;
    while start < spec.rows {
        let n = chunk_rows.min(spec.rows - start);
        let out = &mut buf[..n * rb];
        out.par_chunks_mut(rb).enumerate().for_each_init(
            || vec![0f32; spec.cols],
            |scratch, (i, dst)| {
                let r = start + i;
                let src = permute.map_or(r, |n_head| llama_qk_source_row(r, spec.rows, n_head));
                spec.fill_row(src, scratch);
                encode(q, scratch, dst);
            },
        );
        w.write_all(out)
            .map_err(|e| Error::tensor(&spec.name, format!("write failed: {e}")))?;
        on_bytes(out.len() as u64);
        written += out.len() as u64;
        start += n;
    }
    Ok(written)
}

/// Encodes one row (a whole number of blocks for the quantized types).
pub(super) fn encode(q: SynthQuant, xs: &[f32], out: &mut [u8]) {
    match q {
        SynthQuant::F32 => {
            for (o, x) in out.chunks_exact_mut(4).zip(xs) {
                o.copy_from_slice(&x.to_le_bytes());
            }
        }
        SynthQuant::F16 => {
            for (o, x) in out.chunks_exact_mut(2).zip(xs) {
                o.copy_from_slice(&f16::from_f32(*x).to_le_bytes());
            }
        }
        SynthQuant::Bf16 => {
            for (o, x) in out.chunks_exact_mut(2).zip(xs) {
                o.copy_from_slice(&bf16::from_f32(*x).to_le_bytes());
            }
        }
        SynthQuant::Q8_0 => quantize_q8_0(xs, out),
        SynthQuant::Q4_0 => quantize_q4_0(xs, out),
    }
}

/// wyrand: one multiply per 64 bits, plenty for weights nobody will train.
struct WyRand(u64);

impl WyRand {
    #[inline]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xA076_1D64_78BD_642F);
        let t = (self.0 as u128).wrapping_mul((self.0 ^ 0xE703_7ED1_A0B4_28DB) as u128);
        ((t >> 64) as u64) ^ (t as u64)
    }
}

/// A 24-bit integer to a uniform value in [-1, 1).
#[inline]
fn unit24(x: u64) -> f32 {
    x as f32 * (2.0 / 16_777_216.0) - 1.0
}

/// Decorrelates nearby seeds (row `r` and `r + 1`, seed 0 and 1).
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Tensor names to seeds, stable across platforms and Rust versions (unlike `DefaultHasher`).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bakeoff_engine::WeightType;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    fn candle_bytes(xs: &[f32], rows: usize, cols: usize, dtype: WeightType) -> Vec<u8> {
        let t = Tensor::from_slice(xs, (rows, cols), &Device::Cpu).unwrap();
        QTensor::quantize(&t, dtype.to_candle().unwrap())
            .unwrap()
            .data()
            .unwrap()
            .into_owned()
    }

    #[test]
    fn quantizers_match_llama_cpp_reference_as_in_candle() {
        let spec = Spec::new("x".into(), &[8, 128], Init::Matrix, 7);
        let mut xs = spec.values();
        // Edge cases: an all-zero block and a block whose extreme is positive.
        xs[..32].fill(0.0);
        xs[40] = 0.5;
        for (q, dtype) in [
            (SynthQuant::Q8_0, WeightType::Q8_0),
            (SynthQuant::Q4_0, WeightType::Q4_0),
        ] {
            let rb = row_bytes(q, 128).unwrap();
            let mut ours = vec![0u8; 8 * rb];
            for (x, o) in xs.chunks_exact(128).zip(ours.chunks_exact_mut(rb)) {
                encode(q, x, o);
            }
            assert_eq!(ours, candle_bytes(&xs, 8, 128, dtype), "{q}");
        }
    }

    #[test]
    fn qk_permutation_matches_numpy_reshape() {
        // rows = n_head · 2 · half; numpy: out[h, i, j] = in[h, j, i].
        let (n_head, half) = (3, 4);
        let rows = n_head * 2 * half;
        let mut seen = vec![false; rows];
        for h in 0..n_head {
            for i in 0..half {
                for j in 0..2 {
                    let out_row = (h * half + i) * 2 + j;
                    let in_row = (h * 2 + j) * half + i;
                    assert_eq!(llama_qk_source_row(out_row, rows, n_head), in_row);
                    seen[in_row] = true;
                }
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn init_statistics() {
        let m = Spec::new("m".into(), &[64, 1024], Init::Matrix, 1).values();
        let mean = m.iter().sum::<f32>() / m.len() as f32;
        let std = (m.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / m.len() as f32).sqrt();
        assert!(
            mean.abs() < 1e-3 && (std - WEIGHT_STD).abs() < 1e-3,
            "mean {mean} std {std}"
        );
        let n = Spec::new("n".into(), &[1024], Init::Norm, 1).values();
        assert!(n.iter().all(|x| (x - 1.0).abs() <= NORM_NOISE));
        // Different names give different values.
        assert_ne!(
            m[..8],
            Spec::new("m2".into(), &[64, 1024], Init::Matrix, 1).values()[..8]
        );
    }
}
