//! Dot products of one stored weight row with one activation row, per weight format.
//! The SIMD versions live in `x86.rs`; these portable ones are the fallback and the reference
//! the SIMD ones are tested against.

use super::{BlockQ8, CpuCaps, Q4_0_BYTES, Q8_0_BYTES, f16_bits_to_f32};

/// `w` holds f32 values as little-endian bytes (possibly unaligned, straight from a file).
pub fn dot_f32_bytes(caps: CpuCaps, w: &[u8], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if caps.avx2 {
        // SAFETY: run-time detected features; loads are unaligned.
        return unsafe { super::x86::dot_f32_bytes(w, x) };
    }
    let _ = caps;
    w.chunks_exact(4)
        .zip(x)
        .map(|(c, b)| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * b)
        .sum()
}

pub fn dot_f16(caps: CpuCaps, w: &[u8], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if caps.avx2 {
        // SAFETY: run-time detected features.
        return unsafe { super::x86::dot_f16(w, x) };
    }
    let _ = caps;
    w.chunks_exact(2)
        .zip(x)
        .map(|(c, b)| f16_bits_to_f32(u16::from_le_bytes([c[0], c[1]])) * b)
        .sum()
}

pub fn dot_bf16(caps: CpuCaps, w: &[u8], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if caps.avx2 {
        // SAFETY: run-time detected features.
        return unsafe { super::x86::dot_bf16(w, x) };
    }
    let _ = caps;
    w.chunks_exact(2)
        .zip(x)
        .map(|(c, b)| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) * b)
        .sum()
}

pub fn dot_q8_0(caps: CpuCaps, w: &[u8], x: &[BlockQ8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if caps.avx2 {
        // SAFETY: run-time detected features; `w` holds x.len() blocks.
        return unsafe { super::x86::dot_q8_0(w, x) };
    }
    let _ = caps;
    let mut sum = 0f32;
    for (b, xb) in w.chunks_exact(Q8_0_BYTES).zip(x) {
        let d = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
        let s: i32 = b[2..]
            .iter()
            .zip(&xb.qs)
            .map(|(&q, &v)| (q as i8) as i32 * v as i32)
            .sum();
        sum += d * xb.d * s as f32;
    }
    sum
}

pub fn dot_q4_0(caps: CpuCaps, w: &[u8], x: &[BlockQ8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if caps.avx2 {
        // SAFETY: run-time detected features; `w` holds x.len() blocks.
        return unsafe { super::x86::dot_q4_0(w, x) };
    }
    let _ = caps;
    let mut sum = 0f32;
    for (b, xb) in w.chunks_exact(Q4_0_BYTES).zip(x) {
        let d = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
        let mut s = 0i32;
        for j in 0..16 {
            s += ((b[2 + j] & 0x0f) as i32 - 8) * xb.qs[j] as i32;
            s += ((b[2 + j] >> 4) as i32 - 8) * xb.qs[j + 16] as i32;
        }
        sum += d * xb.d * s as f32;
    }
    sum
}
