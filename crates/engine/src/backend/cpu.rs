//! The CPU backend: bakeoff's kernels over memory-mapped weights, on a private thread pool.

use crate::WeightType;

use super::Backend;
use crate::kernels::kvbuf::{KvBuf, KvElem, KvType};
use crate::kernels::matmul::{
    QMatrix, decode_fronts, matmul, matmul_many, matmul_owned, matmul_swiglu, swiglu_fuses,
};
use crate::kernels::ops::{self, RopeTable};
use crate::kernels::threads::Threads;
use crate::kernels::{CpuCaps, attention, packed};
use crate::loader::packcache::PackCache;
use crate::loader::store::{Blob, RawTensor};
use crate::models::DecoderConfig;
use crate::{Error, Result};

pub struct CpuBackend {
    pool: std::sync::Arc<Threads>,
    caps: CpuCaps,
    pack_cache: Option<std::sync::Arc<PackCache>>,
    kv_type: KvType,
    /// The thread writing the packed-weights file ([`CpuBackend::persist_in_background`]).
    cache_writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Rows per task when the per-token operations (norms, rotations, SwiGLU, residual adds, zeroed
/// outputs) of a prompt are spread over the pool: on one thread they were about a tenth of a
/// 512-token prefill while the other threads waited.
const PAR_ROWS: usize = 16;

/// Bytes of a mapped source copied before its pages are dropped (`fill_releasing`).
const RELEASE_WINDOW: usize = 16 << 20;

impl CpuBackend {
    /// A zeroed buffer, written by the whole pool when it is large.
    fn zeros(&self, len: usize) -> Vec<f32> {
        use rayon::iter::ParallelExtend;
        if len < 1 << 16 {
            return vec![0f32; len];
        }
        let mut v = Vec::with_capacity(len);
        self.pool
            .install(|| v.par_extend(rayon::iter::repeat_n(0f32, len)));
        v
    }

    /// `f` over matching chunks of `PAR_ROWS` rows of `a` (`a_cols` wide) and `b` (`b_cols`
    /// wide; all of `b` to every chunk when `b_cols` is 0), with the index of each chunk's first
    /// row; on the pool when there are several.
    fn par_rows2<F>(&self, a: &mut [f32], a_cols: usize, b: &[f32], b_cols: usize, f: F)
    where
        F: Fn(usize, &mut [f32], &[f32]) + Sync,
    {
        use rayon::prelude::*;
        let rows = a.len() / a_cols.max(1);
        if rows <= PAR_ROWS || a_cols == 0 {
            return f(0, a, b);
        }
        if b_cols == 0 {
            return self.pool.install(|| {
                a.par_chunks_mut(PAR_ROWS * a_cols)
                    .enumerate()
                    .for_each(|(i, a)| f(i * PAR_ROWS, a, b))
            });
        }
        self.pool.install(|| {
            a.par_chunks_mut(PAR_ROWS * a_cols)
                .zip(b.par_chunks(PAR_ROWS * b_cols))
                .enumerate()
                .for_each(|(i, (a, b))| f(i * PAR_ROWS, a, b))
        });
    }

    /// Adds `b` to every row of `x` (rows of `b.len()` values).
    fn add_bias(&self, x: &mut [f32], b: &[f32]) {
        self.par_rows2(x, b.len(), b, 0, |_, o, _| {
            for row in o.chunks_exact_mut(b.len()) {
                row.iter_mut().zip(b).for_each(|(o, b)| *o += b);
            }
        });
    }

    /// Fills `out` from `src` window by window (`src_window` bytes of `src` for each
    /// `out_window` of `out`, `fill` on each pair inside the pool), dropping each source
    /// window's pages once it is read (a whole matrix at once kept both copies of the largest,
    /// Qwen2.5's 131 MB embedding, resident), and at the end the blocks around the source.
    fn fill_releasing(
        &self,
        src: &Blob,
        src_window: usize,
        out: &mut [u8],
        out_window: usize,
        fill: impl Fn(&mut [u8], &[u8]) + Sync,
    ) {
        for (w, (ow, sw)) in out
            .chunks_mut(out_window)
            .zip(src.bytes().chunks(src_window))
            .enumerate()
        {
            self.pool.install(|| fill(ow, sw));
            src.release_range(w * src_window, sw.len());
        }
        src.release_around();
    }

    pub fn new(threads: usize, caps: CpuCaps) -> Result<Self> {
        let pool = Threads::new(threads)
            .map_err(|e| Error::Device(format!("cannot start {threads} CPU threads: {e}")))?;
        Ok(Self {
            pool: std::sync::Arc::new(pool),
            caps,
            pack_cache: None,
            kv_type: KvType::default(),
            cache_writer: std::sync::Mutex::new(None),
        })
    }

    /// Writes the matrices packed at load to the packed-weights file on a thread of its own
    /// (nothing when there is no file or it was read): a first load returns without the
    /// write, which can take longer than the load itself when the kernel holds back a writer
    /// of that many dirty pages, so a chat or a server is ready while it goes on. The first
    /// forward pass waits for it ([`Backend::settle`]), so no product or measurement shares
    /// the machine with it, and so does dropping the backend, so a short run still leaves the
    /// file whole. With `report`, a file that could not be written is reported on stderr (a
    /// full disk or a read-only folder costs later loads their time, not this one).
    pub fn persist_in_background(&self, report: bool) {
        let Some(cache) = self.pack_cache.clone() else {
            return;
        };
        let write = move || {
            if let Err(e) = cache.persist()
                && report
            {
                eprintln!(
                    "bakeoff: packed weights not cached in {}: {e}",
                    cache.path().parent().unwrap_or(cache.path()).display()
                );
            }
        };
        let mut slot = self.cache_writer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = slot.take() {
            let _ = h.join();
        }
        match std::thread::Builder::new()
            .name("bakeoff-pack-write".into())
            .spawn(write.clone())
        {
            Ok(h) => *slot = Some(h),
            // No thread to be had: written here, as before.
            Err(_) => write(),
        }
    }

    fn join_cache_writer(&self) {
        let handle = self
            .cache_writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            // The writer reports its own errors; a panic in it loses the file, not the model.
            let _ = h.join();
        }
    }

    /// The KV cache's element type ([`KvType::Auto`] unless set).
    pub fn with_kv_type(mut self, kv_type: KvType) -> Self {
        self.kv_type = kv_type;
        self
    }

    /// Reads packed matrices from, and offers newly packed ones to, a packed-weights file.
    pub fn with_pack_cache(mut self, cache: Option<std::sync::Arc<PackCache>>) -> Self {
        self.pack_cache = cache;
        self
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    pub fn caps(&self) -> CpuCaps {
        self.caps
    }

    /// Copies a matrix of a packable type into its packed layout, rows split across the pool, letting
    /// the mapped original go window by window.
    fn pack(&self, m: &CpuMatrix) -> std::io::Result<Blob> {
        use rayon::prelude::*;
        let rb = m.view().row_bytes();
        let pb = packed::row_bytes(m.dtype, m.cols);
        let window = (RELEASE_WINDOW / rb.max(1)).max(64);
        Blob::anon(pb * m.rows, |out| {
            self.fill_releasing(&m.data, rb * window, out, pb * window, |ow, sw| {
                ow.par_chunks_mut(pb * 64)
                    .zip(sw.par_chunks(rb * 64))
                    .for_each(|(o, s)| {
                        for (o, s) in o.chunks_exact_mut(pb).zip(s.chunks_exact(rb)) {
                            packed::pack_row(m.dtype, s, o);
                        }
                    })
            })
        })
    }

    /// CRC-32 of a cached matrix, checked before it is trusted: the pages are faulted in with one
    /// populate call (they are needed next anyway) and the 1 MiB pieces hashed across the pool,
    /// then combined in order.
    fn crc32(&self, b: &Blob) -> u32 {
        use rayon::prelude::*;
        b.populate();
        let parts: Vec<crc32fast::Hasher> = self.pool.install(|| {
            b.bytes()
                .par_chunks(1 << 20)
                .map(|c| {
                    let mut h = crc32fast::Hasher::new();
                    h.update(c);
                    h
                })
                .collect()
        });
        let mut all = crc32fast::Hasher::new();
        for p in &parts {
            all.combine(p);
        }
        all.finalize()
    }
}

/// `[rows, cols]` activations.
#[derive(Clone, Debug)]
pub struct Mat {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

pub struct CpuMatrix {
    pub name: String,
    pub dtype: WeightType,
    pub rows: usize,
    pub cols: usize,
    pub data: Blob,
    /// Repacked at load for the AVX-512 VNNI kernel (see `kernels::packed`).
    pub packed: bool,
}

impl CpuMatrix {
    fn view(&self) -> QMatrix<'_> {
        QMatrix {
            dtype: self.dtype,
            rows: self.rows,
            cols: self.cols,
            data: self.data.bytes(),
            packed: self.packed,
        }
    }
}

/// Keys and values per layer, each buffer reserving the whole context but taking memory only as
/// it fills (`kernels::kvbuf`): values position-major (`[pos][kv_heads·head_dim]`), keys
/// transposed in blocks of 16 positions for the attention kernel (`kernels::attention`), in
/// f16 or f32 (`KvType`).
pub struct KvCache {
    layers: KvLayers,
    kv_dim: usize,
    positions: usize,
}

enum KvLayers {
    F16(Layers<half::f16>),
    F32(Layers<f32>),
}

struct Layers<T: KvElem> {
    k: Vec<KvBuf<T>>,
    v: Vec<KvBuf<T>>,
}

impl<T: KvElem> Layers<T> {
    fn new(layers: usize, kv_dim: usize, positions: usize) -> Layers<T> {
        let (kl, vl) = (
            attention::key_cache_len(positions, kv_dim),
            positions * kv_dim,
        );
        Layers {
            k: (0..layers).map(|_| KvBuf::new(kl)).collect(),
            v: (0..layers).map(|_| KvBuf::new(vl)).collect(),
        }
    }

    fn truncate(&mut self, len: usize, kv_dim: usize) {
        for (k, v) in self.k.iter_mut().zip(self.v.iter_mut()) {
            k.truncate(attention::key_cache_len(len, kv_dim));
            v.truncate(len * kv_dim);
        }
    }

    fn prefix(&self, len: usize, kv_dim: usize, positions: usize) -> Layers<T> {
        let kl = attention::key_cache_len(len, kv_dim);
        let vl = len * kv_dim;
        let mut out = Layers::new(self.k.len(), kv_dim, positions);
        for (dst, src) in out.k.iter_mut().zip(&self.k) {
            dst.extend_from_slice(&src[..kl.min(src.len())]);
        }
        for (dst, src) in out.v.iter_mut().zip(&self.v) {
            dst.extend_from_slice(&src[..vl.min(src.len())]);
        }
        out
    }

    fn bytes(&self) -> usize {
        self.k.iter().chain(self.v.iter()).map(KvBuf::bytes).sum()
    }

    /// Appends a layer's new keys and values, then attends over everything cached.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &mut self,
        pool: &Threads,
        caps: CpuCaps,
        layer: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n: usize,
        cfg: &DecoderConfig,
        out: &mut [f32],
    ) {
        let kv_dim = cfg.n_kv_heads * cfg.head_dim;
        let pos = self.v[layer].len() / kv_dim;
        attention::append_keys(&mut self.k[layer], pos, k, kv_dim);
        self.v[layer].extend_from_f32(v);
        attention::attention(
            pool,
            caps,
            q,
            &self.k[layer],
            &self.v[layer],
            n,
            pos,
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.head_dim,
            out,
        );
    }
}

impl KvCache {
    fn new(layers: usize, kv_dim: usize, positions: usize, kind: KvType) -> KvCache {
        KvCache {
            layers: match kind {
                KvType::F16 => KvLayers::F16(Layers::new(layers, kv_dim, positions)),
                KvType::F32 | KvType::Auto => KvLayers::F32(Layers::new(layers, kv_dim, positions)),
            },
            kv_dim,
            positions,
        }
    }

