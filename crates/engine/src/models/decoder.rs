//! The Llama-style decoder shared by every architecture: pre-norm blocks of grouped-query
//! attention with RoPE and a SwiGLU MLP. Architecture files only describe shapes and flags
//! (biases, tied head, RoPE layout) through [`DecoderConfig`].

use super::{DecoderConfig, layer_tensor_names};
use crate::backend::Backend;
use crate::kernels::ops::RopeTable;
use crate::loader::store::TensorStore;
use crate::model::CausalLm;
use crate::{Error, Result};

struct Layer<B: Backend> {
    attn_norm: B::Vector,
    wq: B::Matrix,
    wk: B::Matrix,
    wv: B::Matrix,
    wo: B::Matrix,
    bq: Option<B::Vector>,
    bk: Option<B::Vector>,
    bv: Option<B::Vector>,
    mlp_norm: B::Vector,
    gate: B::Matrix,
    up: B::Matrix,
    down: B::Matrix,
}

pub struct Decoder<B: Backend> {
    cfg: DecoderConfig,
    backend: B,
    embed: B::Matrix,
    layers: Vec<Layer<B>>,
    norm: B::Vector,
    lm_head: Option<B::Matrix>,
    cache: B::Cache,
}

/// Converts a stored tensor before it reaches the backend (for `--dtype`).
pub type Transform<'a> = &'a dyn Fn(crate::loader::store::RawTensor) -> Result<crate::loader::store::RawTensor>;

impl<B: Backend> Decoder<B> {
    /// Loads every tensor the config implies, checking each shape against it.
    pub fn load(
        cfg: DecoderConfig,
        store: &dyn TensorStore,
        backend: B,
        transform: Transform<'_>,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let q_dim = cfg.n_heads * cfg.head_dim;
        let kv_dim = cfg.n_kv_heads * cfg.head_dim;
        let total = cfg.n_layers + 2;
        let get = |name: &str, shape: &[usize]| -> Result<crate::loader::store::RawTensor> {
            let t = store.tensor(name)?;
            t.expect_shape(shape)?;
            transform(t)
        };
        let get_vec = |name: &str, len: usize| -> Result<crate::loader::store::RawTensor> {
            let t = store.tensor(name)?;
            t.expect_shape(&[len])?;
            Ok(t)
        };
        let embed = backend.matrix(get("model.embed_tokens.weight", &[cfg.vocab_size, h])?)?;
        progress(1, total);
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let names = layer_tensor_names(i, cfg.qkv_bias);
            let m = |j: usize, shape: &[usize]| -> Result<B::Matrix> { backend.matrix(get(&names[j], shape)?) };
            let v = |j: usize, len: usize| -> Result<B::Vector> { backend.vector(get_vec(&names[j], len)?) };
            layers.push(Layer {
                attn_norm: v(0, h)?,
                wq: m(1, &[q_dim, h])?,
                wk: m(2, &[kv_dim, h])?,
                wv: m(3, &[kv_dim, h])?,
                wo: m(4, &[h, q_dim])?,
                mlp_norm: v(5, h)?,
                gate: m(6, &[cfg.intermediate_size, h])?,
                up: m(7, &[cfg.intermediate_size, h])?,
                down: m(8, &[h, cfg.intermediate_size])?,
                bq: if cfg.qkv_bias { Some(v(9, q_dim)?) } else { None },
                bk: if cfg.qkv_bias { Some(v(10, kv_dim)?) } else { None },
                bv: if cfg.qkv_bias { Some(v(11, kv_dim)?) } else { None },
            });
            progress(i + 2, total);
        }
        let norm = backend.vector(get_vec("model.norm.weight", h)?)?;
        let lm_head = if cfg.tied_embeddings {
            None
        } else {
            Some(backend.matrix(get("lm_head.weight", &[cfg.vocab_size, h])?)?)
        };
        progress(total, total);
        let cache = backend.new_cache(&cfg)?;
        Ok(Self { cfg, backend, embed, layers, norm, lm_head, cache })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }
}

impl<B: Backend> CausalLm for Decoder<B> {
    fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    fn position(&self) -> usize {
        self.backend.cache_len(&self.cache)
    }

    fn truncate(&mut self, len: usize) {
        self.backend.cache_truncate(&mut self.cache, len);
    }

    fn kv_cache_bytes(&self) -> usize {
        self.backend.cache_bytes(&self.cache)
    }

    fn describe(&self) -> String {
        self.backend.describe()
    }

    fn forward(&mut self, ids: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(Error::InvalidArgument("forward needs at least one token".into()));
        }
        let pos = self.position();
        if pos + ids.len() > self.cfg.max_context {
            return Err(Error::ContextOverflow {
                prompt_tokens: pos + ids.len(),
                context: self.cfg.max_context,
            });
        }
        let b = &self.backend;
        let cfg = &self.cfg;
        let rope = RopeTable::new(cfg.rope_theta, cfg.head_dim, pos, ids.len());
        let mut hs = b.embed(&self.embed, ids)?;
        for (i, l) in self.layers.iter().enumerate() {
            let x = b.rms_norm(&hs, &l.attn_norm, cfg.rms_eps)?;
            let q = b.linear(&x, &l.wq, l.bq.as_ref())?;
            let k = b.linear(&x, &l.wk, l.bk.as_ref())?;
            let v = b.linear(&x, &l.wv, l.bv.as_ref())?;
            let a = b.attention(q, k, v, &mut self.cache, i, &rope, cfg)?;
            let o = b.linear(&a, &l.wo, None)?;
            b.add_assign(&mut hs, &o)?;
            let x = b.rms_norm(&hs, &l.mlp_norm, cfg.rms_eps)?;
            let g = b.linear(&x, &l.gate, None)?;
            let u = b.linear(&x, &l.up, None)?;
            let m = b.silu_mul(g, &u)?;
            let d = b.linear(&m, &l.down, None)?;
            b.add_assign(&mut hs, &d)?;
        }
        if !all_logits {
            hs = b.last_row(hs)?;
        }
        let x = b.rms_norm(&hs, &self.norm, cfg.rms_eps)?;
        let logits = b.linear(&x, self.lm_head.as_ref().unwrap_or(&self.embed), None)?;
        b.to_host(&logits)
    }
}
