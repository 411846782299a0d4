#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The CPU kernels against a plain f32 reference, for every weight format: the SIMD path and the
//! portable path must agree with each other and with dequantize-then-multiply.

use bakeoff_engine::WeightType;
use bakeoff_engine::kernels::dequant::dequantize_into;
use bakeoff_engine::kernels::matmul::{QMatrix, matmul};
use bakeoff_engine::kernels::threads::Threads;
use bakeoff_engine::kernels::{CpuCaps, DecodeAhead, ops};
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn encode(dtype: WeightType, vals: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    let Some(candle_type) = dtype.to_candle() else {
        // candle cannot quantize IQ4_NL / IQ4_XS: random blocks, every f16 scale 1/128 (and
        // IQ4_XS's 6-bit sub-block scales random), which is all a matmul test needs.
        let bytes = rand_vec(rows * cols / dtype.block_size() * dtype.type_size(), 9);
        let mut b: Vec<u8> = bytes.iter().map(|v| (v.to_bits() >> 7) as u8).collect();
        for blk in b.chunks_exact_mut(dtype.type_size()) {
            blk[..2].copy_from_slice(&half::f16::from_f32(1.0 / 128.0).to_le_bytes());
        }
        return b;
    };
    let t = Tensor::from_slice(vals, (rows, cols), &Device::Cpu).unwrap();
    QTensor::quantize(&t, candle_type)
        .unwrap()
        .data()
        .unwrap()
        .to_vec()
}

fn pool(n: usize) -> Threads {
    Threads::new(n).unwrap()
}

fn check(dtype: WeightType, cols: usize, tol: f32) {
    check_n(dtype, cols, tol, tol, 5);
}

/// `tol` bounds the portable path; `simd_tol` the run-time detected SIMD paths.
fn check_n(dtype: WeightType, cols: usize, tol: f32, simd_tol: f32, n: usize) {
    let rows = 70;
    let w = rand_vec(rows * cols, 1);
    let x = rand_vec(n * cols, 2);
    let bytes = encode(dtype, &w, rows, cols);
    let m = QMatrix {
        dtype,
        rows,
        cols,
        data: &bytes,
        packed: false,
    };
    let mut wd = vec![0f32; rows * cols];
    dequantize_into(dtype, &bytes, &mut wd).unwrap();
    let mut reference = vec![0f32; n * rows];
    for t in 0..n {
        for r in 0..rows {
            reference[t * rows + r] = (0..cols)
                .map(|c| wd[r * cols + c] as f64 * x[t * cols + c] as f64)
                .sum::<f64>() as f32;
        }
    }
    let scale = (cols as f32).sqrt();
    for (caps, threads) in [
        (CpuCaps::portable(), 1),
        (CpuCaps::detect(), 1),
        (CpuCaps::detect(), 3),
    ] {
        let mut out = vec![0f32; n * rows];
        matmul(&pool(threads), caps, &m, &x, n, &mut out).unwrap();
        let worst = out
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // 16+ tokens on quantized or BF16 weights take the bf16 tiles where the processor has
        // them: activations and weights rounded to bf16 (8 significant bits) as in PyTorch's
        // bf16 inference.
        let bf16 = (caps.avx512bf16 || caps.amx)
            && n >= 16
            && !matches!(dtype, WeightType::F32 | WeightType::F16);
        let tol = if bf16 {
            0.005
        } else if caps.avx2 {
            simd_tol
        } else {
            tol
        };
        assert!(
            worst <= tol * scale,
            "{dtype:?} {caps:?} x{threads}: max error {worst} > {}",
            tol * scale
        );
    }
}

#[test]
fn float_formats_match_reference() {
    check(WeightType::F32, 96, 1e-6);
    check(WeightType::F16, 96, 1e-5);
    // One token takes the streaming F16 kernel: 64 values a step, then 16 at a time.
    for cols in [96, 208, 256] {
        check_n(WeightType::F16, cols, 1e-5, 1e-5, 1);
    }
    check(WeightType::BF16, 100, 1e-5);
    // One token on BF16 takes the same streaming kernel, widening by a shift.
    for cols in [96, 208, 256] {
        check_n(WeightType::BF16, cols, 1e-5, 1e-5, 1);
    }
    // 16+ tokens: the bf16 tiles where the processor has them.
    check_n(WeightType::BF16, 96, 1e-5, 1e-5, 18);
}