    fn len(&self) -> usize {
        let v = match &self.layers {
            KvLayers::F16(l) => l.v.first().map(KvBuf::len),
            KvLayers::F32(l) => l.v.first().map(KvBuf::len),
        };
        v.map_or(0, |v| v / self.kv_dim.max(1))
    }
}

impl Drop for CpuBackend {
    fn drop(&mut self) {
        self.join_cache_writer();
    }
}

impl Backend for CpuBackend {
    fn settle(&self) {
        self.join_cache_writer();
    }

    type Act = Mat;
    type Matrix = CpuMatrix;
    type Vector = Vec<f32>;
    type Cache = KvCache;

    fn describe(&self) -> String {
        // Head sizes are multiples of 16 in every supported model, so `Auto` resolves as here.
        format!(
            "cpu ({} threads, {}, kv {})",
            self.threads(),
            self.caps.describe(),
            self.kv_type.resolve(self.caps, 64)
        )
    }

    fn pool(&self) -> Option<std::sync::Arc<Threads>> {
        Some(self.pool.clone())
    }

    fn matrix(&self, t: RawTensor) -> Result<CpuMatrix> {
        if t.shape.len() != 2 {
            return Err(Error::tensor(
                &t.name,
                format!("expected a matrix, got shape {:?}", t.shape),
            ));
        }
        let mut m = CpuMatrix {
            name: t.name,
            dtype: t.dtype,
            rows: t.shape[0],
            cols: t.shape[1],
            data: t.data,
            packed: false,
        };
        m.view().check().map_err(|e| Error::tensor(&m.name, e))?;
        let pack = self.caps.avx512vnni || self.caps.avx2;
        if pack && packed::packable(m.dtype, m.cols) {
            let len = packed::row_bytes(m.dtype, m.cols) * m.rows;
            let cached = self
                .pack_cache
                .as_ref()
                .and_then(|c| c.get(&m.name, m.dtype, m.rows, m.cols, len, |b| self.crc32(b)));
            if let Some(blob) = cached {
                // Decoded straight from the mapping: the entry was written in whole 2 MiB
                // chunks, so the page cache holds it in huge folios mapped 2 MiB at a time, and
                // decode is as fast as from a copy in anonymous huge pages, which would only
                // slow the load (docs/benchmarks.md, "Huge folios").
                blob.populate();
                m.data = blob;
            } else {
                m.data.populate();
                m.data = self
                    .pack(&m)
                    .map_err(|e| Error::tensor(&m.name, e.to_string()))?;
                if let Some(c) = &self.pack_cache {
                    c.offer(&m.name, m.dtype, m.rows, m.cols, &m.data);
                }
            }
            m.packed = true;
        } else {
            m.data.populate();
        }
        Ok(m)
    }

