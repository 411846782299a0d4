//! `out = x · Wᵀ` for a weight matrix in any stored format, split over the thread pool by rows.
//! One code path serves decode (one activation row) and prefill (many).

use crate::WeightType;
use candle_core::quantized::k_quants::{self, GgmlType};
use rayon::prelude::*;

use super::dequant::as_blocks;
use super::threads::Threads;
use super::{ActQuant, BlockQ8, CpuCaps, QK, dot, quantize_row_q8};

mod tiles;

use tiles::*;

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
            #[cfg(target_arch = "x86_64")]
            if caps.avx2 {
                // SAFETY: run-time detected features.
                return unsafe { super::x86::quantize_row_q8k(xr, qr) };
            }
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
    #[cfg(target_arch = "x86_64")]
    if caps.avx2 {
        let acts = packed_acts(pool, caps, w.dtype, x, n, w.cols);
        return packed_products(pool, caps, w, &acts, n, out);
    }
    let nb = w.cols / QK;
    let xq = quantize_q8(pool, caps, x, n, w.cols, ActQuant::of(w.dtype));
    par_rows(pool, w.rows, n, out, |r, t| {
        super::packed::dot_row(w.dtype, w.row(r), &xq[t * nb..(t + 1) * nb])
    });
    Ok(())
}

/// `n` tokens' activations as the packed kernels read them for rows of `dtype`: quantized as
/// ggml does for that type, laid out per superblock, and padded with zero tokens to the tiles'
/// whole groups (four for the VNNI tiles, eight for the AVX2 ones).
#[cfg(target_arch = "x86_64")]
fn packed_acts(
    pool: &Threads,
    caps: CpuCaps,
    dtype: WeightType,
    x: &[f32],
    n: usize,
    cols: usize,
) -> Vec<super::packed::PackedActs> {
    use super::packed::{self, PackedActs};
    let nb = cols / QK;
    let xq = quantize_q8(pool, caps, x, n, cols, ActQuant::of(dtype));
    let lay = |b: &[BlockQ8]| PackedActs::new(b, dtype);
    let mut acts: Vec<PackedActs> = if n >= 16 {
        // On every thread: laid out on the calling one alone, a prompt's activations were a
        // fixed cost of each product that a short matrix's few rows did not amortize.
        pool.install(|| xq.par_chunks_exact(nb).map(lay).collect())
    } else {
        xq.chunks_exact(nb).map(lay).collect()
    };
    let group = match n {
        1 => 1,
        _ if caps.avx512vnni => 4,
        n if n >= 4 => 8,
        _ => 1,
    };
    acts.resize(
        n.div_ceil(group) * group,
        PackedActs::zeros(packed::superblocks(cols)),
    );
    acts
}

/// The products of packed rows with activations from [`packed_acts`] (for `w.dtype`).
#[cfg(target_arch = "x86_64")]
fn packed_products(
    pool: &Threads,
    caps: CpuCaps,
    w: &QMatrix<'_>,
    acts: &[super::packed::PackedActs],
    n: usize,
    out: &mut [f32],
) -> Result<(), String> {
    let nb = w.cols / QK;
    let layout = super::packed::Layout::of(w.dtype)
        .ok_or_else(|| format!("{:?} has no packed layout", w.dtype))?;
    if n == 1 {
        let mats = [(w, SyncPtr(out.as_mut_ptr()))];
        packed_decode(pool, caps, &mats, &acts[0], layout, nb);
    } else if caps.avx512vnni {
        tiles_packed(pool, true, w, acts, n, layout, nb, out);
    } else if n >= 4 {
        tiles_packed(pool, false, w, acts, n, layout, nb, out);
    } else {
        // The activations padded to the tiles' groups of tokens: the first `n` are the tokens.
        packed_tokens_avx2(pool, w, &acts[..n], layout, nb, out);
    }
    Ok(())
}

/// Whether a prompt on packed nibble rows (Q4_0, Q4_1, Q4_K) takes the f32 tiles on AVX2 alone:
/// the 8-bit tile widens a row's tail to a whole half superblock (8 blocks), and where that
/// more than doubles the row's work (rows of 3 blocks and fewer) the f32 tiles, which take
/// tails as they are, are the faster (docs/benchmarks.md, "The AVX2 prompt tiles' tails and
/// sums").
pub fn nibbles_on_f32_tiles(caps: CpuCaps, w: &QMatrix<'_>) -> bool {
    let nibbles = super::packed::Layout::of(w.dtype).is_some_and(|l| l.nibbles() && !l.grid());
    let blocks = w.cols / QK;
    let padded = match blocks % 16 {
        0 => blocks,
        t => blocks - t + if t <= 8 { 8 } else { 16 },
    };
    !caps.avx512vnni && nibbles && padded > 2 * blocks
}