#[test]
fn q8_0_and_q4_0_match_dequantized_reference() {
    // The activation is quantized to 8 bits, so the error is bounded by its step, not by zero.
    check(WeightType::Q8_0, 128, 0.02);
    check(WeightType::Q4_0, 128, 0.05);
}

#[test]
fn quantized_prefill_tiles_match_reference() {
    // 16+ tokens take the dequantize-to-f32 tile path, which keeps activations exact.
    for dt in [WeightType::Q8_0, WeightType::Q4_0, WeightType::Q4K] {
        check_n(dt, 256, 0.02, 1e-5, 19);
    }
}

#[test]
fn iq4_matrices_multiply_as_their_dequantized_values() {
    // Exact dequantization and f32 products: only the summation order differs (IQ4_XS's
    // sub-block scales make its weights up to 31 times larger, hence its bound).
    check(WeightType::IQ4_NL, 128, 1e-5);
    check(WeightType::IQ4_XS, 256, 3e-4);
    check_n(WeightType::IQ4_NL, 256, 1e-5, 1e-5, 19);
    check_n(WeightType::IQ4_XS, 512, 3e-4, 3e-4, 7);
}

#[test]
fn k_quants_run_through_candle_blocks() {
    check(WeightType::Q4K, 256, 0.02);
    check(WeightType::Q6K, 256, 0.02);
    check(WeightType::Q3K, 256, 0.05);
}

#[test]
fn simd_and_portable_agree_closely_on_q8_0() {
    let (rows, cols) = (33, 256);
    let w = encode(WeightType::Q8_0, &rand_vec(rows * cols, 5), rows, cols);
    let x = rand_vec(cols, 6);
    let m = QMatrix {
        dtype: WeightType::Q8_0,
        rows,
        cols,
        data: &w,
        packed: false,
    };
    let (mut a, mut b) = (vec![0f32; rows], vec![0f32; rows]);
    matmul(&pool(1), CpuCaps::portable(), &m, &x, 1, &mut a).unwrap();
    matmul(&pool(2), CpuCaps::detect(), &m, &x, 1, &mut b).unwrap();
    for (p, s) in a.iter().zip(&b) {
        assert!((p - s).abs() <= 1e-4 * p.abs().max(1.0), "{p} vs {s}");
    }
}

#[test]
fn shape_mismatch_is_an_error_not_a_panic() {
    let w = vec![0u8; 10];
    let m = QMatrix {
        dtype: WeightType::F32,
        rows: 2,
        cols: 2,
        data: &w,
        packed: false,
    };
    let mut out = vec![0f32; 2];
    let e = matmul(&pool(1), CpuCaps::detect(), &m, &[0.0; 2], 1, &mut out).unwrap_err();
    assert!(e.contains("needs 16 bytes"), "{e}");
}

#[test]
fn rope_styles_are_permutations_of_each_other() {
    // Interleaved RoPE on permuted dims equals NEOX RoPE on the original ones: the identity
    // that lets Llama GGUF files (with permuted Q/K rows) reproduce Hugging Face results.
    let hd = 8;
    let x = rand_vec(2 * hd, 9);
    let table = ops::RopeTable::new(10000.0, hd, 3, 1);
    let mut neox = x.clone();
    ops::rope(
        &mut neox,
        2,
        hd,
        &table,
        bakeoff_engine::models::RopeStyle::Neox,
    );
    let perm = |v: &[f32]| -> Vec<f32> {
        let mut o = vec![0f32; v.len()];
        for h in 0..2 {
            for i in 0..hd / 2 {
                o[h * hd + 2 * i] = v[h * hd + i];
                o[h * hd + 2 * i + 1] = v[h * hd + i + hd / 2];
            }
        }
        o
    };
    let mut inter = perm(&x);
    ops::rope(
        &mut inter,
        2,
        hd,
        &table,
        bakeoff_engine::models::RopeStyle::Interleaved,
    );
    for (a, b) in perm(&neox).iter().zip(&inter) {
        assert!((a - b).abs() < 1e-6);
    }
}