    fn vector(&self, t: RawTensor) -> Result<Vec<f32>> {
        let v = t.to_f32()?;
        // A norm's few kilobytes sit between matrices that the packed-weights file serves, and
        // reading them maps the page cache's whole large folio around them: thirty layers' norms
        // kept most of a GGUF file's pages resident beside their packed copies through the load.
        t.data.release_around();
        Ok(v)
    }

    fn new_cache(&self, cfg: &DecoderConfig) -> Result<KvCache> {
        Ok(KvCache::new(
            cfg.n_layers,
            cfg.n_kv_heads * cfg.head_dim,
            cfg.max_context,
            self.kv_type.resolve(self.caps, cfg.head_dim),
        ))
    }

    fn cache_len(&self, c: &KvCache) -> usize {
        c.len()
    }

    fn cache_truncate(&self, c: &mut KvCache, len: usize) {
        match &mut c.layers {
            KvLayers::F16(l) => l.truncate(len, c.kv_dim),
            KvLayers::F32(l) => l.truncate(len, c.kv_dim),
        }
    }

    fn cache_prefix(&self, c: &KvCache, len: usize) -> Result<KvCache> {
        let len = len.min(c.len());
        let (kv_dim, positions) = (c.kv_dim, c.positions);
        Ok(KvCache {
            layers: match &c.layers {
                KvLayers::F16(l) => KvLayers::F16(l.prefix(len, kv_dim, positions)),
                KvLayers::F32(l) => KvLayers::F32(l.prefix(len, kv_dim, positions)),
            },
            kv_dim,
            positions,
        })
    }