/// Whether the AVX2 decode kernel may read [`super::x86::TAIL_SLACK`] bytes past byte `end`
/// of `w`'s data (the end of the rows it is given).
#[cfg(target_arch = "x86_64")]
fn slack_after(w: &QMatrix<'_>, end: usize) -> bool {
    w.data.len() >= end + super::x86::TAIL_SLACK
}

/// Where `part`, a slice of `w`'s data, starts in it.
#[cfg(target_arch = "x86_64")]
fn offset_in(w: &QMatrix<'_>, part: &[u8]) -> usize {
    part.as_ptr() as usize - w.data.as_ptr() as usize
}

/// Two or three tokens on packed rows with AVX2 (four and more take the tiles): the decode
/// kernel once per token on each group of four rows, while those rows are in cache.
#[cfg(target_arch = "x86_64")]
fn packed_tokens_avx2(
    pool: &Threads,
    w: &QMatrix<'_>,
    acts: &[super::packed::PackedActs],
    layout: super::packed::Layout,
    blocks: usize,
    out: &mut [f32],
) {
    use super::x86::{L_I4, L_I4K, L_Q2, L_Q3, L_Q4, L_Q4K, L_Q4M, L_Q5, L_Q5K, L_Q5M, L_Q6, L_Q8};
    fn run<const L: u8>(
        pool: &Threads,
        w: &QMatrix<'_>,
        acts: &[super::packed::PackedActs],
        blocks: usize,
        out: &mut [f32],
    ) {
        // SAFETY (both): rows below `w.rows` hold packed rows of `blocks` blocks (checked by the
        // caller's `check`), each token's activations 512 quants and 16 factors per
        // superblock; avx2 detected by the caller.
        par_rows4(
            pool,
            w,
            acts.len(),
            out,
            |r, t| {
                let a = &acts[t];
                unsafe {
                    super::x86::dot4_packed_avx2::<L>(
                        w.row(r).as_ptr(),
                        w.row_bytes(),
                        blocks,
                        a.qs.as_ptr(),
                        a.d.as_ptr(),
                        [a.so.as_ptr(), a.so2.as_ptr()],
                        slack_after(w, (r + 4) * w.row_bytes()),
                    )
                }
            },
            |r, t| {
                let a = &acts[t];
                unsafe {
                    super::x86::dot_packed_avx2::<L>(
                        w.row(r).as_ptr(),
                        blocks,
                        a.qs.as_ptr(),
                        a.d.as_ptr(),
                        [a.so.as_ptr(), a.so2.as_ptr()],
                        slack_after(w, (r + 1) * w.row_bytes()),
                    )
                }
            },
        );
    }
    match super::x86::layout_code(layout) {
        L_Q4 => run::<L_Q4>(pool, w, acts, blocks, out),
        L_Q8 => run::<L_Q8>(pool, w, acts, blocks, out),
        L_Q4M => run::<L_Q4M>(pool, w, acts, blocks, out),
        L_Q6 => run::<L_Q6>(pool, w, acts, blocks, out),
        L_Q3 => run::<L_Q3>(pool, w, acts, blocks, out),
        L_Q2 => run::<L_Q2>(pool, w, acts, blocks, out),
        L_Q4K => run::<L_Q4K>(pool, w, acts, blocks, out),
        L_Q5K => run::<L_Q5K>(pool, w, acts, blocks, out),
        L_I4K => run::<L_I4K>(pool, w, acts, blocks, out),
        L_Q5 => run::<L_Q5>(pool, w, acts, blocks, out),
        L_I4 => run::<L_I4>(pool, w, acts, blocks, out),
        _ => run::<L_Q5M>(pool, w, acts, blocks, out),
    }
}