#[test]
fn rms_norm_matches_definition() {
    let x = vec![1.0f32, 2.0, 3.0, 4.0];
    let w = vec![1.0f32, 0.5, 2.0, 1.0];
    let mut out = vec![0f32; 4];
    ops::rms_norm(&x, &w, 1e-5, &mut out);
    let rms = ((1.0 + 4.0 + 9.0 + 16.0) / 4.0f32 + 1e-5).sqrt();
    for i in 0..4 {
        assert!((out[i] - x[i] / rms * w[i]).abs() < 1e-6);
    }
}

#[test]
fn packed_layout_matches_ggml_layout() {
    use bakeoff_engine::kernels::packed;
    // 25 blocks per row (24 for the K-quants): one whole superblock of 16 and a tail. Q4_1
    // and Q4_K take the nibbles-with-offsets layouts, Q5_0, Q5_1 and Q5_K the 5-bit planes, Q6_K
    // the 6-bit planes with a scale per half block, IQ4_NL and IQ4_XS signed bytes.
    let rows = 45;
    for (dtype, cols) in [
        (WeightType::Q8_0, 800),
        (WeightType::Q4_0, 800),
        (WeightType::Q5_0, 800),
        (WeightType::Q4_1, 800),
        (WeightType::Q4K, 768),
        (WeightType::Q4K, 4864),
        (WeightType::Q6K, 768),
        (WeightType::Q6K, 4864),
        // Q3_K: Q6_K's head and half blocks, 3-bit values in a 2-bit and a bit plane.
        (WeightType::Q3K, 768),
        (WeightType::Q3K, 4864),
        (WeightType::Q3K, 2560),
        // Q2_K: 2-bit values under a scale and a min per half block; a tail, whole
        // superblocks on the VNNI prompt tiles, and the bf16 tiles' narrow rows.
        (WeightType::Q2K, 768),
        (WeightType::Q2K, 4864),
        (WeightType::Q2K, 1536),
        (WeightType::Q2K, 1024),
        (WeightType::Q5_1, 800),
        (WeightType::Q5K, 768),
        // Wide enough for the 8-bit VNNI prompt tiles (`vnni_prompt_rows`).
        (WeightType::Q5_0, 1600),
        (WeightType::Q5_1, 1600),
        (WeightType::Q5K, 4864),
        // K rows of at most 4096 columns, whose heads the VNNI prompt tile reads unpacked once
        // per row (a whole superblock, a tail of 8 blocks, five superblocks).
        (WeightType::Q4K, 1536),
        (WeightType::Q5K, 1792),
        (WeightType::Q6K, 2560),
        // Past 64 blocks the AVX2 5-bit prompt tile takes two rows against four tokens, below
        // one row against eight.
        (WeightType::Q5_0, 2400),
        (WeightType::Q5_1, 2400),
        (WeightType::IQ4_XS, 4864),
        (WeightType::IQ4_NL, 800),
        (WeightType::IQ4_XS, 768),
        // Prompts on these narrow rows take the bf16 tiles: in the packed order at whole
        // superblocks (1024), put back in the natural order with a tail (896, 1280).
        (WeightType::Q5_0, 896),
        (WeightType::Q4_1, 1024),
        (WeightType::Q6K, 1280),
        (WeightType::Q4_0, 1280),
        // SmolLM2-135M's rows: a tail of 2 blocks after one whole superblock.
        (WeightType::Q4_1, 576),
        (WeightType::Q8_0, 576),
        // Rows of a tail alone, which prompts on AVX2 alone multiply in f32 (nibbles) or in
        // the 8-bit tile widened (Q8_0).
        (WeightType::Q4_1, 96),
        (WeightType::Q4_0, 64),
        (WeightType::Q8_0, 96),
    ] {
        assert!(packed::packable(dtype, cols), "{dtype:?}");
        let w = rand_vec(rows * cols, 7);
        let mut bytes = encode(dtype, &w, rows, cols);
        if dtype == WeightType::Q8_0 {
            // -128 is a valid Q8_0 quant that ggml's own quantizer never writes.
            bytes[2] = 0x80;
        }
        let rb = bytes.len() / rows;
        let pb = packed::row_bytes(dtype, cols);
        let mut pk = vec![0u8; rows * pb];
        for (s, o) in bytes.chunks_exact(rb).zip(pk.chunks_exact_mut(pb)) {
            packed::pack_row(dtype, s, o);
        }
        let mut a = vec![0f32; rows * cols];
        let mut b = vec![0f32; rows * cols];
        dequantize_into(dtype, &bytes, &mut a).unwrap();
        for (s, o) in pk.chunks_exact(pb).zip(b.chunks_exact_mut(cols)) {
            packed::dequantize_row(dtype, s, o);
        }
        // Bit for bit: the packed scales and offsets are exact, and so are the values.
        assert!(
            a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{dtype:?}: packed rows dequantize differently"
        );
        let ggml = QMatrix {
            dtype,
            rows,
            cols,
            data: &bytes,
            packed: false,
        };
        let pm = QMatrix {
            packed: true,
            data: &pk,
            ..ggml
        };
        // 4 tokens: one group of the prompt tiles, which then unpack K heads in the tile; 5
        // and 20 take them unpacked once per row.
        for n in [1, 2, 4, 5, 20] {
            let x = rand_vec(n * cols, 8 + n as u64);
            let mut want = vec![0f32; n * rows];
            // bakeoff's own Q4_0 / Q8_0 kernels quantize the activations exactly as the packed
            // ones do; candle's (the other types unpacked) keep an f16 activation scale, so
            // there the portable packed product is the reference, itself held to the exact
            // product of the dequantized weights within its 8-bit activation rounding.
            if matches!(dtype, WeightType::Q4_0 | WeightType::Q8_0) {
                matmul(&pool(1), CpuCaps::portable(), &ggml, &x, n, &mut want).unwrap();
            } else {
                matmul(&pool(1), CpuCaps::portable(), &pm, &x, n, &mut want).unwrap();
                for t in 0..n {
                    let xt = &x[t * cols..(t + 1) * cols];
                    for r in 0..rows {
                        let wr = &a[r * cols..(r + 1) * cols];
                        let exact: f64 =
                            wr.iter().zip(xt).map(|(w, v)| *w as f64 * *v as f64).sum();
                        // Each activation moves by at most half its block's step (amax / 254,
                        // blocks of 256 for the K-quants as ggml's Q8_K), and by the rounding
                        // of the block scale to f16 (ggml's Q8_0 and Q8_1).
                        let qb = if dtype.block_size() == 256 { 256 } else { 32 };
                        let bound: f64 = wr
                            .chunks(qb)
                            .zip(xt.chunks(qb))
                            .map(|(wb, xb)| {
                                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                                let w1: f64 = wb.iter().map(|w| w.abs() as f64).sum();
                                amax / 254.0 * w1 + amax * 1e-3 * w1
                            })
                            .sum();
                        let got = want[t * rows + r] as f64;
                        assert!(
                            (got - exact).abs() <= bound * 1.01 + 1e-4,
                            "{dtype:?} row {r} token {t}: {got} vs exact {exact} (bound {bound})"
                        );
                    }
                }
            }
            // The other vendor's decode distances too: with an L1 request and without.
            let other = CpuCaps {
                ahead: if CpuCaps::detect().ahead == DecodeAhead::AMD {
                    DecodeAhead::INTEL
                } else {
                    DecodeAhead::AMD
                },
                ..CpuCaps::detect()
            };
            // The 8-bit VNNI prompt tiles where AMX or the bf16 tiles would take the prompt.
            let vnni_tiles = CpuCaps {
                amx: false,
                avx512bf16: false,
                ..CpuCaps::detect()
            };
            for (caps, threads) in [
                (CpuCaps::portable(), 1),
                (CpuCaps::detect(), 1),
                (CpuCaps::detect(), 3),
                (vnni_tiles, 1),
                (vnni_tiles, 3),
                (other, 1),
                (CpuCaps::avx2_only(), 1),
                (CpuCaps::avx2_only(), 3),
            ] {
                let mut got = vec![0f32; n * rows];
                matmul(&pool(threads), caps, &pm, &x, n, &mut got).unwrap();
                // Products against the exact product of the dequantized weights: `|got − exact|
                // ≤ rel · Σ|w·x| + abs` for every row and token.
                let near_exact = |what: &str, rel: f64, abs: f64| {
                    for t in 0..n {
                        let xt = &x[t * cols..(t + 1) * cols];
                        for r in 0..rows {
                            let wr = &a[r * cols..(r + 1) * cols];
                            let (exact, mag) =
                                wr.iter().zip(xt).fold((0f64, 0f64), |(e, m), (w, v)| {
                                    let p = *w as f64 * *v as f64;
                                    (e + p, m + p.abs())
                                });
                            let g = got[t * rows + r] as f64;
                            assert!(
                                (g - exact).abs() <= mag * rel + abs,
                                "{dtype:?} {what} n={n} x{threads} row {r} token {t}: {g} vs {exact}"
                            );
                        }
                    }
                };
                // Prompts on packed nibbles whose tails the 8-bit tile would widen too much
                // multiply the dequantized rows in f32 on AVX2 alone, with unrounded
                // activations: the exact product, up to f32 summation.
                if n >= 16
                    && caps.avx2
                    && bakeoff_engine::kernels::matmul::nibbles_on_f32_tiles(caps, &pm)
                {
                    near_exact("f32 tiles", 1e-5, 1e-5);
                    continue;
                }
                // AMX prompts, and bf16 ones on narrow matrices, round weights and
                // activations to bf16 (relative error 2^-9 each): held to the exact product
                // of the dequantized weights within that rounding.
                let bf16 = n >= 16
                    && (caps.amx
                        || (caps.avx512bf16
                            && !bakeoff_engine::kernels::matmul::vnni_prompt_rows(&pm)));
                if bf16 {
                    near_exact("bf16", 1.01 / 256.0, 1e-4);
                    continue;
                }
                // Same integer products per block on every path (one-token kernel, tiles,
                // portable); only the order of the f32 sums differs.
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                let tol = 1e-4 * (cols as f32).sqrt();
                assert!(
                    worst <= tol,
                    "{dtype:?} packed n={n} {caps:?} x{threads}: max error {worst}"
                );
            }
        }
    }
}

