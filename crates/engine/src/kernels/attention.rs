//! Causal grouped-query attention on the CPU.
//!
//! The key cache is stored transposed in blocks of [`KB`] positions (`[block][kv_dim][KB]`), so
//! the scores of several query rows against 16 keys are 16-wide FMAs with the query element
//! broadcast, without a horizontal sum per key (the old per-key dot products plus a scalar
//! `exp` per score took about a quarter of a 512-token prompt). Values stay position-major
//! (`[pos][kv_dim]`): the weighted sum reads one value row per key for all query rows at once.
//!
//! Work is split by KV head and blocks of `RB` query rows, a row being one (token, head of
//! the group) pair: the heads that share a KV head read its keys and values once per block
//! instead of once each, in decode as in prompts. In decode, where that leaves fewer tasks than
//! threads or a count that does not divide over them, each head's keys are also split into
//! ranges, and the ranges' partial softmaxes (maximum, sum, unnormalised output) are merged.

use rayon::prelude::*;

use super::CpuCaps;
use super::kvbuf::{KvBuf, KvElem};

/// Positions per block of the transposed key cache.
pub const KB: usize = 16;
/// Query rows computed together.
const RB: usize = 8;

/// Floats the key cache holds for `len` positions.
pub fn key_cache_len(len: usize, kv_dim: usize) -> usize {
    len.div_ceil(KB) * KB * kv_dim
}

/// Writes `keys` (`[n][kv_dim]`, position-major) at positions `len..len+n` of a blocked key
/// cache whose first `len` positions are valid; the cache is cut or grown to fit exactly.
pub fn append_keys<T: KvElem>(cache: &mut KvBuf<T>, len: usize, keys: &[f32], kv_dim: usize) {
    let n = keys.len() / kv_dim.max(1);
    // Lanes past the end of the last block hold stale or zero keys; they are never attended to
    // (every row masks keys beyond its position) but must be finite, which both are.
    cache.resize(key_cache_len(len + n, kv_dim));
    for (i, key) in keys.chunks_exact(kv_dim).enumerate() {
        let p = len + i;
        let (b, lane) = (p / KB, p % KB);
        let base = b * kv_dim * KB + lane;
        for (c, &v) in key.iter().enumerate() {
            cache[base + c * KB] = T::from_f32(v);
        }
    }
}

