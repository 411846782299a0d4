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

use memmap2::{MmapMut, MmapOptions};

pub struct KvBuf {
    mem: Mem,
    len: usize,
}

enum Mem {
    /// `capacity` floats of address space, touched only up to the longest length so far.
    Mapped {
        map: MmapMut,
        capacity: usize,
    },
    Heap(Vec<f32>),
}

impl KvBuf {
    /// An empty buffer that can hold `capacity` floats without moving.
    pub fn new(capacity: usize) -> KvBuf {
        let mapped = capacity
            .checked_mul(4)
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

    /// Bytes of the floats in use.
    pub fn bytes(&self) -> usize {
        self.len * 4
    }

    /// Grows (new floats are zero) or shrinks to `len`. Past a mapping's capacity the contents
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
                    // A truncated cache may hold stale floats past its length.
                    self.as_mut_slice()[old..].fill(0.0);
                }
            }
            Mem::Heap(v) => {
                v.resize(len, 0.0);
                self.len = len;
            }
        }
    }

    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.resize(len);
        }
    }

    pub fn extend_from_slice(&mut self, xs: &[f32]) {
        let at = self.len;
        self.resize(at + xs.len());
        self.as_mut_slice()[at..].copy_from_slice(xs);
    }

    pub fn as_slice(&self) -> &[f32] {
        match &self.mem {
            // SAFETY: the mapping is page-aligned, at least `capacity >= len` floats long, and
            // zero-filled by the kernel, so its first `len` floats are initialised.
            Mem::Mapped { map, .. } => unsafe {
                std::slice::from_raw_parts(map.as_ptr().cast::<f32>(), self.len)
            },
            Mem::Heap(v) => v,
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        let len = self.len;
        match &mut self.mem {
            // SAFETY: as in `as_slice`, and `&mut self` makes the access exclusive.
            Mem::Mapped { map, .. } => unsafe {
                std::slice::from_raw_parts_mut(map.as_mut_ptr().cast::<f32>(), len)
            },
            Mem::Heap(v) => v,
        }
    }
}

impl std::ops::Deref for KvBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for KvBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
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
            let mut b = KvBuf::new(cap);
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
        let mut b = KvBuf::new(1 << 30);
        assert!(b.is_mapped());
        b.resize(1 << 18);
        let grown = rss().unwrap().saturating_sub(before);
        // Other tests allocate beside this one; a touched reservation would show as 4 GiB.
        assert!(grown < 1 << 30, "{grown} bytes resident for 1 MiB written");
    }
}
