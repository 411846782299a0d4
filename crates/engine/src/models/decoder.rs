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
    /// Rotary inverse frequencies of one head, scaling applied.
    inv_freq: Vec<f32>,
    /// KV caches by slot; `None` marks a free slot. Slot 0 always exists.
    caches: Vec<Option<B::Cache>>,
}

/// Converts a stored tensor before it reaches the backend (for `--dtype`).
pub type Transform<'a> =
    &'a dyn Fn(crate::loader::store::RawTensor) -> Result<crate::loader::store::RawTensor>;

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
            let m = |j: usize, shape: &[usize]| -> Result<B::Matrix> {
                backend.matrix(get(&names[j], shape)?)
            };
            let v = |j: usize, len: usize| -> Result<B::Vector> {
                backend.vector(get_vec(&names[j], len)?)
            };
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
                bq: if cfg.qkv_bias {
                    Some(v(9, q_dim)?)
                } else {
                    None
                },
                bk: if cfg.qkv_bias {
                    Some(v(10, kv_dim)?)
                } else {
                    None
                },
                bv: if cfg.qkv_bias {
                    Some(v(11, kv_dim)?)
                } else {
                    None
                },
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
        Ok(Self {
            inv_freq: cfg.rope_inv_freq(),
            cfg,
            backend,
            embed,
            layers,
            norm,
            lm_head,
            caches: vec![Some(cache)],
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }
}

impl<B: Backend> Decoder<B> {
    fn cache(&self, slot: usize) -> Result<&B::Cache> {
        self.caches
            .get(slot)
            .and_then(|c| c.as_ref())
            .ok_or_else(|| Error::InvalidArgument(format!("KV-cache slot {slot} is not allocated")))
    }

    /// The shared forward pass over one or more sequences; returns per item the logits of its
    /// last token, or of every token when its `all` flag is set.
    fn run(&mut self, items: &[(usize, &[u32])], all: &[bool]) -> Result<Vec<Vec<f32>>> {
        self.backend.settle();
        match self.backend.pool() {
            Some(pool) => pool.install(|| self.run_inner(items, all)),
            None => self.run_inner(items, all),
        }
    }