    fn kv_element_bytes(&self, cfg: &DecoderConfig) -> usize {
        match self.kv_type.resolve(self.caps, cfg.head_dim) {
            KvType::F16 => 2,
            KvType::F32 | KvType::Auto => 4,
        }
    }

    fn cache_bytes(&self, c: &KvCache) -> usize {
        match &c.layers {
            KvLayers::F16(l) => l.bytes(),
            KvLayers::F32(l) => l.bytes(),
        }
    }

    fn embed(&self, table: &CpuMatrix, ids: &[u32]) -> Result<Mat> {
        let cols = table.cols;
        let mut data = vec![0f32; ids.len() * cols];
        let view = table.view();
        for (row, &id) in data.chunks_exact_mut(cols).zip(ids) {
            let id = id as usize;
            if id >= table.rows {
                return Err(Error::InvalidArgument(format!(
                    "token id {id} is outside the vocabulary of {} tokens",
                    table.rows
                )));
            }
            view.dequantize_row(id, row)
                .map_err(|e| Error::tensor(&table.name, e))?;
        }
        Ok(Mat {
            data,
            rows: ids.len(),
            cols,
        })
    }

    fn rms_norm(&self, x: &Mat, w: &Vec<f32>, eps: f32) -> Result<Mat> {
        let mut out = self.zeros(x.data.len());
        self.par_rows2(&mut out, x.cols, &x.data, x.cols, |_, o, x| {
            ops::rms_norm(x, w, eps, o)
        });
        Ok(Mat {
            data: out,
            rows: x.rows,
            cols: x.cols,
        })
    }

