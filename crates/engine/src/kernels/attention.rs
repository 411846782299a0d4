//! Causal grouped-query attention on the CPU.
//!
//! The key cache is stored transposed in blocks of [`KB`] positions (`[block][kv_dim][KB]`), so
//! the scores of several query rows against 16 keys are 16-wide FMAs with the query element
//! broadcast, without a horizontal sum per key (the old per-key dot products plus a scalar
//! `exp` per score took about a quarter of a 512-token prompt). Values stay position-major
//! (`[pos][kv_dim]`): the weighted sum reads one value row per key for all query rows at once.
//!
//! Work is split by KV head and blocks of [`RB`] query rows, a row being one (token, head of
//! the group) pair: the heads that share a KV head read its keys and values once per block
//! instead of once each, in decode as in prompts.

use rayon::prelude::*;

use super::CpuCaps;
use super::kvbuf::KvBuf;

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
pub fn append_keys(cache: &mut KvBuf, len: usize, keys: &[f32], kv_dim: usize) {
    let n = keys.len() / kv_dim.max(1);
    // Lanes past the end of the last block hold stale or zero keys; they are never attended to
    // (every row masks keys beyond its position) but must be finite, which both are.
    cache.resize(key_cache_len(len + n, kv_dim));
    for (i, key) in keys.chunks_exact(kv_dim).enumerate() {
        let p = len + i;
        let (b, lane) = (p / KB, p % KB);
        let base = b * kv_dim * KB + lane;
        for (c, &v) in key.iter().enumerate() {
            cache[base + c * KB] = v;
        }
    }
}

/// The key of position `p` from a blocked cache (tests and diagnostics).
pub fn key_at(cache: &[f32], p: usize, kv_dim: usize) -> Vec<f32> {
    let (b, lane) = (p / KB, p % KB);
    (0..kv_dim)
        .map(|c| cache[b * kv_dim * KB + c * KB + lane])
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

/// Causal grouped-query attention of `n` new queries (absolute positions `pos..pos+n`) over a
/// blocked key cache and a position-major value cache holding `pos + n` positions.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &super::threads::Threads,
    caps: CpuCaps,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
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
    let tasks = kv_heads * blocks;
    let out_ptr = SyncPtr(out.as_mut_ptr());
    let simd = caps.avx512vnni && head_dim.is_multiple_of(16);
    let run = |scratch: &mut Vec<f32>, task: usize| {
        let (kvh, b) = (task / blocks, task % blocks);
        let r0 = b * RB;
        // A short last block repeats its last row; the copies are computed but not written.
        let rs: [usize; RB] = std::array::from_fn(|i| (r0 + i).min(rows - 1));
        let live = (rows - r0).min(RB);
        let width = rs
            .iter()
            .map(|&r| d.row(kvh, r).2)
            .max()
            .unwrap_or(0)
            .div_ceil(KB)
            * KB;
        scratch.clear();
        scratch.resize(RB * width + RB * head_dim, 0.0);
        let (scores, acc) = scratch.split_at_mut(RB * width);
        let blk = Block {
            d: &d,
            q,
            k: k_cache,
            v: v_cache,
            kvh,
            rs: &rs,
            width,
        };
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: avx512f detected (implied by avx512vnni); the slices hold what the asserts
            // above checked, and head_dim is a multiple of 16.
            unsafe { block_avx512(&blk, scores, acc) };
        } else {
            block_portable(&blk, scores, acc);
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = simd;
            block_portable(&blk, scores, acc);
        }
        let p = out_ptr;
        for (i, &r) in rs.iter().enumerate().take(live) {
            let (t, h, _) = d.row(kvh, r);
            let o = t * d.q_dim() + h * head_dim;
            // SAFETY: (t, h) is a distinct row for every (kvh, r), and inside `out`.
            unsafe {
                std::ptr::copy_nonoverlapping(acc[i * head_dim..].as_ptr(), p.0.add(o), head_dim)
            };
        }
    };
    if tasks == 1 || pool.current_num_threads() == 1 {
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
}

/// The inputs of one block of query rows.
#[derive(Clone, Copy)]
struct Block<'a> {
    d: &'a Dims,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    kvh: usize,
    rs: &'a [usize; RB],
    width: usize,
}

