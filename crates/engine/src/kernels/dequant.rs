//! Weights back to f32: for embedding rows, norms, biases and tests.

use std::borrow::Cow;

use candle_core::quantized::GgmlDType;
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
pub fn dequantize_into(dtype: GgmlDType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let n = out.len();
    let need = super::super::loader::store::storage_bytes(dtype, n)
        .ok_or_else(|| format!("{n} values do not fill whole {dtype:?} blocks"))?;
    if bytes.len() != need {
        return Err(format!(
            "{dtype:?}: expected {need} bytes for {n} values, got {}",
            bytes.len()
        ));
    }
    match dtype {
        GgmlDType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlDType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16_bits_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        GgmlDType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        GgmlDType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(Q8_0_BYTES)) {
                let d = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
                for (v, q) in o.iter_mut().zip(&b[2..]) {
                    *v = d * (*q as i8) as f32;
                }
            }
        }
        GgmlDType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(Q4_0_BYTES)) {
                let d = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
                for j in 0..16 {
                    o[j] = d * ((b[2 + j] & 0x0f) as i32 - 8) as f32;
                    o[j + 16] = d * ((b[2 + j] >> 4) as i32 - 8) as f32;
                }
            }
        }
        GgmlDType::Q4_1 => via_candle::<k_quants::BlockQ4_1>(bytes, out)?,
        GgmlDType::Q5_0 => via_candle::<k_quants::BlockQ5_0>(bytes, out)?,
        GgmlDType::Q5_1 => via_candle::<k_quants::BlockQ5_1>(bytes, out)?,
        GgmlDType::Q8_1 => via_candle::<k_quants::BlockQ8_1>(bytes, out)?,
        GgmlDType::Q2K => via_candle::<k_quants::BlockQ2K>(bytes, out)?,
        GgmlDType::Q3K => via_candle::<k_quants::BlockQ3K>(bytes, out)?,
        GgmlDType::Q4K => via_candle::<k_quants::BlockQ4K>(bytes, out)?,
        GgmlDType::Q5K => via_candle::<k_quants::BlockQ5K>(bytes, out)?,
        GgmlDType::Q6K => via_candle::<k_quants::BlockQ6K>(bytes, out)?,
        GgmlDType::Q8K => via_candle::<k_quants::BlockQ8K>(bytes, out)?,
    }
    Ok(())
}