    fn run_inner(&mut self, items: &[(usize, &[u32])], all: &[bool]) -> Result<Vec<Vec<f32>>> {
        if all.len() != items.len() {
            return Err(Error::InvalidArgument(
                "one all-logits flag per batch item is needed".into(),
            ));
        }
        let mut starts = Vec::with_capacity(items.len());
        let mut ids: Vec<u32> = Vec::new();
        let mut ropes = Vec::with_capacity(items.len());
        for (i, &(slot, toks)) in items.iter().enumerate() {
            if toks.is_empty() {
                return Err(Error::InvalidArgument(
                    "forward needs at least one token".into(),
                ));
            }
            if items[..i].iter().any(|(s, _)| *s == slot) {
                return Err(Error::InvalidArgument(format!(
                    "slot {slot} appears twice in one batch"
                )));
            }
            let pos = self.backend.cache_len(self.cache(slot)?);
            if pos + toks.len() > self.cfg.max_context {
                return Err(Error::ContextOverflow {
                    prompt_tokens: pos + toks.len(),
                    context: self.cfg.max_context,
                });
            }
            starts.push(ids.len());
            ids.extend_from_slice(toks);
            ropes.push(RopeTable::with_inv_freq(&self.inv_freq, pos, toks.len()));
        }
        let b = &self.backend;
        let cfg = &self.cfg;
        let mut hs = b.embed(&self.embed, &ids)?;
        let lm_head = self.lm_head.as_ref().unwrap_or(&self.embed);
        // One token's products are each followed by a wait (norms, attention, the other
        // thread's last rows): the backend may read the next product's weights meanwhile.
        let one = ids.len() == 1;
        let ahead = |next: &[&B::Matrix]| {
            if one {
                b.read_ahead(next);
            }
        };
        // Each activation is dropped as soon as it is used (shadowed bindings would live to the
        // end of the layer): a 512-token prompt's peak memory is the sum of the live ones.
        for (li, l) in self.layers.iter().enumerate() {
            let x = b.rms_norm(&hs, &l.attn_norm, cfg.rms_eps)?;
            ahead(&[&l.wo]);
            let [q, k, v]: [B::Act; 3] = b
                .linear_many(
                    &x,
                    &[
                        (&l.wq, l.bq.as_ref()),
                        (&l.wk, l.bk.as_ref()),
                        (&l.wv, l.bv.as_ref()),
                    ],
                )?
                .try_into()
                .map_err(|_| Error::InvalidArgument("backend returned the wrong count".into()))?;
            drop(x);
            let a = if items.len() == 1 {
                let cache = self.caches[items[0].0]
                    .as_mut()
                    .ok_or_else(|| Error::InvalidArgument("slot freed".into()))?;
                b.attention(q, k, v, cache, li, &ropes[0], cfg)?
            } else {
                let mut outs = Vec::with_capacity(items.len());
                for (i, &(slot, toks)) in items.iter().enumerate() {
                    let (s, n) = (starts[i], toks.len());
                    let cache = self.caches[slot]
                        .as_mut()
                        .ok_or_else(|| Error::InvalidArgument("slot freed".into()))?;
                    outs.push(b.attention(
                        b.rows(&q, s, n)?,
                        b.rows(&k, s, n)?,
                        b.rows(&v, s, n)?,
                        cache,
                        li,
                        &ropes[i],
                        cfg,
                    )?);
                }
                b.concat_rows(outs)?
            };
            ahead(&[&l.gate, &l.up]);
            let o = b.linear(&a, &l.wo, None)?;
            drop(a);
            b.add_assign(&mut hs, &o)?;
            drop(o);
            let x = b.rms_norm(&hs, &l.mlp_norm, cfg.rms_eps)?;
            ahead(&[&l.down]);
            let m = b.swiglu(&x, &l.gate, &l.up)?;
            drop(x);
            match self.layers.get(li + 1) {
                Some(n) => ahead(&[&n.wq, &n.wk, &n.wv]),
                None => ahead(&[lm_head]),
            }
            let d = b.linear_consuming(m, &l.down)?;
            b.add_assign(&mut hs, &d)?;
        }
        // The rows whose logits are wanted: every row of an all-logits item, the last of others.
        let keep_all = all.iter().all(|&a| a);
        if !keep_all {
            let rows = items
                .iter()
                .enumerate()
                .map(|(i, (_, toks))| {
                    if all[i] {
                        b.rows(&hs, starts[i], toks.len())
                    } else {
                        b.rows(&hs, starts[i] + toks.len() - 1, 1)
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            hs = if rows.len() == 1 {
                rows.into_iter()
                    .next()
                    .ok_or_else(|| Error::InvalidArgument("empty batch".into()))?
            } else {
                b.concat_rows(rows)?
            };
        }
        let x = b.rms_norm(&hs, &self.norm, cfg.rms_eps)?;
        // The next token starts with the first layer's Q, K and V.
        if let Some(l) = self.layers.first() {
            ahead(&[&l.wq, &l.wk, &l.wv]);
        }
        let logits = b.to_host(b.linear(&x, lm_head, None)?)?;
        if items.len() == 1 {
            // The one item's rows are all of them: no copy.
            return Ok(vec![logits]);
        }
        let vocab = cfg.vocab_size;
        let mut out = Vec::with_capacity(items.len());
        let mut row = 0;
        for ((_, toks), &a) in items.iter().zip(all) {
            let n = if a { toks.len() } else { 1 };
            out.push(logits[row * vocab..(row + n) * vocab].to_vec());
            row += n;
        }
        Ok(out)
    }
}

impl<B: Backend> CausalLm for Decoder<B> {
    fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    fn position(&self) -> usize {
        self.slot_position(0)
    }

    fn truncate(&mut self, len: usize) {
        self.truncate_slot(0, len);
    }

    fn kv_cache_bytes(&self) -> usize {
        self.caches
            .iter()
            .flatten()
            .map(|c| self.backend.cache_bytes(c))
            .sum()
    }

    fn kv_bytes_per_token(&self) -> usize {
        let c = &self.cfg;
        2 * c.n_layers * c.n_kv_heads * c.head_dim * self.backend.kv_element_bytes(c)
    }

    fn describe(&self) -> String {
        self.backend.describe()
    }

    fn forward(&mut self, ids: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        let mut out = self.run(&[(0, ids)], &[all_logits])?;
        Ok(out.pop().unwrap_or_default())
    }

    fn alloc_slot(&mut self) -> Result<usize> {
        let cache = self.backend.new_cache(&self.cfg)?;
        if let Some(free) = self.caches.iter().skip(1).position(|c| c.is_none()) {
            self.caches[free + 1] = Some(cache);
            return Ok(free + 1);
        }
        self.caches.push(Some(cache));
        Ok(self.caches.len() - 1)
    }

    fn free_slot(&mut self, slot: usize) {
        if slot == 0 {
            // Slot 0 always exists; an empty cache in its place gives its memory back (a
            // truncated one keeps its capacity).
            match (self.backend.new_cache(&self.cfg), self.caches.get_mut(0)) {
                (Ok(c), Some(c0)) => *c0 = Some(c),
                _ => self.truncate_slot(0, 0),
            }
        } else if let Some(c) = self.caches.get_mut(slot) {
            *c = None;
        }
    }

    fn slot_position(&self, slot: usize) -> usize {
        self.cache(slot)
            .map(|c| self.backend.cache_len(c))
            .unwrap_or(0)
    }

    fn truncate_slot(&mut self, slot: usize, len: usize) {
        if let Some(Some(c)) = self.caches.get_mut(slot) {
            self.backend.cache_truncate(c, len);
        }
    }

    fn copy_slot(&mut self, src: usize, dst: usize, len: usize) -> Result<()> {
        if src == dst {
            return Err(Error::InvalidArgument(format!(
                "cannot copy KV-cache slot {src} onto itself"
            )));
        }
        let copy = self.backend.cache_prefix(self.cache(src)?, len)?;
        match self.caches.get_mut(dst) {
            Some(c @ Some(_)) => {
                *c = Some(copy);
                Ok(())
            }
            _ => Err(Error::InvalidArgument(format!(
                "KV-cache slot {dst} is not allocated"
            ))),
        }
    }

    fn forward_batch(&mut self, items: &[(usize, &[u32])]) -> Result<Vec<Vec<f32>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.run(items, &vec![false; items.len()])
    }

    fn forward_batch_with(
        &mut self,
        items: &[(usize, &[u32])],
        all: &[bool],
    ) -> Result<Vec<Vec<f32>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.run(items, all)
    }
}