/// One block of rows in plain Rust: the reference the SIMD path is tested against, and the
/// path of processors without AVX-512.
fn block_portable(b: &Block<'_>, scores: &mut [f32], acc: &mut [f32]) {
    let Block {
        d,
        q,
        k,
        v,
        kvh,
        rs,
        width,
    } = *b;
    let (hd, kv_dim) = (d.head_dim, d.kv_dim());
    let scale = 1.0 / (hd as f32).sqrt();
    for (i, &r) in rs.iter().enumerate() {
        let (t, h, lim) = d.row(kvh, r);
        let qr = &q[t * d.q_dim() + h * hd..][..hd];
        let s = &mut scores[i * width..(i + 1) * width];
        for (j, sj) in s.iter_mut().enumerate().take(lim) {
            let base = (j / KB) * kv_dim * KB + kvh * hd * KB + j % KB;
            let dot: f32 = qr
                .iter()
                .enumerate()
                .map(|(c, qv)| qv * k[base + c * KB])
                .sum();
            *sj = dot * scale;
        }
        let m = s[..lim].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut sum = 0.0;
        for x in s[..lim].iter_mut() {
            *x = (*x - m).exp();
            sum += *x;
        }
        let o = &mut acc[i * hd..(i + 1) * hd];
        o.fill(0.0);
        for (j, &p) in s[..lim].iter().enumerate() {
            let vr = &v[j * kv_dim + kvh * hd..][..hd];
            for (o, vv) in o.iter_mut().zip(vr) {
                *o += p * vv;
            }
        }
        let inv = 1.0 / sum;
        o.iter_mut().for_each(|x| *x *= inv);
    }
}

#[cfg(target_arch = "x86_64")]
use super::x86::exp512;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// [`block_portable`] with AVX-512: scores 16 keys × 4 rows per pass over the head dimension
/// (two key blocks at a time, so eight FMA chains hide the latency), a vector softmax, and the
/// weighted sum 64 value columns × 4 rows at a time.
///
/// # Safety
/// AVX-512F must be available, `head_dim` a multiple of 16, and the caches must hold every
/// position the rows may see.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512(blk: &Block<'_>, scores: &mut [f32], acc: &mut [f32]) {
    let Block {
        d,
        q,
        k,
        v,
        kvh,
        rs,
        width,
    } = *blk;
    let (hd, kv_dim) = (d.head_dim, d.kv_dim());
    let scale = _mm512_set1_ps(1.0 / (hd as f32).sqrt());
    let rows: [(usize, usize, usize); RB] = std::array::from_fn(|i| d.row(kvh, rs[i]));
    let qp: [*const f32; RB] =
        std::array::from_fn(|i| q[rows[i].0 * d.q_dim() + rows[i].1 * hd..][..hd].as_ptr());
    let nblk = width / KB;
    let kbase = |b: usize| k[b * kv_dim * KB + kvh * hd * KB..][..hd * KB].as_ptr();
    let sp = scores.as_mut_ptr();
    // SAFETY (whole body): pointers are derived from slices whose bounds were checked above or
    // by the caller; every offset stays inside them.
    unsafe {
        let mut b = 0;
        while b + 2 <= nblk {
            let (k0, k1) = (kbase(b), kbase(b + 1));
            let mut a0 = [_mm512_setzero_ps(); RB];
            let mut a1 = [_mm512_setzero_ps(); RB];
            for c in 0..hd {
                let x0 = _mm512_loadu_ps(k0.add(c * KB));
                let x1 = _mm512_loadu_ps(k1.add(c * KB));
                for i in 0..RB {
                    let qv = _mm512_set1_ps(*qp[i].add(c));
                    a0[i] = _mm512_fmadd_ps(qv, x0, a0[i]);
                    a1[i] = _mm512_fmadd_ps(qv, x1, a1[i]);
                }
            }
            for i in 0..RB {
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
            let mut a0 = [_mm512_setzero_ps(); RB];
            for c in 0..hd {
                let x0 = _mm512_loadu_ps(k0.add(c * KB));
                for i in 0..RB {
                    a0[i] = _mm512_fmadd_ps(_mm512_set1_ps(*qp[i].add(c)), x0, a0[i]);
                }
            }
            for (i, a) in a0.iter().enumerate() {
                _mm512_storeu_ps(sp.add(i * width + b * KB), _mm512_mul_ps(*a, scale));
            }
        }
        // Softmax numerators, zero past each row's last visible key; the division by the sum
        // is applied to the output instead of to every weight.
        let mut inv = [0f32; RB];
        for (i, &(_, _, lim)) in rows.iter().enumerate() {
            let s = sp.add(i * width);
            let mut mv = _mm512_set1_ps(f32::NEG_INFINITY);
            for j in (0..width).step_by(KB) {
                let m = lane_mask(lim, j);
                mv = _mm512_mask_max_ps(mv, m, mv, _mm512_loadu_ps(s.add(j)));
            }
            let mv = _mm512_set1_ps(_mm512_reduce_max_ps(mv));
            let mut sum = _mm512_setzero_ps();
            for j in (0..width).step_by(KB) {
                let m = lane_mask(lim, j);
                let e =
                    _mm512_maskz_mov_ps(m, exp512(_mm512_sub_ps(_mm512_loadu_ps(s.add(j)), mv)));
                _mm512_storeu_ps(s.add(j), e);
                sum = _mm512_add_ps(sum, e);
            }
            inv[i] = 1.0 / _mm512_reduce_add_ps(sum);
        }
        let len = rows.iter().map(|r| r.2).max().unwrap_or(0);
        let vb = v[kvh * hd..].as_ptr();
        let mut c0 = 0;
        while c0 < hd {
            match (hd - c0) / 16 {
                1 => pv_chunk::<1>(vb.add(c0), kv_dim, sp, width, len, &inv, acc, hd, c0),
                2 => pv_chunk::<2>(vb.add(c0), kv_dim, sp, width, len, &inv, acc, hd, c0),
                _ => pv_chunk::<3>(vb.add(c0), kv_dim, sp, width, len, &inv, acc, hd, c0),
            }
            c0 += 48.min(hd - c0);
        }
    }
}

