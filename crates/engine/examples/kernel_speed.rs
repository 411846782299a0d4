//! Kernel throughput per weight format: decode (one activation row, GB/s of weights streamed)
//! and prefill (many rows, GFLOP/s), for the AVX2 and AVX-512 paths alternated in one run.
//!
//!   cargo run --release -p bakeoff-engine --example kernel_speed [threads]

use std::time::Instant;

use bakeoff_engine::WeightType;
use bakeoff_engine::kernels::matmul::{QMatrix, matmul};
use bakeoff_engine::kernels::threads::Threads;
use bakeoff_engine::kernels::{CpuCaps, packed};

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let pool = Threads::new(threads).expect("threads");
    let paths = [("avx2", CpuCaps::avx2_only()), ("best", CpuCaps::detect())];
    println!("threads {threads}, best = {}", CpuCaps::detect().describe());
    for dt in [
        WeightType::Q4_0,
        WeightType::Q8_0,
        WeightType::F16,
        WeightType::BF16,
    ] {
        let bpe = dt.type_size() as f64 / dt.block_size() as f64;
        // Decode: a matrix far larger than the last-level cache (480 MiB on the reference
        // machine), as a model's weights are; 1.5 GB whatever the format.
        let cols = 2048usize;
        let rows = (1.5e9 / (cols as f64 * bpe)) as usize;
        let bytes = vec![0x11u8; (rows as f64 * cols as f64 * bpe) as usize];
        let m = QMatrix {
            dtype: dt,
            rows,
            cols,
            data: &bytes,
            packed: false,
        };
        let x = vec![0.25f32; cols];
        let mut out = vec![0f32; rows];
        // The packed layout (AVX-512 VNNI, Q4_0 / Q8_0), timed in the same alternation.
        let packed_bytes = packed::packable(dt, cols).then(|| pack(&m));
        let pm = packed_bytes.as_ref().map(|p| QMatrix {
            data: p,
            packed: true,
            ..m
        });
        let mut best = [f64::MAX; 3];
        for _ in 0..6 {
            for (i, (_, caps)) in paths.iter().enumerate() {
                let t = Instant::now();
                matmul(&pool, *caps, &m, &x, 1, &mut out).expect("matmul");
                best[i] = best[i].min(t.elapsed().as_secs_f64());
            }
            if let Some(pm) = &pm {
                let t = Instant::now();
                matmul(&pool, CpuCaps::detect(), pm, &x, 1, &mut out).expect("matmul");
                best[2] = best[2].min(t.elapsed().as_secs_f64());
            }
        }
        let gbs = |s: f64| bytes.len() as f64 / s / 1e9;
        let packed_figure = if pm.is_some() {
            format!(", packed {:.1} GB/s", gbs(best[2]))
        } else {
            String::new()
        };
        println!(
            "{dt:?} decode: avx2 {:.1} GB/s, best ggml layout {:.1} GB/s{packed_figure}",
            gbs(best[0]),
            gbs(best[1])
        );
        // Prefill: 2048x2048 weights, 256 tokens.
        let (rows, n) = (2048usize, 256usize);
        let bytes = vec![0x11u8; (rows as f64 * cols as f64 * bpe) as usize];
        let m = QMatrix {
            dtype: dt,
            rows,
            cols,
            data: &bytes,
            packed: false,
        };
        let x = vec![0.25f32; n * cols];
        let mut out = vec![0f32; n * rows];
        let pk = packed::packable(dt, cols).then(|| pack(&m));
        let pm = pk.as_ref().map(|p| QMatrix {
            data: p,
            packed: true,
            ..m
        });
        // Without AMX the best path is the bf16 tiles (ggml layout) or the packed VNNI tiles;
        // with it, both layouts go to the AMX tiles.
        let amx = CpuCaps::detect().amx;
        let no_amx = CpuCaps::without_amx();
        let mut best = [f64::MAX; 4];
        for _ in 0..3 {
            for (i, (_, caps)) in paths.iter().enumerate() {
                let caps = if i == 1 { no_amx } else { *caps };
                let t = Instant::now();
                matmul(&pool, caps, &m, &x, n, &mut out).expect("matmul");
                best[i] = best[i].min(t.elapsed().as_secs_f64());
            }
            if let Some(pm) = &pm {
                let t = Instant::now();
                matmul(&pool, no_amx, pm, &x, n, &mut out).expect("matmul");
                best[2] = best[2].min(t.elapsed().as_secs_f64());
            }
            if amx {
                let t = Instant::now();
                matmul(
                    &pool,
                    CpuCaps::detect(),
                    pm.as_ref().unwrap_or(&m),
                    &x,
                    n,
                    &mut out,
                )
                .expect("matmul");
                best[3] = best[3].min(t.elapsed().as_secs_f64());
            }
        }
        let gf = |s: f64| 2.0 * rows as f64 * cols as f64 * n as f64 / s / 1e9;
        let mut packed_figure = if pm.is_some() {
            format!(", packed VNNI tiles {:.1} GFLOP/s", gf(best[2]))
        } else {
            String::new()
        };
        if amx {
            packed_figure.push_str(&format!(", AMX {:.1} GFLOP/s", gf(best[3])));
        }
        println!(
            "{dt:?} prefill: avx2 {:.1} GFLOP/s, best ggml layout without AMX {:.1} GFLOP/s{packed_figure}",
            gf(best[0]),
            gf(best[1])
        );
    }
}

/// The matrix in the packed layout the CPU backend builds at load on VNNI processors.
fn pack(m: &QMatrix<'_>) -> Vec<u8> {
    let (rb, pb) = (m.row_bytes(), packed::row_bytes(m.dtype, m.cols));
    let mut p = vec![0u8; m.rows * pb];
    for (s, o) in m.data.chunks_exact(rb).zip(p.chunks_exact_mut(pb)) {
        packed::pack_row(m.dtype, s, o);
    }
    p
}
