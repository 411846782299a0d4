//! `out = x · Wᵀ` for a weight matrix in any stored format, split over the thread pool by rows.
//! One code path serves decode (one activation row) and prefill (many).

use crate::WeightType;
use candle_core::quantized::k_quants::{self, GgmlType};
use rayon::prelude::*;

use super::dequant::as_blocks;
use super::threads::Threads;
use super::{ActQuant, BlockQ8, CpuCaps, QK, dot, quantize_row_q8};

/// A weight matrix as stored: `rows` output features, each a row of `cols` inputs.
#[derive(Clone, Copy)]
pub struct QMatrix<'a> {
    pub dtype: WeightType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
    /// Rows in the superblock layout [`super::packed::Layout::of`] gives this type, instead of
    /// ggml's.
    pub packed: bool,
}

impl QMatrix<'_> {
    pub fn row_bytes(&self) -> usize {
        if self.packed {
            return super::packed::row_bytes(self.dtype, self.cols);
        }
        self.cols / self.dtype.block_size() * self.dtype.type_size()
    }

    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Converts whole rows (`bytes` holds `out.len() / cols` of them) to f32.
    fn dequantize_rows(&self, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
        if self.packed {
            for (src, o) in bytes
                .chunks_exact(self.row_bytes())
                .zip(out.chunks_exact_mut(self.cols))
            {
                super::packed::dequantize_row(self.dtype, src, o);
            }
            return Ok(());
        }
        super::dequant::dequantize_into(self.dtype, bytes, out).map_err(|e| e.to_string())
    }

    /// Row `r` as f32 (embedding lookups).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), String> {
        self.dequantize_rows(self.row(r), out)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.packed && !super::packed::packable(self.dtype, self.cols) {
            return Err(format!(
                "{:?} matrix with {} columns cannot be in the packed layout",
                self.dtype, self.cols
            ));
        }
        if !self.cols.is_multiple_of(self.dtype.block_size()) {
            return Err(format!(
                "{} columns is not a multiple of the {:?} block size {}",
                self.cols,
                self.dtype,
                self.dtype.block_size()
            ));
        }
        if self.data.len() != self.rows * self.row_bytes() {
            return Err(format!(
                "{:?} matrix {}x{} needs {} bytes, has {}",
                self.dtype,
                self.rows,
                self.cols,
                self.rows * self.row_bytes(),
                self.data.len()
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: every task writes a disjoint set of output elements.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

/// Runs `run(0..tasks)` on the pool, or inline when there is one task or one thread (a pool
/// dispatch costs more than a small matrix).
fn run_tasks(pool: &Threads, tasks: usize, threads: usize, run: impl Fn(usize) + Sync + Send) {
    if tasks == 1 || threads == 1 {
        (0..tasks).for_each(run);
    } else {
        pool.install(|| (0..tasks).into_par_iter().for_each(run));
    }
}

/// Runs `f(row, token) -> value` over all rows × tokens, rows split across the pool.
fn par_rows(
    pool: &Threads,
    rows: usize,
    n: usize,
    out: &mut [f32],
    f: impl Fn(usize, usize) -> f32 + Sync,
) {
    assert_eq!(out.len(), rows * n, "output buffer has the wrong size");
    let threads = pool.current_num_threads().max(1);
    let per_task = rows.div_ceil(threads * 4).max(8);
    let tasks = rows.div_ceil(per_task);
    let ptr = SyncPtr(out.as_mut_ptr());
    let run = |ti: usize| {
        let p = ptr;
        let r0 = ti * per_task;
        let r1 = (r0 + per_task).min(rows);
        for r in r0..r1 {
            for t in 0..n {
                // SAFETY: (t, r) pairs are disjoint across tasks and inside the buffer.
                unsafe { *p.0.add(t * rows + r) = f(r, t) };
            }
        }
    };
    run_tasks(pool, tasks, threads, run);
}

/// Like `par_rows`, but computes four rows per call of `f4`; `f1` finishes leftover rows.
#[cfg(target_arch = "x86_64")]
fn par_rows4(
    pool: &Threads,
    w: &QMatrix<'_>,
    n: usize,
    out: &mut [f32],
    f4: impl Fn(usize, usize) -> [f32; 4] + Sync,
    f1: impl Fn(usize, usize) -> f32 + Sync,
) {
    let rows = w.rows;
    assert_eq!(out.len(), rows * n, "output buffer has the wrong size");
    let threads = pool.current_num_threads().max(1);
    let per_task = (rows.div_ceil(threads * 4).max(8)).div_ceil(4) * 4;
    let tasks = rows.div_ceil(per_task);
    let ptr = SyncPtr(out.as_mut_ptr());
    let run = |ti: usize| {
        let p = ptr;
        let r0 = ti * per_task;
        let r1 = (r0 + per_task).min(rows);
        let mut r = r0;
        while r + 4 <= r1 {
            for t in 0..n {
                let v = f4(r, t);
                for (i, v) in v.iter().enumerate() {
                    // SAFETY: (t, r+i) pairs are disjoint across tasks and inside the buffer.
                    unsafe { *p.0.add(t * rows + r + i) = *v };
                }
            }
            r += 4;
        }
        for r in r..r1 {
            for t in 0..n {
                // SAFETY: as above.
                unsafe { *p.0.add(t * rows + r) = f1(r, t) };
            }
        }
    };
    run_tasks(pool, tasks, threads, run);
}

/// The activations of `n` tokens quantized as ggml does for `kind` (see [`ActQuant`]).
fn quantize_q8(
    pool: &Threads,
    caps: CpuCaps,
    x: &[f32],
    n: usize,
    cols: usize,
    kind: ActQuant,
) -> Vec<BlockQ8> {
    let nb = cols / QK;
    let mut q = vec![BlockQ8::default(); n * nb];
    let one = |qr: &mut [BlockQ8], xr: &[f32]| {
        if kind == ActQuant::Q8K && cols.is_multiple_of(8 * QK) {
            return super::quantize_row_q8k(xr, qr);
        }
        #[cfg(target_arch = "x86_64")]
        if caps.avx2 {
            // SAFETY: run-time detected features.
            unsafe { super::x86::quantize_row_q8(xr, qr) };
            return super::round_q8_scales(qr, kind);
        }
        quantize_row_q8(xr, qr);
        super::round_q8_scales(qr, kind)
    };
    if n > 4 {
        pool.install(|| {
            q.par_chunks_mut(nb)
                .zip(x.par_chunks(cols))
                .for_each(|(qr, xr)| one(qr, xr))
        });
    } else {
        q.chunks_mut(nb)
            .zip(x.chunks(cols))
            .for_each(|(qr, xr)| one(qr, xr));
    }
    q
}

fn matmul_ggml<T: GgmlType>(
    pool: &Threads,
    w: &QMatrix<'_>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<(), String> {
    let vb = T::VecDotType::BLCK_SIZE;
    if !w.cols.is_multiple_of(vb) {
        return Err(format!("{} columns is not a multiple of {vb}", w.cols));
    }
    let nbx = w.cols / vb;
    let mut xq: Vec<T::VecDotType> = (0..n * nbx).map(|_| T::VecDotType::zeros()).collect();
    for (qr, xr) in xq.chunks_mut(nbx).zip(x.chunks(w.cols)) {
        T::VecDotType::from_float(xr, qr);
    }
    let blocks = as_blocks::<T>(w.data)?;
    let nbw = w.cols / T::BLCK_SIZE;
    par_rows(pool, w.rows, n, out, |r, t| {
        T::vec_dot(
            w.cols,
            &blocks[r * nbw..(r + 1) * nbw],
            &xq[t * nbx..(t + 1) * nbx],
        )
    });
    Ok(())
}

/// Types without a kernel of their own (IQ4_NL, IQ4_XS; candle has none either): each row is
/// converted to f32 with the exact dequantizer and multiplied in f32. Correct rather than fast.
fn matmul_dequant(
    pool: &Threads,
    caps: CpuCaps,
    w: &QMatrix<'_>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<(), String> {
    thread_local! {
        static ROW: std::cell::RefCell<(Vec<f32>, Vec<u8>)> =
            const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }
    let cols = w.cols;
    // Checked once here, so that the per-row conversions below cannot fail.
    if w.rows > 0 {
        w.dequantize_row(0, &mut vec![0f32; cols])?;
    }
    par_rows(pool, w.rows, n, out, |r, t| {
        ROW.with_borrow_mut(|(vals, bytes)| {
            vals.resize(cols, 0.0);
            bytes.resize(cols * 4, 0);
            let _ = w.dequantize_row(r, vals);
            for (b, v) in bytes.chunks_exact_mut(4).zip(vals.iter()) {
                b.copy_from_slice(&v.to_le_bytes());
            }
            dot::dot_f32_bytes(caps, bytes, &x[t * cols..(t + 1) * cols])
        })
    });
    Ok(())
}

/// Prefill on 16/32-bit weights: each task converts 4 rows to f32 once, then runs 4×2 tiles
/// over all tokens, so conversion is amortised over the prompt and every load feeds 2 FMAs.
fn dense_tiles(
    pool: &Threads,
    caps: CpuCaps,
    w: &QMatrix<'_>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<(), String> {
    let (rows, k) = (w.rows, w.cols);
    let threads = pool.current_num_threads().max(1);
    let groups = rows.div_ceil(4);
    let per_task = groups.div_ceil(threads * 4).max(1);
    let tasks = groups.div_ceil(per_task);
    let ptr = SyncPtr(out.as_mut_ptr());
    let failed = std::sync::atomic::AtomicBool::new(false);
    let run = |ti: usize| {
        let p = ptr;
        let mut buf = vec![0f32; 4 * k];
        for g in ti * per_task..((ti + 1) * per_task).min(groups) {
            let r0 = g * 4;
            let nr = (rows - r0).min(4);
            buf.iter_mut().for_each(|v| *v = 0.0);
            let bytes = &w.data[r0 * w.row_bytes()..(r0 + nr) * w.row_bytes()];
            if w.dequantize_rows(bytes, &mut buf[..nr * k]).is_err() {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            let mut t = 0;
            while t < n {
                let t1 = (t + 1).min(n - 1);
                let x0 = &x[t * k..(t + 1) * k];
                let x1 = &x[t1 * k..(t1 + 1) * k];
                // SAFETY: caps come from run-time detection; buf holds 4·k values.
                let v = unsafe {
                    #[cfg(target_arch = "x86_64")]
                    {
                        if caps.avx512vnni {
                            super::x86::dot4x2_f32_avx512(&buf, k, x0, x1)
                        } else {
                            super::x86::dot4x2_f32_avx2(&buf, k, x0, x1)
                        }
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    {
                        let _ = (caps, x0, x1);
                        unreachable!("dense tiles are only chosen on x86-64")
                    }
                };
                for (dt, vt) in v.iter().enumerate().take(if t1 > t { 2 } else { 1 }) {
                    for (i, val) in vt.iter().enumerate().take(nr) {
                        // SAFETY: (t+dt, r0+i) is inside the buffer and owned by this task.
                        unsafe { *p.0.add((t + dt) * rows + r0 + i) = *val };
                    }
                }
                t += 2;
            }
        }
    };
    pool.install(|| (0..tasks).into_par_iter().for_each(run));
    if failed.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(format!("cannot convert {:?} rows", w.dtype));
    }
    Ok(())
}

/// Packed rows (see `packed.rs`). One token: each task streams a contiguous run
/// of rows once. More tokens: 2-row × 4-token VNNI tiles, each task sweeping its rows for every
/// group of 4 tokens while those rows sit in L1/L2.
fn matmul_packed(
    pool: &Threads,
    caps: CpuCaps,
    w: &QMatrix<'_>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<(), String> {
    use super::packed::{self, PackedActs};
    let nb = w.cols / QK;
    let xq = quantize_q8(pool, caps, x, n, w.cols, ActQuant::of(w.dtype));
    let nsb = packed::superblocks(w.cols);
    let layout =
        packed::Layout::of(w.dtype).ok_or_else(|| format!("{:?} has no packed layout", w.dtype))?;
    #[cfg(target_arch = "x86_64")]
    if caps.avx512vnni {
        let mut acts: Vec<PackedActs> = xq
            .chunks_exact(nb)
            .map(|b| PackedActs::new(b, w.dtype))
            .collect();
        if n == 1 {
            packed_decode(
                pool,
                &[(w, SyncPtr(out.as_mut_ptr()))],
                &acts[0],
                layout,
                nsb,
            );
            return Ok(());
        }
        acts.resize(n.div_ceil(4) * 4, PackedActs::zeros(nsb));
        tiles_packed(pool, w, &acts, n, layout, nsb, out);
        return Ok(());
    }
    let _ = (caps, nsb, layout);
    par_rows(pool, w.rows, n, out, |r, t| {
        packed::dot_row(w.dtype, w.row(r), &xq[t * nb..(t + 1) * nb])
    });
    Ok(())
}

/// One token against one or more matrices of the same type and width (Q, K and V; gate and
/// up) in a single parallel region: the rows of all of them, four at a time, are one list of
/// work, so the threads meet once per group instead of once per matrix, and the small K and V
/// matrices do not leave a thread idle at their end. `f4(w, r)` computes rows `r..r+4` of `w`,
/// `f1` one row of a last partial group.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn decode_rows(
    pool: &Threads,
    mats: &[(&QMatrix<'_>, SyncPtr)],
    f4: impl Fn(&QMatrix<'_>, usize) -> [f32; 4] + Sync,
    f1: impl Fn(&QMatrix<'_>, usize) -> f32 + Sync,
) {
    let quads: Vec<usize> = mats.iter().map(|(w, _)| w.rows.div_ceil(4)).collect();
    let total: usize = quads.iter().sum();
    let threads = pool.current_num_threads().max(1);
    // Small tasks let the faster thread take more when the other is interrupted (the machine
    // is shared), without paying much per task.
    let per_task = total.div_ceil(threads * 8).max(4);
    let tasks = total.div_ceil(per_task);
    let run = |ti: usize| {
        let (g0, g1) = (ti * per_task, ((ti + 1) * per_task).min(total));
        let mut base = 0;
        for ((w, out), &nq) in mats.iter().zip(&quads) {
            let (lo, hi) = (g0.max(base), g1.min(base + nq));
            for g in lo..hi {
                let r0 = 4 * (g - base);
                // SAFETY: each output row is written by the one task that owns its group of
                // four, and every row index is below `w.rows`, the length of `out`.
                unsafe {
                    if r0 + 4 <= w.rows {
                        let v = f4(w, r0);
                        std::ptr::copy_nonoverlapping(v.as_ptr(), out.0.add(r0), 4);
                    } else {
                        for r in r0..w.rows {
                            *out.0.add(r) = f1(w, r);
                        }
                    }
                }
            }
            base += nq;
        }
    };
    // One token's regions are short and many: the spinning team, not the rayon pool.
    pool.run(tasks, &run);
}

/// [`decode_rows`] with the packed kernels.
#[cfg(target_arch = "x86_64")]
fn packed_decode(
    pool: &Threads,
    mats: &[(&QMatrix<'_>, SyncPtr)],
    a: &super::packed::PackedActs,
    layout: super::packed::Layout,
    nsb: usize,
) {
    use super::x86::{L_Q4, L_Q4M, L_Q6, L_Q8, L_Q8M};
    // The layout is a constant of each kernel: with it a run-time value, the kernel's offsets
    // and prefetch loop were computed per superblock, which cost 7% of Q4_0's streaming rate.
    match super::x86::layout_code(layout) {
        L_Q4 => packed_decode_as::<L_Q4>(pool, mats, a, nsb),
        L_Q8 => packed_decode_as::<L_Q8>(pool, mats, a, nsb),
        L_Q4M => packed_decode_as::<L_Q4M>(pool, mats, a, nsb),
        L_Q6 => packed_decode_as::<L_Q6>(pool, mats, a, nsb),
        _ => packed_decode_as::<L_Q8M>(pool, mats, a, nsb),
    }
}

#[cfg(target_arch = "x86_64")]
fn packed_decode_as<const L: u8>(
    pool: &Threads,
    mats: &[(&QMatrix<'_>, SyncPtr)],
    a: &super::packed::PackedActs,
    nsb: usize,
) {
    decode_rows(
        pool,
        mats,
        // SAFETY (both): rows below `w.rows` hold `nsb` packed superblocks (checked by
        // `check`), the activations 512 quants and 16 factors per superblock; features
        // detected by the caller.
        |w, r| unsafe {
            super::x86::dot4_packed_vnni::<L>(
                w.row(r).as_ptr(),
                w.row_bytes(),
                nsb,
                a.qs.as_ptr(),
                a.d.as_ptr(),
                [a.so.as_ptr(), a.so2.as_ptr()],
            )
        },
        |w, r| unsafe {
            super::x86::dot_packed_vnni::<L>(
                w.row(r).as_ptr(),
                nsb,
                a.qs.as_ptr(),
                a.d.as_ptr(),
                [a.so.as_ptr(), a.so2.as_ptr()],
            )
        },
    );
}

/// [`decode_rows`] for F16 weights with AVX-512 (`cols` a multiple of 16).
#[cfg(target_arch = "x86_64")]
fn f16_decode(pool: &Threads, caps: CpuCaps, mats: &[(&QMatrix<'_>, SyncPtr)], x: &[f32]) {
    decode_rows(
        pool,
        mats,
        // SAFETY: rows r..r+4 exist (`decode_rows`), hold `x.len()` f16 values (checked by
        // `check` and the shape checks), avx512f detected by the caller.
        |w, r| unsafe { super::x86::dot4_f16_avx512(w.row(r).as_ptr(), w.row_bytes(), x) },
        |w, r| dot::dot_f16(caps, w.row(r), x),
    );
}

/// Whether [`f16_decode`] applies to a matrix.
#[cfg(target_arch = "x86_64")]
fn f16_decodable(caps: CpuCaps, w: &QMatrix<'_>) -> bool {
    caps.avx512vnni && w.dtype == WeightType::F16 && w.cols.is_multiple_of(16)
}

/// Whether two matrices are read by the same packed kernel from the same quantized activations
/// (Q5_0 shares Q8_0's).
#[cfg(target_arch = "x86_64")]
fn same_layout(a: &QMatrix<'_>, b: &QMatrix<'_>) -> bool {
    use super::packed::Layout;
    Layout::of(a.dtype).is_some()
        && Layout::of(a.dtype) == Layout::of(b.dtype)
        && ActQuant::of(a.dtype) == ActQuant::of(b.dtype)
}

/// `outs[i][t·rows_i + r] = Σ_c x[t][c] · W_i[r][c]` for several matrices sharing their input.
/// For one token, packed matrices of one type and width run as one parallel region; for a
/// prompt on AMX the activations are prepared once; anything else is one `matmul` each.
pub fn matmul_many(
    pool: &Threads,
    caps: CpuCaps,
    ws: &[&QMatrix<'_>],
    x: &[f32],
    outs: &mut [&mut [f32]],
) -> Result<(), String> {
    if ws.len() != outs.len() {
        return Err(format!("{} matrices but {} outputs", ws.len(), outs.len()));
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(w0) = ws.first()
        && caps.avx512vnni
        && ws
            .iter()
            .all(|w| w.packed && same_layout(w, w0) && w.cols == w0.cols && x.len() == w.cols)
    {
        for (w, o) in ws.iter().zip(outs.iter()) {
            w.check()?;
            if o.len() != w.rows {
                return Err(format!(
                    "matmul shapes: out has {} values for {} rows",
                    o.len(),
                    w.rows
                ));
            }
        }
        let nb = w0.cols / QK;
        let xq = quantize_q8(pool, caps, x, 1, w0.cols, ActQuant::of(w0.dtype));
        let act = super::packed::PackedActs::new(&xq[..nb], w0.dtype);
        let mats: Vec<(&QMatrix<'_>, SyncPtr)> = ws
            .iter()
            .zip(outs.iter_mut())
            .map(|(w, o)| (*w, SyncPtr(o.as_mut_ptr())))
            .collect();
        let Some(layout) = super::packed::Layout::of(w0.dtype) else {
            return Err(format!("{:?} has no packed layout", w0.dtype));
        };
        packed_decode(
            pool,
            &mats,
            &act,
            layout,
            super::packed::superblocks(w0.cols),
        );
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if !ws.is_empty()
        && ws
            .iter()
            .zip(outs.iter())
            .all(|(w, o)| f16_decodable(caps, w) && x.len() == w.cols && o.len() == w.rows)
    {
        for w in ws {
            w.check()?;
        }
        let mats: Vec<(&QMatrix<'_>, SyncPtr)> = ws
            .iter()
            .zip(outs.iter_mut())
            .map(|(w, o)| (*w, SyncPtr(o.as_mut_ptr())))
            .collect();
        f16_decode(pool, caps, &mats, x);
        return Ok(());
    }
    // A prompt on AMX: the activations are rounded and laid out once for all the matrices.
    #[cfg(target_arch = "x86_64")]
    if let Some(w0) = ws.first() {
        let n = x.len() / w0.cols.max(1);
        if ws.len() > 1
            && x.len() == n * w0.cols
            && ws
                .iter()
                .all(|w| amx_applies(caps, w, n) && w.cols == w0.cols && w.packed == w0.packed)
        {
            for w in ws {
                w.check()?;
            }
            let acts = AmxActs::new(pool, x, n, w0.cols, w0.packed);
            for (w, o) in ws.iter().zip(outs.iter_mut()) {
                amx_tiles(pool, caps, w, None, &acts, o)?;
            }
            return Ok(());
        }
    }
    for (w, o) in ws.iter().zip(outs.iter_mut()) {
        let n = x.len() / w.cols.max(1);
        matmul(pool, caps, w, x, n, o)?;
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
fn tiles_packed(
    pool: &Threads,
    w: &QMatrix<'_>,
    acts: &[super::packed::PackedActs],
    n: usize,
    layout: super::packed::Layout,
    nsb: usize,
    out: &mut [f32],
) {
    let rows = w.rows;
    let threads = pool.current_num_threads().max(1);
    let pairs = rows.div_ceil(2);
    let per_task = pairs.div_ceil(threads * 4).clamp(1, 32);
    let tasks = pairs.div_ceil(per_task);
    let ptr = SyncPtr(out.as_mut_ptr());
    let run = |ti: usize| {
        let p = ptr;
        let (p0, p1) = (ti * per_task, ((ti + 1) * per_task).min(pairs));
        for t in (0..n).step_by(4) {
            let a = &acts[t..t + 4];
            let xq = [0, 1, 2, 3].map(|i| a[i].qs.as_ptr());
            let xd = [0, 1, 2, 3].map(|i| a[i].d.as_ptr());
            let xso = [0, 1, 2, 3].map(|i| [a[i].so.as_ptr(), a[i].so2.as_ptr()]);
            for pair in p0..p1 {
                let r0 = 2 * pair;
                let r1 = (r0 + 1).min(rows - 1);
                let rows2 = [w.row(r0).as_ptr(), w.row(r1).as_ptr()];
                // SAFETY: rows r0, r1 < rows hold `nsb` packed superblocks; the four tokens'
                // activations exist (padded with zeros); features detected by the caller.
                let v = unsafe {
                    use super::x86::{L_Q4, L_Q4M, L_Q6, L_Q8, L_Q8M, tile2x4_packed_vnni as tile};
                    match super::x86::layout_code(layout) {
                        L_Q4 => tile::<L_Q4>(rows2, nsb, xq, xd, xso),
                        L_Q8 => tile::<L_Q8>(rows2, nsb, xq, xd, xso),
                        L_Q4M => tile::<L_Q4M>(rows2, nsb, xq, xd, xso),
                        L_Q6 => tile::<L_Q6>(rows2, nsb, xq, xd, xso),
                        _ => tile::<L_Q8M>(rows2, nsb, xq, xd, xso),
                    }
                };
                for (dt, vt) in v.iter().enumerate().take((n - t).min(4)) {
                    for (i, val) in vt.iter().enumerate().take(if r1 > r0 { 2 } else { 1 }) {
                        // SAFETY: (t+dt, r0+i) is inside the buffer and owned by this task.
                        unsafe { *p.0.add((t + dt) * rows + r0 + i) = *val };
                    }
                }
            }
        }
    };
    run_tasks(pool, tasks, threads, run);
}

/// Rows `r0..r0 + nr` of `w` dequantized and rounded to bf16 into `wb` (whole rows of `w.cols`
/// values; `wb.len()` a multiple of 16, the rows past `nr` left zero). False if the rows cannot
/// be converted.
#[cfg(target_arch = "x86_64")]
fn rows_to_bf16(w: &QMatrix<'_>, r0: usize, nr: usize, wb: &mut [u16]) -> bool {
    let k = w.cols;
    let mut f = vec![0f32; wb.len()];
    let bytes = &w.data[r0 * w.row_bytes()..(r0 + nr) * w.row_bytes()];
    if w.dequantize_rows(bytes, &mut f[..nr * k]).is_err() {
        return false;
    }
    // SAFETY: both buffers hold wb.len() values, a multiple of 16 (callers size them so).
    unsafe { super::x86::f32_to_bf16(f.as_ptr(), wb.as_mut_ptr(), wb.len()) };
    true
}

/// Activations rounded to bf16 for [`amx_tiles`]: row-major, `np` rows (the token count rounded
/// up to 32, zero past it) of `kk` values `stride` apart, in the packed order when the weights
/// are packed.
#[cfg(target_arch = "x86_64")]
struct AmxActs {
    xb: super::Aligned64<u16>,
    kk: usize,
    stride: usize,
    n: usize,
    packed: bool,
    cols: usize,
}

#[cfg(target_arch = "x86_64")]
impl AmxActs {
    fn new(pool: &Threads, x: &[f32], n: usize, k: usize, packed: bool) -> AmxActs {
        use super::amx::TILE;
        use super::packed::{SB, superblocks};
        // Packed rows are dequantized in their own order (`x86::packed_row_to_bf16`), so the
        // activations take the same order: the shared dimension is then `kk`, padded
        // superblocks included.
        let kk = if packed { superblocks(k) * SB * QK } else { k };
        let np = n.div_ceil(2 * TILE) * 2 * TILE;
        // A tile load reads 64 bytes from each of 16 rows; at a row stride of 4 KiB (k = 2048)
        // all 16 fall in one L1 set, which holds 12. 64 bytes more per row spreads them.
        let stride = kk + 32;
        let mut xb = super::Aligned64::zeroed(np * stride);
        pool.install(|| {
            xb[..n * stride]
                .par_chunks_mut(TILE * stride)
                .enumerate()
                .for_each(|(g, dst)| {
                    let mut f = vec![0f32; kk];
                    for (t, row) in dst.chunks_exact_mut(stride).enumerate() {
                        let src = &x[(g * TILE + t) * k..(g * TILE + t + 1) * k];
                        let src = if packed {
                            super::packed::to_packed_order(src, &mut f);
                            &f[..]
                        } else {
                            src
                        };
                        // SAFETY: kk is a multiple of 32; both hold kk values.
                        unsafe { super::x86::f32_to_bf16(src.as_ptr(), row.as_mut_ptr(), kk) };
                    }
                })
        });
        AmxActs {
            xb,
            kk,
            stride,
            n,
            packed,
            cols: k,
        }
    }
}

/// Rows `g0..g0 + gr` of `w` rounded to bf16 in the B operand's pair layout, 16-row slabs one
/// after the other in `wb` (rows past `gr` zero up to the end of the last 32-row block); `rm` is
/// room for 16 rows of `kk` values. False if the rows cannot be converted.
#[cfg(target_arch = "x86_64")]
fn group_to_pairs(
    w: &QMatrix<'_>,
    g0: usize,
    gr: usize,
    kk: usize,
    rm: &mut [u16],
    wb: &mut [u16],
) -> bool {
    use super::amx::TILE;
    let nsb = super::packed::superblocks(w.cols);
    let layout = super::packed::Layout::of(w.dtype);
    // Whole 32-row blocks: the tiles read both 16-row slabs of a block.
    for h in 0..gr.div_ceil(2 * TILE) * 2 {
        let nr = gr.saturating_sub(h * TILE).min(TILE);
        rm[nr * kk..].iter_mut().for_each(|v| *v = 0);
        if let (true, Some(layout)) = (w.packed, layout) {
            for r in 0..nr {
                // SAFETY: a packed row holds `nsb` superblocks (checked by `check`); rm has room
                // for kk = nsb·512 values per row; AVX-512 BF16 comes with AMX.
                unsafe {
                    super::x86::packed_row_to_bf16(
                        layout,
                        w.row(g0 + h * TILE + r).as_ptr(),
                        nsb,
                        rm.as_mut_ptr().add(r * kk),
                    )
                };
            }
        } else if nr > 0 && !rows_to_bf16(w, g0 + h * TILE, nr, rm) {
            return false;
        }
        // SAFETY: rm holds 16 rows of kk values, wb room for 16·kk more from h·16·kk.
        unsafe {
            super::x86::rows_to_pairs16(rm.as_ptr(), kk, kk, wb.as_mut_ptr().add(h * TILE * kk))
        };
    }
    true
}

/// Whether [`amx_tiles`] takes `w` for `n` tokens.
#[cfg(target_arch = "x86_64")]
fn amx_applies(caps: CpuCaps, w: &QMatrix<'_>, n: usize) -> bool {
    caps.amx
        && n >= 16
        && w.cols.is_multiple_of(32)
        && !matches!(w.dtype, WeightType::F32 | WeightType::F16)
}

/// Prefill on AMX (see `amx.rs`). The activations are rounded to bf16 once, row-major: they are
/// the tiles' A operand, so the products land in `out` in its own token-major order and are
/// stored there by the tile unit. Each task converts a group of up to 128 weight rows to bf16 in
/// the B operand's pair layout once (512 KB at k = 2048, kept in L2) and runs every 32-token
/// slice of activations against all of its 32-row blocks while the slice sits in L2: with one
/// block per task, the activations streamed from L3 once per 32 rows and their tile loads were
/// the kernel's largest stall. Rounding is that of the AVX-512 bf16 tiles (PyTorch's bf16
/// inference); the f32 accumulation does not round.
#[cfg(target_arch = "x86_64")]
fn amx_tiles(
    pool: &Threads,
    caps: CpuCaps,
    w: &QMatrix<'_>,
    up: Option<&QMatrix<'_>>,
    acts: &AmxActs,
    out: &mut [f32],
) -> Result<(), String> {
    use super::amx::{TILE, Tiles};
    const BLOCK: usize = 2 * TILE;
    let (rows, k) = (w.rows, w.cols);
    let (packed, kk, n) = (w.packed, acts.kk, acts.n);
    if acts.packed != packed || acts.cols != k || out.len() != n * rows {
        return Err(format!(
            "AMX activations for {} columns{} do not fit a {}x{k} matrix{} and {} outputs",
            acts.cols,
            if acts.packed { " (packed)" } else { "" },
            rows,
            if packed { " (packed)" } else { "" },
            out.len()
        ));
    }
    if let Some(u) = up
        && (u.rows != rows || u.cols != k || u.packed != packed)
    {
        return Err(format!(
            "gate {rows}x{k} and up {}x{} matrices do not match",
            u.rows, u.cols
        ));
    }
    let (stride, np) = (acts.stride, acts.xb.len() / acts.stride);
    let xb = &acts.xb;
    let threads = pool.current_num_threads().max(1);
    let blocks = rows.div_ceil(BLOCK);
    // Gate and up rows share L2 when fused: half the rows per group.
    let most = if up.is_some() { 2 } else { 4 };
    let group = blocks.div_ceil(2 * threads).clamp(1, most) * BLOCK;
    let groups = rows.div_ceil(group);
    let ptr = SyncPtr(out.as_mut_ptr());
    let failed = std::sync::atomic::AtomicBool::new(false);
    // The buffers live as long as a rayon job, not a group: zeroing 512 KB per group was 5% of
    // a prompt. Every value of `wb` a group uses is written before it is read.
    let init = || {
        (
            vec![0u16; TILE * kk],
            super::Aligned64::<u16>::zeroed(group * kk),
            super::Aligned64::<u16>::zeroed(if up.is_some() { group * kk } else { 0 }),
            super::Aligned64::<f32>::zeroed(8 * TILE * TILE),
        )
    };
    type Bufs = (
        Vec<u16>,
        super::Aligned64<u16>,
        super::Aligned64<u16>,
        super::Aligned64<f32>,
    );
    let run = |(rm, wb, wu, scratch): &mut Bufs, g: usize| {
        let p = ptr;
        let g0 = g * group;
        let gr = (rows - g0).min(group);
        let nblocks = gr.div_ceil(BLOCK);
        if !group_to_pairs(w, g0, gr, kk, rm, wb)
            || up.is_some_and(|u| !group_to_pairs(u, g0, gr, kk, rm, wu))
        {
            failed.store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        // SAFETY: the backend only sets `caps.amx` after `amx::available()` returned true.
        let tiles = unsafe { Tiles::new() };
        for t0 in (0..np).step_by(BLOCK) {
            let a = xb[t0 * stride..].as_ptr();
            for b in 0..nblocks {
                let r0 = g0 + b * BLOCK;
                let bp = [0, 1].map(|j| wb[(2 * b + j) * TILE * kk..].as_ptr());
                let full = t0 + BLOCK <= n && r0 + BLOCK <= rows;
                if full && up.is_none() {
                    // SAFETY: tokens t0..t0+32 and rows r0..r0+32 are inside `out` and owned
                    // by this group; xb holds 32 tokens from t0, wb two 16-row blocks at bp.
                    unsafe {
                        let c = [0, 1].map(|i| {
                            [0, 1].map(|j| p.0.add((t0 + i * TILE) * rows + r0 + j * TILE))
                        });
                        tiles.block(a, stride, bp, kk, c, rows * 4);
                    }
                    continue;
                }
                let sp = scratch.as_mut_ptr();
                // SAFETY: scratch holds eight 16 × 16 tiles, one after the other.
                let c = |at: usize| {
                    [0, 1]
                        .map(|i| [0, 1].map(|j| unsafe { sp.add((at + 2 * i + j) * TILE * TILE) }))
                };
                // SAFETY: as above, into the scratch tiles.
                unsafe { tiles.block(a, stride, bp, kk, c(0), TILE * 4) };
                if up.is_some() {
                    let bu = [0, 1].map(|j| wu[(2 * b + j) * TILE * kk..].as_ptr());
                    // SAFETY: as above, up's rows into the second four scratch tiles.
                    unsafe { tiles.block(a, stride, bu, kk, c(4), TILE * 4) };
                    let (g, u) = scratch.split_at_mut(4 * TILE * TILE);
                    super::ops::silu_mul(caps, g, u);
                }
                for (i, si) in scratch[..4 * TILE * TILE]
                    .chunks_exact(2 * TILE * TILE)
                    .enumerate()
                {
                    for (j, sij) in si.chunks_exact(TILE * TILE).enumerate() {
                        let (ti, rj) = (t0 + i * TILE, r0 + j * TILE);
                        let nr = rows.saturating_sub(rj).min(TILE);
                        for dt in 0..n.saturating_sub(ti).min(TILE) {
                            let src = &sij[dt * TILE..dt * TILE + nr];
                            // SAFETY: (ti+dt, rj..rj+nr) is inside the buffer and owned by
                            // this group.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    src.as_ptr(),
                                    p.0.add((ti + dt) * rows + rj),
                                    nr,
                                )
                            };
                        }
                    }
                }
            }
        }
    };
    pool.install(|| (0..groups).into_par_iter().for_each_init(init, run));
    if failed.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(format!("cannot convert {:?} rows", w.dtype));
    }
    Ok(())
}

/// `out = silu(x·Gᵀ) ⊙ (x·Uᵀ)` for `n` tokens where the two products can be fused: on AMX, those
/// of a block of rows are combined in the tiles' scratch, so neither exists whole (for a
/// 512-token prompt of Qwen2.5, 18 MB less at the peak and one pass less over 37 MB). Returns
/// false, having written nothing, where they cannot; the caller then multiplies twice.
pub fn matmul_swiglu(
    pool: &Threads,
    caps: CpuCaps,
    gate: &QMatrix<'_>,
    up: &QMatrix<'_>,
    x: &[f32],
    out: &mut [f32],
) -> Result<bool, String> {
    let n = x.len() / gate.cols.max(1);
    if x.len() != n * gate.cols || out.len() != n * gate.rows {
        return Err(format!(
            "swiglu shapes: {} inputs and {} outputs for a {}x{} matrix",
            x.len(),
            out.len(),
            gate.rows,
            gate.cols
        ));
    }
    #[cfg(target_arch = "x86_64")]
    if swiglu_fuses(caps, gate, up, n) {
        gate.check()?;
        up.check()?;
        let acts = AmxActs::new(pool, x, n, gate.cols, gate.packed);
        return amx_tiles(pool, caps, gate, Some(up), &acts, out).map(|()| true);
    }
    let _ = (pool, caps, up);
    Ok(false)
}

/// Whether [`matmul_swiglu`] fuses the products of `n` tokens.
pub fn swiglu_fuses(caps: CpuCaps, gate: &QMatrix<'_>, up: &QMatrix<'_>, n: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        amx_applies(caps, gate, n)
            && amx_applies(caps, up, n)
            && up.rows == gate.rows
            && up.cols == gate.cols
            && up.packed == gate.packed
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (caps, gate, up, n);
        false
    }
}

/// From this width up, prompts on packed rows run on the 8-bit VNNI tiles rather than bf16 ones.
/// Measured on 512-token prompts, 2 threads, AVX-512 BF16 without AMX: the VNNI tiles were
/// 1.6x the bf16 ones on TinyLlama's 2048-wide Q4_0 matrices and 1.15x on Q8_0, even at 1536
/// (Qwen2.5-1.5B), and 0.7x at 896 (Qwen2.5-0.5B) and 576 (SmolLM2), where the per-superblock
/// work of the 2×4 tiles weighs more than the bf16 conversion.
pub const PACKED_VNNI_PROMPT_COLS: usize = 1536;

/// Rows converted to bf16 per task.
const BF16_GROUP: usize = 16;

/// Prefill in bf16 (`vdpbf16ps`) on AVX-512 BF16 processors: the activations are rounded to
/// bf16 once, each task dequantizes a group of 16 weight rows to bf16 once (kept in L2), then
/// sweeps all tokens 4 at a time, each 4-token slice of activations (L1) meeting the group's 4
/// row quartets. Rounding matches PyTorch's bf16 inference; the f32 accumulation does not
/// round.
#[cfg(target_arch = "x86_64")]
fn bf16_tiles(
    pool: &Threads,
    w: &QMatrix<'_>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<(), String> {
    use super::packed::{Layout, SB, superblocks};
    let (rows, k) = (w.rows, w.cols);
    // Packed rows convert to bf16 with SIMD in their own order (`x86::packed_row_to_bf16`), so
    // the activations take that order too, padded superblocks included, as for AMX. Where the
    // padding is large (SmolLM2's 576 columns fill 1024), the products over it cost more than
    // a scalar conversion to the natural order saves.
    let padded = superblocks(k) * SB * QK;
    let layout = if w.packed && 4 * padded <= 5 * k {
        Layout::of(w.dtype)
    } else {
        None
    };
    let kk = if layout.is_some() { padded } else { k };
    let nt = n.div_ceil(4) * 4;
    let mut xb = vec![0u16; nt * kk];
    {
        let chunks: Vec<(&[f32], &mut [u16])> = x.chunks(k).zip(xb.chunks_mut(kk)).collect();
        pool.install(|| {
            chunks.into_par_iter().for_each(|(src, dst)| {
                let mut f = Vec::new();
                let src = if layout.is_some() {
                    f.resize(kk, 0f32);
                    super::packed::to_packed_order(src, &mut f);
                    &f[..]
                } else {
                    src
                };
                // SAFETY: kk is a multiple of 32 (checked by the caller, or whole
                // superblocks); both hold kk values.
                unsafe { super::x86::f32_to_bf16(src.as_ptr(), dst.as_mut_ptr(), kk) }
            })
        });
    }
    let groups = rows.div_ceil(BF16_GROUP);
    let ptr = SyncPtr(out.as_mut_ptr());
    let failed = std::sync::atomic::AtomicBool::new(false);
    let run = |g: usize| {
        let p = ptr;
        let r0 = g * BF16_GROUP;
        let nr = (rows - r0).min(BF16_GROUP);
        let mut wb = vec![0u16; BF16_GROUP * kk];
        if let Some(layout) = layout {
            for r in 0..nr {
                // SAFETY: a packed row holds kk / 512 superblocks (checked by `check`); wb has
                // room for kk values per row; AVX-512 BF16 detected by the caller.
                unsafe {
                    super::x86::packed_row_to_bf16(
                        layout,
                        w.row(r0 + r).as_ptr(),
                        kk / (SB * QK),
                        wb.as_mut_ptr().add(r * kk),
                    )
                };
            }
        } else if !rows_to_bf16(w, r0, nr, &mut wb) {
            failed.store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        for t in (0..nt).step_by(4) {
            for q in (0..nr).step_by(4) {
                // SAFETY: wb holds rows q..q+4 (zero past nr), xb tokens t..t+4 (zero past n).
                let v = unsafe {
                    super::x86::tile4x4_bf16(wb.as_ptr().add(q * kk), xb.as_ptr().add(t * kk), kk)
                };
                for (dt, vt) in v.iter().enumerate().take(n.saturating_sub(t).min(4)) {
                    for (i, val) in vt.iter().enumerate().take(nr.saturating_sub(q).min(4)) {
                        // SAFETY: (t+dt, r0+q+i) is inside the buffer and owned by this group.
                        unsafe { *p.0.add((t + dt) * rows + r0 + q + i) = *val };
                    }
                }
            }
        }
    };
    pool.install(|| (0..groups).into_par_iter().for_each(run));
    if failed.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(format!("cannot convert {:?} rows", w.dtype));
    }
    Ok(())
}

/// [`matmul`] of activations the caller no longer needs: on AMX they are freed once rounded to
/// bf16, before the products, so a prompt's SwiGLU output (18 MB for 512 tokens of Qwen2.5) is
/// not held through the down projection.
pub fn matmul_owned(
    pool: &Threads,
    caps: CpuCaps,
    w: &QMatrix<'_>,
    x: Vec<f32>,
    n: usize,
    out: &mut [f32],
) -> Result<(), String> {
    #[cfg(target_arch = "x86_64")]
    if amx_applies(caps, w, n) && x.len() == n * w.cols && out.len() == n * w.rows {
        w.check()?;
        let acts = AmxActs::new(pool, &x, n, w.cols, w.packed);
        drop(x);
        return amx_tiles(pool, caps, w, None, &acts, out);
    }
    matmul(pool, caps, w, &x, n, out)
}

/// `out[t][r] = Σ_c x[t][c] · W[r][c]` for `n` activation rows.
pub fn matmul(
    pool: &Threads,
    caps: CpuCaps,
    w: &QMatrix<'_>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<(), String> {
    w.check()?;
    if x.len() != n * w.cols || out.len() != n * w.rows {
        return Err(format!(
            "matmul shapes: x has {} values for {n}x{}, out has {} for {n}x{}",
            x.len(),
            w.cols,
            out.len(),
            w.rows
        ));
    }
    let cols = w.cols;
    // Dense tiles pay one conversion per weight per call, so they win once it is spread over
    // enough tokens: at 4 for 16/32-bit weights, at 16 for quantized ones (which then also keep
    // the activations in f32 instead of rounding them to 8 bits).
    let dense = matches!(
        w.dtype,
        WeightType::F32 | WeightType::F16 | WeightType::BF16
    );
    // bf16 tiles for prompts on weights that have at most bf16's precision already (BF16) or
    // are quantized; F32 and F16 weights keep exact f32 products.
    #[cfg(target_arch = "x86_64")]
    if amx_applies(caps, w, n) {
        let acts = AmxActs::new(pool, x, n, w.cols, w.packed);
        return amx_tiles(pool, caps, w, None, &acts, out);
    }
    #[cfg(target_arch = "x86_64")]
    if caps.avx512bf16
        && n >= 16
        && !(w.packed && w.cols >= PACKED_VNNI_PROMPT_COLS)
        && w.cols.is_multiple_of(32)
        && !matches!(w.dtype, WeightType::F32 | WeightType::F16)
    {
        return bf16_tiles(pool, w, x, n, out);
    }
    if caps.avx2 && !w.packed && ((dense && n >= 4) || (!dense && n >= 16)) {
        return dense_tiles(pool, caps, w, x, n, out);
    }
    if w.packed {
        return matmul_packed(pool, caps, w, x, n, out);
    }
    match w.dtype {
        WeightType::F32 => par_rows(pool, w.rows, n, out, |r, t| {
            dot::dot_f32_bytes(caps, w.row(r), &x[t * cols..(t + 1) * cols])
        }),
        #[cfg(target_arch = "x86_64")]
        WeightType::F16 if n == 1 && f16_decodable(caps, w) => {
            f16_decode(pool, caps, &[(w, SyncPtr(out.as_mut_ptr()))], x)
        }
        WeightType::F16 => par_rows(pool, w.rows, n, out, |r, t| {
            dot::dot_f16(caps, w.row(r), &x[t * cols..(t + 1) * cols])
        }),
        WeightType::BF16 => par_rows(pool, w.rows, n, out, |r, t| {
            dot::dot_bf16(caps, w.row(r), &x[t * cols..(t + 1) * cols])
        }),
        WeightType::Q8_0 | WeightType::Q4_0 => {
            let nb = cols / QK;
            let xq = quantize_q8(pool, caps, x, n, cols, ActQuant::of(w.dtype));
            let q4 = w.dtype == WeightType::Q4_0;
            #[cfg(target_arch = "x86_64")]
            if caps.avx512vnni {
                par_rows4(
                    pool,
                    w,
                    n,
                    out,
                    |r, t| {
                        let xs = &xq[t * nb..(t + 1) * nb];
                        let p = w.data[r * w.row_bytes()..].as_ptr();
                        // SAFETY: par_rows4 hands out r with r + 4 <= rows; detected features.
                        unsafe {
                            if q4 {
                                super::x86::dot4_q4_0_vnni(p, w.row_bytes(), xs)
                            } else {
                                super::x86::dot4_q8_0_vnni(p, w.row_bytes(), xs)
                            }
                        }
                    },
                    |r, t| {
                        let xs = &xq[t * nb..(t + 1) * nb];
                        if q4 {
                            dot::dot_q4_0(caps, w.row(r), xs)
                        } else {
                            dot::dot_q8_0(caps, w.row(r), xs)
                        }
                    },
                );
                return Ok(());
            }
            par_rows(pool, w.rows, n, out, |r, t| {
                let xs = &xq[t * nb..(t + 1) * nb];
                if q4 {
                    dot::dot_q4_0(caps, w.row(r), xs)
                } else {
                    dot::dot_q8_0(caps, w.row(r), xs)
                }
            })
        }
        WeightType::Q4_1 => matmul_ggml::<k_quants::BlockQ4_1>(pool, w, x, n, out)?,
        WeightType::Q5_0 => matmul_ggml::<k_quants::BlockQ5_0>(pool, w, x, n, out)?,
        WeightType::Q5_1 => matmul_ggml::<k_quants::BlockQ5_1>(pool, w, x, n, out)?,
        WeightType::Q2K => matmul_ggml::<k_quants::BlockQ2K>(pool, w, x, n, out)?,
        WeightType::Q3K => matmul_ggml::<k_quants::BlockQ3K>(pool, w, x, n, out)?,
        WeightType::Q4K => matmul_ggml::<k_quants::BlockQ4K>(pool, w, x, n, out)?,
        WeightType::Q5K => matmul_ggml::<k_quants::BlockQ5K>(pool, w, x, n, out)?,
        WeightType::Q6K => matmul_ggml::<k_quants::BlockQ6K>(pool, w, x, n, out)?,
        WeightType::IQ4_NL | WeightType::IQ4_XS => matmul_dequant(pool, caps, w, x, n, out)?,
        other => {
            return Err(format!(
                "{other:?} weights cannot be used in a matrix product"
            ));
        }
    }
    Ok(())
}
