//! `bakeoff quantize`: tiny synthetic models (and a 256-wide one, so that real K-quant blocks
//! are used) quantized from a Hugging Face f32 folder load on their own, follow the f32 model's
//! greedy tokens for a measured number of steps, and hold every weight within its format's
//! error; GGUF input, tokenizer and template carry-over, and refusals.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bakeoff_engine::WeightType;
use bakeoff_engine::loader::{LoadOptions, load, load_model_only, open_weights};
use bakeoff_engine::model::CausalLm;
use bakeoff_engine::sampling::argmax;
use bakeoff_quantize::{QuantType, QuantizeOptions, quantize};
use bakeoff_synth::{Preset, SynthFormat, SynthOptions, SynthQuant, synth};

/// The seed of `tests/synth.rs`'s Q8_0 check: its f32 greedy path has clear top-2 margins.
const SEED: u64 = 3;
const PROMPT: [u32; 12] = [1, 40, 41, 200, 7, 99, 150, 3, 255, 17, 64, 128];
/// Free-running greedy steps compared with the f32 model.
const STEPS: usize = 32;

/// An f32 KV cache: these tests measure what quantizing the weights changes, nothing else.
fn opts() -> LoadOptions {
    LoadOptions {
        threads: Some(2),
        kv_cache: bakeoff_engine::kernels::kvbuf::KvType::F32,
        ..Default::default()
    }
}

fn synth_hf(dir: &Path, preset: Preset) -> PathBuf {
    let out = dir.join(format!("{preset}-hf"));
    synth(
        &SynthOptions {
            preset,
            out: out.clone(),
            format: SynthFormat::Hf,
            quant: SynthQuant::F32,
            vocab: None,
            seed: SEED,
        },
        false,
    )
    .unwrap();
    out
}

/// A Llama Hugging Face folder with the tiny tokenizer and 256-wide rows (hidden 256,
/// intermediate 512, 4 layers), so that Q4_K/Q5_K/Q6_K blocks are used instead of fallbacks.
fn wide_llama(dir: &Path) -> PathBuf {
    let tiny = synth_hf(dir, Preset::TinyLlama);
    let out = dir.join("wide-llama-hf");
    std::fs::create_dir_all(&out).unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(tiny.join(f), out.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny.join("config.json")).unwrap()).unwrap();
    let (h, inter, layers, heads, kv) = (256usize, 512usize, 4usize, 4usize, 2usize);
    cfg["hidden_size"] = h.into();
    cfg["intermediate_size"] = inter.into();
    cfg["num_hidden_layers"] = layers.into();
    cfg["num_attention_heads"] = heads.into();
    cfg["num_key_value_heads"] = kv.into();
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    let vocab = cfg["vocab_size"].as_u64().unwrap() as usize;
    let hd = h / heads;
    // xorshift: uniform values with synth's spread (std 0.02), norms near 1.
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut mat = |name: String, r: usize, c: usize, next: &mut dyn FnMut() -> f32| {
        let v = (0..r * c).map(|_| next() * 0.02 * 3f32.sqrt()).collect();
        tensors.push((name, vec![r, c], v));
    };
    mat("model.embed_tokens.weight".into(), vocab, h, &mut next);
    mat("lm_head.weight".into(), vocab, h, &mut next);
    for i in 0..layers {
        let p = format!("model.layers.{i}.");
        mat(
            format!("{p}self_attn.q_proj.weight"),
            heads * hd,
            h,
            &mut next,
        );
        mat(format!("{p}self_attn.k_proj.weight"), kv * hd, h, &mut next);
        mat(format!("{p}self_attn.v_proj.weight"), kv * hd, h, &mut next);
        mat(
            format!("{p}self_attn.o_proj.weight"),
            h,
            heads * hd,
            &mut next,
        );
        mat(format!("{p}mlp.gate_proj.weight"), inter, h, &mut next);
        mat(format!("{p}mlp.up_proj.weight"), inter, h, &mut next);
        mat(format!("{p}mlp.down_proj.weight"), h, inter, &mut next);
    }
    let mut norms: Vec<(String, Vec<usize>, Vec<f32>)> = vec![(
        "model.norm.weight".into(),
        vec![h],
        (0..h).map(|_| 1.0 + 0.05 * next()).collect(),
    )];
    for i in 0..layers {
        for n in ["input_layernorm", "post_attention_layernorm"] {
            norms.push((
                format!("model.layers.{i}.{n}.weight"),
                vec![h],
                (0..h).map(|_| 1.0 + 0.05 * next()).collect(),
            ));
        }
    }
    tensors.extend(norms);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &out.join("model.safetensors")).unwrap();
    out
}

