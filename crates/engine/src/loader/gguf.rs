//! GGUF files (llama.cpp's format): hyper-parameters, tokenizer and chat template in the metadata,
//! tensors in F32/F16/BF16 or ggml block quantizations, memory-mapped.
//!
//! The header is read by bakeoff's own reader rather than candle's: a file from a model hub is
//! untrusted input, and every count, length, offset and type in it is checked against the file's
//! size before anything is allocated or indexed, so that a crafted or damaged file is an error
//! naming the problem, never a panic, a division by zero or an allocation of many gigabytes.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use candle_core::quantized::gguf_file::Value;
use memmap2::Mmap;

use super::store::{Blob, RawTensor, TensorStore, map_file};
use crate::WeightType;
use crate::models::gguf_tensor_name;
use crate::{Error, Result};

/// `GGUF` read as a little-endian u32.
const MAGIC: u32 = 0x4655_4747;
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays deeper than this are refused: each level costs a stack frame, and no
/// writer nests them at all.
const MAX_ARRAY_DEPTH: usize = 8;

/// One tensor's entry in the header.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Row-major (the file stores the fastest dimension first; this is reversed).
    pub shape: Vec<usize>,
    pub dtype: WeightType,
    /// From the start of the tensor data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of the tensor's data (checked against overflow when the header was read).
    pub fn bytes(&self) -> usize {
        self.dtype.storage_bytes(self.elem_count()).unwrap_or(0)
    }
}

/// A GGUF header: metadata and tensor directory.
#[derive(Clone, Debug)]
pub struct GgufContent {
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    pub tensor_infos: HashMap<String, TensorInfo>,
    /// Tensor names in file order.
    pub tensor_order: Vec<String>,
    /// Absolute file offset of the tensor data section.
    pub tensor_data_offset: u64,
    pub alignment: u64,
}

impl GgufContent {
    /// Reads a header from a file, buffered: the metadata is read value by value, and a
    /// vocabulary of 151,665 tokens and as many merges was several hundred thousand read calls.
    pub fn read_file(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        Self::read(&mut reader, len)
            .map_err(|e| Error::format(path, format!("not a valid GGUF file: {e}")))
    }

    /// Reads a header from `reader`, positioned at the start of a GGUF file of `file_len` bytes,
    /// and checks every tensor against the file. Errors are messages without the path.
    pub fn read<R: Read>(reader: &mut R, file_len: u64) -> std::result::Result<Self, String> {
        let mut r = Reader {
            inner: reader,
            pos: 0,
            len: file_len,
        };
        let magic = r.u32("the magic number")?;
        if magic != MAGIC {
            return Err(format!(
                "not a GGUF file: the first four bytes are {:02x?}, not `GGUF`",
                magic.to_le_bytes()
            ));
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(format!(
                "GGUF version {version} is not supported (versions 2 and 3 are)"
            ));
        }
        let tensor_count = r.u64("the tensor count")?;
        let kv_count = r.u64("the metadata count")?;
        // Smallest possible entries: a tensor is a name length, one dimension, a type and an
        // offset (32 bytes); a key-value pair a key length, a type and a one-byte value (13).
        r.fits(tensor_count, 32, "tensor count")?;
        r.fits(kv_count, 13, "metadata count")?;

        // Capacities are capped: counts are only bounds until the entries are actually read.
        let mut metadata = HashMap::with_capacity(kv_count.min(1 << 12) as usize);
        for _ in 0..kv_count {
            let key = r.string("a metadata key")?;
            let ty = r.u32("a metadata type")?;
            let value = r
                .value(ty, 0)
                .map_err(|e| format!("metadata `{key}`: {e}"))?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(format!("metadata key `{key}` appears twice"));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match unsigned(v) {
                Some(a) if a.is_power_of_two() => a,
                Some(a) => {
                    return Err(format!(
                        "general.alignment is {a}; it must be a power of two (ggml writes 32)"
                    ));
                }
                None => {
                    return Err(format!(
                        "general.alignment is {v:?}; it must be an unsigned integer"
                    ));
                }
            },
        };

        let cap = tensor_count.min(1 << 12) as usize;
        let mut tensor_infos = HashMap::with_capacity(cap);
        let mut tensor_order = Vec::with_capacity(cap);
        for _ in 0..tensor_count {
            let name = r.string("a tensor name")?;
            let info = r.tensor_info(&name)?;
            if info.offset % alignment != 0 {
                return Err(format!(
                    "tensor `{name}`: offset {} is not a multiple of the alignment {alignment}",
                    info.offset
                ));
            }
            if tensor_infos.insert(name.clone(), info).is_some() {
                return Err(format!("tensor `{name}` appears twice"));
            }
            tensor_order.push(name);
        }

        let tensor_data_offset = r
            .pos
            .div_ceil(alignment)
            .checked_mul(alignment)
            .ok_or("the tensor data offset overflows")?;
        let content = Self {
            version,
            metadata,
            tensor_infos,
            tensor_order,
            tensor_data_offset,
            alignment,
        };
        content.check_tensor_data(file_len)?;
        Ok(content)
    }

