//! bakeoff's own CPU hot path. candle's CPU kernels run at about a third of llama.cpp's speed on
//! quantized decode, so matrix-vector products read weights in their stored format (memory-mapped)
//! or in a packed layout made once per model file (`packed`, cached on disk), and fuse
//! dequantization into SIMD dot products chosen at run time; prompts run on AMX tiles where the
//! processor has them.

#[cfg(target_arch = "x86_64")]
mod amx;
pub mod attention;
pub mod dequant;
pub mod dot;
pub mod kvbuf;
pub mod matmul;
pub mod ops;
pub mod packed;
pub mod threads;
#[cfg(target_arch = "x86_64")]
mod x86;

/// SIMD levels found at run time; kernels fall back to portable code when a level is absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuCaps {
    /// AVX2 + FMA + F16C (x86-64-v3).
    pub avx2: bool,
    /// AVX-512 F/BW/VL with VNNI 8-bit dot products (Ice Lake, Zen 4 and later).
    pub avx512vnni: bool,
    /// AVX-512 BF16 (`vdpbf16ps`, Cooper Lake, Sapphire Rapids, Zen 4): prefill tiles.
    pub avx512bf16: bool,
    /// AMX tiles with bf16 (Sapphire Rapids and later), granted by the OS: prefill tiles. Only
    /// [`CpuCaps::detect`] sets it, after asking the OS for the tile state.
    pub amx: bool,
    /// How far ahead the AVX-512 decode kernels ask for weights, chosen for the processor.
    pub ahead: DecodeAhead,
}

/// Bytes ahead of the weights being read that the AVX-512 packed decode kernels request into
/// L2 and into L1 (0: no L1 request), for Q8 rows and for the other layouts, and that the F16 and
/// BF16 decode kernels request into L2. The distances that
/// stream fastest differ between processors and between layouts, so they are chosen at run
/// time with the kernels (docs/benchmarks.md, "Prefetch distance on Zen 4").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeAhead {
    /// Q8 rows: `(l2, l1)`.
    pub bytes: (usize, usize),
    /// The 4-, 5- and 6-bit and grid layouts: `(l2, l1)`.
    pub narrow: (usize, usize),
    /// F16 and BF16 rows: into L2 only.
    pub half: usize,
}

impl DecodeAhead {
    /// Chosen on Intel Xeon (Sapphire Rapids class) on huge pages, where the weights are; also
    /// the choice on processors not measured.
    pub const INTEL: Self = DecodeAhead {
        bytes: (3072, 512),
        narrow: (3072, 512),
        half: 3072,
    };
    /// Chosen on AMD Zen 4 on huge pages: the narrow layouts and the half-precision rows stream
    /// faster from further ahead, the narrow ones without the L1 request; Q8 rows as on Intel.
    pub const AMD: Self = DecodeAhead {
        bytes: (3072, 512),
        narrow: (6144, 0),
        half: 6144,
    };

    /// The distances for this processor's vendor.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            // The vendor string's registers in cpuid's order: "Auth" "enti" "cAMD".
            let v = std::arch::x86_64::__cpuid(0);
            if (v.ebx, v.edx, v.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163) {
                return Self::AMD;
            }
        }
        Self::INTEL
    }
}

impl CpuCaps {
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c");
            let avx512vnni = avx2
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512vnni");
            let avx512bf16 = avx512vnni && std::arch::is_x86_feature_detected!("avx512bf16");
            CpuCaps {
                avx2,
                avx512vnni,
                avx512bf16,
                amx: avx512bf16 && amx::available(),
                ahead: DecodeAhead::detect(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            CpuCaps {
                avx2: false,
                avx512vnni: false,
                avx512bf16: false,
                amx: false,
                ahead: DecodeAhead::INTEL,
            }
        }
    }