fn quantize_to(
    src: &Path,
    to: QuantType,
    out: &Path,
    pure: bool,
) -> bakeoff_quantize::QuantizeReport {
    quantize(
        &QuantizeOptions {
            model: src.to_string_lossy().into_owned(),
            to,
            out: out.to_path_buf(),
            pure,
            threads: Some(2),
        },
        false,
    )
    .unwrap_or_else(|e| panic!("{} → {to}: {e}", src.display()))
}

fn greedy(m: &mut dyn CausalLm, n: usize) -> Vec<u32> {
    m.truncate(0);
    let mut logits = m.forward(&PROMPT, false).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = argmax(&logits);
        out.push(t);
        logits = m.forward(&[t], false).unwrap();
    }
    out
}

fn agreeing_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Largest |Δlogit| against f32 along the teacher-forced f32 continuation, about 1.5× the
/// largest measured over the three models (Q8_0 0.015, Q6_K 0.044, Q5_K 0.097, Q4_K 0.20,
/// Q4_0 0.22, all on the wide model; logits there have a standard deviation of ~0.3).
fn logit_tol(to: QuantType) -> f32 {
    match to {
        QuantType::Q8_0 => 0.025,
        QuantType::Q6K => 0.07,
        QuantType::Q5K => 0.15,
        _ => 0.35,
    }
}

/// Relative RMS error bound of each type on uniformly distributed weights: a uniform value
/// quantized with step Δ has error RMS Δ/√12, and the step is the block's range over its
/// levels (Q8_0: 2a/254, 5-bit: 2a/31, 4-bit: 2a/15, Q6_K: 2a/63 for values in ±a, whose RMS is
/// a/√3): 0.45 %, 6.7 %, 3.2 %, 1.6 %. The bounds add half again for K-quant sub-scales and
/// fallback types.
fn rel_rmse_bound(t: WeightType) -> f64 {
    match t {
        WeightType::F32 => 0.0,
        WeightType::F16 => 0.001,
        WeightType::Q8_0 => 0.007,
        WeightType::Q6K => 0.025,
        WeightType::Q5_0 | WeightType::Q5_1 | WeightType::Q5K => 0.05,
        WeightType::Q4_0 | WeightType::Q4K => 0.10,
        other => panic!("unexpected type {other:?}"),
    }
}

