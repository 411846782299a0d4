//! Kernel throughput per weight format: decode (one activation row, GB/s of the file's bytes
//! streamed) and prefill (many rows, GFLOP/s), alternating in one run between ggml's layout and
//! the packed one, on AVX2 alone and on the best kernels this processor has.
//!
//!   cargo run --release -p bakeoff-engine --example kernel_speed [threads] [TYPE,...]
//!
//! Types by ggml's names or `WeightType`'s (q4_k or Q4K, iq4_xs, f16); an unknown one stops the run.
//!
//! The decode matrix is about 1 GB and 2048 columns, streamed from memory; `BAKEOFF_KS_DECODE_BYTES`
//! and `BAKEOFF_KS_DECODE_COLS` change both (a matrix that fits the caches times the kernel's own
//! rate rather than the memory's, e.g. 4000000 bytes at 1536 columns, a 1.5B model's rows).
//! The decode test also prints the rate at which one thread packs its matrix (as a load without
//! the packed-weights file does, into fresh anonymous pages).
//! `BAKEOFF_KS_TOKENS` sets the prefill tests' token count (256; 8 times continuous batching);
//! `BAKEOFF_KS_PREFILL="ROWSxCOLS,..."` their shapes (one 2048x2048 without it), `none` for decode alone.
//! On AVX-512 BF16 without AMX, prompts on packed rows that `vnni_prompt_rows` leaves to them
//! take the bf16 tiles; the "vnni packed" cell times the 8-bit VNNI tile on them as well.
//! `BAKEOFF_KS_AHEAD="3072:512,6144:0"` times the best decode kernel once per prefetch distance
//! (bytes ahead into L2 : into L1, 0 for none; F16 and BF16 take the L2 distance alone) instead
//! of the paths, alternating in one run, to choose `DecodeAhead` on a new processor.

use std::time::Instant;

