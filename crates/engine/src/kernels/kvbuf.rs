//! One layer's keys or values: a buffer that grows to a fixed capacity without ever moving.
//!
//! A `Vec` grown one prompt and one token at a time reallocates as it doubles, and on the
//! worker threads that append, glibc serves those sizes from its per-thread arenas: every
//! doubling leaves the old block behind as a hole the process keeps. On a small model that is
//! most of its overhead (SmolLM2-135M: about 30 MB of anonymous memory beyond a 29.5 MB KV cache
//! at 640 positions, docs/benchmarks.md "Peak memory"). Here the whole capacity (the model's
//! context) is reserved once as an anonymous mapping without swap reservation, so only the
//! positions written take memory, nothing is copied as the cache grows, and dropping the cache
//! gives the memory back to the system at once. Where such a mapping cannot be made (a system
//! that refuses overcommitted address space), the buffer falls back to a `Vec`.

//!
//! The elements are `f32` or `f16` ([`KvElem`]): a half-precision cache, llama.cpp's default,
//! halves the bytes attention reads per token and the cache's memory.

use memmap2::{MmapMut, MmapOptions};

/// A KV cache element: stored from, and read back as, `f32`.
pub trait KvElem: Copy + Default + PartialEq + std::fmt::Debug + Send + Sync + 'static {
    /// Whether the element is an IEEE half (the SIMD kernels convert it as they load).
    const HALF: bool;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    /// `dst[i] = from_f32(src[i])`.
    fn convert(src: &[f32], dst: &mut [Self]);
}

impl KvElem for f32 {
    const HALF: bool = false;
    fn from_f32(x: f32) -> f32 {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn convert(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl KvElem for half::f16 {
    const HALF: bool = true;
    fn from_f32(x: f32) -> half::f16 {
        half::f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn convert(src: &[f32], dst: &mut [half::f16]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }
}

/// The element type of a CPU KV cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvType {
    /// [`KvType::F16`] where a SIMD attention kernel runs (AVX-512, or AVX2 with F16C: they
    /// convert halves as they load), [`KvType::F32`] on the portable path, where converting
    /// each element cost 2.6x the decode.
    #[default]
    Auto,
    /// Half precision, as llama.cpp stores its cache by default: half the memory and the bytes
    /// attention reads; keys and values rounded to 11 significant bits.
    F16,
    /// Single precision: exactly the values the projections computed.
    F32,
}

impl KvType {
    /// The type a cache is made of: `Auto` resolved for these kernels and head size.
    pub fn resolve(self, caps: super::CpuCaps, head_dim: usize) -> KvType {
        match self {
            KvType::Auto if super::attention::simd(caps, head_dim) => KvType::F16,
            KvType::Auto => KvType::F32,
            t => t,
        }
    }
}

impl std::str::FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> Result<KvType, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(KvType::Auto),
            "f16" => Ok(KvType::F16),
            "f32" => Ok(KvType::F32),
            other => Err(format!("KV cache type `{other}` is not auto, f16 or f32")),
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvType::Auto => "auto",
            KvType::F16 => "f16",
            KvType::F32 => "f32",
        })
    }
}

pub struct KvBuf<T: KvElem = f32> {
    mem: Mem<T>,
    len: usize,
}

enum Mem<T> {
    /// `capacity` elements of address space, touched only up to the longest length so far.
    Mapped {
        map: MmapMut,
        capacity: usize,
    },
    Heap(Vec<T>),
}

impl<T: KvElem> KvBuf<T> {
    /// An empty buffer that can hold `capacity` elements without moving.
    pub fn new(capacity: usize) -> KvBuf<T> {
        let mapped = capacity
            .checked_mul(size_of::<T>())
            .filter(|&b| b > 0)
            .and_then(|bytes| {
                MmapOptions::new()
                    .len(bytes)
                    .no_reserve_swap()
                    .map_anon()
                    .ok()
            });
        let mem = match mapped {
            Some(map) => Mem::Mapped { map, capacity },
            None => Mem::Heap(Vec::new()),
        };
        KvBuf { mem, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the buffer is the mapping (false: the `Vec` fallback).
    pub fn is_mapped(&self) -> bool {
        matches!(self.mem, Mem::Mapped { .. })
    }

    /// Bytes of the elements in use.
    pub fn bytes(&self) -> usize {
        self.len * size_of::<T>()
    }

    /// Grows (new elements are zero) or shrinks to `len`. Past a mapping's capacity the contents
    /// move to a `Vec` rather than fail: the decoder never asks for more than the context it
    /// sized the buffer for, but a wrong size must cost speed, not an abort.
    pub fn resize(&mut self, len: usize) {
        if let Mem::Mapped { capacity, .. } = self.mem
            && len > capacity
        {
            self.mem = Mem::Heap(self.as_slice().to_vec());
        }
        match &mut self.mem {
            Mem::Mapped { .. } => {
                let old = self.len;
                self.len = len;
                if len > old {
                    // A truncated cache may hold stale elements past its length.
                    self.as_mut_slice()[old..].fill(T::default());
                }
            }
            Mem::Heap(v) => {
                v.resize(len, T::default());
                self.len = len;
            }
        }
    }

    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.resize(len);
        }
    }

    /// Appends `xs`, converted to the element type.
    pub fn extend_from_f32(&mut self, xs: &[f32]) {
        let at = self.len;
        self.resize(at + xs.len());
        T::convert(xs, &mut self.as_mut_slice()[at..]);
    }