/// Several matrices multiplied with the same activations (Q, K and V; gate and up): where they
/// share a type the packed kernels quantize and lay out the activations once for all of them,
/// and each product must be exactly the one a call of its own gives; matrices of other types
/// (a Q8_0 V beside Q5_0 Q and K) or on other kernels take calls of their own. The 2048-row
/// Q5_0 matrix is tall enough for the VNNI prompt tiles at 896 columns.
#[test]
fn products_sharing_activations_equal_separate_ones() {
    use bakeoff_engine::kernels::matmul::matmul_many;
    use bakeoff_engine::kernels::packed;
    let packed_matrix = |dtype: WeightType, rows: usize, cols: usize, seed: u64| {
        let w = rand_vec(rows * cols, seed);
        let bytes = encode(dtype, &w, rows, cols);
        let rb = bytes.len() / rows;
        let pb = packed::row_bytes(dtype, cols);
        let mut pk = vec![0u8; rows * pb];
        for (s, o) in bytes.chunks_exact(rb).zip(pk.chunks_exact_mut(pb)) {
            packed::pack_row(dtype, s, o);
        }
        (dtype, rows, cols, pk)
    };
    let sets = [
        vec![
            packed_matrix(WeightType::Q5_0, 2048, 896, 1),
            packed_matrix(WeightType::Q5_0, 45, 896, 2),
        ],
        vec![
            packed_matrix(WeightType::Q5_0, 64, 896, 3),
            packed_matrix(WeightType::Q5_0, 16, 896, 4),
            packed_matrix(WeightType::Q8_0, 16, 896, 5),
        ],
        vec![
            packed_matrix(WeightType::Q4K, 64, 1536, 6),
            packed_matrix(WeightType::Q4K, 16, 1536, 7),
            packed_matrix(WeightType::Q4K, 16, 1536, 8),
        ],
        vec![
            packed_matrix(WeightType::Q4_1, 40, 576, 9),
            packed_matrix(WeightType::Q4_1, 24, 576, 10),
        ],
    ];
    let vnni_tiles = CpuCaps {
        amx: false,
        avx512bf16: false,
        ..CpuCaps::detect()
    };
    for set in &sets {
        let ms: Vec<QMatrix<'_>> = set
            .iter()
            .map(|(dtype, rows, cols, pk)| QMatrix {
                dtype: *dtype,
                rows: *rows,
                cols: *cols,
                data: pk,
                packed: true,
            })
            .collect();
        let ws: Vec<&QMatrix<'_>> = ms.iter().collect();
        let cols = ms[0].cols;
        for n in [2, 5, 20] {
            let x = rand_vec(n * cols, 11 + n as u64);
            for (caps, threads) in [
                (CpuCaps::detect(), 1),
                (CpuCaps::detect(), 3),
                (vnni_tiles, 2),
                (CpuCaps::avx2_only(), 1),
                (CpuCaps::avx2_only(), 3),
                (CpuCaps::portable(), 1),
            ] {
                let p = pool(threads);
                let mut together: Vec<Vec<f32>> =
                    ms.iter().map(|m| vec![0f32; n * m.rows]).collect();
                let mut outs: Vec<&mut [f32]> =
                    together.iter_mut().map(|o| o.as_mut_slice()).collect();
                matmul_many(&p, caps, &ws, &x, &mut outs).unwrap();
                for (m, got) in ms.iter().zip(&together) {
                    let mut alone = vec![0f32; n * m.rows];
                    matmul(&p, caps, m, &x, n, &mut alone).unwrap();
                    assert!(
                        got.iter()
                            .zip(&alone)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{:?} {}x{} n={n} {caps:?} x{threads}: differs from its own product",
                        m.dtype,
                        m.rows,
                        m.cols
                    );
                }
            }
        }
    }
}

