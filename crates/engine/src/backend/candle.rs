//! The candle backend: the same decoder on candle tensors, for CUDA and Metal (and candle's CPU
//! device, where it serves as an independent cross-check of bakeoff's own CPU kernels).

use candle_core::quantized::{QMatMul, ggml_file::qtensor_from_ggml};
use candle_core::{DType, Device, Module, Tensor};

use super::{Backend, DeviceKind};
use crate::kernels::dequant::dequantize_into;
use crate::kernels::ops::RopeTable;
use crate::loader::store::RawTensor;
use crate::models::{DecoderConfig, RopeStyle};
use crate::{Error, Result};

pub struct CandleBackend {
    device: Device,
}

impl CandleBackend {
    pub fn new(kind: DeviceKind) -> Result<Self> {
        let device = match kind {
            DeviceKind::Cpu => Device::Cpu,
            DeviceKind::Cuda => Device::new_cuda(0).map_err(|e| {
                Error::Device(format!("CUDA is not available ({e}); build with `--features cuda` on a machine with an NVIDIA GPU"))
            })?,
            DeviceKind::Metal => Device::new_metal(0).map_err(|e| {
                Error::Device(format!("Metal is not available ({e}); build with `--features metal` on Apple Silicon"))
            })?,
        };
        Ok(Self { device })
    }
}

pub struct CandleMatrix {
    name: String,
    mm: QMatMul,
    /// Kept to look up embedding rows on the host without a dense copy of the table.
    raw: RawTensor,
}

pub struct CandleCache {
    k: Vec<Option<Tensor>>,
    v: Vec<Option<Tensor>>,
    len: usize,
}

fn err(name: &str) -> impl Fn(candle_core::Error) -> Error + '_ {
    move |e| Error::tensor(name, e.to_string())
}

impl Backend for CandleBackend {
    type Act = Tensor;
    type Matrix = CandleMatrix;
    type Vector = Tensor;
    type Cache = CandleCache;

    fn describe(&self) -> String {
        match &self.device {
            Device::Cpu => "candle-cpu".into(),
            Device::Cuda(_) => "cuda:0 (candle)".into(),
            Device::Metal(_) => "metal:0 (candle)".into(),
        }
    }

    fn matrix(&self, t: RawTensor) -> Result<CandleMatrix> {
        let q = match t.dtype.to_candle() {
            Some(d) => qtensor_from_ggml(d, t.data.bytes(), t.shape.clone(), &self.device),
            // Types candle has no kernels for (IQ4_NL, IQ4_XS) run as f32 on this backend.
            None => {
                let bytes: Vec<u8> = t.to_f32()?.iter().flat_map(|v| v.to_le_bytes()).collect();
                qtensor_from_ggml(
                    candle_core::quantized::GgmlDType::F32,
                    &bytes,
                    t.shape.clone(),
                    &self.device,
                )
            }
        }
        .map_err(err(&t.name))?;
        let mm = QMatMul::from_qtensor(q).map_err(err(&t.name))?;
        Ok(CandleMatrix {
            name: t.name.clone(),
            mm,
            raw: t,
        })
    }

    fn vector(&self, t: RawTensor) -> Result<Tensor> {
        let v = t.to_f32()?;
        Tensor::from_vec(v, t.shape.clone(), &self.device).map_err(err(&t.name))
    }

    fn new_cache(&self, cfg: &DecoderConfig) -> Result<CandleCache> {
        Ok(CandleCache {
            k: vec![None; cfg.n_layers],
            v: vec![None; cfg.n_layers],
            len: 0,
        })
    }

    fn cache_len(&self, c: &CandleCache) -> usize {
        c.len
    }

    fn cache_truncate(&self, c: &mut CandleCache, len: usize) {
        if len >= c.len {
            return;
        }
        for slot in c.k.iter_mut().chain(c.v.iter_mut()) {
            *slot = if len == 0 {
                None
            } else {
                slot.as_ref().and_then(|t| t.narrow(1, 0, len).ok())
            };
        }
        c.len = len;
    }

    fn cache_prefix(&self, c: &CandleCache, len: usize) -> Result<CandleCache> {
        let mut out = CandleCache {
            k: c.k.clone(),
            v: c.v.clone(),
            len: c.len,
        };
        self.cache_truncate(&mut out, len);
        Ok(out)
    }

    fn cache_bytes(&self, c: &CandleCache) -> usize {
        c.k.iter()
            .chain(c.v.iter())
            .flatten()
            .map(|t| t.elem_count() * 4)
            .sum()
    }