#[test]
fn round_trip_follows_f32_and_stays_within_error_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let sources = [
        ("tiny-llama", synth_hf(dir.path(), Preset::TinyLlama)),
        ("tiny-qwen2", synth_hf(dir.path(), Preset::TinyQwen2)),
        ("wide-llama", wide_llama(dir.path())),
    ];
    let mut short = Vec::new();
    for (name, src) in &sources {
        let mut reference = load_model_only(src, &opts()).unwrap();
        let want = greedy(reference.as_mut(), STEPS);
        // The f32 conversion is exact and its Q/K rows are llama.cpp's permutation: the
        // dequantized tensors of every other file are compared with it.
        let f32_path = dir.path().join(format!("{name}-f32.gguf"));
        quantize_to(src, QuantType::F32, &f32_path, false);
        let mut m = load_model_only(&f32_path, &opts()).unwrap();
        assert_eq!(greedy(m.as_mut(), STEPS), want, "{name} f32 GGUF");
        let (_, f32_store) = open_weights(&f32_path).unwrap();
        for to in QuantType::QUANTIZED {
            let out = dir.path().join(format!("{name}-{to}.gguf"));
            let report = quantize_to(src, to, &out, false);
            let mut m = load_model_only(&out, &opts()).unwrap();
            let got = greedy(m.as_mut(), STEPS);
            let n = agreeing_prefix(&want, &got);
            // Teacher-forced over the f32 continuation: close logits everywhere, and the same
            // choice wherever f32's choice is clear of the quantization noise.
            let mut seq = PROMPT.to_vec();
            seq.extend(&want);
            m.truncate(0);
            reference.truncate(0);
            let (la, lb) = (
                reference.forward(&seq, true).unwrap(),
                m.forward(&seq, true).unwrap(),
            );
            let v = reference.config().vocab_size;
            let mut max_d = 0f32;
            let mut flips = Vec::new();
            // Greedy steps before f32's first near tie (top two closer than twice the logit
            // tolerance): on random weights the margins fall to ~0.005, and where they do the
            // summation order of the processor's kernels may pick either token.
            let mut clear_steps = None;
            for p in PROMPT.len() - 1..seq.len() - 1 {
                let (ra, rb) = (&la[p * v..(p + 1) * v], &lb[p * v..(p + 1) * v]);
                let d = ra
                    .iter()
                    .zip(rb)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                max_d = max_d.max(d);
                let mut sorted = ra.to_vec();
                sorted.sort_by(|x, y| y.total_cmp(x));
                let clear = sorted[0] - sorted[1] > 2.0 * logit_tol(to);
                if clear && argmax(ra) != argmax(rb) {
                    flips.push(p);
                }
                if !clear && clear_steps.is_none() {
                    clear_steps = Some(p + 1 - PROMPT.len());
                }
            }
            eprintln!(
                "{name} {to}: greedy agrees with f32 for {n}/{STEPS} steps ({} before f32's first near tie); max |Δlogit| {max_d:.4}",
                clear_steps.unwrap_or(STEPS)
            );
            if max_d > logit_tol(to) || !flips.is_empty() {
                short.push(format!(
                    "{name} {to}: |Δlogit| up to {max_d} (tolerance {}), clear choices changed at {flips:?}",
                    logit_tol(to)
                ));
            }
            // The greedy run decodes one token at a time (the decode kernels), the check above
            // runs the sequence as one prompt (the prompt kernels): both must follow f32 while
            // its choices are clear.
            let clear_steps = clear_steps.unwrap_or(STEPS);
            if n < clear_steps {
                short.push(format!(
                    "{name} {to}: greedy tokens follow f32 for only {n} of {clear_steps} clear steps\nf32 {want:?}\n{to} {got:?}"
                ));
            }
            let (_, store) = open_weights(&out).unwrap();
            let mut worst: HashMap<WeightType, f64> = HashMap::new();
            for t in &report.tensors {
                let q = store.tensor(&t.hf_name).unwrap();
                assert_eq!(q.dtype, t.to, "{name} {to} {}", t.hf_name);
                let a = f32_store.tensor(&t.hf_name).unwrap().to_f32().unwrap();
                let b = q.to_f32().unwrap();
                let err: f64 = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| ((x - y) as f64).powi(2))
                    .sum();
                let sig: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
                let rel = (err / sig).sqrt();
                let w = worst.entry(t.to).or_default();
                *w = w.max(rel);
                assert!(
                    rel <= rel_rmse_bound(t.to),
                    "{name} {to} {} ({:?}): relative RMS error {rel:.4} > {}",
                    t.hf_name,
                    t.to,
                    rel_rmse_bound(t.to)
                );
            }
            eprintln!("{name} {to}: worst relative RMS error per type {worst:?}");
            // Norms (and Qwen2's biases) stay F32.
            assert!(
                report
                    .tensors
                    .iter()
                    .filter(|t| t.shape.len() == 1)
                    .all(|t| t.to == WeightType::F32)
            );
        }
    }
    assert!(short.is_empty(), "{}", short.join("\n"));
}