/// One token against one or more matrices of the same type and width (Q, K and V; gate and
/// up) in a single parallel region: the rows of all of them, four at a time, are one list of
/// work, so the threads meet once per group instead of once per matrix, and the small K and V
/// matrices do not leave a thread idle at their end. `f4(w, rows, row_bytes)` computes four
/// consecutive rows of `w` (`rows` holds their bytes), `f1(w, row)` one row of a last partial
/// group. The row length is worked out once per matrix, not per group.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn decode_rows(
    pool: &Threads,
    mats: &[(&QMatrix<'_>, SyncPtr)],
    f4: impl Fn(&QMatrix<'_>, &[u8], usize) -> [f32; 4] + Sync,
    f1: impl Fn(&QMatrix<'_>, &[u8]) -> f32 + Sync,
) {
    let quads: Vec<usize> = mats.iter().map(|(w, _)| w.rows.div_ceil(4)).collect();
    let total: usize = quads.iter().sum();
    let (per_task, tasks) = decode_split(total, pool.current_num_threads());
    let run = |ti: usize| {
        let task = ti * per_task..((ti + 1) * per_task).min(total);
        for (i, groups) in groups_of(&quads, task) {
            let (w, out) = &mats[i];
            let rb = w.row_bytes();
            for g in groups {
                let r0 = 4 * g;
                // SAFETY: each output row is written by the one task that owns its group of
                // four, and every row index is below `w.rows`, the length of `out`.
                unsafe {
                    if r0 + 4 <= w.rows {
                        let v = f4(w, &w.data[r0 * rb..(r0 + 4) * rb], rb);
                        std::ptr::copy_nonoverlapping(v.as_ptr(), out.0.add(r0), 4);
                    } else {
                        for r in r0..w.rows {
                            *out.0.add(r) = f1(w, &w.data[r * rb..(r + 1) * rb]);
                        }
                    }
                }
            }
        }
    };
    // One token's regions are short and many: the spinning team, not the rayon pool.
    pool.run_reading_ahead(tasks, &run);
}

/// The groups `range` covers of matrices of `quads` groups each, numbered across all of them:
/// each matrix it reaches with its own group numbers there.
fn groups_of(
    quads: &[usize],
    range: std::ops::Range<usize>,
) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> + '_ {
    quads
        .iter()
        .scan(0, |base, &nq| {
            let b = *base;
            *base += nq;
            Some((b, nq))
        })
        .enumerate()
        .filter_map(move |(i, (base, nq))| {
            let (lo, hi) = (range.start.max(base), range.end.min(base + nq));
            (lo < hi).then(|| (i, lo - base..hi - base))
        })
}

/// How [`decode_rows`] deals `total` groups of four rows to `threads` threads: groups per task,
/// and tasks. Small tasks let the faster thread take more when the other is interrupted (the
/// machine is shared), without paying much per task.
fn decode_split(total: usize, threads: usize) -> (usize, usize) {
    let per_task = total.div_ceil(threads.max(1) * 8).max(4);
    (per_task, total.div_ceil(per_task))
}

/// Where each member of `pool`'s team starts reading when [`matmul_many`] multiplies one token
/// by `ws`: the first bytes of its share of the first parallel region, for
/// [`Threads::read_ahead`]. Empty where that product would not run on `decode_rows`.
#[cfg(target_arch = "x86_64")]
pub fn decode_fronts(
    pool: &Threads,
    caps: CpuCaps,
    ws: &[&QMatrix<'_>],
) -> Vec<super::threads::Spans> {
    let Some(w0) = ws.first() else {
        return Vec::new();
    };
    // `matmul_many`'s choice: one region for packed matrices of one layout and width, or for
    // F16/BF16 ones; else one product per matrix, of which the first comes next.
    let together = packed_together(caps, ws) || ws.iter().all(|w| half_decodable(caps, w));
    let mats: &[&QMatrix<'_>] = if together { ws } else { &ws[..1] };
    if !(packed_together(caps, &ws[..1]) || half_decodable(caps, w0)) {
        return Vec::new();
    }
    let quads: Vec<usize> = mats.iter().map(|w| w.rows.div_ceil(4)).collect();
    let total: usize = quads.iter().sum();
    let (per_task, tasks) = decode_split(total, pool.current_num_threads());
    let members = pool.members();
    (0..members)
        .map(|m| {
            let mine = super::threads::share(tasks, m, members);
            let groups = mine.start * per_task..(mine.end * per_task).min(total);
            let mut spans = [(0usize, 0usize); 4];
            for (span, (i, g)) in spans.iter_mut().zip(groups_of(&quads, groups)) {
                let (w, rb) = (mats[i], mats[i].row_bytes());
                let (r0, r1) = (4 * g.start, (4 * g.end).min(w.rows));
                *span = (w.data[r0 * rb..].as_ptr() as usize, (r1 - r0) * rb);
            }
            spans
        })
        .collect()
}

/// Nothing to read ahead off x86-64: [`decode_rows`] does not run there.
#[cfg(not(target_arch = "x86_64"))]
pub fn decode_fronts(
    _pool: &Threads,
    _caps: CpuCaps,
    _ws: &[&QMatrix<'_>],
) -> Vec<super::threads::Spans> {
    Vec::new()
}

/// [`decode_rows`] with the packed kernels (VNNI, or AVX2 alone; the caller checked AVX2).
#[cfg(target_arch = "x86_64")]
fn packed_decode(
    pool: &Threads,
    caps: CpuCaps,
    mats: &[(&QMatrix<'_>, SyncPtr)],
    a: &super::packed::PackedActs,
    layout: super::packed::Layout,
    blocks: usize,
) {
    use super::x86::{L_I4, L_I4K, L_Q2, L_Q3, L_Q4, L_Q4K, L_Q4M, L_Q5, L_Q5K, L_Q5M, L_Q6, L_Q8};
    // The layout is a constant of each kernel: with it a run-time value, the kernel's offsets
    // and prefetch loop were computed per superblock, which cost 7% of Q4_0's streaming rate.
    match super::x86::layout_code(layout) {
        L_Q4 => packed_decode_as::<L_Q4>(pool, caps, mats, a, blocks),
        L_Q8 => packed_decode_as::<L_Q8>(pool, caps, mats, a, blocks),
        L_Q4M => packed_decode_as::<L_Q4M>(pool, caps, mats, a, blocks),
        L_Q6 => packed_decode_as::<L_Q6>(pool, caps, mats, a, blocks),
        L_Q3 => packed_decode_as::<L_Q3>(pool, caps, mats, a, blocks),
        L_Q2 => packed_decode_as::<L_Q2>(pool, caps, mats, a, blocks),
        L_Q4K => packed_decode_as::<L_Q4K>(pool, caps, mats, a, blocks),
        L_Q5K => packed_decode_as::<L_Q5K>(pool, caps, mats, a, blocks),
        L_I4K => packed_decode_as::<L_I4K>(pool, caps, mats, a, blocks),
        L_Q5 => packed_decode_as::<L_Q5>(pool, caps, mats, a, blocks),
        L_I4 => packed_decode_as::<L_I4>(pool, caps, mats, a, blocks),
        _ => packed_decode_as::<L_Q5M>(pool, caps, mats, a, blocks),
    }
}

#[cfg(target_arch = "x86_64")]
fn packed_decode_as<const L: u8>(
    pool: &Threads,
    caps: CpuCaps,
    mats: &[(&QMatrix<'_>, SyncPtr)],
    a: &super::packed::PackedActs,
    blocks: usize,
) {
    if !caps.avx512vnni {
        return decode_rows(
            pool,
            mats,
            // SAFETY (both): as below, with avx2 detected by the caller.
            |w, rows, rb| unsafe {
                super::x86::dot4_packed_avx2::<L>(
                    rows.as_ptr(),
                    rb,
                    blocks,
                    a.qs.as_ptr(),
                    a.d.as_ptr(),
                    [a.so.as_ptr(), a.so2.as_ptr()],
                    slack_after(w, offset_in(w, rows) + 4 * rb),
                )
            },
            |w, row| unsafe {
                super::x86::dot_packed_avx2::<L>(
                    row.as_ptr(),
                    blocks,
                    a.qs.as_ptr(),
                    a.d.as_ptr(),
                    [a.so.as_ptr(), a.so2.as_ptr()],
                    slack_after(w, offset_in(w, row) + row.len()),
                )
            },
        );
    }
    let ahead = if L == super::x86::L_Q8 {
        caps.ahead.bytes
    } else {
        caps.ahead.narrow
    };
    decode_rows(
        pool,
        mats,
        // SAFETY (both): rows below `w.rows` hold packed rows of `blocks` blocks (checked by
        // `check`), the activations 512 quants and 16 factors per superblock; features
        // detected by the caller.
        |_, rows, rb| unsafe {
            super::x86::dot4_packed_vnni::<L>(
                rows.as_ptr(),
                rb,
                blocks,
                a.qs.as_ptr(),
                a.d.as_ptr(),
                [a.so.as_ptr(), a.so2.as_ptr()],
                ahead,
            )
        },
        |_, row| unsafe {
            super::x86::dot_packed_vnni::<L>(
                row.as_ptr(),
                blocks,
                a.qs.as_ptr(),
                a.d.as_ptr(),
                [a.so.as_ptr(), a.so2.as_ptr()],
                ahead,
            )
        },
    );
}

/// [`decode_rows`] for F16 and BF16 weights (`cols` a multiple of 16): one token's products on
/// the spinning team, as for the packed types, rather than the rayon pool's rows, which left
/// BF16 far under the bandwidth cap (docs/benchmarks.md, "BF16 decode"), with AVX-512 or with
/// AVX2 alone.
#[cfg(target_arch = "x86_64")]
fn half_decode(pool: &Threads, caps: CpuCaps, mats: &[(&QMatrix<'_>, SyncPtr)], x: &[f32]) {
    let one = |w: &QMatrix<'_>, row: &[u8]| {
        if w.dtype == WeightType::BF16 {
            dot::dot_bf16(caps, row, x)
        } else {
            dot::dot_f16(caps, row, x)
        }
    };
    if !caps.avx512vnni {
        return decode_rows(
            pool,
            mats,
            // SAFETY: as below, with avx2, fma and f16c detected by the caller.
            |w, rows, rb| unsafe {
                if w.dtype == WeightType::BF16 {
                    super::x86::dot4_half_avx2::<true>(rows.as_ptr(), rb, x)
                } else {
                    super::x86::dot4_half_avx2::<false>(rows.as_ptr(), rb, x)
                }
            },
            one,
        );
    }
    decode_rows(
        pool,
        mats,
        // SAFETY: `rows` holds four rows (`decode_rows`) of `x.len()` 2-byte values of the
        // matrix's type (checked by `check` and the shape checks, F16 or BF16 by
        // `half_decodable`), avx512f detected by the caller.
        |w, rows, rb| unsafe {
            if w.dtype == WeightType::BF16 {
                super::x86::dot4_half_avx512::<true>(rows.as_ptr(), rb, x, caps.ahead.half)
            } else {
                super::x86::dot4_half_avx512::<false>(rows.as_ptr(), rb, x, caps.ahead.half)
            }
        },
        one,
    );
}

/// Whether [`half_decode`] applies to a matrix.
#[cfg(target_arch = "x86_64")]
fn half_decodable(caps: CpuCaps, w: &QMatrix<'_>) -> bool {
    caps.avx2 && matches!(w.dtype, WeightType::F16 | WeightType::BF16) && w.cols.is_multiple_of(16)
}

/// Whether one token's products by `ws` (at least one) run as one packed region: packed
/// matrices of one layout and width, on a processor with the packed kernels.
#[cfg(target_arch = "x86_64")]
fn packed_together(caps: CpuCaps, ws: &[&QMatrix<'_>]) -> bool {
    caps.avx2
        && ws.first().is_some_and(|w0| {
            ws.iter()
                .all(|w| w.packed && same_layout(w, w0) && w.cols == w0.cols)
        })
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
        && packed_together(caps, ws)
        && x.len() == w0.cols
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
        packed_decode(pool, caps, &mats, &act, layout, w0.cols / QK);
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if !ws.is_empty()
        && ws
            .iter()
            .zip(outs.iter())
            .all(|(w, o)| half_decodable(caps, w) && x.len() == w.cols && o.len() == w.rows)
    {
        for w in ws {
            w.check()?;
        }
        let mats: Vec<(&QMatrix<'_>, SyncPtr)> = ws
            .iter()
            .zip(outs.iter_mut())
            .map(|(w, o)| (*w, SyncPtr(o.as_mut_ptr())))
            .collect();
        half_decode(pool, caps, &mats, x);
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
    // A prompt on packed rows of one type: the activations are quantized and laid out once.
    #[cfg(target_arch = "x86_64")]
    if let Some(w0) = ws.first() {
        let n = x.len() / w0.cols.max(1);
        if ws.len() > 1
            && n > 1
            && caps.avx2
            && x.len() == n * w0.cols
            && ws.iter().all(|w| {
                w.dtype == w0.dtype && w.cols == w0.cols && route(caps, w, n) == Route::Packed
            })
        {
            for (w, o) in ws.iter().zip(outs.iter()) {
                check_product(w, x, n, o)?;
            }
            let acts = packed_acts(pool, caps, w0.dtype, x, n, w0.cols);
            for (w, o) in ws.iter().zip(outs.iter_mut()) {
                packed_products(pool, caps, w, &acts, n, o)?;
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

/// From this width up, prompts on packed rows run on the 8-bit VNNI tiles rather than the bf16
/// ones (AVX-512 BF16 without AMX): on narrower rows the 2×4 tiles' per-superblock work weighs
/// more than the bf16 tiles' conversion (docs/benchmarks.md, "Prompt tiles on Zen 4").
pub const PACKED_VNNI_PROMPT_COLS: usize = 1536;

/// Rows from half that width take the VNNI tiles as well in matrices of at least this many
/// rows (Qwen2.5-0.5B's 4864×896 gate and up): a product's fixed work, the activations'
/// quantization and the tasks' start, is spread over enough rows there, and not over the
/// 128 or 896 of its K, V, Q and output matrices (docs/benchmarks.md, "VNNI prompt tiles on
/// 896-wide rows").
pub const PACKED_VNNI_PROMPT_ROWS: usize = 2048;

/// Whether a prompt on these packed rows runs on the 8-bit VNNI tiles rather than the bf16
/// ones (AVX-512 BF16 without AMX).
pub fn vnni_prompt_rows(w: &QMatrix<'_>) -> bool {
    w.cols >= PACKED_VNNI_PROMPT_COLS
        || (w.cols >= PACKED_VNNI_PROMPT_COLS / 2 && w.rows >= PACKED_VNNI_PROMPT_ROWS)
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

/// Which kernel [`matmul`] runs `n` tokens on `w` with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// AMX tiles on bf16 (prompts).
    #[cfg(target_arch = "x86_64")]
    Amx,
    /// AVX-512 bf16 tiles (prompts).
    #[cfg(target_arch = "x86_64")]
    Bf16Tiles,
    /// f32 tiles on rows converted once per call (prompts).
    DenseTiles,
    /// The packed kernels on 8-bit activations ([`matmul_packed`]).
    Packed,
    /// One product per row and token in the weights' own format.
    Rows,
}

fn route(caps: CpuCaps, w: &QMatrix<'_>, n: usize) -> Route {
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
        return Route::Amx;
    }
    #[cfg(target_arch = "x86_64")]
    if caps.avx512bf16
        && n >= 16
        && !(w.packed && vnni_prompt_rows(w))
        && w.cols.is_multiple_of(32)
        && !matches!(w.dtype, WeightType::F32 | WeightType::F16)
    {
        return Route::Bf16Tiles;
    }
    if caps.avx2
        && (!w.packed || nibbles_on_f32_tiles(caps, w))
        && ((dense && n >= 4) || (!dense && n >= 16))
    {
        return Route::DenseTiles;
    }
    if w.packed {
        return Route::Packed;
    }
    Route::Rows
}

/// The matrix is well formed and `x`, `out` hold `n` rows of its columns and of its rows.
fn check_product(w: &QMatrix<'_>, x: &[f32], n: usize, out: &[f32]) -> Result<(), String> {
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
    Ok(())
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
    check_product(w, x, n, out)?;
    let cols = w.cols;
    match route(caps, w, n) {
        #[cfg(target_arch = "x86_64")]
        Route::Amx => {
            let acts = AmxActs::new(pool, x, n, w.cols, w.packed);
            return amx_tiles(pool, caps, w, None, &acts, out);
        }
        #[cfg(target_arch = "x86_64")]
        Route::Bf16Tiles => return bf16_tiles(pool, w, x, n, out),
        Route::DenseTiles => return dense_tiles(pool, caps, w, x, n, out),
        Route::Packed => return matmul_packed(pool, caps, w, x, n, out),
        Route::Rows => {}
    }
    match w.dtype {
        WeightType::F32 => par_rows(pool, w.rows, n, out, |r, t| {
            dot::dot_f32_bytes(caps, w.row(r), &x[t * cols..(t + 1) * cols])
        }),
        #[cfg(target_arch = "x86_64")]
        WeightType::F16 | WeightType::BF16 if n == 1 && half_decodable(caps, w) => {
            half_decode(pool, caps, &[(w, SyncPtr(out.as_mut_ptr()))], x)
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