    /// Every tensor lies inside the file and no two overlap: a truncated download or a crafted
    /// offset is reported here, not as a fault while the weights are read.
    fn check_tensor_data(&self, file_len: u64) -> std::result::Result<(), String> {
        let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(self.tensor_order.len());
        for name in &self.tensor_order {
            let info = &self.tensor_infos[name];
            let len = info.bytes() as u64;
            let start = self.tensor_data_offset.checked_add(info.offset);
            let end = start.and_then(|s| s.checked_add(len));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_len => spans.push((start, end, name)),
                _ => {
                    return Err(format!(
                        "truncated: tensor `{name}` needs bytes {}..{} but the file has {file_len} bytes",
                        self.tensor_data_offset as u128 + info.offset as u128,
                        self.tensor_data_offset as u128 + info.offset as u128 + len as u128,
                    ));
                }
            }
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            let ((_, a_end, a), (b_start, _, b)) = (w[0], w[1]);
            if b_start < a_end {
                return Err(format!(
                    "tensors `{a}` and `{b}` overlap (bytes {b_start}..{a_end})"
                ));
            }
        }
        Ok(())
    }

    /// How many transformer blocks (`blk.N.*`) have tensors: `1 + ` the highest N.
    pub fn blocks_present(&self) -> usize {
        self.tensor_infos
            .keys()
            .filter_map(|n| {
                n.strip_prefix("blk.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .map(|i| i.saturating_add(1))
            .max()
            .unwrap_or(0)
    }
}

fn unsigned(v: &Value) -> Option<u64> {
    match v {
        Value::U8(v) => Some(*v as u64),
        Value::U16(v) => Some(*v as u64),
        Value::U32(v) => Some(*v as u64),
        Value::U64(v) => Some(*v),
        Value::I8(v) => u64::try_from(*v).ok(),
        Value::I16(v) => u64::try_from(*v).ok(),
        Value::I32(v) => u64::try_from(*v).ok(),
        Value::I64(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}

/// ggml's names of the type ids bakeoff does not read, for the error message.
fn ggml_type_name(id: u32) -> &'static str {
    match id {
        4 | 5 => "q4_2/q4_3 (removed from ggml)",
        16 => "iq2_xxs",
        17 => "iq2_xs",
        18 => "iq3_xxs",
        19 => "iq1_s",
        21 => "iq3_s",
        22 => "iq2_s",
        24 => "i8",
        25 => "i16",
        26 => "i32",
        27 => "i64",
        28 => "f64",
        29 => "iq1_m",
        31..=33 => "q4_0_4_4/q4_0_4_8/q4_0_8_8 (removed from ggml)",
        34 => "tq1_0",
        35 => "tq2_0",
        36..=38 => "iq4_nl_4_4/4_8/8_8 (removed from ggml)",
        39 => "mxfp4",
        _ => "unknown to ggml",
    }
}

/// A reader that knows its position and the file's size, so that no length read from the file
/// is trusted beyond what the rest of the file could hold.
struct Reader<'a, R: Read> {
    inner: &'a mut R,
    pos: u64,
    len: u64,
}

impl<R: Read> Reader<'_, R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.inner
            .read_exact(&mut b)
            .map_err(|e| self.truncated(what, e))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn truncated(&self, what: &str, e: std::io::Error) -> String {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            format!(
                "truncated: the file ends at byte {} while reading {what}",
                self.len
            )
        } else {
            format!("reading {what} at byte {}: {e}", self.pos)
        }
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    /// `count` items of at least `min_bytes` each must fit in the rest of the file.
    fn fits(&self, count: u64, min_bytes: u64, what: &str) -> std::result::Result<(), String> {
        if count.saturating_mul(min_bytes) > self.remaining() {
            return Err(format!(
                "{what} {count} at byte {} is larger than the remaining {} bytes of the file could hold",
                self.pos,
                self.remaining()
            ));
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let n = self.u64(what)?;
        if n > self.remaining() {
            return Err(format!(
                "{what}: string length {n} at byte {} is larger than the remaining {} bytes of the file",
                self.pos - 8,
                self.remaining()
            ));
        }
        let mut v = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut v)
            .map_err(|e| self.truncated(what, e))?;
        self.pos += n;
        // Vocabularies hold byte-level pieces that need not be valid UTF-8 on their own; as
        // candle did, such bytes become U+FFFD rather than failing the whole file.
        Ok(match String::from_utf8(v) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// The smallest encoding of one value of type `ty` (for bounding array lengths).
    fn min_size(ty: u32) -> Option<u64> {
        Some(match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => 8,
            9 => 12,
            _ => return None,
        })
    }

    fn value(&mut self, ty: u32, depth: usize) -> std::result::Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(self.bytes::<1>("a u8 value")?[0]),
            1 => Value::I8(self.bytes::<1>("an i8 value")?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.bytes("a u16 value")?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes("an i16 value")?)),
            4 => Value::U32(self.u32("a u32 value")?),
            5 => Value::I32(i32::from_le_bytes(self.bytes("an i32 value")?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes("an f32 value")?)),
            7 => Value::Bool(self.bytes::<1>("a bool value")?[0] != 0),
            8 => Value::String(self.string("a string value")?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!("arrays nested more than {MAX_ARRAY_DEPTH} deep"));
                }
                let elem = self.u32("an array's element type")?;
                let n = self.u64("an array's length")?;
                let min = Self::min_size(elem)
                    .ok_or_else(|| format!("unknown array element type {elem}"))?;
                self.fits(n, min, "array length")?;
                let mut v = Vec::with_capacity(n.min(1 << 20) as usize);
                for _ in 0..n {
                    v.push(self.value(elem, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64("a u64 value")?),
            11 => Value::I64(i64::from_le_bytes(self.bytes("an i64 value")?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes("an f64 value")?)),
            other => return Err(format!("unknown value type {other}")),
        })
    }

    fn tensor_info(&mut self, name: &str) -> std::result::Result<TensorInfo, String> {
        let n_dims = self.u32("a tensor's dimension count")?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} are possible)"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64("a tensor dimension")?);
        }
        let ty = self.u32("a tensor type")?;
        let offset = self.u64("a tensor offset")?;
        if let Some(d) = dims.iter().position(|&d| d == 0) {
            return Err(format!(
                "tensor `{name}` has a zero-length dimension {d} (shape {dims:?}, fastest first)"
            ));
        }
        let dtype = WeightType::from_ggml_id(ty).ok_or_else(|| {
            format!(
                "tensor `{name}` has ggml type {ty} ({}), which bakeoff cannot read",
                ggml_type_name(ty)
            )
        })?;
        let count = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|c| usize::try_from(c).ok())
            .ok_or_else(|| format!("tensor `{name}`: the element count of {dims:?} overflows"))?;
        if !dims[0].is_multiple_of(dtype.block_size() as u64) {
            return Err(format!(
                "tensor `{name}`: rows of {} values do not fill whole {dtype} blocks of {}",
                dims[0],
                dtype.block_size()
            ));
        }
        if dtype.storage_bytes(count).is_none() {
            return Err(format!(
                "tensor `{name}`: the size of {count} {dtype} values overflows"
            ));
        }
        dims.reverse();
        Ok(TensorInfo {
            shape: dims.into_iter().map(|d| d as usize).collect(),
            dtype,
            offset,
        })
    }
}

