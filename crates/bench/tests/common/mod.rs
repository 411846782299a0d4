//! Tiny synthetic models for the tests, written once per test binary into a temp folder with the
//! same code `bakeoff synth` runs.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use bakeoff_synth::{SynthOptions, synth};

/// A tiny random-weight GGUF model of `preset` (`tiny-llama` or `tiny-qwen2`).
pub fn tiny_model(preset: &str) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let out = dir.path().join(format!("{preset}.gguf"));
    // Tests in one binary run in parallel: a lock makes each model be written once.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap();
    if !out.exists() {
        let opts = SynthOptions {
            preset: preset.parse().unwrap(),
            out: out.clone(),
            format: "gguf".parse().unwrap(),
            quant: "f32".parse().unwrap(),
            vocab: None,
            seed: 0,
        };
        synth(&opts, false).unwrap();
    }
    out
}