/// The key of position `p` from a blocked cache (tests and diagnostics).
pub fn key_at<T: KvElem>(cache: &[T], p: usize, kv_dim: usize) -> Vec<f32> {
    let (b, lane) = (p / KB, p % KB);
    (0..kv_dim)
        .map(|c| cache[b * kv_dim * KB + c * KB + lane].to_f32())
        .collect()
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: every task writes a disjoint set of output rows.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

/// Shapes of one call.
#[derive(Clone, Copy)]
struct Dims {
    pos: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Dims {
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
    fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
    /// Token and head of row `r` of KV head `kvh`, and the keys it may see.
    fn row(&self, kvh: usize, r: usize) -> (usize, usize, usize) {
        let (t, g) = (r / self.group(), r % self.group());
        (t, kvh * self.group() + g, self.pos + t + 1)
    }
}

/// Whether [`attention`] takes a SIMD kernel (AVX-512, or AVX2 with FMA and F16C) for these
/// kernels and head size, else the portable one.
pub fn simd(caps: CpuCaps, head_dim: usize) -> bool {
    (caps.avx512vnni || caps.avx2) && head_dim.is_multiple_of(16)
}

/// Causal grouped-query attention of `n` new queries (absolute positions `pos..pos+n`) over a
/// blocked key cache and a position-major value cache holding `pos + n` positions.
#[allow(clippy::too_many_arguments)]
pub fn attention<T: KvElem>(
    pool: &super::threads::Threads,
    caps: CpuCaps,
    q: &[f32],
    k_cache: &[T],
    v_cache: &[T],
    n: usize,
    pos: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    out: &mut [f32],
) {
    let d = Dims {
        pos,
        heads,
        kv_heads,
        head_dim,
    };
    assert!(heads.is_multiple_of(kv_heads) && kv_heads > 0);
    assert!(q.len() >= n * d.q_dim() && out.len() >= n * d.q_dim());
    assert!(k_cache.len() >= key_cache_len(pos + n, d.kv_dim()));
    assert!(v_cache.len() >= (pos + n) * d.kv_dim());
    let rows = n * d.group();
    let blocks = rows.div_ceil(RB);
    let threads = pool.current_num_threads();
    // Decode has one block of rows per KV head: 3 tasks for SmolLM2's 3 KV heads on 2 threads
    // left a thread idle a third of the time. Splitting each head's keys into ranges whose
    // partial softmaxes are merged afterwards makes the task count a multiple of the threads.
    let chunks = if n == 1 && threads > 1 {
        key_ranges(kv_heads * blocks, threads, (pos + 1).div_ceil(KB))
    } else {
        1
    };
    let tasks = kv_heads * blocks * chunks;
    let simd = simd(caps, head_dim);
    // Per task: each row's running maximum and sum, then its unnormalised output.
    let part_len = RB * (2 + head_dim);
    let mut parts = if chunks > 1 {
        vec![0f32; tasks * part_len]
    } else {
        Vec::new()
    };
    let parts_ptr = SyncPtr(parts.as_mut_ptr());
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let run = |scratch: &mut Vec<f32>, task: usize| {
        // Key ranges outermost: the team deals each member a contiguous run of tasks, so a
        // member takes every head of the same positions, whose keys and values are neighbours
        // in the caches (the hardware prefetcher's lines past one head's are the next one's).
        let (c, rest) = (task / (kv_heads * blocks), task % (kv_heads * blocks));
        let (kvh, b) = (rest / blocks, rest % blocks);
        // Where the task's partial softmax goes: `merge_ranges` reads them head by head.
        let slot = (kvh * blocks + b) * chunks + c;
        let r0 = b * RB;
        let live = (rows - r0).min(RB);
        let rs: [usize; RB] = std::array::from_fn(|i| (r0 + i).min(rows - 1));
        let rs = &rs[..live];
        let end = rs
            .iter()
            .map(|&r| d.row(kvh, r).2)
            .max()
            .unwrap_or(0)
            .div_ceil(KB);
        // Key blocks `c·end/chunks .. (c+1)·end/chunks`: near-equal ranges, none empty.
        let (kb0, kb1) = (c * end / chunks, (c + 1) * end / chunks);
        let (start, width) = (kb0 * KB, (kb1 - kb0) * KB);
        scratch.clear();
        scratch.resize(RB * width + RB * head_dim, 0.0);
        let (scores, acc) = scratch.split_at_mut(RB * width);
        let blk = Block {
            d: &d,
            q,
            k: k_cache,
            v: v_cache,
            kvh,
            rs,
            start,
            width,
            stream: n == 1,
        };
        let normalize = chunks == 1;
        let mut stats = [0f32; 2 * RB];
        #[cfg(target_arch = "x86_64")]
        if simd && !caps.avx512vnni {
            block_avx2_rows(&blk, scores, acc, &mut stats, normalize);
        } else if simd {
            // SAFETY: avx512f detected (implied by avx512vnni); the slices hold what the asserts
            // above checked, and head_dim is a multiple of 16.
            unsafe {
                if blk.stream {
                    block_avx512_rows::<T, true>(&blk, scores, acc, &mut stats, normalize)
                } else {
                    block_avx512_rows::<T, false>(&blk, scores, acc, &mut stats, normalize)
                }
            };
        } else {
            block_portable(&blk, scores, acc, &mut stats, normalize);
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = simd;
            block_portable(&blk, scores, acc, &mut stats, normalize);
        }
        if !normalize {
            let p = parts_ptr;
            // SAFETY: each task owns its `part_len` floats of `parts` (`slot` is a bijection
            // of `task`).
            unsafe {
                let dst = p.0.add(slot * part_len);
                std::ptr::copy_nonoverlapping(stats.as_ptr(), dst, 2 * live);
                std::ptr::copy_nonoverlapping(acc.as_ptr(), dst.add(2 * RB), live * head_dim);
            }
            return;
        }
        let p = out_ptr;
        for (i, &r) in rs.iter().enumerate() {
            let (t, h, _) = d.row(kvh, r);
            let o = t * d.q_dim() + h * head_dim;
            // SAFETY: (t, h) is a distinct row for every (kvh, r), and inside `out`.
            unsafe {
                std::ptr::copy_nonoverlapping(acc[i * head_dim..].as_ptr(), p.0.add(o), head_dim)
            };
        }
    };
    if tasks == 1 || threads == 1 {
        let mut scratch = Vec::new();
        (0..tasks).for_each(|t| run(&mut scratch, t));
    } else if n == 1 {
        // Decoding: the spinning team, like the matrix products around it.
        pool.run(tasks, &|t| run(&mut Vec::new(), t));
    } else {
        pool.install(|| {
            (0..tasks)
                .into_par_iter()
                .for_each_init(Vec::new, |s, t| run(s, t))
        });
    }
    if chunks > 1 {
        merge_ranges(&parts, &d, rows, blocks, chunks, part_len, out);
    }
}

/// How many key ranges to split each of `tasks` row blocks into so that the work divides evenly
/// over `threads`, keeping at least [`MIN_RANGE_BLOCKS`] key blocks per range.
fn key_ranges(tasks: usize, threads: usize, key_blocks: usize) -> usize {
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let even = threads / gcd(tasks, threads);
    even.min(key_blocks / MIN_RANGE_BLOCKS).max(1)
}

/// Key blocks below which a range is not split off: merging costs a pass over the outputs.
const MIN_RANGE_BLOCKS: usize = 4;

/// Combines each row's partial softmaxes over its key ranges into `out`: the ranges' outputs
/// weighted by `sum · e^(max − overall max)`, divided by the total of those sums.
fn merge_ranges(
    parts: &[f32],
    d: &Dims,
    rows: usize,
    blocks: usize,
    chunks: usize,
    part_len: usize,
    out: &mut [f32],
) {
    let hd = d.head_dim;
    for kvh in 0..d.kv_heads {
        for b in 0..blocks {
            let r0 = b * RB;
            let first = (kvh * blocks + b) * chunks;
            let part = |c: usize| &parts[(first + c) * part_len..][..part_len];
            for i in 0..(rows - r0).min(RB) {
                let m = (0..chunks)
                    .map(|c| part(c)[2 * i])
                    .fold(f32::NEG_INFINITY, f32::max);
                let (t, h, _) = d.row(kvh, r0 + i);
                let o = &mut out[t * d.q_dim() + h * hd..][..hd];
                o.fill(0.0);
                let mut total = 0.0;
                for c in 0..chunks {
                    let p = part(c);
                    let wc = (p[2 * i] - m).exp();
                    total += p[2 * i + 1] * wc;
                    for (x, y) in o.iter_mut().zip(&p[2 * RB + i * hd..][..hd]) {
                        *x += wc * y;
                    }
                }
                let inv = 1.0 / total;
                o.iter_mut().for_each(|x| *x *= inv);
            }
        }
    }
}

/// The inputs of one block of query rows.
#[derive(Clone, Copy)]
struct Block<'a, T> {
    d: &'a Dims,
    q: &'a [f32],
    k: &'a [T],
    v: &'a [T],
    kvh: usize,
    /// The block's rows, at most [`RB`].
    rs: &'a [usize],
    /// The keys this call covers: `width` positions from `start`, both multiples of [`KB`].
    start: usize,
    width: usize,
    /// Decoding: the keys and values are read once, so the kernel asks for them ahead (a
    /// prompt's blocks of queries read them again and again from the caches).
    stream: bool,
}

impl<T: KvElem> Block<'_, T> {
    /// Each of the `R` rows' (token, head, keys it may see), and its query's first element.
    fn rows_and_queries<const R: usize>(&self) -> ([(usize, usize, usize); R], [*const f32; R]) {
        debug_assert_eq!(self.rs.len(), R);
        let (d, hd) = (self.d, self.d.head_dim);
        let rows: [(usize, usize, usize); R] = std::array::from_fn(|i| d.row(self.kvh, self.rs[i]));
        let qp = std::array::from_fn(|i| {
            self.q[rows[i].0 * d.q_dim() + rows[i].1 * hd..][..hd].as_ptr()
        });
        (rows, qp)
    }

    /// Key block `b` of this call (counted from `start`) for the block's KV head: `head_dim`
    /// runs of [`KB`] positions.
    fn key_block(&self, b: usize) -> *const T {
        let (hd, kv_dim) = (self.d.head_dim, self.d.kv_dim());
        self.k[(self.start / KB + b) * kv_dim * KB + self.kvh * hd * KB..][..hd * KB].as_ptr()
    }

    /// Keys the longest-seeing row attends to in this call.
    fn visible(&self, rows: &[(usize, usize, usize)]) -> usize {
        rows.iter()
            .map(|r| r.2.saturating_sub(self.start).min(self.width))
            .max()
            .unwrap_or(0)
    }
}