pub struct GgufStore {
    path: PathBuf,
    map: Arc<Mmap>,
    pub content: GgufContent,
}

impl GgufStore {
    pub fn open(path: &Path) -> Result<Self> {
        let content = GgufContent::read_file(path)?;
        let map = map_file(path, false)?;
        // The file may have changed between the read and the map; the map is what is used.
        if let Some(end) = content
            .tensor_infos
            .values()
            .map(|i| content.tensor_data_offset + i.offset + i.bytes() as u64)
            .max()
            && end > map.len() as u64
        {
            return Err(Error::format(
                path,
                format!(
                    "truncated: tensors need {end} bytes but the file has {} bytes",
                    map.len()
                ),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            map,
            content,
        })
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The weight types present, each with its tensor count and bytes, most bytes first.
    pub fn weight_types(&self) -> Vec<(WeightType, usize, u64)> {
        let mut by: HashMap<WeightType, (usize, u64)> = HashMap::new();
        for i in self.content.tensor_infos.values() {
            let e = by.entry(i.dtype).or_default();
            e.0 += 1;
            e.1 += i.bytes() as u64;
        }
        let mut v: Vec<_> = by.into_iter().map(|(t, (n, b))| (t, n, b)).collect();
        v.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
        v
    }

    /// Refuses a `block_count` that the tensors cannot back, before any per-layer structure is
    /// sized by it.
    pub fn check_block_count(&self, n_layers: usize) -> Result<()> {
        let present = self.content.blocks_present();
        if n_layers > present {
            return Err(Error::format(
                &self.path,
                format!("block_count is {n_layers} but the file has tensors for {present} blocks"),
            ));
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
        let start = (self.content.tensor_data_offset + info.offset) as usize;
        Ok(RawTensor {
            name: hf_name.to_string(),
            dtype: info.dtype,
            shape: info.shape.clone(),
            data: Blob::Mapped {
                map: self.map.clone(),
                start,
                len: info.bytes(),
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
