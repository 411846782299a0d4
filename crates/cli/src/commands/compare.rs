//! `bakeoff compare`: the main job. Benchmarks and evaluates two models (each step is the
//! `bench` and `eval` command with the options passed through), records both models' answers
//! to fixed prompts, and renders the comparison report from the results files it wrote.
//! `--demo` does it on two small real models from the catalog (pulled and verified on first use)
//! with a short profile; `--demo-synthetic` offline on the full-size synthetic pair.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use bakeoff_engine::generate::{Flow, GenParams, generate};
use bakeoff_engine::loader::catalog::PullOptions;
use bakeoff_engine::loader::{LoadOptions, ModelSource, gguf::GgufStore};
use bakeoff_engine::template::Message;
use bakeoff_record::ResultsKind;
use bakeoff_record::compare::{Answer, Answers, Manifest, ManifestModel, ModelAnswers};
use bakeoff_report::Inputs;
use bakeoff_report::inputs::FIXED_PROMPTS;
use bakeoff_synth::{Preset, SynthFormat, SynthOptions, SynthQuant, synth};
use clap::Args;

use super::bench::BenchArgs;
use super::eval::EvalArgs;

/// The real pair of `--demo`: a Llama-family and a Qwen2-family instruct model small enough for
/// the whole job to take minutes on 2 cores (catalog names, docs/models.md).
pub const DEMO_MODELS: [&str; 2] = ["smollm2-135m", "qwen2.5-coder-0.5b"];

pub const DEFAULT_MODELS: [&str; 2] = [
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    "Qwen/Qwen2.5-1.5B-Instruct",
];

/// The short profile of `--demo`: enough repetitions for intervals, few enough tokens that the
/// two full-size models finish in minutes on 2 cores. Explicit options override each value.
/// The long scenario and deep contexts are left out because prefill dominates them (a first
/// demo run with them took 17 minutes on the shared 2-core machine); wikitext (a diagnostic
/// outside the categories) and MT-Bench (ungraded without a judge) are left out of the eval.
const DEMO_REPETITIONS: usize = 3;
const DEMO_MAX_TOKENS: usize = 24;
const DEMO_SCENARIOS: &str = "short,medium,code,creative";
const DEMO_DEPTHS: &str = "128,256";
const DEMO_DEPTH_TOKENS: usize = 8;
const DEMO_LIMIT: usize = 2;
const DEMO_MAX_NEW_TOKENS: usize = 24;
/// The real pair's answers mean something, so `--demo` evaluates more items and lets answers run
/// longer than `--demo-synthetic` does: the first 20 items of each quick-profile component with
/// up to 48 new tokens took 6 min 11 s for the whole job on 2 cores (the whole quick profile at 24
/// tokens took 9 min 10 s).
const DEMO_REAL_LIMIT: usize = 20;
const DEMO_REAL_MAX_NEW_TOKENS: usize = 48;
const DEMO_ONLY: &str =
    "mmlu,arc_challenge,hellaswag,truthfulqa_mc,gsm8k,ifeval,creativity_proxy,humaneval,hygiene";