/// One block of rows in plain Rust: the reference the SIMD paths are tested against, and the
/// path of processors without AVX2 (or of head sizes that are not a multiple of 16).
fn block_portable<T: KvElem>(
    b: &Block<'_, T>,
    scores: &mut [f32],
    acc: &mut [f32],
    stats: &mut [f32; 2 * RB],
    normalize: bool,
) {
    let Block {
        d,
        q,
        k,
        v,
        kvh,
        rs,
        start,
        width,
        ..
    } = *b;
    let (hd, kv_dim) = (d.head_dim, d.kv_dim());
    let scale = 1.0 / (hd as f32).sqrt();
    for (i, &r) in rs.iter().enumerate() {
        let (t, h, lim) = d.row(kvh, r);
        let seen = lim.saturating_sub(start).min(width);
        let qr = &q[t * d.q_dim() + h * hd..][..hd];
        let s = &mut scores[i * width..][..seen];
        for (jj, sj) in s.iter_mut().enumerate() {
            let j = start + jj;
            let base = (j / KB) * kv_dim * KB + kvh * hd * KB + j % KB;
            let dot: f32 = qr
                .iter()
                .enumerate()
                .map(|(c, qv)| qv * k[base + c * KB].to_f32())
                .sum();
            *sj = dot * scale;
        }
        let m = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut sum = 0.0;
        for x in s.iter_mut() {
            *x = (*x - m).exp();
            sum += *x;
        }
        let o = &mut acc[i * hd..(i + 1) * hd];
        o.fill(0.0);
        for (jj, &p) in s.iter().enumerate() {
            let vr = &v[(start + jj) * kv_dim + kvh * hd..][..hd];
            for (o, vv) in o.iter_mut().zip(vr) {
                *o += p * vv.to_f32();
            }
        }
        stats[2 * i] = m;
        stats[2 * i + 1] = sum;
        if normalize {
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

#[cfg(target_arch = "x86_64")]
use super::x86::exp512;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// [`block_avx512`] for the block's row count, a constant of each instance: decode's block is
/// one group of heads (3 for SmolLM2, 6 for Qwen2.5-1.5B) rather than always [`RB`] rows.
///
/// # Safety
/// As for [`block_avx512`], but for the row count, which this call matches.
#[cfg(target_arch = "x86_64")]
unsafe fn block_avx512_rows<T: KvElem, const STREAM: bool>(
    blk: &Block<'_, T>,
    scores: &mut [f32],
    acc: &mut [f32],
    st: &mut [f32; 2 * RB],
    normalize: bool,
) {
    // SAFETY: each arm passes a block of exactly its `R` rows; the rest is the caller's.
    unsafe {
        match blk.rs.len() {
            1 => block_avx512::<T, 1, STREAM>(blk, scores, acc, st, normalize),
            2 => block_avx512::<T, 2, STREAM>(blk, scores, acc, st, normalize),
            3 => block_avx512::<T, 3, STREAM>(blk, scores, acc, st, normalize),
            4 => block_avx512::<T, 4, STREAM>(blk, scores, acc, st, normalize),
            5 => block_avx512::<T, 5, STREAM>(blk, scores, acc, st, normalize),
            6 => block_avx512::<T, 6, STREAM>(blk, scores, acc, st, normalize),
            7 => block_avx512::<T, 7, STREAM>(blk, scores, acc, st, normalize),
            _ => block_avx512::<T, RB, STREAM>(blk, scores, acc, st, normalize),
        }
    }
}

/// [`block_portable`] with AVX-512: scores 16 keys × `R` rows per pass over the head dimension
/// (two key blocks at a time, so the FMA chains hide the latency), a vector softmax, and the
/// weighted sum of 64 value columns (48 beyond four rows) at a time.
///
/// # Safety
/// AVX-512F must be available, `head_dim` a multiple of 16, the block must have `R` rows, and
/// the caches must hold every position the rows may see.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512<T: KvElem, const R: usize, const STREAM: bool>(
    blk: &Block<'_, T>,
    scores: &mut [f32],
    acc: &mut [f32],
    stats: &mut [f32; 2 * RB],
    normalize: bool,
) {
    let Block {
        d,
        v,
        kvh,
        start,
        width,
        ..
    } = *blk;
    let (hd, kv_dim) = (d.head_dim, d.kv_dim());
    let scale = _mm512_set1_ps(1.0 / (hd as f32).sqrt());
    let (rows, qp) = blk.rows_and_queries::<R>();
    let nblk = width / KB;
    let kbase = |b: usize| blk.key_block(b);
    let sp = scores.as_mut_ptr();
    // Decoding (`STREAM`), the head's key blocks are read once, a few kilobytes apart (the other
    // heads' blocks sit between them), which the hardware prefetcher follows poorly: each pass
    // over two blocks asks for the two blocks `KEY_AHEAD` further on, a line or two per step.
    // A prompt's blocks of queries read the same keys again from the caches, and its eight
    // rows' query pointers need the registers the prefetch would take.
    let (k_first, k_stride) = (kbase(0) as usize, kv_dim * KB * size_of::<T>());
    let lines = (hd * KB * size_of::<T>()).div_ceil(64);
    let per_step = (2 * lines).div_ceil(hd);
    // SAFETY (whole body): pointers are derived from slices whose bounds were checked above or
    // by the caller; every offset stays inside them (a prefetch's address need not: it never
    // faults).
    unsafe {
        let mut b = 0;
        while b + 2 <= nblk {
            let (k0, k1) = (kbase(b), kbase(b + 1));
            let mut a0 = [_mm512_setzero_ps(); R];
            let mut a1 = [_mm512_setzero_ps(); R];
            let ahead = k_first + (b + KEY_AHEAD) * k_stride;
            for c in 0..hd {
                if STREAM {
                    for l in c * per_step..((c + 1) * per_step).min(2 * lines) {
                        let at = if l < lines {
                            ahead + 64 * l
                        } else {
                            ahead + k_stride + 64 * (l - lines)
                        };
                        _mm_prefetch::<_MM_HINT_T0>(at as *const i8);
                    }
                }
                let x0 = load16(k0.add(c * KB));
                let x1 = load16(k1.add(c * KB));
                for i in 0..R {
                    let qv = _mm512_set1_ps(*qp[i].add(c));
                    a0[i] = _mm512_fmadd_ps(qv, x0, a0[i]);
                    a1[i] = _mm512_fmadd_ps(qv, x1, a1[i]);
                }
            }
            for i in 0..R {
                _mm512_storeu_ps(sp.add(i * width + b * KB), _mm512_mul_ps(a0[i], scale));
                _mm512_storeu_ps(
                    sp.add(i * width + (b + 1) * KB),
                    _mm512_mul_ps(a1[i], scale),
                );
            }
            b += 2;
        }
        if b < nblk {
            let k0 = kbase(b);
            let mut a0 = [_mm512_setzero_ps(); R];
            for c in 0..hd {
                let x0 = load16(k0.add(c * KB));
                for i in 0..R {
                    a0[i] = _mm512_fmadd_ps(_mm512_set1_ps(*qp[i].add(c)), x0, a0[i]);
                }
            }
            for (i, a) in a0.iter().enumerate() {
                _mm512_storeu_ps(sp.add(i * width + b * KB), _mm512_mul_ps(*a, scale));
            }
        }
        // Softmax numerators, zero past each row's last visible key; the division by the sum
        // is applied to the output instead of to every weight.
        let mut inv = [1f32; R];
        for (i, &(_, _, lim)) in rows.iter().enumerate() {
            let lim = lim.saturating_sub(start);
            let s = sp.add(i * width);
            let mut mv = _mm512_set1_ps(f32::NEG_INFINITY);
            for j in (0..width).step_by(KB) {
                let m = lane_mask(lim, j);
                mv = _mm512_mask_max_ps(mv, m, mv, _mm512_loadu_ps(s.add(j)));
            }
            let mx = _mm512_reduce_max_ps(mv);
            let mv = _mm512_set1_ps(mx);
            let mut sum = _mm512_setzero_ps();
            for j in (0..width).step_by(KB) {
                let m = lane_mask(lim, j);
                let e =
                    _mm512_maskz_mov_ps(m, exp512(_mm512_sub_ps(_mm512_loadu_ps(s.add(j)), mv)));
                _mm512_storeu_ps(s.add(j), e);
                sum = _mm512_add_ps(sum, e);
            }
            let total = _mm512_reduce_add_ps(sum);
            stats[2 * i] = mx;
            stats[2 * i + 1] = total;
            if normalize {
                inv[i] = 1.0 / total;
            }
        }
        let len = blk.visible(&rows);
        let vb = v[start * kv_dim + kvh * hd..].as_ptr();
        // As many columns per pass over the values as the registers hold (each pass streams
        // every row): four vectors for up to four rows, three beyond.
        let widest = if R <= 4 { 4 } else { 3 };
        let mut c0 = 0;
        while c0 < hd {
            let w = ((hd - c0) / 16).min(widest);
            macro_rules! pass {
                ($w:literal) => {
                    pv_chunk::<T, $w, R, STREAM>(
                        vb.add(c0),
                        kv_dim,
                        sp,
                        width,
                        len,
                        &inv,
                        acc,
                        hd,
                        c0,
                    )
                };
            }
            match w {
                1 => pass!(1),
                2 => pass!(2),
                3 => pass!(3),
                _ => pass!(4),
            }
            c0 += 16 * w;
        }
    }
}

/// A block of rows on AVX2, in groups of at most [`AVX2_ROWS`]: its sixteen registers hold the
/// two 8-key halves of four rows' scores with the keys and the query element, where the
/// AVX-512 kernel computes up to eight rows against the same keys.
#[cfg(target_arch = "x86_64")]
fn block_avx2_rows<T: KvElem>(
    blk: &Block<'_, T>,
    scores: &mut [f32],
    acc: &mut [f32],
    stats: &mut [f32; 2 * RB],
    normalize: bool,
) {
    let (hd, width) = (blk.d.head_dim, blk.width);
    let mut first = 0;
    while first < blk.rs.len() {
        let count = (blk.rs.len() - first).min(AVX2_ROWS);
        let part = Block {
            rs: &blk.rs[first..first + count],
            ..*blk
        };
        let (s, a) = (&mut scores[first * width..], &mut acc[first * hd..]);
        let mut st = [0f32; 2 * RB];
        // SAFETY: `simd` checked AVX2, FMA and F16C and a head size that is a multiple of 16;
        // `part` has `count` rows; the caches hold what `attention` asserted.
        unsafe {
            match count {
                1 => block_avx2::<T, 1>(&part, s, a, &mut st, normalize),
                2 => block_avx2::<T, 2>(&part, s, a, &mut st, normalize),
                3 => block_avx2::<T, 3>(&part, s, a, &mut st, normalize),
                _ => block_avx2::<T, AVX2_ROWS>(&part, s, a, &mut st, normalize),
            }
        }
        stats[2 * first..2 * (first + count)].copy_from_slice(&st[..2 * count]);
        first += count;
    }
}

/// Rows per pass of the AVX2 kernel.
#[cfg(target_arch = "x86_64")]
const AVX2_ROWS: usize = 4;

/// [`block_portable`] with AVX2: scores of 16 keys (two 8-lane halves) × `R` rows per pass over
/// the head dimension, a vector softmax with [`exp256`](super::x86::exp256), and the weighted
/// sum 16 value columns × `R` rows at a time.
///
/// # Safety
/// AVX2, FMA and F16C must be available, `head_dim` a multiple of 16, the block must have `R`
/// rows, and the caches must hold every position the rows may see.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_avx2<T: KvElem, const R: usize>(
    blk: &Block<'_, T>,
    scores: &mut [f32],
    acc: &mut [f32],
    stats: &mut [f32; 2 * RB],
    normalize: bool,
) {
    use super::x86::{exp256, hsum};
    let Block {
        d,
        v,
        kvh,
        start,
        width,
        ..
    } = *blk;
    let (hd, kv_dim) = (d.head_dim, d.kv_dim());
    let scale = _mm256_set1_ps(1.0 / (hd as f32).sqrt());
    let (rows, qp) = blk.rows_and_queries::<R>();
    let sp = scores[..R * width].as_mut_ptr();
    // SAFETY (whole body): pointers are derived from slices whose bounds were checked above or
    // by the caller; every offset stays inside them.
    unsafe {
        for b in 0..width / KB {
            let k0 = blk.key_block(b);
            let mut lo = [_mm256_setzero_ps(); R];
            let mut hi = [_mm256_setzero_ps(); R];
            for c in 0..hd {
                let x0 = load8(k0.add(c * KB));
                let x1 = load8(k0.add(c * KB + 8));
                for i in 0..R {
                    let qv = _mm256_broadcast_ss(&*qp[i].add(c));
                    lo[i] = _mm256_fmadd_ps(qv, x0, lo[i]);
                    hi[i] = _mm256_fmadd_ps(qv, x1, hi[i]);
                }
            }
            for i in 0..R {
                let s = sp.add(i * width + b * KB);
                _mm256_storeu_ps(s, _mm256_mul_ps(lo[i], scale));
                _mm256_storeu_ps(s.add(8), _mm256_mul_ps(hi[i], scale));
            }
        }
        // Softmax numerators, zero past each row's last visible key (lanes compared against
        // the limit, as AVX2 has no mask registers).
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let live = |lim: usize, j: usize| {
            let left = lim.saturating_sub(j).min(8) as i32;
            _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(left), lane))
        };
        let mut inv = [1f32; R];
        for (i, &(_, _, lim)) in rows.iter().enumerate() {
            let lim = lim.saturating_sub(start);
            let s = sp.add(i * width);
            let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
            let mut mv = ninf;
            for j in (0..width).step_by(8) {
                let x = _mm256_blendv_ps(ninf, _mm256_loadu_ps(s.add(j)), live(lim, j));
                mv = _mm256_max_ps(mv, x);
            }
            let mv = _mm256_max_ps(mv, _mm256_permute2f128_ps::<1>(mv, mv));
            let mv = _mm256_max_ps(mv, _mm256_shuffle_ps::<0b01_00_11_10>(mv, mv));
            let mv = _mm256_max_ps(mv, _mm256_shuffle_ps::<0b10_11_00_01>(mv, mv));
            let mx = _mm256_cvtss_f32(mv);
            let mut sum = _mm256_setzero_ps();
            for j in (0..width).step_by(8) {
                let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s.add(j)), mv));
                let e = _mm256_and_ps(e, live(lim, j));
                _mm256_storeu_ps(s.add(j), e);
                sum = _mm256_add_ps(sum, e);
            }
            let total = hsum(sum);
            stats[2 * i] = mx;
            stats[2 * i + 1] = total;
            if normalize {
                inv[i] = 1.0 / total;
            }
        }
        let len = blk.visible(&rows);
        let vb = v[start * kv_dim + kvh * hd..].as_ptr();
        for c0 in (0..hd).step_by(16) {
            let mut a = [[_mm256_setzero_ps(); 2]; R];
            for j in 0..len {
                let vr = vb.add(j * kv_dim + c0);
                let x = [load8(vr), load8(vr.add(8))];
                for (i, ai) in a.iter_mut().enumerate() {
                    let pv = _mm256_broadcast_ss(&*sp.add(i * width + j));
                    ai[0] = _mm256_fmadd_ps(pv, x[0], ai[0]);
                    ai[1] = _mm256_fmadd_ps(pv, x[1], ai[1]);
                }
            }
            for (i, ai) in a.iter().enumerate() {
                let s = _mm256_set1_ps(inv[i]);
                let o = acc.as_mut_ptr().add(i * hd + c0);
                _mm256_storeu_ps(o, _mm256_mul_ps(ai[0], s));
                _mm256_storeu_ps(o.add(8), _mm256_mul_ps(ai[1], s));
            }
        }
    }
}

