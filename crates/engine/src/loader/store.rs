//! Raw tensors straight out of memory-mapped files. Nothing is copied at load: the CPU kernels
//! read the mapped bytes in their on-disk format, which keeps load time and resident memory low.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
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
}

impl Blob {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Blob::Mapped { map, start, len } => &map[*start..*start + *len],
            Blob::Owned(v) => v,
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
    pub dtype: GgmlDType,
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

pub(crate) fn map_file(path: &Path) -> Result<Arc<Mmap>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only; bakeoff never writes model files while they are loaded.
    // A file truncated behind our back would fault, as with any mmap-based loader.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Arc::new(map))
}

/// Bytes that `count` elements of `dtype` occupy.
pub fn storage_bytes(dtype: GgmlDType, count: usize) -> Option<usize> {
    let bs = dtype.block_size();
    if !count.is_multiple_of(bs) {
        return None;
    }
    Some(count / bs * dtype.type_size())
}
