//! Prefill tiles: weight rows converted once and multiplied against many tokens (f32 tiles for
//! 16/32-bit weights, 8-bit VNNI or AVX2 tiles for packed rows, bf16 tiles on AMX and on AVX-512 BF16).
//! The dispatcher that chooses among them and the decode paths are in the parent module.

use super::*;

/// Prefill on 16/32-bit weights: each task converts 4 rows to f32 once, then runs 4×2 tiles
/// over all tokens, so conversion is amortised over the prompt and every load feeds 2 FMAs.
pub(super) fn dense_tiles(
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
                            crate::kernels::x86::dot4x2_f32_avx512(&buf, k, x0, x1)
                        } else {
                            crate::kernels::x86::dot4x2_f32_avx2(&buf, k, x0, x1)
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

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(super) fn tiles_packed(
    pool: &Threads,
    vnni: bool,
    w: &QMatrix<'_>,
    acts: &[crate::kernels::packed::PackedActs],
    n: usize,
    layout: crate::kernels::packed::Layout,
    blocks: usize,
    out: &mut [f32],
) {
    use crate::kernels::x86::{
        SB_ROOM, TileRows, one_row_eight_tokens, precomputed_heads, vnni_unpacked_heads,
        widen_tail_into,
    };
    let rows = w.rows;
    let threads = pool.current_num_threads().max(1);
    let pairs = rows.div_ceil(2);
    let per_task = pairs.div_ceil(threads * 4).clamp(1, 32);
    let tasks = pairs.div_ceil(per_task);
    let ptr = SyncPtr(out.as_mut_ptr());
    let run = |ti: usize| {
        let p = ptr;
        let (p0, p1) = (ti * per_task, ((ti + 1) * per_task).min(pairs));
        let pair_rows = |pair: usize| {
            let r0 = 2 * pair;
            [r0, (r0 + 1).min(rows - 1)]
        };
        // The AVX2 tiles read whole superblocks: each row's tail widened into one here, once
        // for all the tokens, not in every tile (for every four tokens again).
        let tail = blocks % 16;
        let tails: Vec<[u8; SB_ROOM]> = if vnni || tail == 0 {
            Vec::new()
        } else {
            let at = blocks / 16 * layout.superblock_bytes();
            (p0..p1)
                .flat_map(pair_rows)
                .map(|r| {
                    let mut buf = [0u8; SB_ROOM];
                    // SAFETY: row r is a packed row of `blocks` blocks, whose tail of `tail`
                    // lanes starts at `at`; AVX2 detected by the caller.
                    unsafe { widen_tail_into(layout, w.row(r).as_ptr().add(at), tail, &mut buf) };
                    buf
                })
                .collect()
        };
        // Room for the K heads' factors, unpacked once per row on the first pass and read
        // by the later ones, not again for every group of tokens; with a single group there
        // is nothing to share.
        let nsb = blocks.div_ceil(16);
        let mut heads: Vec<[f32; 16]> = if vnni || !precomputed_heads(layout) || n <= 4 {
            Vec::new()
        } else {
            vec![[0f32; 16]; 2 * nsb * 2 * (p1 - p0)]
        };
        let heads_at = heads.as_mut_ptr();
        let has_heads = !heads.is_empty();
        // Row entry `i` (row `r`) of the task's tails and heads.
        let heads_of = |i: usize| {
            if has_heads {
                // In bounds: `heads` holds 2 · nsb entries per row entry.
                heads_at.wrapping_add(2 * nsb * i)
            } else {
                std::ptr::null_mut()
            }
        };
        let row_at = |i: usize, r: usize, first: bool| TileRows {
            at: [w.row(r).as_ptr(); 2],
            tails: [tails.get(i).map_or(std::ptr::null(), |t| t.as_ptr()); 2],
            first,
            heads: [heads_of(i); 2],
        };
        if !vnni && one_row_eight_tokens(layout, blocks) {
            for t in (0..n).step_by(8) {
                let a = &acts[t..t + 8];
                let xq: [_; 8] = std::array::from_fn(|i| a[i].qs.as_ptr());
                let xd: [_; 8] = std::array::from_fn(|i| a[i].d.as_ptr());
                let xso: [_; 8] = std::array::from_fn(|i| [a[i].so.as_ptr(), a[i].so2.as_ptr()]);
                let xio: [_; 8] = std::array::from_fn(|i| a[i].io.as_ptr());
                for r in 2 * p0..(2 * p1).min(rows) {
                    let tr = row_at(r - 2 * p0, r, t == 0);
                    // SAFETY: row r < rows is a packed row of `blocks` blocks, with its tail and
                    // heads as `tr` says; the eight tokens' activations exist (padded with
                    // zeros); AVX2 detected by the caller.
                    let v = unsafe {
                        use crate::kernels::x86::{
                            L_Q2, L_Q3, L_Q5, L_Q5K, L_Q5M, L_Q6, tile1x8_wide_avx2 as tile,
                        };
                        match crate::kernels::x86::layout_code(layout) {
                            L_Q3 => tile::<L_Q3>(tr, blocks, xq, xd, xso, xio),
                            L_Q2 => tile::<L_Q2>(tr, blocks, xq, xd, xso, xio),
                            L_Q5 => tile::<L_Q5>(tr, blocks, xq, xd, xso, xio),
                            L_Q5M => tile::<L_Q5M>(tr, blocks, xq, xd, xso, xio),
                            L_Q5K => tile::<L_Q5K>(tr, blocks, xq, xd, xso, xio),
                            _ => tile::<L_Q6>(tr, blocks, xq, xd, xso, xio),
                        }
                    };
                    for (dt, val) in v.iter().enumerate().take(n - t) {
                        // SAFETY: (t+dt, r) is inside the buffer and owned by this task.
                        unsafe { *p.0.add((t + dt) * rows + r) = *val };
                    }
                }
            }
            return;
        }
        // The VNNI tiles' K head factors, unpacked once per row for all the groups of tokens
        // of a prompt. Not for a batch of a few tokens (continuous batching), where the pass
        // that unpacks them reads the rows from memory with nothing to overlap it (eight
        // streams' steps measured slower).
        let vnni_heads: crate::kernels::packed::Lines<f32> =
            if vnni && vnni_unpacked_heads(layout) && n >= 16 {
                use crate::kernels::x86::{
                    L_Q2, L_Q3, L_Q4K, L_Q5K, L_Q6, heads_len, unpack_heads_vnni,
                };
                let per_row = heads_len(layout, blocks);
                let mut h = crate::kernels::packed::Lines::zeroed(2 * (p1 - p0) * per_row);
                for (i, r) in (p0..p1).flat_map(pair_rows).enumerate() {
                    let (row, o) = (w.row(r).as_ptr(), h[i * per_row..].as_mut_ptr());
                    // SAFETY: row r is a packed row of `blocks` blocks in `layout`, `o` has
                    // room for its factors; AVX-512 VNNI detected by the caller.
                    unsafe {
                        match crate::kernels::x86::layout_code(layout) {
                            L_Q4K => unpack_heads_vnni::<L_Q4K>(row, blocks, o),
                            L_Q5K => unpack_heads_vnni::<L_Q5K>(row, blocks, o),
                            L_Q6 => unpack_heads_vnni::<L_Q6>(row, blocks, o),
                            L_Q3 => unpack_heads_vnni::<L_Q3>(row, blocks, o),
                            L_Q2 => unpack_heads_vnni::<L_Q2>(row, blocks, o),
                            _ => unreachable!("vnni_unpacked_heads is Q4K, Q5K, Q6, Q3 and Q2"),
                        }
                    }
                }
                h
            } else {
                crate::kernels::packed::Lines::zeroed(0)
            };
        for t in (0..n).step_by(4) {
            let a = &acts[t..t + 4];
            let xq = [0, 1, 2, 3].map(|i| a[i].qs.as_ptr());
            let xd = [0, 1, 2, 3].map(|i| a[i].d.as_ptr());
            let xso = [0, 1, 2, 3].map(|i| [a[i].so.as_ptr(), a[i].so2.as_ptr()]);
            let xio = [0, 1, 2, 3].map(|i| a[i].io.as_ptr());
            if vnni {
                use crate::kernels::x86::{
                    Acts, L_I4, L_I4K, L_Q2, L_Q3, L_Q4, L_Q4K, L_Q4M, L_Q5, L_Q5K, L_Q6, L_Q8,
                    TileOut, head_floats, heads_len, tiles2x4_packed_vnni as tiles,
                };
                // Blocks of a stretch of columns: eight superblocks, four tokens' activations
                // (16 KiB) half of a 32 KiB L1 data cache.
                const SPAN: usize = 128;
                let rb = w.row_bytes();
                let pre = !vnni_heads.is_empty();
                // Rows wider than `SPAN` blocks in stretches of it, each stretch for all the
                // task's rows before the next: four tokens' activations over a whole 8960-wide
                // row (35 KB) left the L1 cache for every row.
                for c0 in (0..blocks).step_by(SPAN) {
                    let (cb, s0) = ((blocks - c0).min(SPAN), c0 / 16);
                    let at = w.data.as_ptr().wrapping_add(s0 * layout.superblock_bytes());
                    let io = s0 * layout.io_lanes();
                    let x = Acts {
                        xq: xq.map(|q| q.wrapping_add(s0 * 512)),
                        xd: xd.map(|d| d.wrapping_add(s0 * 16)),
                        xso: xso.map(|so| so.map(|o| o.wrapping_add(s0 * 16))),
                        xio: xio.map(|o| o.wrapping_add(io)),
                        fetch: t == 0,
                    };
                    let h = (
                        vnni_heads.as_ptr().wrapping_add(head_floats(layout) * s0),
                        heads_len(layout, blocks),
                    );
                    let o = TileOut {
                        // In bounds: token t < n of the output's n rows.
                        at: p.0.wrapping_add(t * rows),
                        stride: rows,
                        tokens: (n - t).min(4),
                        add: c0 > 0,
                    };
                    // SAFETY: the rows of pairs p0..p1 are packed rows of `blocks` blocks, whose
                    // outputs belong to this task; from superblock s0 on they hold `cb` blocks,
                    // as do the four tokens' activations (padded with zeros) and the heads;
                    // AVX-512 VNNI detected by the caller.
                    unsafe {
                        match crate::kernels::x86::layout_code(layout) {
                            L_Q4 => tiles::<L_Q4, false>(at, rb, rows, p0..p1, cb, x, h, o),
                            L_Q8 => tiles::<L_Q8, false>(at, rb, rows, p0..p1, cb, x, h, o),
                            L_Q4M => tiles::<L_Q4M, false>(at, rb, rows, p0..p1, cb, x, h, o),
                            L_Q6 if pre => tiles::<L_Q6, true>(at, rb, rows, p0..p1, cb, x, h, o),
                            L_Q6 => tiles::<L_Q6, false>(at, rb, rows, p0..p1, cb, x, h, o),
                            L_Q3 if pre => tiles::<L_Q3, true>(at, rb, rows, p0..p1, cb, x, h, o),
                            L_Q3 => tiles::<L_Q3, false>(at, rb, rows, p0..p1, cb, x, h, o),
                            L_Q2 if pre => tiles::<L_Q2, true>(at, rb, rows, p0..p1, cb, x, h, o),
                            L_Q2 => tiles::<L_Q2, false>(at, rb, rows, p0..p1, cb, x, h, o),
                            L_Q4K if pre => tiles::<L_Q4K, true>(at, rb, rows, p0..p1, cb, x, h, o),
                            L_Q4K => tiles::<L_Q4K, false>(at, rb, rows, p0..p1, cb, x, h, o),
                            L_Q5K if pre => tiles::<L_Q5K, true>(at, rb, rows, p0..p1, cb, x, h, o),
                            L_Q5K => tiles::<L_Q5K, false>(at, rb, rows, p0..p1, cb, x, h, o),
                            L_I4K => tiles::<L_I4K, false>(at, rb, rows, p0..p1, cb, x, h, o),
                            L_Q5 => tiles::<L_Q5, false>(at, rb, rows, p0..p1, cb, x, h, o),
                            L_I4 => tiles::<L_I4, false>(at, rb, rows, p0..p1, cb, x, h, o),
                            _ => {
                                use crate::kernels::x86::L_Q5M;
                                tiles::<L_Q5M, false>(at, rb, rows, p0..p1, cb, x, h, o)
                            }
                        }
                    }
                }
                continue;
            }
            for pair in p0..p1 {
                let [r0, r1] = pair_rows(pair);
                let tr = TileRows {
                    at: [w.row(r0).as_ptr(), w.row(r1).as_ptr()],
                    tails: match tails.get(2 * (pair - p0)..2 * (pair - p0) + 2) {
                        Some([a, b]) => [a.as_ptr(), b.as_ptr()],
                        _ => [std::ptr::null(); 2],
                    },
                    first: t == 0,
                    heads: [heads_of(2 * (pair - p0)), heads_of(2 * (pair - p0) + 1)],
                };
                // SAFETY: rows r0, r1 < rows are packed rows of `blocks` blocks; the four tokens'
                // activations exist (padded with zeros); AVX2 detected by the caller.
                let v = unsafe {
                    use crate::kernels::x86::{
                        L_I4, L_I4K, L_Q2, L_Q3, L_Q4, L_Q4K, L_Q4M, L_Q5, L_Q5K, L_Q5M, L_Q6,
                        L_Q8, tile2x4_packed_avx2 as tile,
                    };
                    match crate::kernels::x86::layout_code(layout) {
                        L_Q4 => tile::<L_Q4>(tr, blocks, xq, xd, xso, xio),
                        L_Q8 => tile::<L_Q8>(tr, blocks, xq, xd, xso, xio),
                        L_Q4M => tile::<L_Q4M>(tr, blocks, xq, xd, xso, xio),
                        L_Q6 => tile::<L_Q6>(tr, blocks, xq, xd, xso, xio),
                        L_Q3 => tile::<L_Q3>(tr, blocks, xq, xd, xso, xio),
                        L_Q2 => tile::<L_Q2>(tr, blocks, xq, xd, xso, xio),
                        L_Q4K => tile::<L_Q4K>(tr, blocks, xq, xd, xso, xio),
                        L_Q5K => tile::<L_Q5K>(tr, blocks, xq, xd, xso, xio),
                        L_I4K => tile::<L_I4K>(tr, blocks, xq, xd, xso, xio),
                        L_Q5 => tile::<L_Q5>(tr, blocks, xq, xd, xso, xio),
                        L_I4 => tile::<L_I4>(tr, blocks, xq, xd, xso, xio),
                        _ => tile::<L_Q5M>(tr, blocks, xq, xd, xso, xio),
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
    // On the decode team, not the rayon pool: a batch of a few tokens (continuous batching)
    // makes a region of a few hundred microseconds per matrix, where waking rayon's parked
    // workers is a cost the spinning team does not pay; prompts' long regions mind neither.
    pool.run(tasks, &run);
}

/// Row `r` of a packed matrix rounded to bf16 in the packed order
/// (`x86::packed_row_to_bf16`) into `out`, which must hold 512 values per superblock.
///
/// # Safety
/// The processor must have AVX-512 BF16.
#[cfg(target_arch = "x86_64")]
unsafe fn packed_row_bf16(
    w: &QMatrix<'_>,
    layout: crate::kernels::packed::Layout,
    r: usize,
    out: &mut [u16],
) {
    use crate::kernels::packed::{SB, superblocks};
    assert!(out.len() >= superblocks(w.cols) * SB * QK);
    // SAFETY: a packed row of cols / 32 blocks (checked by `check`), room checked above;
    // AVX-512 BF16 guaranteed by the caller.
    unsafe {
        crate::kernels::x86::packed_row_to_bf16(
            layout,
            w.row(r).as_ptr(),
            w.cols / QK,
            out.as_mut_ptr(),
        )
    }
}

/// Rows `r0..r0 + nr` of `w` dequantized and rounded to bf16 into `wb` (whole rows of `w.cols`
/// values; `wb.len()` a multiple of 16, the rows past `nr` left zero). False if the rows cannot
/// be converted.
#[cfg(target_arch = "x86_64")]
pub(super) fn rows_to_bf16(w: &QMatrix<'_>, r0: usize, nr: usize, wb: &mut [u16]) -> bool {
    let k = w.cols;
    if let (true, Some(layout)) = (w.packed, crate::kernels::packed::Layout::of(w.dtype)) {
        // The SIMD conversion in the packed order, then each block's four-value groups put
        // back in order (one 8-byte move each): the scalar dequantizer took a tenth of a
        // SmolLM2 prompt.
        use crate::kernels::packed::{SB, STEPS, superblocks};
        let mut tmp = vec![0u16; superblocks(k) * SB * QK];
        for r in 0..nr {
            // SAFETY: AVX-512 BF16 detected by the callers.
            unsafe { packed_row_bf16(w, layout, r0 + r, &mut tmp) };
            let dst = &mut wb[r * k..(r + 1) * k];
            for (b, blk) in dst.chunks_exact_mut(QK).enumerate() {
                let (si, l) = (b / SB, b % SB);
                for st in 0..STEPS {
                    let at = si * SB * QK + 64 * st + 4 * l;
                    blk[4 * st..4 * st + 4].copy_from_slice(&tmp[at..at + 4]);
                }
            }
        }
        wb[nr * k..].fill(0);
        return true;
    }
    let mut f = vec![0f32; wb.len()];
    let bytes = &w.data[r0 * w.row_bytes()..(r0 + nr) * w.row_bytes()];
    if w.dequantize_rows(bytes, &mut f[..nr * k]).is_err() {
        return false;
    }
    // SAFETY: both buffers hold wb.len() values, a multiple of 16 (callers size them so).
    unsafe { crate::kernels::x86::f32_to_bf16(f.as_ptr(), wb.as_mut_ptr(), wb.len()) };
    true
}

/// Activations rounded to bf16 for [`amx_tiles`]: row-major, `np` rows (the token count rounded
/// up to 32, zero past it) of `kk` values `stride` apart, in the packed order when the weights
/// are packed.
#[cfg(target_arch = "x86_64")]
pub(super) struct AmxActs {
    pub(super) xb: crate::kernels::Aligned64<u16>,
    pub(super) kk: usize,
    pub(super) stride: usize,
    pub(super) n: usize,
    pub(super) packed: bool,
    pub(super) cols: usize,
}

#[cfg(target_arch = "x86_64")]
impl AmxActs {
    pub(super) fn new(pool: &Threads, x: &[f32], n: usize, k: usize, packed: bool) -> AmxActs {
        use crate::kernels::amx::TILE;
        use crate::kernels::packed::{SB, superblocks};
        // Packed rows are dequantized in their own order (`x86::packed_row_to_bf16`), so the
        // activations take the same order: the shared dimension is then `kk`, padded
        // superblocks included.
        let kk = if packed { superblocks(k) * SB * QK } else { k };
        let np = n.div_ceil(2 * TILE) * 2 * TILE;
        // A tile load reads 64 bytes from each of 16 rows; at a row stride of 4 KiB (k = 2048)
        // all 16 fall in one L1 set, which holds 12. 64 bytes more per row spreads them.
        let stride = kk + 32;
        let mut xb = crate::kernels::Aligned64::zeroed(np * stride);
        pool.install(|| {
            xb[..n * stride]
                .par_chunks_mut(TILE * stride)
                .enumerate()
                .for_each(|(g, dst)| {
                    let mut f = vec![0f32; kk];
                    for (t, row) in dst.chunks_exact_mut(stride).enumerate() {
                        let src = &x[(g * TILE + t) * k..(g * TILE + t + 1) * k];
                        let src = if packed {
                            crate::kernels::packed::to_packed_order(src, &mut f);
                            &f[..]
                        } else {
                            src
                        };
                        // SAFETY: kk is a multiple of 32; both hold kk values.
                        unsafe {
                            crate::kernels::x86::f32_to_bf16(src.as_ptr(), row.as_mut_ptr(), kk)
                        };
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
pub(super) fn group_to_pairs(
    w: &QMatrix<'_>,
    g0: usize,
    gr: usize,
    kk: usize,
    rm: &mut [u16],
    wb: &mut [u16],
) -> bool {
    use crate::kernels::amx::TILE;
    let layout = crate::kernels::packed::Layout::of(w.dtype);
    // Whole 32-row blocks: the tiles read both 16-row slabs of a block.
    for h in 0..gr.div_ceil(2 * TILE) * 2 {
        let nr = gr.saturating_sub(h * TILE).min(TILE);
        rm[nr * kk..].iter_mut().for_each(|v| *v = 0);
        if let (true, Some(layout)) = (w.packed, layout) {
            for r in 0..nr {
                let row = &mut rm[r * kk..(r + 1) * kk];
                // SAFETY: AVX-512 BF16 comes with AMX.
                unsafe { packed_row_bf16(w, layout, g0 + h * TILE + r, row) };
            }
        } else if nr > 0 && !rows_to_bf16(w, g0 + h * TILE, nr, rm) {
            return false;
        }
        // SAFETY: rm holds 16 rows of kk values, wb room for 16·kk more from h·16·kk.
        unsafe {
            crate::kernels::x86::rows_to_pairs16(
                rm.as_ptr(),
                kk,
                kk,
                wb.as_mut_ptr().add(h * TILE * kk),
            )
        };
    }
    true
}

/// Whether [`amx_tiles`] takes `w` for `n` tokens.
#[cfg(target_arch = "x86_64")]
pub(super) fn amx_applies(caps: CpuCaps, w: &QMatrix<'_>, n: usize) -> bool {
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
pub(super) fn amx_tiles(
    pool: &Threads,
    caps: CpuCaps,
    w: &QMatrix<'_>,
    up: Option<&QMatrix<'_>>,
    acts: &AmxActs,
    out: &mut [f32],
) -> Result<(), String> {
    use crate::kernels::amx::{TILE, Tiles};
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
            crate::kernels::Aligned64::<u16>::zeroed(group * kk),
            crate::kernels::Aligned64::<u16>::zeroed(if up.is_some() { group * kk } else { 0 }),
            crate::kernels::Aligned64::<f32>::zeroed(8 * TILE * TILE),
        )
    };
    type Bufs = (
        Vec<u16>,
        crate::kernels::Aligned64<u16>,
        crate::kernels::Aligned64<u16>,
        crate::kernels::Aligned64<f32>,
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
                    crate::kernels::ops::silu_mul(caps, g, u);
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

/// Rows converted to bf16 per task.
pub(super) const BF16_GROUP: usize = 16;

/// Prefill in bf16 (`vdpbf16ps`) on AVX-512 BF16 processors: the activations are rounded to
/// bf16 once, each task dequantizes a group of 16 weight rows to bf16 once (kept in L2), then
/// sweeps all tokens 4 at a time, each 4-token slice of activations (L1) meeting the group's 4
/// row quartets. Rounding matches PyTorch's bf16 inference; the f32 accumulation does not
/// round.
#[cfg(target_arch = "x86_64")]
pub(super) fn bf16_tiles(
    pool: &Threads,
    w: &QMatrix<'_>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<(), String> {
    use crate::kernels::packed::{Layout, SB, superblocks};
    let (rows, k) = (w.rows, w.cols);
    // Packed rows convert to bf16 with SIMD in their own order (`x86::packed_row_to_bf16`), so
    // the activations take that order too, as for AMX. A row with a tail superblock would then
    // multiply its missing lanes too (SmolLM2's 576 columns fill 1024, Qwen2.5-0.5B's 896):
    // there the rows are put back in the natural order (`rows_to_bf16`).
    let padded = superblocks(k) * SB * QK;
    let layout = if w.packed && padded == k {
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
                    crate::kernels::packed::to_packed_order(src, &mut f);
                    &f[..]
                } else {
                    src
                };
                // SAFETY: kk is a multiple of 32 (checked by the caller, or whole
                // superblocks); both hold kk values.
                unsafe { crate::kernels::x86::f32_to_bf16(src.as_ptr(), dst.as_mut_ptr(), kk) }
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
                // SAFETY: AVX-512 BF16 detected by the caller.
                unsafe { packed_row_bf16(w, layout, r0 + r, &mut wb[r * kk..(r + 1) * kk]) };
            }
        } else if !rows_to_bf16(w, r0, nr, &mut wb) {
            failed.store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        for t in (0..nt).step_by(4) {
            for q in (0..nr).step_by(4) {
                // SAFETY: wb holds rows q..q+4 (zero past nr), xb tokens t..t+4 (zero past n).
                let v = unsafe {
                    crate::kernels::x86::tile4x4_bf16(
                        wb.as_ptr().add(q * kk),
                        xb.as_ptr().add(t * kk),
                        kk,
                    )
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
