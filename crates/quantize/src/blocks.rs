//! Rows of f32 values to ggml blocks, ported from llama.cpp's reference quantizers
//! (`ggml/src/ggml-quants.c`, `quantize_row_*_ref`).
//!
//! Without an importance matrix, `llama-quantize` uses exactly these functions, so a file bakeoff
//! quantizes holds the same bytes as one llama.cpp quantizes from the same f32 weights (the
//! interop script checks this tensor by tensor). The operations are kept in C's order and
//! types, with no fused multiply-adds, because ggml-base compiles them that way: a different
//! rounding would flip a few quantization choices. candle's K-quant quantizers are older
//! versions of these (`make_qkx1_quants`, round-half-away), which is why they are not used.
//!
//! Q8_0 and Q4_0 are `bakeoff synth`'s quantizers (already checked byte-identical to candle and
//! llama.cpp there); Q5_0 and Q5_1 are here because K-quant rows that are not a multiple of 256
//! fall back to them, as in llama.cpp.

use bakeoff_engine::WeightType;
use bakeoff_engine::kernels::{Q4_0_BYTES, Q8_0_BYTES, QK};
use half::{bf16, f16};

/// Values per K-quant super-block.
pub const QK_K: usize = 256;
/// llama.cpp's threshold below which a group counts as all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest, ties to even, as llama.cpp's `nearest_int` (valid for |x| < 2^22).
#[inline]
fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

