//! Weights back to f32: for embedding rows, norms, biases and tests.

use std::borrow::Cow;

use crate::WeightType;
use candle_core::quantized::k_quants::{self, GgmlType};

use super::{Q4_0_BYTES, Q8_0_BYTES, QK, f16_bits_to_f32};

/// Reinterprets bytes as ggml blocks, copying only when the bytes are misaligned for `T`.
pub(crate) fn as_blocks<T: GgmlType>(bytes: &[u8]) -> Result<Cow<'_, [T]>, String> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size) {
        return Err(format!(
            "{} bytes is not a whole number of {size}-byte blocks",
            bytes.len()
        ));
    }
    let n = bytes.len() / size;
    if (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
        // SAFETY: ggml block types are plain-old-data `repr(C)` structs of integers and f16; the
        // pointer is aligned and the length is a whole number of blocks.
        Ok(Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(bytes.as_ptr() as *const T, n)
        }))
    } else {
        let mut v: Vec<T> = (0..n).map(|_| T::zeros()).collect();
        // SAFETY: as above; the destination has room for exactly `bytes.len()` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr() as *mut u8, bytes.len())
        };
        Ok(Cow::Owned(v))
    }
}

fn via_candle<T: GgmlType>(bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let blocks = as_blocks::<T>(bytes)?;
    if blocks.len() * T::BLCK_SIZE != out.len() {
        return Err(format!(
            "{} blocks cannot fill {} values",
            blocks.len(),
            out.len()
        ));
    }
    T::to_float(&blocks, out);
    Ok(())
}

/// Dequantizes `out.len()` values stored as `dtype` in `bytes`.
pub fn dequantize_into(dtype: WeightType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let n = out.len();
    let need = dtype
        .storage_bytes(n)
        .ok_or_else(|| format!("{n} values do not fill whole {dtype:?} blocks"))?;
    if bytes.len() != need {
        return Err(format!(
            "{dtype:?}: expected {need} bytes for {n} values, got {}",
            bytes.len()
        ));
    }
    match dtype {
        WeightType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        WeightType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16_bits_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        WeightType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        WeightType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(Q8_0_BYTES)) {
                let d = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
                for (v, q) in o.iter_mut().zip(&b[2..]) {
                    *v = d * (*q as i8) as f32;
                }
            }
        }
        WeightType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(Q4_0_BYTES)) {
                let d = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
                for j in 0..16 {
                    o[j] = d * ((b[2 + j] & 0x0f) as i32 - 8) as f32;
                    o[j + 16] = d * ((b[2 + j] >> 4) as i32 - 8) as f32;
                }
            }
        }
        WeightType::Q4_1 => blocks(bytes, out, 20, 32, dequant_q4_1),
        WeightType::Q5_0 => blocks(bytes, out, 22, 32, dequant_q5_0),
        WeightType::Q5_1 => blocks(bytes, out, 24, 32, dequant_q5_1),
        WeightType::Q8_1 => via_candle::<k_quants::BlockQ8_1>(bytes, out)?,
        WeightType::Q2K => blocks(bytes, out, 84, 256, dequant_q2_k),
        WeightType::Q3K => blocks(bytes, out, 110, 256, dequant_q3_k),
        WeightType::Q4K => blocks(bytes, out, 144, 256, dequant_q4_k),
        WeightType::Q5K => blocks(bytes, out, 176, 256, dequant_q5_k),
        WeightType::Q6K => blocks(bytes, out, 210, 256, dequant_q6_k),
        WeightType::Q8K => via_candle::<k_quants::BlockQ8K>(bytes, out)?,
        WeightType::IQ4_NL => {
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(18)) {
                let d = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
                for j in 0..16 {
                    o[j] = d * IQ4_VALUES[(b[2 + j] & 0x0f) as usize] as f32;
                    o[j + 16] = d * IQ4_VALUES[(b[2 + j] >> 4) as usize] as f32;
                }
            }
        }
        WeightType::IQ4_XS => {
            for (o, b) in out.chunks_exact_mut(256).zip(bytes.chunks_exact(136)) {
                let d = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
                let scales_h = u16::from_le_bytes([b[2], b[3]]);
                let (scales_l, qs) = (&b[4..8], &b[8..]);
                for (ib, (o, q)) in o.chunks_exact_mut(32).zip(qs.chunks_exact(16)).enumerate() {
                    let lo = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f;
                    let hi = ((scales_h >> (2 * ib)) & 3) as u8;
                    let dl = d * ((lo | (hi << 4)) as i32 - 32) as f32;
                    for j in 0..16 {
                        o[j] = dl * IQ4_VALUES[(q[j] & 0x0f) as usize] as f32;
                        o[j + 16] = dl * IQ4_VALUES[(q[j] >> 4) as usize] as f32;
                    }
                }
            }
        }
    }
    Ok(())
}

/// ggml's `kvalues_iq4nl`: the non-linear 4-bit grid of IQ4_NL and IQ4_XS.
pub const IQ4_VALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

// The block decoders below follow ggml's `dequantize_row_*` (and gguf-py's `quants.py`, which
// the tests compare against bit for bit): the same products in the same order, each rounded to
// f32 on its own (no fused multiply-add), so that the values are exactly ggml's.