    fn linear(&self, x: &Mat, w: &CpuMatrix, bias: Option<&Vec<f32>>) -> Result<Mat> {
        let mut out = self.zeros(x.rows * w.rows);
        matmul(&self.pool, self.caps, &w.view(), &x.data, x.rows, &mut out)
            .map_err(|e| Error::tensor(&w.name, e))?;
        if let Some(b) = bias {
            self.add_bias(&mut out, b);
        }
        Ok(Mat {
            data: out,
            rows: x.rows,
            cols: w.rows,
        })
    }

    fn linear_consuming(&self, x: Mat, w: &CpuMatrix) -> Result<Mat> {
        let rows = x.rows;
        let mut out = self.zeros(rows * w.rows);
        matmul_owned(&self.pool, self.caps, &w.view(), x.data, rows, &mut out)
            .map_err(|e| Error::tensor(&w.name, e))?;
        Ok(Mat {
            data: out,
            rows,
            cols: w.rows,
        })
    }

    fn linear_many(&self, x: &Mat, ws: &[(&CpuMatrix, Option<&Vec<f32>>)]) -> Result<Vec<Mat>> {
        let mut outs: Vec<Vec<f32>> = ws
            .iter()
            .map(|(w, _)| self.zeros(w.rows * x.rows))
            .collect();
        let views: Vec<QMatrix<'_>> = ws.iter().map(|(w, _)| w.view()).collect();
        let refs: Vec<&QMatrix<'_>> = views.iter().collect();
        let mut slices: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        matmul_many(&self.pool, self.caps, &refs, &x.data, &mut slices).map_err(|e| {
            let names: Vec<&str> = ws.iter().map(|(w, _)| w.name.as_str()).collect();
            Error::tensor(names.join(", "), e)
        })?;
        Ok(outs
            .into_iter()
            .zip(ws)
            .map(|(mut data, (w, b))| {
                if let Some(b) = b {
                    self.add_bias(&mut data, b);
                }
                Mat {
                    data,
                    rows: x.rows,
                    cols: w.rows,
                }
            })
            .collect())
    }

    fn read_ahead(&self, next: &[&CpuMatrix]) {
        let views: Vec<QMatrix<'_>> = next.iter().map(|w| w.view()).collect();
        let refs: Vec<&QMatrix<'_>> = views.iter().collect();
        self.pool
            .read_ahead(decode_fronts(&self.pool, self.caps, &refs));
    }

    fn attention(
        &self,
        mut q: Mat,
        mut k: Mat,
        v: Mat,
        cache: &mut KvCache,
        layer: usize,
        rope: &RopeTable,
        cfg: &DecoderConfig,
    ) -> Result<Mat> {
        let n = q.rows;
        let (qc, kc) = (q.cols, k.cols);
        self.par_rows2(&mut q.data, qc, &rope.cos, rope.half, |t0, x, _| {
            ops::rope_from(x, cfg.n_heads, cfg.head_dim, rope, cfg.rope_style, t0)
        });
        self.par_rows2(&mut k.data, kc, &rope.cos, rope.half, |t0, x, _| {
            ops::rope_from(x, cfg.n_kv_heads, cfg.head_dim, rope, cfg.rope_style, t0)
        });
        let mut out = self.zeros(n * cfg.n_heads * cfg.head_dim);
        let (pool, caps) = (&self.pool, self.caps);
        match &mut cache.layers {
            KvLayers::F16(l) => l.attend(
                pool, caps, layer, &q.data, &k.data, &v.data, n, cfg, &mut out,
            ),
            KvLayers::F32(l) => l.attend(
                pool, caps, layer, &q.data, &k.data, &v.data, n, cfg, &mut out,
            ),
        }
        Ok(Mat {
            data: out,
            rows: n,
            cols: cfg.n_heads * cfg.head_dim,
        })
    }

    fn silu_mul(&self, mut gate: Mat, up: &Mat) -> Result<Mat> {
        let caps = self.caps;
        let cols = gate.cols;
        self.par_rows2(&mut gate.data, cols, &up.data, cols, |_, g, u| {
            ops::silu_mul(caps, g, u)
        });
        Ok(gate)
    }