fn put_f16(out: &mut [u8], v: f32) {
    out.copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

fn get_f16(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Quantizes one row into `out`, which holds exactly the row's bytes in `dtype`.
/// The row length must be a whole number of `dtype`'s blocks (the planner guarantees it).
pub fn quantize_row(dtype: WeightType, xs: &[f32], out: &mut [u8]) -> Result<(), String> {
    let need = dtype
        .storage_bytes(xs.len())
        .ok_or_else(|| format!("{} values do not fill whole {dtype:?} blocks", xs.len()))?;
    if out.len() != need {
        return Err(format!(
            "{dtype:?}: {} output bytes for {} values, expected {need}",
            out.len(),
            xs.len()
        ));
    }
    match dtype {
        WeightType::F32 => {
            for (o, x) in out.chunks_exact_mut(4).zip(xs) {
                o.copy_from_slice(&x.to_le_bytes());
            }
        }
        WeightType::F16 => {
            for (o, x) in out.chunks_exact_mut(2).zip(xs) {
                o.copy_from_slice(&f16::from_f32(*x).to_le_bytes());
            }
        }
        WeightType::BF16 => {
            for (o, x) in out.chunks_exact_mut(2).zip(xs) {
                o.copy_from_slice(&bf16::from_f32(*x).to_le_bytes());
            }
        }
        WeightType::Q8_0 => quantize_q8_0(xs, out),
        WeightType::Q4_0 => quantize_q4_0(xs, out),
        WeightType::Q5_0 => quantize_q5_0(xs, out),
        WeightType::Q5_1 => quantize_q5_1(xs, out),
        WeightType::Q4K => quantize_q4_k(xs, out),
        WeightType::Q5K => quantize_q5_k(xs, out),
        WeightType::Q6K => quantize_q6_k(xs, out),
        other => return Err(format!("bakeoff does not write {other:?} tensors")),
    }
    Ok(())
}

/// `quantize_row_q5_0_ref`: scale = (value of largest magnitude) / -16, 5-bit values with the
/// fifth bits gathered in `qh`. Block: d (f16), qh (u32), qs[16].
fn quantize_q5_0(xs: &[f32], out: &mut [u8]) {
    const QK: usize = 32;
    for (x, b) in xs.chunks_exact(QK).zip(out.chunks_exact_mut(22)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(&mut b[0..2], d);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            // C converts with `(int8_t)`, truncating toward zero; the argument is never negative.
            let xi0 = ((x[j] * id + 16.5) as i8).min(31) as u8;
            let xi1 = ((x[j + QK / 2] * id + 16.5) as i8).min(31) as u8;
            b[6 + j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
            qh |= ((xi0 as u32 & 0x10) >> 4) << j;
            qh |= ((xi1 as u32 & 0x10) >> 4) << (j + QK / 2);
        }
        b[2..6].copy_from_slice(&qh.to_le_bytes());
    }
}

/// `quantize_row_q5_1_ref`: min and step over 31 levels. Block: d, m (f16), qh (u32), qs[16].
fn quantize_q5_1(xs: &[f32], out: &mut [u8]) {
    const QK: usize = 32;
    for (x, b) in xs.chunks_exact(QK).zip(out.chunks_exact_mut(24)) {
        let (mut min, mut max) = (f32::MAX, -f32::MAX);
        for &v in x {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(&mut b[0..2], d);
        put_f16(&mut b[2..4], min);
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let xi0 = ((x[j] - min) * id + 0.5) as u8;
            let xi1 = ((x[j + QK / 2] - min) * id + 0.5) as u8;
            b[8 + j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
            qh |= ((xi0 as u32 & 0x10) >> 4) << j;
            qh |= ((xi1 as u32 & 0x10) >> 4) << (j + QK / 2);
        }
        b[4..8].copy_from_slice(&qh.to_le_bytes());
    }
}

/// `make_qkx2_quants` for a group of 32: the scale and (negated) minimum that minimise the
/// weighted squared error, searched over `nstep + 1` candidate scales. Writes the levels to `l`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32; 32],
    weights: &[f32; 32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = 32;
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l[..n].fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let li = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = li as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let li = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = li as u8;
            let w = weights[i];
            let lf = li as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `get_scale_min_k4`: the 6-bit scale and min of group `j` from the packed 12 bytes.
fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The shared first half of Q4_K and Q5_K: per-group scales and mins (6 bits each, relative
/// to the f16 super-scales `d` and `dmin`) and the levels `l`. Returns (d, dmin, scales).
fn k_scales_and_levels(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    l: &mut [u8; QK_K],
) -> (u16, u16, [u8; 12]) {
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    for j in 0..QK_K / 32 {
        let mut group = [0f32; 32];
        group.copy_from_slice(&x[32 * j..32 * j + 32]);
        let mut sum_x2 = 0f32;
        for v in &group {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let mut weights = [0f32; 32];
        for (w, v) in weights.iter_mut().zip(&group) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(
            nmax,
            &group,
            &weights,
            &mut l[32 * j..32 * j + 32],
            rmin,
            0.1,
            nstep,
        );
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..QK_K / 32 {
        // C stores the int in a uint8_t (modulo 256) before clamping.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    for j in 0..QK_K / 32 {
        let (sc, m) = get_scale_min_k4(j, &packed);
        let dd = d.to_f32() * sc as f32;
        if dd == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for ii in 0..32 {
            let li = nearest_int((x[32 * j + ii] + dm) / dd).clamp(0, nmax);
            l[32 * j + ii] = li as u8;
        }
    }
    (d.to_bits(), dmin.to_bits(), packed)
}

/// `quantize_row_q4_K_ref`. Block (144 bytes): d, dmin (f16), scales[12], qs[128].
fn quantize_q4_k(xs: &[f32], out: &mut [u8]) {
    for (x, b) in xs.chunks_exact(QK_K).zip(out.chunks_exact_mut(144)) {
        let mut l = [0u8; QK_K];
        let (d, dmin, scales) = k_scales_and_levels(x, 15, -1.0, 20, &mut l);
        b[0..2].copy_from_slice(&d.to_le_bytes());
        b[2..4].copy_from_slice(&dmin.to_le_bytes());
        b[4..16].copy_from_slice(&scales);
        let qs = &mut b[16..144];
        for (jj, j) in (0..QK_K).step_by(64).enumerate() {
            for i in 0..32 {
                qs[jj * 32 + i] = l[j + i] | (l[j + i + 32] << 4);
            }
        }
    }
}

/// `quantize_row_q5_K_ref`. Block (176 bytes): d, dmin (f16), scales[12], qh[32], qs[128].
fn quantize_q5_k(xs: &[f32], out: &mut [u8]) {
    for (x, b) in xs.chunks_exact(QK_K).zip(out.chunks_exact_mut(176)) {
        let mut l = [0u8; QK_K];
        let (d, dmin, scales) = k_scales_and_levels(x, 31, -0.5, 15, &mut l);
        b[0..2].copy_from_slice(&d.to_le_bytes());
        b[2..4].copy_from_slice(&dmin.to_le_bytes());
        b[4..16].copy_from_slice(&scales);
        let (qh, ql) = b[16..176].split_at_mut(32);
        qh.fill(0);
        let (mut m1, mut m2) = (1u8, 2u8);
        for (jj, n) in (0..QK_K).step_by(64).enumerate() {
            for j in 0..32 {
                let mut l1 = l[n + j];
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                let mut l2 = l[n + j + 32];
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                ql[jj * 32 + j] = l1 | (l2 << 4);
            }
            m1 <<= 2;
            m2 <<= 2;
        }
    }
}

/// `make_qx_quants` with `rmse_type = 1` and no importance weights, for 16 values: a symmetric
/// scale chosen among 19 candidates by x²-weighted error. Writes levels (offset by `nmax`).
fn make_qx_quants_rmse1(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let n = x.len();
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let nm = nmax as f32;
    let mut iscale = -nm / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for i in 0..n {
        let li = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l[i] = (li + nmax) as i8;
        let w = x[i] * x[i];
        let lf = li as f32;
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nm + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let li = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
            let w = v * v;
            let lf = li as f32;
            sumlx += w * v * lf;
            suml2 += w * lf * lf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let li = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
                l[i] = (li + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `quantize_row_q6_K_ref`. Block (210 bytes): ql[128], qh[64], scales[16] (i8), d (f16).
fn quantize_q6_k(xs: &[f32], out: &mut [u8]) {
    for (x, b) in xs.chunks_exact(QK_K).zip(out.chunks_exact_mut(210)) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for ib in 0..QK_K / 16 {
            let s = make_qx_quants_rmse1(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..]);
            scales[ib] = s;
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = s;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            b.fill(0);
            continue;
        }
        let iscale = -128.0 / max_scale;
        put_f16(&mut b[208..210], 1.0 / iscale);
        let d = get_f16(&b[208..210]);
        let mut sc = [0i8; QK_K / 16];
        for (o, s) in sc.iter_mut().zip(&scales) {
            *o = nearest_int(iscale * s).min(127) as i8;
        }
        for (j, &scj) in sc.iter().enumerate() {
            let dd = d * scj as f32;
            if dd == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let li = nearest_int(x[16 * j + ii] / dd).clamp(-32, 31);
                l[16 * j + ii] = (li + 32) as i8;
            }
        }
        for (o, s) in b[192..208].iter_mut().zip(&sc) {
            *o = *s as u8;
        }
        let (ql, rest) = b.split_at_mut(128);
        let qh = &mut rest[..64];
        for (half, j) in (0..QK_K).step_by(128).enumerate() {
            let (ql, qh) = (&mut ql[half * 64..], &mut qh[half * 32..]);
            for i in 0..32 {
                let lv = |k: usize| l[j + i + k] as u8;
                let (q1, q2, q3, q4) = (lv(0) & 0xf, lv(32) & 0xf, lv(64) & 0xf, lv(96) & 0xf);
                ql[i] = q1 | (q3 << 4);
                ql[i + 32] = q2 | (q4 << 4);
                qh[i] = (lv(0) >> 4)
                    | ((lv(32) >> 4) << 2)
                    | ((lv(64) >> 4) << 4)
                    | ((lv(96) >> 4) << 6);
            }
        }
    }
}

/// llama.cpp's `quantize_row_q8_0_ref`: scale = max |x| / 127, values rounded half away from zero.
pub fn quantize_q8_0(xs: &[f32], out: &mut [u8]) {
    for (x, b) in xs.chunks_exact(QK).zip(out.chunks_exact_mut(Q8_0_BYTES)) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for (q, v) in b[2..].iter_mut().zip(x) {
            *q = (v * id).round() as i8 as u8;
        }
    }
}

/// llama.cpp's `quantize_row_q4_0_ref`: scale = (the value of largest magnitude) / -8, nibble
/// `j` of byte `j` holds value `j`, the high nibble value `j + 16`.
pub fn quantize_q4_0(xs: &[f32], out: &mut [u8]) {
    for (x, b) in xs.chunks_exact(QK).zip(out.chunks_exact_mut(Q4_0_BYTES)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for j in 0..QK / 2 {
            // `as u8` truncates like C's (int8_t) cast; the argument is never negative.
            let lo = ((x[j] * id + 8.5) as u8).min(15);
            let hi = ((x[j + QK / 2] * id + 8.5) as u8).min(15);
            b[2 + j] = lo | (hi << 4);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bakeoff_engine::kernels::dequant::dequantize_into;

    /// Deterministic values with a realistic spread and a few outliers.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                if i % 97 == 0 { u * 0.4 } else { u * 0.05 }
            })
            .collect()
    }

    fn roundtrip(dtype: WeightType, xs: &[f32]) -> Vec<f32> {
        let bytes = dtype.storage_bytes(xs.len()).unwrap();
        let mut out = vec![0u8; bytes];
        quantize_row(dtype, xs, &mut out).unwrap();
        let mut back = vec![0f32; xs.len()];
        dequantize_into(dtype, &out, &mut back).unwrap();
        back
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(3.49), 3);
        assert_eq!(nearest_int(-7.6), -8);
    }

    /// Per block, every value is within its format's largest error of the original: half a
    /// step for the formats whose levels cover the block's range (Q8_0: ±127 steps of amax/127;
    /// Q5_1: 31 steps from min to max), a whole step for Q4_0 and Q5_0 (their levels run from
    /// -8 to +7 and -16 to +15 steps of amax/8 and amax/16, so the side opposite the largest
    /// magnitude is clipped by up to one step), and 1.5 steps of range/levels for the K-quants,
    /// whose sub-block scales are themselves quantized to 6 or 8 bits.
    #[test]
    fn round_trip_error_within_format_bounds() {
        let xs = values(4 * QK_K, 11);
        for (dtype, block) in [
            (WeightType::Q8_0, 32),
            (WeightType::Q4_0, 32),
            (WeightType::Q5_0, 32),
            (WeightType::Q5_1, 32),
            (WeightType::Q4K, 32),
            (WeightType::Q5K, 32),
            (WeightType::Q6K, 16),
        ] {
            let back = roundtrip(dtype, &xs);
            for (i, (x, y)) in xs.chunks(block).zip(back.chunks(block)).enumerate() {
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let (lo, hi) = x
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
                let bound = match dtype {
                    WeightType::Q8_0 => 0.5 * amax / 127.0,
                    WeightType::Q4_0 => amax / 8.0,
                    WeightType::Q5_0 => amax / 16.0,
                    WeightType::Q5_1 => 0.5 * (hi - lo) / 31.0,
                    WeightType::Q4K => 1.5 * (hi - lo.min(0.0)) / 15.0,
                    WeightType::Q5K => 1.5 * (hi - lo.min(0.0)) / 31.0,
                    _ => 1.5 * 2.0 * amax / 63.0,
                };
                let err = x
                    .iter()
                    .zip(y)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                // Plus the f16 rounding of the block scale (relative 2^-11), which the value of
                // largest magnitude carries in full.
                assert!(
                    err <= bound + amax / 2048.0 + 1e-7,
                    "{dtype:?} block {i}: max error {err} > bound {bound}"
                );
            }
            // And the overall error shrinks with the bits.
            let rmse = (xs
                .iter()
                .zip(&back)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                / xs.len() as f32)
                .sqrt();
            let rms = (xs.iter().map(|a| a * a).sum::<f32>() / xs.len() as f32).sqrt();
            // The test data has an outlier every 97 values, which widens the blocks that hold
            // one: errors are larger than on the uniform weights of tests/quantize.rs. Measured:
            // Q8_0 0.0086, Q6_K 0.025, Q5_1 0.042, Q5_K 0.041, Q5_0 0.066, Q4_K 0.080,
            // Q4_0 0.123; the bounds are about 1.3× those of each bit width.
            let max_rel = match dtype {
                WeightType::Q8_0 => 0.012,
                WeightType::Q6K => 0.033,
                WeightType::Q5_0 | WeightType::Q5_1 | WeightType::Q5K => 0.085,
                _ => 0.16,
            };
            eprintln!("{dtype:?}: relative RMSE {:.4}", rmse / rms);
            assert!(
                rmse / rms < max_rel,
                "{dtype:?}: relative RMSE {} ≥ {max_rel}",
                rmse / rms
            );
        }
    }

    #[test]
    fn zero_and_constant_blocks() {
        for dtype in [
            WeightType::Q8_0,
            WeightType::Q4_0,
            WeightType::Q5_0,
            WeightType::Q5_1,
            WeightType::Q4K,
            WeightType::Q5K,
            WeightType::Q6K,
        ] {
            let zeros = vec![0f32; QK_K];
            assert!(
                roundtrip(dtype, &zeros).iter().all(|v| *v == 0.0),
                "{dtype:?}"
            );
            let c = vec![0.25f32; QK_K];
            let back = roundtrip(dtype, &c);
            assert!(
                back.iter().all(|v| (v - 0.25).abs() < 0.25 / 15.0),
                "{dtype:?}: {:?}",
                &back[..4]
            );
        }
    }
}
