#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `bakeoff pull`, `bakeoff list` and catalog names in `--model`, offline: a test catalog whose
//! mirror is served by a stand-in for `python -m pip download` that copies prepared wheels.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

fn bakeoff() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bakeoff"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

struct Fixture {
    dir: tempfile::TempDir,
    model: Vec<u8>,
}

impl Fixture {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn models(&self) -> PathBuf {
        self.path("models")
    }

    /// `bakeoff` with the test catalog, models folder and pip stand-in, and no hub access.
    fn cmd(&self) -> Command {
        let mut c = bakeoff();
        c.env("BAKEOFF_CATALOG", self.path("catalog.toml"))
            .env("BAKEOFF_REAL_MODELS", self.models())
            .env("BAKEOFF_PYTHON", self.path("fakepy"))
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HUB_CACHE", self.path("hf"))
            .env("BAKEOFF_WEIGHT_CACHE", "off");
        c
    }

    fn pip_calls(&self) -> usize {
        std::fs::read_to_string(self.path("pip.log"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.models())
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn wheel(path: &Path, member: &str, data: &[u8]) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    z.start_file("pkg-1.0.dist-info/METADATA", opts).unwrap();
    z.write_all(b"Metadata-Version: 2.1\nName: pkg\n").unwrap();
    z.start_file(member, opts).unwrap();
    z.write_all(data).unwrap();
    z.finish().unwrap();
}

/// A tiny synthetic GGUF split over two wheels, a catalog entry `tiny` for it (with the given
/// joined hash, or the right one), and a pip stand-in that logs each call.
fn fixture(joined_sha: Option<&str>, corrupt_wheel: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("src.gguf");
    let vocab = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/vocab/ggml-vocab-llama-spm.gguf");
    let out = bakeoff()
        .args([
            "synth",
            "--preset",
            "tiny-llama",
            "--format",
            "gguf",
            "--quant",
            "q8_0",
            "--out",
        ])
        .arg(&gguf)
        .arg("--vocab")
        .arg(&vocab)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let model = std::fs::read(&gguf).unwrap();
    let half = model.len() / 2;
    let wheels = dir.path().join("wheels");
    std::fs::create_dir_all(&wheels).unwrap();
    wheel(
        &wheels.join("tiny_part1-1.0-py3-none-any.whl"),
        "tiny_part1/model.part",
        &model[..half],
    );
    wheel(
        &wheels.join("tiny_part2-1.0-py3-none-any.whl"),
        "tiny_part2/model.part",
        &model[half..],
    );
    let mut hashes = Vec::new();
    for w in [
        "tiny_part1-1.0-py3-none-any.whl",
        "tiny_part2-1.0-py3-none-any.whl",
    ] {
        hashes.push(sha(&std::fs::read(wheels.join(w)).unwrap()));
    }
    if corrupt_wheel {
        hashes[1] = "0".repeat(64);
    }
    let joined = joined_sha
        .map(str::to_string)
        .unwrap_or_else(|| sha(&model));
    let catalog = format!(
        r#"[[model]]
name = "tiny"
title = "Tiny-Llama-Test"
base = "test/tiny"
parameters = "1M"
architecture = "llama"
quantization = "Q8_0"
file = "tiny.gguf"
size = {size}
sha256 = "{joined}"
license = "MIT"
mirror = [
    {{ package = "tiny-part1==1.0", wheel = "tiny_part1-1.0-py3-none-any.whl", sha256 = "{h1}" }},
    {{ package = "tiny-part2==1.0", wheel = "tiny_part2-1.0-py3-none-any.whl", sha256 = "{h2}" }},
]
"#,
        size = model.len(),
        h1 = hashes[0],
        h2 = hashes[1],
    );
    std::fs::write(dir.path().join("catalog.toml"), catalog).unwrap();
    // `python -m pip download --no-deps ... -d DEST PKG...`: copy the prepared wheels to DEST.
    let fakepy = dir.path().join("fakepy");
    std::fs::write(
        &fakepy,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{log}'\nwhile [ $# -gt 0 ]; do\n  if [ \"$1\" = -d ]; then \
             dest=\"$2\"; fi\n  shift\ndone\nmkdir -p \"$dest\" && cp '{wheels}'/*.whl \"$dest\"/\n",
            log = dir.path().join("pip.log").display(),
            wheels = wheels.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fakepy, std::fs::Permissions::from_mode(0o755)).unwrap();
    Fixture { dir, model }
}

fn output(c: &mut Command) -> Output {
    c.output().expect("cannot run bakeoff")
}

fn ok(c: &mut Command) -> (String, String) {
    let o = output(c);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "failed: {err}");
    (String::from_utf8(o.stdout).unwrap(), err)
}

fn fails(c: &mut Command) -> String {
    let o = output(c);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "should have failed");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn pull_joins_and_verifies_the_mirror_then_uses_the_cache_without_any_network() {
    let f = fixture(None, false);
    let (out, err) = ok(f.cmd().args(["pull", "tiny", "--quiet"]));
    let path = f.models().join("tiny.gguf");
    assert_eq!(out.trim(), format!("tiny\t{}", path.display()));
    assert!(
        err.contains("package-index mirror") && err.contains("SHA-256 verified"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), f.model);
    assert_eq!(f.leftovers(), vec!["tiny.gguf".to_string()]);
    assert_eq!(f.pip_calls(), 1);

    // Cached: no pip, and --model accepts the name.
    let (out, _) = ok(f.cmd().args(["pull", "tiny", "--quiet"]));
    assert!(out.contains("tiny.gguf"));
    let (text, _) = ok(f.cmd().args([
        "generate",
        "--model",
        "tiny",
        "--prompt",
        "Hello",
        "--max-tokens",
        "3",
        "--ignore-eos",
    ]));
    assert!(!text.is_empty());
    let (list, _) = ok(f.cmd().args(["list", "--json"]));
    let tiny: serde_json::Value = list
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["name"] == "tiny")
        .unwrap();
    assert_eq!(tiny["path"], path.display().to_string());
    assert_eq!(
        f.pip_calls(),
        1,
        "a cached model must not touch the network"
    );