/// AMX and the AVX-512 bf16 tiles round the same operands to bf16 and only sum in another
/// order, so on every weight type they agree far more closely than either agrees with f32; odd
/// shapes exercise the partial row groups and token blocks.
#[test]
fn amx_tiles_agree_with_avx512_bf16_tiles() {
    let caps = CpuCaps::detect();
    if !caps.amx {
        eprintln!("skipping: no AMX on this processor ({})", caps.describe());
        return;
    }
    let no_amx = CpuCaps::without_amx();
    for (dtype, rows, cols, n) in [
        (WeightType::Q8_0, 45, 800, 20),
        (WeightType::Q4_0, 70, 256, 16),
        (WeightType::Q4_0, 37, 800, 35),
        (WeightType::Q4K, 33, 512, 47),
        (WeightType::Q4_1, 37, 800, 35),
        (WeightType::Q5_0, 45, 800, 20),
        (WeightType::Q5_1, 45, 800, 20),
        (WeightType::Q5K, 33, 512, 20),
        (WeightType::IQ4_NL, 45, 800, 20),
        (WeightType::IQ4_XS, 33, 512, 21),
        (WeightType::BF16, 64, 96, 33),
        (WeightType::Q6K, 17, 256, 64),
        (WeightType::Q3K, 17, 768, 21),
        (WeightType::Q2K, 17, 768, 21),
        // Groups of four 32-row blocks, a partial last group and a partial token block.
        (WeightType::Q8_0, 300, 256, 70),
    ] {
        let w = rand_vec(rows * cols, 11);
        let x = rand_vec(n * cols, 12);
        let bytes = encode(dtype, &w, rows, cols);
        let m = QMatrix {
            dtype,
            rows,
            cols,
            data: &bytes,
            packed: false,
        };
        let mut want = vec![0f32; n * rows];
        matmul(&pool(1), no_amx, &m, &x, n, &mut want).unwrap();
        // Packable types also in the packed layout, which AMX reads in its own order.
        let pk = bakeoff_engine::kernels::packed::packable(dtype, cols).then(|| {
            use bakeoff_engine::kernels::packed;
            let (rb, pb) = (m.row_bytes(), packed::row_bytes(dtype, cols));
            let mut p = vec![0u8; rows * pb];
            for (s, o) in bytes.chunks_exact(rb).zip(p.chunks_exact_mut(pb)) {
                packed::pack_row(dtype, s, o);
            }
            p
        });
        let pm = pk.as_ref().map(|p| QMatrix {
            packed: true,
            data: p,
            ..m
        });
        for (threads, mat) in [
            (1, &m),
            (3, &m),
            (1, pm.as_ref().unwrap_or(&m)),
            (3, pm.as_ref().unwrap_or(&m)),
        ] {
            let mut got = vec![f32::NAN; n * rows];
            matmul(&pool(threads), caps, mat, &x, n, &mut got).unwrap();
            assert!(
                got.iter().all(|v| v.is_finite()),
                "{dtype:?}: unwritten outputs"
            );
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-4 * (cols as f32).sqrt(),
                "{dtype:?} {rows}x{cols} n={n} x{threads} packed={}: AMX differs by {worst}",
                mat.packed
            );
        }
    }
}