    /// Portable kernels only: the reference the SIMD paths are tested against.
    pub fn portable() -> Self {
        CpuCaps {
            avx2: false,
            avx512vnni: false,
            avx512bf16: false,
            amx: false,
            ahead: DecodeAhead::INTEL,
        }
    }

    /// AVX2 without the AVX-512 kernels, to test and compare the two paths.
    pub fn avx2_only() -> Self {
        let d = Self::detect();
        CpuCaps {
            avx2: d.avx2,
            avx512vnni: false,
            avx512bf16: false,
            amx: false,
            ahead: d.ahead,
        }
    }

    /// Every detected kernel except AMX, to compare the prefill paths.
    pub fn without_amx() -> Self {
        CpuCaps {
            amx: false,
            ..Self::detect()
        }
    }

    pub fn describe(&self) -> &'static str {
        if self.amx {
            "avx512-vnni+bf16+amx"
        } else if self.avx512bf16 {
            "avx512-vnni+bf16"
        } else if self.avx512vnni {
            "avx512-vnni"
        } else if self.avx2 {
            "avx2+fma+f16c"
        } else {
            "portable"
        }
    }
}

/// Activations quantized to 8 bits in blocks of 32, the partner of Q8_0 and Q4_0 weights.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct BlockQ8 {
    pub d: f32,
    /// `d · Σ qs`: lets Q4_0 kernels use unsigned nibbles and subtract `8 · s` once per block.
    pub s: f32,
    pub qs: [i8; 32],
}

pub const QK: usize = 32;
/// Bytes of one Q8_0 weight block: f16 scale + 32 signed bytes.
pub const Q8_0_BYTES: usize = 34;
/// Bytes of one Q4_0 weight block: f16 scale + 16 bytes of nibbles.
pub const Q4_0_BYTES: usize = 18;

/// The scale is `amax / 127` and the quants `round_half_even(x · 127 / amax)`, as ggml's x86
/// code (`quantize_row_q8_0`/`_q8_1` with AVX) computes them: its reference C multiplies by
/// `1 / d` instead and rounds half away from zero, and the last-bit difference of the two
/// multipliers flips enough roundings to move a 30-layer model's logits by a tenth of a nat.
pub fn quantize_row_q8(x: &[f32], out: &mut [BlockQ8]) {
    for (blk, xs) in out.iter_mut().zip(x.chunks_exact(QK)) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        blk.d = d;
        let mut sum = 0i32;
        for (q, v) in blk.qs.iter_mut().zip(xs) {
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        blk.s = d * sum as f32;
    }
}

/// How ggml quantizes the activations of a weight type's dot products (its `vec_dot_type`).
/// bakeoff's integer kernels quantize them the same way, so that their integer products are
/// llama.cpp's and the two engines differ only in the order of float sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActQuant {
    /// Q8_0 (for Q4_0, Q5_0, Q8_0, IQ4_NL): blocks of 32, scale amax / 127 stored as f16.
    Q8_0,
    /// Q8_1 (for Q4_1, Q5_1): as Q8_0, with the block sum `d · Σq` also stored as f16.
    Q8_1,
    /// Q8_K (for the K-quants and IQ4_XS): blocks of 256, scale −max / 127 (`max` the value of largest
    /// magnitude, with its sign) in f32, quants rounded half to even.
    Q8K,
}

impl ActQuant {
    pub fn of(dtype: crate::WeightType) -> ActQuant {
        use crate::WeightType as W;
        match dtype {
            W::Q4_1 | W::Q5_1 => ActQuant::Q8_1,
            W::Q2K | W::Q3K | W::Q4K | W::Q5K | W::Q6K | W::Q8K | W::IQ4_XS => ActQuant::Q8K,
            _ => ActQuant::Q8_0,
        }
    }
}