use bakeoff_engine::WeightType;
use bakeoff_engine::kernels::matmul::{QMatrix, matmul};
use bakeoff_engine::kernels::threads::Threads;
use bakeoff_engine::kernels::{CpuCaps, DecodeAhead, packed};
use bakeoff_engine::loader::store::Blob;

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2);
    let all = [
        WeightType::Q4_0,
        WeightType::Q8_0,
        WeightType::Q4_1,
        WeightType::Q5_0,
        WeightType::Q4K,
        WeightType::Q5K,
        WeightType::Q6K,
        WeightType::Q3K,
        WeightType::Q2K,
        WeightType::IQ4_XS,
        WeightType::F16,
        WeightType::BF16,
    ];
    // Names as ggml writes them or as `WeightType` prints them (q4_k, Q4_K, Q4K); a name that
    // is none of them stops the run, as a run that timed nothing said nothing.
    let key = |n: &str| n.replace('_', "").to_ascii_lowercase();
    let types: Vec<WeightType> = match args.next() {
        Some(list) => list
            .split(',')
            .map(|n| {
                all.into_iter()
                    .find(|t| key(&format!("{t:?}")) == key(n))
                    .unwrap_or_else(|| {
                        let known: Vec<String> = all.iter().map(|t| format!("{t:?}")).collect();
                        eprintln!(
                            "kernel_speed: unknown type {n:?}; known: {}",
                            known.join(", ")
                        );
                        std::process::exit(2)
                    })
            })
            .collect(),
        None => all.to_vec(),
    };
    // "none" (or nothing) times decode alone.
    let prefill: Option<Vec<(usize, usize)>> = std::env::var("BAKEOFF_KS_PREFILL").ok().map(|v| {
        v.split(',')
            .filter(|sh| !sh.is_empty() && *sh != "none")
            .map(|sh| {
                sh.split_once('x')
                    .and_then(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?)))
                    .unwrap_or_else(|| {
                        eprintln!("kernel_speed: BAKEOFF_KS_PREFILL wants ROWSxCOLS,... or none, not {sh:?}");
                        std::process::exit(2)
                    })
            })
            .collect()
    });
    let pool = Threads::new(threads).expect("threads");
    let aheads: Option<Vec<(usize, usize)>> = std::env::var("BAKEOFF_KS_AHEAD").ok().map(|v| {
        v.split(',')
            .map(|d| {
                d.split_once(':')
                    .and_then(|(l2, l1)| Some((l2.parse().ok()?, l1.parse().ok()?)))
                    .unwrap_or_else(|| {
                        eprintln!(
                            "kernel_speed: BAKEOFF_KS_AHEAD wants L2:L1,... in bytes, not {d:?}"
                        );
                        std::process::exit(2)
                    })
            })
            .collect()
    });
    let best = CpuCaps::detect();
    // Prompts: AMX (where present) takes both layouts, so the other paths are timed without it.
    let paths = [
        ("avx2", CpuCaps::avx2_only()),
        ("best", CpuCaps::without_amx()),
    ];
    println!("threads {threads}, best = {}", best.describe());
    #[cfg(target_arch = "x86_64")]
    {
        // The ceilings of the integer prompt tiles: their multiply instructions alone, 12
        // independent ones in flight per thread (more than latency times throughput), no loads.
        if best.avx2 {
            // `vpmaddubsw` (32 byte products) alone bounds the AVX2 tiles, which add several
            // steps' 16-bit sums before one widening `vpmaddwd` (eight for 4-bit values, four for
            // 5-bit ones); paired with a `vpmaddwd` each, it is the bound of a product widened at
            // every step, as ggml's AVX2 dot products are.
            // SAFETY: AVX2 detected.
            let (alone, check) = peak(threads, |n| unsafe { maddubs_chains::<false>(n) });
            // SAFETY: AVX2 detected.
            let (paired, check2) = peak(threads, |n| unsafe { maddubs_chains::<true>(n) });
            println!(
                "vpmaddubsw peak: {:.2} G/s on {threads} threads = {:.0} int8 GOP/s (2 x 32 per instruction); with a vpmaddwd each: {:.0} GOP/s (check {})",
                alone / 1e9,
                alone * 64.0 / 1e9,
                paired * 64.0 / 1e9,
                check && check2
            );
        }
        if best.avx512vnni {
            // SAFETY: AVX-512 VNNI detected.
            let (per_s, check) = peak(threads, |n| unsafe { dpbusd_chains(n) });
            println!(
                "vpdpbusd peak: {:.2} G/s on {threads} threads = {:.0} int8 GOP/s (2 x 64 per instruction; check {check})",
                per_s / 1e9,
                per_s * 128.0 / 1e9,
            );
        }
    }
    for dt in types {
        let bpe = dt.type_size() as f64 / dt.block_size() as f64;
        // Decode: a matrix far larger than the last-level cache, as a model's weights are;
        // about 1 GB in the file's format. Prefill: 2048x2048 weights, 256 tokens, or the
        // shapes of BAKEOFF_KS_PREFILL ("ROWSxCOLS,..."; 256 tokens each), e.g. a 1.5B model's
        // "1536x1536,8960x1536,1536x8960".
        let decode_bytes: f64 = std::env::var("BAKEOFF_KS_DECODE_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1e9);
        let decode_cols: usize = std::env::var("BAKEOFF_KS_DECODE_COLS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2048);
        let mut tests = vec![(
            "decode".to_string(),
            ((decode_bytes / (decode_cols as f64 * bpe)) as usize).max(4),
            decode_cols,
            1,
        )];
        let tokens: usize = std::env::var("BAKEOFF_KS_TOKENS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256);
        match &prefill {
            Some(shapes) => {
                for &(r, c) in shapes {
                    tests.push((format!("prefill {r}x{c}"), r, c, tokens));
                }
            }
            None => tests.push(("prefill".into(), 2048, 2048, tokens)),
        }
        for (test, rows, cols, n) in tests {
            if !cols.is_multiple_of(dt.block_size()) {
                println!(
                    "{dt:?} {test}: skipped, {cols} columns are not a whole number of {}-value blocks",
                    dt.block_size()
                );
                continue;
            }
            let bytes = vec![0x11u8; (rows as f64 * cols as f64 * bpe) as usize];
            let m = QMatrix {
                dtype: dt,
                rows,
                cols,
                data: &bytes,
                packed: false,
            };
            let t = Instant::now();
            let pk = packed::packable(dt, cols).then(|| pack(&m));
            if pk.is_some() && n == 1 {
                let s = t.elapsed().as_secs_f64();
                println!(
                    "{dt:?} {test}: packed on one thread at {:.0} MB/s of the file's bytes",
                    bytes.len() as f64 / s / 1e6
                );
            }
            let pm = pk.as_ref().map(|p| QMatrix {
                data: p.bytes(),
                packed: true,
                ..m
            });
            let x = vec![0.25f32; n * cols];
            let mut out = vec![0f32; n * rows];
            let mut cells: Vec<(String, &QMatrix<'_>, CpuCaps)> = Vec::new();
            if let (1, Some(list)) = (n, &aheads) {
                for &d in list {
                    let ahead = DecodeAhead {
                        bytes: d,
                        narrow: d,
                        half: d.0,
                    };
                    let name = format!("ahead {}:{}", d.0, d.1);
                    let w = pm.as_ref().unwrap_or(&m);
                    cells.push((name, w, CpuCaps { ahead, ..best }));
                }
            }
            let by_path = cells.is_empty();
            for (name, caps) in paths.into_iter().filter(|_| by_path) {
                if name == "best" && caps == CpuCaps::avx2_only() {
                    continue;
                }
                cells.push((format!("{name} ggml"), &m, caps));
                if let Some(pm) = &pm {
                    cells.push((format!("{name} packed"), pm, caps));
                }
            }
            // The 8-bit VNNI tile where the bf16 one may take packed rows, to weigh the two.
            if best.avx512bf16
                && best.avx512vnni
                && n > 1
                && let Some(pm) = &pm
            {
                let caps = CpuCaps {
                    avx512bf16: false,
                    ..best
                };
                cells.push(("vnni packed".into(), pm, caps));
            }
            if best.amx && n > 1 {
                cells.push(("amx".into(), pm.as_ref().unwrap_or(&m), best));
            }
            let mut secs = vec![f64::MAX; cells.len()];
            for _ in 0..if n == 1 {
                6 + (2e9 / decode_bytes) as usize
            } else {
                3
            } {
                for (s, (_, w, caps)) in secs.iter_mut().zip(&cells) {
                    let t = Instant::now();
                    matmul(&pool, *caps, w, &x, n, &mut out).expect("matmul");
                    *s = s.min(t.elapsed().as_secs_f64());
                }
            }
            let figures: Vec<String> = cells
                .iter()
                .zip(&secs)
                .map(|((name, _, _), s)| {
                    if n == 1 {
                        format!("{name} {:.1} GB/s", bytes.len() as f64 / s / 1e9)
                    } else {
                        let flop = 2.0 * rows as f64 * cols as f64 * n as f64;
                        format!("{name} {:.1} GFLOP/s", flop / s / 1e9)
                    }
                })
                .collect();
            println!("{dt:?} {test}: {}", figures.join(", "));
        }
    }
}

/// The matrix in the packed layout the CPU backend builds at load.
/// Packed into anonymous huge pages, where a model's packed matrices live (or in the page
/// cache's huge folios, mapped the same way).
fn pack(m: &QMatrix<'_>) -> Blob {
    let (rb, pb) = (m.row_bytes(), packed::row_bytes(m.dtype, m.cols));
    Blob::anon(m.rows * pb, |p| {
        for (s, o) in m.data.chunks_exact(rb).zip(p.chunks_exact_mut(pb)) {
            packed::pack_row(m.dtype, s, o);
        }
    })
    .expect("an anonymous mapping for the packed matrix")
}

/// Runs `chains(iters)` (`iters` rounds of 12 independent steps) on `threads` OS threads at once
/// (the pool's team may run a short job on fewer); returns the steps per second of all of them
/// and whether their results were non-zero.
#[cfg(target_arch = "x86_64")]
fn peak(threads: usize, chains: impl Fn(u64) -> i64 + Sync) -> (f64, bool) {
    let iters = 50_000_000u64;
    let sum = std::sync::atomic::AtomicI64::new(0);
    let t = Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| {
                sum.fetch_add(chains(iters), std::sync::atomic::Ordering::Relaxed);
            });
        }
    });
    let steps = 12.0 * iters as f64 * threads as f64;
    (
        steps / t.elapsed().as_secs_f64(),
        sum.load(std::sync::atomic::Ordering::Relaxed) != 0,
    )
}