    fn swiglu(&self, x: &Mat, gate: &CpuMatrix, up: &CpuMatrix) -> Result<Mat> {
        if !swiglu_fuses(self.caps, &gate.view(), &up.view(), x.rows) {
            return super::swiglu_unfused(self, x, gate, up);
        }
        let mut out = self.zeros(x.rows * gate.rows);
        let fused = matmul_swiglu(
            &self.pool,
            self.caps,
            &gate.view(),
            &up.view(),
            &x.data,
            &mut out,
        )
        .map_err(|e| Error::tensor(format!("{}, {}", gate.name, up.name), e))?;
        if !fused {
            return Err(Error::tensor(
                format!("{}, {}", gate.name, up.name),
                "the fused SwiGLU products did not apply",
            ));
        }
        Ok(Mat {
            data: out,
            rows: x.rows,
            cols: gate.rows,
        })
    }

    fn add_assign(&self, x: &mut Mat, y: &Mat) -> Result<()> {
        let cols = x.cols;
        self.par_rows2(&mut x.data, cols, &y.data, cols, |_, a, b| {
            a.iter_mut().zip(b).for_each(|(a, b)| *a += b)
        });
        Ok(())
    }

    fn last_row(&self, x: Mat) -> Result<Mat> {
        let start = (x.rows.saturating_sub(1)) * x.cols;
        Ok(Mat {
            data: x.data[start..].to_vec(),
            rows: 1,
            cols: x.cols,
        })
    }

    fn rows(&self, x: &Mat, start: usize, len: usize) -> Result<Mat> {
        Ok(Mat {
            data: x.data[start * x.cols..(start + len) * x.cols].to_vec(),
            rows: len,
            cols: x.cols,
        })
    }

    fn concat_rows(&self, parts: Vec<Mat>) -> Result<Mat> {
        let cols = parts.first().map_or(0, |p| p.cols);
        let rows = parts.iter().map(|p| p.rows).sum();
        let mut data = Vec::with_capacity(rows * cols);
        for p in parts {
            data.extend_from_slice(&p.data);
        }
        Ok(Mat { data, rows, cols })
    }