    // --verify hashes the cached file: a flipped byte of the same size is caught.
    let mut bytes = f.model.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = fails(f.cmd().args(["pull", "tiny", "--verify", "--quiet"]));
    assert!(err.contains("SHA-256") && err.contains("tiny"), "{err}");
}

#[test]
fn a_wheel_or_joined_file_with_the_wrong_hash_is_an_error_and_nothing_is_kept() {
    let f = fixture(None, true);
    let err = fails(f.cmd().args(["pull", "tiny", "--quiet"]));
    assert!(
        err.contains("tiny_part2-1.0-py3-none-any.whl") && err.contains("SHA-256"),
        "{err}"
    );
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());

    let f = fixture(Some(&"ab".repeat(32)), false);
    let err = fails(
        f.cmd()
            .args(["generate", "--model", "tiny", "--prompt", "x"]),
    );
    assert!(err.contains("joined file's SHA-256"), "{err}");
    assert!(f.leftovers().is_empty(), "{:?}", f.leftovers());
}

#[test]
fn unknown_names_and_a_broken_catalog_are_clear_errors() {
    let f = fixture(None, false);
    let err = fails(f.cmd().args(["pull", "nope"]));
    assert!(
        err.contains("not in the catalog: nope") && err.contains("smollm2-135m"),
        "{err}"
    );
    let err = fails(
        f.cmd()
            .args(["generate", "--model", "nope", "--prompt", "x"]),
    );
    assert!(
        err.contains("catalog name") && err.contains("tiny"),
        "{err}"
    );
    std::fs::write(f.path("catalog.toml"), "[[model]]\nname = 3\n").unwrap();
    let err = fails(f.cmd().args(["list"]));
    assert!(err.contains("catalog.toml"), "{err}");
}

/// The built-in entries agree with `../shared/models/models.tsv`, the list the real-model
/// wheels were published from.
#[test]
fn the_builtin_catalog_matches_the_shared_model_list() {
    let tsv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models/models.tsv");
    let Ok(text) = std::fs::read_to_string(&tsv) else {
        assert!(
            std::env::var_os("BAKEOFF_REAL_MODELS_REQUIRED").is_none(),
            "{} is missing",
            tsv.display()
        );
        return;
    };
    let (list, _) = ok(bakeoff().args(["list", "--json"]));
    let listed: Vec<serde_json::Value> = list
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for line in text.lines().skip(1).filter(|l| !l.is_empty()) {
        let cols: Vec<&str> = line.split('\t').collect();
        let m = listed
            .iter()
            .find(|v| v["name"] == cols[0])
            .unwrap_or_else(|| panic!("{} is not in the catalog", cols[0]));
        assert_eq!(
            m["size"].as_u64().unwrap().to_string(),
            cols[2],
            "{}",
            cols[0]
        );
        assert_eq!(m["sha256"], cols[3], "{}", cols[0]);
        let wheels = cols[4].split(',').count();
        assert!(
            m["sources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == &serde_json::json!(format!("pypi:{wheels} wheels"))),
            "{m}"
        );
    }
}