fn blocks(bytes: &[u8], out: &mut [f32], size: usize, n: usize, f: fn(&[u8], &mut [f32])) {
    for (b, o) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(n)) {
        f(b, o);
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[i], b[i + 1]]))
}

fn dequant_q4_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..16 {
        o[j] = d * (b[4 + j] & 0x0f) as f32 + m;
        o[j + 16] = d * (b[4 + j] >> 4) as f32 + m;
    }
}

fn dequant_q5_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let lo = (b[6 + j] & 0x0f) as u32 | ((qh >> j) & 1) << 4;
        let hi = (b[6 + j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        o[j] = d * (lo as i32 - 16) as f32;
        o[j + 16] = d * (hi as i32 - 16) as f32;
    }
}

fn dequant_q5_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let lo = (b[8 + j] & 0x0f) as u32 | ((qh >> j) & 1) << 4;
        let hi = (b[8 + j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        o[j] = d * lo as f32 + m;
        o[j + 16] = d * hi as f32 + m;
    }
}

/// `scales[16] qs[64] d dmin`: 16 groups of 16, value = d·(s & 15)·q − dmin·(s >> 4).
fn dequant_q2_k(b: &[u8], o: &mut [f32]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (i, v) in o.iter_mut().enumerate() {
        let (half, shift, l) = (i / 128, (i / 32) % 4, i % 32);
        let q = (qs[half * 32 + l] >> (2 * shift)) & 3;
        let s = scales[i / 16];
        let dl = d * (s & 0x0f) as f32;
        let ml = dmin * (s >> 4) as f32;
        *v = dl * q as f32 - ml;
    }
}

/// `hmask[32] qs[64] scales[12] d`: 16 groups of 16 with signed 6-bit scales; a clear bit in
/// `hmask` subtracts 4 from the 2-bit value.
fn dequant_q3_k(b: &[u8], o: &mut [f32]) {
    let (hmask, qs, sc) = (&b[..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    let mut scales = [0f32; 16];
    for (j, s) in scales.iter_mut().enumerate() {
        let lo = (sc[j % 8] >> (4 * (j / 8))) & 0x0f;
        let hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
        *s = ((lo | (hi << 4)) as i8 - 32) as f32;
    }
    for (i, v) in o.iter_mut().enumerate() {
        let (half, shift, l) = (i / 128, (i / 32) % 4, i % 32);
        let ql = ((qs[half * 32 + l] >> (2 * shift)) & 3) as i8;
        let h = (hmask[l] >> (i / 32)) & 1;
        let q = ql - if h == 0 { 4 } else { 0 };
        *v = (d * scales[i / 16]) * q as f32;
    }
}

/// The 6-bit scales and mins of Q4_K / Q5_K (ggml's `get_scale_min_k4`).
pub(crate) fn scale_min_k4(sc: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut s, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        s[j] = sc[j] & 63;
        m[j] = sc[j + 4] & 63;
        s[j + 4] = (sc[j + 8] & 0x0f) | ((sc[j] >> 6) << 4);
        m[j + 4] = (sc[j + 8] >> 4) | ((sc[j + 4] >> 6) << 4);
    }
    (s, m)
}

/// `d dmin scales[12] qs[128]`: 8 groups of 32, value = d·s·q − dmin·m.
fn dequant_q4_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (s, m) = scale_min_k4(&b[4..16]);
    let qs = &b[16..144];
    for (g, og) in o.chunks_exact_mut(32).enumerate() {
        let d1 = d * s[g] as f32;
        let m1 = dmin * m[g] as f32;
        for (l, v) in og.iter_mut().enumerate() {
            let q = (qs[(g / 2) * 32 + l] >> (4 * (g % 2))) & 0x0f;
            *v = d1 * q as f32 - m1;
        }
    }
}

/// `d dmin scales[12] qh[32] qs[128]`: as Q4_K with a fifth bit from `qh`.
fn dequant_q5_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (s, m) = scale_min_k4(&b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for (g, og) in o.chunks_exact_mut(32).enumerate() {
        let d1 = d * s[g] as f32;
        let m1 = dmin * m[g] as f32;
        for (l, v) in og.iter_mut().enumerate() {
            let q = ((qs[(g / 2) * 32 + l] >> (4 * (g % 2))) & 0x0f) | (((qh[l] >> g) & 1) << 4);
            *v = d1 * q as f32 - m1;
        }
    }
}

/// `ql[128] qh[64] scales[16] d`: 16 groups of 16 with signed 8-bit scales, 6-bit values − 32.
fn dequant_q6_k(b: &[u8], o: &mut [f32]) {
    let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (i, v) in o.iter_mut().enumerate() {
        let (half, r) = (i / 128, i % 128);
        let lo = (ql[half * 64 + r % 64] >> (4 * (r / 64))) & 0x0f;
        let hi = (qh[half * 32 + r % 32] >> (2 * (r / 32))) & 3;
        let q = (lo | (hi << 4)) as i8 - 32;
        *v = (d * sc[i / 16] as i8 as f32) * q as f32;
    }
}