/// `iters` rounds of 12 independent `vpmaddubsw`, each followed by a `vpmaddwd` where `WIDEN`;
/// returns a value that depends on the last round. Written out in assembly: as intrinsics the
/// compiler merges steps of equal operands, and chaining each step's result into the next
/// measured the chains' latency rather than the ports' throughput.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn maddubs_chains<const WIDEN: bool>(iters: u64) -> i64 {
    use std::arch::x86_64::*;
    let (w, x, ones) = (
        _mm256_set1_epi8(3),
        _mm256_set1_epi8(5),
        _mm256_set1_epi16(1),
    );
    let mut out = _mm256_setzero_si256();
    macro_rules! rounds {
        ($($step:literal),+) => {
            for _ in 0..iters {
                // SAFETY: register-only AVX2 instructions; every register written is declared.
                // Not `pure`: the same inputs every round, and each round must run.
                unsafe {
                    std::arch::asm!(
                        $($step),+,
                        w = in(ymm_reg) w, x = in(ymm_reg) x, o = in(ymm_reg) ones,
                        out = out(ymm_reg) out,
                        t0 = out(ymm_reg) _, t1 = out(ymm_reg) _, t2 = out(ymm_reg) _,
                        t3 = out(ymm_reg) _, t4 = out(ymm_reg) _, t5 = out(ymm_reg) _,
                        t6 = out(ymm_reg) _, t7 = out(ymm_reg) _, t8 = out(ymm_reg) _,
                        t9 = out(ymm_reg) _, t10 = out(ymm_reg) _,
                        options(nomem, nostack),
                    );
                }
            }
        };
    }
    if WIDEN {
        rounds!(
            "vpmaddubsw {t0}, {w}, {x}",
            "vpmaddwd {t0}, {t0}, {o}",
            "vpmaddubsw {t1}, {w}, {x}",
            "vpmaddwd {t1}, {t1}, {o}",
            "vpmaddubsw {t2}, {w}, {x}",
            "vpmaddwd {t2}, {t2}, {o}",
            "vpmaddubsw {t3}, {w}, {x}",
            "vpmaddwd {t3}, {t3}, {o}",
            "vpmaddubsw {t4}, {w}, {x}",
            "vpmaddwd {t4}, {t4}, {o}",
            "vpmaddubsw {t5}, {w}, {x}",
            "vpmaddwd {t5}, {t5}, {o}",
            "vpmaddubsw {t6}, {w}, {x}",
            "vpmaddwd {t6}, {t6}, {o}",
            "vpmaddubsw {t7}, {w}, {x}",
            "vpmaddwd {t7}, {t7}, {o}",
            "vpmaddubsw {t8}, {w}, {x}",
            "vpmaddwd {t8}, {t8}, {o}",
            "vpmaddubsw {t9}, {w}, {x}",
            "vpmaddwd {t9}, {t9}, {o}",
            "vpmaddubsw {t10}, {w}, {x}",
            "vpmaddwd {t10}, {t10}, {o}",
            "vpmaddubsw {out}, {w}, {x}",
            "vpmaddwd {out}, {out}, {o}"
        );
    } else {
        rounds!(
            "vpmaddubsw {t0}, {w}, {x}",
            "vpmaddubsw {t1}, {w}, {x}",
            "vpmaddubsw {t2}, {w}, {x}",
            "vpmaddubsw {t3}, {w}, {x}",
            "vpmaddubsw {t4}, {w}, {x}",
            "vpmaddubsw {t5}, {w}, {x}",
            "vpmaddubsw {t6}, {w}, {x}",
            "vpmaddubsw {t7}, {w}, {x}",
            "vpmaddubsw {t8}, {w}, {x}",
            "vpmaddubsw {t9}, {w}, {x}",
            "vpmaddubsw {t10}, {w}, {x}",
            "vpmaddubsw {out}, {w}, {x}",
            "/* {o} */"
        );
    }
    _mm256_extract_epi32::<0>(out) as i64
}

/// `iters` rounds of 12 independent `vpdpbusd`; returns a value that depends on all of them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpbusd_chains(iters: u64) -> i64 {
    use std::arch::x86_64::*;
    let (mut w, x) = (_mm512_set1_epi8(3), _mm512_set1_epi8(5));
    let mut a = [_mm512_setzero_si512(); 12];
    for _ in 0..iters {
        for a in a.iter_mut() {
            *a = _mm512_dpbusd_epi32(*a, w, x);
        }
        // An operand the compiler cannot see keeps the loop from being folded into a
        // multiplication, without a trip through memory.
        // SAFETY: an empty instruction sequence.
        unsafe { std::arch::asm!("/* {0} */", inout(zmm_reg) w, options(pure, nomem, nostack)) };
    }
    a.iter().map(|&v| _mm512_reduce_add_epi32(v) as i64).sum()
}