const DEMO_ANSWER_TOKENS: usize = 32;

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The two models (folder, .gguf file, hub id or catalog name); default TinyLlama-1.1B-Chat vs Qwen2.5-1.5B-Instruct.
    #[arg(long = "model", short = 'm')]
    pub models: Vec<String>,
    /// Output folder: bench.json, eval/, answers.json, compare.json, report.md, report.html, charts/.
    #[arg(long, default_value = "bakeoff-report")]
    pub out: PathBuf,
    /// Demo on two small real models, SmolLM2-135M-Instruct vs Qwen2.5-Coder-0.5B-Instruct (pulled
    /// from the catalog on first use), with a short profile.
    #[arg(long, conflicts_with_all = ["models", "demo_synthetic"])]
    pub demo: bool,
    /// Offline demo: synthesize the full-size TinyLlama-1.1B and Qwen2.5-1.5B architectures with
    /// random weights and real tokenizers, and run a short profile (speed is real, quality is not).
    #[arg(long, conflicts_with = "models")]
    pub demo_synthetic: bool,
    /// Where --demo-synthetic keeps its synthesized models (default: bakeoff/synthetic in the user
    /// cache folder).
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Real tokenizer vocabularies (GGUF vocab files) for --demo-synthetic.
    #[arg(long, default_value = "../shared/vocab")]
    pub vocab_dir: PathBuf,
    /// Weight type of the --demo-synthetic models.
    #[arg(long, default_value = "q4_0")]
    pub quant: String,

    // ---- passed to `bakeoff bench`
    /// Measured runs per scenario and depth (bench; default 5, 3 with either demo).
    #[arg(long)]
    pub repetitions: Option<usize>,
    /// Unmeasured warm-up runs (bench).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Tokens per scenario run (bench; default 128, 24 with either demo).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Scenarios (bench): short, medium, long, code, creative, or none (default all; with either
    /// demo all but long).
    #[arg(long)]
    pub scenarios: Option<String>,
    /// Context depths (bench; default 128,256,512,1024,2048; 128,256 with either demo), or none.
    #[arg(long)]
    pub depths: Option<String>,
    /// Tokens generated at each depth (bench; default 32, 8 with either demo).
    #[arg(long)]
    pub depth_tokens: Option<usize>,
    /// Do not drop the page cache for a cold load (bench; --demo never drops it, since that slows
    /// everything else on the machine for a while).
    #[arg(long)]
    pub no_cold_load: bool,
    /// The file to use from GGUF hub repositories.
    #[arg(long)]
    pub gguf_file: Option<String>,
    /// Use at most this many positions of each model's context (bench).
    #[arg(long)]
    pub max_context: Option<usize>,

    // ---- passed to `bakeoff eval`
    /// Eval profile: quick, standard or full.
    #[arg(long, default_value = "quick")]
    pub profile: String,
    /// Evaluation data laid out like ../shared/evaldata.
    #[arg(long, env = "BAKEOFF_EVAL_DATA", default_value = "../shared/evaldata")]
    pub data_dir: PathBuf,
    /// Only these eval components (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// First N items per eval component (default: the whole profile; 20 with --demo, 2 with
    /// --demo-synthetic).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Cap on new tokens for generative eval items (default: the profile's; 48 with --demo, 24 with
    /// --demo-synthetic).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// `bakeoff quantize --measure` results to add to the report's quantization section
    /// (repeatable).
    #[arg(long = "quantize-results")]
    pub quantize_results: Vec<PathBuf>,
    /// Judge for MT-Bench (see `bakeoff eval --help`).
    #[arg(long)]
    pub judge: Option<String>,
    #[arg(long)]
    pub judge_model: Option<String>,
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub judge_key_env: String,
    /// Wall-clock seconds per HumanEval/MBPP program.
    #[arg(long, default_value_t = 10.0)]
    pub code_timeout: f64,
    /// See `bakeoff eval --unsafe-no-sandbox`.
    #[arg(long)]
    pub unsafe_no_sandbox: bool,

    // ---- shared
    /// cpu, cuda or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CPU threads (default: all cores), the same for every step.
    #[arg(long)]
    pub threads: Option<usize>,
    /// New tokens per answer to the fixed prompts (default 256; 48 with --demo, 32 with
    /// --demo-synthetic).
    #[arg(long)]
    pub answer_tokens: Option<usize>,
    /// Share of requests the calibrated router (routing.json, the report's routing section)
    /// sends to the strong model.
    #[arg(long, default_value_t = 0.3)]
    pub strong_share: f64,
    /// The history database (default: bakeoff/history.sqlite under the user's data folder).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Do not record this run in the history database.
    #[arg(long)]
    pub no_history: bool,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,
    /// Continue an interrupted run in --out: a finished bench.json for the same models is kept,
    /// and the eval step continues from eval/items.jsonl (same flags required).
    #[arg(long)]
    pub resume: bool,
}

/// Catalog names become the paths of their pulled files here, once, so that the bench's worker
/// processes, the eval and the results files all see one file.
fn resolve_catalog_names(models: Vec<String>, progress: bool) -> Result<Vec<String>> {
    models
        .into_iter()
        .map(|m| match ModelSource::parse(&m, None) {
            Ok(ModelSource::Catalog(entry)) => {
                let pulled = entry
                    .pull(&PullOptions {
                        progress,
                        ..Default::default()
                    })
                    .with_context(|| format!("cannot pull `{m}`"))?;
                eprintln!(
                    "{m}: {} ({})",
                    pulled.path.display(),
                    pulled.origin.as_str()
                );
                Ok(pulled.path.display().to_string())
            }
            _ => Ok(m),
        })
        .collect()
}

