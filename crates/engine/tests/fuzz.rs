//! A bounded, deterministic fuzzer for the three parsers that read untrusted input: the GGUF
//! reader (with the model config and the tokenizer built from what it read), the tokenizer
//! builder, and the chat-template renderer. It runs on stable Rust as an ordinary test, so CI
//! runs it on every change: `BAKEOFF_FUZZ_SECONDS` (default 10) bounds it, `BAKEOFF_FUZZ_SEED`
//! picks the mutation sequence (default fixed, so a failure reproduces).
//!
//! Seeds are the files in `tests/fuzz-corpus/` (small valid GGUF models with a SentencePiece and
//! a byte-level BPE tokenizer and a chat template; `gguf/` and `template/`) plus the engine's
//! built-in chat templates. Each mutant must give `Ok` or an `Err` — never a panic — within
//! [`SLOW`]; a failing input is written to `target/fuzz-failures/` and named in the message.
//! An input that once failed belongs in the corpus, so it is tried on every run.
#![allow(clippy::unwrap_used)]

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bakeoff_engine::loader::gguf::GgufContent;
use bakeoff_engine::models::{DecoderConfig, GgufMeta};
use bakeoff_engine::template::{ChatTemplate, Message};
use bakeoff_engine::tokenizer::Tokenizer;

/// Longer than any parse of a seed-sized input takes in a debug build, by far.
const SLOW: Duration = Duration::from_secs(5);

fn corpus(kind: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(kind);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    i64::MAX as u64,
    u64::MAX,
];

/// One to four mutations: bit flips, interesting integers written over 1, 2, 4 or 8 bytes
/// (counts, lengths, types, offsets are little-endian integers), truncation, duplicated or
/// deleted spans, random bytes inserted.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            b.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(b.len());
        match rng.below(7) {
            0 => b[at] ^= 1 << rng.below(8),
            1 | 2 => {
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let w = [1, 2, 4, 8][rng.below(4)];
                let bytes = v.to_le_bytes();
                for (i, x) in bytes.iter().take(w).enumerate() {
                    if let Some(d) = b.get_mut(at + i) {
                        *d = *x;
                    }
                }
            }
            3 => b.truncate(at),
            4 => {
                let len = rng.below(64).min(b.len() - at);
                let span = b[at..at + len].to_vec();
                let to = rng.below(b.len());
                b.splice(to..to, span);
            }
            5 => {
                let len = rng.below(64).min(b.len() - at);
                b.drain(at..at + len);
            }
            _ => {
                let n = 1 + rng.below(8);
                let ins: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(at..at, ins);
            }
        }
    }
    b
}

/// Everything downstream of the GGUF reader that a loaded file feeds, short of the weights.
fn gguf_target(bytes: &[u8]) {
    let Ok(content) = GgufContent::read(&mut Cursor::new(bytes), bytes.len() as u64) else {
        return;
    };
    let _ = DecoderConfig::from_gguf(&GgufMeta {
        map: &content.metadata,
    });
    if let Ok(tok) = Tokenizer::from_gguf_metadata(&content.metadata, Path::new("fuzz.gguf")) {
        for text in [
            "Hello world",
            "",
            " \u{2581}\u{fffd}<s>é中\n\t",
            "<|im_start|>x",
        ] {
            if let Ok(ids) = tok.encode(text, true) {
                let _ = tok.decode(&ids, false);
            }
        }
        let all: Vec<u32> = (0..64).chain([u32::MAX, 1 << 20]).collect();
        let _ = tok.decode(&all, false);
    }
    if let Some(candle_core::quantized::gguf_file::Value::String(t)) =
        content.metadata.get("tokenizer.chat_template")
    {
        template_target(t);
    }
}

fn template_target(source: &str) {
    let Ok(t) = ChatTemplate::new(source) else {
        return;
    };
    let messages = [
        Message::system("be brief"),
        Message::user("hi {{ 1 }} {% raw %}"),
        Message::assistant("hello"),
        Message::user("again"),
    ];
    let _ = t.render(&messages, true, Some("<s>"), Some("</s>"));
    let _ = t.render(&messages[1..2], false, None, None);
}

/// Runs `f` on `input`, failing the test on a panic or a slow input, with the input saved.
fn check(what: &str, input: &[u8], f: impl FnOnce()) {
    let t = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(f));
    let slow = t.elapsed() > SLOW;
    if r.is_err() || slow {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!(
            "{what}-{:016x}",
            input
                .iter()
                .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b))
                    .wrapping_mul(0x100_0000_01b3))
        ));
        std::fs::write(&path, input).unwrap();
        panic!(
            "{what}: {} on the input saved at {} (add it to tests/fuzz-corpus/)",
            if slow {
                format!("took {:?}", t.elapsed())
            } else {
                "panicked".into()
            },
            path.display()
        );
    }
}

fn budget() -> Duration {
    let s: f64 = std::env::var("BAKEOFF_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10.0);
    Duration::from_secs_f64(s)
}

fn seed() -> u64 {
    std::env::var("BAKEOFF_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x05ee_dba4_e0ff)
        | 1
}

/// The unmutated seeds are valid: config, tokenizer and template all build, so mutants start
/// from inputs that reach every stage.
#[test]
fn the_seeds_reach_every_stage() {
    for (name, bytes) in corpus("gguf") {
        let c = GgufContent::read(&mut Cursor::new(&bytes), bytes.len() as u64)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        DecoderConfig::from_gguf(&GgufMeta { map: &c.metadata })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let tok = Tokenizer::from_gguf_metadata(&c.metadata, Path::new(&name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let ids = tok.encode("Hello world", false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), "Hello world", "{name}");
    }
}

#[test]
fn fuzz_gguf_reader_tokenizer_and_templates() {
    let mut seeds = corpus("gguf");
    let templates: Vec<(String, Vec<u8>)> = corpus("template")
        .into_iter()
        .chain(
            std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/templates"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap())),
        )
        .collect();
    assert!(!seeds.is_empty() && !templates.is_empty());
    // Every corpus file as it is, first: earlier failures stay fixed.
    for (name, b) in seeds.iter().chain(&templates) {
        check("corpus", b, || {
            if name.contains("/gguf/") {
                gguf_target(b);
            } else {
                template_target(&String::from_utf8_lossy(b));
            }
        });
    }
    let mut rng = Rng(seed());
    let (end, mut runs, mut accepted) = (Instant::now() + budget(), 0usize, 0usize);
    while Instant::now() < end {
        if rng.below(4) == 0 {
            let (_, src) = &templates[rng.below(templates.len())];
            let m = mutate(&mut rng, src);
            let text = String::from_utf8_lossy(&m).into_owned();
            check("template", &m, || template_target(&text));
        } else {
            let i = rng.below(seeds.len());
            let m = mutate(&mut rng, &seeds[i].1);
            check("gguf", &m, || gguf_target(&m));
            if GgufContent::read(&mut Cursor::new(&m), m.len() as u64).is_ok() {
                accepted += 1;
                // Mutants the reader accepts go deeper when mutated again.
                if seeds.len() < 64 {
                    seeds.push(("mutant".into(), m));
                }
            }
        }
        runs += 1;
    }
    eprintln!(
        "fuzz: {runs} inputs in {:?} (seed {:#x}), {accepted} GGUF mutants read as valid",
        budget(),
        seed()
    );
    assert!(runs > 0);
}
