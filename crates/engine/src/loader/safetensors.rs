//! Hugging Face safetensors: one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::WeightType;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::store::{Blob, RawTensor, TensorStore, map_file};
use crate::{Error, Result};

struct Entry {
    file: usize,
    dtype: WeightType,
    shape: Vec<usize>,
    start: usize,
    len: usize,
}

pub struct SafetensorsStore {
    paths: Vec<PathBuf>,
    maps: Vec<Arc<Mmap>>,
    entries: HashMap<String, Entry>,
}

impl SafetensorsStore {
    /// Opens the weights of a Hugging Face model folder.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let paths = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shard_paths(&index)?
        } else {
            return Err(Error::NotFound(format!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            )));
        };
        Self::open_files(paths)
    }

    pub fn open_files(paths: Vec<PathBuf>) -> Result<Self> {
        let mut maps = Vec::new();
        let mut entries = HashMap::new();
        for (fi, path) in paths.iter().enumerate() {
            let map = map_file(path, true)?;
            // Validates the header and that every tensor lies inside the file, so a truncated
            // download is reported here rather than as a fault later.
            let st = SafeTensors::deserialize(&map)
                .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
            let base = map.as_ptr() as usize;
            for (name, view) in st.tensors() {
                let dtype = match view.dtype() {
                    Dtype::F32 => WeightType::F32,
                    Dtype::F16 => WeightType::F16,
                    Dtype::BF16 => WeightType::BF16,
                    other => {
                        return Err(Error::format(
                            path,
                            format!(
                                "tensor `{name}` has dtype {other:?}; bakeoff reads F32, F16 and BF16"
                            ),
                        ));
                    }
                };
                let data = view.data();
                let start = data.as_ptr() as usize - base;
                entries.insert(
                    name.clone(),
                    Entry {
                        file: fi,
                        dtype,
                        shape: view.shape().to_vec(),
                        start,
                        len: data.len(),
                    },
                );
            }
            maps.push(map);
        }
        Ok(Self {
            paths,
            maps,
            entries,
        })
    }
}

fn shard_paths(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(index, format!("invalid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(index, "no `weight_map` object"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(Error::format(index, "`weight_map` lists no files"));
    }
    let mut out = Vec::new();
    for f in files {
        super::hub::check_shard_name(&f).map_err(|e| Error::format(index, e))?;
        let p = dir.join(&f);
        if !p.is_file() {
            return Err(Error::NotFound(format!(
                "{}: shard `{f}` listed in {} is missing",
                p.display(),
                index.display()
            )));
        }
        out.push(p);
    }
    Ok(out)
}

impl TensorStore for SafetensorsStore {
    fn tensor(&self, hf_name: &str) -> Result<RawTensor> {
        let e = self.entries.get(hf_name).ok_or_else(|| {
            Error::tensor(
                hf_name,
                format!("missing from {}", display_paths(&self.paths)),
            )
        })?;
        Ok(RawTensor {
            name: hf_name.to_string(),
            dtype: e.dtype,
            shape: e.shape.clone(),
            data: Blob::Mapped {
                map: self.maps[e.file].clone(),
                start: e.start,
                len: e.len,
            },
        })
    }

    fn has(&self, hf_name: &str) -> bool {
        self.entries.contains_key(hf_name)
    }

    fn files(&self) -> Vec<PathBuf> {
        self.paths.clone()
    }
}

pub(crate) fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