/// The wide model really uses K-quant blocks (no fallbacks), and the llama.cpp mixes.
#[test]
fn k_quants_are_used_where_rows_fit() {
    let dir = tempfile::tempdir().unwrap();
    let src = wide_llama(dir.path());
    let r = quantize_to(&src, QuantType::Q4K, &dir.path().join("q4k.gguf"), false);
    let types: HashMap<&str, WeightType> = r
        .tensors
        .iter()
        .map(|t| (t.gguf_name.as_str(), t.to))
        .collect();
    assert!(r.tensors.iter().all(|t| !t.fallback));
    assert_eq!(types["output.weight"], WeightType::Q6K);
    assert_eq!(types["token_embd.weight"], WeightType::Q4K);
    // 4 layers: llama.cpp's use_more_bits holds for layers 2 and 3 (i < n/8 = 0: none;
    // i ≥ 7n/8 = 3: layer 3; (i - n/8) % 3 == 2: layer 2).
    for (l, want) in [
        (0, WeightType::Q4K),
        (1, WeightType::Q4K),
        (2, WeightType::Q6K),
        (3, WeightType::Q6K),
    ] {
        assert_eq!(
            types[format!("blk.{l}.attn_v.weight").as_str()],
            want,
            "layer {l}"
        );
        assert_eq!(
            types[format!("blk.{l}.ffn_down.weight").as_str()],
            want,
            "layer {l}"
        );
    }
    let pure = quantize_to(&src, QuantType::Q5K, &dir.path().join("q5k.gguf"), true);
    assert!(pure.tensors.iter().all(|t| t.to
        == if t.shape.len() == 1 {
            WeightType::F32
        } else {
            WeightType::Q5K
        }));
    assert!(
        (pure.bits_per_weight() - 5.5).abs() < 0.1,
        "{}",
        pure.bits_per_weight()
    );
}

/// The quantized file loads on its own with the source's tokenizer, template and stop ids.
#[test]
fn tokenizer_and_template_carry_over() {
    let dir = tempfile::tempdir().unwrap();
    for preset in [Preset::TinyLlama, Preset::TinyQwen2] {
        let src = synth_hf(dir.path(), preset);
        let out = dir.path().join(format!("{preset}-q8.gguf"));
        quantize_to(&src, QuantType::Q8_0, &out, false);
        let a = load(&src.to_string_lossy(), None, &opts()).unwrap();
        let b = load(&out.to_string_lossy(), None, &opts()).unwrap();
        // Nothing after the last special token: text that follows one gets a `▁` piece from a
        // GGUF file (llama.cpp, which has no `legacy` flag) but not from a `legacy: false`
        // folder (transformers), and both are right for their format.
        let text = "Hi there\n  naïve 日本 <|im_start|></s>";
        assert_eq!(
            a.prompter.tokenizer().encode(text, true).unwrap(),
            b.prompter.tokenizer().encode(text, true).unwrap(),
            "{preset}"
        );
        assert_eq!(a.info.chat_template, b.info.chat_template, "{preset}");
        assert_eq!(a.prompter.add_bos(), b.prompter.add_bos(), "{preset}");
        assert_eq!(a.info.eos_token_ids[0], b.info.eos_token_ids[0], "{preset}");
        assert_eq!(a.info.config.vocab_size, b.info.config.vocab_size);
        assert_eq!(b.info.weight_dtype, "q8_0");
    }
}