/// Eight cache elements as floats: a plain load, or a load of 8 halves converted.
///
/// # Safety
/// AVX2 and F16C; `p` must point at 8 readable elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn load8<T: KvElem>(p: *const T) -> __m256 {
    // SAFETY: see the function's contract; 8 halves fill one 128-bit load.
    unsafe {
        if T::HALF {
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast::<__m128i>()))
        } else {
            _mm256_loadu_ps(p.cast::<f32>())
        }
    }
}

/// Sixteen cache elements as floats: a plain load, or a load of 16 halves converted.
///
/// # Safety
/// AVX-512F; `p` must point at 16 readable elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load16<T: KvElem>(p: *const T) -> __m512 {
    // SAFETY: see the function's contract; a half is 2 bytes, so 16 fill one 256-bit load.
    unsafe {
        if T::HALF {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast::<__m256i>()))
        } else {
            _mm512_loadu_ps(p.cast::<f32>())
        }
    }
}

/// Key blocks ahead of the pair being scored that the AVX-512 kernel asks for.
#[cfg(target_arch = "x86_64")]
const KEY_AHEAD: usize = 4;

/// Value rows ahead of the one being accumulated that the AVX-512 kernel asks for.
#[cfg(target_arch = "x86_64")]
const VALUE_AHEAD: usize = 32;