    fn embed(&self, table: &CandleMatrix, ids: &[u32]) -> Result<Tensor> {
        let (rows, cols) = (table.raw.shape[0], table.raw.shape[1]);
        let row_bytes = table.raw.data.bytes().len() / rows;
        let mut data = vec![0f32; ids.len() * cols];
        for (out, &id) in data.chunks_exact_mut(cols).zip(ids) {
            let id = id as usize;
            if id >= rows {
                return Err(Error::InvalidArgument(format!(
                    "token id {id} is outside the vocabulary of {rows} tokens"
                )));
            }
            let b = &table.raw.data.bytes()[id * row_bytes..(id + 1) * row_bytes];
            dequantize_into(table.raw.dtype, b, out).map_err(|e| Error::tensor(&table.name, e))?;
        }
        Ok(Tensor::from_vec(data, (ids.len(), cols), &self.device)?)
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(&x.contiguous()?, w, eps)?)
    }

    fn linear(&self, x: &Tensor, w: &CandleMatrix, bias: Option<&Tensor>) -> Result<Tensor> {
        let y = w.mm.forward(x).map_err(err(&w.name))?;
        Ok(match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    fn attention(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        cache: &mut CandleCache,
        layer: usize,
        rope: &RopeTable,
        cfg: &DecoderConfig,
    ) -> Result<Tensor> {
        let n = q.dim(0)?;
        let hd = cfg.head_dim;
        // The length moves on after the last layer, so every layer sees the same start.
        let pos = cache.len;
        let cos = Tensor::from_slice(&rope.cos, (n, rope.half), &self.device)?;
        let sin = Tensor::from_slice(&rope.sin, (n, rope.half), &self.device)?;
        // [n, h·d] → [1, h, n, d]
        let shape = |x: Tensor, h: usize| -> Result<Tensor> {
            Ok(x.reshape((n, h, hd))?
                .transpose(0, 1)?
                .unsqueeze(0)?
                .contiguous()?)
        };
        let rot = |x: &Tensor| -> Result<Tensor> {
            Ok(match cfg.rope_style {
                RopeStyle::Neox => candle_nn::rotary_emb::rope(x, &cos, &sin)?,
                RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(x, &cos, &sin)?,
            })
        };
        let q = rot(&shape(q, cfg.n_heads)?)?.squeeze(0)?;
        let k = rot(&shape(k, cfg.n_kv_heads)?)?.squeeze(0)?;
        let v = shape(v, cfg.n_kv_heads)?.squeeze(0)?;
        let k = match &cache.k[layer] {
            Some(prev) => Tensor::cat(&[prev, &k], 1)?,
            None => k,
        };
        let v = match &cache.v[layer] {
            Some(prev) => Tensor::cat(&[prev, &v], 1)?,
            None => v,
        };
        cache.k[layer] = Some(k.clone());
        cache.v[layer] = Some(v.clone());
        if layer + 1 == cfg.n_layers {
            cache.len = pos + n;
        }
        let total = pos + n;
        let group = cfg.n_heads / cfg.n_kv_heads;
        let expand = |t: Tensor| -> Result<Tensor> {
            if group == 1 {
                return Ok(t);
            }
            Ok(t.unsqueeze(1)?
                .expand((cfg.n_kv_heads, group, total, hd))?
                .reshape((cfg.n_heads, total, hd))?)
        };
        let (k, v) = (expand(k)?, expand(v)?);
        let scale = 1.0 / (hd as f64).sqrt();
        let mut scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?;
        if n > 1 {
            let mask: Vec<f32> = (0..n)
                .flat_map(|i| {
                    (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (n, total), &self.device)?;
            scores = scores.broadcast_add(&mask)?;
        }
        let p = candle_nn::ops::softmax_last_dim(&scores)?;
        let o = p.matmul(&v.contiguous()?)?; // [h, n, d]
        Ok(o.transpose(0, 1)?.reshape((n, cfg.n_heads * hd))?)
    }

    fn silu_mul(&self, gate: Tensor, up: &Tensor) -> Result<Tensor> {
        Ok((candle_nn::ops::silu(&gate)? * up)?)
    }

    fn add_assign(&self, x: &mut Tensor, y: &Tensor) -> Result<()> {
        *x = (&*x + y)?;
        Ok(())
    }

    fn last_row(&self, x: Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        Ok(x.narrow(0, n - 1, 1)?)
    }

    fn rows(&self, x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        Ok(x.narrow(0, start, len)?)
    }

    fn concat_rows(&self, parts: Vec<Tensor>) -> Result<Tensor> {
        Ok(Tensor::cat(&parts, 0)?)
    }

    fn to_host(&self, x: Tensor) -> Result<Vec<f32>> {
        Ok(x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    }
}