/// An F16 GGUF is a valid source; a quantized one is refused, and so are bad requests.
#[test]
fn gguf_sources_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let g = |q: SynthQuant| {
        let out = dir.path().join(format!("tl-{q}.gguf"));
        synth(
            &SynthOptions {
                preset: Preset::TinyLlama,
                out: out.clone(),
                format: SynthFormat::Gguf,
                quant: q,
                vocab: None,
                seed: SEED,
            },
            false,
        )
        .unwrap();
        out
    };
    let f16 = g(SynthQuant::F16);
    let out = dir.path().join("from-f16-q8.gguf");
    quantize_to(&f16, QuantType::Q8_0, &out, false);
    let mut a = load_model_only(&f16, &opts()).unwrap();
    let mut b = load_model_only(&out, &opts()).unwrap();
    let n = agreeing_prefix(&greedy(a.as_mut(), 16), &greedy(b.as_mut(), 16));
    assert_eq!(n, 16, "Q8_0 from an F16 GGUF follows it");

    let q8 = g(SynthQuant::Q8_0);
    let err = quantize(
        &QuantizeOptions {
            model: q8.to_string_lossy().into_owned(),
            to: QuantType::Q4_0,
            out: dir.path().join("requant.gguf"),
            pure: false,
            threads: None,
        },
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("F32, F16 or BF16"), "{err}");

    let same = quantize(
        &QuantizeOptions {
            model: f16.to_string_lossy().into_owned(),
            to: QuantType::Q4_0,
            out: f16.clone(),
            pure: false,
            threads: None,
        },
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(same.contains("is the input file"), "{same}");
    assert!("q3_k".parse::<QuantType>().is_err());
    assert_eq!("Q4_K_M".parse::<QuantType>().unwrap(), QuantType::Q4K);
}

/// SHA-256 over every tensor (sorted by name: name, ggml type id, data bytes) of a GGUF file.
fn tensor_digest(path: &Path) -> String {
    use sha2::Digest;
    let store = bakeoff_engine::loader::gguf::GgufStore::open(path).unwrap();
    let bytes = std::fs::read(path).unwrap();
    let mut names: Vec<&String> = store.content.tensor_infos.keys().collect();
    names.sort();
    let mut h = sha2::Sha256::new();
    for n in names {
        let info = &store.content.tensor_infos[n];
        let start = (store.content.tensor_data_offset + info.offset) as usize;
        let len = info.bytes();
        h.update(n.as_bytes());
        h.update(info.dtype.ggml_id().to_le_bytes());
        h.update(&bytes[start..start + len]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Byte-identical to llama.cpp without Python: these are the digests of the files that
/// llama-cpp-python 0.3.36's `llama_model_quantize` (no imatrix, default mixes) wrote from
/// this wide model's f32 GGUF (`bakeoff quantize --to f32`), computed with the `gguf` package
/// in the same way. scripts/interop_llama_cpp.py repeats the comparison live.
#[test]
fn quantized_bytes_equal_llama_cpp_golden_digests() {
    let dir = tempfile::tempdir().unwrap();
    let src = wide_llama(dir.path());
    for (to, want) in [
        (
            QuantType::Q8_0,
            "1a1ec42ceec4cc6412ed64ef004d19d4b4069fecd001a94bc925bb29fc307aa6",
        ),
        (
            QuantType::Q4_0,
            "2ef6063b9b97b4ba1a5175cbb2c4c4b9b65a02f6b756535ceef0a822bc2466c1",
        ),
        (
            QuantType::Q4K,
            "f603d95a20903acadff853673a5015e9eb5213662504fc186bb2c7e697910d09",
        ),
        (
            QuantType::Q5K,
            "1232198f03d288bd46d84090edb80ced039aa7118037202063084666ea59d2d0",
        ),
        (
            QuantType::Q6K,
            "654827a6f782683ed9ddc7659a43bdc2c3bcfa08138ac656f36820a535f25c18",
        ),
    ] {
        let out = dir.path().join(format!("{to}.gguf"));
        quantize_to(&src, to, &out, false);
        assert_eq!(tensor_digest(&out), want, "{to}");
    }
}