/// The fused SwiGLU products run the same tiles as two separate products, so they give exactly
/// `silu(gate) · up` of those, on every layout and on shapes with partial row groups and token
/// blocks; where they cannot fuse they say so and write nothing.
#[test]
fn fused_swiglu_equals_two_products_and_silu() {
    use bakeoff_engine::kernels::matmul::{matmul_swiglu, swiglu_fuses};
    use bakeoff_engine::kernels::packed;
    let caps = CpuCaps::detect();
    for (dtype, rows, cols, n) in [
        (WeightType::Q4_0, 70, 1024, 37),
        (WeightType::Q8_0, 300, 256, 16),
        (WeightType::Q4K, 33, 512, 20),
        (WeightType::Q4_1, 37, 800, 16),
        (WeightType::Q5_0, 45, 800, 17),
        (WeightType::Q6K, 33, 512, 18),
        (WeightType::Q3K, 33, 768, 9),
        (WeightType::Q2K, 33, 1536, 9),
        (WeightType::Q5K, 33, 512, 19),
        (WeightType::IQ4_XS, 33, 512, 17),
    ] {
        let (wg, wu) = (rand_vec(rows * cols, 21), rand_vec(rows * cols, 22));
        let x = rand_vec(n * cols, 23);
        let (bg, bu) = (
            encode(dtype, &wg, rows, cols),
            encode(dtype, &wu, rows, cols),
        );
        fn mat(
            dtype: WeightType,
            rows: usize,
            cols: usize,
            data: &[u8],
            packed: bool,
        ) -> QMatrix<'_> {
            QMatrix {
                dtype,
                rows,
                cols,
                data,
                packed,
            }
        }
        let mat = |data, packed| mat(dtype, rows, cols, data, packed);
        let pack = |bytes: &[u8]| {
            let (rb, pb) = (bytes.len() / rows, packed::row_bytes(dtype, cols));
            let mut p = vec![0u8; rows * pb];
            for (s, o) in bytes.chunks_exact(rb).zip(p.chunks_exact_mut(pb)) {
                packed::pack_row(dtype, s, o);
            }
            p
        };
        let packable = packed::packable(dtype, cols);
        let (pg, pu) = if packable {
            (pack(&bg), pack(&bu))
        } else {
            (Vec::new(), Vec::new())
        };
        let layouts: Vec<(QMatrix<'_>, QMatrix<'_>)> = if packable {
            vec![
                (mat(&bg, false), mat(&bu, false)),
                (mat(&pg, true), mat(&pu, true)),
            ]
        } else {
            vec![(mat(&bg, false), mat(&bu, false))]
        };
        for (g, u) in &layouts {
            for threads in [1, 3] {
                let t = pool(threads);
                let mut want = vec![0f32; n * rows];
                let mut up = vec![0f32; n * rows];
                matmul(&t, caps, g, &x, n, &mut want).unwrap();
                matmul(&t, caps, u, &x, n, &mut up).unwrap();
                ops::silu_mul(caps, &mut want, &up);
                let mut got = vec![f32::NAN; n * rows];
                let fused = matmul_swiglu(&t, caps, g, u, &x, &mut got).unwrap();
                assert_eq!(fused, swiglu_fuses(caps, g, u, n));
                if fused {
                    // The same tile products; only SiLU's vector and scalar tails may split the
                    // values differently (last digit).
                    let worst = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
                        .fold(0f32, f32::max);
                    assert!(
                        worst <= 1e-6,
                        "{dtype:?} {rows}x{cols} n={n} x{threads}: {worst}"
                    );
                } else {
                    assert!(got.iter().all(|v| v.is_nan()), "wrote without fusing");
                }
                let portable = matmul_swiglu(&t, CpuCaps::portable(), g, u, &x, &mut got);
                assert!(!portable.unwrap(), "fused without AMX");
            }
        }
        if caps.amx {
            let wrong = vec![0f32; 3];
            let (g, u) = &layouts[0];
            assert!(matmul_swiglu(&pool(1), caps, g, u, &x, &mut wrong.clone()).is_err());
        }
    }
}
