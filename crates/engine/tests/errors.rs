#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Bad input gets an error that names the file, tensor or value at fault: never a panic.

use std::path::{Path, PathBuf};

use bakeoff_engine::loader::{LoadOptions, load, load_model_only};
use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::{Device, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A writable copy of a fixture folder.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}

fn err_of(path: &Path) -> String {
    match load_model_only(path, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

#[test]
fn missing_config_names_the_file() {
    let d = copy_fixture("tiny-llama");
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    assert!(err_of(d.path()).contains("missing config.json"));
}

#[test]
fn missing_tokenizer_names_the_file() {
    // The parity fixtures carry no tokenizer: the full loader must say so.
    let e = load(
        &fixture("tiny-llama").to_string_lossy(),
        None,
        &LoadOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("missing tokenizer.json"), "{e}");
}

#[test]
fn truncated_safetensors_names_the_file() {
    let d = copy_fixture("tiny-llama");
    let p = d.path().join("model.safetensors");
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let e = err_of(d.path());
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
}

#[test]
fn missing_shard_names_the_shard() {
    let d = copy_fixture("tiny-llama-sharded");
    let shard = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .find(|n| n.starts_with("model-0000"))
        .unwrap();
    std::fs::remove_file(d.path().join(&shard)).unwrap();
    let e = err_of(d.path());
    assert!(e.contains(&shard) && e.contains("missing"), "{e}");
}

#[test]
fn wrong_tensor_shape_names_the_tensor() {
    let d = copy_fixture("tiny-llama");
    edit_config(d.path(), |v| v["intermediate_size"] = 96.into());
    let e = err_of(d.path());
    assert!(
        e.contains("mlp.gate_proj.weight") && e.contains("shape"),
        "{e}"
    );
}

#[test]
fn unsupported_architecture_is_named() {
    let d = copy_fixture("tiny-llama");
    edit_config(d.path(), |v| v["model_type"] = "mamba".into());
    let e = err_of(d.path());
    assert!(e.contains("unsupported architecture `mamba`"), "{e}");
}

#[test]
fn corrupt_config_json_names_the_file() {
    let d = copy_fixture("tiny-qwen2");
    std::fs::write(d.path().join("config.json"), "{ not json").unwrap();
    let e = err_of(d.path());
    assert!(
        e.contains("config.json") && e.contains("invalid JSON"),
        "{e}"
    );
}

fn tiny_gguf(path: &Path, arch: &str) {
    let t = QTensor::quantize(
        &Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        candle_core::quantized::GgmlDType::F32,
    )
    .unwrap();
    let arch_v = Value::String(arch.into());
    let md = vec![("general.architecture", &arch_v)];
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md, &[("token_embd.weight", &t)]).unwrap();
}

#[test]
fn gguf_with_bad_magic_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.gguf");
    std::fs::write(&p, b"NOPE this is not a gguf file at all").unwrap();
    let e = err_of(&p);
    assert!(
        e.contains("bad.gguf") && e.contains("not a valid GGUF"),
        "{e}"
    );
}

#[test]
fn gguf_with_truncated_tensor_data_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("cut.gguf");
    tiny_gguf(&p, "llama");
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let e = err_of(&p);
    assert!(
        e.contains("cut.gguf") && e.contains("truncated") && e.contains("token_embd.weight"),
        "{e}"
    );
}

#[test]
fn gguf_of_unknown_architecture_is_named() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("other.gguf");
    tiny_gguf(&p, "falcon");
    let e = err_of(&p);
    assert!(e.contains("unsupported architecture `falcon`"), "{e}");
}

#[test]
fn missing_path_is_neither_file_nor_hub_id() {
    let e = load("./no/such/model", None, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("neither an existing folder"), "{e}");
}

#[test]
fn offline_hub_id_explains_how_to_provide_the_model() {
    let cache = tempfile::tempdir().unwrap();
    // SAFETY: no other thread of this test binary reads these variables.
    unsafe {
        std::env::set_var("HF_HUB_OFFLINE", "1");
        std::env::set_var("HF_HUB_CACHE", cache.path());
    }
    let e = load(
        "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
        None,
        &LoadOptions::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("not in the Hugging Face cache") && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );
}