/// Turns blocks written by [`quantize_row_q8`] (f32 scale) into ggml's Q8_0 or Q8_1 blocks:
/// the same quants, with the scale (and for Q8_1 the sum) rounded to f16 as ggml stores them.
pub fn round_q8_scales(blocks: &mut [BlockQ8], kind: ActQuant) {
    let h = |v: f32| half::f16::from_f32(v).to_f32();
    for b in blocks {
        let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
        if kind == ActQuant::Q8_1 {
            b.s = h(b.d * sum as f32);
            b.d = h(b.d);
        } else {
            b.d = h(b.d);
            b.s = b.d * sum as f32;
        }
    }
}

/// ggml's Q8_K quantization of `x` (a multiple of 256 values), written as blocks of 32 that
/// share their 256-block's scale; `s` is each 32-block's `d · Σq`.
pub fn quantize_row_q8k(x: &[f32], out: &mut [BlockQ8]) {
    for (xs, bs) in x.chunks_exact(8 * QK).zip(out.chunks_exact_mut(8)) {
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in xs {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            bs.iter_mut().for_each(|b| *b = BlockQ8::default());
            continue;
        }
        let iscale = -127.0 / max;
        let d = 1.0 / iscale;
        for (b, xb) in bs.iter_mut().zip(xs.chunks_exact(QK)) {
            let mut sum = 0i32;
            for (q, v) in b.qs.iter_mut().zip(xb) {
                *q = (iscale * v).round_ties_even().clamp(-128.0, 127.0) as i8;
                sum += *q as i32;
            }
            b.d = d;
            b.s = d * sum as f32;
        }
    }
}

#[inline]
pub(crate) fn f16_bits_to_f32(b: u16) -> f32 {
    half::f16::from_bits(b).to_f32()
}

/// Largest element-wise difference of two equally long slices (unit tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared slices differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// A zeroed buffer whose first value sits on a 64-byte boundary. The allocator only promises 16
/// bytes, and an AMX tile load whose rows straddle cache lines ran at 0.28× the speed of an
/// aligned one here (4.3 → 15.4 ns per `tdpbf16ps` with its operand loads).
pub(crate) struct Aligned64<T> {
    buf: Vec<T>,
    off: usize,
    len: usize,
}

impl<T: Copy + Default> Aligned64<T> {
    pub(crate) fn zeroed(len: usize) -> Self {
        let size = std::mem::size_of::<T>().max(1);
        let slack = 64 / size;
        let buf = vec![T::default(); len + slack];
        let misalign = buf.as_ptr() as usize % 64;
        let off = if misalign == 0 {
            0
        } else {
            (64 - misalign) / size
        };
        Aligned64 { buf, off, len }
    }
}

impl<T> std::ops::Deref for Aligned64<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.off..self.off + self.len]
    }
}

