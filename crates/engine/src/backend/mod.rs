//! Compute backends. The decoder is written once against [`Backend`]; the CPU backend runs
//! bakeoff's own kernels on memory-mapped weights, the candle backend runs on CUDA, Metal or CPU
//! through candle tensors.

pub mod candle;
pub mod cpu;

use crate::Result;
use crate::kernels::ops::RopeTable;
use crate::loader::store::RawTensor;
use crate::models::DecoderConfig;

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda,
    Metal,
}

impl std::str::FromStr for DeviceKind {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" => Ok(DeviceKind::Cuda),
            "metal" => Ok(DeviceKind::Metal),
            o => Err(crate::Error::InvalidArgument(format!(
                "unknown device `{o}` (cpu, cuda, metal)"
            ))),
        }
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Metal => "metal",
        })
    }
}

/// The operations a Llama-style decoder needs. Activations are `[n, d]` row-major matrices.
pub trait Backend: Send + Sync + 'static {
    type Act: Send;
    /// A weight matrix `[out, in]`, dense or quantized.
    type Matrix: Send + Sync;
    /// A norm weight or bias, kept in f32.
    type Vector: Send + Sync;
    type Cache: Send;

    fn describe(&self) -> String;
    /// The thread pool a whole forward pass should run inside, if the backend has one: the
    /// pass's thread then takes part in every parallel operation, instead of handing each one
    /// to sleeping workers and sleeping itself (two wake-ups per matrix product).
    fn pool(&self) -> Option<std::sync::Arc<crate::kernels::threads::Threads>> {
        None
    }
    /// Waits for work the backend left running in the background at load (the CPU backend's
    /// packed-weights file), so that no forward pass shares the machine with it.
    fn settle(&self) {}
    fn matrix(&self, t: RawTensor) -> Result<Self::Matrix>;
    fn vector(&self, t: RawTensor) -> Result<Self::Vector>;
    fn new_cache(&self, cfg: &DecoderConfig) -> Result<Self::Cache>;
    fn cache_len(&self, cache: &Self::Cache) -> usize;
    fn cache_truncate(&self, cache: &mut Self::Cache, len: usize);
    /// A new cache holding the first `len` positions of `cache` (a sequence starting with the
    /// same tokens as one already computed).
    fn cache_prefix(&self, cache: &Self::Cache, len: usize) -> Result<Self::Cache>;
    fn cache_bytes(&self, cache: &Self::Cache) -> usize;
    /// Bytes of one cached key or value element.
    fn kv_element_bytes(&self, _cfg: &DecoderConfig) -> usize {
        4
    }

    fn embed(&self, table: &Self::Matrix, ids: &[u32]) -> Result<Self::Act>;
    fn rms_norm(&self, x: &Self::Act, w: &Self::Vector, eps: f32) -> Result<Self::Act>;
    fn linear(
        &self,
        x: &Self::Act,
        w: &Self::Matrix,
        bias: Option<&Self::Vector>,
    ) -> Result<Self::Act>;
    /// [`Backend::linear`] without bias of an input the caller is done with, which the backend
    /// may free as soon as it has read it.
    fn linear_consuming(&self, x: Self::Act, w: &Self::Matrix) -> Result<Self::Act> {
        self.linear(&x, w, None)
    }
    /// Several products of the same input (Q, K and V; gate and up), which a backend may run
    /// as one operation.
    fn linear_many(
        &self,
        x: &Self::Act,
        ws: &[(&Self::Matrix, Option<&Self::Vector>)],
    ) -> Result<Vec<Self::Act>> {
        ws.iter().map(|(w, b)| self.linear(x, w, *b)).collect()
    }
    /// Says that the product after the coming one multiplies one token by `next` (as one
    /// [`Backend::linear_many`]): a backend whose threads wait between products may start
    /// reading those weights then. Only a hint; the default ignores it.
    fn read_ahead(&self, next: &[&Self::Matrix]) {
        let _ = next;
    }
    /// Applies RoPE to `q` and `k`, appends `k`/`v` to the layer's cache and attends causally.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: Self::Act,
        k: Self::Act,
        v: Self::Act,
        cache: &mut Self::Cache,
        layer: usize,
        rope: &RopeTable,
        cfg: &DecoderConfig,
    ) -> Result<Self::Act>;
    fn silu_mul(&self, gate: Self::Act, up: &Self::Act) -> Result<Self::Act>;
    /// `silu(x·Gᵀ) ⊙ (x·Uᵀ)`, the SwiGLU half of an MLP, which a backend may fuse so the two
    /// products never exist whole.
    fn swiglu(&self, x: &Self::Act, gate: &Self::Matrix, up: &Self::Matrix) -> Result<Self::Act> {
        swiglu_unfused(self, x, gate, up)
    }
    fn add_assign(&self, x: &mut Self::Act, y: &Self::Act) -> Result<()>;
    fn last_row(&self, x: Self::Act) -> Result<Self::Act>;
    /// Rows `start..start+len` of `x`.
    fn rows(&self, x: &Self::Act, start: usize, len: usize) -> Result<Self::Act>;
    /// Stacks activations row-wise.
    fn concat_rows(&self, parts: Vec<Self::Act>) -> Result<Self::Act>;
    /// The activations as host floats, consumed: the logits of a scored prompt are `rows × vocab`
    /// (311 MB for 512 tokens of a 151,936-token vocabulary), so a backend that holds them in host
    /// memory hands its buffer over instead of copying it.
    fn to_host(&self, x: Self::Act) -> Result<Vec<f32>>;
}

/// [`Backend::swiglu`] as two products and [`Backend::silu_mul`]: the default, and a fusing
/// backend's fallback.
pub(crate) fn swiglu_unfused<B: Backend + ?Sized>(
    b: &B,
    x: &B::Act,
    gate: &B::Matrix,
    up: &B::Matrix,
) -> Result<B::Act> {
    let [g, u]: [B::Act; 2] = b
        .linear_many(x, &[(gate, None), (up, None)])?
        .try_into()
        .map_err(|_| crate::Error::InvalidArgument("backend returned the wrong count".into()))?;
    b.silu_mul(g, &u)
}