/// Lanes `j..j+16` that lie below `lim`.
#[cfg(target_arch = "x86_64")]
#[inline]
fn lane_mask(lim: usize, j: usize) -> __mmask16 {
    let k = lim.saturating_sub(j).min(16);
    ((1u32 << k) - 1) as __mmask16
}

/// `acc[i][c0..c0+16W] = inv[i] · Σ_j p[i][j] · v[j][c0..c0+16W]` for the block's rows;
/// decoding (`STREAM`, as in [`block_avx512`]), the rows [`VALUE_AHEAD`] on are asked for.
///
/// # Safety
/// AVX-512F; `v` points at column `c0` of the KV head in the value cache, which holds `len`
/// rows of `kv_dim`; `p` holds `R` rows of `width ≥ len` weights.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_chunk<T: KvElem, const W: usize, const R: usize, const STREAM: bool>(
    v: *const T,
    kv_dim: usize,
    p: *const f32,
    width: usize,
    len: usize,
    inv: &[f32; R],
    acc: &mut [f32],
    hd: usize,
    c0: usize,
) {
    // SAFETY: see the function's contract.
    unsafe {
        let mut a = [[_mm512_setzero_ps(); W]; R];
        let row_lines = if STREAM {
            (16 * W * size_of::<T>()).div_ceil(64)
        } else {
            0
        };
        for j in 0..len {
            let vr = v.add(j * kv_dim);
            // Rows are `kv_dim` apart, of which this head reads a line or two.
            let ahead = (vr as usize).wrapping_add(VALUE_AHEAD * kv_dim * size_of::<T>());
            for l in 0..row_lines {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * l) as *const i8);
            }
            let x: [__m512; W] = std::array::from_fn(|w| load16(vr.add(16 * w)));
            for (i, ai) in a.iter_mut().enumerate() {
                let pv = _mm512_set1_ps(*p.add(i * width + j));
                for w in 0..W {
                    ai[w] = _mm512_fmadd_ps(pv, x[w], ai[w]);
                }
            }
        }
        for (i, ai) in a.iter().enumerate() {
            let s = _mm512_set1_ps(inv[i]);
            for (w, aw) in ai.iter().enumerate() {
                _mm512_storeu_ps(
                    acc.as_mut_ptr().add(i * hd + c0 + 16 * w),
                    _mm512_mul_ps(*aw, s),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The textbook computation over a position-major key cache.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        n: usize,
        pos: usize,
        heads: usize,
        kv_heads: usize,
        hd: usize,
    ) -> Vec<f32> {
        let (group, kv_dim, q_dim) = (heads / kv_heads, kv_heads * hd, heads * hd);
        let mut out = vec![0f32; n * q_dim];
        for t in 0..n {
            for h in 0..heads {
                let kvh = h / group;
                let qr = &q[t * q_dim + h * hd..][..hd];
                let len = pos + t + 1;
                let s: Vec<f64> = (0..len)
                    .map(|j| {
                        let kr = &k[j * kv_dim + kvh * hd..][..hd];
                        qr.iter().zip(kr).map(|(a, b)| (a * b) as f64).sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..hd {
                    let acc: f64 = (0..len)
                        .map(|j| e[j] * v[j * kv_dim + kvh * hd + c] as f64)
                        .sum();
                    out[t * q_dim + h * hd + c] = (acc / z) as f32;
                }
            }
        }
        out
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0 - 1.0) * 1.5)
            .collect()
    }

    /// Every path (AVX-512 where present, portable) against the textbook computation, for
    /// decode and prompt shapes, group sizes that do and do not fill a block of rows, head
    /// sizes that take every value-chunk width, and a prompt appended to an existing cache.
    #[test]
    fn blocked_attention_matches_the_textbook() {
        // Every row count a block can have, 1 to 8, comes up among these shapes, and the value
        // passes of one to four vectors; decode at 200 and 700 positions splits the keys into
        // ranges (2 or 3 threads, 1 to 4 KV heads).
        // Half-precision caches against the textbook on the same keys and values rounded to f16:
        // the kernels convert exactly, so the bound is the same.
        for threads in [2, 3] {
            let pool = crate::kernels::threads::Threads::new(threads).unwrap();
            blocked_attention_on::<f32>(&pool);
            blocked_attention_on::<half::f16>(&pool);
        }
    }

    fn blocked_attention_on<T: KvElem>(pool: &crate::kernels::threads::Threads) {
        let round =
            |x: Vec<f32>| -> Vec<f32> { x.into_iter().map(|v| T::from_f32(v).to_f32()).collect() };
        let shapes = [
            (8, 2, 64),
            (6, 1, 128),
            (4, 4, 48),
            (3, 1, 40),
            (2, 1, 32),
            (9, 3, 64),
            (4, 2, 128),
        ];
        for (heads, kv_heads, hd) in shapes {
            for (pos, n) in [(0, 1), (0, 37), (20, 1), (33, 5), (200, 1), (700, 1)] {
                let (kv_dim, q_dim) = (kv_heads * hd, heads * hd);
                let total = pos + n;
                let keys = values(total * kv_dim, 1);
                let vals = values(total * kv_dim, 2);
                let q = values(n * q_dim, 3);
                let mut kc = KvBuf::<T>::new(key_cache_len(total, kv_dim));
                append_keys(&mut kc, 0, &keys[..pos * kv_dim], kv_dim);
                append_keys(&mut kc, pos, &keys[pos * kv_dim..], kv_dim);
                let mut vc = KvBuf::<T>::new(total * kv_dim);
                vc.extend_from_f32(&vals);
                let (keys, vals) = (round(keys), round(vals));
                assert_eq!(key_at(&kc, total - 1, kv_dim), keys[(total - 1) * kv_dim..]);
                let want = naive(&q, &keys, &vals, n, pos, heads, kv_heads, hd);
                for caps in [CpuCaps::detect(), CpuCaps::avx2_only(), CpuCaps::portable()] {
                    let mut got = vec![f32::NAN; n * q_dim];
                    attention(
                        pool, caps, &q, &kc, &vc, n, pos, heads, kv_heads, hd, &mut got,
                    );
                    let worst = crate::kernels::max_abs_diff(&got, &want);
                    assert!(
                        worst < 2e-5,
                        "{} {caps:?} heads {heads}/{kv_heads} hd {hd} pos {pos} n {n}: {worst}",
                        std::any::type_name::<T>()
                    );
                }
            }
        }
    }

    #[test]
    fn key_ranges_even_out_the_threads() {
        // SmolLM2's 3 KV heads on 2 threads: 2 ranges each, 6 tasks.
        assert_eq!(key_ranges(3, 2, 100), 2);
        // Already a multiple of the threads.
        assert_eq!(key_ranges(2, 2, 100), 1);
        assert_eq!(key_ranges(4, 2, 100), 1);
        assert_eq!(key_ranges(2, 3, 100), 3);
        assert_eq!(key_ranges(8, 6, 100), 3);
        // Too few keys to split: at least 4 blocks of 16 per range.
        assert_eq!(key_ranges(3, 2, 7), 1);
        assert_eq!(key_ranges(2, 3, 8), 2);
    }

    /// Truncating the cache and appending again overwrites the stale lanes.
    #[test]
    fn append_after_truncation_overwrites_stale_keys() {
        let kv_dim = 4;
        let mut kc = KvBuf::<f32>::new(key_cache_len(20, kv_dim));
        append_keys(&mut kc, 0, &values(20 * kv_dim, 1), kv_dim);
        kc.truncate(key_cache_len(3, kv_dim));
        let fresh = values(2 * kv_dim, 9);
        append_keys(&mut kc, 3, &fresh, kv_dim);
        assert_eq!(kc.len(), key_cache_len(5, kv_dim));
        assert_eq!(key_at(&kc, 3, kv_dim), fresh[..kv_dim]);
        assert_eq!(key_at(&kc, 4, kv_dim), fresh[kv_dim..]);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_is_accurate() {
        let caps = CpuCaps::detect();
        let xs: Vec<f32> = (0..=3008).map(|i| -100.0 + i as f32 * 0.0625).collect();
        for chunk in xs.chunks(16) {
            let mut buf = [0f32; 16];
            buf[..chunk.len()].copy_from_slice(chunk);
            let mut got = Vec::new();
            if caps.avx512vnni {
                let mut g = [0f32; 16];
                // SAFETY: avx512f detected.
                unsafe { _mm512_storeu_ps(g.as_mut_ptr(), exp512(_mm512_loadu_ps(buf.as_ptr()))) };
                got.push(g);
            }
            if caps.avx2 {
                let mut g = [0f32; 16];
                for h in 0..2 {
                    // SAFETY: avx2 and fma detected.
                    unsafe {
                        let x = _mm256_loadu_ps(buf[8 * h..].as_ptr());
                        _mm256_storeu_ps(g[8 * h..].as_mut_ptr(), super::super::x86::exp256(x));
                    }
                }
                got.push(g);
            }
            for (x, g) in got.iter().flat_map(|g| buf.iter().zip(*g)) {
                let want = (*x as f64).exp();
                // Below e^-87 (never reached by a softmax weight that matters) it flushes to
                // about 1e-38.
                assert!(
                    (g as f64 - want).abs() <= 1e-6 * want + 2e-38,
                    "exp({x}) = {g}, want {want}"
                );
            }
        }
    }
}
