//! Every GGUF weight type bakeoff reads dequantizes bit for bit as gguf-py's
//! `gguf.quants.dequantize` does (scripts/reference/dequant_reference.py), on random blocks with
//! finite f16 scales. Needs a Python with `gguf` and `numpy` ($BAKEOFF_PYTHON, .venv-ci or
//! .venv-ref); skipped with a note when there is none, unless `BAKEOFF_E2E_REQUIRED=1`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use bakeoff_engine::WeightType;
use bakeoff_engine::kernels::dequant::dequantize_into;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> Option<PathBuf> {
    let root = repo_root();
    let candidates: Vec<PathBuf> = std::env::var_os("BAKEOFF_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            root.join(".venv-ci/bin/python"),
            root.join(".venv-ref/bin/python"),
        ])
        .collect();
    let found = candidates.iter().find(|p| {
        Command::new(p)
            .args(["-c", "import gguf.quants, numpy"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        let msg = format!("no Python with gguf and numpy among {candidates:?}");
        if std::env::var("BAKEOFF_E2E_REQUIRED").is_ok_and(|v| v == "1") {
            panic!("the gguf-py reference is required (BAKEOFF_E2E_REQUIRED=1): {msg}");
        }
        eprintln!("SKIPPED dequantization against gguf-py: {msg}");
    }
    found.cloned()
}

/// xorshift64*: reproducible bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A finite f16 (any sign, subnormals included), as its bits.
    fn f16(&mut self) -> u16 {
        let b = self.next() as u16;
        if (b >> 10) & 0x1f == 0x1f {
            b & !0x4000
        } else {
            b
        }
    }
}

/// Byte offsets of the f16 scales in one block of `t`.
fn scale_offsets(t: WeightType) -> &'static [usize] {
    match t {
        WeightType::Q4_0 | WeightType::Q5_0 | WeightType::Q8_0 | WeightType::IQ4_NL => &[0],
        WeightType::IQ4_XS => &[0],
        WeightType::Q4_1 | WeightType::Q5_1 | WeightType::Q4K | WeightType::Q5K => &[0, 2],
        WeightType::Q2K => &[80, 82],
        WeightType::Q3K => &[108],
        WeightType::Q6K => &[208],
        _ => &[],
    }
}

/// `blocks` random blocks of `t` whose floats are all finite.
fn random_blocks(t: WeightType, blocks: usize, rng: &mut Rng) -> Vec<u8> {
    let n = blocks * t.type_size();
    let mut b: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
    match t {
        WeightType::F32 => {
            for c in b.chunks_exact_mut(4) {
                // Random sign and mantissa, exponent kept below 255.
                let v = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                let v = if (v >> 23) & 0xff == 0xff {
                    v & !(1 << 30)
                } else {
                    v
                };
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        WeightType::F16 => {
            for c in b.chunks_exact_mut(2) {
                c.copy_from_slice(&rng.f16().to_le_bytes());
            }
        }
        WeightType::BF16 => {
            for c in b.chunks_exact_mut(2) {
                let v = u16::from_le_bytes([c[0], c[1]]);
                let v = if (v >> 7) & 0xff == 0xff {
                    v & !(1 << 14)
                } else {
                    v
                };
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        _ => {
            for blk in b.chunks_exact_mut(t.type_size()) {
                for &o in scale_offsets(t) {
                    blk[o..o + 2].copy_from_slice(&rng.f16().to_le_bytes());
                }
            }
        }
    }
    b
}

/// gguf-py's name of the type.
fn gguf_py_name(t: WeightType) -> String {
    t.name().to_ascii_uppercase()
}

#[test]
fn every_type_dequantizes_bit_for_bit_as_gguf_py() {
    let Some(py) = python() else { return };
    let script = repo_root().join("scripts/reference/dequant_reference.py");
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let types = [
        WeightType::F32,
        WeightType::F16,
        WeightType::BF16,
        WeightType::Q4_0,
        WeightType::Q4_1,
        WeightType::Q5_0,
        WeightType::Q5_1,
        WeightType::Q8_0,
        WeightType::Q2K,
        WeightType::Q3K,
        WeightType::Q4K,
        WeightType::Q5K,
        WeightType::Q6K,
        WeightType::IQ4_NL,
        WeightType::IQ4_XS,
    ];
    for t in types {
        let blocks = 4096 / t.block_size().min(32) + 64;
        let bytes = random_blocks(t, blocks, &mut rng);
        let (src, dst) = (dir.path().join("in.bin"), dir.path().join("out.bin"));
        std::fs::write(&src, &bytes).unwrap();
        let out = Command::new(&py)
            .arg(&script)
            .arg(gguf_py_name(t))
            .args([&src, &dst])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{t}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want: Vec<u32> = std::fs::read(&dst)
            .unwrap()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut got = vec![0f32; blocks * t.block_size()];
        dequantize_into(t, &bytes, &mut got).unwrap();
        assert_eq!(want.len(), got.len(), "{t}");
        let diffs: Vec<usize> = (0..got.len())
            .filter(|&i| got[i].to_bits() != want[i])
            .collect();
        assert!(
            diffs.is_empty(),
            "{t}: {} of {} values differ from gguf-py, first at {}: {} vs {}",
            diffs.len(),
            got.len(),
            diffs[0],
            got[diffs[0]],
            f32::from_bits(want[diffs[0]])
        );
        eprintln!("{t}: {} values bit-identical to gguf-py", got.len());
    }
}