impl<T> std::ops::DerefMut for Aligned64<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decode distances follow the vendor the kernel reports (Linux's `vendor_id`): AMD's
    /// table on AMD processors, Intel's on the others.
    #[test]
    fn decode_distances_follow_the_vendor() {
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
            return;
        };
        let vendor = info
            .lines()
            .find_map(|l| l.strip_prefix("vendor_id"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim());
        let want = if vendor == Some("AuthenticAMD") {
            DecodeAhead::AMD
        } else {
            DecodeAhead::INTEL
        };
        assert_eq!(DecodeAhead::detect(), want, "vendor {vendor:?}");
        assert_eq!(CpuCaps::detect().ahead, want);
        assert_eq!(CpuCaps::avx2_only().ahead, want);
    }

    /// The SIMD Q8_K quantizer writes the portable one's bytes: ties, a negative largest
    /// value, a superblock of zeros, and +a before -a (the first of equal magnitudes sets the
    /// scale's sign).
    #[test]
    fn simd_q8k_quantizer_is_bit_identical() {
        if !CpuCaps::detect().avx2 {
            return;
        }
        let mut x: Vec<f32> = (0..256 * 6)
            .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 97.0)
            .collect();
        // Superblock 0: largest value -127 at index 40, so the multiplier is 1 and halves are ties.
        for (i, v) in x[..256].iter_mut().enumerate() {
            *v = (i % 32) as f32 - 15.5;
        }
        x[40] = -127.0;
        x[256..512].iter_mut().for_each(|v| *v = 0.0);
        // Superblock 2: +9 first, then -9.
        x[512 + 3] = 9.0e3;
        x[512 + 200] = -9.0e3;
        let mut a = vec![BlockQ8::default(); 48];
        let mut b = vec![BlockQ8::default(); 48];
        quantize_row_q8k(&x, &mut a);
        assert_eq!(&a[0].qs[15..19], &[0, 0, 2, 2]);
        assert!(
            a[16].d < 0.0,
            "the scale takes the sign of the first largest value"
        );
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx2 detected above.
        unsafe {
            x86::quantize_row_q8k(&x, &mut b)
        };
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert_eq!(p.qs, q.qs, "block {i}");
            assert_eq!(p.d.to_bits(), q.d.to_bits(), "block {i}");
            assert_eq!(p.s.to_bits(), q.s.to_bits(), "block {i}");
        }
    }

    /// The SIMD activation quantizer must write the same bytes as the portable one, ties
    /// (exact halves) included.
    #[test]
    fn simd_q8_quantizer_is_bit_identical() {
        if !CpuCaps::detect().avx2 {
            return;
        }
        let mut x: Vec<f32> = (0..32 * 40)
            .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 97.0)
            .collect();
        // A block whose values land exactly on halves after scaling (amax 127 → scale 1).
        for (i, v) in x[..32].iter_mut().enumerate() {
            *v = i as f32 - 15.5;
        }
        x[31] = 127.0;
        x[32..64].iter_mut().for_each(|v| *v = 0.0);
        let mut a = vec![BlockQ8::default(); 40];
        let mut b = vec![BlockQ8::default(); 40];
        quantize_row_q8(&x, &mut a);
        // Halves go to the even neighbour, as ggml's AVX quantizer rounds them.
        assert_eq!(&a[0].qs[15..19], &[0, 0, 2, 2]);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx2 detected above.
        unsafe {
            x86::quantize_row_q8(&x, &mut b)
        };
        for (p, q) in a.iter().zip(&b) {
            assert_eq!(p.qs, q.qs);
            assert_eq!(p.d.to_bits(), q.d.to_bits());
            assert_eq!(p.s.to_bits(), q.s.to_bits());
        }
    }

    /// The AMX B-operand layout: pair p of row r at u32 index 16·p + r.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn rows_to_pairs_is_a_transpose_of_value_pairs() {
        if !CpuCaps::detect().avx512vnni {
            return;
        }
        let (k, stride) = (96usize, 100usize);
        let src: Vec<u16> = (0..16 * stride).map(|i| (i * 31 % 65_521) as u16).collect();
        let mut dst = vec![0u16; 16 * k];
        // SAFETY: avx512f detected; 16 rows of `stride` values, room for 16·k.
        unsafe { x86::rows_to_pairs16(src.as_ptr(), stride, k, dst.as_mut_ptr()) };
        for r in 0..16 {
            for p in 0..k / 2 {
                assert_eq!(
                    dst[2 * (16 * p + r)],
                    src[r * stride + 2 * p],
                    "row {r} pair {p}"
                );
                assert_eq!(dst[2 * (16 * p + r) + 1], src[r * stride + 2 * p + 1]);
            }
        }
    }

    /// The AMX path's packed-row conversion gives the packed dequantizer's values rounded to
    /// bf16, in the packed order, for every layout.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn packed_rows_to_bf16_match_the_dequantizer() {
        use crate::WeightType;
        if !CpuCaps::detect().avx512bf16 {
            return;
        }
        // Whole superblocks, and tails of 8 (K-quants), 12 and 2 blocks.
        for (cols, dtype) in [512usize, 768, 896, 576].into_iter().flat_map(|c| {
            [
                WeightType::Q8_0,
                WeightType::Q4_0,
                WeightType::Q5_0,
                WeightType::Q4_1,
                WeightType::Q4K,
                WeightType::Q6K,
                WeightType::Q3K,
                WeightType::Q2K,
                WeightType::Q5_1,
                WeightType::Q5K,
                WeightType::IQ4_NL,
                WeightType::IQ4_XS,
            ]
            .map(move |d| (c, d))
        }) {
            if !cols.is_multiple_of(dtype.block_size()) {
                continue;
            }
            let nsb = packed::superblocks(cols);
            // Arbitrary bytes with every f16 scale (and Q4_K's d, dmin) a small normal number.
            let mut src: Vec<u8> = (0..cols / dtype.block_size() * dtype.type_size())
                .map(|i| (i * 7919 % 251) as u8)
                .collect();
            let halves = if matches!(
                dtype,
                WeightType::Q4_1
                    | WeightType::Q4K
                    | WeightType::Q5_1
                    | WeightType::Q5K
                    | WeightType::Q2K
            ) {
                2
            } else {
                1
            };
            // Q6_K and Q3_K keep their f16 scale at the end of the block.
            let at = match dtype {
                WeightType::Q6K => 208,
                WeightType::Q3K => 108,
                WeightType::Q2K => 80,
                _ => 0,
            };
            for blk in src.chunks_exact_mut(dtype.type_size()) {
                for h in 0..halves {
                    let v = half::f16::from_f32(0.01 + 0.003 * (blk[4] as f32));
                    blk[at + 2 * h..at + 2 * h + 2].copy_from_slice(&v.to_le_bytes());
                }
            }
            let mut pk = vec![0u8; packed::row_bytes(dtype, cols)];
            packed::pack_row(dtype, &src, &mut pk);
            let mut want = vec![0f32; cols];
            dequant::dequantize_into(dtype, &src, &mut want).unwrap();
            let mut got = vec![0u16; nsb * packed::SB * QK];
            let layout = packed::Layout::of(dtype).unwrap();
            // SAFETY: avx512bf16 detected; one packed row of cols / 32 blocks, room for 512
            // values per superblock.
            unsafe { x86::packed_row_to_bf16(layout, pk.as_ptr(), cols / QK, got.as_mut_ptr()) };
            let mut seen = vec![false; got.len()];
            for (b, blk) in want.chunks_exact(QK).enumerate() {
                let (si, l) = (b / packed::SB, b % packed::SB);
                for (i, v) in blk.iter().enumerate() {
                    let at = si * packed::SB * QK + 64 * (i / 4) + 4 * l + i % 4;
                    seen[at] = true;
                    let g = f32::from_bits((got[at] as u32) << 16);
                    let bf = half::bf16::from_f32(*v).to_f32();
                    assert!(
                        (g - bf).abs() <= v.abs() * 1e-2 + 1e-6,
                        "{dtype:?} {cols} columns, block {b} value {i}: {g} vs {v}"
                    );
                }
            }
            // A tail superblock's missing lanes are zeros (their products must vanish).
            for (at, (&g, seen)) in got.iter().zip(&seen).enumerate() {
                assert!(
                    *seen || f32::from_bits((g as u32) << 16) == 0.0,
                    "{dtype:?} {cols} columns: padding value {at} is not zero"
                );
            }
        }
    }

    #[test]
    fn aligned_buffers_start_on_a_cache_line() {
        for len in [1, 7, 64, 1000, 1 << 16] {
            let mut a = Aligned64::<u16>::zeroed(len);
            assert_eq!(a.as_ptr() as usize % 64, 0);
            assert_eq!(a.len(), len);
            assert!(a.iter().all(|&v| v == 0));
            a[len - 1] = 7;
            let f = Aligned64::<f32>::zeroed(len);
            assert_eq!(f.as_ptr() as usize % 64, 0);
            assert_eq!(f.len(), len);
        }
    }
}
