//! GGUF files (llama.cpp's format): hyper-parameters, tokenizer and chat template in the metadata,
//! tensors in F32/F16/BF16 or ggml block quantizations, memory-mapped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use memmap2::Mmap;

use super::store::{Blob, RawTensor, TensorStore, map_file, storage_bytes};
use crate::models::gguf_tensor_name;
use crate::{Error, Result};

pub struct GgufStore {
    path: PathBuf,
    map: Arc<Mmap>,
    pub content: Content,
}

impl GgufStore {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // Buffered: the metadata is read value by value, and a vocabulary of 151,665 tokens
        // and as many merges was several hundred thousand read calls.
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let content = Content::read(&mut reader)
            .map_err(|e| Error::format(path, format!("not a valid GGUF file: {e}")))?;
        let map = map_file(path, false)?;
        let store = Self {
            path: path.to_path_buf(),
            map,
            content,
        };
        store.check_bounds()?;
        Ok(store)
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor must lie inside the file: a truncated download is reported at load.
    fn check_bounds(&self) -> Result<()> {
        for (name, info) in &self.content.tensor_infos {
            let count = info.shape.elem_count();
            let len = storage_bytes(info.ggml_dtype, count).ok_or_else(|| {
                Error::format(
                    &self.path,
                    format!(
                        "tensor `{name}`: {count} elements do not fill whole {:?} blocks",
                        info.ggml_dtype
                    ),
                )
            })?;
            let start = self.content.tensor_data_offset + info.offset;
            let end = start.checked_add(len as u64);
            if end.is_none_or(|e| e > self.map.len() as u64) {
                return Err(Error::format(
                    &self.path,
                    format!(
                        "truncated: tensor `{name}` needs bytes {start}..{} but the file has {} bytes",
                        start + len as u64,
                        self.map.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn raw(&self, gguf_name: &str, hf_name: &str) -> Result<RawTensor> {
        let info = self.content.tensor_infos.get(gguf_name).ok_or_else(|| {
            Error::tensor(
                hf_name,
                format!(
                    "missing from {} (GGUF name `{gguf_name}`)",
                    self.path.display()
                ),
            )
        })?;
        let count = info.shape.elem_count();
        let len = storage_bytes(info.ggml_dtype, count).unwrap_or(0);
        let start = (self.content.tensor_data_offset + info.offset) as usize;
        Ok(RawTensor {
            name: hf_name.to_string(),
            dtype: info.ggml_dtype,
            shape: info.shape.dims().to_vec(),
            data: Blob::Mapped {
                map: self.map.clone(),
                start,
                len,
            },
        })
    }
}

impl TensorStore for GgufStore {
    fn tensor(&self, hf_name: &str) -> Result<RawTensor> {
        let g = gguf_tensor_name(hf_name)
            .ok_or_else(|| Error::tensor(hf_name, "has no GGUF equivalent"))?;
        self.raw(&g, hf_name)
    }

    fn has(&self, hf_name: &str) -> bool {
        gguf_tensor_name(hf_name).is_some_and(|g| self.content.tensor_infos.contains_key(&g))
    }

    fn files(&self) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }
}
