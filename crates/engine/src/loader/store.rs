//! Raw tensors straight out of memory-mapped files, which the backends use in place or convert
//! (the CPU backend repacks Q4_0 / Q8_0 matrices, see `kernels::packed`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::WeightType;
use memmap2::Mmap;

use crate::{Error, Result};

/// Bytes of one tensor: a window into a mapped file, or an owned buffer for converted data.
#[derive(Clone)]
pub enum Blob {
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        len: usize,
    },
    Owned(Arc<Vec<u8>>),
    /// Anonymous memory (repacked weights): transparent huge pages where the kernel allows,
    /// so filling it costs 512× fewer page faults and streaming it fewer TLB misses. The bytes
    /// start at `start`, a 2 MB boundary for buffers of 2 MB or more.
    Anon {
        map: Arc<Mmap>,
        start: usize,
        len: usize,
    },
}

impl Blob {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Blob::Mapped { map, start, len } => &map[*start..*start + *len],
            Blob::Owned(v) => v,
            Blob::Anon { map, start, len } => &map[*start..*start + *len],
        }
    }

    /// Fills `len` bytes of fresh anonymous memory with `fill` and seals them read-only.
    pub fn anon(len: usize, fill: impl FnOnce(&mut [u8])) -> std::io::Result<Blob> {
        const HUGE: usize = 2 << 20;
        if len == 0 {
            return Ok(Blob::Owned(Arc::new(Vec::new())));
        }
        // A mapping starts on a 4 KiB boundary, and only the 2 MB blocks wholly inside it can
        // be huge pages: unaligned, a 6.5 MB matrix got two of them, not three, and 41% of
        // TinyLlama's Q4_0 weights sat on 4 KiB pages. One spare block of address space (never
        // touched, so never resident) lets the bytes start on a boundary.
        let spare = if len >= HUGE { HUGE } else { 0 };
        let mut m = memmap2::MmapOptions::new().len(len + spare).map_anon()?;
        let start = if spare > 0 {
            (HUGE - m.as_ptr() as usize % HUGE) % HUGE
        } else {
            0
        };
        #[cfg(target_os = "linux")]
        {
            // Huge pages for the whole blocks only: a huge page over the tail would make up
            // to 2 MB per matrix resident that holds nothing.
            let whole = len / HUGE * HUGE;
            if whole > 0 {
                let _ = m.advise_range(memmap2::Advice::HugePage, start, whole);
            }
            if whole < len {
                let _ = m.advise_range(memmap2::Advice::NoHugePage, start + whole, len - whole);
            }
        }
        fill(&mut m[start..start + len]);
        Ok(Blob::Anon {
            map: Arc::new(m.make_read_only()?),
            start,
            len,
        })
    }

    /// Maps a window's pages now, in one call, rather than one fault at a time on first use.
    /// Advisory: where the kernel cannot (before Linux 5.14), first use maps them.
    pub fn populate(&self) {
        #[cfg(target_os = "linux")]
        if let Blob::Mapped { map, start, len } = self {
            let _ = map.advise_range(memmap2::Advice::PopulateRead, *start, *len);
        }
    }

    /// Drops a mapped window's pages from this process (after its bytes were copied into a
    /// repacked buffer), so they stop counting in its resident memory.
    pub fn release(&self) {
        self.release_range(0, self.bytes().len())
    }

    /// [`Blob::release`] of the window and of the 2 MB-aligned blocks around it. Reading a
    /// window of a file the page cache holds in large folios maps whole folios, up to 2 MB
    /// before and after it: the tails of neighbours released earlier came back and stayed
    /// (111 MB while copying Qwen2.5 Q4_0's cached matrices). Dropping a neighbour's page is
    /// harmless: the mapping is read-only, and a page touched again reads back from the file.
    pub fn release_around(&self) {
        if let Blob::Mapped { map, start, len } = self {
            const BLOCK: usize = 2 << 20;
            let lo = start - start % BLOCK;
            let hi = (start + len).next_multiple_of(BLOCK).min(map.len());
            // SAFETY: as in `release_range`.
            #[cfg(unix)]
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo)
            };
            #[cfg(not(unix))]
            let _ = (map, lo, hi);
        }
    }

    /// [`Blob::release`] for bytes `off..off + len` of the window (whole pages around them).
    pub fn release_range(&self, off: usize, len: usize) {
        if let Blob::Mapped {
            map,
            start,
            len: total,
        } = self
        {
            let (start, len) = (start + off.min(*total), len.min(total.saturating_sub(off)));
            // SAFETY: the map is a read-only file mapping that is never written, so a page
            // dropped here reads back the same bytes from the file if anything touches it again
            // (a neighbouring tensor sharing the first or last page). The call is advisory; a
            // failure only leaves the pages resident.
            #[cfg(unix)]
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
            };
            #[cfg(not(unix))]
            let _ = (map, start, len);
        }
    }
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blob({} bytes)", self.bytes().len())
    }
}

/// One tensor as stored: ggml dtype (F32/F16/BF16 for safetensors), row-major shape.
#[derive(Clone, Debug)]
pub struct RawTensor {
    pub name: String,
    pub dtype: WeightType,
    pub shape: Vec<usize>,
    pub data: Blob,
}

impl RawTensor {
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn expect_shape(&self, shape: &[usize]) -> Result<()> {
        if self.shape != shape {
            return Err(Error::tensor(
                &self.name,
                format!(
                    "has shape {:?} but the config implies {:?}",
                    self.shape, shape
                ),
            ));
        }
        Ok(())
    }

    /// Dequantizes to f32; used for small tensors (norms, biases) and for tests.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let n = self.elem_count();
        let mut out = vec![0f32; n];
        crate::kernels::dequant::dequantize_into(self.dtype, self.data.bytes(), &mut out)
            .map_err(|e| Error::tensor(&self.name, e.to_string()))?;
        Ok(out)
    }
}

/// Where weights come from, addressed by their Hugging Face names.
pub trait TensorStore: Send + Sync {
    fn tensor(&self, hf_name: &str) -> Result<RawTensor>;
    fn has(&self, hf_name: &str) -> bool;
    fn files(&self) -> Vec<PathBuf>;
}

/// Maps a file read-only. With `populate`, every page is mapped up front in one call (as
/// llama.cpp does), which costs far less than one fault per 4 KiB page when all of it will be
/// read; without it, [`Blob::populate`] maps the tensors that are used in place, and a tensor
/// served from the packed-weights file never brings its source pages into this process.
pub(crate) fn map_file(path: &Path, populate: bool) -> Result<Arc<Mmap>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut opts = memmap2::MmapOptions::new();
    if populate {
        opts.populate();
    }
    // SAFETY: the map is read-only; bakeoff never writes model files while they are loaded.
    // A file truncated behind our back would fault, as with any mmap-based loader.
    let map = unsafe { opts.map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Arc::new(map))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn anonymous_blobs_hold_what_was_filled_and_large_ones_start_on_2_mb() {
        for len in [1usize, 4097, (2 << 20) - 1, 2 << 20, (5 << 20) + 123] {
            let b = Blob::anon(len, |o| {
                for (i, v) in o.iter_mut().enumerate() {
                    *v = (i % 251) as u8;
                }
            })
            .unwrap();
            let bytes = b.bytes();
            assert_eq!(bytes.len(), len);
            assert!(bytes.iter().enumerate().all(|(i, v)| *v == (i % 251) as u8));
            if len >= 2 << 20 {
                assert_eq!(bytes.as_ptr() as usize % (2 << 20), 0, "{len}");
            }
        }
        assert!(Blob::anon(0, |_| {}).unwrap().bytes().is_empty());
    }
}