    pub fn extend_from_slice(&mut self, xs: &[T]) {
        let at = self.len;
        self.resize(at + xs.len());
        self.as_mut_slice()[at..].copy_from_slice(xs);
    }

    pub fn as_slice(&self) -> &[T] {
        match &self.mem {
            // SAFETY: the mapping is page-aligned, at least `capacity >= len` elements long, and
            // zero-filled by the kernel (all-zero bits are 0.0 in f32 and f16), so its first
            // `len` elements are initialised.
            Mem::Mapped { map, .. } => unsafe {
                std::slice::from_raw_parts(map.as_ptr().cast::<T>(), self.len)
            },
            Mem::Heap(v) => v,
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        let len = self.len;
        match &mut self.mem {
            // SAFETY: as in `as_slice`, and `&mut self` makes the access exclusive.
            Mem::Mapped { map, .. } => unsafe {
                std::slice::from_raw_parts_mut(map.as_mut_ptr().cast::<T>(), len)
            },
            Mem::Heap(v) => v,
        }
    }
}

impl<T: KvElem> std::ops::Deref for KvBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: KvElem> std::ops::DerefMut for KvBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Op {
        Extend(Vec<f32>),
        Resize(usize),
        Set(usize, f32),
        Truncate(usize),
    }

    #[test]
    fn grows_shrinks_and_zero_fills_like_a_vec() {
        let ops = [
            Op::Extend(vec![1.0, 2.0, 3.0]),
            Op::Resize(7),
            Op::Set(6, 9.0),
            Op::Truncate(2),
            // Regrowing over the stale 9.0 gives zeros, as a Vec does.
            Op::Resize(8),
            Op::Truncate(20),
            // Past the capacity of the 10-float mapping: the contents move to a Vec.
            Op::Extend((0..13).map(|i| i as f32).collect()),
        ];
        for cap in [0, 10, 1 << 20] {
            let mut b = KvBuf::<f32>::new(cap);
            assert_eq!(b.is_mapped(), cap > 0, "capacity {cap}");
            let mut v: Vec<f32> = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                match op {
                    Op::Extend(xs) => {
                        b.extend_from_slice(xs);
                        v.extend_from_slice(xs);
                    }
                    Op::Resize(n) => {
                        b.resize(*n);
                        v.resize(*n, 0.0);
                    }
                    Op::Set(at, x) => {
                        b[*at] = *x;
                        v[*at] = *x;
                    }
                    Op::Truncate(n) => {
                        b.truncate(*n);
                        v.truncate(*n);
                    }
                }
                assert_eq!(&b[..], &v[..], "capacity {cap}, step {i}");
                assert_eq!(b.bytes(), v.len() * 4);
            }
            assert_eq!(b.is_mapped(), cap >= 21, "capacity {cap}");
        }
    }

    #[test]
    fn auto_takes_f16_only_where_the_simd_attention_runs() {
        use super::super::CpuCaps;
        assert_eq!(KvType::Auto.resolve(CpuCaps::portable(), 64), KvType::F32);
        // AVX2 (with FMA and F16C) has its own attention kernel, which converts halves too.
        let avx2 = CpuCaps::avx2_only();
        let want = if avx2.avx2 { KvType::F16 } else { KvType::F32 };
        assert_eq!(KvType::Auto.resolve(avx2, 64), want);
        let caps = CpuCaps::detect();
        let want = if caps.avx512vnni || caps.avx2 {
            KvType::F16
        } else {
            KvType::F32
        };
        assert_eq!(KvType::Auto.resolve(caps, 128), want);
        // A head size the SIMD kernels do not take.
        assert_eq!(KvType::Auto.resolve(caps, 40), KvType::F32);
        for t in [KvType::F16, KvType::F32] {
            assert_eq!(t.resolve(CpuCaps::portable(), 40), t);
            assert_eq!(t.to_string().parse::<KvType>(), Ok(t));
        }
        assert!("f8".parse::<KvType>().unwrap_err().contains("f8"));
    }

    #[test]
    fn half_elements_round_as_f16() {
        let xs = [1.0f32, -2.5, 0.1, 65504.0, 1e-8];
        let mut b = KvBuf::<half::f16>::new(64);
        b.extend_from_f32(&xs);
        assert_eq!(b.bytes(), 10);
        for (x, y) in xs.iter().zip(b.iter()) {
            assert_eq!(y.to_f32(), half::f16::from_f32(*x).to_f32());
        }
        b.truncate(1);
        b.resize(3);
        assert_eq!(b[1].to_f32(), 0.0);
    }

    /// Reserving a whole long context costs address space, not memory: only what is written is
    /// resident.
    #[cfg(target_os = "linux")]
    #[test]
    fn only_written_positions_take_memory() {
        let rss = || {
            std::fs::read_to_string("/proc/self/statm")
                .ok()
                .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
                .map(|pages| pages * 4096)
        };
        let Some(before) = rss() else { return };
        // 4 GiB of capacity, 1 MiB written.
        let mut b = KvBuf::<f32>::new(1 << 30);
        assert!(b.is_mapped());
        b.resize(1 << 18);
        let grown = rss().unwrap().saturating_sub(before);
        // Other tests allocate beside this one; a touched reservation would show as 4 GiB.
        assert!(grown < 1 << 30, "{grown} bytes resident for 1 MiB written");
    }
}