/// Lanes `j..j+16` that lie below `lim`.
#[cfg(target_arch = "x86_64")]
#[inline]
fn lane_mask(lim: usize, j: usize) -> __mmask16 {
    let k = lim.saturating_sub(j).min(16);
    ((1u32 << k) - 1) as __mmask16
}

/// `acc[i][c0..c0+16W] = inv[i] · Σ_j p[i][j] · v[j][c0..c0+16W]` for the block's rows.
///
/// # Safety
/// AVX-512F; `v` points at column `c0` of the KV head in the value cache, which holds `len`
/// rows of `kv_dim`; `p` holds `RB` rows of `width ≥ len` weights.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_chunk<const W: usize>(
    v: *const f32,
    kv_dim: usize,
    p: *const f32,
    width: usize,
    len: usize,
    inv: &[f32; RB],
    acc: &mut [f32],
    hd: usize,
    c0: usize,
) {
    // SAFETY: see the function's contract.
    unsafe {
        let mut a = [[_mm512_setzero_ps(); W]; RB];
        for j in 0..len {
            let vr = v.add(j * kv_dim);
            let x: [__m512; W] = std::array::from_fn(|w| _mm512_loadu_ps(vr.add(16 * w)));
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
        let pool = crate::kernels::threads::Threads::new(2).unwrap();
        for (heads, kv_heads, hd) in [(8, 2, 64), (6, 1, 128), (4, 4, 48), (3, 1, 40)] {
            for (pos, n) in [(0, 1), (0, 37), (20, 1), (33, 5)] {
                let (kv_dim, q_dim) = (kv_heads * hd, heads * hd);
                let total = pos + n;
                let keys = values(total * kv_dim, 1);
                let vals = values(total * kv_dim, 2);
                let q = values(n * q_dim, 3);
                let mut kc = KvBuf::new(key_cache_len(total, kv_dim));
                append_keys(&mut kc, 0, &keys[..pos * kv_dim], kv_dim);
                append_keys(&mut kc, pos, &keys[pos * kv_dim..], kv_dim);
                assert_eq!(key_at(&kc, total - 1, kv_dim), keys[(total - 1) * kv_dim..]);
                let want = naive(&q, &keys, &vals, n, pos, heads, kv_heads, hd);
                for caps in [CpuCaps::detect(), CpuCaps::portable()] {
                    let mut got = vec![f32::NAN; n * q_dim];
                    attention(
                        &pool, caps, &q, &kc, &vals, n, pos, heads, kv_heads, hd, &mut got,
                    );
                    let worst = crate::kernels::max_abs_diff(&got, &want);
                    assert!(
                        worst < 2e-5,
                        "{caps:?} heads {heads}/{kv_heads} hd {hd} pos {pos} n {n}: {worst}"
                    );
                }
            }
        }
    }

    /// Truncating the cache and appending again overwrites the stale lanes.
    #[test]
    fn append_after_truncation_overwrites_stale_keys() {
        let kv_dim = 4;
        let mut kc = KvBuf::new(key_cache_len(20, kv_dim));
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
        if !CpuCaps::detect().avx512vnni {
            return;
        }
        let xs: Vec<f32> = (0..=3008).map(|i| -100.0 + i as f32 * 0.0625).collect();
        for chunk in xs.chunks(16) {
            let mut buf = [0f32; 16];
            buf[..chunk.len()].copy_from_slice(chunk);
            let mut got = [0f32; 16];
            // SAFETY: avx512f detected.
            unsafe {
                _mm512_storeu_ps(got.as_mut_ptr(), exp512(_mm512_loadu_ps(buf.as_ptr())));
            }
            for (x, g) in buf.iter().zip(got) {
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