    fn to_host(&self, x: Mat) -> Result<Vec<f32>> {
        Ok(x.data)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use candle_core::quantized::QTensor;

    fn quantized(dtype: WeightType, rows: usize, cols: usize) -> RawTensor {
        let vals: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect();
        let t = candle_core::Tensor::from_slice(&vals, (rows, cols), &candle_core::Device::Cpu)
            .unwrap();
        let bytes = QTensor::quantize(&t, dtype.to_candle().unwrap())
            .unwrap()
            .data()
            .unwrap()
            .to_vec();
        RawTensor {
            name: "w".into(),
            dtype,
            shape: vec![rows, cols],
            data: Blob::Owned(std::sync::Arc::new(bytes)),
        }
    }

    /// Q, K and V (or gate and up) run as one region must give what three separate products
    /// give on the plain path, with row counts that leave partial groups of four and biases.
    #[test]
    fn fused_products_equal_separate_ones() {
        let cols = 1024;
        // AVX2 alone as well: its F16/BF16 decode runs on the team too.
        let levels = [CpuCaps::detect(), CpuCaps::avx2_only()];
        for (dtype, caps) in [
            WeightType::Q4_0,
            WeightType::Q8_0,
            WeightType::F16,
            WeightType::BF16,
        ]
        .into_iter()
        .flat_map(|d| levels.map(|c| (d, c)))
        {
            let fast = CpuBackend::new(2, caps).unwrap();
            let plain = CpuBackend::new(1, CpuCaps::portable()).unwrap();
            let shapes = [40, 13, 7];
            let mk = |b: &CpuBackend| -> Vec<CpuMatrix> {
                shapes
                    .iter()
                    .map(|&r| {
                        let t = if matches!(dtype, WeightType::F16 | WeightType::BF16) {
                            let q = quantized(WeightType::Q8_0, r, cols);
                            let mut v = vec![0f32; r * cols];
                            let m = b.matrix(q).unwrap();
                            for i in 0..r {
                                m.view()
                                    .dequantize_row(i, &mut v[i * cols..(i + 1) * cols])
                                    .unwrap();
                            }
                            let bytes: Vec<u8> = v
                                .iter()
                                .flat_map(|x| {
                                    if dtype == WeightType::BF16 {
                                        half::bf16::from_f32(*x).to_le_bytes()
                                    } else {
                                        half::f16::from_f32(*x).to_le_bytes()
                                    }
                                })
                                .collect();
                            RawTensor {
                                name: "w".into(),
                                dtype,
                                shape: vec![r, cols],
                                data: Blob::Owned(std::sync::Arc::new(bytes)),
                            }
                        } else {
                            quantized(dtype, r, cols)
                        };
                        b.matrix(t).unwrap()
                    })
                    .collect()
            };
            let (fm, pm) = (mk(&fast), mk(&plain));
            let bias: Vec<f32> = (0..13).map(|i| i as f32 * 0.25).collect();
            let x = Mat {
                data: (0..cols).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect(),
                rows: 1,
                cols,
            };
            let fused = fast
                .linear_many(&x, &[(&fm[0], None), (&fm[1], Some(&bias)), (&fm[2], None)])
                .unwrap();
            let biases = [None, Some(&bias), None];
            for (i, got) in fused.iter().enumerate() {
                let want = plain.linear(&x, &pm[i], biases[i]).unwrap();
                assert_eq!((got.rows, got.cols), (1, shapes[i]));
                let worst = crate::kernels::max_abs_diff(&got.data, &want.data);
                assert!(worst < 2e-3, "{dtype:?} {caps:?} matrix {i}: {worst}");
            }
            // A prompt: the fused call (one activation layout for all matrices on AMX) gives
            // exactly what one product per matrix on the same backend gives.
            let n = 20;
            let xs = acts(n, cols, 23);
            let fused = fast
                .linear_many(
                    &xs,
                    &[(&fm[0], None), (&fm[1], Some(&bias)), (&fm[2], None)],
                )
                .unwrap();
            for (i, got) in fused.iter().enumerate() {
                let want = fast.linear(&xs, &fm[i], biases[i]).unwrap();
                assert_eq!((got.rows, got.cols), (n, shapes[i]));
                assert_eq!(got.data, want.data, "{dtype:?} matrix {i}, {n} tokens");
            }
        }
    }

    /// A row whose length is a multiple of 16 but not of the kernels' steps (64 values with
    /// AVX-512, 32 with AVX2) ends in their tail loops, which must agree with the portable sum.
    #[test]
    fn half_precision_rows_with_a_tail_decode_exactly() {
        let (rows, cols) = (9, 1040);
        let plain = CpuBackend::new(1, CpuCaps::portable()).unwrap();
        let x = acts(1, cols, 29);
        for dtype in [WeightType::F16, WeightType::BF16] {
            let bytes: Vec<u8> = (0..rows * cols)
                .flat_map(|i| {
                    let v = ((i * 37 % 101) as f32 - 50.0) / 64.0;
                    if dtype == WeightType::BF16 {
                        half::bf16::from_f32(v).to_le_bytes()
                    } else {
                        half::f16::from_f32(v).to_le_bytes()
                    }
                })
                .collect();
            let raw = || RawTensor {
                name: "w".into(),
                dtype,
                shape: vec![rows, cols],
                data: Blob::Owned(std::sync::Arc::new(bytes.clone())),
            };
            let want = plain
                .linear(&x, &plain.matrix(raw()).unwrap(), None)
                .unwrap();
            for caps in [CpuCaps::detect(), CpuCaps::avx2_only()] {
                let b = CpuBackend::new(2, caps).unwrap();
                let got = b.linear(&x, &b.matrix(raw()).unwrap(), None).unwrap();
                let worst = crate::kernels::max_abs_diff(&got.data, &want.data);
                assert!(worst < 1e-3, "{dtype:?} {caps:?}: {worst}");
            }
        }
    }

    /// `n` rows of a sawtooth in [-1, 1] with period `m`.
    fn acts(n: usize, cols: usize, m: usize) -> Mat {
        let h = (m / 2) as f32;
        Mat {
            data: (0..n * cols).map(|i| ((i % m) as f32 - h) / h).collect(),
            rows: n,
            cols,
        }
    }

    /// Each member reads ahead the rows its own first tasks will take: for two packed matrices
    /// of one layout (one region) its share of both, for two layouts the first matrix's alone.
    #[test]
    fn read_ahead_spans_are_each_members_first_rows() {
        let caps = CpuCaps::detect();
        if !caps.avx2 {
            return;
        }
        let b = CpuBackend::new(2, caps).unwrap();
        let a = b.matrix(quantized(WeightType::Q4_0, 40, 512)).unwrap();
        let c = b.matrix(quantized(WeightType::Q4_0, 24, 512)).unwrap();
        let d = b.matrix(quantized(WeightType::Q8_0, 24, 512)).unwrap();
        let (va, vc, vd) = (a.view(), c.view(), d.view());
        assert!(va.packed && vc.packed && vd.packed);
        let rb = va.row_bytes();
        let at = |m: &QMatrix<'_>, row: usize| m.data.as_ptr() as usize + row * m.row_bytes();
        // 16 groups of four rows in 4 tasks of 4 groups, two tasks per member: member 0 takes
        // rows 0..32 of the first matrix, member 1 the last 8 and all 24 of the second.
        let got = decode_fronts(&b.pool, caps, &[&va, &vc]);
        let none = (0, 0);
        assert_eq!(
            got,
            vec![
                [(at(&va, 0), 32 * rb), none, none, none],
                [(at(&va, 32), 8 * rb), (at(&vc, 0), 24 * rb), none, none],
            ]
        );
        // Q4_0 then Q8_0: one product each, so the first region is the first matrix's 10
        // groups in 3 tasks of 4: one task for member 0, two for member 1.
        let got = decode_fronts(&b.pool, caps, &[&va, &vd]);
        assert_eq!(
            got,
            vec![
                [(at(&va, 0), 16 * rb), none, none, none],
                [(at(&va, 16), 24 * rb), none, none, none],
            ]
        );
        // A product that reads ahead gives what one that does not gives.
        let x = acts(1, 512, 13);
        let want = b.linear(&x, &a, None).unwrap();
        b.read_ahead(&[&c, &a]);
        assert_eq!(b.linear(&x, &a, None).unwrap().data, want.data);
    }

    /// The repacked matrices an AVX2 or VNNI processor loads must give what ggml's layout
    /// gives, for products (decode and prompt sizes) and for embedding lookups.
    #[test]
    fn packed_matrices_behave_like_ggml_ones() {
        let best = CpuCaps::detect();
        if !best.avx2 {
            return;
        }
        let (rows, cols) = (40, 512);
        for dtype in [WeightType::Q4_0, WeightType::Q8_0] {
            let fast = CpuBackend::new(2, best).unwrap();
            let plain = CpuBackend::new(2, CpuCaps::portable()).unwrap();
            let a = fast.matrix(quantized(dtype, rows, cols)).unwrap();
            let b = plain.matrix(quantized(dtype, rows, cols)).unwrap();
            assert!(a.packed && !b.packed);
            let ea = fast.embed(&a, &[0, 39, 7]).unwrap();
            let eb = plain.embed(&b, &[0, 39, 7]).unwrap();
            assert_eq!(ea.data, eb.data);
            for n in [1, 5] {
                let x = acts(n, cols, 13);
                let ya = fast.linear(&x, &a, None).unwrap();
                let yb = plain.linear(&x, &b, None).unwrap();
                let worst = crate::kernels::max_abs_diff(&ya.data, &yb.data);
                assert!(worst < 1e-3, "{dtype:?} n={n}: {worst}");
            }
        }
    }

    /// Resident kilobytes of this process's mapping that starts at `addr`, from smaps.
    #[cfg(target_os = "linux")]
    fn mapping_rss_kib(addr: usize) -> Option<u64> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let head = format!("{addr:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head)).skip(1);
        lines
            .find(|l| l.starts_with("Rss:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// A norm read out of a mapped file leaves none of the file's pages resident: they sit
    /// between matrices the packed-weights file serves, and the page cache maps whole large
    /// folios around them.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_vector_read_from_a_mapped_file_leaves_no_pages_resident() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.bin");
        let norm: Vec<f32> = (0..576).map(|i| i as f32 * 0.5).collect();
        let offset = 3 << 20;
        let mut bytes = vec![7u8; 8 << 20];
        for (i, v) in norm.iter().enumerate() {
            bytes[offset + 4 * i..offset + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&bytes)
            .unwrap();
        let map = crate::loader::store::map_file(&path, false).unwrap();
        let addr = map.as_ptr() as usize;
        // Another page of the file mapped on purpose: the release covers the norm's
        // neighbourhood too.
        let _ = std::hint::black_box(map[offset + (64 << 10)]);
        assert!(
            mapping_rss_kib(addr).unwrap() > 0,
            "the probe page was not mapped"
        );
        let t = RawTensor {
            name: "model.norm.weight".into(),
            dtype: WeightType::F32,
            shape: vec![norm.len()],
            data: Blob::Mapped {
                map: map.clone(),
                start: offset,
                len: 4 * norm.len(),
            },
        };
        let cpu = CpuBackend::new(1, CpuCaps::detect()).unwrap();
        assert_eq!(cpu.vector(t).unwrap(), norm);
        assert_eq!(mapping_rss_kib(addr), Some(0));
    }
}