fn demo_models(a: &CompareArgs) -> Result<Vec<String>> {
    let quant: SynthQuant = a.quant.parse()?;
    let dir = match &a.models_dir {
        Some(d) => d.clone(),
        None => dirs::cache_dir()
            .context("no user cache folder on this system: pass --models-dir")?
            .join("bakeoff")
            .join("synthetic"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut out = Vec::new();
    for (preset, vocab_file) in [
        (Preset::TinyLlama1B, "ggml-vocab-llama-spm.gguf"),
        (Preset::Qwen25_1B5, "ggml-vocab-qwen2.gguf"),
    ] {
        let path = dir.join(format!("synthetic-{}-{}.gguf", preset.name(), a.quant));
        if !path.is_file() {
            let vocab = a.vocab_dir.join(vocab_file);
            let vocab = if vocab.is_file() {
                Some(vocab)
            } else {
                eprintln!(
                    "note: {} not found; {} gets a byte-level stand-in tokenizer",
                    vocab.display(),
                    preset.name()
                );
                None
            };
            eprintln!(
                "synthesizing {} ({}) into {} ...",
                preset.name(),
                a.quant,
                path.display()
            );
            // Written under a temporary name and renamed, so an interrupted run leaves no
            // half-written file that a later run would take for a finished one.
            let tmp = path.with_extension("gguf.partial");
            synth(
                &SynthOptions {
                    preset,
                    out: tmp.clone(),
                    format: SynthFormat::Gguf,
                    quant,
                    vocab,
                    seed: 0,
                },
                !a.no_progress,
            )?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;
        }
        out.push(path.display().to_string());
    }
    Ok(out)
}

/// Whether a model is one of `bakeoff synth`'s, from the GGUF file's own metadata.
fn is_synthetic(source: &str) -> bool {
    let p = Path::new(source);
    if p.extension().is_some_and(|e| e == "gguf") && p.is_file() {
        return GgufStore::open(p)
            .map(|g| g.metadata().contains_key("bakeoff.synth.preset"))
            .unwrap_or(false);
    }
    false
}

fn answers(
    models: &[String],
    labels: &[String],
    opts: &LoadOptions,
    max_tokens: usize,
) -> Result<Answers> {
    let mut out = Vec::new();
    for (source, label) in models.iter().zip(labels) {
        eprintln!("answering the fixed prompts with {label}");
        let mut lm = bakeoff_engine::loader::load(source, None, opts)
            .with_context(|| format!("cannot load model `{source}`"))?;
        let chat_template = lm.prompter.has_template();
        let params = GenParams {
            max_tokens,
            ..Default::default()
        };
        let mut list = Vec::new();
        for prompt in FIXED_PROMPTS {
            let messages = vec![Message::user(prompt)];
            let ids = lm.prompter.encode_chat(&messages)?;
            lm.reset_cache();
            let t = Instant::now();
            let g = generate(&mut lm, &ids, &params, |_| Flow::Continue)?;
            list.push(Answer {
                prompt: prompt.into(),
                text: g.text,
                generated_tokens: g.done.usage.completion_tokens,
                finish_reason: g.done.finish_reason,
                ttft_s: g.token_times.first().copied(),
                total_s: t.elapsed().as_secs_f64(),
            });
        }
        out.push(ModelAnswers {
            label: label.clone(),
            source: source.clone(),
            synthetic: is_synthetic(source),
            chat_template,
            answers: list,
        });
    }
    Ok(Answers {
        header: ResultsKind::Answers.header(),
        created_unix: now(),
        max_tokens,
        sampling: "greedy (temperature 0)".into(),
        models: out,
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    bakeoff_record::fsio::write_atomic(path, (serde_json::to_string_pretty(v)? + "\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

pub fn run(a: CompareArgs) -> Result<()> {
    let started = Instant::now();
    if !(0.0..=1.0).contains(&a.strong_share) {
        bail!("--strong-share must be in [0, 1], got {}", a.strong_share);
    }
    // Checked before the long bench and eval steps, not after them.
    for q in &a.quantize_results {
        let bytes = std::fs::read(q)
            .with_context(|| format!("--quantize-results: cannot read {}", q.display()))?;
        let found = match bakeoff_record::ResultsFile::parse(&bytes) {
            Ok(f) if f.kind() == ResultsKind::Quantize => continue,
            Ok(f) => format!("{} results", f.kind().describe()),
            Err(e) => e,
        };
        bail!(
            "--quantize-results: {} is not a `bakeoff quantize --measure` results file ({found})",
            q.display()
        );
    }
    let models: Vec<String> = if a.demo_synthetic {
        demo_models(&a)?
    } else if a.demo {
        DEMO_MODELS.iter().map(|s| s.to_string()).collect()
    } else if a.models.is_empty() {
        DEFAULT_MODELS.iter().map(|s| s.to_string()).collect()
    } else {
        a.models.clone()
    };
    if models.len() != 2 {
        bail!(
            "compare takes exactly two models (--model A --model B); got {}",
            models.len()
        );
    }
    if models[0] == models[1] {
        bail!(
            "compare needs two different models; both are `{}`",
            models[0]
        );
    }
    if !a.data_dir.is_dir() {
        bail!(
            "the evaluation data folder {} does not exist (--data-dir or BAKEOFF_EVAL_DATA; see docs/eval.md)",
            a.data_dir.display()
        );
    }
    let models = resolve_catalog_names(models, !a.no_progress)?;
    let d = a.demo || a.demo_synthetic;
    let pick =
        |v: Option<usize>, demo: usize, full: usize| v.unwrap_or(if d { demo } else { full });
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let bench_path = a.out.join("bench.json");
    let eval_dir = a.out.join("eval");

    let finished_bench = if a.resume {
        finished_bench(&bench_path, &models)
    } else {
        None
    };
    if let Some(n) = &finished_bench {
        eprintln!(
            "== 1/3 bench: kept {} ({n} models, finished before the interruption)",
            bench_path.display()
        );
    } else {
        eprintln!("== 1/3 bench: {} vs {}", models[0], models[1]);
    }
    if finished_bench.is_none() {
        super::bench::run(BenchArgs {
            models: models.clone(),
            gguf_file: a.gguf_file.clone(),
            device: a.device.clone(),
            threads: a.threads.into_iter().collect(),
            dtype: Vec::new(),
            max_context: a.max_context,
            repetitions: pick(a.repetitions, DEMO_REPETITIONS, 5),
            warmup: a.warmup,
            max_tokens: pick(a.max_tokens, DEMO_MAX_TOKENS, 128),
            scenarios: a
                .scenarios
                .clone()
                .unwrap_or_else(|| {
                    if d {
                        DEMO_SCENARIOS.into()
                    } else {
                        "short,medium,long,code,creative".into()
                    }
                })
                .split(',')
                .map(|s| s.trim().to_string())
                .collect(),
            depths: a
                .depths
                .clone()
                .unwrap_or_else(|| {
                    if d {
                        DEMO_DEPTHS.into()
                    } else {
                        "128,256,512,1024,2048".into()
                    }
                })
                .split(',')
                .map(|s| s.trim().to_string())
                .collect(),
            depth_tokens: pick(a.depth_tokens, DEMO_DEPTH_TOKENS, 32),
            out: Some(bench_path.clone()),
            format: "table".into(),
            no_cold_load: a.no_cold_load || d,
            no_weight_cache: false,
            kv_cache: "auto".into(),
            allow_host: Vec::new(),
            timeout: 600,
            no_progress: a.no_progress,
            from: None,
            recompute: false,
            membw: false,
            membw_mib: 2048,
            membw_rounds: 5,
            resume: a.resume,
        })
        .context("the bench step failed")?;
    }
    let bench =
        bakeoff_record::bench::BenchReport::read(&bench_path).map_err(anyhow::Error::msg)?;
    let labels: Vec<String> = bench.models.iter().map(|m| m.label.clone()).collect();

    eprintln!("== 2/3 eval: profile {}", a.profile);
    super::eval::run(EvalArgs {
        models: models.clone(),
        profile: a.profile.clone(),
        data_dir: a.data_dir.clone(),
        judge: a.judge.clone(),
        judge_model: a.judge_model.clone(),
        judge_key_env: a.judge_key_env.clone(),
        out: eval_dir.clone(),
        resume: a.resume && eval_dir.join("items.jsonl").is_file(),
        format: "table".into(),
        only: if d && a.only.is_empty() {
            DEMO_ONLY.split(',').map(String::from).collect()
        } else {
            a.only.clone()
        },
        code_timeout: a.code_timeout,
        unsafe_no_sandbox: a.unsafe_no_sandbox,
        device: a.device.clone(),
        threads: a.threads,
        print_ids: false,
        batch: bakeoff_eval::select::DEFAULT_GEN_BATCH,
        limit: if d {
            a.limit
                .or(Some(if a.demo { DEMO_REAL_LIMIT } else { DEMO_LIMIT }))
        } else {
            a.limit
        },
        max_new_tokens: if d {
            a.max_new_tokens.or(Some(if a.demo {
                DEMO_REAL_MAX_NEW_TOKENS
            } else {
                DEMO_MAX_NEW_TOKENS
            }))
        } else {
            a.max_new_tokens
        },
    })
    .context("the eval step failed")?;

    // The router calibration is part of the report, not a step that can fail the run: on too
    // few items it is left out and the report says so.
    let routing_path = a.out.join("routing.json");
    let shipped = bakeoff_serve::complexity::shipped().map_err(|e| anyhow!(e))?;
    match bakeoff_serve::calibrate::run(&bakeoff_serve::calibrate::Options {
        results: &eval_dir,
        holdout: None,
        strong_share: a.strong_share,
        fast: None,
        strong: None,
        weights: bakeoff_serve::calibrate::WeightsMode::Auto,
        current: shipped.weights,
    }) {
        Ok(out) => write_json(&routing_path, &out.calibration)?,
        Err(e) => {
            eprintln!("router calibration left out of the report: {e}");
            if routing_path.exists() {
                std::fs::remove_file(&routing_path)
                    .with_context(|| format!("cannot remove {}", routing_path.display()))?;
            }
        }
    }

    eprintln!("== 3/3 answers to the fixed prompts");
    let opts = LoadOptions {
        device: a.device.parse()?,
        threads: a.threads,
        dtype: None,
        max_context: a.max_context,
        progress: false,
        cpu_kernels: None,
        weight_cache: bakeoff_engine::loader::default_weight_cache()?,
        kv_cache: Default::default(),
        prefill_chunk: bakeoff_engine::generate::DEFAULT_PREFILL_CHUNK,
        background_cache_write: false,
    };
    let ans = answers(
        &models,
        &labels,
        &opts,
        pick(
            a.answer_tokens,
            if a.demo {
                DEMO_REAL_MAX_NEW_TOKENS
            } else {
                DEMO_ANSWER_TOKENS
            },
            256,
        ),
    )?;
    let answers_path = a.out.join("answers.json");
    write_json(&answers_path, &ans)?;

    let manifest = Manifest {
        header: ResultsKind::Manifest.header(),
        created_unix: now(),
        command: std::env::args().collect(),
        demo: d,
        models: models
            .iter()
            .zip(&labels)
            .map(|(s, l)| ManifestModel {
                label: l.clone(),
                source: s.clone(),
                synthetic: is_synthetic(s),
            })
            .collect(),
        measure_s: Some(started.elapsed().as_secs_f64()),
    };
    let manifest_path = a.out.join("compare.json");
    write_json(&manifest_path, &manifest)?;

    let mut files = vec![
        manifest_path,
        bench_path,
        eval_dir.join("results.json"),
        answers_path,
    ];
    if routing_path.is_file() {
        files.push(routing_path);
    }
    // Copied in, so that `bakeoff report` on the folder renders the same report.
    for (i, q) in a.quantize_results.iter().enumerate() {
        let dst = a.out.join(format!("quantize-{}.json", i + 1));
        std::fs::copy(q, &dst)
            .with_context(|| format!("cannot copy {} to {}", q.display(), dst.display()))?;
        files.push(dst);
    }
    let inputs = Inputs::load(&files)?;
    let db = if a.no_history {
        None
    } else {
        Some(super::history::db_path(&a.db)?)
    };
    let kind = if a.demo_synthetic {
        "compare --demo-synthetic"
    } else if a.demo {
        "compare --demo"
    } else {
        "compare"
    };
    super::report::render_and_record(&inputs, &a.out, kind, db.as_deref())?;
    eprintln!(
        "compare finished in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The bench results an interrupted `compare --resume` can keep: a complete bench.json whose
/// models are the ones asked for, in order, none failed. Anything else is measured again.
fn finished_bench(path: &Path, models: &[String]) -> Option<usize> {
    let r = bakeoff_record::bench::BenchReport::read(path).ok()?;
    let same = r.models.len() == models.len()
        && r.models
            .iter()
            .zip(models)
            .all(|(m, s)| &m.model.source == s && m.error.is_none());
    same.then_some(r.models.len())
}
