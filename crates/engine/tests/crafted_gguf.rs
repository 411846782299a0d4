//! Crafted and damaged GGUF files: each is a clear error naming the problem, never a panic, a
//! division by zero or an allocation sized by an untrusted count.
#![allow(clippy::unwrap_used)]

use std::io::Cursor;
use std::path::Path;

use bakeoff_engine::loader::gguf::GgufContent;
use bakeoff_engine::loader::{LoadOptions, load, load_model_only};

/// A GGUF file under construction: metadata and tensor entries, then the data section.
#[derive(Clone)]
struct Gguf {
    version: u32,
    kv: Vec<(String, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, u64)>,
    data: Vec<u8>,
    /// Overrides of the two counts, for lying headers.
    counts: Option<(u64, u64)>,
}

fn s(v: &str) -> Vec<u8> {
    let mut b = (v.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(v.as_bytes());
    b
}

fn u32v(v: u32) -> Vec<u8> {
    let mut b = 4u32.to_le_bytes().to_vec();
    b.extend_from_slice(&v.to_le_bytes());
    b
}

fn f32v(v: f32) -> Vec<u8> {
    let mut b = 6u32.to_le_bytes().to_vec();
    b.extend_from_slice(&v.to_le_bytes());
    b
}

fn strv(v: &str) -> Vec<u8> {
    let mut b = 8u32.to_le_bytes().to_vec();
    b.extend(s(v));
    b
}

impl Gguf {
    fn new() -> Self {
        Self {
            version: 3,
            kv: vec![("general.architecture".into(), strv("llama"))],
            tensors: Vec::new(),
            data: Vec::new(),
            counts: None,
        }
    }

    fn kv(mut self, key: &str, typed_value: Vec<u8>) -> Self {
        self.kv.push((key.into(), typed_value));
        self
    }

    /// An F32 tensor of `dims` (fastest first) appended to the data section.
    fn f32_tensor(mut self, name: &str, dims: &[u64]) -> Self {
        let n: u64 = dims.iter().product();
        let off = self.data.len() as u64;
        self.tensors.push((name.into(), dims.to_vec(), 0, off));
        self.data.extend(std::iter::repeat_n(0u8, n as usize * 4));
        let pad = self.data.len().next_multiple_of(32) - self.data.len();
        self.data.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    fn raw_tensor(mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        self.tensors.push((name.into(), dims.to_vec(), ty, offset));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(self.version.to_le_bytes());
        let (tc, kc) = self
            .counts
            .unwrap_or((self.tensors.len() as u64, self.kv.len() as u64));
        b.extend(tc.to_le_bytes());
        b.extend(kc.to_le_bytes());
        for (k, v) in &self.kv {
            b.extend(s(k));
            b.extend(v);
        }
        for (name, dims, ty, off) in &self.tensors {
            b.extend(s(name));
            b.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(off.to_le_bytes());
        }
        let pad = b.len().next_multiple_of(32) - b.len();
        b.extend(std::iter::repeat_n(0u8, pad));
        b.extend(&self.data);
        b
    }
}

fn read(bytes: &[u8]) -> Result<GgufContent, String> {
    GgufContent::read(&mut Cursor::new(bytes), bytes.len() as u64)
}

#[track_caller]
fn refused(g: &Gguf, needles: &[&str]) -> String {
    let e = read(&g.bytes()).expect_err("the crafted file was accepted");
    for n in needles {
        assert!(e.contains(n), "`{n}` not in: {e}");
    }
    e
}

fn valid() -> Gguf {
    Gguf::new()
        .kv("general.name", strv("crafted"))
        .f32_tensor("token_embd.weight", &[8, 4])
        .f32_tensor("output_norm.weight", &[8])
}

#[test]
fn the_well_formed_file_reads() {
    let c = read(&valid().bytes()).unwrap();
    assert_eq!(c.tensor_infos["token_embd.weight"].shape, vec![4, 8]);
    assert_eq!(
        c.tensor_order,
        vec!["token_embd.weight", "output_norm.weight"]
    );
    assert_eq!(c.alignment, 32);
}

#[test]
fn bad_magic_and_versions() {
    let mut b = valid().bytes();
    b[..4].copy_from_slice(b"GGML");
    assert!(read(&b).unwrap_err().contains("not a GGUF file"));
    for v in [0, 1, 4, u32::MAX] {
        let mut g = valid();
        g.version = v;
        refused(&g, &[&format!("GGUF version {v}"), "not supported"]);
    }
}

#[test]
fn truncation_anywhere_is_an_error() {
    let b = valid().bytes();
    for len in 0..b.len() {
        let e = read(&b[..len]).err();
        let e = e.unwrap_or_else(|| panic!("{len} of {} bytes accepted", b.len()));
        assert!(
            e.contains("truncated") || e.contains("not a GGUF") || e.contains("larger than"),
            "{len}: {e}"
        );
    }
}

#[test]
fn alignment_zero_or_not_a_power_of_two() {
    refused(
        &valid().kv("general.alignment", u32v(0)),
        &["general.alignment is 0", "power of two"],
    );
    refused(
        &valid().kv("general.alignment", u32v(48)),
        &["general.alignment is 48"],
    );
    refused(
        &valid().kv("general.alignment", strv("32")),
        &["general.alignment", "unsigned integer"],
    );
}

#[test]
fn counts_larger_than_the_file() {
    let mut g = valid();
    g.counts = Some((u64::MAX, 2));
    refused(&g, &["tensor count", "larger than"]);
    let mut g = valid();
    g.counts = Some((2, 1 << 40));
    refused(&g, &["metadata count", "larger than"]);
}

#[test]
fn string_and_array_lengths_larger_than_the_file() {
    // A key claiming 2^60 bytes.
    let mut b = valid().bytes();
    b[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(read(&b).unwrap_err().contains("string length"));
    let mut arr = 9u32.to_le_bytes().to_vec();
    arr.extend(0u32.to_le_bytes());
    arr.extend((1u64 << 50).to_le_bytes());
    refused(
        &valid().kv("tokenizer.ggml.tokens", arr),
        &["tokenizer.ggml.tokens", "array length", "larger than"],
    );
    // Arrays of arrays, each claiming many elements, nested past any sane depth.
    let mut nested = 9u32.to_le_bytes().to_vec();
    for _ in 0..64 {
        nested.extend(9u32.to_le_bytes());
        nested.extend(1u64.to_le_bytes());
    }
    refused(&valid().kv("x", nested), &["nested"]);
    let mut unknown = 9u32.to_le_bytes().to_vec();
    unknown.extend(77u32.to_le_bytes());
    unknown.extend(1u64.to_le_bytes());
    refused(
        &valid().kv("x", unknown),
        &["unknown array element type 77"],
    );
    let mut bad = 99u32.to_le_bytes().to_vec();
    bad.extend([0u8; 8]);
    refused(
        &valid().kv("y", bad),
        &["metadata `y`", "unknown value type 99"],
    );
}

#[test]
fn duplicate_keys_and_tensor_names() {
    refused(
        &valid().kv("general.name", strv("again")),
        &["general.name", "twice"],
    );
    refused(
        &valid().f32_tensor("output_norm.weight", &[8]),
        &["output_norm.weight", "twice"],
    );
}

#[test]
fn dimension_counts_and_zero_dimensions() {
    refused(
        &valid().raw_tensor("blk.0.attn_q.weight", &[], 0, 0),
        &["blk.0.attn_q.weight", "0 dimensions"],
    );
    refused(
        &valid().raw_tensor("t5", &[1, 1, 1, 1, 1], 0, 0),
        &["`t5`", "5 dimensions"],
    );
    refused(
        &Gguf::new().raw_tensor("token_embd.weight", &[0, 4], 0, 0),
        &["token_embd.weight", "zero-length dimension"],
    );
}

#[test]
fn element_counts_sizes_and_offsets_that_overflow() {
    refused(
        &valid().raw_tensor("big", &[1 << 40, 1 << 40], 0, 0),
        &["`big`", "overflows"],
    );
    // Fits in usize as a count, not as bytes.
    refused(
        &valid().raw_tensor("wide", &[1 << 62], 0, 0),
        &["`wide`", "overflows"],
    );
    refused(
        &valid().raw_tensor("far", &[8], 0, u64::MAX - 31),
        &["`far`", "truncated"],
    );
}

#[test]
fn tensors_outside_the_file_or_overlapping() {
    refused(
        &valid().raw_tensor("outside", &[8], 0, 4096),
        &["truncated", "`outside`"],
    );
    let e = refused(
        &valid().raw_tensor("overlap", &[8], 0, 0),
        &["overlap", "token_embd.weight"],
    );
    assert!(e.contains("`overlap`"), "{e}");
    refused(
        &valid().raw_tensor("odd", &[8], 0, 4),
        &["`odd`", "offset 4", "alignment 32"],
    );
}

#[test]
fn unknown_and_unsupported_types_name_the_tensor_and_the_type() {
    refused(
        &valid().raw_tensor("blk.0.ffn_down.weight", &[256], 16, 128),
        &["blk.0.ffn_down.weight", "ggml type 16", "iq2_xxs"],
    );
    refused(
        &valid().raw_tensor("blk.0.ffn_up.weight", &[256], 1234, 128),
        &["blk.0.ffn_up.weight", "ggml type 1234"],
    );
    // A Q4_0 row of 33 values cannot be whole blocks.
    refused(
        &valid().raw_tensor("ragged", &[33], 2, 128),
        &["`ragged`", "q4_0 blocks"],
    );
}

fn llama_metadata(g: Gguf, block_count: u32) -> Gguf {
    g.kv("llama.embedding_length", u32v(8))
        .kv("llama.attention.head_count", u32v(2))
        .kv("llama.feed_forward_length", u32v(16))
        .kv("llama.block_count", u32v(block_count))
        .kv("llama.vocab_size", u32v(4))
        .kv("llama.attention.layer_norm_rms_epsilon", f32v(1e-5))
}

fn write(dir: &Path, name: &str, g: &Gguf) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, g.bytes()).unwrap();
    p
}

#[test]
fn a_block_count_the_tensors_cannot_back_is_refused_before_allocating() {
    let d = tempfile::tempdir().unwrap();
    let g = llama_metadata(valid(), 4_000_000_000).f32_tensor("blk.0.attn_norm.weight", &[8]);
    let p = write(d.path(), "layers.gguf", &g);
    let e = load_model_only(&p, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("layers.gguf")
            && e.contains("block_count is 4000000000")
            && e.contains("1 blocks"),
        "{e}"
    );
    let e = load(p.to_str().unwrap(), None, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("block_count is 4000000000"), "{e}");
}

#[test]
fn the_loader_reports_crafted_files_with_their_path() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "align.gguf",
        &llama_metadata(valid(), 1).kv("general.alignment", u32v(0)),
    );
    let e = load(p.to_str().unwrap(), None, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("align.gguf") && e.contains("general.alignment is 0"),
        "{e}"
    );
}

#[test]
fn shard_names_in_a_local_index_must_stay_in_the_folder() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("config.json"),
        r#"{"model_type":"llama","hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,
            "num_attention_heads":2,"vocab_size":4,"rms_norm_eps":1e-5}"#,
    )
    .unwrap();
    std::fs::write(
        d.path().join("model.safetensors.index.json"),
        r#"{"weight_map":{"model.embed_tokens.weight":"../outside.safetensors"}}"#,
    )
    .unwrap();
    let e = load_model_only(d.path(), &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.safetensors.index.json")
            && e.contains("../outside.safetensors")
            && e.contains("path separator"),
        "{e}"
    );
}
